//! Scalar building blocks of the CPU backend, written so the compiler vectorises them.

use crate::backend::{Rope, RopeLayout};

/// Dot product with eight independent accumulators (vectorisable, and less rounding drift
/// than one running sum).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
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

pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let scale = (1.0 / (ss / x.len() as f64 + f64::from(eps)).sqrt()) as f32;
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Rotates one head in place. Angles are computed in f64 so long positions keep precision.
pub fn rope_row(head: &mut [f32], pos: u32, rope: &Rope) {
    let n_rot = rope.n_rot;
    let half = n_rot / 2;
    for i in 0..half {
        let theta = f64::from(pos) * f64::from(rope.freq_base).powf(-2.0 * i as f64 / n_rot as f64);
        let (sin, cos) = theta.sin_cos();
        let (sin, cos) = (sin as f32, cos as f32);
        let (a, b) = match rope.layout {
            RopeLayout::Normal => (2 * i, 2 * i + 1),
            RopeLayout::Neox => (i, i + half),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos - x1 * sin;
        head[b] = x0 * sin + x1 * cos;
    }
}
