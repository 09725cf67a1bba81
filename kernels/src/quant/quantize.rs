//! Reference quantization: f32 rows into GGML block formats.
//!
//! Each format follows llama.cpp's `quantize_row_*_ref` in `ggml-quants.c`, the quantizers
//! `llama-quantize` runs when it has no importance matrix: the legacy formats scale by the
//! block's extreme value; Q4_K and Q5_K fit a scale and a min per 32 elements by a weighted
//! search (`make_qkx2_quants`), Q6_K a signed scale per 16 (`make_qx_quants`), Q3_K with
//! `make_q3_quants`, Q2_K with `make_qkx2_quants` on absolute-value weights.
//!
//! The arithmetic is plain `f32` in the C order of operations (Rust never fuses `a * b + c`),
//! so for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16 and BF16 the bytes are identical to gguf-py's
//! numpy quantizers (`gguf.quants.quantize`), which the tests check. gguf-py has no K-quant
//! quantizers; those are tested by round-trip error bounds.
//!
//! Inputs must be finite, and outputs are checked the way `llama-quantize` checks them
//! (`ggml_validate_row_data`): a block whose f16 scale overflows is an error, not an `inf`
//! in the file.

use half::{bf16, f16};
use rayon::prelude::*;

use super::blocks::{K_SCALE_SIZE, QK, QK_K, f16_bits_to_f32};
use super::{GgmlType, QuantError};

/// llama.cpp's `GROUP_MAX_EPS`: groups whose largest magnitude is below this quantize to zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// No f16-scaled block format represents a magnitude this large (the largest is Q6_K's
/// 65504 * 127 * 32, about 2.7e8). Larger inputs are rejected up front: past about 1e12 the
/// K-quant searches' weighted sums overflow f32 and would give garbage levels under a finite
/// scale, which the scale check after quantizing cannot see.
const MAX_BLOCK_INPUT: f32 = 1e9;

/// Quantizes `src` into `dst` as `ty`.
///
/// `src.len()` must be a whole number of blocks of `ty` and `dst.len()` exactly their byte
/// size. Blocks are independent, so a tensor of many rows can be passed whole. Supported:
/// F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let kernel = Kernel::for_type(ty)?;
    kernel.check_input(src, dst)?;
    (kernel.run)(src, dst);
    kernel.check_output(src, dst)
}

/// [`quantize_row`] split over rayon's thread pool; the bytes are the same.
pub fn quantize_row_parallel(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    /// Elements per task: a multiple of every block size, large enough to amortise a task.
    const CHUNK: usize = 64 * QK_K;
    let kernel = Kernel::for_type(ty)?;
    kernel.check_input(src, dst)?;
    let blocks_per_chunk = CHUNK / kernel.block;
    src.par_chunks(CHUNK).zip(dst.par_chunks_mut(blocks_per_chunk * kernel.size)).for_each(|(s, d)| (kernel.run)(s, d));
    kernel.check_output(src, dst)
}

type RowFn = fn(&[f32], &mut [u8]);

/// One format's row function and where its outputs can overflow.
struct Kernel {
    ty: GgmlType,
    /// Elements per block.
    block: usize,
    /// Bytes per block.
    size: usize,
    run: RowFn,
    /// Byte offsets of the 16-bit scale fields (or, for F16 and BF16, of the value) in a block.
    scales: &'static [usize],
    /// Whether a 16-bit field holds a finite value.
    finite: fn(u16) -> bool,
}

fn f16_finite(bits: u16) -> bool {
    bits & 0x7c00 != 0x7c00
}

fn bf16_finite(bits: u16) -> bool {
    bits & 0x7f80 != 0x7f80
}

impl Kernel {
    fn for_type(ty: GgmlType) -> Result<Self, QuantError> {
        let (run, scales, finite): (RowFn, &'static [usize], fn(u16) -> bool) = match ty {
            GgmlType::F32 => (row_f32, &[], f16_finite),
            GgmlType::F16 => (row_f16, &[0], f16_finite),
            GgmlType::Bf16 => (row_bf16, &[0], bf16_finite),
            GgmlType::Q4_0 => (|s, d| for_blocks(s, d, q4_0), &[0], f16_finite),
            GgmlType::Q4_1 => (|s, d| for_blocks(s, d, q4_1), &[0, 2], f16_finite),
            GgmlType::Q5_0 => (|s, d| for_blocks(s, d, q5_0), &[0], f16_finite),
            GgmlType::Q5_1 => (|s, d| for_blocks(s, d, q5_1), &[0, 2], f16_finite),
            GgmlType::Q8_0 => (|s, d| for_blocks(s, d, q8_0), &[0], f16_finite),
            GgmlType::Q2K => (|s, d| for_blocks(s, d, q2_k), &[80, 82], f16_finite),
            GgmlType::Q3K => (|s, d| for_blocks(s, d, q3_k), &[108], f16_finite),
            GgmlType::Q4K => (|s, d| for_blocks(s, d, q4_k), &[0, 2], f16_finite),
            GgmlType::Q5K => (|s, d| for_blocks(s, d, q5_k), &[0, 2], f16_finite),
            GgmlType::Q6K => (|s, d| for_blocks(s, d, q6_k), &[208], f16_finite),
            _ => return Err(QuantError::Unsupported { ty, what: "quantization" }),
        };
        Ok(Self { ty, block: ty.block_size() as usize, size: ty.type_size() as usize, run, scales, finite })
    }

    fn check_input(&self, src: &[f32], dst: &[u8]) -> Result<(), QuantError> {
        let ty = self.ty;
        let elements = src.len() as u64;
        let expected = ty.byte_size(elements)?.ok_or(QuantError::TooLarge { ty, elements })?;
        let got = dst.len() as u64;
        if got != expected {
            return Err(QuantError::WrongByteLength { ty, elements, expected, got });
        }
        if let Some(index) = src.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite { ty, index: index as u64, value: src[index] });
        }
        match src.iter().position(|v| v.abs() > MAX_BLOCK_INPUT) {
            Some(index) if self.block > 1 => Err(self.overflow(src, index / self.block)),
            _ => Ok(()),
        }
    }

    fn overflow(&self, src: &[f32], block: usize) -> QuantError {
        let start = block * self.block;
        let max_abs = src[start..start + self.block].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        QuantError::Overflow { ty: self.ty, block: block as u64, max_abs }
    }

    /// The first block whose scale (or value) is not finite, as `ggml_validate_row_data`
    /// rejects it.
    fn check_output(&self, src: &[f32], dst: &[u8]) -> Result<(), QuantError> {
        if self.scales.is_empty() {
            return Ok(());
        }
        for (block, bytes) in dst.chunks_exact(self.size).enumerate() {
            let bad = self.scales.iter().any(|&at| !(self.finite)(u16::from_le_bytes([bytes[at], bytes[at + 1]])));
            if bad {
                return Err(self.overflow(src, block));
            }
        }
        Ok(())
    }
}

/// Runs `f` on each block of `Q` inputs and its `S` output bytes.
#[inline(always)]
fn for_blocks<const Q: usize, const S: usize>(src: &[f32], dst: &mut [u8], f: fn(&[f32; Q], &mut [u8; S])) {
    for (x, y) in src.chunks_exact(Q).zip(dst.chunks_exact_mut(S)) {
        // chunks_exact yields exactly Q and S items, so both conversions succeed.
        if let (Ok(x), Ok(y)) = (x.try_into(), y.try_into()) {
            f(x, y);
        }
    }
}

fn row_f32(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(4)) {
        y.copy_from_slice(&x.to_le_bytes());
    }
}

fn row_f16(src: &[f32], dst: &mut [u8]) {
    // Round to nearest even, overflow to infinity: numpy's `astype(np.float16)` and ggml's
    // `GGML_FP32_TO_FP16`.
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(2)) {
        y.copy_from_slice(&f16::from_f32(*x).to_le_bytes());
    }
}

fn row_bf16(src: &[f32], dst: &mut [u8]) {
    // Round to nearest even on the top 16 bits (ggml's `ggml_compute_fp32_to_bf16`); inputs
    // are finite, so its NaN case never arises.
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(2)) {
        y.copy_from_slice(&bf16::from_f32(*x).to_le_bytes());
    }
}

/// `x` rounded to f16 and stored little-endian at `y[at..at + 2]`; returns the stored value.
#[inline(always)]
fn put_f16(y: &mut [u8], at: usize, x: f32) -> f32 {
    let h = f16::from_f32(x);
    y[at..at + 2].copy_from_slice(&h.to_le_bytes());
    f16_bits_to_f32(h.to_bits())
}

/// The first element of largest magnitude, with its sign (the legacy symmetric formats and
/// `make_qx_quants` scale by it so that it maps to the most negative level).
#[inline(always)]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

// ---- Legacy formats: one scale (and min) per 32 elements.

fn q4_0(x: &[f32; QK], y: &mut [u8; 18]) {
    let (_, max) = signed_absmax(x);
    let d = max / -8.0;
    let id = inverse(d);
    put_f16(y, 0, d);
    // Truncation after adding 8.5 rounds to nearest; the largest magnitude lands on 0 or 16.
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..QK / 2 {
        y[2 + j] = q(x[j]) | (q(x[j + QK / 2]) << 4);
    }
}

fn q4_1(x: &[f32; QK], y: &mut [u8; 20]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
    for j in 0..QK / 2 {
        y[4 + j] = q(x[j]) | (q(x[j + QK / 2]) << 4);
    }
}

/// Q5 values: low nibbles packed as in Q4, bit 4 of element `i` in bit `i` of `qh`.
#[inline(always)]
fn pack_q5(q: &[u8; QK], qh: &mut [u8], qs: &mut [u8]) {
    let mut high = 0u32;
    for j in 0..QK / 2 {
        let (a, b) = (q[j], q[j + QK / 2]);
        qs[j] = (a & 0x0f) | ((b & 0x0f) << 4);
        high |= u32::from(a >> 4) << j;
        high |= u32::from(b >> 4) << (j + QK / 2);
    }
    qh.copy_from_slice(&high.to_le_bytes());
}

fn q5_0(x: &[f32; QK], y: &mut [u8; 22]) {
    let (_, max) = signed_absmax(x);
    let d = max / -16.0;
    let id = inverse(d);
    put_f16(y, 0, d);
    let q: [u8; QK] = std::array::from_fn(|i| ((x[i] * id + 16.5) as i8).min(31) as u8);
    let (qh, qs) = y[2..].split_at_mut(4);
    pack_q5(&q, qh, qs);
}

fn q5_1(x: &[f32; QK], y: &mut [u8; 24]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    let q: [u8; QK] = std::array::from_fn(|i| (((x[i] - min) * id + 0.5) as u8).min(31));
    let (qh, qs) = y[4..].split_at_mut(4);
    pack_q5(&q, qh, qs);
}

fn q8_0(x: &[f32; QK], y: &mut [u8; 34]) {
    let amax = x.iter().fold(0.0f32, |m, v| if m > v.abs() { m } else { v.abs() });
    let d = amax / 127.0;
    let id = inverse(d);
    put_f16(y, 0, d);
    for (o, &v) in y[2..].iter_mut().zip(x) {
        // `round` is C's `roundf`: halves away from zero.
        *o = (v * id).round() as i8 as u8;
    }
}

// ---- K-quants: 256-element super-blocks.

/// llama.cpp's `nearest_int`: adding 1.5 * 2^23 leaves `round_half_even(f)` in the low
/// mantissa bits for |f| < 2^22. Outside that range the result is meaningless but bounded.
#[inline(always)]
fn nearest_int(f: f32) -> i32 {
    let v = f + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// `make_qkx2_quants`: levels `L[i]` in `0..=nmax`, a scale and a min (returned negated, as
/// llama.cpp stores mins) minimising the weighted error, searching `nstep + 1` candidate
/// scales around `nmax / (max - min)`. `use_mad` weighs absolute instead of squared errors.
#[allow(clippy::too_many_arguments)] // llama.cpp's search parameters, kept side by side
fn make_qkx2_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..N].fill(0);
        return (0.0, -min);
    }
    let err = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..N {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        best_error += weights[i] * err(scale * l as f32 + min - x[i]);
    }
    let mut laux = [0u8; N];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..N {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..N {
                cur_error += weights[i] * err(this_scale * f32::from(laux[i]) + this_min - x[i]);
            }
            if cur_error < best_error {
                l_out[..N].copy_from_slice(&laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qx_quants` with `rmse_type == 1` and no importance weights (weights `x * x`): signed
/// levels `L[i] + nmax` in `0..2 * nmax`, trying 19 scales around `-nmax / max`.
fn make_qx_quants(nmax: i32, x: &[f32; 16], l_out: &mut [u8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..16].fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (o, &v) in l_out.iter_mut().zip(x) {
        *o = (level(iscale, v) + nmax) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l_out.iter_mut().zip(x) {
                *o = (level(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants` with `do_rmse`: signed levels in `-nmax..nmax`, refined one element at a
/// time for up to five passes; returns the scale and leaves `L[i] + nmax` in `l_out`.
fn make_q3_quants(nmax: i32, x: &[f32; 16], l_out: &mut [u8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..16].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut l = [0i32; 16];
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..16 {
        l[i] = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        let (w, li) = (x[i] * x[i], l[i] as f32);
        sumlx += w * x[i] * li;
        suml2 += w * li * li;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..16 {
            let w = x[i] * x[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (o, &li) in l_out.iter_mut().zip(&l) {
        *o = (li + nmax) as u8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Four 2-bit values per byte: byte `32 * h + i` holds elements `128 * h + 32 * k + i`,
/// k = 0..4, from the low bits up (Q2_K and Q3_K).
#[inline(always)]
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for h in 0..2 {
        for i in 0..32 {
            let at = 128 * h + i;
            qs[32 * h + i] = l[at] | (l[at + 32] << 2) | (l[at + 64] << 4) | (l[at + 96] << 6);
        }
    }
}

/// Sub-block `j` of `N` elements, copied into a fixed-size array.
#[inline(always)]
fn group<const N: usize>(x: &[f32; QK_K], j: usize) -> [f32; N] {
    std::array::from_fn(|i| x[N * j + i])
}

fn q2_k(x: &[f32; QK_K], y: &mut [u8; 84]) {
    const Q4SCALE: f32 = 15.0;
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..16 {
        let xs = group::<16>(x, j);
        let weights = xs.map(f32::abs);
        (scales[j], mins[j]) = make_qkx2_quants(3, &xs, &weights, &mut l[16 * j..], -0.5, 0.1, 15, true);
        max_scale = max_scale.max_c(scales[j]);
        max_min = max_min.max_c(mins[j]);
    }
    y.fill(0);
    let d = if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..16 {
            y[j] = nearest_int(iscale * scales[j]) as u8;
        }
        put_f16(y, 80, max_scale / Q4SCALE)
    } else {
        put_f16(y, 80, 0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..16 {
            y[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        put_f16(y, 82, max_min / Q4SCALE)
    } else {
        put_f16(y, 82, 0.0)
    };
    for (j, &sc) in y[..16].iter().enumerate() {
        let dl = d * f32::from(sc & 0x0f);
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * f32::from(sc >> 4);
        for i in 16 * j..16 * j + 16 {
            l[i] = nearest_int((x[i] + ml) / dl).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut y[16..80]);
}

fn q3_k(x: &[f32; QK_K], y: &mut [u8; 110]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut amax, mut max_scale) = (0.0f32, 0.0f32);
    for j in 0..16 {
        scales[j] = make_q3_quants(4, &group::<16>(x, j), &mut l[16 * j..]);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }
    y.fill(0);
    let sc = &mut y[96..108];
    let d = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            // 6-bit scales offset by 32: low nibbles in bytes 0..8, high two bits in 8..12.
            let q = ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8;
            sc[j % 8] |= (q & 0x0f) << (4 * (j / 8));
            sc[8 + j % 4] |= (q >> 4) << (2 * (j / 4));
        }
        put_f16(y, 108, 1.0 / iscale)
    } else {
        put_f16(y, 108, 0.0)
    };
    for j in 0..16 {
        let sc = &y[96..108];
        let lo = (sc[j % 8] >> (4 * (j / 8))) & 0x0f;
        let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        let dl = d * f32::from((lo | (hi << 4)) as i8 - 32);
        if dl == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            l[i] = (nearest_int(x[i] / dl).clamp(-4, 3) + 4) as u8;
        }
    }
    // The high bit of element i goes to bit i / 32 of hmask[i % 32]; the low two bits stay.
    let (hmask, rest) = y.split_at_mut(32);
    for (i, li) in l.iter_mut().enumerate() {
        if *li > 3 {
            hmask[i % 32] |= 1 << (i / 32);
            *li -= 4;
        }
    }
    pack_2bit(&l, &mut rest[..64]);
}

/// The 6-bit scales and mins of Q4_K / Q5_K, packed as `get_scale_min_k4` unpacks them.
#[inline(always)]
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], out: &mut [u8]) {
    for j in 0..4 {
        out[j] = ls[j] | ((ls[j + 4] >> 4) << 6);
        out[j + 4] = lm[j] | ((lm[j + 4] >> 4) << 6);
        out[j + 8] = (ls[j + 4] & 0x0f) | ((lm[j + 4] & 0x0f) << 4);
    }
}

/// Q4_K / Q5_K: scales and mins for eight groups of 32 with `make_qkx2_quants`, quantized
/// to 6 bits against the largest of each; then every element re-quantized against the
/// stored (rounded) scale and min. Fills `d`, `dmin` and `scales`, returns the levels.
fn k4_levels(x: &[f32; QK_K], y: &mut [u8], nmax: i32, rmin: f32, nstep: i32) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = group::<32>(x, j);
        let mut sum_x2 = 0.0f32;
        for &v in &xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights = xs.map(|v| av_x + v.abs());
        (scales[j], mins[j]) = make_qkx2_quants(nmax, &xs, &weights, &mut l[32 * j..], rmin, 0.1, nstep, false);
        max_scale = max_scale.max_c(scales[j]);
        max_min = max_min.max_c(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    pack_scale_min_k4(&ls, &lm, &mut y[4..4 + K_SCALE_SIZE]);
    let d = put_f16(y, 0, max_scale / 63.0);
    let dmin = put_f16(y, 2, max_min / 63.0);
    for j in 0..8 {
        let dl = d * f32::from(ls[j]);
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * f32::from(lm[j]);
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + ml) / dl).clamp(0, nmax) as u8;
        }
    }
    l
}

fn q4_k(x: &[f32; QK_K], y: &mut [u8; 144]) {
    let l = k4_levels(x, y, 15, -1.0, 20);
    // Group 2c in the low nibbles of qs[32c..32c + 32], group 2c + 1 in the high nibbles.
    for c in 0..4 {
        for i in 0..32 {
            y[16 + 32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
        }
    }
}

fn q5_k(x: &[f32; QK_K], y: &mut [u8; 176]) {
    let l = k4_levels(x, y, 31, -0.5, 15);
    // As Q4_K, with bit 4 of element i of group j in bit j of qh[i].
    let (qh, qs) = y[16..].split_at_mut(QK_K / 8);
    qh.fill(0);
    for c in 0..4 {
        for i in 0..32 {
            let (a, b) = (l[64 * c + i], l[64 * c + 32 + i]);
            qs[32 * c + i] = (a & 0x0f) | ((b & 0x0f) << 4);
            qh[i] |= ((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1));
        }
    }
}

fn q6_k(x: &[f32; QK_K], y: &mut [u8; 210]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_abs_scale, mut max_scale) = (0.0f32, 0.0f32);
    for j in 0..16 {
        scales[j] = make_qx_quants(32, &group::<16>(x, j), &mut l[16 * j..]);
        if scales[j].abs() > max_abs_scale {
            max_abs_scale = scales[j].abs();
            max_scale = scales[j];
        }
    }
    y.fill(0);
    if max_abs_scale < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = put_f16(y, 208, 1.0 / iscale);
    for j in 0..16 {
        y[192 + j] = nearest_int(iscale * scales[j]).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let dl = d * f32::from(y[192 + j] as i8);
        if dl == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            l[i] = (nearest_int(x[i] / dl).clamp(-32, 31) + 32) as u8;
        }
    }
    // Per half of 128: low nibbles of elements 0..32 and 64..96 in ql[0..32], of 32..64 and
    // 96..128 in ql[32..64]; the two high bits of elements i, i + 32, i + 64, i + 96 in qh[i].
    let (ql, qh) = y.split_at_mut(128);
    for h in 0..2 {
        for i in 0..32 {
            let at = 128 * h + i;
            let (a, b, c, e) = (l[at], l[at + 32], l[at + 64], l[at + 96]);
            ql[64 * h + i] = (a & 0x0f) | ((c & 0x0f) << 4);
            ql[64 * h + 32 + i] = (b & 0x0f) | ((e & 0x0f) << 4);
            qh[32 * h + i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
}

/// C's `if (v > m) m = v` running maximum; unlike `f32::max` it never prefers a NaN away.
trait MaxC {
    fn max_c(self, v: f32) -> f32;
}

impl MaxC for f32 {
    #[inline(always)]
    fn max_c(self, v: f32) -> f32 {
        if v > self { v } else { self }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::quant::dequantize_row;

    const SUPPORTED: [GgmlType; 13] = crate::quant::ROW_FORMATS;

    /// Relative RMS round-trip error, `|x - dequantize(quantize(x))| / |x|`, on normal
    /// weight-like rows (measured: F16 2.1e-4, BF16 1.7e-3, Q8_0 0.0051, Q6_K 0.017,
    /// Q5_K 0.035, Q5_1 0.036, Q5_0 0.040, Q4_K 0.069, Q4_1 0.076, Q4_0 0.081, Q3_K 0.146,
    /// Q2_K 0.287).
    const RMS_TOLERANCE: [(GgmlType, f64); 13] = [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 3e-4),
        (GgmlType::Bf16, 2.5e-3),
        (GgmlType::Q8_0, 0.007),
        (GgmlType::Q6K, 0.022),
        (GgmlType::Q5K, 0.042),
        (GgmlType::Q5_1, 0.045),
        (GgmlType::Q5_0, 0.05),
        (GgmlType::Q4K, 0.085),
        (GgmlType::Q4_1, 0.095),
        (GgmlType::Q4_0, 0.1),
        (GgmlType::Q3K, 0.18),
        (GgmlType::Q2K, 0.35),
    ];

    /// Largest error of one element as a fraction of the largest magnitude in its block
    /// (super-block for the K-quants), for any finite input. Q4_0 and Q5_0 map the largest
    /// magnitude to level -8 (-16), so the opposite extreme clips by one step, 1/8 (1/16).
    const MAX_ABS_TOLERANCE: [(GgmlType, f32); 13] = [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 1e-3),
        (GgmlType::Bf16, 4e-3),
        (GgmlType::Q8_0, 0.0045),
        (GgmlType::Q6K, 0.03),
        (GgmlType::Q5K, 0.08),
        (GgmlType::Q5_1, 0.035),
        (GgmlType::Q5_0, 0.0635),
        (GgmlType::Q4K, 0.15),
        (GgmlType::Q4_1, 0.07),
        (GgmlType::Q4_0, 0.126),
        (GgmlType::Q3K, 0.3),
        (GgmlType::Q2K, 0.6),
    ];

    fn tolerance<T: Copy>(table: &[(GgmlType, T)], ty: GgmlType) -> T {
        table.iter().find(|r| r.0 == ty).expect("every type has a tolerance").1
    }

    fn bytes_for(ty: GgmlType, n: usize) -> Vec<u8> {
        vec![0xa5; ty.byte_size(n as u64).expect("whole blocks").expect("no overflow") as usize]
    }

    fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
        let mut q = bytes_for(ty, x.len());
        quantize_row(ty, x, &mut q).unwrap_or_else(|e| panic!("{ty}: {e}"));
        let mut y = vec![f32::NAN; x.len()];
        dequantize_row(ty, &q, &mut y).unwrap_or_else(|e| panic!("{ty}: {e}"));
        y
    }

    /// Deterministic roughly-normal values (sum of four uniforms) with standard deviation
    /// about `sigma`.
    fn normal_row(n: usize, sigma: f32, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut uniform = move || {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..n).map(|_| (0..4).map(|_| uniform()).sum::<f32>() * sigma * 1.732).collect()
    }

    fn relative_rms(x: &[f32], y: &[f32]) -> f64 {
        let num: f64 = x.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
        let den: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
        (num / den).sqrt()
    }

    #[test]
    fn round_trip_error_is_within_each_formats_tolerance() {
        let x = normal_row(QK_K * 64, 0.02, 7);
        let mut errors = Vec::new();
        for (ty, tol) in RMS_TOLERANCE {
            let err = relative_rms(&x, &round_trip(ty, &x));
            assert!(err <= tol, "{ty}: relative RMS error {err:.5} above {tol}");
            errors.push((ty, err));
        }
        // More bits, less error; a K-quant beats the legacy format of the same width.
        let err = |ty| errors.iter().find(|e| e.0 == ty).map(|e| e.1).unwrap_or(f64::NAN);
        let order = [
            GgmlType::Q8_0,
            GgmlType::Q6K,
            GgmlType::Q5K,
            GgmlType::Q5_0,
            GgmlType::Q4K,
            GgmlType::Q4_0,
            GgmlType::Q3K,
            GgmlType::Q2K,
        ];
        for pair in order.windows(2) {
            assert!(err(pair[0]) < err(pair[1]), "{}: {} vs {}: {}", pair[0], err(pair[0]), pair[1], err(pair[1]));
        }
    }

    #[test]
    fn zeros_stay_zeros() {
        let x = vec![0.0; QK_K * 2];
        for ty in SUPPORTED {
            assert!(round_trip(ty, &x).iter().all(|&v| v == 0.0), "{ty}");
        }
    }

    #[test]
    fn constant_rows_come_back_close() {
        // Magnitudes whose scales are normal f16 numbers in every format (Q6_K's scale is
        // about |c| / 4096; below 2^-14 it is subnormal and loses precision).
        for c in [1.0, -3.0, 0.5, -40.0, 700.0] {
            let x = vec![c; QK_K * 2];
            for ty in SUPPORTED {
                let worst = round_trip(ty, &x).iter().map(|y| (y - c).abs()).fold(0.0, f32::max);
                assert!(worst <= 2e-3 * c.abs(), "{ty}: constant {c} comes back off by {worst}");
            }
        }
    }

    #[test]
    fn large_values_that_fit_round_trip() {
        // The f16 scales hold these: the largest per-element scale is 3e4 / 8 (Q4_0).
        let x: Vec<f32> = normal_row(QK_K * 4, 1.0, 3).iter().map(|v| v * 1e4).collect();
        for (ty, tol) in RMS_TOLERANCE {
            let err = relative_rms(&x, &round_trip(ty, &x));
            assert!(err <= tol, "{ty}: relative RMS error {err:.5} above {tol}");
        }
    }

    #[test]
    fn tiny_values_stay_tiny() {
        // Scales near or below f16's smallest subnormal (2^-24) round to a few quanta or to
        // zero: the error is bounded by the input plus a few quanta times the levels.
        let slack = 32.0 * 2f32.powi(-24);
        for m in [1e-7f32, 1e-12, 1e-30, f32::MIN_POSITIVE] {
            let x: Vec<f32> = normal_row(QK_K * 2, m, 13);
            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            for ty in SUPPORTED {
                let worst = x.iter().zip(round_trip(ty, &x)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst <= amax + slack, "{ty} at {m:e}: error {worst:e}, largest input {amax:e}");
            }
        }
    }

    #[test]
    fn values_too_large_for_the_scales_are_errors() {
        for big in [1e9f32, 1e30, f32::MAX] {
            let mut x = normal_row(QK_K * 3, 1.0, 5);
            x[QK_K + 40] = big;
            for ty in SUPPORTED {
                let mut q = bytes_for(ty, x.len());
                let result = quantize_row(ty, &x, &mut q);
                let fits = ty == GgmlType::F32 || (ty == GgmlType::Bf16 && big < f32::MAX);
                if fits {
                    assert!(result.is_ok(), "{ty} {big:e}: {result:?}");
                    continue;
                }
                // The block that holds the value: element QK_K + 40 of the row.
                let block = ((QK_K + 40) / ty.block_size() as usize) as u64;
                match result {
                    Err(QuantError::Overflow { block: b, max_abs, .. }) => {
                        assert_eq!((b, max_abs), (block, big), "{ty} {big:e}");
                    }
                    other => panic!("{ty} {big:e}: expected an overflow error, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn non_finite_inputs_are_errors() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![0.5; QK_K];
            x[77] = bad;
            for ty in SUPPORTED {
                let mut q = bytes_for(ty, x.len());
                match quantize_row(ty, &x, &mut q) {
                    Err(QuantError::NonFinite { index: 77, .. }) => {}
                    other => panic!("{ty} {bad}: expected a non-finite error at 77, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn length_and_type_errors() {
        for ty in SUPPORTED {
            let n = ty.block_size() as usize * 2;
            let mut q = bytes_for(ty, n);
            quantize_row(ty, &[], &mut []).unwrap_or_else(|e| panic!("{ty}: empty row: {e}"));
            if ty.block_size() > 1 {
                let err = quantize_row(ty, &vec![0.0; n + 1], &mut q).expect_err("partial block");
                assert!(matches!(err, QuantError::NotBlockMultiple { .. }), "{ty}: {err}");
            }
            for len in [q.len() - 1, q.len() + 1] {
                let err = quantize_row(ty, &vec![0.0; n], &mut vec![0; len]).expect_err("wrong length");
                assert!(matches!(err, QuantError::WrongByteLength { .. }), "{ty}: {err}");
            }
        }
        for ty in [GgmlType::Q8_1, GgmlType::Q8K, GgmlType::Iq4Xs, GgmlType::I8] {
            let n = ty.block_size() as usize;
            let err = quantize_row(ty, &vec![0.0; n], &mut bytes_for(ty, n)).expect_err("unsupported");
            assert!(matches!(err, QuantError::Unsupported { .. }), "{ty}: {err}");
        }
    }

    #[test]
    fn parallel_matches_serial() {
        // Several parallel chunks and a partial one.
        let x = normal_row(QK_K * 64 * 3 + QK_K * 5, 0.1, 11);
        for ty in SUPPORTED {
            let (mut a, mut b) = (bytes_for(ty, x.len()), bytes_for(ty, x.len()));
            quantize_row(ty, &x, &mut a).expect("serial");
            quantize_row_parallel(ty, &x, &mut b).expect("parallel");
            assert!(a == b, "{ty}");
        }
        let mut x = x;
        x[QK_K * 64 * 2 + 3] = f32::NAN;
        let err = quantize_row_parallel(GgmlType::Q4K, &x, &mut bytes_for(GgmlType::Q4K, x.len()));
        assert!(matches!(err, Err(QuantError::NonFinite { index, .. }) if index == (QK_K * 64 * 2 + 3) as u64));
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (f, want) in [(0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (3.49, 3), (-7.51, -8), (0.0, 0)] {
            assert_eq!(nearest_int(f), want, "{f}");
        }
    }

    fn type_and_row() -> impl Strategy<Value = (GgmlType, Vec<f32>)> {
        let ty = proptest::sample::select(SUPPORTED.to_vec());
        // Magnitudes whose block scales are normal f16 numbers in every format.
        let magnitude = (0i32..13).prop_map(|e| 2f32.powi(e));
        (ty, magnitude, 1usize..3).prop_flat_map(|(ty, m, blocks)| {
            let n = blocks * QK_K;
            let value = prop_oneof![4 => -m..m, 1 => Just(0.0f32), 1 => Just(m), 1 => Just(-m)];
            (Just(ty), proptest::collection::vec(value, n))
        })
    }

    proptest! {
        #[test]
        fn every_element_is_within_a_fraction_of_its_blocks_largest((ty, x) in type_and_row()) {
            let y = round_trip(ty, &x);
            let tol = tolerance(&MAX_ABS_TOLERANCE, ty);
            let group = ty.block_size().max(1) as usize;
            for (xs, ys) in x.chunks(group).zip(y.chunks(group)) {
                let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (a, b) in xs.iter().zip(ys) {
                    // Scalar formats: relative to the element itself, down to half of F16's
                    // smallest subnormal.
                    let bound = if group == 1 { tol * a.abs() + 2f32.powi(-25) } else { tol * amax };
                    prop_assert!((a - b).abs() <= bound, "{}: {} came back as {} (block max {}, bound {})", ty, a, b, amax, bound);
                }
            }
        }
    }
}
