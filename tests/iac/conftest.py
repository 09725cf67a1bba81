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
def checkov() -> str:
    """checkov lives in a venv of its own (its pins clash with pytest's): .venv/checkov."""
    for candidate in (os.environ.get("REALM_CHECKOV"), ROOT / ".venv/checkov/bin/checkov", shutil.which("checkov")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(
        "checkov is not installed: scripts/setup.sh installs tests/iac/requirements-checkov.txt "
        "into .venv/checkov (or set REALM_CHECKOV)"
    )
