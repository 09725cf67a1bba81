#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (once) for the serve benchmarks (issue 4, item 9) and prints
# the binary's path.
#
# The sources come from the PyPI sdist of llama-cpp-python (the same version as
# bench/vs-llama-cpp.sh), which carries llama.cpp under vendor/llama.cpp, tools/server included.
# Everything lives under ${REALM_BENCH_CACHE:-~/.cache/realm-bench}, outside the repo:
#   llama-cpp-python-<version>.tar.gz                 the sdist (downloaded once)
#   llama-server-<version>-<key>/bin/llama-server     the build; <key> hashes version, flags, gcc
# A rerun with the same flags prints the cached binary at once. cmake comes from PATH, or from a
# small venv in the cache (the PyPI `cmake` package) when the machine has none.
#
# Usage: bench/build-llama-server.sh [--cmake-args '-DGGML_NATIVE=OFF ...'] [--jobs N] [--rebuild]
#   LLAMA_SERVER_CMAKE_ARGS sets the extra flags too (default: none, i.e. llama.cpp's native
#   build for this CPU). Release, LLAMA_CURL=OFF and the server target are always set.
set -euo pipefail

version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
extra_args=${LLAMA_SERVER_CMAKE_ARGS:-}
jobs=$(nproc)
rebuild=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cmake-args) extra_args=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --rebuild) rebuild=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build-llama-server: unknown argument $1" >&2; exit 2 ;;
  esac
done

cache=${REALM_BENCH_CACHE:-$HOME/.cache/realm-bench}
mkdir -p "$cache"
log() { echo "build-llama-server: $*" >&2; }

# Flags every build gets: no libcurl (models are local files), no OpenSSL, no tests or examples.
base_args="-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF"
base_args+=" -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF"
args="$base_args${extra_args:+ $extra_args}"
compiler=$(c++ -dumpfullversion 2>/dev/null || g++ -dumpfullversion 2>/dev/null || echo none)
key=$(printf '%s|%s|%s' "$version" "$args" "$compiler" | sha256sum | cut -c1-12)
prefix="$cache/llama-server-$version-$key"
bin="$prefix/bin/llama-server"
stamp="$prefix/.realm-bench-built"

if [ "$rebuild" = 0 ] && [ -f "$stamp" ] && [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

command -v c++ >/dev/null 2>&1 || { log "no C++ compiler (c++) on PATH: install g++"; exit 1; }

# cmake: the machine's, else the PyPI package in a venv kept in the cache.
cmake_bin=$(command -v cmake || true)
if [ -z "$cmake_bin" ]; then
  tools="$cache/build-tools-venv"
  if [ ! -x "$tools/bin/cmake" ]; then
    log "no cmake on PATH: installing the PyPI cmake package into $tools"
    rm -rf "$tools"
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check cmake >&2
  fi
  cmake_bin="$tools/bin/cmake"
fi
log "cmake: $cmake_bin ($("$cmake_bin" --version | head -n1))"

sdist="$cache/llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ]; then
  log "downloading the llama-cpp-python $version sdist"
  dl=$(mktemp -d "$cache/download.XXXXXX")
  # --no-binary names the package alone: with :all: pip would also build the build backend's
  # own dependencies (cmake, ninja) from source just to read the sdist's metadata.
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
    -d "$dl" "llama-cpp-python==$version" >&2
  found=$(find "$dl" -maxdepth 1 -name '*.tar.gz' | head -n1)
  [ -n "$found" ] || { log "pip download left no .tar.gz in $dl"; exit 1; }
  mv "$found" "$sdist"
  rm -rf "$dl"
fi

work=$(mktemp -d "$cache/llama-server-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar -xzf "$sdist" -C "$work"
src=$(find "$work" -mindepth 3 -maxdepth 3 -path '*/vendor/llama.cpp' -type d | head -n1)
[ -n "$src" ] && [ -d "$src/tools/server" ] || { log "the sdist has no vendor/llama.cpp/tools/server"; exit 1; }

log "building llama-server from llama-cpp-python $version's llama.cpp with '$args', $jobs jobs (several minutes)"
start=$(date +%s)
# shellcheck disable=SC2086  # args is a list of flags
"$cmake_bin" -S "$src" -B "$work/build" $args >"$work/configure.log" 2>&1 \
  || { tail -n 40 "$work/configure.log" >&2; log "cmake configure failed"; exit 1; }
"$cmake_bin" --build "$work/build" --target llama-server -j "$jobs" >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; log "cmake build failed"; exit 1; }
built=$(find "$work/build" -type f -name llama-server -perm -u+x | head -n1)
[ -n "$built" ] || { log "the build made no llama-server binary"; exit 1; }

rm -rf "$prefix"
mkdir -p "$prefix/bin"
cp "$built" "$bin"
# A static build needs no shared libraries; copy any the binary was linked against all the same.
find "$work/build" -name '*.so*' -exec cp -P {} "$prefix/bin/" \; 2>/dev/null || true
"$bin" --version >"$prefix/version.txt" 2>&1 || true
printf 'version %s\nargs %s\ncompiler %s\nbuild seconds %s\n' \
  "$version" "$args" "$compiler" "$(( $(date +%s) - start ))" >"$stamp"
log "built in $(( $(date +%s) - start )) s: $bin"
echo "$bin"
