//! Runs the official `openai` Python client's suite (tests/openai) against this build's
//! `realm serve` on the default model: real HTTP over loopback, real SSE, real signals.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn openai_python_client_against_realm_serve() {
    let model = common::default_model();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(common::python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/openai"])
        .current_dir(root)
        .env("REALM_BIN", env!("CARGO_BIN_EXE_realm"))
        .env("REALM_TEST_MODEL", &model)
        .output()
        .expect("run pytest (scripts/setup.sh installs it into .venv)");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tests/openai failed:\n{report}");
    println!("{report}");
}
