//! The GPU backends' kernel tests: each op against the exact CPU backend on fresh random inputs
//! with named tolerances, written once for any `Backend` and run by `cuda_backend.rs` and
//! `wgpu_backend.rs`. The seed is printed so a failure can be replayed with `REALM_TEST_SEED`.
#![allow(dead_code)]

use std::sync::Arc;

use realm_kernels::cpu::{Activations, Cpu};
use realm_kernels::quant::quantize_row;
use realm_kernels::{
    AttentionShape, Backend, GgmlType, Inputs, KernelError, KvLayer, QTensor, Rope, RopeLayout, SeqRows, SharedBytes,
    argmax,
};

/// Quantized matmuls: both sides dequantize the same blocks exactly and differ only in the
/// order of an f32 sum over up to 1536 products.
const MATMUL_TOL: f32 = 2e-4;
/// Element-wise ops and norms: a few f32 roundings apart.
const ELEMENTWISE_TOL: f32 = 1e-5;
/// RoPE: every backend takes the angle from f64 (CUDA computes it in f64, wgpu gets the CPU's
/// table), so only the rotation's rounding differs.
const ROPE_TOL: f32 = 1e-5;
/// Attention: softmax exponentials and sums in another order.
const ATTENTION_TOL: f32 = 1e-4;

/// The GGML formats with a fused GPU kernel.
const FORMATS: [GgmlType; 7] =
    [GgmlType::F32, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K];

fn cpu() -> Cpu {
    Cpu::new(2, Activations::F32).expect("cpu backend")
}

/// xorshift64*: enough randomness for test data, seeded per run.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Self {
        let seed = std::env::var("REALM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        });
        eprintln!("{test}: REALM_TEST_SEED={seed}");
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

fn qtensor(ty: GgmlType, rows: usize, cols: usize, values: &[f32]) -> QTensor {
    let row_bytes = ty.byte_size(cols as u64).expect("size").expect("whole blocks") as usize;
    let mut bytes = vec![0u8; rows * row_bytes];
    for (r, chunk) in bytes.chunks_mut(row_bytes).enumerate() {
        quantize_row(ty, &values[r * cols..(r + 1) * cols], chunk).expect("quantize");
    }
    let len = bytes.len();
    QTensor::new(ty, rows, cols, SharedBytes::new(Arc::new(bytes), 0, len).expect("bytes")).expect("tensor")
}

fn download<B: Backend>(g: &B, t: &B::Tensor, rows: usize, row_len: usize) -> Vec<f32> {
    let mut all = Vec::with_capacity(rows * row_len);
    let mut row = Vec::new();
    for r in 0..rows {
        g.read_row(t, r, row_len, &mut row).expect("read_row");
        all.extend_from_slice(&row);
    }
    all
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * scale, "{what}: element {i}: gpu {a} vs cpu {b} (tolerance {tol} x {scale})");
    }
}

pub fn matmul_matches_cpu_for_every_format_and_batch<B: Backend>(g: &B) {
    let c = cpu();
    let mut rng = Rng::new("matmul");
    // 67 rows leaves a partial block of warps; 512 columns are two K-quant super-blocks.
    let (rows, cols) = (67, 512);
    for ty in FORMATS {
        let w = qtensor(ty, rows, cols, &rng.vec(rows * cols));
        let (wg, wc) = (
            g.load_weight(&w, Inputs::Robust).expect("gpu weight"),
            c.load_weight(&w, Inputs::Robust).expect("cpu weight"),
        );
        for n in [1, 3, 37] {
            let x = rng.vec(n * cols);
            let mut want = c.zeros(n * rows).expect("zeros");
            c.matmul(&wc, &x, n, &mut want).expect("cpu matmul");
            let xg = g.upload(&x).expect("upload");
            let mut out = g.zeros(n * rows).expect("zeros");
            g.matmul(&wg, &xg, n, &mut out).expect("gpu matmul");
            assert_close(&format!("{ty} n={n}"), &download(g, &out, n, rows), &want, MATMUL_TOL);
        }
    }
}

pub fn embed_matches_cpu_for_every_format<B: Backend>(g: &B) {
    let c = cpu();
    let mut rng = Rng::new("embed");
    let (rows, cols) = (50, 256);
    let ids = [0u32, 49, 7, 7, 23];
    for ty in FORMATS {
        let t = qtensor(ty, rows, cols, &rng.vec(rows * cols));
        let (tg, tc) = (g.load_weight(&t, Inputs::Robust).expect("w"), c.load_weight(&t, Inputs::Robust).expect("w"));
        let mut want = c.zeros(ids.len() * cols).expect("zeros");
        c.embed(&tc, &ids, &mut want).expect("cpu embed");
        let mut out = g.zeros(ids.len() * cols).expect("zeros");
        g.embed(&tg, &ids, &mut out).expect("gpu embed");
        assert_close(&format!("embed {ty}"), &download(g, &out, ids.len(), cols), &want, ELEMENTWISE_TOL);
        let err = g.embed(&tg, &[rows as u32], &mut out);
        assert!(matches!(err, Err(KernelError::Shape { op: "embed", .. })), "an id past the table is an error");
    }
}

pub fn rms_norm_silu_mul_add_and_gather_match_cpu<B: Backend>(g: &B) {
    let c = cpu();
    let mut rng = Rng::new("elementwise");
    let (n, dim) = (5, 576);
    let w = qtensor(GgmlType::F32, 1, dim, &rng.vec(dim));
    let (wg, wc) = (g.load_weight(&w, Inputs::Robust).expect("w"), c.load_weight(&w, Inputs::Robust).expect("w"));
    let x = rng.vec(n * dim);
    let mut want = c.zeros(n * dim).expect("zeros");
    c.rms_norm(&x, &wc, 1e-5, &mut want).expect("cpu");
    let xg = g.upload(&x).expect("upload");
    let mut out = g.zeros(n * dim).expect("zeros");
    g.rms_norm(&xg, &wg, 1e-5, &mut out).expect("gpu");
    assert_close("rms_norm", &download(g, &out, n, dim), &want, ELEMENTWISE_TOL);

    let (a, b) = (rng.vec(n * dim), rng.vec(n * dim));
    let (mut ac, mut ag) = (a.clone(), g.upload(&a).expect("upload"));
    let bg = g.upload(&b).expect("upload");
    c.silu_mul(&mut ac, &b, n * dim).expect("cpu");
    g.silu_mul(&mut ag, &bg, n * dim).expect("gpu");
    assert_close("silu_mul", &download(g, &ag, n, dim), &ac, ELEMENTWISE_TOL);
    c.add(&mut ac, &b, n * dim).expect("cpu");
    g.add(&mut ag, &bg, n * dim).expect("gpu");
    assert_close("add", &download(g, &ag, n, dim), &ac, ELEMENTWISE_TOL);

    let rows = [4usize, 0, 2];
    let mut want = c.zeros(rows.len() * dim).expect("zeros");
    c.gather_rows(&ac, &rows, dim, &mut want).expect("cpu");
    let mut out = g.zeros(rows.len() * dim).expect("zeros");
    g.gather_rows(&ag, &rows, dim, &mut out).expect("gpu");
    assert_close("gather_rows", &download(g, &out, rows.len(), dim), &want, ELEMENTWISE_TOL);
}

pub fn rope_matches_cpu_for_both_layouts<B: Backend>(g: &B) {
    let c = cpu();
    let mut rng = Rng::new("rope");
    let (head_dim, heads) = (64, 9);
    let positions = [0u32, 1, 17, 511, 4000];
    for layout in [RopeLayout::Normal, RopeLayout::Neox] {
        for n_rot in [64, 32] {
            let rope = Rope { layout, freq_base: 100_000.0, n_rot };
            let x = rng.vec(positions.len() * heads * head_dim);
            let mut want = x.clone();
            c.rope(&mut want, head_dim, &positions, &rope).expect("cpu");
            let mut xg = g.upload(&x).expect("upload");
            g.rope(&mut xg, head_dim, &positions, &rope).expect("gpu");
            let got = download(g, &xg, positions.len(), heads * head_dim);
            assert_close(&format!("rope {layout:?} n_rot={n_rot}"), &got, &want, ROPE_TOL);
        }
    }
}

pub fn kv_write_and_attention_match_cpu_for_several_sequences<B: Backend>(g: &B) {
    let c = cpu();
    let mut rng = Rng::new("attention");
    // (cached positions, new tokens): a fresh prompt, a decode step deep in a sequence and a
    // prompt chunk after a cached prefix, as one continuous-batching step holds them.
    let mixed = [(0usize, 7usize), (300, 1), (40, 5)];
    // Head dims of 64 and 128 stage tiles of 64 and 32 positions on the CUDA backend.
    for shape in [
        AttentionShape { n_head: 6, n_kv_head: 2, head_dim: 64 },
        AttentionShape { n_head: 8, n_kv_head: 2, head_dim: 128 },
    ] {
        attention_case(g, &c, &mut rng, shape, &mixed);
    }
    // More decode steps than one CUDA launch takes (32 sequences), contexts of 1 to 205.
    let decode: Vec<_> = (0..35).map(|i| (i * 6, 1)).collect();
    attention_case(g, &c, &mut rng, AttentionShape { n_head: 6, n_kv_head: 2, head_dim: 64 }, &decode);
}

fn attention_case<B: Backend>(g: &B, c: &Cpu, rng: &mut Rng, shape: AttentionShape, seqs: &[(usize, usize)]) {
    let kv_len = shape.n_kv_head * shape.head_dim;
    let mut cpu_caches = Vec::new();
    let mut gpu_caches = Vec::new();
    for &(cached, _) in seqs {
        let (k, v) = (rng.vec(cached * kv_len), rng.vec(cached * kv_len));
        cpu_caches.push(KvLayer { k: k.clone(), v: v.clone() });
        gpu_caches.push(KvLayer { k: g.upload(&k).expect("k"), v: g.upload(&v).expect("v") });
    }
    append_and_attend(g, c, rng, shape, seqs, &mut cpu_caches, &mut gpu_caches, ATTENTION_TOL);
    for (i, &(cached, n)) in seqs.iter().enumerate() {
        let len = (cached + n) * kv_len;
        assert_close("k cache", &download(g, &gpu_caches[i].k, 1, len), &cpu_caches[i].k, 0.0);
        assert_close("v cache", &download(g, &gpu_caches[i].v, 1, len), &cpu_caches[i].v, 0.0);
    }
}

/// Appends each sequence's new rows (`seqs`: cached positions, new rows) to both backends'
/// caches, which hold the cached prefixes, then runs one `attention_many` over every sequence
/// on each and compares the outputs within `tol`.
#[allow(clippy::too_many_arguments)]
fn append_and_attend<B: Backend>(
    g: &B,
    c: &Cpu,
    rng: &mut Rng,
    shape: AttentionShape,
    seqs: &[(usize, usize)],
    cpu_caches: &mut [KvLayer<Vec<f32>>],
    gpu_caches: &mut [KvLayer<B::Tensor>],
    tol: f32,
) {
    let (q_len, kv_len) = (shape.n_head * shape.head_dim, shape.n_kv_head * shape.head_dim);
    let total: usize = seqs.iter().map(|s| s.1).sum();
    let (q, k, v) = (rng.vec(total * q_len), rng.vec(total * kv_len), rng.vec(total * kv_len));
    let (qg, kg, vg) = (g.upload(&q).expect("q"), g.upload(&k).expect("k"), g.upload(&v).expect("v"));
    let mut rows = Vec::new();
    let mut row = 0;
    for (i, &(cached, n)) in seqs.iter().enumerate() {
        let r = SeqRows { row, n, first_pos: cached };
        c.kv_write(cpu_caches[i].as_mut(), &k, &v, r, kv_len).expect("cpu kv_write");
        g.kv_write(gpu_caches[i].as_mut(), &kg, &vg, r, kv_len).expect("gpu kv_write");
        rows.push(r);
        row += n;
    }
    let cs: Vec<_> = cpu_caches.iter().zip(&rows).map(|(kv, r)| (kv.as_ref(), *r)).collect();
    let gs: Vec<_> = gpu_caches.iter().zip(&rows).map(|(kv, r)| (kv.as_ref(), *r)).collect();
    let mut want = c.zeros(total * q_len).expect("zeros");
    c.attention_many(&q, &cs, shape, &mut want).expect("cpu attention");
    let mut out = g.zeros(total * q_len).expect("zeros");
    g.attention_many(&qg, &gs, shape, &mut out).expect("gpu attention");
    assert_close(&format!("attention_many, head dim {}", shape.head_dim), &download(g, &out, total, q_len), &want, tol);
}

/// A backend whose KV cache holds f16 (`with_f16_kv`) against the exact CPU backend, whose
/// f32 cache keeps what the f16 one rounds: the step of
/// `kv_write_and_attention_match_cpu_for_several_sequences`, the caches grown by `kv_write`
/// from empty (an f16 cache cannot be uploaded as f32), then a decode step through
/// `rope_kv_write_attention`, and the bytes per position `kv_row_bytes` reports.
pub fn f16_kv_cache_matches_the_exact_cpu_path<B: Backend>(g: &B) {
    // Keys and values rounded to f16 (11 significant bits) against f32 ones, and f32 sums in
    // other orders.
    const F16_CACHE_TOL: f32 = 2e-3;
    let c = cpu();
    let mut rng = Rng::new("f16 kv cache");
    let seqs = [(0usize, 7usize), (300, 1), (40, 5)];
    for shape in [
        AttentionShape { n_head: 6, n_kv_head: 2, head_dim: 64 },
        AttentionShape { n_head: 8, n_kv_head: 2, head_dim: 128 },
    ] {
        let kv_len = shape.n_kv_head * shape.head_dim;
        assert_eq!(g.kv_row_bytes(kv_len), 2 * kv_len * size_of::<u16>(), "an f16 cache's bytes per position");
        let mut cpu_caches = Vec::new();
        let mut gpu_caches = Vec::new();
        for &(cached, _) in &seqs {
            let (k, v) = (rng.vec(cached * kv_len), rng.vec(cached * kv_len));
            let mut cpu_cache = KvLayer { k: c.zeros(0).expect("k"), v: c.zeros(0).expect("v") };
            let mut gpu_cache = KvLayer { k: g.zeros(0).expect("k"), v: g.zeros(0).expect("v") };
            let prefix = SeqRows { row: 0, n: cached, first_pos: 0 };
            c.kv_write(cpu_cache.as_mut(), &k, &v, prefix, kv_len).expect("cpu prefix");
            let (kg, vg) = (g.upload(&k).expect("k"), g.upload(&v).expect("v"));
            g.kv_write(gpu_cache.as_mut(), &kg, &vg, prefix, kv_len).expect("gpu prefix");
            cpu_caches.push(cpu_cache);
            gpu_caches.push(gpu_cache);
        }
        append_and_attend(g, &c, &mut rng, shape, &seqs, &mut cpu_caches, &mut gpu_caches, F16_CACHE_TOL);
        // Then a decode step through `rope_kv_write_attention`, which a GPU runs as one launch
        // that appends the rotated key and the value to the f16 caches itself.
        let rope = Rope { layout: RopeLayout::Neox, freq_base: 10_000.0, n_rot: shape.head_dim };
        let q_len = shape.n_head * shape.head_dim;
        let rows: Vec<SeqRows> =
            seqs.iter().enumerate().map(|(i, &(cached, n))| SeqRows { row: i, n: 1, first_pos: cached + n }).collect();
        let positions: Vec<u32> = rows.iter().map(|r| r.first_pos as u32).collect();
        let (q, k, v) = (rng.vec(rows.len() * q_len), rng.vec(rows.len() * kv_len), rng.vec(rows.len() * kv_len));
        let (mut cq, mut ck) = (q.clone(), k.clone());
        let mut want = c.zeros(rows.len() * q_len).expect("zeros");
        let mut cw: Vec<_> = cpu_caches.iter_mut().zip(&rows).map(|(kv, r)| (kv.as_mut(), *r)).collect();
        c.rope_kv_write_attention(&mut cq, &mut ck, &v, &positions, &rope, &mut cw, shape, &mut want).expect("cpu");
        let (mut gq, mut gk, vg) = (g.upload(&q).expect("q"), g.upload(&k).expect("k"), g.upload(&v).expect("v"));
        let mut out = g.zeros(rows.len() * q_len).expect("zeros");
        let mut gw: Vec<_> = gpu_caches.iter_mut().zip(&rows).map(|(kv, r)| (kv.as_mut(), *r)).collect();
        g.rope_kv_write_attention(&mut gq, &mut gk, &vg, &positions, &rope, &mut gw, shape, &mut out).expect("gpu");
        let label = format!("decode step over f16 caches, head dim {}", shape.head_dim);
        assert_close(&label, &download(g, &out, rows.len(), q_len), &want, F16_CACHE_TOL);
    }
}

pub fn bad_shapes_are_errors_not_panics<B: Backend>(g: &B) {
    let w = qtensor(GgmlType::Q4_1, 8, 64, &[0.5; 8 * 64]);
    let wg = g.load_weight(&w, Inputs::Robust).expect("w");
    let x = g.upload(&[1.0; 64]).expect("x");
    let mut out = g.zeros(4).expect("zeros");
    assert!(matches!(g.matmul(&wg, &x, 1, &mut out), Err(KernelError::Shape { op: "matmul", .. })));
    let mut big = g.zeros(8).expect("zeros");
    assert!(matches!(g.matmul(&wg, &x, 2, &mut big), Err(KernelError::Shape { op: "matmul", .. })));
}

pub fn fused_matmuls_match_cpu<B: Backend>(g: &B) {
    let c = cpu();
    let mut rng = Rng::new("fused");
    let (dim, kv, ffn, n) = (256, 64, 512, 5);
    let load = |rows: usize, rng: &mut Rng| {
        let t = qtensor(GgmlType::Q4_1, rows, dim, &rng.vec(rows * dim));
        (g.load_weight(&t, Inputs::Robust).expect("w"), c.load_weight(&t, Inputs::Robust).expect("w"))
    };
    let (wq, wk, wv) = (load(dim, &mut rng), load(kv, &mut rng), load(kv, &mut rng));
    let x = rng.vec(n * dim);
    let xg = g.upload(&x).expect("x");
    // Q, K and V from one launch.
    let (mut cq, mut ck, mut cv) = (vec![0.0; n * dim], vec![0.0; n * kv], vec![0.0; n * kv]);
    c.matmuls(&x, n, &mut [(&wq.1, &mut cq), (&wk.1, &mut ck), (&wv.1, &mut cv)]).expect("cpu");
    let (mut gq, mut gk, mut gv) =
        (g.zeros(n * dim).expect("z"), g.zeros(n * kv).expect("z"), g.zeros(n * kv).expect("z"));
    g.matmuls(&xg, n, &mut [(&wq.0, &mut gq), (&wk.0, &mut gk), (&wv.0, &mut gv)]).expect("gpu");
    assert_close("q", &download(g, &gq, n, dim), &cq, MATMUL_TOL);
    assert_close("k", &download(g, &gk, n, kv), &ck, MATMUL_TOL);
    assert_close("v", &download(g, &gv, n, kv), &cv, MATMUL_TOL);
    // The residual add fused into a projection.
    let resid = rng.vec(n * dim);
    let (mut cr, mut scratch) = (resid.clone(), vec![0.0; n * dim]);
    c.matmul_add(&wq.1, &x, n, &mut cr, &mut scratch).expect("cpu");
    let (mut gr, mut gs) = (g.upload(&resid).expect("r"), g.zeros(n * dim).expect("z"));
    g.matmul_add(&wq.0, &xg, n, &mut gr, &mut gs).expect("gpu");
    assert_close("matmul_add", &download(g, &gr, n, dim), &cr, MATMUL_TOL);
    // SwiGLU from gate and up in one launch.
    let (gate, up) = (load(ffn, &mut rng), load(ffn, &mut rng));
    let (mut co, mut cs) = (vec![0.0; n * ffn], vec![0.0; n * ffn]);
    c.matmul_swiglu(&x, n, &gate.1, &up.1, &mut co, &mut cs).expect("cpu");
    let (mut go, mut gsc) = (g.zeros(n * ffn).expect("z"), g.zeros(n * ffn).expect("z"));
    g.matmul_swiglu(&xg, n, &gate.0, &up.0, &mut go, &mut gsc).expect("gpu");
    let mut rows = Vec::new();
    g.read_rows(&go, 0..n, ffn, &mut rows).expect("read_rows");
    assert_close("matmul_swiglu", &rows, &co, MATMUL_TOL);
}

/// RMSNorm fused into the products (Q/K/V and SwiGLU) against the CPU's norm, then products.
pub fn norm_fused_matmuls_match_cpu<B: Backend>(g: &B) {
    let c = cpu();
    let mut rng = Rng::new("norm fused");
    let (dim, kv, ffn) = (512, 64, 256);
    let nw = qtensor(GgmlType::F32, 1, dim, &rng.vec(dim));
    let (ng, nc) = (g.load_weight(&nw, Inputs::Robust).expect("w"), c.load_weight(&nw, Inputs::Robust).expect("w"));
    for ty in FORMATS {
        let mut load = |rows: usize| {
            let t = qtensor(ty, rows, dim, &rng.vec(rows * dim));
            (g.load_weight(&t, Inputs::Robust).expect("w"), c.load_weight(&t, Inputs::Robust).expect("w"))
        };
        let (wq, wk, gate, up) = (load(dim), load(kv), load(ffn), load(ffn));
        // 9 rows take two tiles of input rows on the CUDA backend.
        for n in [1, 9] {
            let x: Vec<f32> = rng.vec(n * dim).iter().map(|v| 3.0 * v).collect();
            let xg = g.upload(&x).expect("x");
            let (mut cq, mut ck, mut cn) = (vec![0.0; n * dim], vec![0.0; n * kv], vec![0.0; n * dim]);
            c.norm_matmuls(&x, &nc, 1e-5, n, &mut [(&wq.1, &mut cq), (&wk.1, &mut ck)], &mut cn).expect("cpu");
            let (mut gq, mut gk) = (g.zeros(n * dim).expect("z"), g.zeros(n * kv).expect("z"));
            let mut gn = g.zeros(n * dim).expect("z");
            g.norm_matmuls(&xg, &ng, 1e-5, n, &mut [(&wq.0, &mut gq), (&wk.0, &mut gk)], &mut gn).expect("gpu");
            assert_close(&format!("{ty} n={n} normed q"), &download(g, &gq, n, dim), &cq, MATMUL_TOL);
            assert_close(&format!("{ty} n={n} normed k"), &download(g, &gk, n, kv), &ck, MATMUL_TOL);
            let (mut co, mut cs) = (vec![0.0; n * ffn], vec![0.0; n * ffn]);
            c.norm_matmul_swiglu(&x, &nc, 1e-5, n, &gate.1, &up.1, &mut co, &mut cs, &mut cn).expect("cpu");
            let (mut go, mut gs) = (g.zeros(n * ffn).expect("z"), g.zeros(n * ffn).expect("z"));
            g.norm_matmul_swiglu(&xg, &ng, 1e-5, n, &gate.0, &up.0, &mut go, &mut gs, &mut gn).expect("gpu");
            assert_close(&format!("{ty} n={n} normed swiglu"), &download(g, &go, n, ffn), &co, MATMUL_TOL);
        }
    }
}

pub fn rope_qk_and_kv_write_many_match_cpu<B: Backend>(g: &B) {
    let c = cpu();
    let mut rng = Rng::new("rope_qk");
    let (head_dim, q_len, kv_len) = (64, 9 * 64, 3 * 64);
    let positions = [5u32, 6, 7, 300];
    let rope = Rope { layout: RopeLayout::Neox, freq_base: 10_000.0, n_rot: 64 };
    let (q, k, v) = (rng.vec(4 * q_len), rng.vec(4 * kv_len), rng.vec(4 * kv_len));
    let (mut cq, mut ck) = (q.clone(), k.clone());
    c.rope_qk(&mut cq, &mut ck, head_dim, &positions, &rope).expect("cpu");
    let (mut gq, mut gk) = (g.upload(&q).expect("q"), g.upload(&k).expect("k"));
    g.rope_qk(&mut gq, &mut gk, head_dim, &positions, &rope).expect("gpu");
    assert_close("rope q", &download(g, &gq, 4, q_len), &cq, ROPE_TOL);
    assert_close("rope k", &download(g, &gk, 4, kv_len), &ck, ROPE_TOL);
    // Rows 0..3 continue a 5-position sequence, row 3 a 300-position one.
    let prior = [5usize, 300];
    let mut cpu_caches: Vec<KvLayer<Vec<f32>>> =
        prior.iter().map(|&p| KvLayer { k: rng.vec(p * kv_len), v: rng.vec(p * kv_len) }).collect();
    let mut gpu_caches: Vec<_> = cpu_caches
        .iter()
        .map(|kv| KvLayer { k: g.upload(&kv.k).expect("k"), v: g.upload(&kv.v).expect("v") })
        .collect();
    let rows = [SeqRows { row: 0, n: 3, first_pos: 5 }, SeqRows { row: 3, n: 1, first_pos: 300 }];
    let mut cw: Vec<_> = cpu_caches.iter_mut().zip(rows).map(|(kv, r)| (kv.as_mut(), r)).collect();
    c.kv_write_many(&mut cw, &ck, &v, kv_len).expect("cpu");
    let vg = g.upload(&v).expect("v");
    let mut gw: Vec<_> = gpu_caches.iter_mut().zip(rows).map(|(kv, r)| (kv.as_mut(), r)).collect();
    g.kv_write_many(&mut gw, &gk, &vg, kv_len).expect("gpu");
    for (i, (cc, gc)) in cpu_caches.iter().zip(&gpu_caches).enumerate() {
        assert_close(&format!("k cache {i}"), &download(g, &gc.k, 1, cc.k.len()), &cc.k, ROPE_TOL);
        assert_close(&format!("v cache {i}"), &download(g, &gc.v, 1, cc.v.len()), &cc.v, 0.0);
    }

    // The same rotation and writes fused (one launch on the CUDA backend), onto fresh caches.
    let dims = (head_dim, q_len, kv_len);
    rope_kv_write_case(g, &c, &mut rng, "fused", &prior, &rows, &positions, &rope, dims);
    // A decode step of more sequences than one CUDA launch takes (32), one new row each.
    let prior: Vec<usize> = (0..35).map(|i| 3 * i + 1).collect();
    let positions: Vec<u32> = prior.iter().map(|&p| p as u32).collect();
    let rows: Vec<_> = prior.iter().enumerate().map(|(i, &p)| SeqRows { row: i, n: 1, first_pos: p }).collect();
    rope_kv_write_case(g, &c, &mut rng, "35 sequences", &prior, &rows, &positions, &rope, dims);
}

/// `rope_kv_write` of fresh random rows into fresh caches of `prior` positions each, against
/// the CPU's; `dims` is (head dim, query row, key row).
#[allow(clippy::too_many_arguments)]
fn rope_kv_write_case<B: Backend>(
    g: &B,
    c: &Cpu,
    rng: &mut Rng,
    label: &str,
    prior: &[usize],
    rows: &[SeqRows],
    positions: &[u32],
    rope: &Rope,
    (head_dim, q_len, kv_len): (usize, usize, usize),
) {
    let n = positions.len();
    let (q, k, v) = (rng.vec(n * q_len), rng.vec(n * kv_len), rng.vec(n * kv_len));
    let mut cpu_caches: Vec<_> =
        prior.iter().map(|&p| KvLayer { k: rng.vec(p * kv_len), v: rng.vec(p * kv_len) }).collect();
    let mut gpu_caches: Vec<_> = cpu_caches
        .iter()
        .map(|kv| KvLayer { k: g.upload(&kv.k).expect("k"), v: g.upload(&kv.v).expect("v") })
        .collect();
    let (mut cq, mut ck) = (q.clone(), k.clone());
    let mut cw: Vec<_> = cpu_caches.iter_mut().zip(rows).map(|(kv, r)| (kv.as_mut(), *r)).collect();
    c.rope_kv_write(&mut cq, &mut ck, &v, head_dim, positions, rope, &mut cw, kv_len).expect("cpu");
    let (mut gq, mut gk, vg) = (g.upload(&q).expect("q"), g.upload(&k).expect("k"), g.upload(&v).expect("v"));
    let mut gw: Vec<_> = gpu_caches.iter_mut().zip(rows).map(|(kv, r)| (kv.as_mut(), *r)).collect();
    g.rope_kv_write(&mut gq, &mut gk, &vg, head_dim, positions, rope, &mut gw, kv_len).expect("gpu");
    assert_close(&format!("{label}: rope q"), &download(g, &gq, n, q_len), &cq, ROPE_TOL);
    for (i, (cc, gc)) in cpu_caches.iter().zip(&gpu_caches).enumerate() {
        assert_close(&format!("{label}: k cache {i}"), &download(g, &gc.k, 1, cc.k.len()), &cc.k, ROPE_TOL);
        assert_close(&format!("{label}: v cache {i}"), &download(g, &gc.v, 1, cc.v.len()), &cc.v, 0.0);
    }
}

/// One `#[test]` per conformance check, each running it on the backend `$gpu()` returns (or
/// skipping when it returns `None`).
macro_rules! backend_tests {
    ($gpu:ident: $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if let Some(g) = $gpu() {
                    gpu_conformance::$name(g);
                }
            }
        )*
    };
}
pub(crate) use backend_tests;

/// Greedy sampling where the logits are: each row's argmax is the host's [`argmax`] of it,
/// over a vocabulary-sized row, rows with ties between threads' elements, NaN and -inf, and a
/// row with nothing finite.
pub fn argmax_rows_match_cpu<B: Backend>(g: &B) {
    let mut rng = Rng::new("argmax_rows");
    let vocab = 49_152 + 7;
    let mut rows: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(vocab)).collect();
    // The maximum twice, far apart (the lower index must win), and NaN above it.
    let top = (rng.next() % vocab as u64) as usize;
    rows[1][top] = 5.0;
    rows[1][(top + vocab / 2) % vocab] = 5.0;
    rows[1][(top + 17) % vocab] = f32::NAN;
    // Only NaN and -inf but one small value.
    rows[2] = (0..vocab).map(|i| if i % 2 == 0 { f32::NAN } else { f32::NEG_INFINITY }).collect();
    rows[2][vocab - 1] = -7.0;
    rows[3] = vec![f32::NEG_INFINITY; vocab];
    rows[3][3] = f32::NAN;
    let flat: Vec<f32> = rows.concat();
    let t = g.upload(&flat).expect("upload");
    let want: Vec<Option<u32>> = rows.iter().map(|r| argmax(r)).collect();
    assert_eq!(want[3], None, "the all -inf row has no argmax");
    assert_eq!(g.argmax_rows(&t, rows.len(), vocab).expect("argmax_rows"), want);
    assert_eq!(g.argmax_rows(&t, 1, vocab).expect("one row"), want[..1]);
    assert!(g.argmax_rows(&t, rows.len() + 1, vocab).is_err(), "a row past the tensor is an error");
}

/// A step's RoPE, KV append and attention as one op (one launch per 32 sequences on the CUDA
/// backend for a decode step) against the CPU's rope_kv_write then attention_many: decode steps
/// whose new position falls in the first, a middle or the last run of the context, both RoPE
/// layouts, head dims 64 and 128, more sequences than one launch takes, and a step with prompt
/// rows (which takes the two-op path).
pub fn rope_kv_write_attention_matches_cpu<B: Backend>(g: &B) {
    let c = cpu();
    let mut rng = Rng::new("rope_kv_write_attention");
    let decode = |prior: &[usize]| -> Vec<(usize, usize)> { prior.iter().map(|&p| (p, 1)).collect() };
    // (label, shape, RoPE layout, (cached positions, new rows) per sequence)
    type Case = (&'static str, AttentionShape, RopeLayout, Vec<(usize, usize)>);
    let cases: [Case; 4] = [
        (
            "decode, neox",
            AttentionShape { n_head: 9, n_kv_head: 3, head_dim: 64 },
            RopeLayout::Neox,
            decode(&[0, 5, 70, 300]),
        ),
        (
            "decode, normal",
            AttentionShape { n_head: 8, n_kv_head: 2, head_dim: 128 },
            RopeLayout::Normal,
            decode(&[1, 130]),
        ),
        (
            "35 sequences",
            AttentionShape { n_head: 6, n_kv_head: 2, head_dim: 64 },
            RopeLayout::Neox,
            decode(&(0..35).map(|i| 4 * i).collect::<Vec<_>>()),
        ),
        (
            "prompt rows",
            AttentionShape { n_head: 6, n_kv_head: 2, head_dim: 64 },
            RopeLayout::Neox,
            vec![(0, 7), (40, 1), (12, 3)],
        ),
    ];
    for (label, shape, layout, seqs) in cases {
        let rope = Rope { layout, freq_base: 10_000.0, n_rot: shape.head_dim };
        let (q_len, kv_len) = (shape.n_head * shape.head_dim, shape.n_kv_head * shape.head_dim);
        let total: usize = seqs.iter().map(|s| s.1).sum();
        let (q, k, v) = (rng.vec(total * q_len), rng.vec(total * kv_len), rng.vec(total * kv_len));
        let mut rows = Vec::new();
        let mut positions = Vec::new();
        for &(prior, n) in &seqs {
            rows.push(SeqRows { row: positions.len(), n, first_pos: prior });
            positions.extend((prior..prior + n).map(|p| p as u32));
        }
        let mut cpu_caches: Vec<_> =
            seqs.iter().map(|&(p, _)| KvLayer { k: rng.vec(p * kv_len), v: rng.vec(p * kv_len) }).collect();
        let mut gpu_caches: Vec<_> = cpu_caches
            .iter()
            .map(|kv| KvLayer { k: g.upload(&kv.k).expect("k"), v: g.upload(&kv.v).expect("v") })
            .collect();
        let (mut cq, mut ck) = (q.clone(), k.clone());
        let mut want = c.zeros(total * q_len).expect("zeros");
        let mut cw: Vec<_> = cpu_caches.iter_mut().zip(&rows).map(|(kv, r)| (kv.as_mut(), *r)).collect();
        c.rope_kv_write_attention(&mut cq, &mut ck, &v, &positions, &rope, &mut cw, shape, &mut want).expect("cpu");
        let (mut gq, mut gk, vg) = (g.upload(&q).expect("q"), g.upload(&k).expect("k"), g.upload(&v).expect("v"));
        let mut out = g.zeros(total * q_len).expect("zeros");
        let mut gw: Vec<_> = gpu_caches.iter_mut().zip(&rows).map(|(kv, r)| (kv.as_mut(), *r)).collect();
        g.rope_kv_write_attention(&mut gq, &mut gk, &vg, &positions, &rope, &mut gw, shape, &mut out).expect("gpu");
        assert_close(&format!("{label}: attention"), &download(g, &out, total, q_len), &want, ATTENTION_TOL);
        for (i, (cc, gc)) in cpu_caches.iter().zip(&gpu_caches).enumerate() {
            assert_close(&format!("{label}: k cache {i}"), &download(g, &gc.k, 1, cc.k.len()), &cc.k, ROPE_TOL);
            assert_close(&format!("{label}: v cache {i}"), &download(g, &gc.v, 1, cc.v.len()), &cc.v, 0.0);
        }
    }
}
