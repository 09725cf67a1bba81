//! The exact CPU path (and the GPU backends: features `cuda` and `wgpu`) against
//! `shared/golden/reference-f64.jsonl`: a float64 forward pass of the default model's exactly
//! dequantized weights (see shared/golden/README.md).

mod common;

use std::sync::OnceLock;

use realm_engine::sampler::SamplingParams;
use realm_engine::{BackendChoice, Engine, EngineOptions, GenerateParams, Precision};
use serde_json::Value;

const STEPS: usize = 48;

/// How close a precision must come to the float64 reference.
struct Tolerance {
    /// Largest allowed difference of any checked logit.
    logit: f32,
    /// Greedy ids must agree up to the first step whose reference margin is below this.
    margin: f64,
}

/// f32 activations against a float64 pass of the same weights.
const EXACT: Tolerance = Tolerance { logit: 0.05, margin: 0.1 };
/// 8-bit activations sit about 0.5-0.7 logits from the exact pass on this 4-bit model.
const FAST: Tolerance = Tolerance { logit: 1.0, margin: 2.0 };

/// A way of running the model: the CPU at each precision, or a GPU backend (f32, so held to
/// the exact path's tolerance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Exact,
    Fast,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Cuda,
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    Wgpu,
    /// wgpu in the fast precision: f16 KV cache.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    WgpuFast,
}

/// The engine for `path`, loaded once; `None` when a GPU backend cannot start here and its
/// `REALM_REQUIRE_CUDA` / `REALM_REQUIRE_WGPU` is unset (machines without one skip its test).
fn engine(path: Path) -> Option<&'static Engine> {
    static ENGINES: [OnceLock<Result<Engine, String>>; 5] = [const { OnceLock::new() }; 5];
    let (slot, precision, backend, require) = match path {
        Path::Exact => (0, Precision::Exact, BackendChoice::Cpu, None),
        Path::Fast => (1, Precision::Fast, BackendChoice::Cpu, None),
        Path::Cuda => (2, Precision::Exact, BackendChoice::Cuda, Some("REALM_REQUIRE_CUDA")),
        Path::Wgpu => (3, Precision::Exact, BackendChoice::Wgpu, Some("REALM_REQUIRE_WGPU")),
        Path::WgpuFast => (4, Precision::Fast, BackendChoice::Wgpu, Some("REALM_REQUIRE_WGPU")),
    };
    let loaded = ENGINES[slot].get_or_init(|| {
        let options = EngineOptions { precision, backend, ..EngineOptions::default() };
        Engine::load(&common::default_model_path(), &options).map_err(|e| e.to_string())
    });
    match loaded {
        Ok(e) => Some(e),
        Err(e) if require.is_some_and(|var| std::env::var_os(var).is_none()) => {
            eprintln!("skipping: {path:?} is not usable here ({e})");
            None
        }
        Err(e) => panic!("loading the default model for {path:?}: {e}"),
    }
}

fn reference(id: &str) -> Value {
    common::golden_lines("reference-f64.jsonl")
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no reference entry {id}"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("id array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// `[[id, logit], ...]`
fn pairs(v: &Value) -> Vec<(u32, f32)> {
    v.as_array()
        .expect("pairs")
        .iter()
        .map(|p| (p[0].as_u64().expect("id") as u32, p[1].as_f64().expect("logit") as f32))
        .collect()
}

fn check_prompt(id: &str, path: Path) {
    let tol = match path {
        Path::Exact | Path::Cuda | Path::Wgpu => EXACT,
        Path::Fast | Path::WgpuFast => FAST,
    };
    let Some(engine) = engine(path) else { return };
    let r = reference(id);
    let prompt = ids(&r["prompt_ids"]);
    let gen_ref = ids(&r["gen_ids"]);
    let margins: Vec<f64> =
        r["margins"].as_array().expect("margins").iter().map(|m| m.as_f64().expect("margin")).collect();
    assert_eq!(gen_ref.len(), STEPS);
    let vocab = engine.config().vocab_size;
    let mut failures = Vec::new();

    // The prompt encodes to the reference's ids (raw prompts; chat prompts are pre-rendered).
    let text = r["prompt"].as_str().expect("prompt");
    let encoded = engine.encode_prompt(text);
    if encoded != prompt {
        failures.push(format!("prompt tokenizes to {encoded:?}, reference {prompt:?}"));
    }

    // Teacher forcing: one pass over prompt + reference continuation gives the logits at every
    // step; row prompt.len() - 1 + s is the distribution for generated token s.
    let mut forced = prompt.clone();
    forced.extend_from_slice(&gen_ref);
    let logits = engine.score(&forced).expect("score");
    let row = |s: usize| &logits[(prompt.len() - 1 + s) * vocab..(prompt.len() + s) * vocab];

    for (tok, want) in pairs(&r["top10_after_prompt"]) {
        let got = row(0)[tok as usize];
        if (got - want).abs() > tol.logit {
            failures.push(format!("after prompt: token {tok} logit {got:.4}, reference {want:.4}"));
        }
    }
    for (s, top5) in r["steps_top5"].as_array().expect("steps_top5").iter().enumerate() {
        for (tok, want) in pairs(top5) {
            let got = row(s)[tok as usize];
            if (got - want).abs() > tol.logit {
                failures.push(format!("teacher-forced step {s}: token {tok} logit {got:.4}, reference {want:.4}"));
            }
        }
    }

    // Free-running greedy decoding agrees up to the first near-tie.
    let agree = margins.iter().position(|&m| m < tol.margin).unwrap_or(STEPS);
    let params =
        GenerateParams { max_tokens: STEPS, sampling: SamplingParams::greedy(), stop: Vec::new(), ignore_eos: true };
    let generation = engine.generate(&prompt, &params, |_| true).expect("generate");
    if generation.ids[..agree] != gen_ref[..agree] {
        failures.push(format!(
            "greedy ids differ before the first near-tie (step {agree}):\n  got {:?}\n  ref {:?}",
            &generation.ids[..agree],
            &gen_ref[..agree]
        ));
    }
    assert!(failures.is_empty(), "{id} ({path:?}): {} mismatches:\n{}", failures.len(), failures.join("\n"));
}

macro_rules! golden_prompts {
    ($($exact:ident, $fast:ident => $id:literal),* $(,)?) => {
        $(
            #[test]
            fn $exact() {
                check_prompt($id, Path::Exact);
            }
            #[test]
            fn $fast() {
                check_prompt($id, Path::Fast);
            }
        )*

        /// The GPU runs every prompt in one test: the device is loaded once and the prompts
        /// run one after another.
        #[cfg(feature = "cuda")]
        #[test]
        fn cuda_matches_the_reference() {
            $(check_prompt($id, Path::Cuda);)*
        }

        /// A raw and a chat prompt: on lavapipe (CI's Vulkan, on the CPU) all eight take ten
        /// minutes of a two-core machine; the kernel tests cover every op on any adapter.
        #[cfg(feature = "wgpu")]
        #[test]
        fn wgpu_matches_the_reference() {
            for id in ["raw-1", "chat-1"] {
                check_prompt(id, Path::Wgpu);
            }
        }

        /// The fast precision on wgpu (an f16 KV cache), one chat prompt.
        #[cfg(feature = "wgpu")]
        #[test]
        fn wgpu_fast_matches_the_reference() {
            check_prompt("chat-6", Path::WgpuFast);
        }

        #[test]
        fn every_reference_prompt_has_a_test() {
            let covered = [$($id),*];
            for r in common::golden_lines("reference-f64.jsonl") {
                let id = r["id"].as_str().expect("id");
                assert!(covered.contains(&id), "reference prompt {id} has no test");
            }
        }
    };
}

golden_prompts! {
    exact_raw_1, fast_raw_1 => "raw-1",
    exact_raw_3, fast_raw_3 => "raw-3",
    exact_raw_4, fast_raw_4 => "raw-4",
    exact_raw_5, fast_raw_5 => "raw-5",
    exact_chat_1, fast_chat_1 => "chat-1",
    exact_chat_2, fast_chat_2 => "chat-2",
    exact_chat_4, fast_chat_4 => "chat-4",
    exact_chat_6, fast_chat_6 => "chat-6",
}

/// Decode steps of one sequence run as one launch on the GPU (`Backend::llama_decode_one`) give
/// the exact CPU path's logits: positions on both sides of attention's first run boundary (64),
/// and a KV cache that moves when it grows.
#[cfg(feature = "cuda")]
#[test]
fn cuda_one_launch_decode_steps_match_the_cpu() {
    use realm_engine::gguf::GgufFile;
    use realm_engine::model::{Llama, Logits, SeqStep};
    use realm_kernels::cpu::{Activations, Cpu};
    use realm_kernels::cuda::Cuda;

    let file = GgufFile::open(&common::default_model_path()).expect("open model");
    let mut gpu = match Cuda::new(0) {
        Ok(g) => g,
        Err(e) if std::env::var_os("REALM_REQUIRE_CUDA").is_none() => {
            eprintln!("skipping: CUDA is not usable here ({e})");
            return;
        }
        Err(e) => panic!("CUDA: {e}"),
    };
    assert!(gpu.set_whole_steps(true), "this GPU runs no one-launch decode step: {}", gpu.description());
    let gpu = Llama::load(&file, gpu).expect("load on the GPU");
    let cpu = Llama::load(&file, Cpu::new(2, Activations::F32).expect("cpu")).expect("load on the CPU");

    let prompt: Vec<u32> = (0..60).map(|i| 100 + 37 * i).collect();
    let (mut gc, mut cc) = (gpu.new_cache().expect("cache"), cpu.new_cache().expect("cache"));
    gpu.forward(&mut [SeqStep { cache: &mut gc, tokens: &prompt, logits: Logits::None }]).expect("GPU prefill");
    cpu.forward(&mut [SeqStep { cache: &mut cc, tokens: &prompt, logits: Logits::None }]).expect("CPU prefill");
    let before = gpu.backend().graph_stats().expect("stats").whole_steps;
    let mut token = 504u32;
    for step in 0..12 {
        let g = gpu.forward(&mut [SeqStep { cache: &mut gc, tokens: &[token], logits: Logits::Last }]).expect("GPU");
        let c = cpu.forward(&mut [SeqStep { cache: &mut cc, tokens: &[token], logits: Logits::Last }]).expect("CPU");
        let (g, c) = (&g[0], &c[0]);
        assert_eq!(g.len(), c.len());
        let (worst, at) = g
            .iter()
            .zip(c)
            .enumerate()
            .map(|(i, (a, b))| ((a - b).abs(), i))
            .fold((0.0, 0), |m, d| if d.0 > m.0 || d.0.is_nan() { d } else { m });
        assert!(worst <= EXACT.logit, "step {step} (position {}): logit {at} off by {worst}", 60 + step);
        token = realm_kernels::argmax(c).expect("a finite logit");
    }
    let after = gpu.backend().graph_stats().expect("stats").whole_steps;
    assert_eq!(after - before, 12, "every decode step ran as one launch");
    assert_eq!((gc.len(), cc.len()), (72, 72));
}
