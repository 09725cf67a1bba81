//! The default model's tokenizer against llama.cpp's output in `shared/golden/`
//! (`tokenize.jsonl` from `llama-tokenize --ids --no-bos`; prompts and generated text of
//! `reference-f64.jsonl` and `greedy-llama.cpp.jsonl`).

mod common;

use std::sync::OnceLock;

use proptest::prelude::*;
use realm_engine::gguf::{Array, GgufFile, GgufWriter, Value};
use realm_engine::tokenizer::{Special, Tokenizer, TokenizerError};
use serde_json::Value as Json;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let file = GgufFile::open(&common::default_model_path()).expect("open default model");
        Tokenizer::from_gguf(&file).expect("default model's tokenizer")
    })
}

fn ids_of(v: &Json, key: &str) -> Vec<u32> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("golden line lacks {key:?}: {v}"))
        .iter()
        .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()).expect("token id"))
        .collect()
}

fn str_of<'v>(v: &'v Json, key: &str) -> &'v str {
    v[key].as_str().unwrap_or_else(|| panic!("golden line lacks {key:?}: {v}"))
}

/// `(text, ids)` pairs: every line of `tokenize.jsonl` and every prompt of the other files.
fn golden_pairs() -> Vec<(String, Vec<u32>)> {
    let mut pairs: Vec<(String, Vec<u32>)> = common::golden_lines("tokenize.jsonl")
        .iter()
        .map(|v| (str_of(v, "text").to_string(), ids_of(v, "ids")))
        .collect();
    assert!(pairs.len() >= 20, "tokenize.jsonl has only {} lines", pairs.len());
    for file in ["reference-f64.jsonl", "greedy-llama.cpp.jsonl"] {
        for v in common::golden_lines(file) {
            pairs.push((str_of(&v, "prompt").to_string(), ids_of(&v, "prompt_ids")));
        }
    }
    pairs
}

#[test]
fn encodes_and_decodes_every_golden_line() {
    let tok = tokenizer();
    let mut failures = Vec::new();
    for (text, want) in golden_pairs() {
        let got = tok.encode(&text, true);
        if got != want {
            failures.push(format!("encode {text:?}\n   got {got:?}\n  want {want:?}"));
        }
        let back = tok.decode(&want);
        if back != text {
            failures.push(format!("decode {want:?}\n   got {back:?}\n  want {text:?}"));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn decodes_llama_cpp_generations() {
    let tok = tokenizer();
    for v in common::golden_lines("greedy-llama.cpp.jsonl") {
        let mut ids = ids_of(&v, "gen_ids");
        if v["stopped_on_eog"].as_bool() == Some(true) {
            let last = ids.pop().expect("a stopped generation ends with its end-of-generation id");
            assert!(tok.is_eog(last), "{} ends with {last}, which is not end-of-generation", v["id"]);
        }
        // llama.cpp prints generations without control tokens.
        assert_eq!(tok.decode_with(&ids, Special::Skip), str_of(&v, "gen_text"), "{}", v["id"]);
        let mut stream = tok.stream_decoder();
        let streamed: String = ids.iter().map(|&id| stream.push(id)).collect::<String>() + &stream.finish();
        assert_eq!(streamed, str_of(&v, "gen_text"), "{}", v["id"]);
    }
}

#[test]
fn streaming_decode_holds_back_split_code_points() {
    let tok = tokenizer();
    let mut held_back = 0;
    for (text, ids) in golden_pairs() {
        let mut stream = tok.stream_decoder();
        let mut out = String::new();
        for &id in &ids {
            let piece = stream.push(id);
            assert!(!piece.contains('\u{FFFD}'), "{text:?}: token {id} produced a replacement character");
            held_back +=
                usize::from(piece.is_empty() && !tok.token_bytes(id, Special::Render).unwrap_or_default().is_empty());
            out.push_str(&piece);
        }
        out.push_str(&stream.finish());
        assert_eq!(out, text);
    }
    assert!(held_back > 0, "no golden line splits a code point across tokens; the emoji and CJK lines should");

    // 🙂 is four bytes spread over two tokens.
    let ids = tok.encode("🙂", false);
    assert!(ids.len() > 1, "{ids:?}");
    let mut stream = tok.stream_decoder();
    let parts: Vec<String> = ids.iter().map(|&id| stream.push(id)).collect();
    assert_eq!(parts.concat(), "🙂");
    assert!(parts[..parts.len() - 1].iter().all(String::is_empty), "{parts:?}");
}

#[test]
fn default_model_metadata() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert!(!tok.add_bos());
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.token_text(1), Some("<|im_start|>"));
    assert_eq!(tok.token_text(2), Some("<|im_end|>"));
    assert!(tok.is_eog(2) && tok.is_eog(0), "<|im_end|> and <|endoftext|> end generation");
    assert!(!tok.is_eog(1) && !tok.is_eog(198));
    assert_eq!(tok.token_text(49152), None);
    // Without parse_special, special-token text is ordinary text.
    let plain = tok.encode("<|im_start|>", false);
    assert!(plain.len() > 1 && !plain.contains(&1), "{plain:?}");
    assert_eq!(tok.decode(&plain), "<|im_start|>");
}

#[test]
fn encodes_long_text_quickly() {
    let tok = tokenizer();
    let text = "The quick brown fox jumps over the lazy dog; 日本語 🙂 1234567890!\n".repeat(2000);
    let start = std::time::Instant::now();
    let ids = tok.encode(&text, true);
    let elapsed = start.elapsed();
    assert_eq!(tok.decode(&ids), text);
    assert!(elapsed.as_secs_f64() < 5.0, "{} bytes took {elapsed:?}", text.len());
}

/// A SentencePiece vocabulary in a GGUF file, with `edit` applied to the metadata.
fn spm_file(edit: impl FnOnce(&mut GgufWriter)) -> GgufFile {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    tokens.extend((0..=255).map(|b| format!("<0x{b:02X}>")));
    tokens.extend(["\u{2581}", "h", "i", "\u{2581}h", "\u{2581}hi"].map(String::from));
    let mut types = vec![2, 3, 3];
    types.extend([6; 256]);
    types.extend([1; 5]);
    let mut scores = vec![0.0; 259];
    scores.extend([-4.0, -4.0, -4.0, -2.0, -1.0]);
    let mut w = GgufWriter::new();
    w.set("tokenizer.ggml.model", Value::String("llama".into()))
        .set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
        .set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
        .set("tokenizer.ggml.scores", Value::Array(Array::F32(scores)));
    edit(&mut w);
    GgufFile::from_vec(w.to_bytes()).expect("test file parses")
}

#[test]
fn reads_a_sentencepiece_vocabulary_from_gguf() {
    let tok = Tokenizer::from_gguf(&spm_file(|_| {})).expect("valid vocabulary");
    let ids = tok.encode("hi h!", false);
    let texts: Vec<&str> = ids.iter().filter_map(|&id| tok.token_text(id)).collect();
    assert_eq!(texts, ["\u{2581}hi", "\u{2581}h", "<0x21>"]);
    assert_eq!(tok.decode(&ids), "hi h!");
    assert!(tok.add_bos());
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));

    let tok = Tokenizer::from_gguf(&spm_file(|w| {
        w.set("tokenizer.ggml.add_bos_token", Value::Bool(false))
            .set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    }))
    .expect("valid vocabulary");
    assert!(!tok.add_bos());
    let texts: Vec<&str> = tok.encode("hi", false).iter().filter_map(|&id| tok.token_text(id)).collect();
    assert_eq!(texts, ["h", "i"]);
}

#[test]
fn bad_tokenizer_metadata_is_a_clear_error() {
    let err = |edit: fn(&mut GgufWriter)| Tokenizer::from_gguf(&spm_file(edit)).expect_err("must be refused");
    let e = err(|w| {
        w.set("tokenizer.ggml.model", Value::String("t5".into()));
    });
    assert!(matches!(e, TokenizerError::UnsupportedModel { .. }) && e.to_string().contains("\"t5\""), "{e}");
    let e = err(|w| {
        w.set("tokenizer.ggml.token_type", Value::Array(Array::F32(vec![1.0])));
    });
    assert!(e.to_string().contains("tokenizer.ggml.token_type") && e.to_string().contains("f32"), "{e}");
    let e = err(|w| {
        w.set("tokenizer.ggml.eos_token_id", Value::U32(100_000));
    });
    assert!(e.to_string().contains("tokenizer.ggml.eos_token_id = 100000"), "{e}");
    let e = err(|w| {
        w.set("tokenizer.ggml.model", Value::String("gpt2".into()))
            .set("tokenizer.ggml.pre", Value::String("mystery".into()));
    });
    assert!(e.to_string().contains("\"mystery\"") && e.to_string().contains("llama-bpe"), "{e}");
    let e = err(|w| {
        w.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    });
    assert!(matches!(e, TokenizerError::MissingMerges), "{e}");
    let e = Tokenizer::from_gguf(&GgufFile::from_vec(GgufWriter::new().to_bytes()).expect("empty file"))
        .expect_err("no vocabulary");
    assert!(e.to_string().contains("tokenizer.ggml.model"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn round_trips_arbitrary_text(s in any::<String>(), parse_special in any::<bool>()) {
        let tok = tokenizer();
        let ids = tok.encode(&s, parse_special);
        prop_assert_eq!(tok.decode(&ids), s);
    }

    #[test]
    fn round_trips_text_with_specials_and_space_runs(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("<|im_start|>".to_string()),
                Just("<|im_end|>".to_string()),
                Just("   ".to_string()),
                Just("\n\n".to_string()),
                "[a-zA-Z0-9 '.,!?]{0,12}",
                "\\PC{0,6}",
            ],
            0..12,
        )
    ) {
        let tok = tokenizer();
        let s = parts.concat();
        let ids = tok.encode(&s, true);
        prop_assert_eq!(tok.decode(&ids), s);
    }
}
