//! f32 caches (the exact precision) with heads of 64 or 128 elements in 512-bit vectors: each
//! key and value row is loaded once for up to `16 / C` heads of the group, whose queries and
//! outputs stay in registers; score and value loops run without bounds checks.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{HeadRows, with_scratch};

/// How far ahead of the value row being read the next ones are fetched.
const VALUES_AHEAD: usize = 8;

/// [`super::attend_partial`] for f32 caches and heads of `16 * C` elements.
///
/// # Safety
/// AVX-512F and FMA are available; `kv.len == 16 * C`; both caches hold every position of
/// `positions` at `offset..offset + len` of its row; `out` holds `head_dim + 2` floats per
/// query head of `q`.
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn attend_partial<const C: usize>(
    q: &[f32],
    kv: &HeadRows<'_, f32>,
    positions: Range<usize>,
    scale: f32,
    out: &mut [f32],
) {
    let hd = 16 * C;
    let group = q.len() / hd;
    let len = positions.len();
    with_scratch(group * len, 0, |scores, _| {
        // Heads per pass: their accumulators plus one row fill at most 20 of the 32 registers.
        let per_pass = 16 / C;
        let mut h = 0;
        while h < group {
            let heads = (group - h).min(per_pass);
            let q = &q[h * hd..(h + heads) * hd];
            let scores = &mut scores[h * len..(h + heads) * len];
            let out = &mut out[h * (hd + 2)..(h + heads) * (hd + 2)];
            // SAFETY: forwarded from the caller, for the heads `h..h + heads`.
            unsafe {
                match heads {
                    1 => heads_pass::<C, 1>(q, kv, positions.clone(), scale, scores, out),
                    2 => heads_pass::<C, 2>(q, kv, positions.clone(), scale, scores, out),
                    3 => heads_pass::<C, 3>(q, kv, positions.clone(), scale, scores, out),
                    _ => heads_pass::<C, 4>(q, kv, positions.clone(), scale, scores, out),
                }
            }
            h += heads;
        }
    })
}

/// Heads `0..H` of `q` (and of `scores`, `out`).
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn heads_pass<const C: usize, const H: usize>(
    q: &[f32],
    kv: &HeadRows<'_, f32>,
    positions: Range<usize>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = 16 * C;
    let len = positions.len();
    let row = |cache: &[f32], p: usize| cache[p * kv.stride + kv.offset..][..hd].as_ptr();
    // SAFETY: `q` holds `H` heads of `hd` floats.
    let qh: [[__m512; C]; H] =
        std::array::from_fn(|h| std::array::from_fn(|c| unsafe { _mm512_loadu_ps(q.as_ptr().add(h * hd + 16 * c)) }));
    for (i, p) in positions.clone().enumerate() {
        let k = row(kv.k, p);
        // SAFETY: `k` points at `hd` floats (sliced above).
        let k: [__m512; C] = std::array::from_fn(|c| unsafe { _mm512_loadu_ps(k.add(16 * c)) });
        for (h, qh) in qh.iter().enumerate() {
            let mut acc = _mm512_mul_ps(qh[0], k[0]);
            for c in 1..C {
                acc = _mm512_fmadd_ps(qh[c], k[c], acc);
            }
            scores[h * len + i] = _mm512_reduce_add_ps(acc) * scale;
        }
    }
    let mut parts = [(0.0f32, 0.0f32); H];
    for (h, part) in parts.iter_mut().enumerate() {
        // The exact precision keeps libm's `exp`.
        *part = super::exp_shifted(&mut scores[h * len..(h + 1) * len]);
    }
    let mut acc = [[_mm512_setzero_ps(); C]; H];
    for (i, p) in positions.clone().enumerate() {
        if p + VALUES_AHEAD < positions.end {
            let ahead = row(kv.v, p + VALUES_AHEAD).cast::<i8>();
            for l in (0..hd * 4).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l));
            }
        }
        let v = row(kv.v, p);
        // SAFETY: `v` points at `hd` floats (sliced above).
        let v: [__m512; C] = std::array::from_fn(|c| unsafe { _mm512_loadu_ps(v.add(16 * c)) });
        for (h, acc) in acc.iter_mut().enumerate() {
            let w = _mm512_set1_ps(scores[h * len + i]);
            for c in 0..C {
                acc[c] = _mm512_fmadd_ps(w, v[c], acc[c]);
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
