//! The fast CPU path: activations quantized on the fly to 8-bit blocks of 32 (`x ≈ d·q`, with
//! `d·Σq` kept for formats that carry a minimum), multiplied against the weights' quantized
//! blocks with integer dot products. No dequantized copy of a weight is ever made.
//!
//! Formats without a kernel here take the exact path (dequantized row times f32 activations).
//! The AVX2 instantiation is chosen at run time; the same code compiles to the baseline ISA
//! everywhere else. Issue #3 brings hand-written SIMD per ISA.

use crate::quant::{GgmlType, f16_bits_to_f32};

/// Elements per activation block.
pub const QB: usize = 32;

/// Rows of activations quantized to 8-bit blocks.
#[derive(Default)]
pub struct Q8Acts {
    /// Per block scale.
    pub d: Vec<f32>,
    /// Per block `d · Σq`, for formats with an additive minimum.
    pub sum: Vec<f32>,
    pub q: Vec<i8>,
}

impl Q8Acts {
    /// Quantizes `n` rows of `cols` elements (`cols` a multiple of [`QB`]).
    pub fn quantize(&mut self, x: &[f32], n: usize, cols: usize) {
        let blocks = n * cols / QB;
        self.d.resize(blocks, 0.0);
        self.sum.resize(blocks, 0.0);
        self.q.resize(n * cols, 0);
        for (b, (xs, qs)) in x[..n * cols].chunks_exact(QB).zip(self.q.chunks_exact_mut(QB)).enumerate() {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut isum = 0i32;
            for (q, &v) in qs.iter_mut().zip(xs) {
                let r = (v * id).round() as i8;
                *q = r;
                isum += i32::from(r);
            }
            self.d[b] = d;
            self.sum[b] = d * isum as f32;
        }
    }
}

/// Whether `ty` has an integer kernel here.
pub fn supported(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

/// Which instantiation of the dot products runs, fixed once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
        Isa::Baseline
    }
}

/// One weight row (`w`, encoded) times one activation row (blocks `d`, `sum`, `q`). The
/// caller guarantees `supported(ty)`, `q.len()` a multiple of [`QB`], and `w`, `d`, `sum`
/// covering the same number of blocks.
pub fn dot(isa: Isa, ty: GgmlType, w: &[u8], d: &[f32], sum: &[f32], q: &[i8]) -> f32 {
    let nb = q.len() / QB;
    let size = ty.type_size() as usize;
    if w.len() < nb * size || d.len() < nb || sum.len() < nb {
        return f32::NAN;
    }
    match isa {
        Isa::Baseline => scalar::dot(ty, w, d, sum, q),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only constructed after detecting AVX2 and FMA at run time, and
        // the lengths were checked above.
        Isa::Avx2 => unsafe { avx2::dot(ty, w, d, sum, q) },
    }
}

#[inline(always)]
fn half(lo: u8, hi: u8) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([lo, hi]))
}

/// The reference twins of the SIMD dots.
mod scalar {
    use super::{GgmlType, QB, half};

    pub fn dot(ty: GgmlType, w: &[u8], d: &[f32], sum: &[f32], q: &[i8]) -> f32 {
        let size = ty.type_size() as usize;
        let mut acc = 0.0f32;
        for (b, (wb, qb)) in w.chunks_exact(size).zip(q.chunks_exact(QB)).enumerate() {
            acc += match ty {
                GgmlType::Q4_0 => half(wb[0], wb[1]) * d[b] * nibble_dot(&wb[2..18], qb, 8) as f32,
                GgmlType::Q4_1 => {
                    half(wb[0], wb[1]) * d[b] * nibble_dot(&wb[4..20], qb, 0) as f32 + half(wb[2], wb[3]) * sum[b]
                }
                GgmlType::Q8_0 => {
                    let isum: i32 = wb[2..34].iter().zip(qb).map(|(&w, &x)| i32::from(w as i8) * i32::from(x)).sum();
                    half(wb[0], wb[1]) * d[b] * isum as f32
                }
                _ => f32::NAN,
            };
        }
        acc
    }

    /// Σ nibble·q: low nibbles pair with `q[..16]`, high nibbles with `q[16..]`.
    fn nibble_dot(qs: &[u8], q: &[i8], offset: i32) -> i32 {
        let mut acc = 0i32;
        for j in 0..16 {
            let lo = i32::from(qs[j] & 0x0F) - offset;
            let hi = i32::from(qs[j] >> 4) - offset;
            acc += lo * i32::from(q[j]) + hi * i32::from(q[j + 16]);
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{GgmlType, QB, half};

    /// # Safety
    /// AVX2 and FMA must be available; `w`, `d` and `sum` must cover `q.len() / QB` blocks.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(ty: GgmlType, w: &[u8], d: &[f32], sum: &[f32], q: &[i8]) -> f32 {
        let nb = q.len() / QB;
        let size = ty.type_size() as usize;
        let mask = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut min_acc = 0.0f32;
        for b in 0..nb {
            let wb = &w[b * size..(b + 1) * size];
            // SAFETY: `q` holds `nb * QB` bytes, so 32 bytes at `b * QB` are in bounds.
            let x = unsafe { _mm256_loadu_si256(q.as_ptr().add(b * QB).cast()) };
            let (scale, products) = match ty {
                GgmlType::Q4_0 | GgmlType::Q4_1 => {
                    let nibbles_at = if ty == GgmlType::Q4_0 { 2 } else { 4 };
                    // SAFETY: a Q4 block holds 16 nibble bytes from `nibbles_at`.
                    let raw = unsafe { _mm_loadu_si128(wb.as_ptr().add(nibbles_at).cast()) };
                    let lo = _mm_and_si128(raw, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                    let mut wv = _mm256_set_m128i(hi, lo);
                    if ty == GgmlType::Q4_0 {
                        wv = _mm256_sub_epi8(wv, _mm256_set1_epi8(8));
                    } else {
                        min_acc += half(wb[2], wb[3]) * sum[b];
                    }
                    (half(wb[0], wb[1]) * d[b], signed_dot(wv, x, ones))
                }
                GgmlType::Q8_0 => {
                    // SAFETY: a Q8_0 block holds 32 quant bytes from offset 2.
                    let wv = unsafe { _mm256_loadu_si256(wb.as_ptr().add(2).cast()) };
                    (half(wb[0], wb[1]) * d[b], signed_dot(wv, x, ones))
                }
                _ => return f32::NAN,
            };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(products), acc);
        }
        hsum(acc) + min_acc
    }

    /// Eight partial sums of `a · b` over signed bytes. `maddubs` wants one unsigned operand,
    /// so the sign of `a` moves onto `b` (|a| ≤ 127 keeps the i16 pair sums exact).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn signed_dot(a: __m256i, b: __m256i, ones: __m256i) -> __m256i {
        let abs_a = _mm256_sign_epi8(a, a);
        let signed_b = _mm256_sign_epi8(b, a);
        _mm256_madd_epi16(_mm256_maddubs_epi16(abs_a, signed_b), ones)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize_row;
    use half::f16;

    /// Rounding an activation to 8 bits moves it by at most half a step, `amax / 254`; the
    /// dot product then moves by at most `Σ|w| · amax / 254`. This slack covers f32 rounding.
    const F32_SLACK: f32 = 1e-3;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn f(&mut self) -> f32 {
            (self.next() % 2001) as f32 / 1000.0 - 1.0
        }
    }

    fn random_row(ty: GgmlType, cols: usize, rng: &mut Rng) -> Vec<u8> {
        let nb = cols / QB;
        let size = ty.type_size() as usize;
        let mut out = vec![0u8; nb * size];
        for blk in out.chunks_exact_mut(size) {
            for byte in blk.iter_mut() {
                *byte = rng.next() as u8;
            }
            // Sane scales: |d| ≤ 1/16, |m| ≤ 1/2.
            blk[..2].copy_from_slice(&f16::from_f32(rng.f() / 16.0).to_le_bytes());
            if ty == GgmlType::Q4_1 {
                blk[2..4].copy_from_slice(&f16::from_f32(rng.f() / 2.0).to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn integer_dots_match_dequantized_math() {
        let cols = 256;
        let mut rng = Rng(7);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
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
                for isa in [Isa::Baseline, Isa::detect()] {
                    let got = dot(isa, ty, &w, &acts.d, &acts.sum, &acts.q);
                    assert!((got - exact).abs() <= bound, "{ty} {isa:?}: {got} vs {exact} (bound {bound})");
                }
            }
        }
    }

    #[test]
    fn quantize_keeps_zero_blocks_zero() {
        let mut acts = Q8Acts::default();
        acts.quantize(&[0.0; 64], 2, 32);
        assert_eq!(acts.d, [0.0, 0.0]);
        assert!(acts.q.iter().all(|&q| q == 0));
    }
}
