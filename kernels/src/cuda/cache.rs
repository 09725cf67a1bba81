//! Compiled PTX kept on disk, so a cold start pays for NVRTC once per machine (a serverless
//! image can ship the cache warm). The key covers the source and the architecture; anything
//! unreadable or unwritable falls back to compiling.

use std::path::PathBuf;

use crate::backend::KernelError;

use super::KERNELS_CU;

/// 64-bit FNV-1a: a stable key for the cache file name (std's hasher may change between
/// Rust releases).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `$REALM_CUDA_CACHE`, else `$XDG_CACHE_HOME/realm/cuda`, else `~/.cache/realm/cuda`.
fn dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("REALM_CUDA_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("realm/cuda")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/realm/cuda")))
}

/// The PTX for `arch`, from the cache or from `compile` (then stored); `true` when cached.
pub fn ptx_for(
    arch: &str,
    compile: impl FnOnce() -> Result<String, KernelError>,
) -> Result<(String, bool), KernelError> {
    let key = fnv1a(&[KERNELS_CU.as_bytes(), arch.as_bytes()]);
    let path = dir().map(|d| d.join(format!("kernels-{arch}-{key:016x}.ptx")));
    if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        return Ok((text, true));
    }
    let ptx = compile()?;
    if let Some(p) = path {
        // A write into a temporary name and a rename, so a concurrent start never reads half a file.
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let stored = p.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && std::fs::write(&tmp, &ptx).is_ok()
            && std::fs::rename(&tmp, &p).is_ok();
        if !stored {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok((ptx, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_keys_differ_by_part_boundaries_and_content() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_ne!(fnv1a(&[b"sm_80"]), fnv1a(&[b"sm_90"]));
        assert_eq!(fnv1a(&[b"x"]), fnv1a(&[b"x"]));
    }
}
