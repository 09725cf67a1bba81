//! Scalar building blocks of the CPU backend, written so the compiler vectorises them.

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
pub(super) fn dot_body(a: &[f32], b: &[f32]) -> f32 {
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
pub(super) fn axpy_body(w: f32, v: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += w * x;
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

/// [`rms_norm_row`] of every row of `x` (rows as long as `w`) into `out`.
pub fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (x, out) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        rms_norm_row(x, w, eps, out);
    }
}

/// `sum += product`, element by element (a residual connection).
pub fn add_into(sum: &mut [f32], product: &[f32]) {
    for (s, &p) in sum.iter_mut().zip(product) {
        *s += p;
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
}
