#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (Python reference
# packages, the default model), checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== set-up: Python reference packages"
bash scripts/setup.sh
export REALM_PYTHON="$PWD/.venv/bin/python"

# Tests run the model, so they build optimised; `realm pull` shares the same build.
echo "== build"
cargo build --release --locked
echo "== set-up: default model"
./target/release/realm pull

echo "== fmt"
cargo fmt --all --check
echo "== clippy"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
echo "== tests"
cargo test --release --locked --workspace
