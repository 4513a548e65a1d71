# syntax=docker/dockerfile:1
# The image the Helm chart in deploy/helm/engine runs: the `engine` binary, the Avro
# contracts its preflight hook checks, and the shared libraries it loads; nothing else.
#
#   docker build -t stream-engine:0.1.0 .
#
# The build stage runs scripts/run's build steps, through scripts/env.sh, so the image
# holds the binary scripts/run builds (same cargo command, profile and features);
# tests/helm.rs fails if the two drift apart. The first build compiles librdkafka and
# RocksDB (25+ minutes on 2 cores).

# The toolchain scripts/run builds with on the project's machines (stable). The
# workspace's rust-version (1.88) is the language floor, but Cargo.lock's dependencies
# need 1.89 or later.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
ENV CARGO_TARGET_DIR=/src/target
# scripts/run's steps: scripts/env.sh, its system packages, its cargo command. Then
# the debug line tables the release profile keeps for backtraces are left out of the
# image (the file shrinks from about 515 MB to 31 MB; function names stay).
RUN bash -euo pipefail -c 'source scripts/env.sh && ensure_system_packages && cargo build $ENGINE_PROFILE_FLAG --bin engine && install -D "$CARGO_TARGET_DIR/release/engine" /out/engine' \
    && strip --strip-debug /out/engine

FROM debian:${DEBIAN_RELEASE}-slim
# What the binary loads (ldd): OpenSSL and zlib for librdkafka, the C++ runtime for
# RocksDB; CA certificates for TLS to brokers and registries.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g libstdc++6 \
    && rm -rf /var/lib/apt/lists/*
# A user of its own; the chart runs the pod as 10001 and mounts the state volume at
# /var/lib/engine with that group.
RUN groupadd --system --gid 10001 engine \
    && useradd --system --uid 10001 --gid engine --home-dir /var/lib/engine --shell /usr/sbin/nologin engine \
    && install -d -o engine -g engine /var/lib/engine
COPY --from=build /out/engine /usr/local/bin/engine
# The contracts, for `engine schema check SUBJECT FILE` in the chart's preflight Job.
COPY schemas /usr/share/engine/schemas
USER 10001:10001
WORKDIR /var/lib/engine
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/engine"]
CMD ["--help"]
