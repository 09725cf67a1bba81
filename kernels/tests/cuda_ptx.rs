//! Every CUDA kernel compiles to PTX through NVRTC, without a GPU (feature `cuda`). With
//! `ptxas` on the PATH (or at `$REALM_PTXAS`), the sm_90 register and spill report is printed
//! and kept beside the test's temporary files. `REALM_REQUIRE_NVRTC=1` (set by
//! scripts/test.sh, which installs NVRTC) turns a missing NVRTC into a failure.
#![cfg(feature = "cuda")]

use std::process::Command;

use realm_kernels::cuda::{KERNEL_NAMES, compile_ptx, nvrtc_present};

/// Architectures the images target: A100 (sm_80), L4/L40S (sm_89), H100/H200 (sm_90).
const ARCHES: [&str; 3] = ["sm_80", "sm_89", "sm_90"];

/// PTX ISA 9.0 is CUDA 13.0's, what driver 580 (on the GPU machines we test on) loads; a newer
/// NVRTC would emit PTX that driver rejects.
const MAX_PTX_ISA: (u32, u32) = (9, 0);

fn nvrtc_or_skip() -> bool {
    if nvrtc_present() {
        return true;
    }
    assert!(std::env::var_os("REALM_REQUIRE_NVRTC").is_none(), "REALM_REQUIRE_NVRTC is set but NVRTC cannot be loaded");
    eprintln!("skipping: NVRTC is not installed (scripts/test.sh installs it)");
    false
}

fn ptx_version(ptx: &str) -> (u32, u32) {
    let line = ptx.lines().find(|l| l.starts_with(".version")).expect("PTX has a .version line");
    let v = line.trim_start_matches(".version").trim();
    let (major, minor) = v.split_once('.').expect("version is major.minor");
    (major.parse().expect("major"), minor.parse().expect("minor"))
}

#[test]
fn every_kernel_compiles_for_each_target_architecture() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in ARCHES {
        let ptx = compile_ptx(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert!(ptx.contains(&format!(".target {arch}")), "{arch}: PTX targets something else");
        let version = ptx_version(&ptx);
        assert!(version <= MAX_PTX_ISA, "{arch}: PTX ISA {version:?} is newer than driver 580 loads");
        for name in KERNEL_NAMES {
            assert!(ptx.contains(&format!(".entry {name}(")), "{arch}: kernel {name} missing from the PTX");
        }
    }
}

#[test]
fn ptxas_register_and_spill_report_for_sm_90() {
    if !nvrtc_or_skip() {
        return;
    }
    let ptxas = std::env::var("REALM_PTXAS").unwrap_or_else(|_| "ptxas".into());
    if Command::new(&ptxas).arg("--version").output().is_err() {
        eprintln!("skipping the report: no ptxas (scripts/test.sh installs one)");
        return;
    }
    // The build's temporary folder, or the system's where the test binary was copied to a GPU
    // machine (scripts/gpu-check.sh --prebuilt).
    let dir = [std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")), std::env::temp_dir()]
        .into_iter()
        .find(|d| d.is_dir())
        .expect("a temporary folder");
    let ptx_path = dir.join("kernels-sm_90.ptx");
    std::fs::write(&ptx_path, compile_ptx("sm_90").expect("compile")).expect("write PTX");
    let out = Command::new(&ptxas)
        .args(["-arch=sm_90", "-v", "-o"])
        .arg(dir.join("kernels-sm_90.cubin"))
        .arg(&ptx_path)
        .output()
        .expect("run ptxas");
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ptxas failed:\n{report}");
    std::fs::write(dir.join("ptxas-sm_90.txt"), &report).expect("write report");
    println!("ptxas -arch=sm_90 -v:\n{report}");
    for name in KERNEL_NAMES {
        assert!(report.contains(&format!("'{name}'")), "no report for {name}");
    }
}
