//! Softmax attention of the CPU backend over one KV head's cache: the partial results of a
//! run of positions (flash-decoding), merged afterwards.
//!
//! The cache holds f32 (the exact precision) or bf16 (the fast one, whose activations are
//! quantized anyway): half the memory and half the bytes a long context makes attention read,
//! and on CPUs with AVX512_BF16 one `vdpbf16ps` does the multiply-adds of two f32 FMAs.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_bf16;

use std::ops::Range;

use half::bf16;

use super::ops::{axpy_body, dot_body};

/// An element of a KV cache.
///
/// In f32 both caches are position-major: position `p`'s row of every KV head at
/// `p * stride`. In bf16 the keys are blocked by [`KEY_BLOCK`] positions and the values by
/// pairs of positions, in the layouts [`blocked_key`] and [`paired_value`] give, so that the
/// SIMD code needs neither a horizontal sum nor a gather.
pub trait KvElem: Copy + Send + Sync + 'static {
    /// Whether this is bf16, in the blocked layouts.
    const BF16: bool;

    /// Elements `offset..offset + len` of position `p`'s value in a cache of `stride`-element
    /// rows, as f32: the slice itself, or gathered into `scratch`. For f32, keys too.
    fn value_row<'b>(
        cache: &'b [Self],
        p: usize,
        stride: usize,
        offset: usize,
        len: usize,
        scratch: &'b mut [f32],
    ) -> &'b [f32];

    /// Element `j` of the keys of positions `16 · block..16 · block + 16`, as f32, in a cache
    /// of `stride`-element rows.
    fn key_lanes(cache: &[Self], block: usize, j: usize, stride: usize, out: &mut [f32; KEY_BLOCK]);

    /// Elements a key cache of `stride`-element rows needs to hold positions `0..positions`.
    fn key_slots(positions: usize, stride: usize) -> usize;

    /// Elements a value cache of `stride`-element rows needs to hold positions `0..positions`.
    fn value_slots(positions: usize, stride: usize) -> usize;

    /// The cache as bf16, if it is.
    fn bf16s(cache: &[Self]) -> Option<&[bf16]>;

    /// The cache as f32, if it is.
    fn f32s(cache: &[Self]) -> Option<&[f32]>;
}

/// Positions per block of a bf16 key cache.
pub const KEY_BLOCK: usize = 16;

/// Where element `j` of position `p`'s key lies in a bf16 key cache of `stride`-element rows
/// (`stride` even). A block's elements `j` and `j + 1` (`j` even) of its 16 positions lie
/// together, one 32-bit pair per position: a 512-bit vector holds them for all 16, the
/// operand `vdpbf16ps` multiplies by a broadcast pair of query elements.
pub fn blocked_key(p: usize, j: usize, stride: usize) -> usize {
    (p / KEY_BLOCK * stride + j - j % 2) * KEY_BLOCK + 2 * (p % KEY_BLOCK) + j % 2
}

/// Where element `j` of position `p`'s value lies in a bf16 value cache of `stride`-element
/// rows: positions `2i` and `2i + 1` share a row of 32-bit pairs, one per element, which
/// `vdpbf16ps` multiplies by a broadcast pair of their softmax weights.
pub fn paired_value(p: usize, j: usize, stride: usize) -> usize {
    (p / 2 * stride + j) * 2 + p % 2
}

impl KvElem for f32 {
    const BF16: bool = false;

    fn value_row<'b>(
        cache: &'b [f32],
        p: usize,
        stride: usize,
        offset: usize,
        len: usize,
        _scratch: &'b mut [f32],
    ) -> &'b [f32] {
        &cache[p * stride + offset..][..len]
    }

    fn key_lanes(cache: &[f32], block: usize, j: usize, stride: usize, out: &mut [f32; KEY_BLOCK]) {
        for (l, x) in out.iter_mut().enumerate() {
            *x = cache[(block * KEY_BLOCK + l) * stride + j];
        }
    }

    fn key_slots(positions: usize, stride: usize) -> usize {
        positions * stride
    }

    fn value_slots(positions: usize, stride: usize) -> usize {
        positions * stride
    }

    fn bf16s(_cache: &[f32]) -> Option<&[bf16]> {
        None
    }

    fn f32s(cache: &[f32]) -> Option<&[f32]> {
        Some(cache)
    }
}

impl KvElem for bf16 {
    const BF16: bool = true;

    fn value_row<'b>(
        cache: &'b [bf16],
        p: usize,
        stride: usize,
        offset: usize,
        len: usize,
        scratch: &'b mut [f32],
    ) -> &'b [f32] {
        for (j, x) in scratch[..len].iter_mut().enumerate() {
            *x = cache[paired_value(p, offset + j, stride)].to_f32();
        }
        &scratch[..len]
    }

    fn key_lanes(cache: &[bf16], block: usize, j: usize, stride: usize, out: &mut [f32; KEY_BLOCK]) {
        for (l, x) in out.iter_mut().enumerate() {
            *x = cache[blocked_key(block * KEY_BLOCK + l, j, stride)].to_f32();
        }
    }

    fn key_slots(positions: usize, stride: usize) -> usize {
        positions.div_ceil(KEY_BLOCK) * KEY_BLOCK * stride
    }

    fn value_slots(positions: usize, stride: usize) -> usize {
        positions.div_ceil(2) * 2 * stride
    }

    fn bf16s(cache: &[bf16]) -> Option<&[bf16]> {
        Some(cache)
    }

    fn f32s(_cache: &[bf16]) -> Option<&[f32]> {
        None
    }
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// The SIMD paths' scores and bf16 weights, kept by each thread between tasks: buffers
    /// on the stack were zeroed on every call (8 KiB, a memset of 1-2% at batch 8).
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<u32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` on this thread's scratch: `scores` floats and `weights` words.
#[cfg(target_arch = "x86_64")]
fn with_scratch<R>(scores: usize, weights: usize, f: impl FnOnce(&mut [f32], &mut [u32]) -> R) -> R {
    SCRATCH.with(|scratch| {
        // Tasks do not nest, so the buffers are never borrowed twice.
        let mut scratch = scratch.borrow_mut();
        let (s, w) = &mut *scratch;
        if s.len() < scores {
            s.resize(scores, 0.0);
        }
        if w.len() < weights {
            w.resize(weights, 0);
        }
        f(&mut s[..scores], &mut w[..weights])
    })
}

/// One KV head's rows in a cache: elements `offset..offset + len` of each `stride`-element
/// row, in the layout [`KvElem`] gives.
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
///
/// With AVX512_BF16 and a bf16 cache, queries and softmax weights are rounded to bf16 for
/// `vdpbf16ps` (products and sums stay f32); elsewhere they stay f32.
pub fn attend_partial<T: KvElem>(
    q: &[f32],
    kv: &HeadRows<'_, T>,
    positions: Range<usize>,
    scale: f32,
    out: &mut [f32],
) {
    assert!(kv.offset + kv.len <= kv.stride, "a head's elements lie inside its row");
    assert!(kv.k.len() >= T::key_slots(positions.end, kv.stride), "the key cache holds every position");
    assert!(kv.v.len() >= T::value_slots(positions.end, kv.stride), "the value cache holds every position");
    assert!(!T::BF16 || (kv.stride.is_multiple_of(2) && kv.offset.is_multiple_of(2)), "bf16 rows pair up elements");
    #[cfg(target_arch = "x86_64")]
    if simd(q, kv, positions.clone(), scale, out) {
        return;
    }
    attend_partial_body(q, kv, positions, scale, out);
}

/// [`attend_partial`] by the SIMD code this CPU and head size have, if any.
#[cfg(target_arch = "x86_64")]
fn simd<T: KvElem>(q: &[f32], kv: &HeadRows<'_, T>, positions: Range<usize>, scale: f32, out: &mut [f32]) -> bool {
    use super::q8::Isa;
    let isa = super::isa();
    let (hd, stride, offset) = (kv.len, kv.stride, kv.offset);
    if let (Some(k), Some(v)) = (T::bf16s(kv.k), T::bf16s(kv.v)) {
        let kv = HeadRows { k, v, stride, offset, len: hd };
        if isa == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16") && (hd == 64 || hd == 128) {
            // SAFETY: `Isa::Avx512` means AVX-512 F, BW and VL were detected, AVX512_BF16 just
            // now; the caches are bf16, `hd` is 64 or 128, and `attend_partial` checked the
            // caches' lengths.
            unsafe {
                match hd {
                    64 => avx512_bf16::attend_partial::<4>(q, &kv, positions, scale, out),
                    _ => avx512_bf16::attend_partial::<8>(q, &kv, positions, scale, out),
                }
            }
            return true;
        }
        if isa != Isa::Baseline && hd.is_multiple_of(16) {
            // SAFETY: `Isa::Avx2` and `Isa::Avx512` mean AVX2 and FMA were detected; the caches
            // are bf16, `hd` a multiple of 16, and `attend_partial` checked their lengths.
            unsafe { avx2::attend_partial(q, &kv, positions, scale, out) };
            return true;
        }
    } else if let (Some(k), Some(v)) = (T::f32s(kv.k), T::f32s(kv.v)) {
        let kv = HeadRows { k, v, stride, offset, len: hd };
        if isa == Isa::Avx512 && (hd == 64 || hd == 128) {
            // SAFETY: `Isa::Avx512` means AVX-512F and FMA were detected; `hd` is 64 or 128, and
            // `attend_partial` checked the caches' lengths.
            unsafe {
                match hd {
                    64 => avx512::attend_partial::<4>(q, &kv, positions, scale, out),
                    _ => avx512::attend_partial::<8>(q, &kv, positions, scale, out),
                }
            }
            return true;
        }
    }
    if isa != Isa::Baseline {
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` mean AVX2 and FMA were detected.
        unsafe { attend_partial_avx2(q, kv, positions, scale, out) };
        return true;
    }
    false
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
    let (hd, stride, offset) = (kv.len, kv.stride, kv.offset);
    let group = q.len() / hd;
    let len = positions.len();
    let mut scratch = vec![0.0f32; hd];
    // Positions outermost: each key and value row is read (and converted) once for every
    // head of the group.
    let mut scores = vec![0.0f32; group * len];
    if T::BF16 {
        blocked_scores_body(q, kv, positions.clone(), scale, &mut scores);
    } else {
        for (i, p) in positions.clone().enumerate() {
            let k = T::value_row(kv.k, p, stride, offset, hd, &mut scratch);
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
        let v = T::value_row(kv.v, p, stride, offset, hd, &mut scratch);
        for h in 0..group {
            axpy_body(scores[h * len + i], v, &mut out[h * (hd + 2) + 2..(h + 1) * (hd + 2)]);
        }
    }
}

/// The scores of [`attend_partial_body`] from blocked keys: element `d` of 16 positions at a
/// time, so the lanes add up without a horizontal sum.
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

#[cfg(test)]
mod tests;
