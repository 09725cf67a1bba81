#!/usr/bin/env bash
# Installs the Go toolchain the Go SDK (sdks/go) needs, from Debian's own packages: bookworm
# ships Go 1.19, too old for `iter.Seq2`, so Go 1.23 comes from bookworm-backports
# (`golang-1.23-go`, installed under /usr/lib/go-1.23). Idempotent: does nothing when a go of
# at least 1.23 is already on PATH or in /usr/lib/go-1.23. Prints where go is; callers put its
# directory first on PATH (or use the printed path).
set -euo pipefail

want_minor=23
gobin=/usr/lib/go-1.23/bin/go

go_ok() {
  # `go env GOVERSION` prints e.g. go1.23.4; accept 1.23 and newer.
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1
  v=${v#go}
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "${minor%%[!0-9]*}" -ge "$want_minor" ]; }
}

if [ -x "$gobin" ] && go_ok "$gobin"; then
  echo "go: $gobin ($("$gobin" env GOVERSION))"
  exit 0
fi
if command -v go >/dev/null 2>&1 && go_ok "$(command -v go)"; then
  echo "go: $(command -v go) ($(go env GOVERSION))"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-go: installing golang-1.23-go needs root (apt-get)" >&2
  exit 1
fi

# bookworm-backports, added once, in the deb822 format the image already uses.
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -t bookworm-backports golang-1.23-go >/dev/null

if ! go_ok "$gobin"; then
  echo "setup-go: $gobin is missing or older than 1.$want_minor after install" >&2
  exit 1
fi
echo "go: $gobin ($("$gobin" env GOVERSION))"
