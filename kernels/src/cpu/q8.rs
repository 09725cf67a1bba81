//! The fast CPU path: activations quantized on the fly to 8 bits, multiplied against the
//! weights' quantized blocks with integer dot products. No dequantized copy of a weight is
//! ever made.
//!
//! Activations carry one scale per 16 elements (`x ≈ d·q`), half a weight block: on the
//! default model this keeps logits measurably closer to the exact pass than one scale per 32
//! (see docs/precision.md), and both halves fall out of the same 32-byte integer dot. The
//! K-quants are unpacked per super-block (`kquant`) and take the same dots; formats without a
//! kernel take the exact path. The AVX2 or AVX-512 instantiation is chosen at run time; the
//! scalar twin is the reference. NEON (aarch64) has no instantiation yet (issue #3).

use super::ops::rms_norm_rows;
use crate::quant::{GgmlType, f16_bits_to_f32};

/// Elements per weight block of the formats handled here.
pub const QB: usize = 32;
/// Elements per activation scale.
pub const QA: usize = 16;

/// Rows of activations quantized to 8 bits.
#[derive(Default)]
pub struct Q8Acts {
    /// One scale per [`QA`] elements.
    pub d: Vec<f32>,
    /// Per [`QB`]-element block, `Σ d·q` over it, for formats with an additive minimum.
    pub sum: Vec<f32>,
    /// Per scale, `Σ q`: what the packed kernels subtract for formats stored with a bias.
    pub qsum: Vec<i32>,
    pub q: Vec<i8>,
}

impl Q8Acts {
    /// Quantizes `n` rows of `cols` elements (`cols` a multiple of [`QB`]).
    pub fn quantize(&mut self, x: &[f32], n: usize, cols: usize) {
        self.quantize_with(Input::Rows(x), n, cols, serial);
    }

    /// [`Q8Acts::quantize`] of `input`, runs of blocks spread by `parallel(tasks, task)` (a
    /// pool's section).
    pub fn quantize_with(&mut self, input: Input, n: usize, cols: usize, parallel: impl Fn(usize, &Parallel)) {
        let plan = self.plan(input, n, cols);
        // SAFETY: `self` stays borrowed, unmoved and unread, until every task has run.
        parallel(plan.tasks(), &|i| unsafe { plan.run(i) });
    }

    /// [`Q8Acts::quantize_with`] as tasks to run later: the buffers are sized now, and the
    /// tasks write them through pointers, so the section that runs them can go on to read
    /// the activations (once every task has finished) without a section of its own.
    pub fn plan<'a>(&mut self, input: Input<'a>, n: usize, cols: usize) -> Q8Plan<'a> {
        let len = n * cols;
        self.d.resize(len / QA, 0.0);
        self.sum.resize(len / QB, 0.0);
        self.qsum.resize(len / QA, 0);
        self.q.resize(len, 0);
        Q8Plan {
            source: Source::of(input, len, cols),
            q: Chunks::of(&mut self.q),
            d: Chunks::of(&mut self.d),
            qsum: Chunks::of(&mut self.qsum),
            sum: Chunks::of(&mut self.sum),
        }
    }

    /// Weight row `row` (of `cols` elements) times activation rows `t..t + N`: the weight
    /// blocks are unpacked once for all `N` (the tile that makes prefill matrix-matrix).
    pub fn dot_rows<const N: usize>(&self, isa: Isa, ty: GgmlType, row: &[u8], t: usize, cols: usize) -> [f32; N] {
        let (scales, blocks) = (cols / QA, cols / QB);
        let d = std::array::from_fn(|k| &self.d[(t + k) * scales..(t + k + 1) * scales]);
        let sum = std::array::from_fn(|k| &self.sum[(t + k) * blocks..(t + k + 1) * blocks]);
        let q = std::array::from_fn(|k| &self.q[(t + k) * cols..(t + k + 1) * cols]);
        dot_many(isa, ty, row, d, sum, q)
    }
}

/// `x` rounded to the nearest integer (ties to even) for `|x| < 2^22`: adding and taking
/// away 1.5·2^23 leaves just the integer part in the mantissa. Plain arithmetic, so the
/// quantization loops vectorise (`f32::round` is a libm call on baseline x86-64).
#[inline(always)]
fn round_small(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (x + SHIFT) - SHIFT
}

/// What a quantization reads: rows as they are, or rows RMS-normalised by `weight` (with
/// `eps`) into `normed` by the quantization's own tasks, so that a norm before a matmul costs
/// no serial pass over the rows.
pub enum Input<'a> {
    Rows(&'a [f32]),
    Normed { x: &'a [f32], weight: &'a [f32], eps: f32, normed: &'a mut [f32] },
}

/// A planned quantization's input, read by its tasks a run of blocks each.
pub(super) struct Source<'a> {
    x: &'a [f32],
    /// The norm's weight and epsilon, and the rows it writes (runs hold whole rows).
    norm: Option<(&'a [f32], f32, Chunks<f32>)>,
    /// Blocks per run, one run per task.
    pub(super) run: usize,
    tasks: usize,
}

impl<'a> Source<'a> {
    /// The first `len` elements of `input`, in runs of whole blocks, one run per task (of
    /// whole rows of `cols` where the rows are normalised).
    pub(super) fn of(input: Input<'a>, len: usize, cols: usize) -> Self {
        let run = blocks_per_task(len / QB);
        let (x, norm, run) = match input {
            Input::Rows(x) => (&x[..len], None, run),
            Input::Normed { x, weight, eps, normed } => {
                let row_blocks = (cols / QB).max(1);
                let normed = &mut normed[..len];
                (&x[..len], Some((weight, eps, Chunks::of_slice(normed))), run.div_ceil(row_blocks) * row_blocks)
            }
        };
        Self { x, norm, run, tasks: len.div_ceil(run * QB) }
    }

    pub(super) fn tasks(&self) -> usize {
        self.tasks
    }

    /// The values of run `i`, normalised first where asked.
    ///
    /// # Safety
    /// The normalised rows' buffer outlives the plan, and nothing else touches run `i` of it
    /// meanwhile.
    pub(super) unsafe fn values(&self, i: usize) -> &[f32] {
        let span = self.run * QB;
        let x = &self.x[(i * span).min(self.x.len())..((i + 1) * span).min(self.x.len())];
        match &self.norm {
            None => x,
            Some((weight, eps, normed)) => {
                // SAFETY: the caller's guarantee.
                let normed = unsafe { normed.chunk(i, span) };
                rms_norm_rows(x, weight, *eps, normed);
                normed
            }
        }
    }
}

/// A buffer that the tasks of a section write in disjoint chunks, through its pointer.
#[derive(Clone, Copy)]
pub(super) struct Chunks<T> {
    start: *mut T,
    len: usize,
}

// SAFETY: the tasks that share it write disjoint chunks (`chunk`'s contract).
unsafe impl<T: Send> Send for Chunks<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Send> Sync for Chunks<T> {}

impl<T> Chunks<T> {
    /// A vector's elements (its pointer is valid until it is resized or dropped; reading
    /// the vector through `as_ptr` meanwhile does not invalidate it).
    pub(super) fn of(v: &mut Vec<T>) -> Self {
        Self { start: v.as_mut_ptr(), len: v.len() }
    }

    fn of_slice(v: &mut [T]) -> Self {
        Self { start: v.as_mut_ptr(), len: v.len() }
    }

    /// Chunk `i` of `size` elements (the last may be shorter).
    ///
    /// # Safety
    /// The buffer is still where it was, at least as long, and nothing else reads or writes
    /// this chunk during `'b`.
    pub(super) unsafe fn chunk<'b>(self, i: usize, size: usize) -> &'b mut [T] {
        let (start, end) = ((i * size).min(self.len), ((i + 1) * size).min(self.len));
        // SAFETY: the caller's guarantee; `start..end` lies inside the buffer.
        unsafe { std::slice::from_raw_parts_mut(self.start.add(start), end - start) }
    }
}

/// A quantization into a [`Q8Acts`], split into tasks ([`Q8Acts::plan`]).
pub struct Q8Plan<'a> {
    source: Source<'a>,
    q: Chunks<i8>,
    d: Chunks<f32>,
    qsum: Chunks<i32>,
    sum: Chunks<f32>,
}

impl Q8Plan<'_> {
    pub fn tasks(&self) -> usize {
        self.source.tasks()
    }

    /// Quantizes run `i`.
    ///
    /// # Safety
    /// The planned [`Q8Acts`] is not resized, moved or dropped before every task has run, and
    /// nothing reads or writes its run `i` (or the normalised rows') while this one runs.
    pub unsafe fn run(&self, i: usize) {
        let run = self.source.run;
        // SAFETY: the caller's guarantee, for run `i`'s chunks of every buffer.
        unsafe {
            let x = self.source.values(i);
            quantize_q8(
                x,
                self.q.chunk(i, run * QB),
                self.d.chunk(i, run * 2),
                self.qsum.chunk(i, run * 2),
                self.sum.chunk(i, run),
            );
        }
    }
}

/// A task function for a pool's section.
pub type Parallel<'a> = dyn Fn(usize) + Sync + 'a;

/// Runs every task on the calling thread.
pub fn serial(tasks: usize, task: &Parallel) {
    (0..tasks).for_each(task);
}

/// Blocks per quantization task: enough that a task outweighs handing it out.
fn blocks_per_task(blocks: usize) -> usize {
    const MIN_BLOCKS: usize = 64;
    blocks.div_ceil(8).max(MIN_BLOCKS)
}

/// The scale that maps a block's largest magnitude `amax` to `limit`, and its inverse (0 for
/// an all-zero block).
#[inline(always)]
pub(super) fn block_scale(amax: f32, limit: f32) -> (f32, f32) {
    let scale = amax / limit;
    (scale, if scale > 0.0 { 1.0 / scale } else { 0.0 })
}

/// Rounds `xs` into `qs` with the scale that maps the largest magnitude to `limit` (`to_q`
/// converts an already rounded value); returns the scale and `Σ q`.
#[inline(always)]
pub(super) fn quantize_block<Q: Copy + Into<i32>>(
    xs: &[f32],
    qs: &mut [Q],
    limit: f32,
    to_q: impl Fn(f32) -> Q,
) -> (f32, i32) {
    let (scale, id) = block_scale(xs.iter().fold(0.0f32, |m, v| m.max(v.abs())), limit);
    let mut isum = 0i32;
    for (q, &v) in qs.iter_mut().zip(xs) {
        let r = to_q(round_small(v * id));
        *q = r;
        isum += r.into();
    }
    (scale, isum)
}

/// Quantizes whole blocks: scales and `Σ q` per 16 elements, `Σ d·q` per 32.
fn quantize_q8(x: &[f32], q: &mut [i8], d: &mut [f32], qsum: &mut [i32], sum: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::actquant::avx512_available() {
        // SAFETY: AVX-512F was detected; the slices are one run's blocks, scales and sums.
        unsafe { super::actquant::avx512::quantize_q8(x, q, d, qsum, sum) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::actquant::avx2_available() {
        // SAFETY: AVX2 was detected; the slices are one run's blocks, scales and sums.
        unsafe { super::actquant::avx2::quantize_q8(x, q, d, qsum, sum) };
        return;
    }
    quantize_q8_ref(x, q, d, qsum, sum);
}

/// [`quantize_q8`]'s scalar twin.
pub(super) fn quantize_q8_ref(x: &[f32], q: &mut [i8], d: &mut [f32], qsum: &mut [i32], sum: &mut [f32]) {
    for (h, (xs, qs)) in x.chunks_exact(QA).zip(q.chunks_exact_mut(QA)).enumerate() {
        let (scale, isum) = quantize_block(xs, qs, 127.0, |r| r as i8);
        d[h] = scale;
        qsum[h] = isum;
        if h % 2 == 0 {
            sum[h / 2] = 0.0;
        }
        sum[h / 2] += scale * isum as f32;
    }
}

/// Whether `ty` has an integer kernel: here (32-element blocks) or in `kquant`.
pub fn supported(ty: GgmlType) -> bool {
    small_block(ty) || super::kquant::supported(ty)
}

/// The 32-element formats whose kernels are in this module.
pub(super) fn small_block(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0)
}

/// Which instantiation of the dot products runs, fixed once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 plus AVX-512 (BW, VL, VNNI): the 8-bit kernels take two blocks per instruction;
    /// everything else runs the AVX2 code.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Isa::Avx512;
            }
            return Isa::Avx2;
        }
        Isa::Baseline
    }
}

/// One weight row (`w`, encoded) times one activation row (scales `d`, block sums `sum`,
/// quants `q`). Lengths that do not describe the same number of blocks give NaN.
#[cfg(test)]
pub fn dot(isa: Isa, ty: GgmlType, w: &[u8], d: &[f32], sum: &[f32], q: &[i8]) -> f32 {
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
    q: [&[i8]; N],
) -> [f32; N] {
    if super::kquant::supported(ty) {
        return super::kquant::dot_many_q8(isa, ty, w, d, sum, q);
    }
    let nb = q.first().map_or(0, |q| q.len() / QB);
    let size = ty.type_size() as usize;
    let fits = (0..N).all(|k| q[k].len() == nb * QB && d[k].len() >= 2 * nb && sum[k].len() >= nb);
    if !small_block(ty) || w.len() < nb * size || !fits {
        return [f32::NAN; N];
    }
    match isa {
        Isa::Baseline => std::array::from_fn(|k| scalar::dot(ty, w, d[k], sum[k], q[k])),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only constructed after detecting AVX2, FMA and F16C at run
        // time, and the type and lengths were checked above.
        Isa::Avx2 => unsafe { avx2::dot_many(ty, w, d, sum, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` also means AVX2, FMA and F16C were detected, plus the AVX-512
        // subsets the kernel uses; lengths as above. Odd block counts take the AVX2 code.
        Isa::Avx512 if nb.is_multiple_of(2) => unsafe { avx512::dot_many(ty, w, d, sum, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `Isa::Avx2`.
        Isa::Avx512 => unsafe { avx2::dot_many(ty, w, d, sum, q) },
    }
}

/// Consecutive weight rows (`rows`, encoded back to back) times one activation row, one
/// result per row into `out`: the decode shape, with the row loop inside the kernel.
pub fn dot_rows_single(isa: Isa, ty: GgmlType, rows: &[u8], d: &[f32], sum: &[f32], q: &[i8], out: &mut [f32]) {
    if super::kquant::supported(ty) {
        let row_bytes = rows.len() / out.len().max(1);
        for (o, row) in out.iter_mut().zip(rows.chunks(row_bytes.max(1))) {
            [*o] = super::kquant::dot_many_q8(isa, ty, row, [d], [sum], [q]);
        }
        return;
    }
    let nb = q.len() / QB;
    let row_bytes = nb * ty.type_size() as usize;
    if !small_block(ty)
        || q.len() != nb * QB
        || d.len() < 2 * nb
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
        Isa::Avx512 if nb.is_multiple_of(2) => unsafe { avx512::dot_rows_single(ty, rows, d, sum, q, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `Isa::Avx2`.
        Isa::Avx512 => unsafe { avx2::dot_rows_single(ty, rows, d, sum, q, out) },
    }
}

#[inline(always)]
pub(super) fn half(lo: u8, hi: u8) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([lo, hi]))
}

/// Where a block's quants start, what is subtracted from each, and whether a minimum follows
/// the scale. Q5 formats keep their fifth bits in the 4 bytes before the nibbles.
pub(super) fn layout(ty: GgmlType) -> (usize, i32, bool) {
    match ty {
        GgmlType::Q4_0 => (2, 8, false),
        GgmlType::Q4_1 => (4, 0, true),
        GgmlType::Q5_0 => (6, 16, false),
        GgmlType::Q5_1 => (8, 0, true),
        _ => (2, 0, false),
    }
}

/// Element `j` (of 32) of a 4- or 5-bit block whose nibbles start at `at`, before the offset:
/// low nibbles hold elements 0..16, high nibbles 16..32, and bit `j` of the 32-bit word before
/// the nibbles is a Q5 element's fifth bit.
#[inline(always)]
pub(super) fn small_quant(ty: GgmlType, block: &[u8], at: usize, j: usize) -> i32 {
    let byte = block[at + j % 16];
    let nibble = i32::from(if j < 16 { byte & 0x0F } else { byte >> 4 });
    if matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1) {
        let high = u32::from_le_bytes([block[at - 4], block[at - 3], block[at - 2], block[at - 1]]);
        nibble | (((high >> j) & 1) as i32) << 4
    } else {
        nibble
    }
}

/// The reference twins of the SIMD dots.
mod scalar {
    use super::{GgmlType, QA, QB, half, layout, small_quant};

    pub fn dot(ty: GgmlType, w: &[u8], d: &[f32], sum: &[f32], q: &[i8]) -> f32 {
        let size = ty.type_size() as usize;
        let (at, offset, has_min) = layout(ty);
        let mut acc = 0.0f32;
        for (b, (wb, qb)) in w.chunks_exact(size).zip(q.chunks_exact(QB)).enumerate() {
            let (lo, hi) = if ty == GgmlType::Q8_0 {
                let half_dot = |r: std::ops::Range<usize>| -> i32 {
                    r.map(|j| i32::from(wb[at + j] as i8) * i32::from(qb[j])).sum()
                };
                (half_dot(0..QA), half_dot(QA..QB))
            } else {
                let half_dot = |r: std::ops::Range<usize>| -> i32 {
                    r.map(|j| (small_quant(ty, wb, at, j) - offset) * i32::from(qb[j])).sum()
                };
                (half_dot(0..QA), half_dot(QA..QB))
            };
            acc += half(wb[0], wb[1]) * (d[2 * b] * lo as f32 + d[2 * b + 1] * hi as f32);
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

    entry_points!("avx2,fma,f16c", i8);

    /// One instantiation per format and tile width, so the block loop carries no format
    /// branches and each weight block is unpacked once for `N` activation rows.
    ///
    /// # Safety
    /// As [`dot_many`], with `TY` naming the weight format.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_blocks<const TY: u8, const N: usize>(
        w: &[u8],
        d: [&[f32]; N],
        sum: [&[f32]; N],
        q: [&[i8]; N],
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
        let offset = _mm256_set1_epi8(if TY == Q5_0 { 16 } else { 8 });
        let ones = _mm256_set1_epi16(1);
        // Spreads two adjacent activation scales over the lanes of the two halves.
        let halves = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut min_acc = [0.0f32; N];
        // The block index drives pointer offsets into `w` and every `q[k]`, `d[k]`, `sum[k]`.
        #[allow(clippy::needless_range_loop)]
        for b in 0..nb {
            // SAFETY: the caller guarantees `nb` blocks of `size` bytes in `w`; every block
            // starts with its f16 scale (and Q4_1's f16 minimum right after it).
            let (wb, dm) = unsafe {
                let wb = w.as_ptr().add(b * size);
                (wb, _mm_cvtph_ps(_mm_cvtsi32_si128(wb.cast::<i32>().read_unaligned())))
            };
            // The weights as unsigned bytes plus, for signed formats, their signs: `maddubs`
            // wants one unsigned operand, so each activation takes the weight's sign instead.
            let (weights, signs) = if TY == Q8_0 {
                // SAFETY: a Q8_0 block holds 32 quant bytes from `at`.
                let wv = unsafe { _mm256_loadu_si256(wb.add(at).cast()) };
                (_mm256_sign_epi8(wv, wv), wv)
            } else {
                // SAFETY: a Q4 block holds 16 nibble bytes from `at`.
                let raw = unsafe { _mm_loadu_si128(wb.add(at).cast()) };
                let lo = _mm_and_si128(raw, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                let mut nibbles = _mm256_set_m128i(hi, lo);
                if TY == Q5_0 || TY == Q5_1 {
                    // SAFETY: a Q5 block holds its 32 fifth bits in the 4 bytes before `at`.
                    let bits = unsafe { wb.add(at - 4).cast::<u32>().read_unaligned() };
                    nibbles = _mm256_or_si256(nibbles, fifth_bits(bits));
                }
                if TY == Q4_1 || TY == Q5_1 {
                    (nibbles, nibbles)
                } else {
                    let centred = _mm256_sub_epi8(nibbles, offset);
                    (_mm256_sign_epi8(centred, centred), centred)
                }
            };
            let dw = _mm256_broadcastss_ps(dm);
            for k in 0..N {
                // SAFETY: `q[k]` holds `nb * QB` quants and `d[k]` `2 * nb` scales.
                let (x, dx) = unsafe {
                    (
                        _mm256_loadu_si256(q[k].as_ptr().add(b * QB).cast()),
                        _mm_castsi128_ps(_mm_loadl_epi64(d[k].as_ptr().add(2 * b).cast())),
                    )
                };
                let x = if TY == Q4_1 || TY == Q5_1 { x } else { _mm256_sign_epi8(x, signs) };
                let products = _mm256_madd_epi16(_mm256_maddubs_epi16(weights, x), ones);
                // Lanes 0..4 sum elements 0..16 and lanes 4..8 elements 16..32: each half gets
                // its own activation scale.
                let scales = _mm256_mul_ps(dw, _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dx), halves));
                acc[k] = _mm256_fmadd_ps(scales, _mm256_cvtepi32_ps(products), acc[k]);
                if TY == Q4_1 || TY == Q5_1 {
                    // SAFETY: `sum[k]` covers `nb` blocks.
                    min_acc[k] += _mm_cvtss_f32(_mm_movehdup_ps(dm)) * unsafe { *sum[k].get_unchecked(b) };
                }
            }
        }
        let mut out = [0.0f32; N];
        for k in 0..N {
            out[k] = hsum(acc[k]) + min_acc[k];
        }
        out
    }

    /// Byte `j` is 16 where bit `j` of `bits` is set, else 0: a Q5 block's fifth bits in
    /// element order.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::cpu) fn fifth_bits(bits: u32) -> __m256i {
        // Byte j takes byte j / 8 of `bits`, then tests its bit j % 8.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303),
        );
        let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
        _mm256_and_si256(set, _mm256_set1_epi8(16))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::cpu) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{GgmlType, QB};

    entry_points!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", i8);

    /// Two weight blocks per step: 64 weights against 64 activations in one `dpbusd`.
    ///
    /// # Safety
    /// As [`dot_many`], with `TY` naming the weight format.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn dot_blocks<const TY: u8, const N: usize>(
        w: &[u8],
        d: [&[f32]; N],
        sum: [&[f32]; N],
        q: [&[i8]; N],
    ) -> [f32; N] {
        let nb = q.first().map_or(0, |q| q.len() / QB);
        let (size, at) = match TY {
            Q4_0 => (18, 2),
            Q4_1 => (20, 4),
            Q5_0 => (22, 6),
            Q5_1 => (24, 8),
            _ => (34, 2),
        };
        let mask = _mm256_set1_epi8(0x0F);
        let offset = _mm512_set1_epi8(if TY == Q5_0 { 16 } else { 8 });
        // Lane i of the products sums bytes 4i..4i+4: lanes 0..4, 4..8, 8..12, 12..16 are the
        // four 16-element halves, each with its own activation scale.
        let quarters = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        let mut acc = [_mm512_setzero_ps(); N];
        // Q4_1's `Σ m·sum` runs two blocks per FMA in lanes 0 and 1.
        let mut min_acc = [_mm_setzero_ps(); N];
        // The block index drives pointer offsets into `w` and every `q[k]`, `d[k]`, `sum[k]`.
        #[allow(clippy::needless_range_loop)]
        for b in (0..nb).step_by(2) {
            // SAFETY: the caller guarantees `nb` (even) blocks of `size` bytes in `w`; each
            // starts with its f16 scale (and Q4_1's f16 minimum).
            let (w0, w1, dm0, dm1) = unsafe {
                let w0 = w.as_ptr().add(b * size);
                let w1 = w0.add(size);
                let dm0 = _mm_cvtph_ps(_mm_cvtsi32_si128(w0.cast::<i32>().read_unaligned()));
                let dm1 = _mm_cvtph_ps(_mm_cvtsi32_si128(w1.cast::<i32>().read_unaligned()));
                (w0, w1, dm0, dm1)
            };
            // Weights of both blocks as 64 bytes in element order: [b.lo, b.hi, b+1.lo, b+1.hi].
            let weights = if TY == Q8_0 {
                // SAFETY: each Q8_0 block holds 32 quant bytes from `at`.
                unsafe {
                    _mm512_inserti64x4(
                        _mm512_castsi256_si512(_mm256_loadu_si256(w0.add(at).cast())),
                        _mm256_loadu_si256(w1.add(at).cast()),
                        1,
                    )
                }
            } else {
                // SAFETY: each Q4 block holds 16 nibble bytes from `at`.
                let raw =
                    unsafe { _mm256_set_m128i(_mm_loadu_si128(w1.add(at).cast()), _mm_loadu_si128(w0.add(at).cast())) };
                let lo = _mm256_and_si256(raw, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                let first = _mm256_permute2x128_si256(lo, hi, 0x20);
                let second = _mm256_permute2x128_si256(lo, hi, 0x31);
                let mut nibbles = _mm512_inserti64x4(_mm512_castsi256_si512(first), second, 1);
                if TY == Q5_0 || TY == Q5_1 {
                    // SAFETY: a Q5 block holds its 32 fifth bits in the 4 bytes before `at`.
                    let bits = unsafe {
                        u64::from(w0.add(at - 4).cast::<u32>().read_unaligned())
                            | u64::from(w1.add(at - 4).cast::<u32>().read_unaligned()) << 32
                    };
                    nibbles = _mm512_or_si512(nibbles, _mm512_maskz_mov_epi8(bits, _mm512_set1_epi8(16)));
                }
                if TY == Q4_0 || TY == Q5_0 { _mm512_sub_epi8(nibbles, offset) } else { nibbles }
            };
            // `dpbusd` multiplies unsigned by signed bytes: signed weights give up their sign
            // to the activations.
            let (unsigned, negative) = if TY == Q4_1 || TY == Q5_1 {
                (weights, 0)
            } else {
                (_mm512_abs_epi8(weights), _mm512_movepi8_mask(weights))
            };
            let dw = _mm512_castpd_ps(_mm512_insertf64x4(
                _mm512_castps_pd(_mm512_broadcastss_ps(dm0)),
                _mm256_castps_pd(_mm256_broadcastss_ps(dm1)),
                1,
            ));
            let mins = {
                let both = _mm_unpacklo_ps(dm0, dm1);
                _mm_movehl_ps(both, both)
            };
            for k in 0..N {
                // SAFETY: `q[k]` holds `nb * QB` quants and `d[k]` `2 * nb` scales.
                let (x, dx) = unsafe {
                    (_mm512_loadu_si512(q[k].as_ptr().add(b * QB).cast()), _mm_loadu_ps(d[k].as_ptr().add(2 * b)))
                };
                let x = if TY == Q4_1 || TY == Q5_1 {
                    x
                } else {
                    _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x)
                };
                let products = _mm512_dpbusd_epi32(_mm512_setzero_si512(), unsigned, x);
                let scales = _mm512_mul_ps(dw, _mm512_permutexvar_ps(quarters, _mm512_castps128_ps512(dx)));
                acc[k] = _mm512_fmadd_ps(scales, _mm512_cvtepi32_ps(products), acc[k]);
                if TY == Q4_1 || TY == Q5_1 {
                    // SAFETY: `sum[k]` covers `nb` blocks, so `b + 1` is in it.
                    let sums = unsafe { _mm_castsi128_ps(_mm_loadl_epi64(sum[k].as_ptr().add(b).cast())) };
                    min_acc[k] = _mm_fmadd_ps(mins, sums, min_acc[k]);
                }
            }
        }
        let mut out = [0.0f32; N];
        for k in 0..N {
            out[k] = _mm512_reduce_add_ps(acc[k]) + _mm_cvtss_f32(_mm_hadd_ps(min_acc[k], min_acc[k]));
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use avx2::{fifth_bits as fifth_bits_avx2, hsum as hsum_avx2};

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::quant::dequantize_row;
    use half::f16;

    /// Rounding an activation to 8 bits moves it by at most half a step, `amax / 254`; the
    /// dot product then moves by at most `Σ|w| · amax / 254`. This slack covers f32 rounding.
    const F32_SLACK: f32 = 1e-3;
    /// The SIMD twin sums the same integers; only the f32 accumulation order differs.
    const SIMD_TOL: f32 = 1e-5;
    /// Every format with an integer kernel.
    pub const FORMATS: [GgmlType; 5] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0];

    /// Every SIMD instantiation this machine can run: the detected one and those below it.
    pub fn simd_isas() -> Vec<Isa> {
        match Isa::detect() {
            Isa::Baseline => Vec::new(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => vec![Isa::Avx2],
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => vec![Isa::Avx2, Isa::Avx512],
        }
    }

    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        pub fn f(&mut self) -> f32 {
            (self.next() % 2001) as f32 / 1000.0 - 1.0
        }
    }

    pub fn random_row(ty: GgmlType, cols: usize, rng: &mut Rng) -> Vec<u8> {
        let nb = cols / QB;
        let size = ty.type_size() as usize;
        let mut out = vec![0u8; nb * size];
        for blk in out.chunks_exact_mut(size) {
            for byte in blk.iter_mut() {
                *byte = rng.next() as u8;
            }
            // Sane scales: |d| ≤ 1/16, |m| ≤ 1/2.
            blk[..2].copy_from_slice(&f16::from_f32(rng.f() / 16.0).to_le_bytes());
            if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                blk[2..4].copy_from_slice(&f16::from_f32(rng.f() / 2.0).to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn integer_dots_match_dequantized_math() {
        let cols = 256;
        let mut rng = Rng(7);
        for ty in FORMATS {
            assert!(supported(ty));
            for _ in 0..20 {
                let w = random_row(ty, cols, &mut rng);
                let x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
                let mut wf = vec![0.0; cols];
                dequantize_row(ty, &w, &mut wf).expect("dequantize");
                let exact: f32 = wf.iter().zip(&x).map(|(a, b)| a * b).sum();
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let bound = wf.iter().map(|w| w.abs()).sum::<f32>() * amax / 254.0 + F32_SLACK;
                let mut acts = Q8Acts::default();
                acts.quantize(&x, 1, cols);
                let reference = dot(Isa::Baseline, ty, &w, &acts.d, &acts.sum, &acts.q);
                for isa in simd_isas() {
                    let simd = dot(isa, ty, &w, &acts.d, &acts.sum, &acts.q);
                    let close = (simd - reference).abs() <= SIMD_TOL * reference.abs().max(1.0);
                    assert!(close, "{ty} {isa:?}: {simd} vs {reference}");
                }
                assert!((reference - exact).abs() <= bound, "{ty}: {reference} vs {exact} (bound {bound})");
            }
        }
    }

    #[test]
    fn a_run_of_rows_matches_row_by_row() {
        let (cols, rows) = (128, 7);
        let mut rng = Rng(5);
        for ty in FORMATS {
            let w: Vec<u8> = (0..rows).flat_map(|_| random_row(ty, cols, &mut rng)).collect();
            let x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
            let mut acts = Q8Acts::default();
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

    #[test]
    fn a_tile_of_activation_rows_matches_one_by_one() {
        let cols = 192;
        let mut rng = Rng(21);
        for ty in FORMATS {
            let w = random_row(ty, cols, &mut rng);
            let x: Vec<f32> = (0..4 * cols).map(|_| rng.f()).collect();
            let mut acts = Q8Acts::default();
            acts.quantize(&x, 4, cols);
            for isa in std::iter::once(Isa::Baseline).chain(simd_isas()) {
                let tile: [f32; 4] = acts.dot_rows(isa, ty, &w, 0, cols);
                for (t, got) in tile.iter().enumerate() {
                    let [want] = acts.dot_rows::<1>(isa, ty, &w, t, cols);
                    assert_eq!(got.to_bits(), want.to_bits(), "{ty} {isa:?} row {t}");
                }
            }
        }
    }

    #[test]
    fn quantize_keeps_zero_blocks_zero() {
        let mut acts = Q8Acts::default();
        acts.quantize(&[0.0; 64], 2, 32);
        assert_eq!(acts.d, [0.0; 4]);
        assert_eq!(acts.sum, [0.0; 2]);
        assert!(acts.q.iter().all(|&q| q == 0));
    }
}
