//! Shared helpers for the kernels' reference tests.

use std::path::{Path, PathBuf};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv Python `scripts/setup.sh` makes, or `$REALM_PYTHON`.
pub fn python() -> PathBuf {
    match std::env::var_os("REALM_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join(".venv/bin/python"),
    }
}
