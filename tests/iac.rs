//! Runs the infrastructure suite (tests/iac) with the venv Python: the Terraform modules parsed
//! with python-hcl2 and checked for their wiring and layout, their manifest checks compared with
//! this build's `realm function validate`, checkov over the modules and the rendered chart, and
//! the Helm chart linted and rendered through Helm's own library and validated against the
//! Kubernetes schemas. No terraform or helm binary, no network.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn infrastructure_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(common::python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/iac"])
        .current_dir(root)
        .env("REALM_BIN", env!("CARGO_BIN_EXE_realm"))
        .output()
        .expect("run pytest (scripts/setup.sh installs it into .venv)");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tests/iac failed:\n{report}");
    println!("{report}");
}
