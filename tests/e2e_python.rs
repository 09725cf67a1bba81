//! Runs the Python end-to-end suite (tests/e2e) against this build's `realm serve` on the
//! default model: the official `openai` client and CloudEvents SDK, real HTTP over loopback,
//! real SSE, real signals, each platform's environment.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn python_end_to_end_suite_against_realm_serve() {
    let model = common::default_model();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(common::python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/e2e"])
        .current_dir(root)
        .env("REALM_BIN", env!("CARGO_BIN_EXE_realm"))
        .env("REALM_TEST_MODEL", &model)
        .output()
        .expect("run pytest (scripts/setup.sh installs it into .venv)");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tests/e2e failed:\n{report}");
    println!("{report}");
}
