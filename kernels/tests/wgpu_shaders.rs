//! The WGSL kernels parse and validate with naga (wgpu's shader compiler), so a shader error
//! fails here, on any machine, rather than at start on a user's GPU (feature `wgpu`).
#![cfg(feature = "wgpu")]

use naga::valid::{Capabilities, ValidationFlags, Validator};
use realm_kernels::wgpu::{KERNEL_NAMES, KERNELS_WGSL};

#[test]
fn kernels_wgsl_validates_and_has_every_entry_point() {
    let module = naga::front::wgsl::parse_str(KERNELS_WGSL)
        .unwrap_or_else(|e| panic!("kernels.wgsl does not parse:\n{}", e.emit_to_string(KERNELS_WGSL)));
    Validator::new(ValidationFlags::all(), Capabilities::empty())
        .validate(&module)
        .unwrap_or_else(|e| panic!("kernels.wgsl does not validate:\n{}", e.emit_to_string(KERNELS_WGSL)));
    let entries: Vec<&str> = module.entry_points.iter().map(|e| e.name.as_str()).collect();
    for name in KERNEL_NAMES {
        assert!(entries.contains(name), "entry point {name} missing (found {entries:?})");
    }
    assert_eq!(entries.len(), KERNEL_NAMES.len(), "every entry point is listed in KERNEL_NAMES: {entries:?}");
}
