//! Shared helpers for the engine's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model, as `scripts/test.sh` fetches it: `$REALM_TEST_MODEL`, else the model
/// cache as `realm pull` finds it (`$REALM_MODEL_CACHE`, `$XDG_CACHE_HOME/realm/models`, else
/// `~/.cache/realm/models`). A missing model fails the test:
/// a suite that skips what it cannot find proves nothing.
pub fn default_model_path() -> PathBuf {
    let path = if let Some(p) = std::env::var_os("REALM_TEST_MODEL") {
        PathBuf::from(p)
    } else if let Some(dir) = std::env::var_os("REALM_MODEL_CACHE").filter(|d| !d.is_empty()) {
        PathBuf::from(dir).join(MODEL_FILE)
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        PathBuf::from(dir).join("realm/models").join(MODEL_FILE)
    } else {
        let home = std::env::var_os("HOME").expect("HOME is set");
        PathBuf::from(home).join(".cache/realm/models").join(MODEL_FILE)
    };
    assert!(
        path.is_file(),
        "default model not found at {}: run scripts/test.sh (it fetches the model with `realm pull`)",
        path.display()
    );
    path
}

/// A file of `../shared/golden/` (the folder beside the repository root), or of
/// `$REALM_GOLDEN_DIR` where the tests run away from the checkout (a GPU machine).
pub fn golden_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("REALM_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"),
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "golden file {} is missing: the shared/ folder must sit beside the repository",
        path.display()
    );
    path
}

/// The lines of a JSONL golden file, parsed.
pub fn golden_lines(name: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(golden_path(name)).expect("read golden file");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("golden line is JSON"))
        .collect()
}
