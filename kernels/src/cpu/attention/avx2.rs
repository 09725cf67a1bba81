//! bf16 caches (the fast precision) on AVX2: a bf16 is the top half of an f32, so a 32-bit
//! pair becomes two f32 vectors by one shift (its low half) and one mask (its high half).
//! Scores take 8 positions of a key block per vector, values 16 elements per pass, so the
//! accumulators of up to 3 query heads stay in the 16 vector registers.

use std::arch::x86_64::*;
use std::ops::Range;

use half::bf16;

use super::{HeadRows, KEY_BLOCK, with_scratch};

/// How many position pairs ahead of the one being read the value rows are fetched.
const PAIRS_AHEAD: usize = 4;

/// Query heads per pass.
const HEADS: usize = 3;

/// [`super::attend_partial`] for bf16 caches.
///
/// # Safety
/// AVX2 and FMA are available; `kv.len` is a multiple of 16; `kv.stride` and `kv.offset` are
/// even; the caches hold every position of `positions` (in their blocked and paired layouts);
/// `out` holds `head_dim + 2` floats per query head of `q`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn attend_partial(
    q: &[f32],
    kv: &HeadRows<'_, bf16>,
    positions: Range<usize>,
    scale: f32,
    out: &mut [f32],
) {
    let hd = kv.len;
    let group = q.len() / hd;
    let len = positions.len();
    with_scratch(group * len, 0, |scores, _| {
        let mut h = 0;
        while h < group {
            let heads = (group - h).min(HEADS);
            let q = &q[h * hd..(h + heads) * hd];
            let scores = &mut scores[h * len..(h + heads) * len];
            let out = &mut out[h * (hd + 2)..(h + heads) * (hd + 2)];
            // SAFETY: forwarded from the caller, for the heads `h..h + heads`.
            unsafe {
                match heads {
                    1 => heads_pass::<1>(q, kv, positions.clone(), scale, scores, out),
                    2 => heads_pass::<2>(q, kv, positions.clone(), scale, scores, out),
                    _ => heads_pass::<HEADS>(q, kv, positions.clone(), scale, scores, out),
                }
            }
            h += heads;
        }
    })
}

/// The two f32 vectors in 8 bf16 pairs: the low halves, then the high ones.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn split(pairs: __m256i) -> (__m256, __m256) {
    let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    (_mm256_castsi256_ps(_mm256_slli_epi32::<16>(pairs)), _mm256_castsi256_ps(_mm256_and_si256(pairs, high)))
}

/// Heads `0..H` of `q` (and of `scores`, `out`).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn heads_pass<const H: usize>(
    q: &[f32],
    kv: &HeadRows<'_, bf16>,
    positions: Range<usize>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    const B: usize = KEY_BLOCK;
    let (hd, stride, offset) = (kv.len, kv.stride, kv.offset);
    let len = positions.len();
    let keys = kv.k.as_ptr().cast::<u16>();
    let values = kv.v.as_ptr().cast::<u16>();
    let scale = _mm256_set1_ps(scale);
    let mut block = positions.start / B;
    while block * B < positions.end {
        let first = block * B;
        // SAFETY (this block): the block's `hd / 2` runs of 16 pairs at `offset` lie in the
        // cache; query elements are read below `H * hd`.
        let base = unsafe { keys.add((block * stride + offset) * B) };
        // This head's keys two blocks on, a line per pair of elements.
        let ahead = base.wrapping_add(2 * stride * B).cast::<i8>();
        // Per head, positions 0..8 and 8..16 of the block, each in two chains (even and odd
        // elements) so the FMAs' latency hides behind the other chains.
        let mut acc = [[[_mm256_setzero_ps(); 2]; 2]; H];
        for d in 0..hd / 2 {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(d * 4 * B));
            for (half, run) in [0, 8].into_iter().enumerate() {
                // SAFETY: pair `d` of the block lies at `2 * d * B`, 8 positions a vector.
                let (even, odd) = split(unsafe { _mm256_loadu_si256(base.add(2 * (d * B + run)).cast()) });
                for (h, acc) in acc.iter_mut().enumerate() {
                    let (qe, qo) = unsafe { (*q.get_unchecked(h * hd + 2 * d), *q.get_unchecked(h * hd + 2 * d + 1)) };
                    acc[half][0] = _mm256_fmadd_ps(_mm256_set1_ps(qe), even, acc[half][0]);
                    acc[half][1] = _mm256_fmadd_ps(_mm256_set1_ps(qo), odd, acc[half][1]);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            let mut lanes = [0.0f32; B];
            for (half, acc) in acc.iter().enumerate() {
                let sum = _mm256_mul_ps(_mm256_add_ps(acc[0], acc[1]), scale);
                // SAFETY: `lanes` holds 16 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * half), sum) };
            }
            for p in first.max(positions.start)..(first + B).min(positions.end) {
                scores[h * len + p - positions.start] = lanes[p - first];
            }
        }
        block += 1;
    }
    let mut parts = [(0.0f32, 0.0f32); H];
    for (h, part) in parts.iter_mut().enumerate() {
        // bf16 caches are the fast precision's, which takes the vector `exp`.
        *part = crate::cpu::vexp::avx2::exp_shifted(&mut scores[h * len..(h + 1) * len]);
    }
    let p0 = positions.start - positions.start % 2;
    for chunk in 0..hd / 16 {
        let mut acc = [[_mm256_setzero_ps(); 2]; H];
        for p in (p0..positions.end).step_by(2) {
            // SAFETY: the caller guarantees the value cache holds the pair row of `p`.
            let row = unsafe { values.add((p / 2 * stride + offset + 16 * chunk) * 2) };
            if chunk == 0 && p + 2 * PAIRS_AHEAD < positions.end {
                let ahead = row.wrapping_add(PAIRS_AHEAD * stride * 2).cast::<i8>();
                for l in (0..hd * 4).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l));
                }
            }
            // A position outside the range weighs 0 and its half of the pairs is masked to 0
            // (its slot may hold anything).
            let (inside_even, inside_odd) = (p >= positions.start, p + 1 < positions.end);
            let keep = _mm256_set1_epi32(match (inside_even, inside_odd) {
                (true, true) => -1,
                (true, false) => 0xFFFF,
                _ => 0xFFFF_0000u32 as i32,
            });
            let weight = |h: usize, at: usize, inside: bool| {
                _mm256_set1_ps(if inside { scores[h * len + at - positions.start] } else { 0.0 })
            };
            // SAFETY: the row holds 16 pairs from `row`.
            let (v0, v1) = unsafe {
                (
                    split(_mm256_and_si256(_mm256_loadu_si256(row.cast()), keep)),
                    split(_mm256_and_si256(_mm256_loadu_si256(row.add(16).cast()), keep)),
                )
            };
            for (h, acc) in acc.iter_mut().enumerate() {
                let (we, wo) = (weight(h, p, inside_even), weight(h, p + 1, inside_odd));
                acc[0] = _mm256_fmadd_ps(wo, v0.1, _mm256_fmadd_ps(we, v0.0, acc[0]));
                acc[1] = _mm256_fmadd_ps(wo, v1.1, _mm256_fmadd_ps(we, v1.0, acc[1]));
            }
        }
        for h in 0..H {
            let at = &mut out[h * (hd + 2) + 2 + 16 * chunk..][..16];
            for (c, acc) in acc[h].iter().enumerate() {
                // SAFETY: `at` holds 16 floats.
                unsafe { _mm256_storeu_ps(at.as_mut_ptr().add(8 * c), *acc) };
            }
        }
    }
    for (h, part) in parts.iter().enumerate() {
        (out[h * (hd + 2)], out[h * (hd + 2) + 1]) = *part;
    }
}
