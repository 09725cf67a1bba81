//! Bit-exact comparison of `quantize_row` with reference quantizers on the same rows:
//!
//! - gguf-py's numpy quantizers (`gguf.quants.quantize`) for every type gguf-py can quantize
//!   (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0); always run.
//! - llama.cpp's C reference quantizers (`ggml_quantize_chunk` in libggml-base, which is what
//!   `llama-quantize` runs without an importance matrix) for every type, K-quants included;
//!   ignored unless pointed at a library: `REALM_GGML_BASE=/path/to/libggml-base.so cargo
//!   test -- --ignored` (llama-cpp-python ships one in `llama_cpp/lib/`).
//!
//! One Python process computes each reference for every format.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;

use realm_kernels::GgmlType;
use realm_kernels::quant::{QK_K, quantize_row};

/// Super-blocks of 256 values per format.
const SUPER_BLOCKS: usize = 96;

const GGUF_PY_TYPES: [GgmlType; 7] =
    [GgmlType::F16, GgmlType::Bf16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0];

const ALL_TYPES: [GgmlType; 13] = realm_kernels::quant::ROW_FORMATS;

/// SplitMix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Roughly normal: the sum of four uniforms.
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 0.866
    }
}

/// Rows that exercise each quantizer's branches, 32 values at a time: weight-like normal
/// values at magnitudes from 2^-12 to 2^8, zeros, constants, a single spike, a largest
/// magnitude present with both signs, exact halves (rounding ties), all-positive and
/// all-negative runs, and values whose scales are f16 subnormals.
fn input() -> Vec<f32> {
    let mut rng = Rng(0x9a17_5eed);
    let mut out = Vec::with_capacity(SUPER_BLOCKS * QK_K);
    while out.len() < SUPER_BLOCKS * QK_K {
        let scale = 2f32.powi((rng.next() % 21) as i32 - 12);
        let kind = rng.next() % 16;
        let block: Vec<f32> = match kind {
            0 => vec![0.0; 32],
            1 => vec![scale * if rng.next().is_multiple_of(2) { 1.0 } else { -1.0 }; 32],
            2 => {
                let mut b = vec![0.0; 32];
                b[(rng.next() % 32) as usize] = scale * rng.uniform();
                b
            }
            3 => {
                let mut b: Vec<f32> = (0..32).map(|_| scale * 0.5 * rng.uniform()).collect();
                let (i, j) = ((rng.next() % 32) as usize, (rng.next() % 32) as usize);
                b[i] = scale;
                b[j] = -scale;
                b
            }
            4 => (0..32).map(|_| (rng.next() % 33) as f32 * 0.5 - 8.0).collect(),
            5 => (0..32).map(|_| scale * (1.5 + rng.uniform())).collect(),
            6 => (0..32).map(|_| -scale * (1.5 + rng.uniform())).collect(),
            7 => (0..32).map(|_| 1e-7 * rng.normal()).collect(),
            _ => (0..32).map(|_| scale * rng.normal()).collect(),
        };
        out.extend(block);
    }
    out
}

type Reference = Result<HashMap<GgmlType, Vec<u8>>, String>;

/// Runs scripts/quantize_reference.py (with `extra` arguments first) over `types`.
fn compute_reference(extra: &[&std::ffi::OsStr], types: &[GgmlType]) -> Reference {
    let python = common::python();
    if !python.exists() {
        return Err(format!(
            "no Python at {}: run scripts/setup.sh (or set REALM_PYTHON to a Python with the \
             `gguf` package)",
            python.display()
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let inp = dir.path().join("rows.f32");
    let bytes: Vec<u8> = input().iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&inp, bytes).map_err(|e| format!("{}: {e}", inp.display()))?;
    let mut cmd = Command::new(&python);
    cmd.arg(common::workspace_root().join("scripts/quantize_reference.py")).args(extra);
    for ty in types {
        cmd.arg(ty.name()).arg(&inp).arg(dir.path().join(format!("{ty}.out")));
    }
    let out = cmd.output().map_err(|e| format!("running {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/quantize_reference.py failed ({}); run scripts/setup.sh if `gguf` is missing:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut map = HashMap::new();
    for &ty in types {
        let path = dir.path().join(format!("{ty}.out"));
        map.insert(ty, std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    Ok(map)
}

fn check(ty: GgmlType, reference: &Reference, source: &str) {
    let want = match reference {
        Ok(r) => r.get(&ty).expect("every type has a reference"),
        Err(e) => panic!("{e}"),
    };
    let src = input();
    let mut got = vec![0u8; want.len()];
    quantize_row(ty, &src, &mut got).expect("quantize_row");
    let size = ty.type_size() as usize;
    let mismatches: Vec<String> = got
        .chunks_exact(size)
        .zip(want.chunks_exact(size))
        .enumerate()
        .filter(|(_, (g, w))| g != w)
        .map(|(i, (g, w))| {
            let at = i * ty.block_size() as usize;
            let x = &src[at..(at + ty.block_size() as usize).min(at + 8)];
            format!("  block {i} (inputs from {x:?}):\n    got  {g:02x?}\n    want {w:02x?}")
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{ty}: {} of {} blocks differ from {source}, first ones:\n{}",
        mismatches.len(),
        got.len() / size,
        mismatches[..mismatches.len().min(3)].join("\n")
    );
}

fn gguf_py() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| compute_reference(&[], &GGUF_PY_TYPES))
}

fn ggml() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| match std::env::var_os("REALM_GGML_BASE") {
        Some(lib) => compute_reference(&["--ggml".as_ref(), lib.as_os_str()], &ALL_TYPES),
        None => Err("set REALM_GGML_BASE to llama.cpp's libggml-base.so (e.g. from llama-cpp-python)".into()),
    })
}

macro_rules! gguf_py_formats {
    ($($name:ident => $ty:expr),* $(,)?) => {
        $(#[test] fn $name() { check($ty, gguf_py(), "gguf-py"); })*
    };
}

gguf_py_formats! {
    gguf_py_f16 => GgmlType::F16,
    gguf_py_bf16 => GgmlType::Bf16,
    gguf_py_q4_0 => GgmlType::Q4_0,
    gguf_py_q4_1 => GgmlType::Q4_1,
    gguf_py_q5_0 => GgmlType::Q5_0,
    gguf_py_q5_1 => GgmlType::Q5_1,
    gguf_py_q8_0 => GgmlType::Q8_0,
}

macro_rules! ggml_formats {
    ($($name:ident => $ty:expr),* $(,)?) => {
        $(
            #[test]
            #[ignore = "needs llama.cpp's libggml-base.so in REALM_GGML_BASE"]
            fn $name() { check($ty, ggml(), "llama.cpp's ggml_quantize_chunk"); }
        )*
    };
}

ggml_formats! {
    ggml_f32 => GgmlType::F32,
    ggml_f16 => GgmlType::F16,
    ggml_bf16 => GgmlType::Bf16,
    ggml_q4_0 => GgmlType::Q4_0,
    ggml_q4_1 => GgmlType::Q4_1,
    ggml_q5_0 => GgmlType::Q5_0,
    ggml_q5_1 => GgmlType::Q5_1,
    ggml_q8_0 => GgmlType::Q8_0,
    ggml_q2_k => GgmlType::Q2K,
    ggml_q3_k => GgmlType::Q3K,
    ggml_q4_k => GgmlType::Q4K,
    ggml_q5_k => GgmlType::Q5K,
    ggml_q6_k => GgmlType::Q6K,
}
