//! The engine thread on the real default model: batched sequences give what they give alone,
//! also when the KV cache is too small for all of them (admission waits, preemption
//! recomputes), cancellation frees blocks, and what cannot fit is refused.

mod common;

use std::time::{Duration, Instant};

use realm_engine::sampler::SamplingParams;
use realm_engine::worker::{EngineHandle, Event, LoadState, Request, SubmitError, WorkerConfig};
use realm_engine::{Engine, EngineOptions, FinishReason, GenerateParams, Precision};

const PROMPTS: [&str; 6] = [
    "The capital of France is",
    "Once upon a time, there was a",
    "The three primary colours are",
    "def fibonacci(n):",
    "My favourite food is",
    "Water boils at",
];

fn options() -> EngineOptions {
    EngineOptions { threads: 2, precision: Precision::Fast, ..EngineOptions::default() }
}

fn spawn(cfg: WorkerConfig) -> EngineHandle {
    let path = common::default_model_path();
    let handle = EngineHandle::spawn(move || Engine::load(&path, &options()).map_err(|e| e.to_string()), cfg)
        .expect("spawn the engine thread");
    let deadline = Instant::now() + Duration::from_secs(60);
    while matches!(handle.state(), LoadState::Loading) {
        assert!(Instant::now() < deadline, "model load timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
    handle
}

fn params(max_tokens: usize) -> GenerateParams {
    GenerateParams { max_tokens, sampling: SamplingParams::greedy(), stop: Vec::new(), ignore_eos: true }
}

fn request(engine: &Engine, prompt: &str, max_tokens: usize) -> Request {
    Request {
        prompt: engine.encode_prompt(prompt),
        params: params(max_tokens),
        logprobs: None,
        prompt_logprobs: None,
        deadline: None,
    }
}

/// Ids and finish reason of one request, read to the end.
fn drain(mut stream: realm_engine::worker::EventStream) -> (Vec<u32>, FinishReason) {
    let mut ids = Vec::new();
    loop {
        match stream.events.blocking_recv().expect("the engine ends every request with Done or Failed") {
            Event::Token { id, .. } => ids.push(id),
            Event::Done { finish_reason, completion_tokens, .. } => {
                assert_eq!(completion_tokens, ids.len());
                return (ids, finish_reason);
            }
            Event::Failed(e) => panic!("request failed: {e}"),
            Event::Text(_) | Event::PromptLogprobs(_) => {}
        }
    }
}

fn alone(engine: &Engine, max_tokens: usize) -> Vec<Vec<u32>> {
    PROMPTS
        .iter()
        .map(|p| {
            let prompt = engine.encode_prompt(p);
            engine.generate(&prompt, &params(max_tokens), |_| true).expect("generate").ids
        })
        .collect()
}

#[test]
fn batched_sequences_equal_their_solo_generations_even_when_the_kv_cache_is_short() {
    let engine = Engine::load(&common::default_model_path(), &options()).expect("load");
    let max_tokens = 24;
    let expected = alone(&engine, max_tokens);
    // Roomy: everything runs at once. Tight: about two sequences' worth of 16-position blocks,
    // so admission waits and running sequences are preempted and recomputed.
    let per_position = engine.kv_bytes_per_position();
    for (name, kv_positions, step_tokens) in [("roomy", 4096, 512), ("tight", 96, 8)] {
        let handle = spawn(WorkerConfig {
            max_batch: 6,
            step_tokens,
            block_size: 16,
            kv_cache_bytes: kv_positions * per_position,
            max_waiting: 16,
            context_limit: None,
        });
        let streams: Vec<_> =
            PROMPTS.iter().map(|p| handle.submit(request(&engine, p, max_tokens)).expect("submit")).collect();
        for ((stream, want), prompt) in streams.into_iter().zip(&expected).zip(PROMPTS) {
            let (ids, finish) = drain(stream);
            assert_eq!(finish, FinishReason::Length);
            assert_eq!(&ids, want, "{name}: {prompt:?} differs from its solo generation");
        }
        let stats = handle.stats();
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.blocks_in_use.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            assert!(Instant::now() < deadline, "{name}: blocks are still held after every request finished");
            std::thread::sleep(Duration::from_millis(2));
        }
        if name == "tight" {
            assert!(stats.preemptions.load(std::sync::atomic::Ordering::Relaxed) > 0, "the tight cache preempted");
        }
    }
}

#[test]
fn dropping_the_receiver_cancels_and_frees_the_blocks() {
    let engine = Engine::load(&common::default_model_path(), &options()).expect("load");
    let handle = spawn(WorkerConfig::default());
    let mut stream = handle.submit(request(&engine, PROMPTS[0], 4000)).expect("submit");
    let first = stream.events.blocking_recv();
    assert!(matches!(first, Some(Event::Token { .. })), "{first:?}");
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = handle.stats();
    while stats.cancelled.load(std::sync::atomic::Ordering::Relaxed) == 0
        || stats.blocks_in_use.load(std::sync::atomic::Ordering::Relaxed) > 0
    {
        assert!(Instant::now() < deadline, "the cancelled request still holds blocks");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(handle.in_flight(), 0);
    let (ids, _) = drain(handle.submit(request(&engine, PROMPTS[1], 4)).expect("submit after a cancel"));
    assert_eq!(ids.len(), 4);
}

#[test]
fn requests_that_cannot_fit_are_refused_with_the_numbers() {
    let engine = Engine::load(&common::default_model_path(), &options()).expect("load");
    let per_position = engine.kv_bytes_per_position();
    let handle = spawn(WorkerConfig { kv_cache_bytes: 64 * per_position, ..WorkerConfig::default() });
    let err = handle.submit(request(&engine, PROMPTS[0], 100)).err().expect("too long for the KV cache");
    assert!(err.to_string().contains("64 positions"), "{err}");
    let err = handle.submit(request(&engine, PROMPTS[0], 9000)).err().expect("past the context");
    assert!(matches!(err, SubmitError::ContextExceeded { max_tokens: 9000, context: 8192, .. }), "{err:?}");
    let mut empty = request(&engine, "", 4);
    empty.prompt.clear();
    assert_eq!(handle.submit(empty).err(), Some(SubmitError::EmptyPrompt));
    let mut bad = request(&engine, PROMPTS[0], 4);
    bad.prompt.push(1 << 30);
    assert!(matches!(handle.submit(bad).err(), Some(SubmitError::BadToken { .. })));
}

#[test]
fn a_full_queue_is_overload_not_a_hang() {
    let engine = Engine::load(&common::default_model_path(), &options()).expect("load");
    let handle = spawn(WorkerConfig { max_batch: 1, max_waiting: 2, ..WorkerConfig::default() });
    let held: Vec<_> = (0..3)
        .map(|i| handle.submit(request(&engine, PROMPTS[2], 2000)).unwrap_or_else(|e| panic!("{i}: {e:?}")))
        .collect();
    let err = handle.submit(request(&engine, PROMPTS[2], 2)).err().expect("the fourth is refused");
    assert!(matches!(err, SubmitError::Overloaded { .. }), "{err:?}");
    drop(held);
}

#[test]
fn a_model_that_fails_to_load_says_why() {
    let handle = EngineHandle::spawn(|| Err("no such file".to_string()), WorkerConfig::default()).expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(handle.state(), LoadState::Loading) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    let engine = Engine::load(&common::default_model_path(), &options()).expect("load");
    let err = handle.submit(request(&engine, PROMPTS[0], 1)).err().expect("refused");
    assert_eq!(err, SubmitError::LoadFailed("no such file".into()));
}
