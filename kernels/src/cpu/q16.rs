//! 16-bit activations for inputs 8 bits serve badly (`Inputs::Sensitive`: Q/K/V, whose errors
//! softmax amplifies, and FFN down's heavy-tailed SwiGLU products): `x ≈ d·q` with one scale per
//! 32 elements and `q` in ±32767, multiplied against the weights' quantized blocks with `i16`
//! integer dot products. The rounding error is 1/256 of the
//! 8-bit path's, so these matmuls stay within f32 noise of the exact path while still reading
//! only the quantized weights.

use super::q8::{Chunks, Input, Isa, Parallel, QB, Source, half, layout, serial, small_quant};
use crate::quant::GgmlType;

/// Rows of activations quantized to 16 bits.
#[derive(Default)]
pub struct Q16Acts {
    /// One scale per [`QB`] elements.
    pub d: Vec<f32>,
    /// Per block `d · Σq`, for formats with an additive minimum.
    pub sum: Vec<f32>,
    pub q: Vec<i16>,
    /// After [`Q16Acts::quantize_with`] with `split`, each quant as `256·hi + lo` (the packed kernels' operands),
    /// and per block `Σ q` and `Σ hi`.
    pub hi: Vec<i8>,
    pub lo: Vec<u8>,
    pub qsum: Vec<i32>,
    pub hisum: Vec<i32>,
    /// Per 16 elements `Σ q`, after [`Q16Acts::sum_halves`] (emptied by every quantization).
    pub qsum16: Vec<i32>,
}

impl Q16Acts {
    /// Quantizes `n` rows of `cols` elements (`cols` a multiple of [`QB`]).
    pub fn quantize(&mut self, x: &[f32], n: usize, cols: usize) {
        self.quantize_with(Input::Rows(x), n, cols, false, serial);
    }

    /// [`Q16Acts::quantize`] of `input`, also split into `hi`, `lo`, `qsum` and `hisum` when
    /// `split` (in the same pass), runs of blocks spread by `parallel(tasks, task)` (a pool's
    /// section).
    pub fn quantize_with(
        &mut self,
        input: Input,
        n: usize,
        cols: usize,
        split: bool,
        parallel: impl Fn(usize, &Parallel),
    ) {
        let plan = self.plan(input, n, cols, split);
        // SAFETY: `self` stays borrowed, unmoved and unread, until every task has run.
        parallel(plan.tasks(), &|i| unsafe { plan.run(i) });
    }

    /// [`Q16Acts::quantize_with`] as tasks to run later, as [`Q8Acts::plan`](super::q8::Q8Acts::plan).
    pub fn plan<'a>(&mut self, input: Input<'a>, n: usize, cols: usize, split: bool) -> Q16Plan<'a> {
        let len = n * cols;
        self.qsum16.clear();
        self.d.resize(len / QB, 0.0);
        self.sum.resize(len / QB, 0.0);
        self.q.resize(len, 0);
        let split_len = if split { len } else { 0 };
        self.hi.resize(split_len, 0);
        self.lo.resize(split_len, 0);
        self.qsum.resize(split_len / QB, 0);
        self.hisum.resize(split_len / QB, 0);
        Q16Plan {
            source: Source::of(input, len, cols),
            q: Chunks::of(&mut self.q),
            d: Chunks::of(&mut self.d),
            sum: Chunks::of(&mut self.sum),
            split: split.then(|| SplitChunks {
                hi: Chunks::of(&mut self.hi),
                lo: Chunks::of(&mut self.lo),
                qsum: Chunks::of(&mut self.qsum),
                hisum: Chunks::of(&mut self.hisum),
            }),
        }
    }

    /// Fills `qsum16` from the quants: Q6_K's packed kernels, one weight scale per 16 elements,
    /// subtract their bias per half block.
    pub fn sum_halves(&mut self) {
        self.qsum16.clear();
        self.qsum16.extend(self.q.chunks_exact(QB / 2).map(|h| h.iter().map(|&q| i32::from(q)).sum::<i32>()));
    }

    /// Weight row `row` (of `cols` elements) times activation rows `t..t + N`, each weight
    /// block unpacked once for all `N`.
    pub fn dot_rows<const N: usize>(&self, isa: Isa, ty: GgmlType, row: &[u8], t: usize, cols: usize) -> [f32; N] {
        let blocks = cols / QB;
        let d = std::array::from_fn(|k| &self.d[(t + k) * blocks..(t + k + 1) * blocks]);
        let sum = std::array::from_fn(|k| &self.sum[(t + k) * blocks..(t + k + 1) * blocks]);
        let q = std::array::from_fn(|k| &self.q[(t + k) * cols..(t + k + 1) * cols]);
        dot_many(isa, ty, row, d, sum, q)
    }
}

/// Where a quantization also writes each quant as `256·hi + lo` and per block `Σ q` and `Σ hi`
/// (the packed kernels' operands).
pub(super) struct Split<'a> {
    pub hi: &'a mut [i8],
    pub lo: &'a mut [u8],
    pub qsum: &'a mut [i32],
    pub hisum: &'a mut [i32],
}

/// A quantization into a [`Q16Acts`], split into tasks ([`Q16Acts::plan`]).
pub struct Q16Plan<'a> {
    source: Source<'a>,
    q: Chunks<i16>,
    d: Chunks<f32>,
    sum: Chunks<f32>,
    split: Option<SplitChunks>,
}

/// Where a planned split goes: `hi`, `lo`, `qsum` and `hisum`.
#[derive(Clone, Copy)]
struct SplitChunks {
    hi: Chunks<i8>,
    lo: Chunks<u8>,
    qsum: Chunks<i32>,
    hisum: Chunks<i32>,
}

impl Q16Plan<'_> {
    pub fn tasks(&self) -> usize {
        self.source.tasks()
    }

    /// Quantizes run `i`.
    ///
    /// # Safety
    /// As [`Q8Plan::run`](super::q8::Q8Plan::run), for the planned [`Q16Acts`].
    pub unsafe fn run(&self, i: usize) {
        let run = self.source.run;
        // SAFETY: the caller's guarantee, for run `i`'s chunks of every buffer.
        unsafe {
            let x = self.source.values(i);
            let split = self.split.map(|s| Split {
                hi: s.hi.chunk(i, run * QB),
                lo: s.lo.chunk(i, run * QB),
                qsum: s.qsum.chunk(i, run),
                hisum: s.hisum.chunk(i, run),
            });
            quantize_q16(x, self.q.chunk(i, run * QB), self.d.chunk(i, run), self.sum.chunk(i, run), split);
        }
    }
}

/// Quantizes whole blocks: one scale and `Σ d·q` per 32 elements, and the split quants when
/// asked.
fn quantize_q16(x: &[f32], q: &mut [i16], d: &mut [f32], sum: &mut [f32], split: Option<Split>) {
    #[cfg(target_arch = "x86_64")]
    if super::actquant::avx512_available() {
        // SAFETY: AVX-512F was detected; the slices are one run's blocks, scales and sums.
        unsafe { super::actquant::avx512::quantize_q16(x, q, d, sum, split) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::actquant::avx2_available() {
        // SAFETY: AVX2 was detected; the slices are one run's blocks, scales and sums.
        unsafe { super::actquant::avx2::quantize_q16(x, q, d, sum, split) };
        return;
    }
    quantize_q16_ref(x, q, d, sum, split);
}

/// [`quantize_q16`]'s scalar twin.
pub(super) fn quantize_q16_ref(x: &[f32], q: &mut [i16], d: &mut [f32], sum: &mut [f32], split: Option<Split>) {
    for (b, (xs, qs)) in x.chunks_exact(QB).zip(q.chunks_exact_mut(QB)).enumerate() {
        let (scale, isum) = super::q8::quantize_block(xs, qs, 32767.0, |r| r as i16);
        d[b] = scale;
        sum[b] = scale * isum as f32;
    }
    if let Some(s) = split {
        split_blocks(q, s);
    }
}

/// Each quant as `256·hi + lo`, and per block `Σ q` and `Σ hi`.
fn split_blocks(q: &[i16], s: Split) {
    let blocks = q.chunks_exact(QB).zip(s.hi.chunks_exact_mut(QB)).zip(s.lo.chunks_exact_mut(QB));
    for (((qs, his), los), (qsum, hisum)) in blocks.zip(s.qsum.iter_mut().zip(s.hisum.iter_mut())) {
        let (mut q_total, mut hi_total) = (0i32, 0i32);
        for ((&q, hi), lo) in qs.iter().zip(his.iter_mut()).zip(los.iter_mut()) {
            *hi = (q >> 8) as i8;
            *lo = q as u8;
            q_total += i32::from(q);
            hi_total += i32::from(*hi);
        }
        *qsum = q_total;
        *hisum = hi_total;
    }
}

/// One weight row times one activation row; lengths that disagree give NaN.
#[cfg(test)]
pub fn dot(isa: Isa, ty: GgmlType, w: &[u8], d: &[f32], sum: &[f32], q: &[i16]) -> f32 {
    let [r] = dot_many(isa, ty, w, [d], [sum], [q]);
    r
}

/// One weight row times `N` activation rows of the same length.
pub fn dot_many<const N: usize>(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    d: [&[f32]; N],
    sum: [&[f32]; N],
    q: [&[i16]; N],
) -> [f32; N] {
    if super::kquant::supported(ty) {
        return super::kquant::dot_many_q16(isa, ty, w, d, sum, q);
    }
    let nb = q.first().map_or(0, |q| q.len() / QB);
    let size = ty.type_size() as usize;
    let fits = (0..N).all(|k| q[k].len() == nb * QB && d[k].len() >= nb && sum[k].len() >= nb);
    if !super::q8::small_block(ty) || w.len() < nb * size || !fits {
        return [f32::NAN; N];
    }
    match isa {
        Isa::Baseline => std::array::from_fn(|k| scalar::dot(ty, w, d[k], sum[k], q[k])),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only constructed after detecting AVX2, FMA and F16C at run
        // time, and the type and lengths were checked above.
        Isa::Avx2 => unsafe { avx2::dot_many(ty, w, d, sum, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` means AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI were detected;
        // lengths as above.
        Isa::Avx512 => unsafe { avx512::dot_many(ty, w, d, sum, q) },
    }
}

/// Consecutive weight rows (`rows`, encoded back to back) times one activation row, one
/// result per row into `out`: the decode shape, with the row loop inside the kernel.
pub fn dot_rows_single(isa: Isa, ty: GgmlType, rows: &[u8], d: &[f32], sum: &[f32], q: &[i16], out: &mut [f32]) {
    if super::kquant::supported(ty) {
        let row_bytes = rows.len() / out.len().max(1);
        for (o, row) in out.iter_mut().zip(rows.chunks(row_bytes.max(1))) {
            [*o] = super::kquant::dot_many_q16(isa, ty, row, [d], [sum], [q]);
        }
        return;
    }
    let nb = q.len() / QB;
    let row_bytes = nb * ty.type_size() as usize;
    if !super::q8::small_block(ty)
        || q.len() != nb * QB
        || d.len() < nb
        || sum.len() < nb
        || rows.len() != out.len() * row_bytes
    {
        out.fill(f32::NAN);
        return;
    }
    match isa {
        Isa::Baseline => {
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(row_bytes.max(1))) {
                *o = scalar::dot(ty, row, d, sum, q);
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only constructed after detecting AVX2, FMA and F16C at run
        // time, and the type and lengths were checked above.
        Isa::Avx2 => unsafe { avx2::dot_rows_single(ty, rows, d, sum, q, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `dot_many`.
        Isa::Avx512 => unsafe { avx512::dot_rows_single(ty, rows, d, sum, q, out) },
    }
}

/// The reference twin of the SIMD dot.
mod scalar {
    use super::{GgmlType, QB, half, layout, small_quant};

    pub fn dot(ty: GgmlType, w: &[u8], d: &[f32], sum: &[f32], q: &[i16]) -> f32 {
        let size = ty.type_size() as usize;
        let (at, offset, has_min) = layout(ty);
        let mut acc = 0.0f32;
        for (b, (wb, qb)) in w.chunks_exact(size).zip(q.chunks_exact(QB)).enumerate() {
            let isum: i64 = (0..QB)
                .map(|j| {
                    let wq = if ty == GgmlType::Q8_0 {
                        i64::from(wb[at + j] as i8)
                    } else {
                        i64::from(small_quant(ty, wb, at, j) - offset)
                    };
                    wq * i64::from(qb[j])
                })
                .sum();
            acc += half(wb[0], wb[1]) * d[b] * isum as f32;
            if has_min {
                acc += half(wb[2], wb[3]) * sum[b];
            }
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{GgmlType, QB};

    entry_points!("avx2,fma,f16c", i16);

    /// One instantiation per format and tile width, so the block loop carries no format
    /// branches and each weight block is widened once for `N` activation rows.
    ///
    /// # Safety
    /// As [`dot_many`], with `TY` naming the weight format.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_blocks<const TY: u8, const N: usize>(
        w: &[u8],
        d: [&[f32]; N],
        sum: [&[f32]; N],
        q: [&[i16]; N],
    ) -> [f32; N] {
        let nb = q.first().map_or(0, |q| q.len() / QB);
        let (size, at) = match TY {
            Q4_0 => (18, 2),
            Q4_1 => (20, 4),
            Q5_0 => (22, 6),
            Q5_1 => (24, 8),
            _ => (34, 2),
        };
        let mask = _mm_set1_epi8(0x0F);
        let offset = _mm256_set1_epi16(if TY == Q5_0 { 16 } else { 8 });
        let mut acc = [_mm256_setzero_ps(); N];
        let mut min_acc = [0.0f32; N];
        // The block index drives pointer offsets into `w` and every `q[k]`, `d[k]`, `sum[k]`.
        #[allow(clippy::needless_range_loop)]
        for b in 0..nb {
            // SAFETY: the caller guarantees `nb` blocks of `size` bytes in `w`; every block
            // starts with its f16 scale (and Q4_1's minimum).
            let (wb, dm) = unsafe {
                let wb = w.as_ptr().add(b * size);
                (wb, _mm_cvtph_ps(_mm_cvtsi32_si128(wb.cast::<i32>().read_unaligned())))
            };
            let (w_lo, w_hi) = if TY == Q8_0 {
                // SAFETY: a Q8_0 block holds 32 quant bytes from `at`.
                let (a, b) = unsafe { (_mm_loadu_si128(wb.add(at).cast()), _mm_loadu_si128(wb.add(at + 16).cast())) };
                (_mm256_cvtepi8_epi16(a), _mm256_cvtepi8_epi16(b))
            } else {
                // SAFETY: a Q4 block holds 16 nibble bytes from `at`.
                let raw = unsafe { _mm_loadu_si128(wb.add(at).cast()) };
                let (mut lo, mut hi) = (_mm_and_si128(raw, mask), _mm_and_si128(_mm_srli_epi16(raw, 4), mask));
                if TY == Q5_0 || TY == Q5_1 {
                    // SAFETY: a Q5 block holds its 32 fifth bits in the 4 bytes before `at`.
                    let bits =
                        super::super::q8::fifth_bits_avx2(unsafe { wb.add(at - 4).cast::<u32>().read_unaligned() });
                    lo = _mm_or_si128(lo, _mm256_castsi256_si128(bits));
                    hi = _mm_or_si128(hi, _mm256_extracti128_si256(bits, 1));
                }
                let (lo, hi) = (_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi));
                if TY == Q4_0 || TY == Q5_0 {
                    (_mm256_sub_epi16(lo, offset), _mm256_sub_epi16(hi, offset))
                } else {
                    (lo, hi)
                }
            };
            let dw = _mm256_broadcastss_ps(dm);
            for k in 0..N {
                // SAFETY: `q[k]` holds `nb * QB` values.
                let (x_lo, x_hi) = unsafe {
                    let p = q[k].as_ptr().add(b * QB);
                    (_mm256_loadu_si256(p.cast()), _mm256_loadu_si256(p.add(16).cast()))
                };
                // |w| ≤ 128 and |x| ≤ 32767: each pair sum fits i32, and so do 32 products.
                let products = _mm256_add_epi32(_mm256_madd_epi16(w_lo, x_lo), _mm256_madd_epi16(w_hi, x_hi));
                // SAFETY: `d[k]` covers `nb` blocks.
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(unsafe { *d[k].get_unchecked(b) }));
                acc[k] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(products), acc[k]);
                if TY == Q4_1 || TY == Q5_1 {
                    // SAFETY: `sum[k]` covers `nb` blocks.
                    min_acc[k] += _mm_cvtss_f32(_mm_movehdup_ps(dm)) * unsafe { *sum[k].get_unchecked(b) };
                }
            }
        }
        let mut out = [0.0f32; N];
        for k in 0..N {
            out[k] = super::super::q8::hsum_avx2(acc[k]) + min_acc[k];
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{GgmlType, QB};

    entry_points!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", i16);

    /// A whole block per step: its 32 weights widened to one 512-bit register of `i16`
    /// against the block's 32 activations in one `dpwssd`.
    ///
    /// # Safety
    /// As [`dot_many`], with `TY` naming the weight format.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn dot_blocks<const TY: u8, const N: usize>(
        w: &[u8],
        d: [&[f32]; N],
        sum: [&[f32]; N],
        q: [&[i16]; N],
    ) -> [f32; N] {
        let nb = q.first().map_or(0, |q| q.len() / QB);
        let (size, at) = match TY {
            Q4_0 => (18, 2),
            Q4_1 => (20, 4),
            Q5_0 => (22, 6),
            Q5_1 => (24, 8),
            _ => (34, 2),
        };
        let mask = _mm_set1_epi8(0x0F);
        let offset = _mm512_set1_epi16(if TY == Q5_0 { 16 } else { 8 });
        let mut acc = [_mm512_setzero_ps(); N];
        let mut min_acc = [0.0f32; N];
        // The block index drives pointer offsets into `w` and every `q[k]`, `d[k]`, `sum[k]`.
        #[allow(clippy::needless_range_loop)]
        for b in 0..nb {
            // SAFETY: the caller guarantees `nb` blocks of `size` bytes in `w`; every block
            // starts with its f16 scale (and Q4_1's minimum).
            let (wb, dm) = unsafe {
                let wb = w.as_ptr().add(b * size);
                (wb, _mm_cvtph_ps(_mm_cvtsi32_si128(wb.cast::<i32>().read_unaligned())))
            };
            let weights = if TY == Q8_0 {
                // SAFETY: a Q8_0 block holds 32 quant bytes from `at`.
                _mm512_cvtepi8_epi16(unsafe { _mm256_loadu_si256(wb.add(at).cast()) })
            } else {
                // SAFETY: a Q4 block holds 16 nibble bytes from `at`.
                let raw = unsafe { _mm_loadu_si128(wb.add(at).cast()) };
                let mut nibbles =
                    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
                if TY == Q5_0 || TY == Q5_1 {
                    // SAFETY: a Q5 block holds its 32 fifth bits in the 4 bytes before `at`.
                    let bits = unsafe { wb.add(at - 4).cast::<u32>().read_unaligned() };
                    nibbles = _mm256_or_si256(nibbles, _mm256_maskz_mov_epi8(bits, _mm256_set1_epi8(16)));
                }
                let wide = _mm512_cvtepu8_epi16(nibbles);
                if TY == Q4_0 || TY == Q5_0 { _mm512_sub_epi16(wide, offset) } else { wide }
            };
            let dw = _mm_cvtss_f32(dm);
            for k in 0..N {
                // SAFETY: `q[k]` holds `nb * QB` values, `d[k]` and `sum[k]` `nb`.
                let (x, dx) = unsafe { (_mm512_loadu_si512(q[k].as_ptr().add(b * QB).cast()), *d[k].get_unchecked(b)) };
                // |w| ≤ 128 and |x| ≤ 32767: each pair sum fits i32, and so do 32 products.
                let products = _mm512_dpwssd_epi32(_mm512_setzero_si512(), weights, x);
                acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(dw * dx), _mm512_cvtepi32_ps(products), acc[k]);
                if TY == Q4_1 || TY == Q5_1 {
                    // SAFETY: as above.
                    min_acc[k] += _mm_cvtss_f32(_mm_movehdup_ps(dm)) * unsafe { *sum[k].get_unchecked(b) };
                }
            }
        }
        let mut out = [0.0f32; N];
        for k in 0..N {
            out[k] = _mm512_reduce_add_ps(acc[k]) + min_acc[k];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::q8::tests::{random_row, simd_isas};
    use crate::quant::dequantize_row;

    /// 16-bit rounding moves each activation by at most amax / 65534.
    const F32_SLACK: f32 = 1e-3;
    const SIMD_TOL: f32 = 1e-5;

    #[test]
    fn integer_dots_match_dequantized_math() {
        let cols = 256;
        let mut rng = crate::cpu::q8::tests::Rng(11);
        for ty in crate::cpu::q8::tests::FORMATS {
            for _ in 0..20 {
                let w = random_row(ty, cols, &mut rng);
                // Heavy-tailed: one element per row a hundred times the rest.
                let mut x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
                x[rng.next() as usize % cols] *= 100.0;
                let mut wf = vec![0.0; cols];
                dequantize_row(ty, &w, &mut wf).expect("dequantize");
                let exact: f32 = wf.iter().zip(&x).map(|(a, b)| a * b).sum();
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let bound = wf.iter().map(|w| w.abs()).sum::<f32>() * amax / 65534.0 + F32_SLACK;
                let mut acts = Q16Acts::default();
                acts.quantize(&x, 1, cols);
                let reference = dot(Isa::Baseline, ty, &w, &acts.d, &acts.sum, &acts.q);
                assert!((reference - exact).abs() <= bound, "{ty}: {reference} vs {exact} (bound {bound})");
                for isa in simd_isas() {
                    let simd = dot(isa, ty, &w, &acts.d, &acts.sum, &acts.q);
                    let close = (simd - reference).abs() <= SIMD_TOL * reference.abs().max(1.0);
                    assert!(close, "{ty} {isa:?}: {simd} vs {reference}");
                }
            }
        }
    }

    #[test]
    fn a_run_of_rows_matches_row_by_row() {
        let (cols, rows) = (128, 5);
        let mut rng = crate::cpu::q8::tests::Rng(9);
        for ty in crate::cpu::q8::tests::FORMATS {
            let w: Vec<u8> = (0..rows).flat_map(|_| random_row(ty, cols, &mut rng)).collect();
            let x: Vec<f32> = (0..cols).map(|_| rng.f() * 50.0).collect();
            let mut acts = Q16Acts::default();
            acts.quantize(&x, 1, cols);
            let row_bytes = w.len() / rows;
            for isa in std::iter::once(Isa::Baseline).chain(simd_isas()) {
                let mut out = vec![0.0; rows];
                dot_rows_single(isa, ty, &w, &acts.d, &acts.sum, &acts.q, &mut out);
                for (r, got) in out.iter().enumerate() {
                    let want = dot(isa, ty, &w[r * row_bytes..(r + 1) * row_bytes], &acts.d, &acts.sum, &acts.q);
                    assert_eq!(got.to_bits(), want.to_bits(), "{ty} {isa:?} row {r}");
                }
            }
        }
    }
}
