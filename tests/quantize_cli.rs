//! `realm quantize` end to end on the default model: the files it writes load in Realm and in
//! gguf-py, carry the types llama.cpp's `llama-quantize --pure` would give each tensor, and
//! still answer the question.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

mod common;

use common::{default_model, python, stderr_of_failure, stdout_of};
use realm_engine::gguf::GgufFile;
use realm_kernels::GgmlType;

/// Tensor name to type name and `general.file_type`, as gguf-py's `GGUFReader` reads them.
fn read_with_gguf_py(path: &Path) -> (BTreeMap<String, String>, u64) {
    let python = python();
    assert!(python.exists(), "no Python at {}: run scripts/setup.sh", python.display());
    let script = "import json, sys\n\
                  from gguf import GGUFReader\n\
                  r = GGUFReader(sys.argv[1])\n\
                  print(json.dumps({'tensors': {t.name: t.tensor_type.name for t in r.tensors},\n\
                  'file_type': int(r.fields['general.file_type'].parts[-1][0])}))";
    let out = Command::new(&python).arg("-c").arg(script).arg(path).output().expect("run python");
    assert!(out.status.success(), "gguf-py cannot read {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let tensors = v["tensors"]
        .as_object()
        .expect("tensors")
        .iter()
        .map(|(k, t)| (k.clone(), t.as_str().expect("type name").to_string()))
        .collect();
    (tensors, v["file_type"].as_u64().expect("file_type"))
}

/// Quantizes the default model to `ty` and checks the file against its source: same
/// metadata keys and tensors, `general.file_type`, each tensor's type from `expected(name,
/// dims)`, and gguf-py's reading of it. Returns the file's greedy answer in each precision
/// asked (`fast`, `exact`).
fn quantize_and_check(
    ty: &str,
    file_type: u64,
    expected: impl Fn(&str, &[u64]) -> GgmlType,
    precisions: &[&str],
) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join(format!("model.{ty}.gguf"));
    let out_str = out_path.to_str().expect("UTF-8 path");
    let source = default_model();
    let report = stdout_of(&["quantize", source.to_str().expect("UTF-8 path"), out_str, "--type", ty]);

    let src = GgufFile::open(&source).expect("open source");
    let q = GgufFile::open(&out_path).expect("the output loads");
    assert_eq!(q.get_u64("general.file_type").expect("file_type"), file_type);
    assert_eq!(q.get_u64("general.quantization_version").expect("quantization_version"), 2);
    let keys = |f: &GgufFile| f.metadata.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&q), keys(&src), "metadata keys and their order are kept");
    assert_eq!(q.get_str("tokenizer.ggml.model").ok(), src.get_str("tokenizer.ggml.model").ok());
    assert_eq!(q.tensors.len(), src.tensors.len());
    for (t, s) in q.tensors.iter().zip(&src.tensors) {
        assert_eq!((&t.name, &t.dims), (&s.name, &s.dims), "tensor order and shapes are kept");
        assert_eq!(t.ggml_type, expected(&t.name, &t.dims), "{}", t.name);
        if t.dims.len() == 1 {
            assert_eq!(q.tensor_data(t).expect("data"), src.tensor_data(s).expect("data"), "{} is copied", t.name);
        }
        assert!(report.contains(&t.name), "the report names {}", t.name);
    }
    let summary = report.lines().last().expect("a summary line");
    assert!(
        summary.starts_with("realm: quantized") && summary.contains(" MiB") && summary.contains(" s:"),
        "{summary}"
    );

    let (py_types, py_file_type) = read_with_gguf_py(&out_path);
    let ours: BTreeMap<String, String> =
        q.tensors.iter().map(|t| (t.name.clone(), t.ggml_type.name().into())).collect();
    assert_eq!(py_types, ours, "gguf-py reads the same tensor types");
    assert_eq!(py_file_type, file_type);

    let prompt = "The capital of France is";
    let run = |precision: &str| {
        let args = ["run", "--model", out_str, "--precision", precision, "--temperature", "0", "--max-tokens", "8"];
        stdout_of(&[&args[..], &["--prompt", prompt]].concat())
    };
    precisions.iter().map(|p| run(p)).collect()
}

/// The types of a SmolLM2-135M file whose rows are 576 wide except ffn_down's 1536 (6 x 256):
/// ffn_down takes `down`, the other matrices `rest` (llama.cpp's fallback where rows are not
/// whole super-blocks), vectors F32.
fn down_and_rest(down: GgmlType, rest: GgmlType) -> impl Fn(&str, &[u64]) -> GgmlType {
    move |_, dims| match dims {
        [_] => GgmlType::F32,
        [1536, _] => down,
        _ => rest,
    }
}

#[test]
fn q8_0_file_loads_and_answers_paris() {
    let expected = |_: &str, dims: &[u64]| if dims.len() == 1 { GgmlType::F32 } else { GgmlType::Q8_0 };
    let text = &quantize_and_check("q8_0", 7, expected, &["fast"])[0];
    assert!(text.starts_with(" Paris"), "{text:?}");
}

#[test]
fn q4_k_file_falls_back_where_rows_are_not_whole_super_blocks() {
    // ffn_down takes Q4_K, the rest llama.cpp's fallback for Q4_K, Q5_0.
    let text = &quantize_and_check("q4_k", 14, down_and_rest(GgmlType::Q4K, GgmlType::Q5_0), &["fast"])[0];
    assert!(!text.trim().is_empty(), "{text:?}");
    assert!(text.starts_with(" Paris"), "{text:?}");
}

#[test]
fn q6_k_file_falls_back_where_rows_are_not_whole_super_blocks() {
    // As for Q4_K: ffn_down takes Q6_K, the rest llama.cpp's fallback for Q6_K, Q8_0. On
    // AVX-512 VNNI machines both run on the packed kernels, ffn_down with 16-bit activations.
    let text = &quantize_and_check("q6_k", 18, down_and_rest(GgmlType::Q6K, GgmlType::Q8_0), &["fast"])[0];
    assert!(text.starts_with(" Paris"), "{text:?}");
}

#[test]
fn q3_k_file_answers_as_its_exact_path_does() {
    // ffn_down takes Q3_K, the rest llama.cpp's fallback for it, Q4_0. Three bits lose
    // "Paris"; the fast path (on AVX-512 or AVX2 machines, packed Q3_K kernels) must still
    // say what the exact path, dequantizing every row, says.
    let answers = quantize_and_check("q3_k", 11, down_and_rest(GgmlType::Q3K, GgmlType::Q4_0), &["fast", "exact"]);
    assert!(!answers[1].trim().is_empty(), "{answers:?}");
    assert_eq!(answers[0], answers[1], "fast and exact greedy answers");
}

#[test]
fn unknown_type_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("x.gguf");
    let err = stderr_of_failure(&["quantize", "default", out.to_str().expect("UTF-8"), "--type", "q9_9"]);
    assert!(err.contains("invalid value 'q9_9'") && err.contains("q4_k") && err.contains("q8_0"), "{err}");
    assert!(!out.exists());
}

#[test]
fn input_that_is_not_gguf_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("notes.txt");
    std::fs::write(&input, "not a model, just some text that is long enough\n").expect("write");
    let out = dir.path().join("x.gguf");
    let err = stderr_of_failure(&[
        "quantize",
        input.to_str().expect("UTF-8"),
        out.to_str().expect("UTF-8"),
        "--type",
        "q8_0",
    ]);
    assert!(err.contains(input.to_str().expect("UTF-8")) && err.contains("GGUF"), "{err}");
    assert!(!out.exists());

    let missing = dir.path().join("missing.gguf");
    let err = stderr_of_failure(&[
        "quantize",
        missing.to_str().expect("UTF-8"),
        out.to_str().expect("UTF-8"),
        "--type",
        "q8_0",
    ]);
    assert!(err.contains(missing.to_str().expect("UTF-8")), "{err}");
}

#[test]
fn unwritable_output_is_an_error_naming_it_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("no/such/dir/x.gguf");
    let err = stderr_of_failure(&["quantize", "default", out.to_str().expect("UTF-8"), "--type", "q8_0"]);
    assert!(err.contains(out.to_str().expect("UTF-8")), "{err}");
}
