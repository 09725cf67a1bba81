#!/usr/bin/env bash
# Cold start from an object store (issue 6): `realm serve --model s3://...` from an empty model
# cache, exec → /ready, against one plain GET of the same object with curl, on local S3 servers
# (s3rver from npm, moto from the project's venv). Prints a table and appends it to
# bench/RESULTS.md.
#
# Usage: bench/cold-start-s3.sh [--runs 5] [--stores s3rver,moto] [--model PATH] [--no-record]
# (bench/cold_start_s3.py --help lists every option). s3rver is installed once under
# ~/.cache/realm/bench/s3rver; realm is the repo's release build unless --realm-bin names one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
case "${1:-}" in -h|--help) sed -n '2,9p' "$0"; exit 0 ;; esac
s3rver_version=3.7.1
s3rver_dir=${REALM_BENCH_CACHE:-$HOME/.cache/realm/bench}/s3rver
if [ ! -x "$s3rver_dir/node_modules/.bin/s3rver" ]; then
  mkdir -p "$s3rver_dir"
  npm install --prefix "$s3rver_dir" --silent --no-audit --no-fund "s3rver@$s3rver_version" >&2
fi
[ -x .venv/bin/python ] || scripts/setup.sh >&2
args=(--s3rver-bin "$s3rver_dir/node_modules/.bin/s3rver")
case " $* " in
  *" --realm-bin "*) ;;
  *) cargo build --release --locked --bin realm >&2; args+=(--realm-bin "$root/target/release/realm") ;;
esac
exec .venv/bin/python "$root/bench/cold_start_s3.py" "${args[@]}" "$@"
