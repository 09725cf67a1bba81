#!/usr/bin/env bash
# Cold start, `realm serve` against llama.cpp's `llama-server` (issue 4, item 9): exec → first
# 200 from the ready route (realm /ready, llama-server /health), median of 5 runs each,
# alternating; then the time to first token of the first streamed chat request. Same model
# file and threads on both sides. Prints a table and appends it to bench/RESULTS.md.
#
# Usage: bench/serve-cold-start.sh [--model PATH] [--threads 2] [--runs 5] [--max-tokens 16]
#          [--ctx 2048] [--drop-caches] [--no-record] [--log-dir DIR]
#          [--realm-bin PATH | --realm-cmd TEMPLATE [--realm-ready-path /health]]
#          [--llama-server-bin PATH] [--llama-cmd TEMPLATE] [--realm-extra ARGS] [--llama-extra ARGS]
# Templates are command lines with {bin} {model} {host} {port} {threads} {slots} {ctx}; e.g. to
# try the script with llama-server on both sides:
#   --realm-cmd '/path/llama-server -m {model} --port {port} -t {threads}' --realm-ready-path /health
# The measurement is bench/serve_cold_start.py (standard library only; its --help lists all
# options): a run that other processes competed with for the cores is taken again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
case "${1:-}" in -h|--help) sed -n '2,15p' "$0"; exit 0 ;; esac
# shellcheck source=bench/serve-bins.sh
. "$root/bench/serve-bins.sh"
serve_bins "$root" "$@"
exec python3 "$root/bench/serve_cold_start.py" "${bins[@]}" "$@"
