#!/usr/bin/env bash
# Installs what the test suite needs: a Python venv with the reference `gguf` package, the
# official `openai` client and pytest.
# Idempotent; safe to run on every test run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import gguf, numpy, openai, pytest, cloudevents' 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/scripts/requirements.txt"
fi
