#!/usr/bin/env bash
# Every GPU check in one command, for an NVIDIA machine (fits one 10-minute run):
#   1. builds Realm and the GPU tests with `--features cuda` (or takes them prebuilt, below);
#   2. compiles the kernels with NVRTC (ptxas register/spill report for sm_90 where ptxas is);
#   3. runs each CUDA kernel against the CPU reference on fresh random inputs, and the golden
#      greedy test of the default model on the GPU (a missing GPU fails these, not skips);
#   4. benchmarks prefill and decode at batch 1, 8 and 32 and the GPU's copy bandwidth, then
#      batch-1 decode with one-launch steps off and on, alternated, with the one-launch
#      step's time per phase, and prints a short table last.
#
#   scripts/gpu-check.sh                 build here (needs cargo), then check
#   scripts/gpu-check.sh --package DIR   build here and put the binaries (xz-compressed), golden
#                                        files and the model (in 40 MiB parts) in DIR/1, DIR/2...,
#                                        each under 56 MiB, for a GPU machine without a Rust
#                                        toolchain that receives at most 64 MiB a copy
#   scripts/gpu-check.sh --prebuilt DIR[:DIR...]
#                                        check with what --package put in those folders
#   ... --only ptx,kernels               run only these steps: ptx, kernels, golden, bench, whole
#                                        (the default set), profile (ncu's time per kernel over
#                                        a few decode steps at batch 1 and 32) and kv16 (batch 1
#                                        and 32 at prompt 512 with the f32 and the f16 KV cache,
#                                        alternated). Only golden, bench, whole, profile and kv16
#                                        need the model, so a machine that has received part of
#                                        it can run the rest first
#
# Results (logs, bench JSON, the table) go to $REALM_GPU_OUT (default target/gpu-check).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=build
dir=
steps=ptx,kernels,golden,bench,whole
usage="usage: $0 [--package DIR | --prebuilt DIR[:DIR...]] [--only STEP,...]"
while [ $# -gt 0 ]; do
  case "$1" in
    --package) mode=package; dir=${2:?--package needs a folder}; shift 2 ;;
    --prebuilt) mode=prebuilt; dir=${2:?--prebuilt needs a folder}; shift 2 ;;
    --only) steps=${2:?--only needs steps}; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
for s in ${steps//,/ }; do
  case "$s" in ptx | kernels | golden | bench | whole | profile | kv16) ;; *) echo "unknown step '$s'; $usage" >&2; exit 2 ;; esac
done
wants() { [[ ",$steps," == *",$1,"* ]]; }
needs_model() { wants golden || wants bench || wants whole || wants profile || wants kv16; }
out=${REALM_GPU_OUT:-$root/target/gpu-check}
mkdir -p "$out"

# Builds the binary and the three GPU test binaries; prints "name path" lines.
build() {
  cargo build --release --locked --features cuda --bin realm >&2
  echo "realm $root/target/release/realm"
  local pkg t
  for t in realm-kernels:cuda_backend realm-kernels:cuda_ptx realm-engine:golden_reference; do
    pkg=${t%%:*}
    t=${t#*:}
    cargo test --release --locked -p "$pkg" --features cuda --test "$t" --no-run --message-format=json 2>/dev/null |
      python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(sys.argv[1], m["executable"])
' "$t"
  done
}

if [ "$mode" = package ]; then
  rm -rf "${dir:?}"
  mkdir -p "$dir/bin" "$dir/1"
  build | while read -r name path; do
    cp "$path" "$dir/bin/$name"
    strip "$dir/bin/$name" 2>/dev/null || true
  done
  python3 -c 'import sys, tarfile; t = tarfile.open(sys.argv[1], "w:xz"); t.add(sys.argv[2], "bin"); t.close()' \
    "$dir/1/bin.tar.xz" "$dir/bin"
  rm -r "${dir:?}/bin"
  model=${REALM_TEST_MODEL:-$HOME/.cache/realm/models/SmolLM2-135M-Instruct.Q4_1.gguf}
  [ -f "$model" ] || "$root/target/release/realm" pull >&2
  (cd "$dir" && split -b 40M -d "$model" model.part)
  cp ../shared/golden/reference-f64.jsonl "$dir/"
  sha256sum "$model" | cut -d' ' -f1 >"$dir/model.sha256"
  # Fill folders 1, 2... in turn, each kept under 56 MiB (a copy to the GPU machine, repository
  # included, is limited to 64 MiB).
  n=1
  for f in "$dir"/model.part* "$dir/model.sha256" "$dir/reference-f64.jsonl"; do
    used=$(du -sb "$dir/$n" | cut -f1)
    if [ $((used + $(stat -c %s "$f"))) -gt $((56 << 20)) ]; then
      n=$((n + 1))
      mkdir -p "$dir/$n"
    fi
    mv "$f" "$dir/$n/"
  done
  du -sh "$dir"/* >&2
  exit 0
fi

declare -A bin
if [ "$mode" = build ]; then
  while read -r name path; do bin[$name]=$path; done < <(build)
  golden=$root/../shared/golden
  model=${REALM_TEST_MODEL:-$HOME/.cache/realm/models/SmolLM2-135M-Instruct.Q4_1.gguf}
  if needs_model && [ ! -f "$model" ]; then "${bin[realm]}" pull >&2; fi
else
  # The package's files, from whichever of the folders holds each.
  found() {
    local d
    for d in ${dir//:/ }; do
      if [ -e "$d/$1" ]; then
        echo "$d/$1"
        return
      fi
    done
    echo "$1 is in none of $dir" >&2
    return 1
  }
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' "$(found bin.tar.xz)" "$out"
  for name in realm cuda_backend cuda_ptx golden_reference; do bin[$name]=$out/bin/$name; done
  model=$out/model.gguf
  if needs_model; then
    golden=$(dirname "$(found reference-f64.jsonl)")
    if [ ! -f "$model" ]; then
      # shellcheck disable=SC2046 # one path per part, none with spaces (the package's own names)
      cat $(for d in ${dir//:/ }; do ls "$d"/model.part* 2>/dev/null || true; done |
        awk -F/ '{print $NF, $0}' | sort | cut -d' ' -f2) >"$model"
      echo "$(cat "$(found model.sha256)")  $model" | sha256sum -c --quiet
    fi
  else
    golden=$out
  fi
fi

# The driver's libcuda and the toolkit's NVRTC, wherever this image keeps them.
libdirs=$(
  {
    ldconfig -p 2>/dev/null | awk '/libcuda\.so|libnvrtc\.so/ {print $NF}' | xargs -r -n1 dirname || true
    ls -d /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 2>/dev/null || true
    python3 -c 'import nvidia, os; [print(os.path.join(p, "cu13", "lib")) for p in nvidia.__path__]' 2>/dev/null || true
  } | sort -u | tr '\n' ':'
)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:-}"
if [ -z "${REALM_PTXAS:-}" ] && ! command -v ptxas >/dev/null; then
  if [ -x /usr/local/cuda/bin/ptxas ]; then export REALM_PTXAS=/usr/local/cuda/bin/ptxas; fi
fi
export REALM_REQUIRE_CUDA=1 REALM_REQUIRE_NVRTC=1 REALM_TEST_MODEL=$model REALM_GOLDEN_DIR=$golden
export REALM_CUDA_CACHE=$out/ptx-cache

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt" || echo "nvidia-smi: no GPU found"
status=0
step() {
  local name=$1
  shift
  wants "$name" || return 0
  echo "== $name"
  if "$@" >"$out/$name.log" 2>&1; then
    echo "   ok"
  else
    echo "   FAILED (last lines of $out/$name.log):"
    tail -40 "$out/$name.log"
    status=1
  fi
  # On a lent device machine, whatever lands in $OUT comes back, even from a call that runs out
  # of time.
  if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then cp "$out/$name.log" "$OUT/"; fi
}
# Every command has a time limit, so a hang (a GPU that stops answering, a process that does
# not exit) costs one step, not the whole lease.
# shellcheck disable=SC2329 # called through step
limit() { timeout -k 5 "$@"; }
step ptx limit 120 "${bin[cuda_ptx]}" --nocapture
step kernels limit 180 "${bin[cuda_backend]}" --test-threads=1
step golden limit 180 "${bin[golden_reference]}" cuda_ --nocapture
# shellcheck disable=SC2329 # called through step
bench() {
  limit 240 "${bin[realm]}" bench --model "$model" --backend cuda --batch 1,8,32 --prompt-tokens 128,512 \
    --gen-tokens 128 --repeat 3 --json >"$out/bench.json"
}
step bench bench
# Two rounds of `realm bench` with the switches VARS (space-separated) off, then on: LABEL
# heads each run, PATTERN picks the lines to print, SECONDS limits each run.
# shellcheck disable=SC2329 # called through step
alternate() {
  local label=$1 vars=$2 pattern=$3 seconds=$4 round on var
  shift 4
  for round in 1 2; do
    for on in 0 1; do
      echo "$label $on, round $round:"
      local settings=()
      for var in $vars; do settings+=("$var=$on"); done
      limit "$seconds" env "${settings[@]}" "${bin[realm]}" bench --model "$model" --backend cuda "$@" 2>&1 |
        grep -E "$pattern"
    done
  done
}
# shellcheck disable=SC2329 # called through step
whole() {
  alternate "one-launch steps" "REALM_CUDA_WHOLE_STEP REALM_CUDA_STEP_TIMING" "^ +1 |phases" 60 \
    --batch 1 --prompt-tokens 128 --gen-tokens 128 --repeat 2
}
step whole whole
# shellcheck disable=SC2329 # called through step
kv16() {
  alternate "f16 KV cache" REALM_CUDA_KV_F16 "^ +(1|32) |KV cache" 90 \
    --precision fast --batch 1,32 --prompt-tokens 512 --gen-tokens 64 --repeat 2
}
step kv16 kv16
# shellcheck disable=SC2329 # called through step
profile() {
  command -v ncu >/dev/null || { echo "ncu (Nsight Compute) is not on the PATH"; return 1; }
  local b
  for b in 1 32; do
    # Past the warm-up's first decode steps, about four steps of launches.
    limit 300 ncu --clock-control none --metrics gpu__time_duration.sum --launch-skip 2000 --launch-count 700 --csv \
      --print-summary per-kernel "${bin[realm]}" bench --model "$model" --backend cuda --batch "$b" \
      --prompt-tokens 128 --gen-tokens 16 --repeat 1 >"$out/ncu-batch$b.csv"
  done
}
step profile profile
if wants ptx; then grep -h "registers\|spill" "$out/ptx.log" | sort | uniq -c | sort -rn | head -5 || true; fi

if wants profile && [ -s "$out/ncu-batch1.csv" ]; then
  python3 - "$out"/ncu-batch*.csv <<'EOF' | tee "$out/profile.txt"
import csv, sys
for path in sys.argv[1:]:
    # (kernel, grid, launches, average ns) per row of ncu's per-kernel summary.
    rows = [(r[3], r[5], int(r[8]), float(r[14].replace(",", "")))
            for r in csv.reader(open(path)) if len(r) > 14 and r[0] != "Process ID"]
    total = sum(n * each for _, _, n, each in rows)
    print(f"\n{path.rsplit('/', 1)[-1]}: GPU time by kernel over {sum(n for _, _, n, _ in rows)} launches")
    print(f"{'kernel':<18} {'grid':<16} {'launches':>8} {'us each':>8} {'share':>6}")
    for name, grid, n, each in sorted(rows, key=lambda r: -r[2] * r[3]):
        print(f"{name:<18} {grid:<16} {n:>8} {each / 1e3:>8.2f} {100 * n * each / total:>5.1f}%")
EOF
fi
if wants whole && [ -s "$out/whole.log" ]; then cat "$out/whole.log"; fi
if [ -s "$out/bench.json" ]; then
  python3 - "$out/bench.json" <<'EOF' | tee "$out/table.txt"
import json, sys
v = json.load(open(sys.argv[1]))
print()
print(f"GPU copy bandwidth {v['read_bandwidth_gb_s']:.0f} GB/s (read + written); "
      f"decode reads {v['weight_bytes_per_token'] / 2**20:.1f} MiB of weights per step")
print(f"{'batch':>5} {'prompt':>6} {'prefill tok/s':>14} {'decode tok/s':>13} {'floor tok/s':>12} {'share':>6}")
for r in v["runs"]:
    print(f"{r['batch']:>5} {r['prompt_tokens']:>6} {r['prefill_tok_s']['median']:>14.0f} "
          f"{r['decode_tok_s']['median']:>13.0f} {r['decode_floor_tok_s']:>12.0f} {100 * r['decode_floor_share']:>5.1f}%")
EOF
fi
exit $status
