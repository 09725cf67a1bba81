//! Shared helpers for realm-http's integration tests.
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
