//! Each WGSL kernel against the exact CPU backend (`gpu_conformance`), on whatever adapter wgpu
//! finds: a GPU, or lavapipe (Mesa's CPU Vulkan driver, which scripts/setup-vulkan.sh installs
//! for CI). Without an adapter the tests say so and pass, unless `REALM_REQUIRE_WGPU=1`
//! (scripts/test.sh sets it), which turns a missing adapter into a failure.
#![cfg(feature = "wgpu")]

mod gpu_conformance;

use std::sync::OnceLock;

use realm_kernels::wgpu::Wgpu;

fn gpu() -> Option<&'static Wgpu> {
    static GPU: OnceLock<Result<Wgpu, String>> = OnceLock::new();
    match GPU.get_or_init(|| Wgpu::new().map_err(|e| e.to_string())) {
        Ok(w) => {
            eprintln!("adapter: {}", w.adapter_name());
            Some(w)
        }
        Err(e) => {
            assert!(std::env::var_os("REALM_REQUIRE_WGPU").is_none(), "REALM_REQUIRE_WGPU is set but: {e}");
            eprintln!("skipping: no wgpu adapter ({e})");
            None
        }
    }
}

gpu_conformance::backend_tests!(gpu: matmul_matches_cpu_for_every_format_and_batch, embed_matches_cpu_for_every_format, rms_norm_silu_mul_add_and_gather_match_cpu, rope_matches_cpu_for_both_layouts, kv_write_and_attention_match_cpu_for_several_sequences, bad_shapes_are_errors_not_panics, fused_matmuls_match_cpu, norm_fused_matmuls_match_cpu, rope_qk_and_kv_write_many_match_cpu, argmax_rows_match_cpu, rope_kv_write_attention_matches_cpu);

/// A cache of f16 (`Wgpu::with_f16_kv`) against the CPU backend's fast path, whose caches hold
/// f16 too and whose attention is exact math on the rounded rows: several sequences of one
/// step (a fresh prompt, a decode step deep in a sequence, a prompt chunk after a cached
/// prefix), both head sizes, caches grown by `kv_write` from empty, and the cache's size as
/// `kv_row_bytes` reports it.
#[test]
fn an_f16_kv_cache_attends_as_the_cpu_does_on_rounded_rows() {
    use realm_kernels::cpu::{Activations, Cpu};
    use realm_kernels::{AttentionShape, Backend, KvLayer, SeqRows};
    // f32 sums in other orders, and f16 roundings of ties that may differ.
    const TOL: f32 = 1e-3;
    if gpu().is_none() {
        return;
    }
    let g = Wgpu::new().expect("adapter").with_f16_kv(true);
    let c = Cpu::new(2, Activations::Q8).expect("cpu");
    let seqs = [(0usize, 7usize), (300, 1), (40, 5)];
    for shape in [
        AttentionShape { n_head: 6, n_kv_head: 2, head_dim: 64 },
        AttentionShape { n_head: 8, n_kv_head: 2, head_dim: 128 },
    ] {
        let (q_len, kv_len) = (shape.n_head * shape.head_dim, shape.n_kv_head * shape.head_dim);
        assert_eq!(g.kv_row_bytes(kv_len), c.kv_row_bytes(kv_len), "f16 keys and values");
        let data = |len: usize, seed: f32| -> Vec<f32> { (0..len).map(|i| (i as f32 * seed).sin() * 2.0).collect() };
        let mut cpu_caches = Vec::new();
        let mut gpu_caches = Vec::new();
        for (s, &(cached, _)) in seqs.iter().enumerate() {
            let (k, v) = (data(cached * kv_len, 0.37 + s as f32), data(cached * kv_len, 0.11 + s as f32));
            let mut cpu_cache = KvLayer { k: c.zeros(0).expect("k"), v: c.zeros(0).expect("v") };
            let mut gpu_cache = KvLayer { k: g.zeros(0).expect("k"), v: g.zeros(0).expect("v") };
            let prefix = SeqRows { row: 0, n: cached, first_pos: 0 };
            c.kv_write(cpu_cache.as_mut(), &k, &v, prefix, kv_len).expect("cpu prefix");
            let (kg, vg) = (g.upload(&k).expect("k"), g.upload(&v).expect("v"));
            g.kv_write(gpu_cache.as_mut(), &kg, &vg, prefix, kv_len).expect("gpu prefix");
            cpu_caches.push(cpu_cache);
            gpu_caches.push(gpu_cache);
        }
        let total: usize = seqs.iter().map(|s| s.1).sum();
        let (q, k, v) = (data(total * q_len, 0.7), data(total * kv_len, 1.3), data(total * kv_len, 0.4));
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
        let mut got = Vec::new();
        let mut line = Vec::new();
        for r in 0..total {
            g.read_row(&out, r, q_len, &mut line).expect("read_row");
            got.extend_from_slice(&line);
        }
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= TOL * b.abs().max(1.0), "head dim {}, [{i}]: {a} vs {b}", shape.head_dim);
        }
    }
}
