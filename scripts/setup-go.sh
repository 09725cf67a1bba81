#!/usr/bin/env bash
# Installs the Go toolchain the Go SDK (sdks/go) needs, from Debian's own packages: bookworm
# ships Go 1.19, too old for `iter.Seq2`, so Go 1.23 comes from bookworm-backports
# (`golang-1.23-go`, installed under /usr/lib/go-1.23). Idempotent: does nothing when a go of
# at least 1.23 is already there.
#
# Prints the path of that go binary, alone, on stdout (everything else goes to stderr), so
# callers can do: GO=$(bash scripts/setup-go.sh); export PATH="$(dirname "$GO"):$PATH"
set -euo pipefail

want_minor=23
debian_go=/usr/lib/go-1.23/bin/go

# go_ok GO: is GO a Go toolchain of at least 1.$want_minor? (`go env GOVERSION`: go1.23.5)
go_ok() {
  local v major rest minor
  v=$(GOTOOLCHAIN=local "$1" env GOVERSION 2>/dev/null) || return 1
  v=${v#go}
  major=${v%%.*}
  rest=${v#*.}
  minor=${rest%%[!0-9]*}
  [ -n "$major" ] && [ -n "$minor" ] || return 1
  [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge "$want_minor" ]; }
}

found() {
  echo "setup-go: using $1 ($(GOTOOLCHAIN=local "$1" env GOVERSION))" >&2
  echo "$1"
  exit 0
}

if [ -x "$debian_go" ] && go_ok "$debian_go"; then
  found "$debian_go"
fi
if path_go=$(command -v go) && go_ok "$path_go"; then
  found "$path_go"
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-go: installing golang-1.23-go needs root (apt-get); no Go >= 1.$want_minor found" >&2
  exit 1
fi

# bookworm-backports, added once, in the deb822 format the image's own sources use, from the
# same mirror they name.
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2; exit}')
  [ -n "$mirror" ] || mirror=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2; exit}')
  if [ -z "$mirror" ]; then
    echo "setup-go: no Debian mirror in the apt sources to add bookworm-backports from" >&2
    exit 1
  fi
  echo "setup-go: adding bookworm-backports ($mirror) to the apt sources" >&2
  cat > /etc/apt/sources.list.d/bookworm-backports.sources <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi

echo "setup-go: installing golang-1.23-go from bookworm-backports" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq -t bookworm-backports golang-1.23-go >&2

if [ -x "$debian_go" ] && go_ok "$debian_go"; then
  found "$debian_go"
fi
echo "setup-go: $debian_go is missing or older than 1.$want_minor after the install" >&2
exit 1
