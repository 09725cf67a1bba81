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

gpu_conformance::backend_tests!(gpu: matmul_matches_cpu_for_every_format_and_batch, embed_matches_cpu_for_every_format, rms_norm_silu_mul_add_and_gather_match_cpu, rope_matches_cpu_for_both_layouts, kv_write_and_attention_match_cpu_for_several_sequences, bad_shapes_are_errors_not_panics, fused_matmuls_match_cpu, norm_fused_matmuls_match_cpu, rope_qk_and_kv_write_many_match_cpu, argmax_rows_match_cpu, rope_kv_write_attention_matches_cpu);

/// The attention checks with the KV cache in f16 (`Cuda::with_f16_kv`), against the CPU's
/// fast path, whose cache holds f16 too.
#[test]
fn f16_kv_cache_matches_the_exact_cpu_path() {
    if gpu().is_none() {
        return;
    }
    let f16 = Cuda::new(0).expect("cuda").with_f16_kv(true);
    gpu_conformance::f16_kv_cache_matches_the_exact_cpu_path(&f16);
}

/// A run of launches submitted again with new buffers and data is replayed as a CUDA graph
/// (after the second time its shape is seen), its nodes updated, and gives what direct
/// launches give.
#[test]
fn repeated_runs_of_launches_replay_a_graph_with_new_arguments() {
    use realm_kernels::Backend;
    let Some(gpu) = gpu() else { return };
    let graphs_off = std::env::var("REALM_CUDA_GRAPHS").is_ok_and(|v| v == "0");
    let before = gpu.graph_stats().expect("stats");
    let (len, adds) = (1000, 24);
    let mut got = Vec::new();
    for round in 0..4u16 {
        // Multiples of 0.5 far below 2^23: every sum is exact, whatever the order.
        let y_host: Vec<f32> = (0..len).map(|i| f32::from(i as u16 % 997 + round) * 0.5).collect();
        let y = gpu.upload(&y_host).expect("upload");
        let mut x = gpu.zeros(len).expect("zeros");
        for _ in 0..adds {
            gpu.add(&mut x, &y, len).expect("add");
        }
        gpu.read_row(&x, 0, len, &mut got).expect("read");
        let want: Vec<f32> = y_host.iter().map(|v| v * adds as f32).collect();
        assert_eq!(got, want, "round {round}");
    }
    let after = gpu.graph_stats().expect("stats");
    if graphs_off {
        assert_eq!(after.replays, before.replays, "graphs are off but {after:?}");
    } else {
        assert!(after.built > before.built && after.replays >= before.replays + 3, "{before:?} then {after:?}");
    }
}

/// A backend that built and replayed CUDA graphs is dropped without hanging: its graphs are
/// destroyed while its context is alive (a process at exit once hung here). The drop runs on
/// a thread so a hang fails the test after a minute instead of stalling the run.
#[test]
fn a_backend_that_built_graphs_drops() {
    use realm_kernels::Backend;
    if gpu().is_none() {
        return;
    }
    let own = Cuda::new(0).expect("a second backend on the same GPU");
    let len = 256;
    let y = own.upload(&vec![1.0; len]).expect("upload");
    let mut got = Vec::new();
    for _ in 0..3 {
        let mut x = own.zeros(len).expect("zeros");
        for _ in 0..20 {
            own.add(&mut x, &y, len).expect("add");
        }
        own.read_row(&x, 0, len, &mut got).expect("read");
        assert_eq!(got, vec![20.0; len]);
    }
    let graphs_off = std::env::var("REALM_CUDA_GRAPHS").is_ok_and(|v| v == "0");
    assert!(graphs_off || own.graph_stats().expect("stats").built > 0, "no graph was built");
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The backend first and a tensor last, as a model drops it: the tensor's drop is the
        // one that tears down the launch queue and its graphs.
        drop(own);
        drop(y);
        let _ = done.send(());
    });
    finished.recv_timeout(std::time::Duration::from_secs(60)).expect("dropping the backend did not return");
}
