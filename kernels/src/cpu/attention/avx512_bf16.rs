//! bf16 caches (the fast precision) with AVX512_BF16, heads of 64 or 128 elements. One
//! `vdpbf16ps` multiplies 16 pairs of bf16 by a broadcast pair and adds both products to 16
//! f32 lanes: twice the multiply-adds of an f32 FMA at the same throughput, with no
//! conversion of the cache. Scores take the 16 positions of a key block as lanes and a pair
//! of query elements as the broadcast; values take a pair of positions' softmax weights as
//! the broadcast against the two positions' rows, paired element by element.

use std::arch::x86_64::*;
use std::ops::Range;

use half::bf16;

use super::{HeadRows, KEY_BLOCK, with_scratch};

/// How many position pairs ahead of the one being read the value rows are fetched.
const PAIRS_AHEAD: usize = 4;

/// bf16 pairs of queries per pass: `H · hd / 2`, at most 4 heads of 64 or 2 of 128.
const QUERY_PAIRS: usize = 128;

/// [`super::attend_partial`] for bf16 caches and heads of `16 * C` elements.
///
/// # Safety
/// AVX-512 F, BW and VL and AVX512_BF16 are available; `kv.len == 16 * C`; `kv.stride` and
/// `kv.offset` are even; the caches hold every position of `positions` (in their blocked and
/// paired layouts); `out` holds `head_dim + 2` floats per query head of `q`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn attend_partial<const C: usize>(
    q: &[f32],
    kv: &HeadRows<'_, bf16>,
    positions: Range<usize>,
    scale: f32,
    out: &mut [f32],
) {
    let hd = 16 * C;
    let group = q.len() / hd;
    let len = positions.len();
    // Each head's weights run over whole pairs of positions: a leading slot when the range
    // starts at an odd position, a trailing one when it ends before one.
    let pairs = (len + positions.start % 2).div_ceil(2);
    with_scratch(group * len, group * pairs, |scores, weights| {
        // Heads per pass: their accumulators plus one row fill at most 20 of the 32 registers.
        let per_pass = 16 / C;
        let mut h = 0;
        while h < group {
            let heads = (group - h).min(per_pass);
            let q = &q[h * hd..(h + heads) * hd];
            let scores = &mut scores[h * len..(h + heads) * len];
            let weights = &mut weights[h * pairs..(h + heads) * pairs];
            let out = &mut out[h * (hd + 2)..(h + heads) * (hd + 2)];
            // SAFETY: forwarded from the caller, for the heads `h..h + heads`.
            unsafe {
                match heads {
                    1 => heads_pass::<C, 1>(q, kv, positions.clone(), scale, scores, weights, out),
                    2 => heads_pass::<C, 2>(q, kv, positions.clone(), scale, scores, weights, out),
                    3 => heads_pass::<C, 3>(q, kv, positions.clone(), scale, scores, weights, out),
                    _ => heads_pass::<C, 4>(q, kv, positions.clone(), scale, scores, weights, out),
                }
            }
            h += heads;
        }
    })
}

/// `v` as the bf16 vector it holds.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn as_bf16(v: __m512i) -> __m512bh {
    // SAFETY: both are 512 bits of plain data.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// Heads `0..H` of `q` (and of `scores`, `weights`, `out`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn heads_pass<const C: usize, const H: usize>(
    q: &[f32],
    kv: &HeadRows<'_, bf16>,
    positions: Range<usize>,
    scale: f32,
    scores: &mut [f32],
    weights: &mut [u32],
    out: &mut [f32],
) {
    const B: usize = KEY_BLOCK;
    let hd = 16 * C;
    let (stride, offset) = (kv.stride, kv.offset);
    let len = positions.len();
    let pairs = weights.len() / H;
    // The queries as bf16 pairs: element `2i` in the low half of word `i`, as in the keys.
    let mut qp = [0u32; QUERY_PAIRS];
    for h in 0..H {
        for c in 0..hd / 32 {
            // SAFETY: `q` holds `H` heads of `hd` floats, `qp` `H * hd / 2` words.
            unsafe {
                let at = q.as_ptr().add(h * hd + 32 * c);
                let pair = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(at.add(16)), _mm512_loadu_ps(at));
                qp.as_mut_ptr().add(h * hd / 2 + 16 * c).cast::<__m512bh>().write_unaligned(pair);
            }
        }
    }

    let keys = kv.k.as_ptr().cast::<u16>();
    let scale_v = _mm512_set1_ps(scale);
    let mut block = positions.start / B;
    while block * B < positions.end {
        let first = block * B;
        // SAFETY (this block): the caller guarantees the block's `hd / 2` runs of 16 pairs at
        // `offset` lie in the cache.
        let base = unsafe { keys.add((block * stride + offset) * B) };
        // This head's keys two blocks on: one line per pair of elements.
        let ahead = base.wrapping_add(2 * stride * B).cast::<i8>();
        // Two chains per head (even and odd pairs) hide `vdpbf16ps`' latency.
        let mut acc = [[_mm512_setzero_ps(); 2]; H];
        for d in (0..hd / 2).step_by(2) {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(d * 4 * B));
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add((d + 1) * 4 * B));
            for (u, chain) in [d, d + 1].into_iter().enumerate() {
                // SAFETY: pair `chain` of the block lies at `2 * chain * B` (see above).
                let kt = as_bf16(unsafe { _mm512_loadu_si512(base.add(2 * chain * B).cast()) });
                for (h, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: `qp` holds `H * hd / 2` pairs.
                    let qd = as_bf16(_mm512_set1_epi32(unsafe { *qp.get_unchecked(h * hd / 2 + chain) } as i32));
                    acc[u] = _mm512_dpbf16_ps(acc[u], kt, qd);
                }
            }
        }
        // Lanes of positions outside the range (a block's start or end) are not stored.
        let lo = positions.start.saturating_sub(first);
        let hi = (positions.end - first).min(B);
        let mask: __mmask16 = ((1u32 << hi) - (1u32 << lo)) as __mmask16;
        for (h, acc) in acc.iter().enumerate() {
            let sum = _mm512_mul_ps(_mm512_add_ps(acc[0], acc[1]), scale_v);
            // The lane for position `first + l` goes to `scores[h * len + first + l - start]`;
            // masked-off lanes are never written, so the base may lie before the slice.
            let at = scores.as_mut_ptr().wrapping_add(h * len + first).wrapping_sub(positions.start);
            // SAFETY: the unmasked lanes lie inside `scores`.
            unsafe { _mm512_mask_storeu_ps(at, mask, sum) };
        }
        block += 1;
    }

    // Softmax weights (the fast precision's vector `exp`), rounded to bf16 pairs aligned to
    // even positions; a slot outside the range weighs 0.
    let lead = positions.start % 2;
    let mut parts = [(0.0f32, 0.0f32); H];
    for (h, part) in parts.iter_mut().enumerate() {
        let scores = &mut scores[h * len..(h + 1) * len];
        *part = crate::cpu::vexp::avx512::exp_shifted(scores);
        let w = weights[h * pairs..(h + 1) * pairs].as_mut_ptr().cast::<u16>();
        // SAFETY: `w` holds `2 * pairs >= lead + len` halves; the masked loads and stores
        // stay inside `scores` and those halves.
        unsafe {
            *w = 0;
            *w.add(2 * pairs - 1) = 0;
            for i in (0..len).step_by(16) {
                let mask: __mmask16 = (u32::MAX >> (32 - (len - i).min(16))) as __mmask16;
                let x = _mm512_maskz_loadu_ps(mask, scores.as_ptr().add(i));
                let halves = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x));
                _mm256_mask_storeu_epi16(w.add(lead + i).cast(), mask, halves);
            }
        }
    }

    let values = kv.v.as_ptr().cast::<u16>();
    let p0 = positions.start - lead;
    let mut acc = [[_mm512_setzero_ps(); C]; H];
    for k in 0..pairs {
        let p = p0 + 2 * k;
        // Positions `p` and `p + 1` share a row of pairs; a position outside the range is
        // masked to zero (its weight is zero too, and its slot may hold anything).
        let mask: __mmask32 = if p < positions.start {
            0xAAAA_AAAA
        } else if p + 1 >= positions.end {
            0x5555_5555
        } else {
            u32::MAX
        };
        // SAFETY: the caller guarantees the value cache holds the pair row of `p`.
        let row = unsafe { values.add((p / 2 * stride + offset) * 2) };
        let ahead = row.wrapping_add(PAIRS_AHEAD * stride * 2).cast::<i8>();
        if k + PAIRS_AHEAD < pairs {
            for l in (0..hd * 4).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l));
            }
        }
        // SAFETY: the row holds `2 * hd` halves from `row`.
        let v: [__m512bh; C] =
            std::array::from_fn(|c| as_bf16(unsafe { _mm512_maskz_loadu_epi16(mask, row.add(32 * c).cast()) }));
        for (h, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `weights` holds `H * pairs` pairs.
            let w = as_bf16(_mm512_set1_epi32(unsafe { *weights.get_unchecked(h * pairs + k) } as i32));
            for c in 0..C {
                acc[c] = _mm512_dpbf16_ps(acc[c], v[c], w);
            }
        }
    }
    for h in 0..H {
        let part = &mut out[h * (hd + 2)..(h + 1) * (hd + 2)];
        (part[0], part[1]) = parts[h];
        for (c, acc) in acc[h].iter().enumerate() {
            // SAFETY: `part[2..]` holds `hd` floats.
            unsafe { _mm512_storeu_ps(part[2 + 16 * c..].as_mut_ptr(), *acc) };
        }
    }
}
