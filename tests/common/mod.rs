//! Shared helpers for the `realm` binary's end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn realm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_realm")).args(args).output().expect("run realm")
}

/// Stdout of a run that must succeed.
pub fn stdout_of(args: &[&str]) -> String {
    let out = realm(args);
    assert!(out.status.success(), "realm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Stderr of a run that must fail.
pub fn stderr_of_failure(args: &[&str]) -> String {
    let out = realm(args);
    assert!(!out.status.success(), "realm {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The default model's path, through the CLI's own cache lookup (`realm pull` is idempotent).
pub fn default_model() -> PathBuf {
    let out = realm(&["pull"]);
    assert!(out.status.success(), "realm pull failed: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = stderr.rfind(" at ").expect("pull names the path");
    PathBuf::from(stderr[at + 4..].split_whitespace().next().expect("path"))
}

/// The venv Python `scripts/setup.sh` makes, or `$REALM_PYTHON`.
pub fn python() -> PathBuf {
    match std::env::var_os("REALM_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    }
}
