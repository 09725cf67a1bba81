//! Activation quantization sixteen lanes at a time. The scalar loops in `q8` and `q16` are the
//! reference (and what runs without AVX-512); these give the same quants, scales and sums bit
//! for bit: `vcvtps2dq` rounds half to even as `round_small` does, and every float is made by
//! the same operations in the same order. Without them a batched decode step spent about an
//! eighth of its time here, on the calling thread and the pool's.

/// Whether [`avx512`] runs here.
#[cfg(target_arch = "x86_64")]
pub(super) fn avx512_available() -> bool {
    super::isa() == super::q8::Isa::Avx512
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

    #[test]
    fn q8_matches_the_scalar_twin_bit_for_bit() {
        if !avx512_available() {
            return;
        }
        let x = activations(37);
        let run = |simd: bool| {
            let (mut q, mut d, mut qsum, mut sum) =
                (vec![0i8; x.len()], vec![0f32; 74], vec![0i32; 74], vec![0f32; 37]);
            if simd {
                // SAFETY: AVX-512F was detected; the slices are sized for 37 blocks.
                unsafe { avx512::quantize_q8(&x, &mut q, &mut d, &mut qsum, &mut sum) };
            } else {
                quantize_q8_ref(&x, &mut q, &mut d, &mut qsum, &mut sum);
            }
            (
                q,
                d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                qsum,
                sum.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            )
        };
        let want = run(false);
        assert!(want.0.contains(&127) && want.0.contains(&-127));
        assert_eq!(run(true), want);
    }

    #[test]
    fn q16_and_its_split_match_the_scalar_twin_bit_for_bit() {
        if !avx512_available() {
            return;
        }
        let x = activations(37);
        let n = x.len();
        for split in [false, true] {
            let run = |simd: bool| {
                let (mut q, mut d, mut sum) = (vec![0i16; n], vec![0f32; 37], vec![0f32; 37]);
                let (mut hi, mut lo, mut qsum, mut hisum) =
                    (vec![0i8; n], vec![0u8; n], vec![0i32; 37], vec![0i32; 37]);
                let s = split.then(|| Split { hi: &mut hi, lo: &mut lo, qsum: &mut qsum, hisum: &mut hisum });
                if simd {
                    // SAFETY: AVX-512F was detected; the slices are sized for 37 blocks.
                    unsafe { avx512::quantize_q16(&x, &mut q, &mut d, &mut sum, s) };
                } else {
                    quantize_q16_ref(&x, &mut q, &mut d, &mut sum, s);
                }
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                (q, bits(&d), bits(&sum), hi, lo, qsum, hisum)
            };
            let want = run(false);
            assert!(want.0.contains(&32767) && want.0.contains(&-32767));
            assert_eq!(want.3.iter().any(|&h| h != 0), split);
            assert_eq!(run(true), want, "split: {split}");
        }
    }
}
