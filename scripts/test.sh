#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (Python reference
# packages, the Go toolchain, the default model), checks formatting and lints (Rust, Go), then
# runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== set-up: Python reference packages"
bash scripts/setup.sh
export REALM_PYTHON="$PWD/.venv/bin/python"

echo "== set-up: lavapipe, a Vulkan driver on the CPU (the wgpu backend's tests)"
VK_DRIVER_FILES=$(bash scripts/setup-vulkan.sh)
export VK_DRIVER_FILES

echo "== set-up: Azurite, the Azure Blob emulator (realm-storage's az:// tests)"
REALM_AZURITE_BLOB=$(bash scripts/setup-azurite.sh)
export REALM_AZURITE_BLOB

echo "== set-up: Go toolchain (sdks/go)"
GO=$(bash scripts/setup-go.sh)
PATH="$(dirname "$GO"):$PATH"
export REALM_GO="$GO" PATH
export GOPROXY=off GOFLAGS=-mod=mod GOTOOLCHAIN=local

# Tests run the model, so they build optimised; `realm pull` shares the same build.
echo "== build"
cargo build --release --locked
echo "== set-up: default model"
./target/release/realm pull

echo "== fmt"
cargo fmt --all --check
echo "== clippy"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
echo "== clippy, GPU backends (--features cuda,wgpu)"
cargo clippy --release --locked --workspace --all-targets --features cuda,wgpu -- -D warnings
echo "== go: gofmt, vet (sdks/go)"
unformatted=$(cd sdks/go && gofmt -l .)
if [ -n "$unformatted" ]; then echo "gofmt -l sdks/go: $unformatted" >&2; exit 1; fi
(cd sdks/go && go vet ./...)
echo "== tests"
cargo test --release --locked --workspace
echo "== GPU backends: WGSL kernels on lavapipe; CUDA kernels through NVRTC (sm_80/89/90), ptxas registers and spills for sm_90"
# No GPU here: the CUDA kernel and golden tests skip (scripts/gpu-check.sh runs them on one).
nv=$("$REALM_PYTHON" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
export REALM_REQUIRE_WGPU=1
LD_LIBRARY_PATH="$nv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" REALM_PTXAS="$nv/bin/ptxas" REALM_REQUIRE_NVRTC=1 \
  cargo test --release --locked -p realm-kernels --features cuda,wgpu \
  --test cuda_ptx --test wgpu_shaders --test wgpu_backend --test cuda_backend -- --nocapture
echo "== golden reference on the wgpu backend (lavapipe)"
cargo test --release --locked -p realm-engine --features cuda,wgpu --test golden_reference wgpu_
