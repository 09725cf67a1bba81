//! Activation quantization sixteen (AVX-512) or eight (AVX2) lanes at a time. The scalar loops
//! in `q8` and `q16` are the reference; these give the same quants, scales and sums bit for
//! bit: `vcvtps2dq` rounds half to even as `round_small` does, and every float is made by
//! the same operations in the same order. Without them a batched decode step spent about an
//! eighth of its time here, on the calling thread and the pool's.

/// Whether [`avx512`] runs here.
#[cfg(target_arch = "x86_64")]
pub(super) fn avx512_available() -> bool {
    super::isa() == super::q8::Isa::Avx512
}

/// Whether [`avx2`] runs here (where [`avx512`] does not).
#[cfg(target_arch = "x86_64")]
pub(super) fn avx2_available() -> bool {
    super::isa() == super::q8::Isa::Avx2
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::super::q8::{QA, QB, block_scale};
    use super::super::q16::Split;

    /// A block's scale for quants up to `limit` and its inverse in every lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn scale_of(amax: f32, limit: f32) -> (f32, __m512) {
        let (scale, id) = block_scale(amax, limit);
        (scale, _mm512_set1_ps(id))
    }

    /// `q8::quantize_q8_ref`: per 16 elements a scale and `Σ q`, per 32 `Σ d·q`.
    ///
    /// # Safety
    /// AVX-512F is available; `x` and `q` hold the same whole number of 32-element blocks and
    /// `d`, `qsum` and `sum` one entry per 16, 16 and 32 of them.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn quantize_q8(x: &[f32], q: &mut [i8], d: &mut [f32], qsum: &mut [i32], sum: &mut [f32]) {
        let blocks = x.len() / QA;
        assert!(q.len() >= blocks * QA && d.len() >= blocks && qsum.len() >= blocks && sum.len() >= blocks / 2);
        for h in 0..blocks {
            // SAFETY: block `h` lies inside `x` and `q` (asserted above).
            unsafe {
                let v = _mm512_loadu_ps(x.as_ptr().add(h * QA));
                let (scale, id) = scale_of(_mm512_reduce_max_ps(_mm512_abs_ps(v)), 127.0);
                let r = _mm512_cvtps_epi32(_mm512_mul_ps(v, id));
                _mm_storeu_si128(q.as_mut_ptr().add(h * QA).cast(), _mm512_cvtsepi32_epi8(r));
                let isum = _mm512_reduce_add_epi32(r);
                d[h] = scale;
                qsum[h] = isum;
                if h % 2 == 0 {
                    sum[h / 2] = 0.0;
                }
                sum[h / 2] += scale * isum as f32;
            }
        }
    }

    /// `q16::quantize_q16_ref` and, with `split`, the split in the same pass.
    ///
    /// # Safety
    /// AVX-512F is available; `x` and `q` (and `split`'s `hi` and `lo`) hold the same whole
    /// number of 32-element blocks and `d` and `sum` (and `split`'s sums) one entry per block.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn quantize_q16(x: &[f32], q: &mut [i16], d: &mut [f32], sum: &mut [f32], mut split: Option<Split>) {
        let blocks = x.len() / QB;
        assert!(q.len() >= blocks * QB && d.len() >= blocks && sum.len() >= blocks);
        if let Some(s) = &split {
            assert!(s.hi.len() >= blocks * QB && s.lo.len() >= blocks * QB);
            assert!(s.qsum.len() >= blocks && s.hisum.len() >= blocks);
        }
        for b in 0..blocks {
            // SAFETY: block `b` lies inside every slice written (asserted above).
            unsafe {
                let at = b * QB;
                let v0 = _mm512_loadu_ps(x.as_ptr().add(at));
                let v1 = _mm512_loadu_ps(x.as_ptr().add(at + 16));
                let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
                let (scale, id) = scale_of(amax, 32767.0);
                let r0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, id));
                let r1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, id));
                _mm256_storeu_si256(q.as_mut_ptr().add(at).cast(), _mm512_cvtsepi32_epi16(r0));
                _mm256_storeu_si256(q.as_mut_ptr().add(at + 16).cast(), _mm512_cvtsepi32_epi16(r1));
                let isum = _mm512_reduce_add_epi32(_mm512_add_epi32(r0, r1));
                d[b] = scale;
                sum[b] = scale * isum as f32;
                if let Some(s) = &mut split {
                    let (h0, h1) = (_mm512_srai_epi32::<8>(r0), _mm512_srai_epi32::<8>(r1));
                    let low = _mm512_set1_epi32(0xff);
                    _mm_storeu_si128(s.hi.as_mut_ptr().add(at).cast(), _mm512_cvtepi32_epi8(h0));
                    _mm_storeu_si128(s.hi.as_mut_ptr().add(at + 16).cast(), _mm512_cvtepi32_epi8(h1));
                    _mm_storeu_si128(s.lo.as_mut_ptr().add(at).cast(), _mm512_cvtepi32_epi8(_mm512_and_si512(r0, low)));
                    let lo1 = _mm512_cvtepi32_epi8(_mm512_and_si512(r1, low));
                    _mm_storeu_si128(s.lo.as_mut_ptr().add(at + 16).cast(), lo1);
                    s.qsum[b] = isum;
                    s.hisum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(h0, h1));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::super::q8::{QA, QB, block_scale};
    use super::super::q16::Split;

    /// The largest magnitude of the lanes of `v`s (exact, whatever the order).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn amax<const N: usize>(v: &[__m256; N]) -> f32 {
        let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
        let m = v.iter().fold(_mm256_setzero_ps(), |m, v| _mm256_max_ps(m, _mm256_and_ps(*v, magnitude)));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
    }

    /// The sum of the lanes of `v` (exact: integers).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
    }

    /// 16 i32 (`a` then `b`) as 16 i16 in order, saturating.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn pack16(a: __m256i, b: __m256i) -> __m256i {
        _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b))
    }

    /// The `(x · inverse scale)` of `v`s, rounded half to even as `vcvtps2dq` does.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn round<const N: usize>(v: &[__m256; N], id: f32) -> [__m256i; N] {
        let id = _mm256_set1_ps(id);
        std::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id)))
    }

    /// `q8::quantize_q8_ref`: per 16 elements a scale and `Σ q`, per 32 `Σ d·q`.
    ///
    /// # Safety
    /// AVX2 is available; `x` and `q` hold the same whole number of 32-element blocks and `d`,
    /// `qsum` and `sum` one entry per 16, 16 and 32 of them.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_q8(x: &[f32], q: &mut [i8], d: &mut [f32], qsum: &mut [i32], sum: &mut [f32]) {
        let blocks = x.len() / QA;
        assert!(q.len() >= blocks * QA && d.len() >= blocks && qsum.len() >= blocks && sum.len() >= blocks / 2);
        for h in 0..blocks {
            // SAFETY: block `h` lies inside `x` and `q` (asserted above).
            unsafe {
                let at = h * QA;
                let v = [_mm256_loadu_ps(x.as_ptr().add(at)), _mm256_loadu_ps(x.as_ptr().add(at + 8))];
                let (scale, id) = block_scale(amax(&v), 127.0);
                let r = round(&v, id);
                let words = pack16(r[0], r[1]);
                let bytes = _mm_packs_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256::<1>(words));
                _mm_storeu_si128(q.as_mut_ptr().add(at).cast(), bytes);
                let isum = hsum(_mm256_add_epi32(r[0], r[1]));
                d[h] = scale;
                qsum[h] = isum;
                if h % 2 == 0 {
                    sum[h / 2] = 0.0;
                }
                sum[h / 2] += scale * isum as f32;
            }
        }
    }

    /// `q16::quantize_q16_ref` and, with `split`, the split in the same pass.
    ///
    /// # Safety
    /// AVX2 is available; `x` and `q` (and `split`'s `hi` and `lo`) hold the same whole number
    /// of 32-element blocks and `d` and `sum` (and `split`'s sums) one entry per block.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_q16(x: &[f32], q: &mut [i16], d: &mut [f32], sum: &mut [f32], mut split: Option<Split>) {
        let blocks = x.len() / QB;
        assert!(q.len() >= blocks * QB && d.len() >= blocks && sum.len() >= blocks);
        if let Some(s) = &split {
            assert!(s.hi.len() >= blocks * QB && s.lo.len() >= blocks * QB);
            assert!(s.qsum.len() >= blocks && s.hisum.len() >= blocks);
        }
        for b in 0..blocks {
            // SAFETY: block `b` lies inside every slice written (asserted above).
            unsafe {
                let at = b * QB;
                let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(at + 8 * i)));
                let (scale, id) = block_scale(amax(&v), 32767.0);
                let r = round(&v, id);
                _mm256_storeu_si256(q.as_mut_ptr().add(at).cast(), pack16(r[0], r[1]));
                _mm256_storeu_si256(q.as_mut_ptr().add(at + 16).cast(), pack16(r[2], r[3]));
                let isum = hsum(_mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3])));
                d[b] = scale;
                sum[b] = scale * isum as f32;
                if let Some(s) = &mut split {
                    // Bytes in order from 32 i32 known to fit: signed (`hi`) or unsigned (`lo`).
                    let bytes = |w: [__m256i; 4], signed: bool| {
                        let (a, b) = if signed {
                            (pack16(w[0], w[1]), pack16(w[2], w[3]))
                        } else {
                            let pack = |a, b| _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(a, b));
                            (pack(w[0], w[1]), pack(w[2], w[3]))
                        };
                        let packed = if signed { _mm256_packs_epi16(a, b) } else { _mm256_packus_epi16(a, b) };
                        _mm256_permute4x64_epi64::<0b11_01_10_00>(packed)
                    };
                    let high = r.map(|r| _mm256_srai_epi32::<8>(r));
                    let low = r.map(|r| _mm256_and_si256(r, _mm256_set1_epi32(0xff)));
                    _mm256_storeu_si256(s.hi.as_mut_ptr().add(at).cast(), bytes(high, true));
                    _mm256_storeu_si256(s.lo.as_mut_ptr().add(at).cast(), bytes(low, false));
                    s.qsum[b] = isum;
                    let h = _mm256_add_epi32(_mm256_add_epi32(high[0], high[1]), _mm256_add_epi32(high[2], high[3]));
                    s.hisum[b] = hsum(h);
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::q8::quantize_q8_ref;
    use super::super::q16::{Split, quantize_q16_ref};
    use super::*;

    /// Blocks of every kind a step meets: random magnitudes over six decades, an all-zero
    /// block, one with a single large outlier, exact halves (ties in the rounding) and
    /// negative zeros.
    fn activations(blocks: usize) -> Vec<f32> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut x: Vec<f32> = (0..blocks * 32).map(|_| (next() - 0.5) * 10f32.powf(next() * 6.0 - 3.0)).collect();
        x[32..64].fill(0.0);
        x[70] = 3.0e4;
        for (i, v) in x[96..128].iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        x[128..136].fill(-0.0);
        x
    }

    /// The instantiations this CPU runs.
    #[derive(Debug, Clone, Copy)]
    enum Simd {
        Scalar,
        Avx2,
        Avx512,
    }

    fn simds() -> Vec<Simd> {
        let mut simds = Vec::new();
        if std::arch::is_x86_feature_detected!("avx2") {
            simds.push(Simd::Avx2);
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            simds.push(Simd::Avx512);
        }
        simds
    }

    #[test]
    fn q8_matches_the_scalar_twin_bit_for_bit() {
        let x = activations(37);
        let run = |simd: Simd| {
            let (mut q, mut d, mut qsum, mut sum) =
                (vec![0i8; x.len()], vec![0f32; 74], vec![0i32; 74], vec![0f32; 37]);
            match simd {
                // SAFETY (both): the feature was detected; the slices are sized for 37 blocks.
                Simd::Avx512 => unsafe { avx512::quantize_q8(&x, &mut q, &mut d, &mut qsum, &mut sum) },
                Simd::Avx2 => unsafe { avx2::quantize_q8(&x, &mut q, &mut d, &mut qsum, &mut sum) },
                Simd::Scalar => quantize_q8_ref(&x, &mut q, &mut d, &mut qsum, &mut sum),
            }
            (
                q,
                d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                qsum,
                sum.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            )
        };
        let want = run(Simd::Scalar);
        assert!(want.0.contains(&127) && want.0.contains(&-127));
        for simd in simds() {
            assert_eq!(run(simd), want, "{simd:?}");
        }
    }

    #[test]
    fn q16_and_its_split_match_the_scalar_twin_bit_for_bit() {
        let x = activations(37);
        let n = x.len();
        for split in [false, true] {
            let run = |simd: Simd| {
                let (mut q, mut d, mut sum) = (vec![0i16; n], vec![0f32; 37], vec![0f32; 37]);
                let (mut hi, mut lo, mut qsum, mut hisum) =
                    (vec![0i8; n], vec![0u8; n], vec![0i32; 37], vec![0i32; 37]);
                let s = split.then(|| Split { hi: &mut hi, lo: &mut lo, qsum: &mut qsum, hisum: &mut hisum });
                match simd {
                    // SAFETY (both): the feature was detected; the slices are sized for 37 blocks.
                    Simd::Avx512 => unsafe { avx512::quantize_q16(&x, &mut q, &mut d, &mut sum, s) },
                    Simd::Avx2 => unsafe { avx2::quantize_q16(&x, &mut q, &mut d, &mut sum, s) },
                    Simd::Scalar => quantize_q16_ref(&x, &mut q, &mut d, &mut sum, s),
                }
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                (q, bits(&d), bits(&sum), hi, lo, qsum, hisum)
            };
            let want = run(Simd::Scalar);
            assert!(want.0.contains(&32767) && want.0.contains(&-32767));
            assert_eq!(want.3.iter().any(|&h| h != 0), split);
            for simd in simds() {
                assert_eq!(run(simd), want, "{simd:?}, split: {split}");
            }
        }
    }
}
