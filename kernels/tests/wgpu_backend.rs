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

/// The same attention checks with the KV cache in f16 (`Wgpu::with_f16_kv`, the fast
/// precision's), against the CPU's fast path.
#[test]
fn f16_kv_cache_matches_the_exact_cpu_path() {
    if gpu().is_none() {
        return;
    }
    gpu_conformance::f16_kv_cache_matches_the_exact_cpu_path(&Wgpu::new().expect("adapter").with_f16_kv(true));
}
