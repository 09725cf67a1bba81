//! Runs the Go SDK's tests (sdks/go): its unit tests on `httptest` servers, and its integration
//! tests against this build's `realm serve` on the default model (real HTTP over loopback,
//! real SSE, a cancelled stream seen in /metrics). Go comes from `scripts/setup-go.sh`
//! (Debian's golang-1.23-go); the SDK is standard-library only, so nothing is downloaded
//! (`GOPROXY=off`, `GOTOOLCHAIN=local`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// `$REALM_GO`, else the toolchain scripts/setup-go.sh installs, else `go` on PATH.
fn go() -> PathBuf {
    if let Some(p) = std::env::var_os("REALM_GO") {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/lib/go-1.23/bin/go");
    if debian.exists() { debian.to_path_buf() } else { PathBuf::from("go") }
}

#[test]
fn go_sdk_against_realm_serve() {
    let model = common::default_model();
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdks/go");
    let go = go();
    let out = Command::new(&go)
        .args(["test", "-count=1", "-v", "-timeout", "300s", "./..."])
        .current_dir(&sdk)
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .env("REALM_BIN", env!("CARGO_BIN_EXE_realm"))
        .env("REALM_TEST_MODEL", &model)
        .output()
        .unwrap_or_else(|e| panic!("run {} (scripts/setup-go.sh installs Go 1.23): {e}", go.display()));
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "go test ./... in sdks/go failed:\n{report}");
    // The live tests skip only without REALM_BIN; here they must have run.
    assert!(report.contains("--- PASS: TestLiveCancelledStream"), "the live Go tests did not run:\n{report}");
    assert!(!report.contains("--- SKIP"), "some Go tests were skipped:\n{report}");
    println!("{report}");
}
