//! `realm bench --json` on the default model: every field there, every number sane. No timing
//! thresholds: this checks the report, not the machine.

use std::process::Command;

use serde_json::Value;

fn number(v: &Value, path: &str) -> f64 {
    let x = path.split('.').fold(v, |v, key| &v[key]);
    x.as_f64().unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

fn positive(v: &Value, path: &str) -> f64 {
    let x = number(v, path);
    assert!(x.is_finite() && x > 0.0, "{path} = {x} is not positive and finite");
    x
}

#[test]
fn bench_json_reports_speed_memory_and_the_bandwidth_floor() {
    let out = Command::new(env!("CARGO_BIN_EXE_realm"))
        .args(["bench", "--model", "default", "--prompt-tokens", "8", "--gen-tokens", "4", "--repeat", "1", "--json"])
        .output()
        .expect("run realm");
    assert!(out.status.success(), "realm bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let v: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");

    assert!(v["model"].as_str().is_some_and(|m| m.ends_with(".gguf")), "model: {}", v["model"]);
    assert_eq!(v["precision"], "fast", "benchmarks default to the fast path");
    assert_eq!(v["repeat"], 1);
    let model_bytes = positive(&v, "model_bytes");
    assert!(positive(&v, "threads") >= 1.0);
    let weights = positive(&v, "weight_bytes_per_token");
    assert!(weights <= model_bytes, "a decode step reads at most the file's tensors: {weights} > {model_bytes}");
    let kv = positive(&v, "kv_bytes_per_position");
    let best = positive(&v, "read_bandwidth_gb_s");
    assert!(positive(&v, "read_bandwidth_median_gb_s") <= best);
    assert!(positive(&v, "peak_rss_bytes") > 0.0);

    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(r["prompt_tokens"], 8);
    assert_eq!(r["gen_tokens"], 4);
    for stat in ["prefill_tok_s", "ttft_ms", "decode_tok_s"] {
        let (min, med, max) = (
            positive(r, &format!("{stat}.min")),
            positive(r, &format!("{stat}.median")),
            positive(r, &format!("{stat}.max")),
        );
        assert!(min <= med && med <= max, "{stat}: min {min}, median {med}, max {max}");
    }
    let bytes = positive(r, "decode_bytes_per_token");
    assert!(bytes > weights && bytes <= weights + kv * 12.0, "decode bytes {bytes} vs weights {weights}, kv {kv}");
    positive(r, "decode_floor_tok_s");
    positive(r, "decode_floor_share");
    // Each row's probes are among those the top-level best is the best of.
    assert!(positive(r, "read_bandwidth_gb_s") <= best);
}
