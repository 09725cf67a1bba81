# shellcheck shell=bash
# Sourced by bench/serve-cold-start.sh and bench/serve-throughput.sh: finds (or builds) the two
# servers and sets `bins` to the python arguments that name them.
#   llama-server: LLAMA_SERVER_BIN, or bench/build-llama-server.sh (cached build).
#   realm:        REALM_BIN, or the repo's release build (`cargo build --release`, a no-op when up
#                 to date); skipped when the arguments give --realm-cmd or --realm-bin.
# Arguments: the script's own arguments (only scanned, never consumed).
serve_bins() {
  local root=$1 arg realm_given=0 llama_given=0
  shift
  for arg in "$@"; do
    case "$arg" in
      --realm-cmd|--realm-bin) realm_given=1 ;;
      --llama-server-bin) llama_given=1 ;;
    esac
  done
  bins=()
  if [ "$llama_given" = 0 ]; then
    local llama=${LLAMA_SERVER_BIN:-}
    [ -n "$llama" ] || llama=$("$root/bench/build-llama-server.sh")
    bins+=(--llama-server-bin "$llama")
  fi
  if [ "$realm_given" = 0 ]; then
    local realm=${REALM_BIN:-}
    if [ -z "$realm" ]; then
      cargo build --release --locked --bin realm >&2
      realm="$root/target/release/realm"
    fi
    bins+=(--realm-bin "$realm")
  fi
}
