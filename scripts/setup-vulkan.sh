#!/usr/bin/env bash
# Installs a Vulkan loader and Mesa's software driver, lavapipe, from Debian's own packages
# (`libvulkan1`, `mesa-vulkan-drivers`), so the wgpu backend's tests run on machines without a
# GPU. Idempotent: does nothing when both are installed.
#
# Prints on stdout, alone, the path of lavapipe's ICD manifest (everything else goes to
# stderr). The loader finds it by default under /usr/share/vulkan/icd.d, so callers need not
# use it; it is there to pin the driver: VK_DRIVER_FILES=$(bash scripts/setup-vulkan.sh).
set -euo pipefail

packages=(libvulkan1 mesa-vulkan-drivers)

# Debian names the manifest after the architecture: lvp_icd.x86_64.json, lvp_icd.aarch64.json.
icd() {
  local f
  for f in /usr/share/vulkan/icd.d/lvp_icd.*.json; do
    [ -f "$f" ] && { echo "$f"; return 0; }
  done
  return 1
}

installed() {
  local p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
  done
  icd >/dev/null
}

if ! installed; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-vulkan: installing ${packages[*]} needs root (apt-get)" >&2
    exit 1
  fi
  echo "setup-vulkan: installing ${packages[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
fi

if ! path=$(icd); then
  echo "setup-vulkan: no lavapipe manifest under /usr/share/vulkan/icd.d after the install" >&2
  exit 1
fi
echo "setup-vulkan: using $path" >&2
echo "$path"
