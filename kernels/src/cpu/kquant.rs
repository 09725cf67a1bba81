//! K-quant weights (Q4_K, Q5_K, Q6_K) for the integer kernels. Each 256-element super-block is
//! unpacked into signed 8-bit quants with one f32 scale per 16 elements and one f32 minimum per
//! 32 (`w = scale · q + min`), then multiplied like the 32-element formats: integer dots per 16
//! elements against the 8-bit activations, per 32 against the 16-bit ones. The unpacking is a
//! few vector operations per 32 weights and is done once per super-block for every activation
//! row of a tile.

use super::q8::{Isa, QA, QB};
use crate::quant::{GgmlType, K_SCALE_SIZE, QK_K, f16_bits_to_f32, scale_min_k4};

/// Whether `ty` is a K-quant with a kernel here.
pub fn supported(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K)
}

/// One super-block, unpacked.
#[repr(C, align(64))]
pub struct Unpacked {
    pub q: [i8; QK_K],
    /// Per 16 elements.
    pub scale: [f32; QK_K / QA],
    /// Per 32 elements: added times the activations' sum over them.
    pub min: [f32; QK_K / QB],
}

impl Default for Unpacked {
    fn default() -> Self {
        Self { q: [0; QK_K], scale: [0.0; QK_K / QA], min: [0.0; QK_K / QB] }
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The scales and minimums of super-block `b` (quants are [`unpack_quants_ref`]'s or the SIMD
/// twin's job).
fn unpack_scales(ty: GgmlType, b: &[u8], u: &mut Unpacked) {
    if ty == GgmlType::Q6K {
        let d = half(b, 208);
        for (s, &sc) in u.scale.iter_mut().zip(&b[192..208]) {
            *s = d * f32::from(sc as i8);
        }
        u.min = [0.0; QK_K / QB];
        return;
    }
    let (d, dmin) = (half(b, 0), half(b, 2));
    let mut packed = [0u8; K_SCALE_SIZE];
    packed.copy_from_slice(&b[4..4 + K_SCALE_SIZE]);
    let (sc, m) = scale_min_k4(&packed);
    for j in 0..QK_K / QB {
        let s = d * f32::from(sc[j]);
        u.scale[2 * j] = s;
        u.scale[2 * j + 1] = s;
        u.min[j] = -(dmin * f32::from(m[j]));
    }
}

/// The reference unpacking of the quants: element by element, as `dequantize` reads them.
pub(super) fn unpack_quants_ref(ty: GgmlType, b: &[u8], u: &mut Unpacked) {
    match ty {
        GgmlType::Q6K => {
            let (ql, qh) = (&b[..128], &b[128..192]);
            for n in 0..2 {
                for l in 0..32 {
                    let (lo, hi) = (ql[64 * n + l], ql[64 * n + l + 32]);
                    let h = qh[32 * n + l];
                    let q = [
                        lo & 0x0F | (h & 3) << 4,
                        hi & 0x0F | (h >> 2 & 3) << 4,
                        lo >> 4 | (h >> 4 & 3) << 4,
                        hi >> 4 | (h >> 6) << 4,
                    ];
                    for (m, v) in q.into_iter().enumerate() {
                        u.q[128 * n + 32 * m + l] = v as i8 - 32;
                    }
                }
            }
        }
        _ => {
            let five = ty == GgmlType::Q5K;
            let (qh, qs) = if five { (&b[16..48], &b[48..176]) } else { (&b[..0], &b[16..144]) };
            for c in 0..4 {
                for i in 0..32 {
                    let (mut lo, mut hi) = (qs[32 * c + i] & 0x0F, qs[32 * c + i] >> 4);
                    if five {
                        lo |= (qh[i] >> (2 * c) & 1) << 4;
                        hi |= (qh[i] >> (2 * c + 1) & 1) << 4;
                    }
                    u.q[64 * c + i] = lo as i8;
                    u.q[64 * c + 32 + i] = hi as i8;
                }
            }
        }
    }
}

/// One weight row (`w`, `q.len() / 256` super-blocks) times `N` rows of 8-bit activations (as
/// `Q8Acts` holds them). Lengths that disagree give NaN.
pub fn dot_many_q8<const N: usize>(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    d: [&[f32]; N],
    sum: [&[f32]; N],
    q: [&[i8]; N],
) -> [f32; N] {
    let len = q.first().map_or(0, |q| q.len());
    let nsb = len / QK_K;
    let fits = (0..N).all(|k| q[k].len() == len && d[k].len() >= len / QA && sum[k].len() >= len / QB);
    if !supported(ty) || !len.is_multiple_of(QK_K) || w.len() < nsb * ty.type_size() as usize || !fits {
        return [f32::NAN; N];
    }
    match isa {
        Isa::Baseline => scalar::dot_q8(ty, w, d, sum, q),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only constructed after detecting AVX2, FMA and F16C; the
        // lengths were checked above.
        Isa::Avx2 => unsafe { avx2::dot_q8(ty, w, d, sum, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` also means AVX-512 F/BW/VL/VNNI; lengths as above.
        Isa::Avx512 => unsafe { avx512::dot_q8(ty, w, d, sum, q) },
    }
}

/// One weight row times `N` rows of 16-bit activations (as `Q16Acts` holds them).
pub fn dot_many_q16<const N: usize>(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    d: [&[f32]; N],
    sum: [&[f32]; N],
    q: [&[i16]; N],
) -> [f32; N] {
    let len = q.first().map_or(0, |q| q.len());
    let nsb = len / QK_K;
    let fits = (0..N).all(|k| q[k].len() == len && d[k].len() >= len / QB && sum[k].len() >= len / QB);
    if !supported(ty) || !len.is_multiple_of(QK_K) || w.len() < nsb * ty.type_size() as usize || !fits {
        return [f32::NAN; N];
    }
    match isa {
        Isa::Baseline => scalar::dot_q16(ty, w, d, sum, q),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `dot_many_q8`.
        Isa::Avx2 => unsafe { avx2::dot_q16(ty, w, d, sum, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `dot_many_q8`.
        Isa::Avx512 => unsafe { avx512::dot_q16(ty, w, d, sum, q) },
    }
}

/// The reference twins of the SIMD dots.
mod scalar {
    use super::{GgmlType, QA, QB, QK_K, Unpacked, unpack_quants_ref, unpack_scales};

    pub fn dot_q8<const N: usize>(ty: GgmlType, w: &[u8], d: [&[f32]; N], sum: [&[f32]; N], q: [&[i8]; N]) -> [f32; N] {
        let mut u = Unpacked::default();
        let mut acc = [0.0f32; N];
        for (sb, block) in w.chunks_exact(ty.type_size() as usize).take(q[0].len() / QK_K).enumerate() {
            unpack_scales(ty, block, &mut u);
            unpack_quants_ref(ty, block, &mut u);
            for k in 0..N {
                for h in 0..QK_K / QA {
                    let isum: i32 =
                        (0..QA).map(|i| i32::from(u.q[QA * h + i]) * i32::from(q[k][sb * QK_K + QA * h + i])).sum();
                    acc[k] += u.scale[h] * d[k][sb * (QK_K / QA) + h] * isum as f32;
                }
                for b in 0..QK_K / QB {
                    acc[k] += u.min[b] * sum[k][sb * (QK_K / QB) + b];
                }
            }
        }
        acc
    }

    pub fn dot_q16<const N: usize>(
        ty: GgmlType,
        w: &[u8],
        d: [&[f32]; N],
        sum: [&[f32]; N],
        q: [&[i16]; N],
    ) -> [f32; N] {
        let mut u = Unpacked::default();
        let mut acc = [0.0f32; N];
        for (sb, block) in w.chunks_exact(ty.type_size() as usize).take(q[0].len() / QK_K).enumerate() {
            unpack_scales(ty, block, &mut u);
            unpack_quants_ref(ty, block, &mut u);
            for k in 0..N {
                for h in 0..QK_K / QA {
                    let isum: i64 =
                        (0..QA).map(|i| i64::from(u.q[QA * h + i]) * i64::from(q[k][sb * QK_K + QA * h + i])).sum();
                    acc[k] += u.scale[h] * d[k][sb * (QK_K / QB) + h / 2] * isum as f32;
                }
                for b in 0..QK_K / QB {
                    acc[k] += u.min[b] * sum[k][sb * (QK_K / QB) + b];
                }
            }
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{GgmlType, QB, QK_K, Unpacked, unpack_scales};

    /// The quants of super-block `b` into `u.q`, 32 at a time.
    ///
    /// # Safety
    /// `b` holds one whole super-block of `ty`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn unpack_quants(ty: GgmlType, b: &[u8], u: &mut Unpacked) {
        let low = _mm256_set1_epi8(0x0F);
        let out = u.q.as_mut_ptr();
        // SAFETY: every load below reads inside the super-block's bytes (the caller's promise)
        // and every store writes inside `u.q`'s 256 bytes.
        unsafe {
            match ty {
                GgmlType::Q6K => {
                    let (ql, qh) = (b.as_ptr(), b.as_ptr().add(128));
                    let (two, hi2, bias) = (_mm256_set1_epi8(3), _mm256_set1_epi8(0x30), _mm256_set1_epi8(32));
                    for n in 0..2 {
                        let ql0 = _mm256_loadu_si256(ql.add(64 * n).cast());
                        let ql1 = _mm256_loadu_si256(ql.add(64 * n + 32).cast());
                        let h = _mm256_loadu_si256(qh.add(32 * n).cast());
                        // Shifts are per 16 bits; each result is masked to bits of its own byte.
                        let q = [
                            _mm256_or_si256(_mm256_and_si256(ql0, low), _mm256_slli_epi16(_mm256_and_si256(h, two), 4)),
                            _mm256_or_si256(_mm256_and_si256(ql1, low), _mm256_and_si256(_mm256_slli_epi16(h, 2), hi2)),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low), _mm256_and_si256(h, hi2)),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low),
                                _mm256_and_si256(_mm256_srli_epi16(h, 2), hi2),
                            ),
                        ];
                        for (m, v) in q.into_iter().enumerate() {
                            _mm256_storeu_si256(out.add(128 * n + 32 * m).cast(), _mm256_sub_epi8(v, bias));
                        }
                    }
                }
                _ => {
                    let five = ty == GgmlType::Q5K;
                    let qs = b.as_ptr().add(if five { 48 } else { 16 });
                    let qh = if five { _mm256_loadu_si256(b.as_ptr().add(16).cast()) } else { _mm256_setzero_si256() };
                    let sixteen = _mm256_set1_epi8(16);
                    // Bit j of qh[i] is the fifth bit of element i of group j.
                    let fifth = |j: i32| {
                        let bit = _mm256_set1_epi8((1u8 << j) as i8);
                        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), sixteen)
                    };
                    for c in 0..4 {
                        let v = _mm256_loadu_si256(qs.add(32 * c).cast());
                        let mut lo = _mm256_and_si256(v, low);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                        if five {
                            lo = _mm256_or_si256(lo, fifth(2 * c as i32));
                            hi = _mm256_or_si256(hi, fifth(2 * c as i32 + 1));
                        }
                        _mm256_storeu_si256(out.add(64 * c).cast(), lo);
                        _mm256_storeu_si256(out.add(64 * c + 32).cast(), hi);
                    }
                }
            }
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available; lengths as `dot_many_q8` checks them.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8<const N: usize>(
        ty: GgmlType,
        w: &[u8],
        d: [&[f32]; N],
        sum: [&[f32]; N],
        q: [&[i8]; N],
    ) -> [f32; N] {
        let size = ty.type_size() as usize;
        let nsb = q[0].len() / QK_K;
        let ones = _mm256_set1_epi16(1);
        let halves = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        let mut u = Unpacked::default();
        let mut acc = [_mm256_setzero_ps(); N];
        let mut min_acc = [_mm256_setzero_ps(); N];
        for sb in 0..nsb {
            let block = &w[sb * size..(sb + 1) * size];
            unpack_scales(ty, block, &mut u);
            // SAFETY: `block` is one whole super-block.
            unsafe { unpack_quants(ty, block, &mut u) };
            // The super-block index drives offsets into every `q[k]`, `d[k]`, `sum[k]`.
            #[allow(clippy::needless_range_loop)]
            for k in 0..N {
                // SAFETY: `q[k]` holds `nsb * 256` quants, `d[k]` 16 and `sum[k]` 8 per
                // super-block; `u` is 256 quants, 16 scales and 8 minimums.
                unsafe {
                    for b in 0..QK_K / QB {
                        let wv = _mm256_loadu_si256(u.q.as_ptr().add(QB * b).cast());
                        let x = _mm256_loadu_si256(q[k].as_ptr().add(sb * QK_K + QB * b).cast());
                        let products = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(x, wv)),
                            ones,
                        );
                        let ws = _mm_castsi128_ps(_mm_loadl_epi64(u.scale.as_ptr().add(2 * b).cast()));
                        let dx = _mm_castsi128_ps(_mm_loadl_epi64(d[k].as_ptr().add(sb * 16 + 2 * b).cast()));
                        let scales = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_mul_ps(ws, dx)), halves);
                        acc[k] = _mm256_fmadd_ps(scales, _mm256_cvtepi32_ps(products), acc[k]);
                    }
                    let sums = _mm256_loadu_ps(sum[k].as_ptr().add(sb * 8));
                    min_acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(u.min.as_ptr()), sums, min_acc[k]);
                }
            }
        }
        std::array::from_fn(|k| super::super::q8::hsum_avx2(_mm256_add_ps(acc[k], min_acc[k])))
    }

    /// # Safety
    /// As [`dot_q8`], for 16-bit activations (`dot_many_q16`'s lengths).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q16<const N: usize>(
        ty: GgmlType,
        w: &[u8],
        d: [&[f32]; N],
        sum: [&[f32]; N],
        q: [&[i16]; N],
    ) -> [f32; N] {
        let size = ty.type_size() as usize;
        let nsb = q[0].len() / QK_K;
        let mut u = Unpacked::default();
        let mut acc = [_mm256_setzero_ps(); N];
        let mut min_acc = [_mm256_setzero_ps(); N];
        for sb in 0..nsb {
            let block = &w[sb * size..(sb + 1) * size];
            unpack_scales(ty, block, &mut u);
            // SAFETY: `block` is one whole super-block.
            unsafe { unpack_quants(ty, block, &mut u) };
            #[allow(clippy::needless_range_loop)]
            for k in 0..N {
                // SAFETY: as in `dot_q8`, with 8 scales per super-block in `d[k]`.
                unsafe {
                    for b in 0..QK_K / QB {
                        let wp = u.q.as_ptr().add(QB * b);
                        let w_lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.cast()));
                        let w_hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(16).cast()));
                        let xp = q[k].as_ptr().add(sb * QK_K + QB * b);
                        let p_lo = _mm256_madd_epi16(w_lo, _mm256_loadu_si256(xp.cast()));
                        let p_hi = _mm256_madd_epi16(w_hi, _mm256_loadu_si256(xp.add(16).cast()));
                        let dx = *d[k].get_unchecked(sb * 8 + b);
                        let s_lo = _mm256_set1_ps(*u.scale.get_unchecked(2 * b) * dx);
                        let s_hi = _mm256_set1_ps(*u.scale.get_unchecked(2 * b + 1) * dx);
                        acc[k] = _mm256_fmadd_ps(s_lo, _mm256_cvtepi32_ps(p_lo), acc[k]);
                        acc[k] = _mm256_fmadd_ps(s_hi, _mm256_cvtepi32_ps(p_hi), acc[k]);
                    }
                    let sums = _mm256_loadu_ps(sum[k].as_ptr().add(sb * 8));
                    min_acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(u.min.as_ptr()), sums, min_acc[k]);
                }
            }
        }
        std::array::from_fn(|k| super::super::q8::hsum_avx2(_mm256_add_ps(acc[k], min_acc[k])))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{GgmlType, QB, QK_K, Unpacked, unpack_scales};

    /// # Safety
    /// AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI must be available; lengths as `dot_many_q8`
    /// checks them.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_q8<const N: usize>(
        ty: GgmlType,
        w: &[u8],
        d: [&[f32]; N],
        sum: [&[f32]; N],
        q: [&[i8]; N],
    ) -> [f32; N] {
        let size = ty.type_size() as usize;
        let nsb = q[0].len() / QK_K;
        // Lane i of the products sums bytes 4i..4i+4: each run of 4 lanes is one 16-element
        // group with its own scale.
        let quarters = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        let mut u = Unpacked::default();
        let mut acc = [_mm512_setzero_ps(); N];
        let mut min_acc = [_mm256_setzero_ps(); N];
        for sb in 0..nsb {
            let block = &w[sb * size..(sb + 1) * size];
            unpack_scales(ty, block, &mut u);
            // SAFETY: `block` is one whole super-block.
            unsafe { super::avx2::unpack_quants(ty, block, &mut u) };
            #[allow(clippy::needless_range_loop)]
            for k in 0..N {
                // SAFETY: as in the AVX2 twin; two 32-element groups per step.
                unsafe {
                    for b in (0..QK_K / QB).step_by(2) {
                        let wv = _mm512_loadu_si512(u.q.as_ptr().add(QB * b).cast());
                        let x = _mm512_loadu_si512(q[k].as_ptr().add(sb * QK_K + QB * b).cast());
                        // `dpbusd` multiplies unsigned by signed bytes: the weights give their
                        // sign to the activations.
                        let x = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(wv), _mm512_setzero_si512(), x);
                        let products = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(wv), x);
                        let ws = _mm_loadu_ps(u.scale.as_ptr().add(2 * b));
                        let dx = _mm_loadu_ps(d[k].as_ptr().add(sb * 16 + 2 * b));
                        let scales = _mm512_permutexvar_ps(quarters, _mm512_castps128_ps512(_mm_mul_ps(ws, dx)));
                        acc[k] = _mm512_fmadd_ps(scales, _mm512_cvtepi32_ps(products), acc[k]);
                    }
                    let sums = _mm256_loadu_ps(sum[k].as_ptr().add(sb * 8));
                    min_acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(u.min.as_ptr()), sums, min_acc[k]);
                }
            }
        }
        std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]) + super::super::q8::hsum_avx2(min_acc[k]))
    }

    /// # Safety
    /// As [`dot_q8`], for 16-bit activations (`dot_many_q16`'s lengths).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_q16<const N: usize>(
        ty: GgmlType,
        w: &[u8],
        d: [&[f32]; N],
        sum: [&[f32]; N],
        q: [&[i16]; N],
    ) -> [f32; N] {
        let size = ty.type_size() as usize;
        let nsb = q[0].len() / QK_K;
        let mut u = Unpacked::default();
        let mut acc = [_mm512_setzero_ps(); N];
        let mut min_acc = [_mm256_setzero_ps(); N];
        for sb in 0..nsb {
            let block = &w[sb * size..(sb + 1) * size];
            unpack_scales(ty, block, &mut u);
            // SAFETY: `block` is one whole super-block.
            unsafe { super::avx2::unpack_quants(ty, block, &mut u) };
            #[allow(clippy::needless_range_loop)]
            for k in 0..N {
                // SAFETY: as in the AVX2 twin; one 32-element group per step, lanes 0..8 its
                // first 16 elements and lanes 8..16 the rest.
                unsafe {
                    for b in 0..QK_K / QB {
                        let wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256(u.q.as_ptr().add(QB * b).cast()));
                        let x = _mm512_loadu_si512(q[k].as_ptr().add(sb * QK_K + QB * b).cast());
                        let products = _mm512_dpwssd_epi32(_mm512_setzero_si512(), wv, x);
                        let dx = *d[k].get_unchecked(sb * 8 + b);
                        let scales = _mm512_mask_blend_ps(
                            0xFF00,
                            _mm512_set1_ps(*u.scale.get_unchecked(2 * b) * dx),
                            _mm512_set1_ps(*u.scale.get_unchecked(2 * b + 1) * dx),
                        );
                        acc[k] = _mm512_fmadd_ps(scales, _mm512_cvtepi32_ps(products), acc[k]);
                    }
                    let sums = _mm256_loadu_ps(sum[k].as_ptr().add(sb * 8));
                    min_acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(u.min.as_ptr()), sums, min_acc[k]);
                }
            }
        }
        std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]) + super::super::q8::hsum_avx2(min_acc[k]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::q8::Q8Acts;
    use crate::cpu::q8::tests::{Rng, simd_isas};
    use crate::cpu::q16::Q16Acts;
    use crate::quant::{dequantize_row, quantize_row};

    const FORMATS: [GgmlType; 3] = [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K];
    /// The SIMD twins sum the same integers; only the f32 accumulation order differs.
    const SIMD_TOL: f32 = 1e-5;
    const F32_SLACK: f32 = 1e-3;

    /// A row of `ty` from random weights, through the reference quantizer (random bytes would
    /// make scales of any size).
    fn row(ty: GgmlType, cols: usize, rng: &mut Rng) -> Vec<u8> {
        let x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
        let mut out = vec![0u8; cols / QK_K * ty.type_size() as usize];
        quantize_row(ty, &x, &mut out).expect("quantize");
        out
    }

    #[test]
    fn simd_unpacking_matches_the_reference() {
        let mut rng = Rng(3);
        for ty in FORMATS {
            let w = row(ty, QK_K, &mut rng);
            let (mut want, mut got) = (Unpacked::default(), Unpacked::default());
            unpack_quants_ref(ty, &w, &mut want);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 was detected; `w` is one super-block.
                unsafe { avx2::unpack_quants(ty, &w, &mut got) };
                assert_eq!(want.q, got.q, "{ty}");
            }
        }
    }

    #[test]
    fn integer_dots_match_dequantized_math() {
        let cols = 3 * QK_K;
        let mut rng = Rng(17);
        for ty in FORMATS {
            for _ in 0..10 {
                let w = row(ty, cols, &mut rng);
                let mut x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
                x[rng.next() as usize % cols] *= 30.0;
                let mut wf = vec![0.0; cols];
                dequantize_row(ty, &w, &mut wf).expect("dequantize");
                let exact: f32 = wf.iter().zip(&x).map(|(a, b)| a * b).sum();
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let wsum = wf.iter().map(|w| w.abs()).sum::<f32>();
                let (mut a8, mut a16) = (Q8Acts::default(), Q16Acts::default());
                a8.quantize(&x, 1, cols);
                a16.quantize(&x, 1, cols);
                let r8 = dot_many_q8(Isa::Baseline, ty, &w, [&a8.d], [&a8.sum], [&a8.q])[0];
                let r16 = dot_many_q16(Isa::Baseline, ty, &w, [&a16.d], [&a16.sum], [&a16.q])[0];
                assert!((r8 - exact).abs() <= wsum * amax / 254.0 + F32_SLACK, "{ty} q8: {r8} vs {exact}");
                assert!((r16 - exact).abs() <= wsum * amax / 65534.0 + F32_SLACK, "{ty} q16: {r16} vs {exact}");
                for isa in simd_isas() {
                    let s8 = dot_many_q8(isa, ty, &w, [&a8.d], [&a8.sum], [&a8.q])[0];
                    let s16 = dot_many_q16(isa, ty, &w, [&a16.d], [&a16.sum], [&a16.q])[0];
                    assert!((s8 - r8).abs() <= SIMD_TOL * r8.abs().max(1.0), "{ty} {isa:?} q8: {s8} vs {r8}");
                    assert!((s16 - r16).abs() <= SIMD_TOL * r16.abs().max(1.0), "{ty} {isa:?} q16: {s16} vs {r16}");
                }
            }
        }
    }

    #[test]
    fn a_tile_of_activation_rows_matches_one_by_one() {
        let cols = 2 * QK_K;
        let mut rng = Rng(23);
        for ty in FORMATS {
            let w = row(ty, cols, &mut rng);
            let x: Vec<f32> = (0..4 * cols).map(|_| rng.f()).collect();
            let mut a8 = Q8Acts::default();
            a8.quantize(&x, 4, cols);
            let mut a16 = Q16Acts::default();
            a16.quantize(&x, 4, cols);
            for isa in std::iter::once(Isa::Baseline).chain(simd_isas()) {
                let tile8: [f32; 4] = a8.dot_rows(isa, ty, &w, 0, cols);
                let tile16: [f32; 4] = a16.dot_rows(isa, ty, &w, 0, cols);
                for t in 0..4 {
                    let [one8] = a8.dot_rows::<1>(isa, ty, &w, t, cols);
                    let [one16] = a16.dot_rows::<1>(isa, ty, &w, t, cols);
                    assert_eq!(tile8[t].to_bits(), one8.to_bits(), "{ty} {isa:?} q8 row {t}");
                    assert_eq!(tile16[t].to_bits(), one16.to_bits(), "{ty} {isa:?} q16 row {t}");
                }
            }
        }
    }
}
