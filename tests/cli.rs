//! The `realm` binary end to end on the default model: what a user types, what they see.

use std::path::PathBuf;

mod common;

use common::{default_model, realm, stdout_of};
use realm_engine::gguf::GgufFile;
use realm_engine::tokenizer::Tokenizer;
use serde_json::Value;

/// Greedy output must match the exact reference up to its first step with a margin below this.
const EXACT_MARGIN: f64 = 0.1;

fn golden(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

#[test]
fn greedy_run_prints_the_reference_continuation() {
    let tok = Tokenizer::from_gguf(&GgufFile::open(&default_model()).expect("open model")).expect("tokenizer");
    let mut failures = Vec::new();
    for r in golden("reference-f64.jsonl") {
        let margins = r["margins"].as_array().expect("margins");
        let agree = margins.iter().position(|m| m.as_f64().expect("margin") < EXACT_MARGIN).unwrap_or(margins.len());
        // The reference runs past end-of-generation tokens; `realm run` stops at the first.
        let gen_ids = ids(&r["gen_ids"]);
        let end = gen_ids[..agree].iter().position(|&id| tok.is_eog(id)).unwrap_or(agree);
        let expected = tok.decode(&gen_ids[..end]);
        let prompt = r["prompt"].as_str().expect("prompt");
        let out =
            stdout_of(&["run", "--model", "default", "--temperature", "0", "--max-tokens", "48", "--prompt", prompt]);
        if !out.starts_with(&expected) {
            failures.push(format!("{}: expected the output to begin with {expected:?}, got {out:?}", r["id"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn json_output_carries_prompt_and_generated_ids() {
    let out = stdout_of(&[
        "run",
        "--model",
        "default",
        "--temperature",
        "0",
        "--max-tokens",
        "4",
        "--json",
        "--prompt",
        "The capital of France is",
    ]);
    let v: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(ids(&v["prompt_ids"]), [504, 3575, 282, 4649, 314]);
    assert_eq!(ids(&v["ids"]).len(), 4);
    assert_eq!(ids(&v["ids"])[0], 7042, "greedy first token is \" Paris\"");
    assert!(v["text"].as_str().expect("text").starts_with(" Paris"));
    assert_eq!(v["finish_reason"], "length");
}

#[test]
fn chat_answers_the_question() {
    let out = stdout_of(&[
        "run",
        "--model",
        "default",
        "--chat",
        "--temperature",
        "0",
        "--max-tokens",
        "32",
        "--prompt",
        "What is the capital of France?",
    ]);
    assert!(out.contains("Paris"), "answer was {out:?}");
}

#[test]
fn stats_line_goes_to_stderr() {
    let out = realm(&["run", "--model", "default", "--temperature", "0", "--max-tokens", "3", "--prompt", "Hello"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for part in ["prompt 1 tokens", "generated 3 tokens", "prefill", "decode", "tok/s"] {
        assert!(err.contains(part), "stats line lacks {part:?}: {err}");
    }
}

#[test]
fn tokenize_matches_llama_cpp() {
    for r in golden("tokenize.jsonl") {
        let text = r["text"].as_str().expect("text");
        let out = stdout_of(&["tokenize", "--model", "default", text]);
        let got: Vec<u32> = serde_json::from_str(out.trim()).expect("JSON array");
        assert_eq!(got, ids(&r["ids"]), "tokenize {text:?}");
    }
}

#[test]
fn inspect_prints_metadata_and_tensors() {
    let model = default_model();
    let out = stdout_of(&["inspect", model.to_str().expect("utf-8 path")]);
    for part in [
        "gguf version 3",
        "general.architecture",
        "\"llama\"",
        "tensors (272)",
        "token_embd.weight",
        "Q8_0",
        "blk.29.ffn_down.weight",
        "Q4_1",
    ] {
        assert!(out.contains(part), "inspect output lacks {part:?}");
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00\xff\xff").expect("write");
    let out = realm(&["inspect", junk.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tensor_count") && err.contains("offset 8"), "{err}");

    let out = realm(&["run", "--model", "/nonexistent/model.gguf", "--prompt", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    let out = realm(&["run", "--model", "default", "--precision", "medium", "--prompt", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--precision"));
}

#[test]
fn fast_precision_runs_and_agrees_on_a_clear_answer() {
    let out = stdout_of(&[
        "run",
        "--model",
        "default",
        "--precision",
        "fast",
        "--temperature",
        "0",
        "--max-tokens",
        "2",
        "--prompt",
        "The capital of France is",
    ]);
    assert!(out.starts_with(" Paris"), "fast precision said {out:?}");
}

/// `realm run` with `REALM_CPU_ISA` set: its output, or `None` where this CPU lacks the set.
fn run_with_isa(isa: &str) -> Option<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_realm"))
        .env("REALM_CPU_ISA", isa)
        .args(["run", "--model", "default", "--temperature", "0", "--max-tokens", "2"])
        .args(["--prompt", "The capital of France is"])
        .output()
        .expect("run realm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("this CPU does not have it") {
        return None;
    }
    assert!(out.status.success(), "REALM_CPU_ISA={isa}: {stderr}");
    Some(String::from_utf8(out.stdout).expect("stdout is UTF-8"))
}

#[test]
fn every_cpu_instruction_set_this_machine_has_answers_paris() {
    // Each set runs other kernels: the scalar row kernels, the packed kernels' AVX2 twins with
    // and without AVX-VNNI's dot products, the AVX-512 ones.
    let mut ran = 0;
    for isa in ["baseline", "avx2", "avxvnni", "avx512"] {
        if let Some(text) = run_with_isa(isa) {
            assert!(text.starts_with(" Paris"), "REALM_CPU_ISA={isa}: {text:?}");
            ran += 1;
        }
    }
    assert!(ran >= 1, "the baseline runs everywhere");
}

#[test]
fn an_unknown_cpu_instruction_set_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_realm"))
        .env("REALM_CPU_ISA", "avx3")
        .args(["run", "--model", "default", "--max-tokens", "1", "--prompt", "Hi"])
        .output()
        .expect("run realm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("REALM_CPU_ISA=\"avx3\" is not one of avx512, avxvnni, avx2, baseline"), "{stderr}");
}
