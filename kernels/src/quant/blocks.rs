//! GGML block layouts, field for field as in llama.cpp's `ggml-common.h`, and the reference
//! dequantization of one block.
//!
//! The arithmetic follows gguf-py's numpy code (`gguf/quants.py`) operation for operation, all in
//! `f32`: Rust never fuses `a * b + c` into an FMA, so the results are bit-identical to it.
//! Each block's `from_bytes` reads its little-endian on-disk layout by copy, so GGUF data needs
//! no alignment; `dequantize` writes its elements in order.

use half::f16;

/// Elements per block of the legacy formats (Q4_0 .. Q8_0).
pub const QK: usize = 32;
/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales and mins in Q4_K and Q5_K (and of 6-bit scales in Q3_K).
pub const K_SCALE_SIZE: usize = 12;

/// `block_q4_0`: `x = d * (q - 8)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// Element `i` in the low nibble of byte `i`, element `i + 16` in its high nibble.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

/// `block_q4_1`: `x = d * q + m`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

/// `block_q5_0`: `x = d * (q - 16)`, bit 4 of element `i` in bit `i` of `qh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

/// `block_q5_1`: `x = d * q + m`, bit 4 of element `i` in bit `i` of `qh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

/// `block_q8_0`: `x = d * q`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

/// `block_q2_K`: 16 sub-blocks of 16; `x = d * sc * q - dmin * m` with 4-bit `sc` and `m`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ2K {
    /// Low nibble: scale, high nibble: min, one byte per sub-block.
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}
const _: () = assert!(size_of::<BlockQ2K>() == 84);

/// `block_q3_K`: 16 sub-blocks of 16; `x = d * (sc - 32) * (q - 4 * !hbit)`, 6-bit `sc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; K_SCALE_SIZE],
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ3K>() == 110);

/// `block_q4_K`: 8 sub-blocks of 32; `x = d * sc * q - dmin * m`, 6-bit `sc` and `m`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

/// `block_q5_K`: as Q4_K with a fifth bit per element in `qh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

/// `block_q6_K`: 16 sub-blocks of 16; `x = d * sc * (q - 32)`, signed 8-bit `sc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

/// `block_q8_K`: the activation format the K-quant dot products pair with; never stored in
/// GGUF weights, so it has no dequantization here.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    /// Sums of each group of 16 `qs`.
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(size_of::<BlockQ8K>() == 292);

/// `N` bytes at `at`. Callers pass fixed-size blocks and constant offsets, so the slice
/// bounds are known at compile time and this cannot fail.
#[inline(always)]
fn field<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

#[inline(always)]
fn half(b: &[u8], at: usize) -> f16 {
    f16::from_le_bytes(field(b, at))
}

#[inline(always)]
fn signed<const N: usize>(b: [u8; N]) -> [i8; N] {
    let mut out = [0; N];
    for (o, x) in out.iter_mut().zip(b) {
        *o = x as i8;
    }
    out
}

/// IEEE binary16 to binary32, exact for every input: the block scales' conversion, without
/// `half`'s CPU feature check on every call. NaN payloads are kept without setting the quiet
/// bit, as numpy's software conversion does.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    const EXP_MASK: u32 = 0x7c00 << 13;
    // 2^-14, the value of the smallest f16 normal, as the bias for renormalising subnormals.
    const MAGIC: f32 = f32::from_bits(113 << 23);
    let mut o = u32::from(h & 0x7fff) << 13;
    let exp = o & EXP_MASK;
    o += (127 - 15) << 23;
    if exp == EXP_MASK {
        o += (128 - 16) << 23;
    } else if exp == 0 {
        o += 1 << 23;
        o = (f32::from_bits(o) - MAGIC).to_bits();
    }
    f32::from_bits(o | (u32::from(h & 0x8000) << 16))
}

#[inline(always)]
fn to_f32(x: f16) -> f32 {
    f16_bits_to_f32(x.to_bits())
}

/// The eight 6-bit scales and eight 6-bit mins of Q4_K and Q5_K (`get_scale_min_k4`).
#[inline(always)]
pub fn scale_min_k4(s: &[u8; K_SCALE_SIZE]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0; 8];
    let mut m = [0; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3f;
        m[j] = s[j + 4] & 0x3f;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// The sixteen signed 6-bit scales of Q3_K: low nibbles in bytes 0..8, high two bits in 8..12.
#[inline(always)]
fn scales_q3k(s: &[u8; K_SCALE_SIZE]) -> [i8; 16] {
    let mut out = [0; 16];
    for (k, o) in out.iter_mut().enumerate() {
        let lo = (s[k % 8] >> (4 * (k / 8))) & 0x0f;
        let hi = (s[8 + k % 4] >> (2 * (k / 4))) & 0x03;
        *o = (lo | (hi << 4)) as i8 - 32;
    }
    out
}

/// The 4-bit values of Q4_0 / Q4_1, unsigned: element `j` in the low nibble of byte `j`,
/// element `j + 16` in its high nibble.
#[inline(always)]
fn q4_values(qs: &[u8; QK / 2]) -> [u8; QK] {
    let mut q = [0; QK];
    for j in 0..QK / 2 {
        q[j] = qs[j] & 0x0f;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

impl BlockQ4_0 {
    #[inline]
    pub fn from_bytes(b: &[u8; 18]) -> Self {
        Self { d: half(b, 0), qs: field(b, 2) }
    }

    // Kept out of line: inlined into the row loop, LLVM vectorises across blocks with strided
    // byte loads instead of within the block, which measured 1.5x slower.
    #[inline(never)]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = to_f32(self.d);
        let q = q4_values(&self.qs);
        for (o, &q) in out.iter_mut().zip(&q) {
            *o = d * f32::from(q as i8 - 8);
        }
    }
}

impl BlockQ4_1 {
    #[inline]
    pub fn from_bytes(b: &[u8; 20]) -> Self {
        Self { d: half(b, 0), m: half(b, 2), qs: field(b, 4) }
    }

    // Out of line for the same reason as Q4_0.
    #[inline(never)]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = to_f32(self.d);
        let m = to_f32(self.m);
        let q = q4_values(&self.qs);
        for (o, &q) in out.iter_mut().zip(&q) {
            *o = d * f32::from(q) + m;
        }
    }
}

/// Byte `k` of `BIT4[b]` is 16 when bit `k` of `b` is set: spreads a byte of Q5 high bits over
/// eight elements with one load instead of eight shifts.
const BIT4: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut k = 0;
        while k < 8 {
            if b & (1 << k) != 0 {
                t[b] |= 16 << (8 * k);
            }
            k += 1;
        }
        b += 1;
    }
    t
};

/// The 5-bit values of Q5_0 / Q5_1, unsigned.
#[inline(always)]
fn q5_values(qh: [u8; 4], qs: &[u8; QK / 2]) -> [u8; QK] {
    let mut high = [0u8; QK];
    for (h, &b) in high.chunks_exact_mut(8).zip(&qh) {
        h.copy_from_slice(&BIT4[usize::from(b)].to_le_bytes());
    }
    let mut q = [0; QK];
    for j in 0..QK / 2 {
        q[j] = (qs[j] & 0x0f) | high[j];
        q[j + 16] = (qs[j] >> 4) | high[j + 16];
    }
    q
}

impl BlockQ5_0 {
    #[inline]
    pub fn from_bytes(b: &[u8; 22]) -> Self {
        Self { d: half(b, 0), qh: field(b, 2), qs: field(b, 6) }
    }

    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = to_f32(self.d);
        let q = q5_values(self.qh, &self.qs);
        for (o, &q) in out.iter_mut().zip(&q) {
            *o = d * f32::from(q as i8 - 16);
        }
    }
}

impl BlockQ5_1 {
    #[inline]
    pub fn from_bytes(b: &[u8; 24]) -> Self {
        Self { d: half(b, 0), m: half(b, 2), qh: field(b, 4), qs: field(b, 8) }
    }

    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = to_f32(self.d);
        let m = to_f32(self.m);
        let q = q5_values(self.qh, &self.qs);
        for (o, &q) in out.iter_mut().zip(&q) {
            *o = d * f32::from(q) + m;
        }
    }
}

impl BlockQ8_0 {
    #[inline]
    pub fn from_bytes(b: &[u8; 34]) -> Self {
        Self { d: half(b, 0), qs: signed(field(b, 2)) }
    }

    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = to_f32(self.d);
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = f32::from(q) * d;
        }
    }
}

// The K-quants dequantize in two passes: unpack all 256 values with the same shift across a
// run of bytes (integer SIMD), then scale runs of 16 or 32 (float SIMD). Mixing the two in one
// loop leaves per-lane shifts and scale lookups that the compiler does not vectorise.

/// `out[i] = dl[g] * q[i] - ml[g]` for each group `g` of `G` elements.
#[inline(always)]
fn scale_min<const G: usize, const N: usize>(out: &mut [f32; QK_K], q: &[u8; QK_K], dl: &[f32; N], ml: &[f32; N]) {
    // Converting first, in its own loop, measured 2x faster than one fused loop: with the
    // subtraction in it, LLVM vectorised across groups with strided loads.
    for (o, &q) in out.iter_mut().zip(q) {
        *o = f32::from(q);
    }
    for g in 0..N {
        for k in 0..G {
            out[G * g + k] = dl[g] * out[G * g + k] - ml[g];
        }
    }
}

/// `out[i] = dl[g] * q[i]` for each group `g` of 16 elements.
#[inline(always)]
fn scale16(out: &mut [f32; QK_K], q: &[i8; QK_K], dl: &[f32; 16]) {
    for g in 0..16 {
        for k in 0..16 {
            out[16 * g + k] = dl[g] * f32::from(q[16 * g + k]);
        }
    }
}

impl BlockQ2K {
    #[inline]
    pub fn from_bytes(b: &[u8; 84]) -> Self {
        Self { scales: field(b, 0), qs: field(b, 16), d: half(b, 80), dmin: half(b, 82) }
    }

    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        let d = to_f32(self.d);
        let dmin = to_f32(self.dmin);
        let mut dl = [0.0; 16];
        let mut ml = [0.0; 16];
        for s in 0..16 {
            dl[s] = d * f32::from(self.scales[s] & 0x0f);
            ml[s] = dmin * f32::from(self.scales[s] >> 4);
        }
        scale_min::<16, 16>(out, &self.quants(), &dl, &ml);
    }

    /// The 2-bit quants, unsigned: `x = d * (scale & 15) * q - dmin * (scale >> 4)`.
    #[inline]
    pub fn quants(&self) -> [u8; QK_K] {
        // Output 128 * h + 32 * l + i is 2-bit field l of qs[32 * h + i].
        let mut q = [0u8; QK_K];
        for h in 0..2 {
            for l in 0..4 {
                for i in 0..32 {
                    q[128 * h + 32 * l + i] = (self.qs[32 * h + i] >> (2 * l)) & 3;
                }
            }
        }
        q
    }
}

impl BlockQ3K {
    #[inline]
    pub fn from_bytes(b: &[u8; 110]) -> Self {
        Self { hmask: field(b, 0), qs: field(b, 32), scales: field(b, 96), d: half(b, 108) }
    }

    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        let d = to_f32(self.d);
        let (q, scales) = self.quants();
        let mut dl = [0.0; 16];
        for (dl, &sc) in dl.iter_mut().zip(&scales) {
            *dl = d * f32::from(sc);
        }
        scale16(out, &q, &dl);
    }

    /// The quants (`-4..=3`) and the sixteen signed scales: `x = d * scale * q`.
    #[inline]
    pub fn quants(&self) -> ([i8; QK_K], [i8; 16]) {
        // Low two bits as in Q2_K; the high bit of output 32 * j + i is bit j of hmask[i], and
        // a clear bit means "subtract 4".
        let mut q = [0i8; QK_K];
        for h in 0..2 {
            for l in 0..4 {
                let j = 4 * h + l;
                for i in 0..32 {
                    let low = ((self.qs[32 * h + i] >> (2 * l)) & 3) as i8;
                    let sub = ((((self.hmask[i] >> j) & 1) ^ 1) << 2) as i8;
                    q[32 * j + i] = low - sub;
                }
            }
        }
        (q, scales_q3k(&self.scales))
    }
}

/// Q4_K / Q5_K: scale and min products per group of 32, as gguf-py forms them.
#[inline(always)]
fn k4_scales(d: f16, dmin: f16, scales: &[u8; K_SCALE_SIZE]) -> ([f32; 8], [f32; 8]) {
    let (d, dmin) = (to_f32(d), to_f32(dmin));
    let (sc, m) = scale_min_k4(scales);
    let mut dl = [0.0; 8];
    let mut ml = [0.0; 8];
    for j in 0..8 {
        dl[j] = d * f32::from(sc[j]);
        ml[j] = dmin * f32::from(m[j]);
    }
    (dl, ml)
}

/// Q4_K / Q5_K low nibbles: group 2 * c takes the low nibbles of qs[32 * c ..], group
/// 2 * c + 1 the high nibbles.
#[inline(always)]
fn k4_nibbles(qs: &[u8; QK_K / 2]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for c in 0..4 {
        for i in 0..32 {
            q[64 * c + i] = qs[32 * c + i] & 0x0f;
            q[64 * c + 32 + i] = qs[32 * c + i] >> 4;
        }
    }
    q
}

impl BlockQ4K {
    #[inline]
    pub fn from_bytes(b: &[u8; 144]) -> Self {
        Self { d: half(b, 0), dmin: half(b, 2), scales: field(b, 4), qs: field(b, 16) }
    }

    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        let (dl, ml) = k4_scales(self.d, self.dmin, &self.scales);
        scale_min::<32, 8>(out, &k4_nibbles(&self.qs), &dl, &ml);
    }
}

impl BlockQ5K {
    #[inline]
    pub fn from_bytes(b: &[u8; 176]) -> Self {
        Self { d: half(b, 0), dmin: half(b, 2), scales: field(b, 4), qh: field(b, 16), qs: field(b, 48) }
    }

    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        let (dl, ml) = k4_scales(self.d, self.dmin, &self.scales);
        // Bit 4 of element i of group j is bit j of qh[i].
        let mut q = k4_nibbles(&self.qs);
        for j in 0..8 {
            for i in 0..32 {
                q[32 * j + i] |= ((self.qh[i] >> j) & 1) << 4;
            }
        }
        scale_min::<32, 8>(out, &q, &dl, &ml);
    }
}

impl BlockQ6K {
    #[inline]
    pub fn from_bytes(b: &[u8; 210]) -> Self {
        Self { ql: field(b, 0), qh: field(b, 128), scales: signed(field(b, 192)), d: half(b, 208) }
    }

    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        let d = to_f32(self.d);
        let mut dl = [0.0; 16];
        for (dl, &sc) in dl.iter_mut().zip(&self.scales) {
            *dl = d * f32::from(sc);
        }
        // Each half of 128 outputs takes 64 bytes of ql (low nibbles for its first 64 outputs,
        // high nibbles for the last 64) and 32 bytes of qh (2-bit field l for outputs
        // 32 * l .. 32 * l + 32).
        let mut q = [0i8; QK_K];
        for h in 0..2 {
            for l in 0..4 {
                for i in 0..32 {
                    let low = (self.ql[64 * h + 32 * (l % 2) + i] >> (4 * (l / 2))) & 0x0f;
                    let high = (self.qh[32 * h + i] >> (2 * l)) & 3;
                    q[128 * h + 32 * l + i] = (low | (high << 4)) as i8 - 32;
                }
            }
        }
        scale16(out, &q, &dl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_half_for_every_value() {
        for bits in 0..=u16::MAX {
            let want = f16::from_bits(bits).to_f32();
            let got = f16_bits_to_f32(bits);
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn from_bytes_reads_fields_at_the_c_offsets() {
        let mut b = [0u8; 84];
        b[..16].fill(0x21);
        b[16] = 0x1b;
        b[80..82].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[82..84].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        let blk = BlockQ2K::from_bytes(&b);
        let mut out = [0.0; QK_K];
        blk.dequantize(&mut out);
        // Scale 1 * 0.5, min 2 * 0.25 everywhere; qs[0] = 0b00_01_10_11 spreads over outputs 0, 32, 64, 96.
        assert_eq!([out[0], out[32], out[64], out[96]], [1.0, 0.5, 0.0, -0.5]);
    }
}
