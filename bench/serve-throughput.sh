#!/usr/bin/env bash
# Concurrent streaming throughput, `realm serve` against llama.cpp's `llama-server` (issue 4,
# item 9): 1, 8 and 32 concurrent streamed chat completions (temperature 0, max_tokens 128),
# aggregate and decode tokens/s, TTFT and inter-token latency, the two servers alternating in
# one run with the same model file, threads and stream slots. Prints a table and appends it to
# bench/RESULTS.md.
#
# Usage: bench/serve-throughput.sh [--model PATH] [--threads 2] [--concurrency 1,8,32]
#          [--max-tokens 128] [--rounds 3] [--prompt-budget 128] [--no-record] [--log-dir DIR]
#          [--realm-bin PATH | --realm-cmd TEMPLATE [--realm-ready-path /health]]
#          [--llama-server-bin PATH] [--llama-cmd TEMPLATE]
# Templates: see bench/serve-cold-start.sh. The measurement is bench/serve_throughput.py
# (standard library only; its --help lists all options).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
case "${1:-}" in -h|--help) sed -n '2,13p' "$0"; exit 0 ;; esac
# shellcheck source=bench/serve-bins.sh
. "$root/bench/serve-bins.sh"
serve_bins "$root" "$@"
exec python3 "$root/bench/serve_throughput.py" "${bins[@]}" "$@"
