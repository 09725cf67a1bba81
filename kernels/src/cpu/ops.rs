//! Scalar building blocks of the CPU backend, written so the compiler vectorises them.

use std::ops::Range;

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::backend::{Rope, RopeLayout};

/// Dot product with eight independent accumulators (vectorisable, and less rounding drift
/// than one running sum). Runs the AVX2+FMA instantiation where the CPU has it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::isa() != super::q8::Isa::Baseline {
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` mean AVX2 and FMA were detected.
        return unsafe { dot_avx2(a, b) };
    }
    dot_body(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len().min(b.len()));
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out += w · v`, element-wise: attention's weighted sum of value rows.
pub fn axpy(w: f32, v: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::isa() != super::q8::Isa::Baseline {
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` mean AVX2 and FMA were detected.
        unsafe { axpy_avx2(w, v, out) };
        return;
    }
    axpy_body(w, v, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn axpy_avx2(w: f32, v: &[f32], out: &mut [f32]) {
    axpy_body(w, v, out);
}

#[inline(always)]
fn axpy_body(w: f32, v: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += w * x;
    }
}

/// An element of a KV cache: f32, or f16 where the activations are quantized anyway (half
/// the memory, and half the bytes a long context makes attention read).
///
/// Values are position-major: position `p`'s row of every KV head at `p * stride`. Keys are
/// too in f32; in f16 they are blocked by [`KEY_BLOCK`] positions, each element of a row
/// followed by the same element of the block's next positions (see [`blocked_key`]), so a
/// 16-lane vector holds one element of 16 positions and the scores of 16 positions add up
/// without a horizontal sum.
pub trait KvElem: Copy + Send + Sync + 'static {
    /// Whether this is f16 (the SIMD paths convert 16 elements per instruction), with its
    /// keys blocked.
    const F16: bool;

    /// `cache[at..at + len]` as f32: the slice itself, or converted into `scratch`.
    fn row<'b>(cache: &'b [Self], at: usize, len: usize, scratch: &'b mut [f32]) -> &'b [f32];

    /// Element `j` of the keys of positions `16 · block..16 · block + 16`, as f32, in a cache
    /// of `stride`-element rows: one contiguous run when the keys are blocked.
    fn key_lanes(cache: &[Self], block: usize, j: usize, stride: usize, out: &mut [f32; KEY_BLOCK]);

    /// Elements a key cache of `stride`-element rows needs to hold positions `0..positions`.
    fn key_slots(positions: usize, stride: usize) -> usize;
}

/// Positions per block of an f16 key cache.
pub const KEY_BLOCK: usize = 16;

/// Where element `j` of position `p`'s key lies in an f16 key cache of `stride`-element rows.
pub fn blocked_key(p: usize, j: usize, stride: usize) -> usize {
    (p / KEY_BLOCK * stride + j) * KEY_BLOCK + p % KEY_BLOCK
}

impl KvElem for f32 {
    const F16: bool = false;

    fn row<'b>(cache: &'b [f32], at: usize, len: usize, _scratch: &'b mut [f32]) -> &'b [f32] {
        &cache[at..at + len]
    }

    fn key_lanes(cache: &[f32], block: usize, j: usize, stride: usize, out: &mut [f32; KEY_BLOCK]) {
        for (l, x) in out.iter_mut().enumerate() {
            *x = cache[(block * KEY_BLOCK + l) * stride + j];
        }
    }

    fn key_slots(positions: usize, stride: usize) -> usize {
        positions * stride
    }
}

impl KvElem for f16 {
    const F16: bool = true;

    fn row<'b>(cache: &'b [f16], at: usize, len: usize, scratch: &'b mut [f32]) -> &'b [f32] {
        cache[at..at + len].convert_to_f32_slice(&mut scratch[..len]);
        &scratch[..len]
    }

    fn key_lanes(cache: &[f16], block: usize, j: usize, stride: usize, out: &mut [f32; KEY_BLOCK]) {
        cache[(block * stride + j) * KEY_BLOCK..][..KEY_BLOCK].convert_to_f32_slice(out);
    }

    fn key_slots(positions: usize, stride: usize) -> usize {
        positions.div_ceil(KEY_BLOCK) * KEY_BLOCK * stride
    }
}

/// One KV head's rows in a cache: position `p`'s value is `v[p * stride + offset..][..len]`,
/// its key the same elements of `k` in the layout [`KvElem`] gives.
pub struct HeadRows<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub stride: usize,
    pub offset: usize,
    pub len: usize,
}

/// Softmax attention of a group of query heads (`q`: heads back to back) sharing one KV head,
/// over `positions`, as partial results to merge with [`merge_partials`]: per head, the
/// running maximum score, the sum of `exp(score - max)`, and the value rows weighted by those
/// exponentials (`head_dim + 2` floats per head in `out`). Dispatches once per call, so the
/// per-position dot products inline into the SIMD code.
pub fn attend_partial<T: KvElem>(
    q: &[f32],
    kv: &HeadRows<'_, T>,
    positions: Range<usize>,
    scale: f32,
    out: &mut [f32],
) {
    assert!(kv.offset + kv.len <= kv.stride, "a head's elements lie inside its row");
    assert!(kv.k.len() >= T::key_slots(positions.end, kv.stride), "the key cache holds every position");
    assert!(kv.v.len() >= positions.end * kv.stride, "the value cache holds every position");
    #[cfg(target_arch = "x86_64")]
    if super::isa() == super::q8::Isa::Avx512 {
        match kv.len {
            // SAFETY: `Isa::Avx512` means AVX-512 F, FMA and F16C were detected.
            64 => return unsafe { avx512::attend_partial::<T, 4>(q, kv, positions, scale, out) },
            // SAFETY: as above.
            128 => return unsafe { avx512::attend_partial::<T, 8>(q, kv, positions, scale, out) },
            _ => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    if super::isa() != super::q8::Isa::Baseline {
        if T::F16 && kv.len.is_multiple_of(32) {
            // SAFETY: `Isa::Avx2` means AVX2, FMA and F16C were detected; `T` is f16.
            unsafe { avx2::attend_partial(q, kv, positions, scale, out) };
            return;
        }
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` mean AVX2 and FMA were detected.
        unsafe { attend_partial_avx2(q, kv, positions, scale, out) };
        return;
    }
    attend_partial_body(q, kv, positions, scale, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_partial_avx2<T: KvElem>(
    q: &[f32],
    kv: &HeadRows<'_, T>,
    positions: Range<usize>,
    scale: f32,
    out: &mut [f32],
) {
    attend_partial_body(q, kv, positions, scale, out);
}

#[inline(always)]
fn attend_partial_body<T: KvElem>(
    q: &[f32],
    kv: &HeadRows<'_, T>,
    positions: Range<usize>,
    scale: f32,
    out: &mut [f32],
) {
    let hd = kv.len;
    let group = q.len() / hd;
    let len = positions.len();
    let at = |p: usize| p * kv.stride + kv.offset;
    let mut scratch = vec![0.0f32; hd];
    // Positions outermost: each key and value row is read (and converted) once for every
    // head of the group.
    let mut scores = vec![0.0f32; group * len];
    if T::F16 {
        blocked_scores_body(q, kv, positions.clone(), scale, &mut scores);
    } else {
        // Keys in f32 are rows, as values are.
        for (i, p) in positions.clone().enumerate() {
            let k = T::row(kv.k, at(p), hd, &mut scratch);
            for h in 0..group {
                scores[h * len + i] = dot_body(&q[h * hd..(h + 1) * hd], k) * scale;
            }
        }
    }
    for h in 0..group {
        let (max, sum) = exp_shifted(&mut scores[h * len..(h + 1) * len]);
        let part = &mut out[h * (hd + 2)..(h + 1) * (hd + 2)];
        part[0] = max;
        part[1] = sum;
        part[2..].fill(0.0);
    }
    for (i, p) in positions.enumerate() {
        let v = T::row(kv.v, at(p), hd, &mut scratch);
        for h in 0..group {
            axpy_body(scores[h * len + i], v, &mut out[h * (hd + 2) + 2..(h + 1) * (hd + 2)]);
        }
    }
}

/// The scores of [`attend_partial_body`] from blocked keys: element `d` of 16 positions at a
/// time, so the lanes add up without a gather per position or a horizontal sum (the loops
/// vectorise in the AVX2 instantiation).
#[inline(always)]
fn blocked_scores_body<T: KvElem>(
    q: &[f32],
    kv: &HeadRows<'_, T>,
    positions: Range<usize>,
    scale: f32,
    scores: &mut [f32],
) {
    let hd = kv.len;
    let group = q.len() / hd;
    let len = positions.len();
    let mut lanes = [0.0f32; KEY_BLOCK];
    let mut acc = vec![[0.0f32; KEY_BLOCK]; group];
    for block in positions.start / KEY_BLOCK..positions.end.div_ceil(KEY_BLOCK) {
        acc.iter_mut().for_each(|a| *a = [0.0; KEY_BLOCK]);
        for d in 0..hd {
            T::key_lanes(kv.k, block, kv.offset + d, kv.stride, &mut lanes);
            for (h, acc) in acc.iter_mut().enumerate() {
                let qd = q[h * hd + d];
                for (a, &k) in acc.iter_mut().zip(&lanes) {
                    *a += qd * k;
                }
            }
        }
        let first = block * KEY_BLOCK;
        for p in first.max(positions.start)..(first + KEY_BLOCK).min(positions.end) {
            for (h, acc) in acc.iter().enumerate() {
                scores[h * len + p - positions.start] = acc[p - first] * scale;
            }
        }
    }
}

/// Replaces scores by `exp(score - max)`, the unnormalised softmax; returns the maximum and the
/// sum of the exponentials, which [`merge_partials`] needs.
#[inline(always)]
fn exp_shifted(scores: &mut [f32]) -> (f32, f32) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in scores.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    (max, sum)
}

/// f16 caches (the fast precision) on AVX2: the scores of 8 positions per vector from the
/// blocked keys, the values 32 dimensions per pass, so that the accumulators of up to 3 query
/// heads stay in the 16 vector registers.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{HeadRows, KEY_BLOCK, KvElem};

    /// Scores of this many (head, position) pairs stay on the stack.
    const STACK_SCORES: usize = 1024;

    /// How far ahead of the value row being read the next ones are fetched.
    const VALUES_AHEAD: usize = 8;

    /// Query heads per pass.
    const HEADS: usize = 3;

    /// [`super::attend_partial`] for f16 caches.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are available; `T` is f16 (keys blocked); `kv.len` is a multiple of
    /// 32; both caches hold every position of `positions` at `offset..offset + len` of its
    /// row; `out` holds `head_dim + 2` floats per query head of `q`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend_partial<T: KvElem>(
        q: &[f32],
        kv: &HeadRows<'_, T>,
        positions: Range<usize>,
        scale: f32,
        out: &mut [f32],
    ) {
        let hd = kv.len;
        let group = q.len() / hd;
        let len = positions.len();
        let (mut stack, mut heap) = ([0.0f32; STACK_SCORES], Vec::new());
        let scores = if group * len <= STACK_SCORES {
            &mut stack[..group * len]
        } else {
            heap.resize(group * len, 0.0);
            &mut heap[..]
        };
        let mut h = 0;
        while h < group {
            let heads = (group - h).min(HEADS);
            let q = &q[h * hd..(h + heads) * hd];
            let scores = &mut scores[h * len..(h + heads) * len];
            let out = &mut out[h * (hd + 2)..(h + heads) * (hd + 2)];
            // SAFETY: forwarded from the caller, for the heads `h..h + heads`.
            unsafe {
                match heads {
                    1 => heads_pass::<T, 1>(q, kv, positions.clone(), scale, scores, out),
                    2 => heads_pass::<T, 2>(q, kv, positions.clone(), scale, scores, out),
                    _ => heads_pass::<T, HEADS>(q, kv, positions.clone(), scale, scores, out),
                }
            }
            h += heads;
        }
    }

    /// Heads `0..H` of `q` (and of `scores`, `out`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn heads_pass<T: KvElem, const H: usize>(
        q: &[f32],
        kv: &HeadRows<'_, T>,
        positions: Range<usize>,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let (hd, stride, offset) = (kv.len, kv.stride, kv.offset);
        let len = positions.len();
        let keys = kv.k.as_ptr().cast::<u16>();
        let values = kv.v.as_ptr().cast::<u16>();
        let scale = _mm256_set1_ps(scale);
        let mut block = positions.start / KEY_BLOCK;
        while block * KEY_BLOCK < positions.end {
            let first = block * KEY_BLOCK;
            // SAFETY (this block): the block's `hd` runs of 16 keys at `offset` lie in the
            // cache; query elements are read below `H * hd`.
            let base = unsafe { keys.add((block * stride + offset) * KEY_BLOCK) };
            // This head's keys two blocks on, a line per two elements.
            let ahead = base.wrapping_add(2 * stride * KEY_BLOCK).cast::<i8>();
            // Per head, positions 0..8 and 8..16 of the block, each in two chains (even and
            // odd elements) so the FMAs' latency hides behind the other chains.
            let mut acc = [[[_mm256_setzero_ps(); 2]; 2]; H];
            for d in 0..hd {
                if d % 2 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(d * KEY_BLOCK * 2));
                }
                let (lo, hi) = unsafe {
                    let run = base.add(d * KEY_BLOCK);
                    (_mm256_cvtph_ps(_mm_loadu_si128(run.cast())), _mm256_cvtph_ps(_mm_loadu_si128(run.add(8).cast())))
                };
                for (h, acc) in acc.iter_mut().enumerate() {
                    let qd = _mm256_set1_ps(unsafe { *q.get_unchecked(h * hd + d) });
                    acc[0][d % 2] = _mm256_fmadd_ps(qd, lo, acc[0][d % 2]);
                    acc[1][d % 2] = _mm256_fmadd_ps(qd, hi, acc[1][d % 2]);
                }
            }
            for (h, acc) in acc.iter().enumerate() {
                let mut lanes = [0.0f32; KEY_BLOCK];
                for (half, acc) in acc.iter().enumerate() {
                    let sum = _mm256_mul_ps(_mm256_add_ps(acc[0], acc[1]), scale);
                    // SAFETY: `lanes` holds 16 floats.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * half), sum) };
                }
                for p in first.max(positions.start)..(first + KEY_BLOCK).min(positions.end) {
                    scores[h * len + p - positions.start] = lanes[p - first];
                }
            }
            block += 1;
        }
        let mut parts = [(0.0f32, 0.0f32); H];
        for (h, part) in parts.iter_mut().enumerate() {
            // f16 caches are the fast precision's, which takes the vector `exp`.
            *part = crate::cpu::vexp::avx2::exp_shifted(&mut scores[h * len..(h + 1) * len]);
        }
        for chunk in 0..hd / 32 {
            let mut acc = [[_mm256_setzero_ps(); 4]; H];
            for (i, p) in positions.clone().enumerate() {
                // SAFETY: the caller checked the cache holds every position's value row.
                let row = unsafe { values.add(p * stride + offset + 32 * chunk) };
                if chunk == 0 && p + VALUES_AHEAD < positions.end {
                    let ahead = values.wrapping_add((p + VALUES_AHEAD) * stride + offset).cast::<i8>();
                    for l in (0..hd * 2).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l));
                    }
                }
                let w: [__m256; H] = std::array::from_fn(|h| _mm256_set1_ps(scores[h * len + i]));
                for c in 0..4 {
                    // SAFETY: `row` has 32 elements from this chunk on.
                    let v = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * c).cast())) };
                    for (acc, w) in acc.iter_mut().zip(&w) {
                        acc[c] = _mm256_fmadd_ps(*w, v, acc[c]);
                    }
                }
            }
            for (h, acc) in acc.iter().enumerate() {
                let at = &mut out[h * (hd + 2) + 2 + 32 * chunk..][..32];
                for (c, acc) in acc.iter().enumerate() {
                    // SAFETY: `at` holds 32 floats.
                    unsafe { _mm256_storeu_ps(at.as_mut_ptr().add(8 * c), *acc) };
                }
            }
        }
        for (h, part) in parts.iter().enumerate() {
            (out[h * (hd + 2)], out[h * (hd + 2) + 1]) = *part;
        }
    }
}

/// Heads of 64 or 128 elements in 512-bit vectors: each key and value row is loaded (and
/// converted from f16) once for up to `16 / C` heads of the group, whose queries and outputs
/// stay in registers; score and value loops run without bounds checks.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{HeadRows, KvElem};

    /// How far ahead of the value row being read the next ones are fetched.
    const VALUES_AHEAD: usize = 8;

    /// Scores of this many (head, position) pairs stay on the stack.
    const STACK_SCORES: usize = 1024;

    /// [`super::attend_partial`] for heads of `16 * C` elements.
    ///
    /// # Safety
    /// AVX-512F, FMA and F16C are available; `kv.len == 16 * C`; both caches hold every
    /// position of `positions` at `offset..offset + len` of its row; `out` holds
    /// `head_dim + 2` floats per query head of `q`.
    #[target_feature(enable = "avx512f,fma,f16c")]
    pub(super) unsafe fn attend_partial<T: KvElem, const C: usize>(
        q: &[f32],
        kv: &HeadRows<'_, T>,
        positions: Range<usize>,
        scale: f32,
        out: &mut [f32],
    ) {
        let hd = 16 * C;
        let group = q.len() / hd;
        let len = positions.len();
        let (mut stack, mut heap) = ([0.0f32; STACK_SCORES], Vec::new());
        let scores = if group * len <= STACK_SCORES {
            &mut stack[..group * len]
        } else {
            heap.resize(group * len, 0.0);
            &mut heap[..]
        };
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
                    1 => heads_pass::<T, C, 1>(q, kv, positions.clone(), scale, scores, out),
                    2 => heads_pass::<T, C, 2>(q, kv, positions.clone(), scale, scores, out),
                    3 => heads_pass::<T, C, 3>(q, kv, positions.clone(), scale, scores, out),
                    _ => heads_pass::<T, C, 4>(q, kv, positions.clone(), scale, scores, out),
                }
            }
            h += heads;
        }
    }

    /// 16 elements of a cache row from `p`, as f32. Compiled with its caller's features: a
    /// vector returned across a feature boundary is passed in a different ABI.
    #[inline]
    #[target_feature(enable = "avx512f,fma,f16c")]
    unsafe fn load<T: KvElem>(p: *const T) -> __m512 {
        // SAFETY: the caller guarantees 16 elements at `p`.
        unsafe { if T::F16 { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) } else { _mm512_loadu_ps(p.cast()) } }
    }

    /// Scores of heads `0..H` of `q` against the f16 keys of `kv` at `positions`, times
    /// `scale`, into `scores` (`positions.len()` per head). A block's 16 positions are the 16
    /// lanes: each key element meets a broadcast query element, so no sum crosses lanes; four
    /// accumulators per head keep the FMA chains short.
    ///
    /// # Safety
    /// `T` is f16 (keys blocked); `kv.k` holds the keys of every block `positions` touches; `q`
    /// holds `H * kv.len` floats and `scores` `H * positions.len()`; `kv.len` is a multiple of 4.
    #[inline]
    #[target_feature(enable = "avx512f,fma,f16c")]
    unsafe fn blocked_scores<T: KvElem, const H: usize>(
        q: &[f32],
        kv: &HeadRows<'_, T>,
        positions: Range<usize>,
        scale: f32,
        scores: &mut [f32],
    ) {
        let (hd, stride, offset, k) = (kv.len, kv.stride, kv.offset, kv.k.as_ptr().cast::<u16>());
        const B: usize = super::KEY_BLOCK;
        let len = positions.len();
        let scale = _mm512_set1_ps(scale);
        let mut block = positions.start / B;
        while block * B < positions.end {
            let first = block * B;
            // SAFETY (this block): the block's `hd` rows of 16 keys at `offset` lie in `k`;
            // query elements are read below `H * hd`.
            let mut acc = [[_mm512_setzero_ps(); 4]; H];
            let base = unsafe { k.add((block * stride + offset) * B) };
            // This head's keys two blocks on: `hd * B` f16s, one line per 32.
            let ahead = base.wrapping_add(2 * stride * B).cast::<i8>();
            for d in (0..hd).step_by(4) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(d * B * 2));
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(d * B * 2 + 64));
                for u in 0..4 {
                    let kt = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(base.add((d + u) * B).cast())) };
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let qd = unsafe { _mm512_set1_ps(*q.get_unchecked(h * hd + d + u)) };
                        acc[u] = _mm512_fmadd_ps(qd, kt, acc[u]);
                    }
                }
            }
            // Lanes of positions outside the range (a block's start or end) are not stored.
            let lo = positions.start.saturating_sub(first);
            let hi = (positions.end - first).min(B);
            let mask: __mmask16 = ((1u32 << hi) - (1u32 << lo)) as __mmask16;
            for (h, acc) in acc.iter().enumerate() {
                let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
                // The lane for position `first + l` goes to `scores[h * len + first + l - start]`;
                // masked-off lanes are never written, so the base may lie before the slice.
                let at = scores.as_mut_ptr().wrapping_add(h * len + first).wrapping_sub(positions.start);
                unsafe { _mm512_mask_storeu_ps(at, mask, _mm512_mul_ps(sum, scale)) };
            }
            block += 1;
        }
    }

    /// Heads `0..H` of `q` (and of `scores`, `out`).
    #[inline]
    #[target_feature(enable = "avx512f,fma,f16c")]
    unsafe fn heads_pass<T: KvElem, const C: usize, const H: usize>(
        q: &[f32],
        kv: &HeadRows<'_, T>,
        positions: Range<usize>,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = 16 * C;
        let len = positions.len();
        let row = |cache: &[T], p: usize| cache[p * kv.stride + kv.offset..][..hd].as_ptr();
        if T::F16 {
            // SAFETY: `T` is f16 (its keys blocked), `q` holds `H` heads, and the caller checked
            // the cache holds every position's key.
            unsafe { blocked_scores::<T, H>(q, kv, positions.clone(), scale, scores) };
        } else {
            // SAFETY: `q` holds `H` heads of `hd` floats.
            let qh: [[__m512; C]; H] = std::array::from_fn(|h| {
                std::array::from_fn(|c| unsafe { _mm512_loadu_ps(q.as_ptr().add(h * hd + 16 * c)) })
            });
            for (i, p) in positions.clone().enumerate() {
                let k = row(kv.k, p);
                // SAFETY: `k` points at `hd` elements (sliced above).
                let k: [__m512; C] = std::array::from_fn(|c| unsafe { load(k.add(16 * c)) });
                for (h, qh) in qh.iter().enumerate() {
                    let mut acc = _mm512_mul_ps(qh[0], k[0]);
                    for c in 1..C {
                        acc = _mm512_fmadd_ps(qh[c], k[c], acc);
                    }
                    scores[h * len + i] = _mm512_reduce_add_ps(acc) * scale;
                }
            }
        }
        let mut parts = [(0.0f32, 0.0f32); H];
        for (h, part) in parts.iter_mut().enumerate() {
            let scores = &mut scores[h * len..(h + 1) * len];
            // f16 caches are the fast precision's, which takes the vector `exp`; the exact
            // precision keeps libm's.
            *part = if T::F16 { crate::cpu::vexp::avx512::exp_shifted(scores) } else { super::exp_shifted(scores) };
        }
        let mut acc = [[_mm512_setzero_ps(); C]; H];
        for (i, p) in positions.clone().enumerate() {
            if p + VALUES_AHEAD < positions.end {
                let ahead = row(kv.v, p + VALUES_AHEAD).cast::<i8>();
                for l in (0..hd * size_of::<T>()).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l));
                }
            }
            let v = row(kv.v, p);
            // SAFETY: `v` points at `hd` elements (sliced above).
            let v: [__m512; C] = std::array::from_fn(|c| unsafe { load(v.add(16 * c)) });
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
}

/// Merges one head's partial softmaxes (at `offset` in each `part_len`-long record of
/// `parts`, laid out as [`attend_partial`] writes them) into its attention output.
pub fn merge_partials(parts: &[f32], part_len: usize, offset: usize, out: &mut [f32]) {
    let hd = out.len();
    let records = || parts.chunks_exact(part_len).map(|r| &r[offset..offset + hd + 2]);
    let max = records().map(|r| r[0]).fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0f32;
    out.fill(0.0);
    for r in records() {
        let w = (r[0] - max).exp();
        total += r[1] * w;
        axpy_body(w, &r[2..], out);
    }
    for o in out.iter_mut() {
        *o /= total;
    }
}

pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    // Eight f64 partial sums: one running sum is a chain of dependent adds, which made this
    // serial op cost as much as a small matmul at batch 8.
    let mut lanes = [0.0f64; 8];
    let mut chunks = x.chunks_exact(lanes.len());
    for chunk in &mut chunks {
        for (s, &v) in lanes.iter_mut().zip(chunk) {
            *s += f64::from(v) * f64::from(v);
        }
    }
    let ss = chunks.remainder().iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() + lanes.iter().sum::<f64>();
    let scale = (1.0 / (ss / x.len() as f64 + f64::from(eps)).sqrt()) as f32;
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `*g = silu(*g) * u` over the slices, with libm's `exp`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// The cosines and sines RoPE turns the pairs of a head by at one position, pair by pair.
/// Angles are computed in f64 so long positions keep precision.
pub fn rope_angles(pos: u32, rope: &Rope, out: &mut Vec<(f32, f32)>) {
    let n_rot = rope.n_rot;
    out.clear();
    out.extend((0..n_rot / 2).map(|i| {
        let theta = f64::from(pos) * f64::from(rope.freq_base).powf(-2.0 * i as f64 / n_rot as f64);
        let (sin, cos) = theta.sin_cos();
        (cos as f32, sin as f32)
    }));
}

/// Rotates one head in place by precomputed angles (see [`rope_angles`]).
pub fn rope_apply(head: &mut [f32], angles: &[(f32, f32)], layout: RopeLayout) {
    let half = angles.len();
    for (i, &(cos, sin)) in angles.iter().enumerate() {
        let (a, b) = match layout {
            RopeLayout::Normal => (2 * i, 2 * i + 1),
            RopeLayout::Neox => (i, i + half),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos - x1 * sin;
        head[b] = x0 * sin + x1 * cos;
    }
}

/// Rotates one head in place.
pub fn rope_row(head: &mut [f32], pos: u32, rope: &Rope) {
    let mut angles = Vec::with_capacity(rope.n_rot / 2);
    rope_angles(pos, rope, &mut angles);
    rope_apply(head, &angles, rope.layout);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rounding differences between vectorised and sequential sums stay in f32's last bits.
    const SUM_TOL: f32 = 1e-4;

    fn rope(layout: RopeLayout, n_rot: usize) -> Rope {
        Rope { layout, freq_base: 10_000.0, n_rot }
    }

    #[test]
    fn dot_matches_a_plain_sum_at_every_length() {
        for len in 0..40 {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < SUM_TOL, "len {len}");
        }
    }

    #[test]
    fn rope_at_position_zero_is_the_identity() {
        let head: Vec<f32> = (0..8).map(|i| i as f32).collect();
        for layout in [RopeLayout::Normal, RopeLayout::Neox] {
            let mut h = head.clone();
            rope_row(&mut h, 0, &rope(layout, 8));
            assert_eq!(h, head);
        }
    }

    #[test]
    fn rope_rotates_pairs_by_position_times_frequency() {
        // Pair i turns by pos * base^(-2i/n_rot); pair 0 by exactly pos radians.
        let mut h = vec![1.0, 0.0, 1.0, 0.0];
        rope_row(&mut h, 3, &rope(RopeLayout::Normal, 4));
        assert!((h[0] - 3f32.cos()).abs() < 1e-6 && (h[1] - 3f32.sin()).abs() < 1e-6);
        let t = 3.0 * 10_000f64.powf(-0.5);
        assert!((h[2] - t.cos() as f32).abs() < 1e-6 && (h[3] - t.sin() as f32).abs() < 1e-6);
    }

    #[test]
    fn neox_is_normal_rope_on_halves_instead_of_neighbours() {
        let normal_in = [0.3, -1.2, 2.0, 0.5, 0.7, 1.1];
        // Neox pairs (i, i + 3); lay the same pairs out that way.
        let neox_in = [0.3, 2.0, 0.7, -1.2, 0.5, 1.1];
        let (mut a, mut b) = (normal_in, neox_in);
        rope_row(&mut a, 17, &rope(RopeLayout::Normal, 6));
        rope_row(&mut b, 17, &rope(RopeLayout::Neox, 6));
        assert_eq!([a[0], a[2], a[4], a[1], a[3], a[5]], b);
    }

    #[test]
    fn partial_rotation_leaves_the_tail_alone() {
        let mut h = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        rope_row(&mut h, 5, &rope(RopeLayout::Neox, 4));
        assert_eq!(&h[4..], &[5.0, 6.0]);
    }

    #[test]
    fn rms_norm_scales_to_unit_rms() {
        let x = [3.0, -4.0];
        let mut out = [0.0; 2];
        rms_norm_row(&x, &[1.0, 2.0], 0.0, &mut out);
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - 2.0 * -4.0 / rms).abs() < 1e-6);
    }

    /// The f16 cache's blocked keys give what the same (rounded) keys give in an f32 cache,
    /// for ranges that start and end inside blocks, for both head sizes the AVX-512 path has
    /// and one it has not, in every instantiation this CPU runs.
    #[test]
    fn blocked_f16_keys_attend_as_f32_rows_do() {
        const TOL: f32 = 1e-5;
        for hd in [64usize, 128, 32] {
            let (heads, positions) = (2usize, 45usize);
            let stride = heads * hd;
            let value = |i: usize| f16::from_f32(((i * 7919 % 2003) as f32 / 2003.0 - 0.5) * 3.0);
            let keys: Vec<f16> = (0..positions * stride).map(|i| value(i * 3 + 1)).collect();
            let values: Vec<f16> = (0..positions * stride).map(value).collect();
            let mut blocked = vec![f16::ZERO; <f16 as KvElem>::key_slots(positions, stride)];
            for p in 0..positions {
                for j in 0..stride {
                    blocked[blocked_key(p, j, stride)] = keys[p * stride + j];
                }
            }
            let (k32, v32): (Vec<f32>, Vec<f32>) =
                keys.iter().zip(&values).map(|(k, v)| (k.to_f32(), v.to_f32())).unzip();
            let q: Vec<f32> = (0..3 * hd).map(|i| (i as f32 * 0.37).sin()).collect();
            for range in [0..45, 3..37, 16..32, 5..9, 17..18, 44..45] {
                let part = 3 * (hd + 2);
                let mut want = vec![0.0; part];
                let full = HeadRows { k: &k32[..], v: &v32[..], stride, offset: hd, len: hd };
                attend_partial(&q, &full, range.clone(), 0.125, &mut want);
                let half = HeadRows { k: &blocked[..], v: &values[..], stride, offset: hd, len: hd };
                let mut runs = vec![("dispatched", vec![0.0; part]), ("scalar", vec![0.0; part])];
                attend_partial(&q, &half, range.clone(), 0.125, &mut runs[0].1);
                attend_partial_body(&q, &half, range.clone(), 0.125, &mut runs[1].1);
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
                {
                    let mut got = vec![0.0; part];
                    // SAFETY: the features were detected just above.
                    unsafe { attend_partial_avx2(&q, &half, range.clone(), 0.125, &mut got) };
                    runs.push(("avx2", got));
                    let mut got = vec![0.0; part];
                    // SAFETY: as above; the keys are f16, `hd` a multiple of 32.
                    unsafe { avx2::attend_partial(&q, &half, range.clone(), 0.125, &mut got) };
                    runs.push(("avx2 f16", got));
                }
                for (name, got) in &runs {
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let close = (g - w).abs() <= TOL * w.abs().max(1.0);
                        assert!(close, "{name}: hd {hd}, {range:?}, [{i}]: {g} vs {w}");
                    }
                }
            }
        }
    }
}
