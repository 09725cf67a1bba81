//! `exp` sixteen lanes at a time, for the fast precision's SwiGLU and softmax. libm's `expf`
//! is a call per element, and a batched decode step makes tens of thousands of them on the
//! calling thread while the pool waits. Within a few units in the last place of the true value
//! (the tests' `MAX_ULPS`); the exact precision keeps libm's.

/// `*g = silu(*g) * u` over the slices: the vector `exp` where the CPU has AVX-512, libm's
/// elsewhere.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::isa() == super::q8::Isa::Avx512 {
        // SAFETY: `Isa::Avx512` means AVX-512 F and FMA were detected.
        unsafe { avx512::silu_mul(gate, up) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::isa() == super::q8::Isa::Avx2 {
        // SAFETY: `Isa::Avx2` means AVX2 and FMA were detected.
        unsafe { avx2::silu_mul(gate, up) };
        return;
    }
    super::ops::silu_mul(gate, up);
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    /// `exp(x)` per lane: `x = n·ln2 + g` with `|g| <= ln2 / 2`, a degree-6 Taylor polynomial
    /// for `exp(g)` (its remainder is below 2^-26 there), scaled by `2^n`. Inputs are clamped
    /// to where f32's `exp` is finite or denormal, so `-inf` gives 0 and no lane makes a NaN.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    pub fn exp(x: __m512) -> __m512 {
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0)), _mm512_set1_ps(88.7));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let g = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let g = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), g);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// Replaces scores by `exp(score - max)` and returns the maximum and the sum, as
    /// `ops::exp_shifted` does with libm's `exp`.
    #[target_feature(enable = "avx512f,fma")]
    pub fn exp_shifted(scores: &mut [f32]) -> (f32, f32) {
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let whole = scores.len() / 16 * 16;
        let (body, tail) = scores.split_at_mut(whole);
        let shift = _mm512_set1_ps(max);
        let mut sums = _mm512_setzero_ps();
        for chunk in body.chunks_exact_mut(16) {
            // SAFETY: the chunk holds 16 floats.
            unsafe {
                let e = exp(_mm512_sub_ps(_mm512_loadu_ps(chunk.as_ptr()), shift));
                sums = _mm512_add_ps(sums, e);
                _mm512_storeu_ps(chunk.as_mut_ptr(), e);
            }
        }
        let mut sum = _mm512_reduce_add_ps(sums);
        for x in tail {
            *x = (*x - max).exp();
            sum += *x;
        }
        (max, sum)
    }

    /// # Safety
    /// AVX-512F and FMA are available.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        let len = gate.len().min(up.len());
        let whole = len / 16 * 16;
        let one = _mm512_set1_ps(1.0);
        for i in (0..whole).step_by(16) {
            // SAFETY: `i + 16 <= len` for both slices.
            unsafe {
                let g = _mm512_loadu_ps(gate.as_ptr().add(i));
                let u = _mm512_loadu_ps(up.as_ptr().add(i));
                let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
                _mm512_storeu_ps(gate.as_mut_ptr().add(i), _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u));
            }
        }
        super::super::ops::silu_mul(&mut gate[whole..len], &up[whole..len]);
    }
}

/// The same `exp`, eight lanes at a time, for CPUs without AVX-512: `2^n` is made from its
/// exponent bits in two factors (`vscalefps` is AVX-512's), which round once as it does, so
/// the lanes equal the AVX-512 version's.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    /// `exp(x)` per lane, as `avx512::exp`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn exp(x: __m256) -> __m256 {
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-104.0)), _mm256_set1_ps(88.7));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let g = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let g = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), g);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(c));
        }
        // `n` is in -150..=128: each half of it is a normal power of two, and `p · 2^n1` is
        // exact, so only the second product rounds.
        let n = _mm256_cvtps_epi32(n);
        let n1 = _mm256_srai_epi32::<1>(n);
        let n2 = _mm256_sub_epi32(n, n1);
        let power =
            |k: __m256i| _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127))));
        _mm256_mul_ps(_mm256_mul_ps(p, power(n1)), power(n2))
    }

    /// Replaces scores by `exp(score - max)` and returns the maximum and the sum, as
    /// `ops::exp_shifted` does with libm's `exp`.
    #[target_feature(enable = "avx2,fma")]
    pub fn exp_shifted(scores: &mut [f32]) -> (f32, f32) {
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let whole = scores.len() / 8 * 8;
        let (body, tail) = scores.split_at_mut(whole);
        let shift = _mm256_set1_ps(max);
        let mut sums = _mm256_setzero_ps();
        for chunk in body.chunks_exact_mut(8) {
            // SAFETY: the chunk holds 8 floats.
            unsafe {
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(chunk.as_ptr()), shift));
                sums = _mm256_add_ps(sums, e);
                _mm256_storeu_ps(chunk.as_mut_ptr(), e);
            }
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sums) };
        let mut sum: f32 = lanes.iter().sum();
        for x in tail {
            *x = (*x - max).exp();
            sum += *x;
        }
        (max, sum)
    }

    /// # Safety
    /// AVX2 and FMA are available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        let len = gate.len().min(up.len());
        let whole = len / 8 * 8;
        let one = _mm256_set1_ps(1.0);
        for i in (0..whole).step_by(8) {
            // SAFETY: `i + 8 <= len` for both slices.
            unsafe {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                let u = _mm256_loadu_ps(up.as_ptr().add(i));
                let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
                _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u));
            }
        }
        super::super::ops::silu_mul(&mut gate[whole..len], &up[whole..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the vector `exp` may be off by, in units in the last place of an f32.
    const MAX_ULPS: f32 = 4.0;

    fn ulps(got: f32, want: f64) -> f32 {
        if want == 0.0 {
            return if got == 0.0 { 0.0 } else { f32::INFINITY };
        }
        let want32 = want as f32;
        let ulp = f32::from_bits(want32.abs().to_bits() + 1) - want32.abs();
        ((f64::from(got) - want).abs() / f64::from(ulp)) as f32
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_within_a_few_ulps_over_the_range() {
        use std::arch::x86_64::*;
        if !(std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")) {
            return;
        }
        let xs: Vec<f32> = (0..200_000).map(|i| -87.0 + 175.0 * i as f32 / 200_000.0).collect();
        let mut worst = 0.0f32;
        for chunk in xs.chunks_exact(16) {
            let mut out = [0.0f32; 16];
            // SAFETY: AVX-512F and FMA were detected; both arrays hold 16 floats.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), avx512::exp(_mm512_loadu_ps(chunk.as_ptr()))) };
            for (&x, &e) in chunk.iter().zip(&out) {
                worst = worst.max(ulps(e, f64::from(x).exp()));
            }
        }
        assert!(worst <= MAX_ULPS, "worst error {worst} ulps");
        // The ends: -inf and far below the range give 0, far above stays finite.
        let mut out = [1.0f32; 16];
        let edges =
            [f32::NEG_INFINITY, -1000.0, -104.0, 1000.0, 0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), avx512::exp(_mm512_loadu_ps(edges.as_ptr()))) };
        assert_eq!(&out[..2], &[0.0, 0.0]);
        assert!(out[3].is_finite() && out[3] > 1e38);
        assert_eq!(out[4], 1.0);
        // The AVX2 version gives the same bits, the edges and the denormals included.
        let with_denormals: Vec<f32> =
            xs.iter().copied().chain(edges).chain((0..64).map(|i| -87.0 - i as f32 * 0.27)).collect();
        for chunk in with_denormals.chunks_exact(8) {
            let (mut wide, mut narrow) = ([0.0f32; 16], [0.0f32; 8]);
            let mut lanes = [0.0f32; 16];
            lanes[..8].copy_from_slice(chunk);
            // SAFETY: AVX-512F and FMA (so AVX2) were detected; the arrays hold 16 and 8 floats.
            unsafe {
                _mm512_storeu_ps(wide.as_mut_ptr(), avx512::exp(_mm512_loadu_ps(lanes.as_ptr())));
                _mm256_storeu_ps(narrow.as_mut_ptr(), avx2::exp(_mm256_loadu_ps(chunk.as_ptr())));
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&narrow), bits(&wide[..8]), "{chunk:?}");
        }
    }

    #[test]
    fn silu_mul_matches_the_scalar_form() {
        let gate: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin() * 12.0).collect();
        let up: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.11).cos() * 3.0).collect();
        let mut fast = gate.clone();
        silu_mul(&mut fast, &up);
        for ((&g, &u), &f) in gate.iter().zip(&up).zip(&fast) {
            let want = f64::from(g) / (1.0 + (-f64::from(g)).exp()) * f64::from(u);
            // exp's error plus the division's and the product's rounding.
            assert!(ulps(f, want) <= MAX_ULPS + 2.0, "silu({g}) * {u}: {f} vs {want}");
        }
    }
}
