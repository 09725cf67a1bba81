#!/usr/bin/env bash
# Installs lavapipe (Mesa's Vulkan driver that runs on the CPU) and the Vulkan loader from
# Debian's own packages, so the wgpu backend's kernel and golden tests run on machines without
# a GPU, CI included. Idempotent: does nothing when both are there.
set -euo pipefail

installed() {
  ldconfig -p | grep -q 'libvulkan\.so\.1' && compgen -G '/usr/share/vulkan/icd.d/lvp_icd*.json' >/dev/null
}

if installed; then
  echo "setup-vulkan: lavapipe and the Vulkan loader are installed" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-vulkan: installing mesa-vulkan-drivers and libvulkan1 needs root (apt-get)" >&2
  exit 1
fi
echo "setup-vulkan: installing mesa-vulkan-drivers and libvulkan1" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 >&2
installed || { echo "setup-vulkan: lavapipe is still missing after the install" >&2; exit 1; }
