//! `Engine::generate` on the default model: sampling, stops, cancellation, limits.

mod common;

use std::sync::OnceLock;

use realm_engine::sampler::SamplingParams;
use realm_engine::{Engine, EngineError, EngineOptions, FinishReason, GenerateParams};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::load(&common::default_model_path(), &EngineOptions::default()).expect("load"))
}

fn params(max_tokens: usize, sampling: SamplingParams) -> GenerateParams {
    GenerateParams { max_tokens, sampling, stop: Vec::new(), ignore_eos: false }
}

fn prompt() -> Vec<u32> {
    engine().encode_prompt("Once upon a time")
}

#[test]
fn same_seed_same_text_and_different_seeds_differ() {
    let run = |seed| {
        let p = params(24, SamplingParams { temperature: 1.0, seed: Some(seed), ..SamplingParams::default() });
        engine().generate(&prompt(), &p, |_| true).expect("generate").ids
    };
    assert_eq!(run(7), run(7));
    let distinct: std::collections::HashSet<_> = (1..=4).map(run).collect();
    assert!(distinct.len() > 1, "four seeds gave one continuation");
}

#[test]
fn streamed_text_is_the_whole_text() {
    let mut streamed = String::new();
    let g = engine()
        .generate(&prompt(), &params(20, SamplingParams::greedy()), |e| {
            streamed.push_str(&e.text);
            true
        })
        .expect("generate");
    assert_eq!(streamed, g.text);
    assert_eq!(g.text, engine().tokenizer.decode(&g.ids));
    assert_eq!(g.finish_reason, FinishReason::Length);
}

#[test]
fn a_stop_string_ends_generation_and_is_not_emitted() {
    let free = engine().generate(&prompt(), &params(24, SamplingParams::greedy()), |_| true).expect("generate");
    // Stop on a word from the middle of what greedy decoding produces anyway.
    let word = free.text.split_whitespace().nth(3).expect("a few words").to_string();
    let mut p = params(24, SamplingParams::greedy());
    p.stop = vec![word.clone()];
    let stopped = engine().generate(&prompt(), &p, |_| true).expect("generate");
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert!(!stopped.text.contains(&word), "{:?} still holds {word:?}", stopped.text);
    assert!(free.text.starts_with(&stopped.text));
}

#[test]
fn end_of_generation_stops_unless_ignored() {
    let chat = engine().encode_prompt("<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n");
    let g = engine().generate(&chat, &params(64, SamplingParams::greedy()), |_| true).expect("generate");
    assert_eq!(g.finish_reason, FinishReason::Stop, "{:?}", g.text);
    assert!(engine().tokenizer.is_eog(*g.ids.last().expect("a token")));
    assert!(!g.text.contains("<|im_end|>"));
    let mut p = params(g.ids.len() + 3, SamplingParams::greedy());
    p.ignore_eos = true;
    let on = engine().generate(&chat, &p, |_| true).expect("generate");
    assert_eq!(on.finish_reason, FinishReason::Length);
    assert_eq!(on.ids.len(), g.ids.len() + 3);
}

#[test]
fn the_callback_can_cancel() {
    let mut seen = 0;
    let g = engine()
        .generate(&prompt(), &params(40, SamplingParams::greedy()), |_| {
            seen += 1;
            seen < 3
        })
        .expect("generate");
    assert_eq!(g.finish_reason, FinishReason::Cancelled);
    assert_eq!(g.ids.len(), 3);
}

#[test]
fn prompts_past_the_context_are_refused_with_both_numbers() {
    let context = engine().config().context_length;
    let err = engine().generate(&prompt(), &params(context, SamplingParams::greedy()), |_| true).expect_err("too long");
    assert!(matches!(err, EngineError::ContextExceeded { .. }));
    let msg = err.to_string();
    assert!(msg.contains(&context.to_string()) && msg.contains(&prompt().len().to_string()), "{msg}");
    assert!(matches!(
        engine().generate(&[], &params(1, SamplingParams::greedy()), |_| true),
        Err(EngineError::EmptyPrompt)
    ));
}

#[test]
fn bad_sampling_parameters_are_refused_by_name() {
    let p = params(4, SamplingParams { top_p: 1.5, ..SamplingParams::default() });
    let err = engine().generate(&prompt(), &p, |_| true).expect_err("top_p 1.5");
    assert!(err.to_string().contains("top_p"), "{err}");
}
