//! Weights repacked for the SIMD integer kernels: rows in groups of [`GROUP`], interleaved 4
//! quant bytes at a time, so one AVX-512 `vpdpbusd` multiplies 4 quants of each of 16 rows by
//! the same 4 broadcast activations (on AVX2 a vector takes half a group). Each lane holds one
//! row's running sum: no horizontal reductions, scales applied to a vector of rows per
//! instruction, and a block unpacked once serves every activation row of the call (prefill
//! and batched decode read each weight once per step).
//!
//! For one (row, activation row) the operations and their order do not depend on how many
//! activation rows the call holds or how they are tiled, so a sequence gets the same numbers
//! batched as alone. The scalar twin performs the same operations in the same order.
//!
//! Layout, per group and per 32-element block, in 64-byte lines:
//! - Q4_0, Q4_1: 4 lines of quants, line `j` holding row `r`'s quant bytes `4j..4j + 4` at
//!   `4r` (their low nibbles are elements `4j..4j + 4`, their high nibbles `16 + 4j..`), then a
//!   line of f16 scales (row `r` at `2r`) and, for Q4_1, f16 minimums (at `32 + 2r`).
//! - Q5_0, Q5_1: the 4 nibble lines, then a line of fifth bits, row `r`'s at `4r` with bit `j`
//!   of byte `c` for element `4j + c` (one shift and mask moves a vector's bits into place),
//!   then the scale line (with Q5_1's minimums).
//! - Q8_0: 8 lines, line `j` holding row `r`'s quants `4j..4j + 4` plus 128 (`vpdpbusd` wants
//!   one operand unsigned), then the scale line.
//!
//! K-quants, per group and per 256-element super-block: a header of [`K_HEADER`] lines, then
//! the eight 32-element blocks' nibble lines and high-bit lines as Q4_1 and Q5_1 lay them out
//! (Q6_K's quants plus 32, with a second bit line for the sixth bits; Q3_K's plus 4).
//! - Q4_K, Q5_K header: the f16 `d` and `dmin` as in Q4_1's scale line; the eight 6-bit
//!   scales as bytes, row `r`'s first four at `4r` of the second line and the other four in
//!   the third; the minimums so in the fourth and fifth. A block's scale is `d · scale` and its
//!   minimum `-(dmin · min)`.
//! - Q6_K and Q3_K header: `d` at `2r`; the sixteen signed 8-bit scales (one per 16 elements;
//!   Q3_K's 6-bit ones less 32) four by four in the other lines, so a block has one scale per
//!   half.
//! - Q2_K header: `d` and `dmin` as Q4_K's; the file's sixteen bytes of a 4-bit scale and a
//!   4-bit minimum (one per 16 elements) four by four in the other lines.
//!
//! The products are computed in the kernel as the row kernels compute them, so the layout is
//! 1-3% larger than the file's rather than the 25-40% that f32 scales per block would add.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::huge::{Arena, Region};
use super::q8::{Isa, Q8Acts, QA, QB};
use super::q16::Q16Acts;
use crate::backend::QTensor;
use crate::quant::{BlockQ2K, BlockQ3K, GgmlType, K_SCALE_SIZE, QK_K, f16_bits_to_f32, scale_min_k4};

/// Rows per interleaved group: one per lane of a 512-bit vector of i32.
pub const GROUP: usize = 16;

/// How far ahead of the block being multiplied the weights are fetched into L1. The hardware
/// prefetcher ramps up too slowly on a group's few kilobytes, and a step's weights come from
/// memory: without this every block's first load stalls (A/B in bench/RESULTS.md: decode +15%
/// at batch 1, +12% at batch 8). `realm bench`'s bandwidth probe reads as far ahead.
pub const PREFETCH_BYTES: usize = 8192;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A weight matrix in the interleaved layout.
pub struct Packed {
    ty: GgmlType,
    rows: usize,
    /// Blocks per row.
    blocks: usize,
    /// The lines, back to back.
    region: Region,
}

/// Whether `ty` has packed kernels.
pub fn supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::Q3K
            | GgmlType::Q2K
    )
}

/// Formats with a scale per 16 elements: two per block, and the 16-bit activations' sums per
/// half ([`Q16Acts::sum_halves`]) for their bias.
pub fn per_half(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q6K | GgmlType::Q3K | GgmlType::Q2K)
}

/// Formats with a line of fifth bits after the nibbles.
fn five_bits(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K | GgmlType::Q6K)
}

/// Formats with a second bit line, of sixth bits.
fn six_bits(ty: GgmlType) -> bool {
    ty == GgmlType::Q6K
}

/// Formats with an additive minimum per block.
fn has_min(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q2K)
}

/// Formats whose blocks take their scales from a super-block header.
fn k_quant(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K | GgmlType::Q3K | GgmlType::Q2K)
}

/// Lines of a K-quant super-block's header: `d` (and `dmin`), then 4 of scales (Q6_K) or 2 of
/// scales and 2 of minimums.
const K_HEADER: usize = 5;

/// 32-element blocks per K-quant super-block.
const K_BLOCKS: usize = QK_K / QB;

fn quant_lines(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q8_0 => 8,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K => 5,
        GgmlType::Q6K => 6,
        _ => 4,
    }
}

/// Lines of a group of rows of `blocks` blocks.
fn group_lines(ty: GgmlType, blocks: usize) -> usize {
    if k_quant(ty) {
        blocks / K_BLOCKS * (K_HEADER + K_BLOCKS * quant_lines(ty))
    } else {
        blocks * (quant_lines(ty) + 1)
    }
}

/// Where block `b`'s first quant line sits in its group.
fn block_line(ty: GgmlType, b: usize) -> usize {
    if k_quant(ty) {
        b / K_BLOCKS * (K_HEADER + K_BLOCKS * quant_lines(ty)) + K_HEADER + b % K_BLOCKS * quant_lines(ty)
    } else {
        b * (quant_lines(ty) + 1)
    }
}

/// Which packed kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    /// AVX-512 F/BW/VL/VNNI, FMA and F16C: a group's 16 rows per vector.
    Avx512,
    /// AVX2, FMA, F16C and AVX-VNNI: 8 rows per vector, each group in two halves.
    Avx2Vnni,
    /// AVX2, FMA and F16C: as `Avx2Vnni`, the 8-bit dot products as `vpmaddubsw` and
    /// `vpmaddwd`.
    Avx2,
    /// The scalar twin (tests).
    Scalar,
}

impl Simd {
    /// The fastest kernels `isa` (detected) and `avx_vnni` (AVX-VNNI detected) allow.
    pub fn of(isa: Isa, avx_vnni: bool) -> Self {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Simd::Avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if avx_vnni => Simd::Avx2Vnni,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Simd::Avx2,
            Isa::Baseline => Simd::Scalar,
        }
    }

    /// Whether these kernels multiply `ty` on 8-bit (or, `sixteen_bit`, 16-bit) activations:
    /// plain AVX2 leaves Q8_0 on 16-bit ones to the row kernels, as `vpmaddubsw` would saturate
    /// on pairs of its 8-bit quants and the activations' high bytes.
    pub fn takes(self, ty: GgmlType, sixteen_bit: bool) -> bool {
        supported(ty) && !(self == Simd::Avx2 && ty == GgmlType::Q8_0 && sixteen_bit)
    }
}

/// Activations as the packed kernels read them.
#[derive(Clone, Copy)]
pub enum Acts<'a> {
    Q8(&'a Q8Acts),
    /// 16-bit activations, split (`Q16Acts::quantize_with`).
    Q16(&'a Q16Acts),
}

impl Packed {
    /// Whether [`Packed::new`] takes `w`: a format with packed kernels, whole groups of rows
    /// and whole blocks.
    pub fn fits(w: &QTensor) -> bool {
        let block = if k_quant(w.ty) { QK_K } else { QB };
        supported(w.ty) && w.rows > 0 && w.rows.is_multiple_of(GROUP) && w.cols.is_multiple_of(block)
    }

    /// `w` repacked into memory from `arena`, or `None` when it does not [fit](Packed::fits)
    /// or the memory cannot be had. `parallel(tasks, task)` runs `task(i)` for every
    /// `i < tasks` (a thread pool's section); each task packs a run of groups and then
    /// [releases](QTensor::release_rows) their source rows, so the file's pages and the copy
    /// are not both held for a whole matrix.
    pub fn new(w: &QTensor, arena: &Arena, parallel: impl FnOnce(usize, &(dyn Fn(usize) + Sync))) -> Option<Self> {
        if !Self::fits(w) {
            return None;
        }
        let ty = w.ty;
        let blocks = w.cols / QB;
        let per_group = group_lines(ty, blocks);
        let groups = w.rows / GROUP;
        let mut region = arena.alloc(groups * per_group * size_of::<Line>()).ok()?;
        // Groups per task: about 64 KiB of lines each.
        let per_task = 1024usize.div_ceil(per_group);
        let chunks: Vec<Mutex<&mut [Line]>> =
            lines_mut(&mut region)[..groups * per_group].chunks_mut(per_task * per_group).map(Mutex::new).collect();
        let filled = AtomicUsize::new(0);
        parallel(chunks.len(), &|i| {
            let Ok(mut chunk) = chunks[i].lock() else { return };
            for (k, group) in chunk.chunks_exact_mut(per_group).enumerate() {
                pack_group(w, (i * per_task + k) * GROUP, group);
            }
            let first = i * per_task * GROUP;
            w.release_rows(first..(first + per_task * GROUP).min(w.rows));
            filled.fetch_add(1, Ordering::Release);
        });
        let done = filled.load(Ordering::Acquire) == chunks.len();
        drop(chunks);
        // Once more for the whole matrix: reading one run faults in the file's pages around it
        // (the kernel maps 64 KiB around a fault), including the start of runs other tasks had
        // already released.
        w.release_rows(0..w.rows);
        // Every task that ran to its end wrote every line of its groups.
        done.then_some(Self { ty, rows: w.rows, blocks, region })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn groups(&self) -> usize {
        self.rows / GROUP
    }

    /// The lines of group `g`.
    fn group(&self, g: usize) -> &[Line] {
        let per_group = group_lines(self.ty, self.blocks);
        &lines(&self.region)[g * per_group..(g + 1) * per_group]
    }

    /// Groups `groups` times activation rows `0..n`: row `r`'s result for activation row `t`
    /// goes to `out[t * stride + r]`.
    ///
    /// # Safety
    /// `simd`'s features were detected, `out` is valid for writes of `n * stride` floats,
    /// `stride >= self.rows()`, nothing else reads or writes the elements of these groups'
    /// rows meanwhile, and `acts` holds at least `n` rows of `self.blocks * 32` elements.
    ///
    /// # Panics
    /// Q6_K or Q3_K on 16-bit activations whose half sums were not taken
    /// ([`Q16Acts::sum_halves`]).
    pub unsafe fn matmul_groups(
        &self,
        simd: Simd,
        acts: Acts,
        n: usize,
        groups: std::ops::Range<usize>,
        out: *mut f32,
        stride: usize,
    ) {
        if let (Acts::Q16(a), true) = (acts, per_half(self.ty)) {
            let summed = a.qsum16.len() * QB / 2 == a.q.len() && a.q.len() >= n * self.blocks * QB;
            assert!(summed, "{} on 16-bit activations needs their half sums", self.ty);
        }
        for g in groups {
            let lines = self.group(g);
            // SAFETY: the caller's guarantees cover every row of the group for every `t`.
            let at = |t: usize| unsafe { out.add(t * stride + g * GROUP) };
            match simd {
                #[cfg(target_arch = "x86_64")]
                // SAFETY (these three): the caller detected the features; the lines and
                // activations cover `self.blocks` blocks.
                Simd::Avx512 => unsafe { avx512::group(self.ty, lines, self.blocks, acts, n, at) },
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2Vnni => unsafe { avx2_vnni::group(self.ty, lines, self.blocks, acts, n, at) },
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 if simd.takes(self.ty, matches!(acts, Acts::Q16(_))) => unsafe {
                    avx2_plain::group(self.ty, lines, self.blocks, acts, n, at)
                },
                _ => {
                    for t in 0..n {
                        let sums = scalar::group(self.ty, lines, self.blocks, acts, t);
                        // SAFETY: as above, 16 floats from `at(t)`.
                        unsafe { std::ptr::copy_nonoverlapping(sums.as_ptr(), at(t), GROUP) };
                    }
                }
            }
        }
    }
}

fn lines(region: &Region) -> &[Line] {
    let bytes = region.bytes();
    // SAFETY: regions are 64-byte aligned and a multiple of 64 bytes long, and any bytes are
    // a valid `Line`.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<Line>(), bytes.len() / size_of::<Line>()) }
}

fn lines_mut(region: &mut Region) -> &mut [Line] {
    let bytes = region.bytes_mut();
    // SAFETY: as in `lines`.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<Line>(), bytes.len() / size_of::<Line>()) }
}

/// Writes every line of the group whose first row is `first` into `dst`.
fn pack_group(w: &QTensor, first: usize, dst: &mut [Line]) {
    if k_quant(w.ty) {
        return pack_group_k(w, first, dst);
    }
    let ty = w.ty;
    let size = ty.type_size() as usize;
    let quants = quant_lines(ty);
    let (quants_at, _, min) = super::q8::layout(ty);
    let flip = if ty == GgmlType::Q8_0 { 0x8080_8080u32 } else { 0 };
    let nibble_lines = if ty == GgmlType::Q8_0 { 8 } else { 4 };
    let rows: [&[u8]; GROUP] = std::array::from_fn(|r| w.row(first + r));
    for (b, block) in dst.chunks_exact_mut(quants + 1).enumerate() {
        let src: [&[u8]; GROUP] = std::array::from_fn(|r| &rows[r][b * size..(b + 1) * size]);
        for (j, line) in block[..nibble_lines].iter_mut().enumerate() {
            let mut out = Line([0; 64]);
            for (r, src) in src.iter().enumerate() {
                let at = quants_at + 4 * j;
                let word = u32::from_le_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]]) ^ flip;
                out.0[4 * r..4 * r + 4].copy_from_slice(&word.to_le_bytes());
            }
            *line = out;
        }
        if five_bits(ty) {
            let mut out = Line([0; 64]);
            for (r, src) in src.iter().enumerate() {
                let at = quants_at - 4;
                let bits = u32::from_le_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]]);
                for e in 0..QB {
                    out.0[4 * r + e % 4] |= (((bits >> e) & 1) as u8) << (e / 4);
                }
            }
            block[quants - 1] = out;
        }
        let mut scales = Line([0; 64]);
        for (r, src) in src.iter().enumerate() {
            scales.0[2 * r..2 * r + 2].copy_from_slice(&src[..2]);
            if min {
                scales.0[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&src[2..4]);
            }
        }
        block[quants] = scales;
    }
}

/// [`pack_group`] for the K-quants.
fn pack_group_k(w: &QTensor, first: usize, dst: &mut [Line]) {
    let ty = w.ty;
    let size = ty.type_size() as usize;
    let quants = quant_lines(ty);
    let rows: [&[u8]; GROUP] = std::array::from_fn(|r| w.row(first + r));
    let mut unpacked = super::kquant::Unpacked::default();
    for (sb, lines) in dst.chunks_exact_mut(K_HEADER + K_BLOCKS * quants).enumerate() {
        let (header, blocks) = lines.split_at_mut(K_HEADER);
        header.fill(Line([0; 64]));
        let mut q = [[0u8; QK_K]; GROUP];
        for (r, q) in q.iter_mut().enumerate() {
            let src = &rows[r][sb * size..(sb + 1) * size];
            if ty == GgmlType::Q2K {
                let mut block = [0u8; 84];
                block.copy_from_slice(src);
                header[0].0[2 * r..2 * r + 2].copy_from_slice(&src[80..82]);
                header[0].0[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&src[82..84]);
                for (s, &scales) in src[..16].iter().enumerate() {
                    header[1 + s / 4].0[4 * r + s % 4] = scales;
                }
                *q = BlockQ2K::from_bytes(&block).quants();
                continue;
            }
            if ty == GgmlType::Q3K {
                let mut block = [0u8; 110];
                block.copy_from_slice(src);
                let (quants, scales) = BlockQ3K::from_bytes(&block).quants();
                header[0].0[2 * r..2 * r + 2].copy_from_slice(&src[108..110]);
                for (s, &scale) in scales.iter().enumerate() {
                    header[1 + s / 4].0[4 * r + s % 4] = scale as u8;
                }
                // Stored as `q + 4`, 0..7.
                *q = quants.map(|v| (v + 4) as u8);
                continue;
            }
            if ty == GgmlType::Q6K {
                header[0].0[2 * r..2 * r + 2].copy_from_slice(&src[208..210]);
                for (s, &scale) in src[192..208].iter().enumerate() {
                    header[1 + s / 4].0[4 * r + s % 4] = scale;
                }
            } else {
                header[0].0[2 * r..2 * r + 2].copy_from_slice(&src[..2]);
                header[0].0[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&src[2..4]);
                let mut packed = [0u8; K_SCALE_SIZE];
                packed.copy_from_slice(&src[4..4 + K_SCALE_SIZE]);
                let (scales, mins) = scale_min_k4(&packed);
                for s in 0..K_BLOCKS {
                    header[1 + s / 4].0[4 * r + s % 4] = scales[s];
                    header[3 + s / 4].0[4 * r + s % 4] = mins[s];
                }
            }
            super::kquant::unpack_quants_ref(ty, src, &mut unpacked);
            // Q6_K's quants are unpacked signed (`q - 32`); stored as `q`, 0..63.
            let bias = if ty == GgmlType::Q6K { 32 } else { 0 };
            *q = unpacked.q.map(|v| v.wrapping_add(bias) as u8);
        }
        for (b, block) in blocks.chunks_exact_mut(quants).enumerate() {
            block.fill(Line([0; 64]));
            for (r, q) in q.iter().enumerate() {
                let q = &q[b * QB..(b + 1) * QB];
                for e in 0..QB / 2 {
                    block[(e % 16) / 4].0[4 * r + e % 4] = (q[e] & 0x0F) | (q[e + 16] & 0x0F) << 4;
                }
                for (e, &q) in q.iter().enumerate() {
                    if five_bits(ty) {
                        block[4].0[4 * r + e % 4] |= ((q >> 4) & 1) << (e / 4);
                    }
                    if six_bits(ty) {
                        block[5].0[4 * r + e % 4] |= ((q >> 5) & 1) << (e / 4);
                    }
                }
            }
        }
    }
}

/// A block's offset into each activation form: quants, 16-element scales, 32-element blocks.
#[derive(Clone, Copy)]
struct At {
    quant: usize,
    half: usize,
    block: usize,
}

impl At {
    fn new(t: usize, b: usize, blocks: usize) -> Self {
        let block = t * blocks + b;
        Self { quant: block * QB, half: block * QB / QA, block }
    }
}

/// The reference twin: the same integer sums, then the same f32 operations in the same order
/// as the SIMD lanes.
mod scalar {
    use super::*;

    fn quant(ty: GgmlType, lines: &[Line], r: usize, e: usize) -> i32 {
        if ty == GgmlType::Q8_0 {
            return i32::from(lines[e / 4].0[4 * r + e % 4]);
        }
        let b = lines[(e % 16) / 4].0[4 * r + e % 4];
        let nibble = i32::from(if e < 16 { b & 0x0F } else { b >> 4 });
        let bit = |line: usize| i32::from((lines[line].0[4 * r + e % 4] >> (e / 4)) & 1);
        let fifth = if five_bits(ty) { bit(4) << 4 } else { 0 };
        let sixth = if six_bits(ty) { bit(5) << 5 } else { 0 };
        nibble | fifth | sixth
    }

    fn scale(line: &Line, at: usize) -> f32 {
        f16_bits_to_f32(u16::from_le_bytes([line.0[at], line.0[at + 1]]))
    }

    /// Row `r`'s scales for block `b`'s two halves and what multiplies the activations' sums
    /// there (per half for Q2_K, per block for the other formats with a minimum).
    fn scale_min(ty: GgmlType, lines: &[Line], b: usize, r: usize) -> (f32, f32, f32, f32) {
        let header = || &lines[block_line(ty, b - b % K_BLOCKS) - K_HEADER..];
        let s = b % K_BLOCKS;
        if ty == GgmlType::Q2K {
            let header = header();
            let (d, dmin) = (scale(&header[0], 2 * r), scale(&header[0], 32 + 2 * r));
            let byte = |k: usize| header[1 + k / 4].0[4 * r + k % 4];
            let (lo, hi) = (byte(2 * s), byte(2 * s + 1));
            let (scale_lo, scale_hi) = (f32::from(lo & 15), f32::from(hi & 15));
            let (min_lo, min_hi) = (f32::from(lo >> 4), f32::from(hi >> 4));
            return (d * scale_lo, d * scale_hi, -(dmin * min_lo), -(dmin * min_hi));
        }
        if per_half(ty) {
            let header = header();
            let d = scale(&header[0], 2 * r);
            let byte = |k: usize| f32::from(header[1 + k / 4].0[4 * r + k % 4] as i8);
            return (d * byte(2 * s), d * byte(2 * s + 1), 0.0, 0.0);
        }
        if k_quant(ty) {
            let header = header();
            let (d, dmin) = (scale(&header[0], 2 * r), scale(&header[0], 32 + 2 * r));
            let byte = |line: usize| f32::from(header[line + s / 4].0[4 * r + s % 4]);
            let (dw, mw) = (d * byte(1), -(dmin * byte(3)));
            return (dw, dw, mw, mw);
        }
        let line = &lines[block_line(ty, b) + quant_lines(ty)];
        let dw = scale(line, 2 * r);
        let mw = if has_min(ty) { scale(line, 32 + 2 * r) } else { 0.0 };
        (dw, dw, mw, mw)
    }

    pub(super) fn group(ty: GgmlType, lines: &[Line], blocks: usize, acts: Acts, t: usize) -> [f32; GROUP] {
        let mut acc = [0.0f32; GROUP];
        for b in 0..blocks {
            let block = &lines[block_line(ty, b)..][..quant_lines(ty)];
            let at = At::new(t, b, blocks);
            for (r, acc) in acc.iter_mut().enumerate() {
                let (dw, dw_hi, mw, mw_hi) = scale_min(ty, lines, b, r);
                let w = |e: usize| quant(ty, block, r, e);
                match acts {
                    Acts::Q8(a) => {
                        let x = |e: usize| i32::from(a.q[at.quant + e]);
                        let mut lo: i32 = (0..QA).map(|e| w(e) * x(e)).sum();
                        let mut hi: i32 = (QA..QB).map(|e| w(e) * x(e)).sum();
                        if let Some(offset) = offset(ty) {
                            lo -= offset * a.qsum[at.half];
                            hi -= offset * a.qsum[at.half + 1];
                        }
                        *acc = (lo as f32).mul_add(dw * a.d[at.half], *acc);
                        *acc = (hi as f32).mul_add(dw_hi * a.d[at.half + 1], *acc);
                        if ty == GgmlType::Q2K {
                            *acc = mw.mul_add(a.d[at.half] * a.qsum[at.half] as f32, *acc);
                            *acc = mw_hi.mul_add(a.d[at.half + 1] * a.qsum[at.half + 1] as f32, *acc);
                        } else if has_min(ty) {
                            *acc = mw.mul_add(a.sum[at.block], *acc);
                        }
                    }
                    Acts::Q16(a) if per_half(ty) => {
                        // One scale per half: two sums, each less the bias times its
                        // activations'.
                        let half = |h: usize| {
                            let e = h * QA..(h + 1) * QA;
                            let s: i32 = e.clone().map(|e| w(e) * i32::from(a.hi[at.quant + e])).sum();
                            let s = (s << 8) + e.map(|e| w(e) * i32::from(a.lo[at.quant + e])).sum::<i32>();
                            s - offset(ty).unwrap_or(0) * a.qsum16[2 * at.block + h]
                        };
                        let d = a.d[at.block];
                        *acc = (half(0) as f32).mul_add(dw * d, *acc);
                        *acc = (half(1) as f32).mul_add(dw_hi * d, *acc);
                        if has_min(ty) {
                            *acc = mw.mul_add(d * a.qsum16[2 * at.block] as f32, *acc);
                            *acc = mw_hi.mul_add(d * a.qsum16[2 * at.block + 1] as f32, *acc);
                        }
                    }
                    Acts::Q16(a) => {
                        let mut s: i32 = (0..QB).map(|e| w(e) * i32::from(a.hi[at.quant + e])).sum();
                        if ty == GgmlType::Q8_0 {
                            s -= 128 * a.hisum[at.block];
                        }
                        let signed = |e: usize| if ty == GgmlType::Q8_0 { w(e) - 128 } else { w(e) };
                        s = (s << 8) + (0..QB).map(|e| signed(e) * i32::from(a.lo[at.quant + e])).sum::<i32>();
                        if let (Some(offset), false) = (offset(ty), ty == GgmlType::Q8_0) {
                            s -= offset * a.qsum[at.block];
                        }
                        *acc = (s as f32).mul_add(dw * a.d[at.block], *acc);
                        if has_min(ty) {
                            *acc = mw.mul_add(a.sum[at.block], *acc);
                        }
                    }
                }
            }
        }
        acc
    }

    /// What the 8-bit path subtracts per activation: the stored quant's bias.
    fn offset(ty: GgmlType) -> Option<i32> {
        match ty {
            GgmlType::Q4_0 => Some(8),
            GgmlType::Q5_0 => Some(16),
            GgmlType::Q8_0 => Some(128),
            GgmlType::Q6K => Some(32),
            GgmlType::Q3K => Some(4),
            _ => None,
        }
    }
}

/// The formats as const generic parameters of the SIMD kernels, and where their lines lie.
#[cfg(target_arch = "x86_64")]
mod code {
    use std::arch::x86_64::*;

    use super::{K_BLOCKS, K_HEADER, Line, PREFETCH_BYTES};

    pub(super) const Q4_0: u8 = 0;
    pub(super) const Q4_1: u8 = 1;
    pub(super) const Q8_0: u8 = 2;
    pub(super) const Q5_0: u8 = 3;
    pub(super) const Q5_1: u8 = 4;
    pub(super) const Q4K: u8 = 5;
    pub(super) const Q5K: u8 = 6;
    pub(super) const Q6K: u8 = 7;
    pub(super) const Q3K: u8 = 8;
    pub(super) const Q2K: u8 = 9;

    pub(super) const fn five_bits(ty: u8) -> bool {
        matches!(ty, Q5_0 | Q5_1 | Q5K | Q6K)
    }

    pub(super) const fn has_min(ty: u8) -> bool {
        matches!(ty, Q4_1 | Q5_1 | Q4K | Q5K | Q2K)
    }

    pub(super) const fn k_quant(ty: u8) -> bool {
        matches!(ty, Q4K | Q5K | Q6K | Q3K | Q2K)
    }

    /// Formats with a scale per 16 elements.
    pub(super) const fn per_half(ty: u8) -> bool {
        matches!(ty, Q6K | Q3K | Q2K)
    }

    /// What a stored quant is above its value, for formats without a minimum.
    pub(super) const fn offset(ty: u8) -> i32 {
        match ty {
            Q4_0 => 8,
            Q5_0 => 16,
            Q6K => 32,
            Q3K => 4,
            Q2K => 0,
            _ => 128,
        }
    }

    pub(super) const fn quant_lines(ty: u8) -> usize {
        match ty {
            Q8_0 => 8,
            Q5_0 | Q5_1 | Q5K => 5,
            Q6K => 6,
            _ => 4,
        }
    }

    /// Lines of a K-quant super-block.
    pub(super) const fn super_lines(ty: u8) -> usize {
        K_HEADER + K_BLOCKS * quant_lines(ty)
    }

    /// The first line that belongs to block `b`: its scale line follows its quants, a
    /// K-quant super-block's header precedes its first block.
    #[inline(always)]
    pub(super) const fn block_start(ty: u8, b: usize) -> usize {
        if k_quant(ty) {
            let within = b % K_BLOCKS;
            b / K_BLOCKS * super_lines(ty) + if within == 0 { 0 } else { K_HEADER + within * quant_lines(ty) }
        } else {
            b * (quant_lines(ty) + 1)
        }
    }

    /// Block `b`'s first quant line.
    #[inline(always)]
    pub(super) const fn block_line(ty: u8, b: usize) -> usize {
        if k_quant(ty) && b.is_multiple_of(K_BLOCKS) { block_start(ty, b) + K_HEADER } else { block_start(ty, b) }
    }

    /// Asks for the lines `PREFETCH_BYTES` past block `b`'s, which past the group's end are
    /// the next group's (groups lie back to back).
    #[inline(always)]
    pub(super) fn prefetch<const TY: u8>(lines: &[Line], b: usize) {
        let (start, end) = (block_start(TY, b), block_start(TY, b + 1));
        let ahead = lines.as_ptr().wrapping_add(start).cast::<i8>().wrapping_add(PREFETCH_BYTES);
        for l in 0..end - start {
            // SAFETY: a prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * l)) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::code::*;
    use super::{Acts, At, GROUP, K_BLOCKS, Line, Q8Acts, Q16Acts, QB};
    use crate::quant::GgmlType;

    /// Activation rows per tile: each block is unpacked once per tile, and the tile's
    /// accumulators stay in registers next to the 8 (16 for Q8_0 on 16-bit activations)
    /// unpacked quant vectors.
    const TILE: usize = 4;

    /// # Safety
    /// AVX-512 F/BW/VL/VNNI, FMA and F16C are available; `lines` holds `blocks` blocks of a
    /// group of format `ty`; `acts` holds rows `0..n` of `blocks` blocks; `out(t)` is valid for
    /// 16 floats for every `t < n`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn group(
        ty: GgmlType,
        lines: &[Line],
        blocks: usize,
        acts: Acts,
        n: usize,
        out: impl Fn(usize) -> *mut f32,
    ) {
        let mut t = 0;
        // SAFETY (all calls below): forwarded from the caller, rows `t..t + N` within `0..n`.
        while t + TILE <= n {
            unsafe { tile::<TILE>(ty, lines, blocks, acts, t, &out) };
            t += TILE;
        }
        while t < n {
            unsafe { tile::<1>(ty, lines, blocks, acts, t, &out) };
            t += 1;
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const N: usize>(
        ty: GgmlType,
        lines: &[Line],
        blocks: usize,
        acts: Acts,
        t: usize,
        out: &impl Fn(usize) -> *mut f32,
    ) {
        // SAFETY (all calls below): forwarded from the caller.
        let acc: [__m512; N] = unsafe {
            match (acts, ty) {
                (Acts::Q8(a), GgmlType::Q4_0) => q8::<Q4_0, N>(lines, blocks, a, t),
                (Acts::Q8(a), GgmlType::Q4_1) => q8::<Q4_1, N>(lines, blocks, a, t),
                (Acts::Q8(a), GgmlType::Q5_0) => q8::<Q5_0, N>(lines, blocks, a, t),
                (Acts::Q8(a), GgmlType::Q5_1) => q8::<Q5_1, N>(lines, blocks, a, t),
                (Acts::Q8(a), GgmlType::Q4K) => q8::<Q4K, N>(lines, blocks, a, t),
                (Acts::Q8(a), GgmlType::Q5K) => q8::<Q5K, N>(lines, blocks, a, t),
                (Acts::Q8(a), GgmlType::Q6K) => q8::<Q6K, N>(lines, blocks, a, t),
                (Acts::Q8(a), GgmlType::Q3K) => q8::<Q3K, N>(lines, blocks, a, t),
                (Acts::Q8(a), GgmlType::Q2K) => q8::<Q2K, N>(lines, blocks, a, t),
                (Acts::Q8(a), _) => q8::<Q8_0, N>(lines, blocks, a, t),
                (Acts::Q16(a), GgmlType::Q4_0) => q16::<Q4_0, N>(lines, blocks, a, t),
                (Acts::Q16(a), GgmlType::Q4_1) => q16::<Q4_1, N>(lines, blocks, a, t),
                (Acts::Q16(a), GgmlType::Q5_0) => q16::<Q5_0, N>(lines, blocks, a, t),
                (Acts::Q16(a), GgmlType::Q5_1) => q16::<Q5_1, N>(lines, blocks, a, t),
                (Acts::Q16(a), GgmlType::Q4K) => q16::<Q4K, N>(lines, blocks, a, t),
                (Acts::Q16(a), GgmlType::Q5K) => q16::<Q5K, N>(lines, blocks, a, t),
                (Acts::Q16(a), GgmlType::Q6K) => q16::<Q6K, N>(lines, blocks, a, t),
                (Acts::Q16(a), GgmlType::Q3K) => q16::<Q3K, N>(lines, blocks, a, t),
                (Acts::Q16(a), GgmlType::Q2K) => q16::<Q2K, N>(lines, blocks, a, t),
                (Acts::Q16(a), _) => q16::<Q8_0, N>(lines, blocks, a, t),
            }
        };
        for (k, acc) in acc.into_iter().enumerate() {
            // SAFETY: `out(t + k)` is valid for 16 floats.
            unsafe { _mm512_storeu_ps(out(t + k), acc) };
        }
    }

    /// Block `b`'s quants as 8 vectors (elements `4j..4j + 4` of each row in lane `r` of
    /// vector `j`), the scales of its two halves and what multiplies the activations' sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn unpack<const TY: u8>(lines: &[Line], b: usize) -> ([__m512i; 8], __m512, __m512, __m512, __m512) {
        // SAFETY: the caller guarantees block `b` is in `lines`; lines are 64-byte aligned.
        unsafe {
            let block = lines.as_ptr().add(block_line(TY, b)).cast::<__m512i>();
            let mut w = [_mm512_setzero_si512(); 8];
            if TY == Q8_0 {
                for (j, w) in w.iter_mut().enumerate() {
                    *w = _mm512_load_si512(block.add(j));
                }
            } else {
                let mask = _mm512_set1_epi8(0x0F);
                for j in 0..4 {
                    let v = _mm512_load_si512(block.add(j));
                    w[j] = _mm512_and_si512(v, mask);
                    w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
                }
                if five_bits(TY) {
                    // Bit `j` of each byte is vector `j`'s fifth bit: shifted to bit 4.
                    let bits = _mm512_load_si512(block.add(4));
                    let fifth = _mm512_set1_epi8(0x10);
                    for (j, w) in w.iter_mut().enumerate() {
                        let shifted = if j <= 4 {
                            _mm512_sll_epi32(bits, _mm_cvtsi32_si128(4 - j as i32))
                        } else {
                            _mm512_srl_epi32(bits, _mm_cvtsi32_si128(j as i32 - 4))
                        };
                        *w = _mm512_or_si512(*w, _mm512_and_si512(shifted, fifth));
                    }
                }
                if TY == Q6K {
                    // Bit `j` of each byte is vector `j`'s sixth bit: shifted to bit 5.
                    let bits = _mm512_load_si512(block.add(5));
                    let sixth = _mm512_set1_epi8(0x20);
                    for (j, w) in w.iter_mut().enumerate() {
                        let shifted = if j <= 5 {
                            _mm512_sll_epi32(bits, _mm_cvtsi32_si128(5 - j as i32))
                        } else {
                            _mm512_srl_epi32(bits, _mm_cvtsi32_si128(j as i32 - 5))
                        };
                        *w = _mm512_or_si512(*w, _mm512_and_si512(shifted, sixth));
                    }
                }
            }
            // Negated by the sign bit, as the scalar `-` does (a subtraction from zero would
            // give +0 for a zero minimum).
            let negate =
                |v: __m512| _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN)));
            if TY == Q2K {
                let header = lines.as_ptr().add(b / K_BLOCKS * super_lines(TY)).cast::<__m512i>();
                let s = b % K_BLOCKS;
                let d = _mm512_cvtph_ps(_mm256_load_si256(header.cast()));
                let dmin = _mm512_cvtph_ps(_mm256_load_si256(header.cast::<__m256i>().add(1)));
                // Byte `k` of each lane's scales: the scale in its low nibble, the minimum in
                // its high one.
                let nibble = |k: usize, high: bool| {
                    let v = _mm512_srl_epi32(
                        _mm512_load_si512(header.add(1 + k / 4)),
                        _mm_cvtsi32_si128(8 * (k % 4) as i32 + if high { 4 } else { 0 }),
                    );
                    _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0x0F)))
                };
                let (lo, hi) = (2 * s, 2 * s + 1);
                let (dw, dw_hi) = (_mm512_mul_ps(d, nibble(lo, false)), _mm512_mul_ps(d, nibble(hi, false)));
                let mw = negate(_mm512_mul_ps(dmin, nibble(lo, true)));
                let mw_hi = negate(_mm512_mul_ps(dmin, nibble(hi, true)));
                return (w, dw, dw_hi, mw, mw_hi);
            }
            if per_half(TY) {
                let header = lines.as_ptr().add(b / K_BLOCKS * super_lines(TY)).cast::<__m512i>();
                let s = b % K_BLOCKS;
                let d = _mm512_cvtph_ps(_mm256_load_si256(header.cast()));
                // The signed byte `k` of each lane's scales, sign-extended.
                let scale = |k: usize| {
                    let v = _mm512_load_si512(header.add(1 + k / 4));
                    let v = _mm512_sll_epi32(v, _mm_cvtsi32_si128(24 - 8 * (k % 4) as i32));
                    _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_srai_epi32::<24>(v)))
                };
                return (w, scale(2 * s), scale(2 * s + 1), _mm512_setzero_ps(), _mm512_setzero_ps());
            }
            if k_quant(TY) {
                let header = lines.as_ptr().add(b / K_BLOCKS * super_lines(TY)).cast::<__m512i>();
                let s = b % K_BLOCKS;
                let d = _mm512_cvtph_ps(_mm256_load_si256(header.cast()));
                let dmin = _mm512_cvtph_ps(_mm256_load_si256(header.cast::<__m256i>().add(1)));
                let shift = _mm_cvtsi32_si128(8 * (s % 4) as i32);
                let byte = |line: usize| {
                    let v = _mm512_srl_epi32(_mm512_load_si512(header.add(line + s / 4)), shift);
                    _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xFF)))
                };
                let mw = negate(_mm512_mul_ps(dmin, byte(3)));
                let dw = _mm512_mul_ps(d, byte(1));
                return (w, dw, dw, mw, mw);
            }
            let scales = block.add(quant_lines(TY)).cast::<__m256i>();
            let dw = _mm512_cvtph_ps(_mm256_load_si256(scales));
            let mw = if has_min(TY) { _mm512_cvtph_ps(_mm256_load_si256(scales.add(1))) } else { _mm512_setzero_ps() };
            (w, dw, dw, mw, mw)
        }
    }

    /// Four activation bytes from `p`, broadcast to every lane.
    #[inline(always)]
    unsafe fn broadcast<T>(p: *const T) -> __m512i {
        // SAFETY: the caller guarantees 4 readable bytes at `p`.
        unsafe { _mm512_set1_epi32(p.cast::<i32>().read_unaligned()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q8<const TY: u8, const N: usize>(lines: &[Line], blocks: usize, a: &Q8Acts, t: usize) -> [__m512; N] {
        let mut acc = [_mm512_setzero_ps(); N];
        let offset = offset(TY);
        for b in 0..blocks {
            prefetch::<TY>(lines, b);
            // SAFETY: block `b` of the group, by the caller's guarantee.
            let (w, dw, dw_hi, mw, mw_hi) = unsafe { unpack::<TY>(lines, b) };
            for (k, acc) in acc.iter_mut().enumerate() {
                let at = At::new(t + k, b, blocks);
                // SAFETY: activation row `t + k` holds block `b`: 32 quants from `at.quant`,
                // scales and sums at `at.half`, `at.block`.
                unsafe {
                    let x = a.q.as_ptr().add(at.quant);
                    let mut lo = _mm512_setzero_si512();
                    let mut hi = _mm512_setzero_si512();
                    for j in 0..4 {
                        lo = _mm512_dpbusd_epi32(lo, w[j], broadcast(x.add(4 * j)));
                        hi = _mm512_dpbusd_epi32(hi, w[j + 4], broadcast(x.add(16 + 4 * j)));
                    }
                    if !has_min(TY) {
                        let qsum = a.qsum.as_ptr().add(at.half);
                        lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(offset * *qsum));
                        hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(offset * *qsum.add(1)));
                    }
                    let d = a.d.as_ptr().add(at.half);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), _mm512_mul_ps(dw, _mm512_set1_ps(*d)), *acc);
                    *acc =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_mul_ps(dw_hi, _mm512_set1_ps(*d.add(1))), *acc);
                    if TY == Q2K {
                        // A minimum per half: the halves' sums `d · Σq`.
                        let qsum = a.qsum.as_ptr().add(at.half);
                        *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(*d * *qsum as f32), *acc);
                        *acc = _mm512_fmadd_ps(mw_hi, _mm512_set1_ps(*d.add(1) * *qsum.add(1) as f32), *acc);
                    } else if has_min(TY) {
                        *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(*a.sum.as_ptr().add(at.block)), *acc);
                    }
                }
            }
        }
        acc
    }

    /// 16-bit activations as `256·hi + lo`: the weights' unsigned form meets the signed high
    /// bytes and their signed form the unsigned low bytes, both in `vpdpbusd`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q16<const TY: u8, const N: usize>(lines: &[Line], blocks: usize, a: &Q16Acts, t: usize) -> [__m512; N] {
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..blocks {
            prefetch::<TY>(lines, b);
            // SAFETY: block `b` of the group, by the caller's guarantee.
            let (w, dw, dw_hi, mw, mw_hi) = unsafe { unpack::<TY>(lines, b) };
            let signed = if TY == Q8_0 { w.map(|w| _mm512_xor_si512(w, _mm512_set1_epi8(-128))) } else { w };
            for (k, acc) in acc.iter_mut().enumerate() {
                let at = At::new(t + k, b, blocks);
                // SAFETY: activation row `t + k` holds block `b`: 32 high and low bytes from
                // `at.quant`, one scale and sum at `at.block`.
                unsafe {
                    let (hi, lo) = (a.hi.as_ptr().add(at.quant), a.lo.as_ptr().add(at.quant));
                    if per_half(TY) {
                        // One scale per half: two sums, each less 32 times its activations'
                        // (`qsum16`, two per block, by `matmul_groups`' guarantee).
                        let mut s = [_mm512_setzero_si512(); 2];
                        for (h, s) in s.iter_mut().enumerate() {
                            // The high and low bytes' products in chains of their own (see below).
                            let (mut high, mut low) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                            for j in 0..4 {
                                high = _mm512_dpbusd_epi32(high, w[4 * h + j], broadcast(hi.add(16 * h + 4 * j)));
                                low = _mm512_dpbusd_epi32(low, broadcast(lo.add(16 * h + 4 * j)), w[4 * h + j]);
                            }
                            *s = _mm512_add_epi32(_mm512_slli_epi32(high, 8), low);
                            let sum = *a.qsum16.as_ptr().add(2 * at.block + h);
                            *s = _mm512_sub_epi32(*s, _mm512_set1_epi32(offset(TY) * sum));
                        }
                        let d1 = *a.d.as_ptr().add(at.block);
                        let d = _mm512_set1_ps(d1);
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[0]), _mm512_mul_ps(dw, d), *acc);
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[1]), _mm512_mul_ps(dw_hi, d), *acc);
                        if has_min(TY) {
                            let qsum = a.qsum16.as_ptr().add(2 * at.block);
                            *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(d1 * *qsum as f32), *acc);
                            *acc = _mm512_fmadd_ps(mw_hi, _mm512_set1_ps(d1 * *qsum.add(1) as f32), *acc);
                        }
                        continue;
                    }
                    // Four chains of four: one chain of sixteen kept the dot products
                    // waiting on each other's latency. The integer sums wrap the same in any
                    // order, so the result is the same bits.
                    let mut h = [_mm512_setzero_si512(); 2];
                    let mut l = [_mm512_setzero_si512(); 2];
                    for j in 0..4 {
                        h[0] = _mm512_dpbusd_epi32(h[0], w[j], broadcast(hi.add(4 * j)));
                        h[1] = _mm512_dpbusd_epi32(h[1], w[j + 4], broadcast(hi.add(16 + 4 * j)));
                        l[0] = _mm512_dpbusd_epi32(l[0], broadcast(lo.add(4 * j)), signed[j]);
                        l[1] = _mm512_dpbusd_epi32(l[1], broadcast(lo.add(16 + 4 * j)), signed[j + 4]);
                    }
                    let mut s = _mm512_add_epi32(h[0], h[1]);
                    if TY == Q8_0 {
                        s = _mm512_sub_epi32(s, _mm512_set1_epi32(128 * *a.hisum.as_ptr().add(at.block)));
                    }
                    s = _mm512_add_epi32(_mm512_slli_epi32(s, 8), _mm512_add_epi32(l[0], l[1]));
                    if TY == Q4_0 || TY == Q5_0 {
                        s = _mm512_sub_epi32(s, _mm512_set1_epi32(offset(TY) * *a.qsum.as_ptr().add(at.block)));
                    }
                    let d = _mm512_set1_ps(*a.d.as_ptr().add(at.block));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, d), *acc);
                    if has_min(TY) {
                        *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(*a.sum.as_ptr().add(at.block)), *acc);
                    }
                }
            }
        }
        acc
    }

    const _: () = assert!(GROUP == 16 && QB == 32);
}

/// The AVX2 kernels, once with AVX-VNNI's `vpdpbusd` and once without. A 256-bit vector holds
/// half a line, rows `8·side..8·side + 8` of the group; each group is multiplied in its two
/// halves. The operations per lane are the AVX-512 kernels', so the results are the same bits.
/// Without VNNI the dot products are `vpmaddubsw` (pairs of products summed into 16 bits,
/// saturating) and `vpmaddwd`: no pair reaches the saturation with quants of at most 6 bits
/// (`2 · 63 · 255 < 2^15`). Q8_0's quants on 8-bit activations take them signed, their
/// magnitudes against the activations with their signs (`2 · 128 · 127 < 2^15`); on 16-bit
/// activations Q8_0 is not taken ([`Simd::takes`]).
macro_rules! avx2_kernels {
    ($name:ident, $features:literal, $signed_q8:literal, |$acc:ident, $a:ident, $b:ident| $dot:block) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use std::arch::x86_64::*;

            use super::code::*;
            use super::{Acts, At, K_BLOCKS, Line, Q8Acts, Q16Acts};
            use crate::quant::GgmlType;

            /// Activation rows per tile: 16 vector registers hold the 8 unpacked quant
            /// vectors, the tile's accumulators and its integer sums.
            const TILE: usize = 2;

            /// `$acc` plus, per 32-bit lane, the sum of the 4 products of `$a`'s unsigned
            /// bytes and `$b`'s signed ones.
            #[inline]
            #[target_feature(enable = $features)]
            fn dot($acc: __m256i, $a: __m256i, $b: __m256i) -> __m256i $dot

            /// Whether Q8_0 on 8-bit activations multiplies its quants signed ([`signed_dot`]).
            const SIGNED_Q8: bool = $signed_q8;

            /// `acc` plus, per 32-bit lane, the sum of the 4 products of `w`'s and `x`'s signed
            /// bytes.
            #[inline]
            #[target_feature(enable = $features)]
            fn signed_dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
                let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
                _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
            }

            /// # Safety
            /// The features named above are available; `ty` is one [`super::Simd::takes`] for
            /// these kernels; `lines` holds `blocks` blocks of a group of format `ty`; `acts`
            /// holds rows `0..n` of `blocks` blocks; `out(t)` is valid for 16 floats for every
            /// `t < n`.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn group(
                ty: GgmlType,
                lines: &[Line],
                blocks: usize,
                acts: Acts,
                n: usize,
                out: impl Fn(usize) -> *mut f32,
            ) {
                for side in 0..2 {
                    let mut t = 0;
                    // SAFETY (all calls below): forwarded from the caller, rows `t..t + N`
                    // within `0..n`.
                    while t + TILE <= n {
                        unsafe { tile::<TILE>(ty, lines, blocks, acts, t, side, &out) };
                        t += TILE;
                    }
                    while t < n {
                        unsafe { tile::<1>(ty, lines, blocks, acts, t, side, &out) };
                        t += 1;
                    }
                }
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn tile<const N: usize>(
                ty: GgmlType,
                lines: &[Line],
                blocks: usize,
                acts: Acts,
                t: usize,
                side: usize,
                out: &impl Fn(usize) -> *mut f32,
            ) {
                // SAFETY (all calls below): forwarded from the caller.
                let acc: [__m256; N] = unsafe {
                    match (acts, ty) {
                        (Acts::Q8(a), GgmlType::Q4_0) => q8::<Q4_0, N>(lines, blocks, a, t, side),
                        (Acts::Q8(a), GgmlType::Q4_1) => q8::<Q4_1, N>(lines, blocks, a, t, side),
                        (Acts::Q8(a), GgmlType::Q5_0) => q8::<Q5_0, N>(lines, blocks, a, t, side),
                        (Acts::Q8(a), GgmlType::Q5_1) => q8::<Q5_1, N>(lines, blocks, a, t, side),
                        (Acts::Q8(a), GgmlType::Q4K) => q8::<Q4K, N>(lines, blocks, a, t, side),
                        (Acts::Q8(a), GgmlType::Q5K) => q8::<Q5K, N>(lines, blocks, a, t, side),
                        (Acts::Q8(a), GgmlType::Q6K) => q8::<Q6K, N>(lines, blocks, a, t, side),
                        (Acts::Q8(a), GgmlType::Q3K) => q8::<Q3K, N>(lines, blocks, a, t, side),
                        (Acts::Q8(a), GgmlType::Q2K) => q8::<Q2K, N>(lines, blocks, a, t, side),
                        (Acts::Q8(a), _) => q8::<Q8_0, N>(lines, blocks, a, t, side),
                        (Acts::Q16(a), GgmlType::Q4_0) => q16::<Q4_0, N>(lines, blocks, a, t, side),
                        (Acts::Q16(a), GgmlType::Q4_1) => q16::<Q4_1, N>(lines, blocks, a, t, side),
                        (Acts::Q16(a), GgmlType::Q5_0) => q16::<Q5_0, N>(lines, blocks, a, t, side),
                        (Acts::Q16(a), GgmlType::Q5_1) => q16::<Q5_1, N>(lines, blocks, a, t, side),
                        (Acts::Q16(a), GgmlType::Q4K) => q16::<Q4K, N>(lines, blocks, a, t, side),
                        (Acts::Q16(a), GgmlType::Q5K) => q16::<Q5K, N>(lines, blocks, a, t, side),
                        (Acts::Q16(a), GgmlType::Q6K) => q16::<Q6K, N>(lines, blocks, a, t, side),
                        (Acts::Q16(a), GgmlType::Q3K) => q16::<Q3K, N>(lines, blocks, a, t, side),
                        (Acts::Q16(a), GgmlType::Q2K) => q16::<Q2K, N>(lines, blocks, a, t, side),
                        (Acts::Q16(a), _) => q16::<Q8_0, N>(lines, blocks, a, t, side),
                    }
                };
                for (k, acc) in acc.into_iter().enumerate() {
                    // SAFETY: `out(t + k)` is valid for 16 floats; this side writes 8 of them.
                    unsafe { _mm256_storeu_ps(out(t + k).add(8 * side), acc) };
                }
            }

            /// This side's 32 bytes of line `l` from `p`.
            #[inline(always)]
            unsafe fn half_line(p: *const u8, l: usize, side: usize) -> __m256i {
                // SAFETY: the caller guarantees the line; halves of 64-byte lines are aligned.
                unsafe { _mm256_load_si256(p.add(64 * l + 32 * side).cast()) }
            }

            /// This side's 8 f16 at byte `at` of the line at `p`, as f32.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn halves(p: *const u8, at: usize, side: usize) -> __m256 {
                // SAFETY: the caller guarantees the line; 16-byte runs of a line are aligned.
                unsafe { _mm256_cvtph_ps(_mm_load_si128(p.add(at + 16 * side).cast())) }
            }

            /// Block `b`'s quants for this side as 8 vectors (elements `4j..4j + 4` of each
            /// row in lane `r` of vector `j`), the scales of its two halves and what
            /// multiplies the activations' sums.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn unpack<const TY: u8>(
                lines: &[Line],
                b: usize,
                side: usize,
            ) -> ([__m256i; 8], __m256, __m256, __m256, __m256) {
                // SAFETY: the caller guarantees block `b` is in `lines`.
                unsafe {
                    let block = lines.as_ptr().add(block_line(TY, b)).cast::<u8>();
                    let mut w = [_mm256_setzero_si256(); 8];
                    if TY == Q8_0 {
                        for (j, w) in w.iter_mut().enumerate() {
                            *w = half_line(block, j, side);
                        }
                    } else {
                        let mask = _mm256_set1_epi8(0x0F);
                        for j in 0..4 {
                            let v = half_line(block, j, side);
                            w[j] = _mm256_and_si256(v, mask);
                            w[j + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                        }
                        // Bit `j` of each byte of a bit line is vector `j`'s fifth (sixth) bit.
                        let mut high_bit = |line: usize, bit: i32| {
                            let bits = half_line(block, line, side);
                            let place = _mm256_set1_epi8(1 << bit);
                            for (j, w) in w.iter_mut().enumerate() {
                                let j = j as i32;
                                let shifted = if j <= bit {
                                    _mm256_sll_epi32(bits, _mm_cvtsi32_si128(bit - j))
                                } else {
                                    _mm256_srl_epi32(bits, _mm_cvtsi32_si128(j - bit))
                                };
                                *w = _mm256_or_si256(*w, _mm256_and_si256(shifted, place));
                            }
                        };
                        if five_bits(TY) {
                            high_bit(4, 4);
                        }
                        if TY == Q6K {
                            high_bit(5, 5);
                        }
                    }
                    // Negated by the sign bit, as the scalar `-` does.
                    let negate = |v: __m256| {
                        _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(v), _mm256_set1_epi32(i32::MIN)))
                    };
                    if k_quant(TY) {
                        let header = lines.as_ptr().add(b / K_BLOCKS * super_lines(TY)).cast::<u8>();
                        let s = b % K_BLOCKS;
                        let d = halves(header, 0, side);
                        if TY == Q2K {
                            // Byte `k` of each lane's scales: the scale in its low nibble, the
                            // minimum in its high one.
                            let nibble = |k: usize, high: bool| {
                                let shift = 8 * (k % 4) as i32 + if high { 4 } else { 0 };
                                let v = _mm256_srl_epi32(half_line(header, 1 + k / 4, side), _mm_cvtsi32_si128(shift));
                                _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0x0F)))
                            };
                            let (lo, hi) = (2 * s, 2 * s + 1);
                            let dmin = halves(header, 32, side);
                            let (dw, dw_hi) = (_mm256_mul_ps(d, nibble(lo, false)), _mm256_mul_ps(d, nibble(hi, false)));
                            let mw = negate(_mm256_mul_ps(dmin, nibble(lo, true)));
                            return (w, dw, dw_hi, mw, negate(_mm256_mul_ps(dmin, nibble(hi, true))));
                        }
                        if per_half(TY) {
                            // The signed byte `k` of each lane's scales, sign-extended.
                            let scale = |k: usize| {
                                let v = half_line(header, 1 + k / 4, side);
                                let v = _mm256_sll_epi32(v, _mm_cvtsi32_si128(24 - 8 * (k % 4) as i32));
                                _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_srai_epi32::<24>(v)))
                            };
                            return (w, scale(2 * s), scale(2 * s + 1), _mm256_setzero_ps(), _mm256_setzero_ps());
                        }
                        let shift = _mm_cvtsi32_si128(8 * (s % 4) as i32);
                        let byte = |line: usize| {
                            let v = _mm256_srl_epi32(half_line(header, line + s / 4, side), shift);
                            _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0xFF)))
                        };
                        let mw = negate(_mm256_mul_ps(halves(header, 32, side), byte(3)));
                        let dw = _mm256_mul_ps(d, byte(1));
                        return (w, dw, dw, mw, mw);
                    }
                    let scales = block.add(64 * quant_lines(TY));
                    let dw = halves(scales, 0, side);
                    let mw = if has_min(TY) { halves(scales, 32, side) } else { _mm256_setzero_ps() };
                    (w, dw, dw, mw, mw)
                }
            }

            /// Four activation bytes from `p`, broadcast to every lane.
            #[inline(always)]
            unsafe fn broadcast<T>(p: *const T) -> __m256i {
                // SAFETY: the caller guarantees 4 readable bytes at `p`.
                unsafe { _mm256_set1_epi32(p.cast::<i32>().read_unaligned()) }
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn q8<const TY: u8, const N: usize>(
                lines: &[Line],
                blocks: usize,
                a: &Q8Acts,
                t: usize,
                side: usize,
            ) -> [__m256; N] {
                let mut acc = [_mm256_setzero_ps(); N];
                let offset = offset(TY);
                for b in 0..blocks {
                    if side == 0 {
                        prefetch::<TY>(lines, b);
                    }
                    // SAFETY: block `b` of the group, by the caller's guarantee.
                    let (w, dw, dw_hi, mw, mw_hi) = unsafe { unpack::<TY>(lines, b, side) };
                    // Q8_0's quants less 128: the sums need no correction for the bias.
                    let signed = SIGNED_Q8 && TY == Q8_0;
                    let w = if signed { w.map(|w| _mm256_xor_si256(w, _mm256_set1_epi8(-128))) } else { w };
                    for (k, acc) in acc.iter_mut().enumerate() {
                        let at = At::new(t + k, b, blocks);
                        // SAFETY: activation row `t + k` holds block `b`: 32 quants from
                        // `at.quant`, scales and sums at `at.half`, `at.block`.
                        unsafe {
                            let x = a.q.as_ptr().add(at.quant);
                            let mut lo = _mm256_setzero_si256();
                            let mut hi = _mm256_setzero_si256();
                            for j in 0..4 {
                                let (x_lo, x_hi) = (broadcast(x.add(4 * j)), broadcast(x.add(16 + 4 * j)));
                                if signed {
                                    lo = signed_dot(lo, w[j], x_lo);
                                    hi = signed_dot(hi, w[j + 4], x_hi);
                                } else {
                                    lo = dot(lo, w[j], x_lo);
                                    hi = dot(hi, w[j + 4], x_hi);
                                }
                            }
                            if !has_min(TY) && !signed {
                                let qsum = a.qsum.as_ptr().add(at.half);
                                lo = _mm256_sub_epi32(lo, _mm256_set1_epi32(offset * *qsum));
                                hi = _mm256_sub_epi32(hi, _mm256_set1_epi32(offset * *qsum.add(1)));
                            }
                            let d = a.d.as_ptr().add(at.half);
                            let scale_lo = _mm256_mul_ps(dw, _mm256_set1_ps(*d));
                            let scale_hi = _mm256_mul_ps(dw_hi, _mm256_set1_ps(*d.add(1)));
                            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), scale_lo, *acc);
                            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), scale_hi, *acc);
                            if TY == Q2K {
                                // A minimum per half: the halves' sums `d · Σq`.
                                let qsum = a.qsum.as_ptr().add(at.half);
                                *acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(*d * *qsum as f32), *acc);
                                *acc = _mm256_fmadd_ps(mw_hi, _mm256_set1_ps(*d.add(1) * *qsum.add(1) as f32), *acc);
                            } else if has_min(TY) {
                                *acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(*a.sum.as_ptr().add(at.block)), *acc);
                            }
                        }
                    }
                }
                acc
            }

            /// 16-bit activations as `256·hi + lo`, as the AVX-512 kernels take them.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn q16<const TY: u8, const N: usize>(
                lines: &[Line],
                blocks: usize,
                a: &Q16Acts,
                t: usize,
                side: usize,
            ) -> [__m256; N] {
                let mut acc = [_mm256_setzero_ps(); N];
                for b in 0..blocks {
                    if side == 0 {
                        prefetch::<TY>(lines, b);
                    }
                    // SAFETY: block `b` of the group, by the caller's guarantee.
                    let (w, dw, dw_hi, mw, mw_hi) = unsafe { unpack::<TY>(lines, b, side) };
                    let signed = if TY == Q8_0 { w.map(|w| _mm256_xor_si256(w, _mm256_set1_epi8(-128))) } else { w };
                    for (k, acc) in acc.iter_mut().enumerate() {
                        let at = At::new(t + k, b, blocks);
                        // SAFETY: activation row `t + k` holds block `b`: 32 high and low bytes
                        // from `at.quant`, one scale and sum at `at.block` (and, with a scale per 16 elements, two
                        // half sums at `2 · at.block`).
                        unsafe {
                            let (hi, lo) = (a.hi.as_ptr().add(at.quant), a.lo.as_ptr().add(at.quant));
                            let d = _mm256_set1_ps(*a.d.as_ptr().add(at.block));
                            if per_half(TY) {
                                let mut s = [_mm256_setzero_si256(); 2];
                                for (h, s) in s.iter_mut().enumerate() {
                                    // The high and low bytes' products in chains of their own.
                                    let (mut high, mut low) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                                    for j in 0..4 {
                                        high = dot(high, w[4 * h + j], broadcast(hi.add(16 * h + 4 * j)));
                                        low = dot(low, broadcast(lo.add(16 * h + 4 * j)), w[4 * h + j]);
                                    }
                                    *s = _mm256_add_epi32(_mm256_slli_epi32(high, 8), low);
                                    let sum = *a.qsum16.as_ptr().add(2 * at.block + h);
                                    *s = _mm256_sub_epi32(*s, _mm256_set1_epi32(offset(TY) * sum));
                                }
                                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[0]), _mm256_mul_ps(dw, d), *acc);
                                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[1]), _mm256_mul_ps(dw_hi, d), *acc);
                                if has_min(TY) {
                                    let (d1, qsum) = (*a.d.as_ptr().add(at.block), a.qsum16.as_ptr().add(2 * at.block));
                                    *acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(d1 * *qsum as f32), *acc);
                                    *acc = _mm256_fmadd_ps(mw_hi, _mm256_set1_ps(d1 * *qsum.add(1) as f32), *acc);
                                }
                                continue;
                            }
                            // Four chains of four, as in the AVX-512 kernel.
                            let mut h = [_mm256_setzero_si256(); 2];
                            let mut l = [_mm256_setzero_si256(); 2];
                            for j in 0..4 {
                                h[0] = dot(h[0], w[j], broadcast(hi.add(4 * j)));
                                h[1] = dot(h[1], w[j + 4], broadcast(hi.add(16 + 4 * j)));
                                l[0] = dot(l[0], broadcast(lo.add(4 * j)), signed[j]);
                                l[1] = dot(l[1], broadcast(lo.add(16 + 4 * j)), signed[j + 4]);
                            }
                            let mut s = _mm256_add_epi32(h[0], h[1]);
                            if TY == Q8_0 {
                                s = _mm256_sub_epi32(s, _mm256_set1_epi32(128 * *a.hisum.as_ptr().add(at.block)));
                            }
                            s = _mm256_add_epi32(_mm256_slli_epi32(s, 8), _mm256_add_epi32(l[0], l[1]));
                            if TY == Q4_0 || TY == Q5_0 {
                                let qsum = *a.qsum.as_ptr().add(at.block);
                                s = _mm256_sub_epi32(s, _mm256_set1_epi32(offset(TY) * qsum));
                            }
                            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, d), *acc);
                            if has_min(TY) {
                                *acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(*a.sum.as_ptr().add(at.block)), *acc);
                            }
                        }
                    }
                }
                acc
            }
        }
    };
}

avx2_kernels!(avx2_vnni, "avx2,fma,f16c,avxvnni", false, |acc, a, b| { _mm256_dpbusd_avx_epi32(acc, a, b) });
avx2_kernels!(avx2_plain, "avx2,fma,f16c", true, |acc, a, b| {
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)))
});

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::SharedBytes;
    use crate::cpu::q8::tests::{Rng, random_row, simd_isas};

    /// Rows of random quants; K-quants through the quantizer (random bytes would make their
    /// packed scales of any size).
    fn tensor(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> QTensor {
        let row = |rng: &mut Rng| {
            if !k_quant(ty) {
                return random_row(ty, cols, rng);
            }
            let x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
            let mut out = vec![0u8; cols / QK_K * ty.type_size() as usize];
            crate::quant::quantize_row(ty, &x, &mut out).expect("quantize");
            out
        };
        let bytes: Vec<u8> = (0..rows).flat_map(|_| row(rng)).collect();
        let len = bytes.len();
        let owner: Arc<dyn crate::Backing> = Arc::new(bytes);
        QTensor::new(ty, rows, cols, SharedBytes::new(owner, 0, len).expect("bytes")).expect("tensor")
    }

    fn run(simd: Simd, p: &Packed, acts: Acts, n: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; n * p.rows()];
        // SAFETY: `simds` lists detected instruction sets only; `out` holds `n` rows of
        // `p.rows()` floats and is ours alone.
        unsafe { p.matmul_groups(simd, acts, n, 0..p.groups(), out.as_mut_ptr(), p.rows()) };
        out
    }

    /// Every SIMD variant of the packed kernels this CPU runs.
    fn simds() -> Vec<Simd> {
        #[cfg(target_arch = "x86_64")]
        let avx_vnni = std::arch::is_x86_feature_detected!("avxvnni");
        #[cfg(not(target_arch = "x86_64"))]
        let avx_vnni = false;
        let mut simds: Vec<Simd> = simd_isas().into_iter().map(|isa| Simd::of(isa, false)).collect();
        if avx_vnni && simds.contains(&Simd::Avx2) {
            simds.push(Simd::Avx2Vnni);
        }
        simds
    }

    /// Packed results against the row-major integer kernels' scalar reference (the same
    /// integer sums; only the f32 order differs), every SIMD instantiation against the
    /// scalar twin bit for bit, and one activation row alone against the same row in a batch.
    #[test]
    fn packed_kernels_match_the_row_kernels_and_their_twin() {
        const ROW_TOL: f32 = 1e-5;
        let (rows, cols, n) = (32, 2 * QK_K, 13);
        let mut rng = Rng(11);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
            GgmlType::Q3K,
            GgmlType::Q2K,
        ] {
            let w = tensor(ty, rows, cols, &mut rng);
            let p = Packed::new(&w, &Arena::default(), serial).expect("packs");
            let x: Vec<f32> = (0..n * cols).map(|_| rng.f()).collect();
            let mut a8 = Q8Acts::default();
            a8.quantize(&x, n, cols);
            let mut a16 = Q16Acts::default();
            a16.quantize_with(crate::cpu::q8::Input::Rows(&x), n, cols, true, crate::cpu::q8::serial);
            a16.sum_halves();
            for (acts, name) in [(Acts::Q8(&a8), "q8"), (Acts::Q16(&a16), "q16")] {
                let want = run(Simd::Scalar, &p, acts, n);
                for t in 0..n {
                    for r in 0..rows {
                        let got = want[t * rows + r];
                        if !crate::cpu::q8::supported(ty) {
                            // No row kernel (Q3_K): the dequantized weights' f32 dot, within
                            // the activations' rounding.
                            let mut wf = vec![0.0; cols];
                            crate::quant::dequantize_row(ty, w.row(r), &mut wf).expect("dequantize");
                            let xs = &x[t * cols..(t + 1) * cols];
                            let exact: f32 = wf.iter().zip(xs).map(|(a, b)| a * b).sum();
                            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                            let levels = if name == "q8" { 254.0 } else { 65534.0 };
                            let bound = wf.iter().map(|w| w.abs()).sum::<f32>() * amax / levels + 1e-3;
                            assert!((got - exact).abs() <= bound, "{ty:?} {name} row {r} act {t}: {got} vs {exact}");
                            continue;
                        }
                        let reference = match acts {
                            Acts::Q8(a) => {
                                let [v] = a.dot_rows::<1>(Isa::Baseline, ty, w.row(r), t, cols);
                                v
                            }
                            Acts::Q16(a) => {
                                let [v] = a.dot_rows::<1>(Isa::Baseline, ty, w.row(r), t, cols);
                                v
                            }
                        };
                        assert!(
                            (got - reference).abs() <= ROW_TOL * (1.0 + reference.abs()),
                            "{ty:?} {name} row {r} act {t}: packed {got} vs row kernel {reference}"
                        );
                    }
                }
                for simd in simds() {
                    let got = run(simd, &p, acts, n);
                    assert_eq!(bits(&got), bits(&want), "{ty:?} {name} {simd:?} vs the scalar twin");
                    let alone = run(simd, &p, acts, 1);
                    assert_eq!(bits(&alone), bits(&got[..rows]), "{ty:?} {name} {simd:?}: alone vs batched");
                }
            }
        }
    }

    fn serial(tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        (0..tasks).for_each(task);
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn shapes_without_whole_groups_are_not_packed() {
        let mut rng = Rng(3);
        assert!(Packed::new(&tensor(GgmlType::Q4_1, 24, 64, &mut rng), &Arena::default(), serial).is_none());
        let owner: Arc<dyn crate::Backing> = Arc::new(vec![0u8; 16 * 64 * 4]);
        let f32s = QTensor::new(GgmlType::F32, 16, 64, SharedBytes::new(owner, 0, 16 * 64 * 4).expect("bytes"));
        assert!(Packed::new(&f32s.expect("tensor"), &Arena::default(), serial).is_none());
    }
}
