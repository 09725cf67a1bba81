#!/usr/bin/env bash
# Installs Azurite, Microsoft's Azure Storage emulator (an npm package), for realm-storage's
# az:// tests (adapters/storage/tests/azure.rs), with the machine's Node.js and npm, into a
# cache outside the repository: ${XDG_CACHE_HOME:-~/.cache}/realm/azurite-<version>.
# Idempotent: does nothing when that version is already there.
#
# Prints the path of the azurite-blob launcher, alone, on stdout (everything else goes to
# stderr), so callers can do: REALM_AZURITE_BLOB=$(bash scripts/setup-azurite.sh)
set -euo pipefail

version=3.37.0
prefix="${XDG_CACHE_HOME:-$HOME/.cache}/realm/azurite-$version"
bin="$prefix/node_modules/.bin/azurite-blob"

if [ ! -x "$bin" ]; then
  if ! command -v npm >/dev/null; then
    echo "setup-azurite: npm (Node.js) is needed to install azurite@$version" >&2
    exit 1
  fi
  echo "setup-azurite: installing azurite@$version into $prefix" >&2
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "azurite@$version" >&2
fi
[ -x "$bin" ] || { echo "setup-azurite: $bin is missing after the install" >&2; exit 1; }
echo "$bin"
