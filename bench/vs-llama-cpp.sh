#!/usr/bin/env bash
# Realm against llama.cpp on the same GGUF file, threads and token counts (issue 3, item 8).
#
# llama.cpp comes from the PyPI package llama-cpp-python, built from source into venvs under
# ${REALM_BENCH_CACHE:-~/.cache/realm-bench} (outside the repo; a rerun reuses them). Two
# builds, because on some machines one build cannot serve both measurements:
#   decode  - the package's default build (GGML_NATIVE: whatever this CPU has, AMX included).
#             With gcc 12 on AMX CPUs it dies on any prompt of two or more tokens; its
#             single-token decode works, so the prompt is then fed one token at a time.
#   prefill - a build with the x86 SIMD levels named explicitly and GGML_NATIVE off (no AMX),
#             which runs prompts; it is the reference for prefill and for the logit check.
# The two measurements alternate with Realm's, A B A B, for --rounds rounds; medians over the
# rounds give the ratios (realm / llama.cpp), printed and appended to bench/RESULTS.md.
#
# Usage: bench/vs-llama-cpp.sh [--model PATH] [--threads N] [--prompt-tokens 128,512]
#          [--gen-tokens 128] [--rounds 3] [--precision fast|exact] [--install-only] [--no-record]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

model=""
threads=2
prompt_tokens="128,512"
gen_tokens=128
rounds=3
precision=fast
install_only=0
record=1
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --prompt-tokens) prompt_tokens=$2; shift 2 ;;
    --gen-tokens) gen_tokens=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    --install-only) install_only=1; shift ;;
    --no-record) record=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "vs-llama-cpp: unknown argument $1" >&2; exit 2 ;;
  esac
done

cache=${REALM_BENCH_CACHE:-$HOME/.cache/realm-bench}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
mkdir -p "$cache"
log() { echo "vs-llama-cpp: $*" >&2; }

# CMake flags for the build that runs prompts: the SIMD levels this CPU reports, AMX left out.
portable_cmake_args() {
  if [ -n "${LLAMA_PREFILL_CMAKE_ARGS:-}" ]; then
    echo "$LLAMA_PREFILL_CMAKE_ARGS"
    return
  fi
  case "$(uname -m)" in
    x86_64) ;;
    *) echo ""; return ;;  # no AMX elsewhere: the default build serves both
  esac
  local flags args="-DGGML_NATIVE=OFF"
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  has() { [[ "$flags" == *" $1 "* ]]; }
  has avx512f && args+=" -DGGML_AVX512=ON"
  has avx512_vnni && args+=" -DGGML_AVX512_VNNI=ON"
  has avx512_bf16 && args+=" -DGGML_AVX512_BF16=ON"
  has avx_vnni && args+=" -DGGML_AVX_VNNI=ON"
  has avx2 && args+=" -DGGML_AVX2=ON"
  has fma && args+=" -DGGML_FMA=ON"
  has f16c && args+=" -DGGML_F16C=ON"
  echo "$args"
}

# Builds (once) llama-cpp-python with the given CMAKE_ARGS into its own venv; prints the
# venv's python. The wheel is kept too, so a removed venv reinstalls without a rebuild.
# pip's own wheel cache is bypassed: it keys on the source, not on CMAKE_ARGS.
ensure_build() {
  local args=$1 key dir wheels stamp
  key=$(printf '%s|%s|%s' "$version" "$args" "$(gcc -dumpfullversion 2>/dev/null || echo cc)" | sha256sum | cut -c1-12)
  dir="$cache/llama-cpp-python-$version-$key"
  wheels="$cache/wheels-$version-$key"
  stamp="$dir/.realm-bench-built"
  if [ -f "$stamp" ] && "$dir/bin/python" -c 'import llama_cpp' 2>/dev/null; then
    echo "$dir/bin/python"
    return
  fi
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $version with CMAKE_ARGS='${args}' (several minutes)"
    rm -rf "$wheels"
    CMAKE_ARGS="$args" FORCE_CMAKE=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "$dir/bin/python" -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
      --disable-pip-version-check -w "$wheels" "llama-cpp-python==$version" >&2
  fi
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$wheels"/llama_cpp_python-*.whl >&2
  printf '%s\n' "$args" >"$stamp"
  echo "$dir/bin/python"
}

decode_args=${LLAMA_DECODE_CMAKE_ARGS:-}
prefill_args=$(portable_cmake_args)
py_decode=$(ensure_build "$decode_args")
py_prefill=$(ensure_build "$prefill_args")
log "decode build:  $py_decode (CMAKE_ARGS='${decode_args}')"
log "prefill build: $py_prefill (CMAKE_ARGS='${prefill_args}')"
[ "$install_only" = 1 ] && exit 0

# Realm: the repo's release build (up to date, or built now) unless REALM_BIN names one.
REALM_BIN=${REALM_BIN:-}
if [ -z "$REALM_BIN" ]; then
  cargo build --release --locked --bin realm >&2
  REALM_BIN="$root/target/release/realm"
fi
if [ -z "$model" ]; then
  model=$("$REALM_BIN" pull 2>&1 | sed -n 's/.* at \(.*\.gguf\).*/\1/p' | tail -n1)
  [ -n "$model" ] || { log "realm pull did not name the default model"; exit 1; }
fi
[ -f "$model" ] || { log "no model file $model"; exit 1; }
golden="$root/../shared/golden/reference-f64.jsonl"
driver="$root/bench/llama_cpp_bench.py"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The default build may die (SIGILL) on multi-token batches: then it decodes after a prompt
# fed one token at a time, which it survives.
one_by_one=()
if ! "$py_decode" "$driver" --model "$model" --threads "$threads" --probe >/dev/null 2>"$work/probe.err"; then
  log "the default build dies on a two-token prompt here ($(tail -n1 "$work/probe.err")); it decodes after a prompt fed token by token"
  one_by_one=(--feed-one-by-one)
fi
golden_args=()
[ -f "$golden" ] && golden_args=(--golden "$golden")

load_before=$(cut -d" " -f1-3 /proc/loadavg)
common=(--model "$model" --threads "$threads" --prompt-tokens "$prompt_tokens" --gen-tokens "$gen_tokens")
for r in $(seq 1 "$rounds"); do
  log "round $r/$rounds: realm"
  "$REALM_BIN" bench "${common[@]}" --repeat 1 --precision "$precision" --json >"$work/realm-$r.json"
  log "round $r/$rounds: llama.cpp decode (default build)"
  extra=()
  [ "$r" = 1 ] && extra=("${golden_args[@]}")
  "$py_decode" "$driver" "${common[@]}" --measure decode "${one_by_one[@]}" "${extra[@]}" >"$work/llama-decode-$r.json"
  log "round $r/$rounds: llama.cpp prefill (portable build)"
  "$py_prefill" "$driver" "${common[@]}" --measure prefill "${extra[@]}" >"$work/llama-prefill-$r.json"
done

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|amx|fma|f16c)' | sort -u | tr '\n' ' ')
if [ "$REALM_BIN" = "$root/target/release/realm" ]; then
  commit=$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)
else
  commit="binary $REALM_BIN"
fi
results="$root/bench/RESULTS.md"
[ "$record" = 1 ] || results=/dev/null
CPU="$cpu" FLAGS="$flags" LOAD="$load_before" COMMIT="$commit" DECODE_ARGS="$decode_args" PREFILL_ARGS="$prefill_args" \
  python3 - "$work" "$rounds" "$results" <<'PY'
import json, statistics, sys, datetime, os
work, rounds, results = sys.argv[1], int(sys.argv[2]), sys.argv[3]
load = lambda n: [json.load(open(f"{work}/{n}-{r}.json")) for r in range(1, rounds + 1)]
realm, dec, pre = load("realm"), load("llama-decode"), load("llama-prefill")
med = statistics.median
def series(reports, p, key, sub=None):
    vals = []
    for rep in reports:
        run = next(x for x in rep["runs"] if x["prompt_tokens"] == p)
        v = run[key]
        vals += [v[sub]] if sub else (v if isinstance(v, list) else [v])
    return vals
lengths = [x["prompt_tokens"] for x in realm[0]["runs"]]
rows = []
for p in lengths:
    rp, lp = series(realm, p, "prefill_tok_s", "median"), series(pre, p, "prefill_tok_s")
    rd, ld = series(realm, p, "decode_tok_s", "median"), series(dec, p, "decode_tok_s")
    floor = med(series(realm, p, "decode_floor_tok_s"))
    rows.append(dict(p=p, rp=rp, lp=lp, rd=rd, ld=ld, floor=floor, share=med(rd) / floor,
                     ttft=med(series(realm, p, "ttft_ms", "median")), lttft=med(series(pre, p, "ttft_ms"))))
spread = lambda v: f"{med(v):.1f} ({min(v):.1f}-{max(v):.1f})"
r0 = realm[0]
bw = med([x["read_bandwidth_gb_s"] for x in realm])
rss = max(x["peak_rss_bytes"] for x in realm) / 2**20
gen = r0["runs"][0]["gen_tokens"]

print(f"\n{'prompt':>6} {'gen':>4} | {'realm prefill':>22} {'llama.cpp prefill':>22} {'ratio':>6} | "
      f"{'realm decode':>22} {'llama.cpp decode':>22} {'ratio':>6} | {'floor':>6} {'share':>5}")
for r in rows:
    print(f"{r['p']:>6} {gen:>4} | {spread(r['rp']):>22} {spread(r['lp']):>22} {med(r['rp'])/med(r['lp']):>5.2f}x | "
          f"{spread(r['rd']):>22} {spread(r['ld']):>22} {med(r['rd'])/med(r['ld']):>5.2f}x | "
          f"{r['floor']:>6.1f} {100*r['share']:>4.0f}%")
print(f"realm: read bandwidth {bw:.1f} GB/s, peak RSS {rss:.1f} MiB; medians (min-max) over {rounds} rounds, tok/s")

g = dec[0].get("golden"), pre[0].get("golden")
gold_lines = []
for name, res in zip(("default build", "portable build"), g):
    if res is None:
        gold_lines.append(f"- golden logits ({name}): not checked (no ../shared/golden/reference-f64.jsonl)")
        continue
    verdict = "within" if res["ok"] else "OFF: beyond"
    gold_lines.append(f"- golden logits ({name}): top-10 logits after {res['records']} reference prompts {verdict} "
                      f"{res['tolerance']} of the float64 reference (max |diff| {res['max_abs_diff']:.3f}, {res['worst_record']})")
    if not res["ok"]:
        print(f"WARNING: llama.cpp's logits ({name}) are off the reference: max |diff| {res['max_abs_diff']:.3f} "
              f"> {res['tolerance']} ({res['worst_record']})")
for line in gold_lines:
    print(line.lstrip("- "))

e = os.environ
# The section is built on every run, so a --no-record run exercises it too.
md = [f"\n## {datetime.date.today().isoformat()}: {os.path.basename(r0['model'])}, {r0['threads']} threads\n",
      f"- CPU: {e['CPU']} ({os.cpu_count()} logical CPUs); flags: {e['FLAGS'].strip()}",
      f"- model: `{r0['model']}` ({r0['model_bytes']} bytes)",
      f"- realm {e['COMMIT']}, precision {r0['precision']}"
      + (f", REALM_CPU_ISA={e['REALM_CPU_ISA']}" if e.get("REALM_CPU_ISA") else "")
      + f"; llama-cpp-python {dec[0]['llama_cpp_python']}, "
      f"n_batch 512",
      f"- llama.cpp decode: default build (CMAKE_ARGS '{e['DECODE_ARGS']}')"
      + (", prompt fed token by token (the build dies on multi-token batches)" if dec[0]["feed_one_by_one"] else ""),
      f"- llama.cpp prefill: portable build (CMAKE_ARGS '{e['PREFILL_ARGS']}')",
      f"- {rounds} rounds alternating realm, llama.cpp decode, llama.cpp prefill; each side one warm-up then "
      f"one timed run per round; medians (min-max) over rounds, tok/s; load average before: {e['LOAD']}",
      "",
      "| prompt | gen | realm prefill | llama.cpp prefill | ratio | realm decode | llama.cpp decode | ratio | realm TTFT ms | realm decode floor | share of floor |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    md.append(f"| {r['p']} | {gen} | {spread(r['rp'])} | {spread(r['lp'])} | {med(r['rp'])/med(r['lp']):.2f}x | "
              f"{spread(r['rd'])} | {spread(r['ld'])} | {med(r['rd'])/med(r['ld']):.2f}x | {r['ttft']:.1f} | "
              f"{r['floor']:.1f} | {100*r['share']:.0f}% |")
md += ["", f"- realm read bandwidth {bw:.1f} GB/s ({r0['threads']} threads, 1 GiB streaming read); decode reads "
       f"{r0['weight_bytes_per_token']/2**20:.1f} MiB of weights per token + {r0['kv_bytes_per_position']/1024:.1f} KiB "
       f"of KV cache per position; peak RSS {rss:.1f} MiB (whole process)"] + gold_lines
if results != "/dev/null" and not os.path.exists(results):
    md.insert(0, "# Realm vs llama.cpp\n\nAppended by bench/vs-llama-cpp.sh, one section per run.\n")
md += [f"- llama.cpp system info, decode build: {dec[0]['system_info']}",
       f"- llama.cpp system info, prefill build: {pre[0]['system_info']}"]
if results != "/dev/null":
    with open(results, "a") as f:
        f.write("\n".join(md) + "\n")
    print(f"recorded in {results}")
PY
