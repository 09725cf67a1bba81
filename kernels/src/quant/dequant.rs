//! Row dequantization: checks lengths once, then runs a per-type block loop.

use super::blocks::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, QK, QK_K,
};
use super::{GgmlType, QuantError};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Dequantizes `dst.len()` elements of type `ty` from `src` into `dst`.
///
/// `dst.len()` must be a whole number of blocks and `src` exactly their byte size. `src` needs
/// no alignment. Results are bit-identical to gguf-py's `gguf.quants.dequantize`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => row_f32,
        GgmlType::F16 => row_f16,
        GgmlType::Bf16 => row_bf16,
        GgmlType::Q4_0 => row_q4_0,
        GgmlType::Q4_1 => row_q4_1,
        GgmlType::Q5_0 => row_q5_0,
        GgmlType::Q5_1 => row_q5_1,
        GgmlType::Q8_0 => row_q8_0,
        GgmlType::Q2K => row_q2k,
        GgmlType::Q3K => row_q3k,
        GgmlType::Q4K => row_q4k,
        GgmlType::Q5K => row_q5k,
        GgmlType::Q6K => row_q6k,
        _ => {
            return Err(QuantError::Unsupported { ty, what: "dequantization" });
        }
    };
    let elements = dst.len() as u64;
    let expected = ty.byte_size(elements)?.ok_or(QuantError::TooLarge { ty, elements })?;
    let got = src.len() as u64;
    if got != expected {
        return Err(QuantError::WrongByteLength { ty, elements, expected, got });
    }
    kernel(src, dst);
    Ok(())
}

/// Runs `f` on each `S`-byte block of `src` and its `Q` outputs. Fixed-size arrays let the
/// block code index without bounds checks.
#[inline(always)]
fn for_each_block<const S: usize, const Q: usize>(src: &[u8], dst: &mut [f32], f: impl Fn(&[u8; S], &mut [f32; Q])) {
    for (s, d) in src.chunks_exact(S).zip(dst.chunks_exact_mut(Q)) {
        // chunks_exact yields exactly S and Q items, so both conversions succeed.
        if let (Ok(s), Ok(d)) = (s.try_into(), d.try_into()) {
            f(s, d);
        }
    }
}

/// Scalar formats go through 16 elements at a time so that the loop body has fixed bounds
/// and vectorises; a tail shorter than 16 takes the slow path.
#[inline(always)]
fn for_each_scalar<const W: usize>(src: &[u8], dst: &mut [f32], f: impl Fn([u8; W]) -> f32) {
    const LANES: usize = 16;
    let split = dst.len() / LANES * LANES;
    let (dst_main, dst_tail) = dst.split_at_mut(split);
    let (src_main, src_tail) = src.split_at(split * W);
    for (s, d) in src_main.chunks_exact(LANES * W).zip(dst_main.chunks_exact_mut(LANES)) {
        for (c, o) in s.chunks_exact(W).zip(d.iter_mut()) {
            let mut b = [0; W];
            b.copy_from_slice(c);
            *o = f(b);
        }
    }
    for (c, o) in src_tail.chunks_exact(W).zip(dst_tail.iter_mut()) {
        let mut b = [0; W];
        b.copy_from_slice(c);
        *o = f(b);
    }
}

fn row_f32(src: &[u8], dst: &mut [f32]) {
    for_each_scalar::<4>(src, dst, f32::from_le_bytes);
}

fn row_f16(src: &[u8], dst: &mut [f32]) {
    // `half`'s slice conversion picks F16C / NEON fp16 at run time (2.3x the portable loop);
    // it needs `[f16]`, and GGUF data may be unaligned, so stage through a stack buffer.
    const CHUNK: usize = 256;
    let mut buf = [f16::ZERO; CHUNK];
    for (s, d) in src.chunks(2 * CHUNK).zip(dst.chunks_mut(CHUNK)) {
        for (b, c) in buf.iter_mut().zip(s.chunks_exact(2)) {
            *b = f16::from_le_bytes([c[0], c[1]]);
        }
        buf[..d.len()].convert_to_f32_slice(d);
    }
}

fn row_bf16(src: &[u8], dst: &mut [f32]) {
    // bf16 is the top half of an f32.
    for_each_scalar::<2>(src, dst, |b| f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16));
}

fn row_q4_0(src: &[u8], dst: &mut [f32]) {
    for_each_block::<18, QK>(src, dst, |b, o| BlockQ4_0::from_bytes(b).dequantize(o));
}

fn row_q4_1(src: &[u8], dst: &mut [f32]) {
    for_each_block::<20, QK>(src, dst, |b, o| BlockQ4_1::from_bytes(b).dequantize(o));
}

fn row_q5_0(src: &[u8], dst: &mut [f32]) {
    for_each_block::<22, QK>(src, dst, |b, o| BlockQ5_0::from_bytes(b).dequantize(o));
}

fn row_q5_1(src: &[u8], dst: &mut [f32]) {
    for_each_block::<24, QK>(src, dst, |b, o| BlockQ5_1::from_bytes(b).dequantize(o));
}

fn row_q8_0(src: &[u8], dst: &mut [f32]) {
    for_each_block::<34, QK>(src, dst, |b, o| BlockQ8_0::from_bytes(b).dequantize(o));
}

fn row_q2k(src: &[u8], dst: &mut [f32]) {
    for_each_block::<84, QK_K>(src, dst, |b, o| BlockQ2K::from_bytes(b).dequantize(o));
}

fn row_q3k(src: &[u8], dst: &mut [f32]) {
    for_each_block::<110, QK_K>(src, dst, |b, o| BlockQ3K::from_bytes(b).dequantize(o));
}

fn row_q4k(src: &[u8], dst: &mut [f32]) {
    for_each_block::<144, QK_K>(src, dst, |b, o| BlockQ4K::from_bytes(b).dequantize(o));
}

fn row_q5k(src: &[u8], dst: &mut [f32]) {
    for_each_block::<176, QK_K>(src, dst, |b, o| BlockQ5K::from_bytes(b).dequantize(o));
}

fn row_q6k(src: &[u8], dst: &mut [f32]) {
    for_each_block::<210, QK_K>(src, dst, |b, o| BlockQ6K::from_bytes(b).dequantize(o));
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SUPPORTED: [GgmlType; 13] = crate::quant::ROW_FORMATS;

    fn sizes(ty: GgmlType) -> (usize, usize) {
        (ty.block_size() as usize, ty.type_size() as usize)
    }

    #[test]
    fn block_structs_match_the_type_table() {
        let structs = [
            (GgmlType::Q4_0, size_of::<BlockQ4_0>()),
            (GgmlType::Q4_1, size_of::<BlockQ4_1>()),
            (GgmlType::Q5_0, size_of::<BlockQ5_0>()),
            (GgmlType::Q5_1, size_of::<BlockQ5_1>()),
            (GgmlType::Q8_0, size_of::<BlockQ8_0>()),
            (GgmlType::Q2K, size_of::<BlockQ2K>()),
            (GgmlType::Q3K, size_of::<BlockQ3K>()),
            (GgmlType::Q4K, size_of::<BlockQ4K>()),
            (GgmlType::Q5K, size_of::<BlockQ5K>()),
            (GgmlType::Q6K, size_of::<BlockQ6K>()),
            (GgmlType::Q8K, size_of::<crate::quant::BlockQ8K>()),
        ];
        for (ty, size) in structs {
            assert_eq!(ty.type_size() as usize, size, "{ty}");
        }
    }

    #[test]
    fn empty_rows_are_fine() {
        for ty in SUPPORTED {
            dequantize_row(ty, &[], &mut []).expect("empty row");
        }
    }

    #[test]
    fn partial_blocks_are_errors() {
        for ty in SUPPORTED.into_iter().filter(|t| t.block_size() > 1) {
            let (qk, size) = sizes(ty);
            let src = vec![0; size * 2];
            let mut dst = vec![0.0; qk + 1];
            let err = dequantize_row(ty, &src, &mut dst).expect_err("partial block");
            assert!(matches!(err, QuantError::NotBlockMultiple { .. }), "{ty}: {err}");
        }
    }

    #[test]
    fn wrong_byte_lengths_are_errors() {
        for ty in SUPPORTED {
            let (qk, size) = sizes(ty);
            let mut dst = vec![0.0; qk * 3];
            for len in [0, size * 3 - 1, size * 3 + 1, size * 4] {
                let src = vec![0; len];
                let err = dequantize_row(ty, &src, &mut dst).expect_err("wrong length");
                match err {
                    QuantError::WrongByteLength { expected, got, .. } => {
                        assert_eq!((expected, got), ((size * 3) as u64, len as u64), "{ty}");
                    }
                    other => panic!("{ty}: {other}"),
                }
            }
        }
    }

    #[test]
    fn unsupported_types_are_errors() {
        for ty in [GgmlType::Q8_1, GgmlType::Q8K, GgmlType::Iq4Xs, GgmlType::I8, GgmlType::F64] {
            let (qk, size) = sizes(ty);
            let err = dequantize_row(ty, &vec![0; size], &mut vec![0.0; qk]).expect_err("unsupported");
            assert!(matches!(err, QuantError::Unsupported { .. }), "{ty}: {err}");
        }
    }

    #[test]
    fn scalar_tails_are_converted() {
        // 19 elements: one vector chunk of 16 plus a tail of 3.
        let want: Vec<f32> = (0..19).map(|i| i as f32 - 9.5).collect();
        let f32_bytes: Vec<u8> = want.iter().flat_map(|x| x.to_le_bytes()).collect();
        let f16_bytes: Vec<u8> = want.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        let bf16_bytes: Vec<u8> = want.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
        for (ty, src) in [(GgmlType::F32, f32_bytes), (GgmlType::F16, f16_bytes), (GgmlType::Bf16, bf16_bytes)] {
            let mut got = vec![0.0; want.len()];
            dequantize_row(ty, &src, &mut got).expect("dequantize");
            assert_eq!(got, want, "{ty}");
        }
    }

    fn type_and_bytes() -> impl Strategy<Value = (GgmlType, Vec<u8>)> {
        (proptest::sample::select(SUPPORTED.to_vec()), 0usize..5).prop_flat_map(|(ty, blocks)| {
            let len = blocks * ty.type_size() as usize;
            (Just(ty), proptest::collection::vec(any::<u8>(), len))
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic((ty, src) in type_and_bytes()) {
            let (qk, size) = sizes(ty);
            let mut dst = vec![0.0; src.len() / size * qk];
            prop_assert!(dequantize_row(ty, &src, &mut dst).is_ok());
        }

        #[test]
        fn arbitrary_lengths_never_panic(
            ty in proptest::sample::select(SUPPORTED.to_vec()),
            src_len in 0usize..1200,
            dst_len in 0usize..1200,
        ) {
            let src = vec![0xa5; src_len];
            let mut dst = vec![0.0; dst_len];
            let _ = dequantize_row(ty, &src, &mut dst);
        }
    }
}
