//! Each CUDA kernel against the exact CPU backend (`gpu_conformance`); needs an NVIDIA GPU and
//! feature `cuda`. Without a GPU the tests say so and pass, unless `REALM_REQUIRE_CUDA=1`
//! (scripts/gpu-check.sh sets it), which turns a missing GPU into a failure.
#![cfg(feature = "cuda")]

mod gpu_conformance;

use std::sync::OnceLock;

use realm_kernels::cuda::Cuda;

fn gpu() -> Option<&'static Cuda> {
    static GPU: OnceLock<Result<Cuda, String>> = OnceLock::new();
    match GPU.get_or_init(|| Cuda::new(0).map_err(|e| e.to_string())) {
        Ok(c) => Some(c),
        Err(e) => {
            assert!(std::env::var_os("REALM_REQUIRE_CUDA").is_none(), "REALM_REQUIRE_CUDA is set but: {e}");
            eprintln!("skipping: no usable CUDA GPU ({e})");
            None
        }
    }
}

gpu_conformance::backend_tests!(gpu: matmul_matches_cpu_for_every_format_and_batch, embed_matches_cpu_for_every_format, rms_norm_silu_mul_add_and_gather_match_cpu, rope_matches_cpu_for_both_layouts, kv_write_and_attention_match_cpu_for_several_sequences, bad_shapes_are_errors_not_panics, fused_matmuls_match_cpu, norm_fused_matmuls_match_cpu, rope_qk_and_kv_write_many_match_cpu);
