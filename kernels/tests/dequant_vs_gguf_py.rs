//! Bit-exact comparison of `dequantize_row` with gguf-py's numpy dequantization
//! (`gguf.quants.dequantize`), the reference llama.cpp's own Python tooling uses.
//!
//! One Python process computes the reference for every format; each format is its own test.

mod common;

use std::collections::HashMap;
use std::mem::offset_of;
use std::process::Command;
use std::sync::OnceLock;

use realm_kernels::GgmlType;
use realm_kernels::quant::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0,
    dequantize_row,
};

/// Blocks per format (for scalar formats, 64 blocks of 256 elements).
const BLOCKS: usize = 64;

/// Each format with the byte offsets of its f16 scale fields within a block.
fn cases() -> Vec<(GgmlType, Vec<usize>)> {
    vec![
        (GgmlType::F32, vec![]),
        (GgmlType::F16, vec![]),
        (GgmlType::Bf16, vec![]),
        (GgmlType::Q4_0, vec![offset_of!(BlockQ4_0, d)]),
        (GgmlType::Q4_1, vec![offset_of!(BlockQ4_1, d), offset_of!(BlockQ4_1, m)]),
        (GgmlType::Q5_0, vec![offset_of!(BlockQ5_0, d)]),
        (GgmlType::Q5_1, vec![offset_of!(BlockQ5_1, d), offset_of!(BlockQ5_1, m)]),
        (GgmlType::Q8_0, vec![offset_of!(BlockQ8_0, d)]),
        (GgmlType::Q2K, vec![offset_of!(BlockQ2K, d), offset_of!(BlockQ2K, dmin)]),
        (GgmlType::Q3K, vec![offset_of!(BlockQ3K, d)]),
        (GgmlType::Q4K, vec![offset_of!(BlockQ4K, d), offset_of!(BlockQ4K, dmin)]),
        (GgmlType::Q5K, vec![offset_of!(BlockQ5K, d), offset_of!(BlockQ5K, dmin)]),
        (GgmlType::Q6K, vec![offset_of!(BlockQ6K, d)]),
    ]
}

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

    /// A finite f16 of either sign with magnitude below 4, subnormals and zero included.
    fn scale_f16(&mut self) -> [u8; 2] {
        let r = self.next();
        let exponent = (r % 17) as u16;
        let bits = ((r >> 8) as u16 & 0x83ff) | (exponent << 10);
        bits.to_le_bytes()
    }
}

/// Random blocks of `ty`; scale fields are finite so that every output is a real comparison.
/// Scalar formats keep fully random bits, NaN and infinity included.
fn input(ty: GgmlType, scale_offsets: &[usize]) -> Vec<u8> {
    let mut rng = Rng(0x5eed ^ u64::from(ty.id()));
    let block_bytes = if ty.block_size() == 1 { 256 } else { 1 } * ty.type_size() as usize;
    let mut bytes: Vec<u8> = (0..BLOCKS * block_bytes).map(|_| rng.next() as u8).collect();
    for block in bytes.chunks_exact_mut(block_bytes) {
        for &at in scale_offsets {
            block[at..at + 2].copy_from_slice(&rng.scale_f16());
        }
    }
    bytes
}

/// gguf-py's output for every case, keyed by type, or why it could not be computed.
fn reference() -> &'static Result<HashMap<GgmlType, Vec<f32>>, String> {
    static REFERENCE: OnceLock<Result<HashMap<GgmlType, Vec<f32>>, String>> = OnceLock::new();
    REFERENCE.get_or_init(compute_reference)
}

fn compute_reference() -> Result<HashMap<GgmlType, Vec<f32>>, String> {
    let python = common::python();
    if !python.exists() {
        return Err(format!(
            "no Python at {}: run scripts/setup.sh (or set REALM_PYTHON to a Python with the \
             `gguf` package)",
            python.display()
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let mut cmd = Command::new(&python);
    cmd.arg(common::workspace_root().join("scripts/quant_reference.py"));
    for (ty, offsets) in cases() {
        let inp = dir.path().join(format!("{ty}.in"));
        std::fs::write(&inp, input(ty, &offsets)).map_err(|e| format!("{}: {e}", inp.display()))?;
        cmd.arg(ty.name()).arg(inp).arg(dir.path().join(format!("{ty}.out")));
    }
    let out = cmd.output().map_err(|e| format!("running {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/quant_reference.py failed ({}); run scripts/setup.sh if `gguf` is missing:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut map = HashMap::new();
    for (ty, _) in cases() {
        let path = dir.path().join(format!("{ty}.out"));
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        map.insert(ty, values);
    }
    Ok(map)
}

fn check(ty: GgmlType) {
    let reference = match reference() {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let want = reference.get(&ty).expect("every case has a reference");
    let offsets = cases().into_iter().find(|c| c.0 == ty).expect("case").1;
    let src = input(ty, &offsets);
    let mut got = vec![f32::NAN; src.len() / ty.type_size() as usize * ty.block_size() as usize];
    dequantize_row(ty, &src, &mut got).expect("dequantize_row");
    assert_eq!(got.len(), want.len(), "{ty}: element count");

    // NaN payloads are not compared: numpy and Rust may quiet a signalling NaN differently.
    let mismatches: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| !(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan())))
        .map(|(i, (g, w))| {
            let block = i / ty.block_size() as usize;
            format!("  [{i}] (block {block}): got {g:e} ({:#010x}), want {w:e} ({:#010x})", g.to_bits(), w.to_bits())
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{ty}: {} of {} elements differ from gguf-py, first ones:\n{}",
        mismatches.len(),
        got.len(),
        mismatches[..mismatches.len().min(10)].join("\n")
    );
}

macro_rules! formats {
    ($($name:ident => $ty:expr),* $(,)?) => {
        $(#[test] fn $name() { check($ty); })*
    };
}

formats! {
    f32 => GgmlType::F32,
    f16 => GgmlType::F16,
    bf16 => GgmlType::Bf16,
    q4_0 => GgmlType::Q4_0,
    q4_1 => GgmlType::Q4_1,
    q5_0 => GgmlType::Q5_0,
    q5_1 => GgmlType::Q5_1,
    q8_0 => GgmlType::Q8_0,
    q2_k => GgmlType::Q2K,
    q3_k => GgmlType::Q3K,
    q4_k => GgmlType::Q4K,
    q5_k => GgmlType::Q5K,
    q6_k => GgmlType::Q6K,
}

#[test]
fn rows_split_anywhere_on_block_boundaries_agree() {
    // The forward pass dequantizes single rows; the result must not depend on where a row
    // starts in the tensor.
    for (ty, offsets) in cases() {
        let src = input(ty, &offsets);
        let (qk, size) = (ty.block_size() as usize, ty.type_size() as usize);
        let mut whole = vec![0.0f32; src.len() / size * qk];
        dequantize_row(ty, &src, &mut whole).expect("whole");
        let mut pieces = vec![0.0f32; whole.len()];
        let row_blocks = 3;
        for (s, d) in src.chunks(row_blocks * size).zip(pieces.chunks_mut(row_blocks * qk)) {
            dequantize_row(ty, s, d).expect("row");
        }
        let same = whole.iter().zip(&pieces).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{ty}");
    }
}
