# syntax=docker/dockerfile:1
#
# fieldcrypt container image. Build context: the repository root.
#
#   docker build -t fieldcrypt:local .
#   docker compose -f docker/compose.yaml up -d --build    # the load-test stack
#
# Two stages: a Rust builder (BuildKit cache mounts keep the cargo registry and
# target/ between builds) and a slim Debian runtime that runs as uid 10001.
# The default command is `fieldcrypt run --config /etc/fieldcrypt/fieldcrypt.toml`:
# mount a config there (docker/fieldcrypt/fieldcrypt.toml is the stack's).
#
# No HEALTHCHECK: the image carries no HTTP client (curl, wget). fieldcrypt
# serves /health/live and /health/ready on [metrics] listen; orchestrators probe
# them directly (Kubernetes httpGet), and docker/compose.yaml probes
# /health/ready with bash's /dev/tcp. Prometheus scrapes fieldcrypt_ready.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder

# librdkafka is compiled from source (its own configure + make, linked
# statically, built without libcurl) and zstd from its C sources: a C toolchain
# and make, no cmake. OpenSSL (librdkafka's TLS, reqwest's native-tls) and zlib
# are linked dynamically.
# Packages are not version-pinned: bookworm's point releases carry security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The workspace's other members (the tests' harness, xtask): cargo resolves the
# whole workspace even to build one binary of it.
COPY harness ./harness
COPY xtask ./xtask

# The registry and target/ live in cache mounts, which are not part of the
# image layer, so the binary is copied out of target/ inside the same RUN.
# The shipped binary carries no debug info or symbols (the repository's release
# profile keeps line tables for profiling), a fraction of the size. It is built
# for baseline x86-64 on purpose (no -C target-cpu): AES runs on AES-NI/AVX2
# where the node has them, chosen at start-up, and portably where it does not
# (docs/OPERATIONS.md, "The AES path").
RUN --mount=type=cache,id=fieldcrypt-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=fieldcrypt-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=fieldcrypt-target,target=/src/target,sharing=locked \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --bin fieldcrypt \
 && install -D -m 0755 target/release/fieldcrypt /out/fieldcrypt

# ---------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="fieldcrypt" \
      org.opencontainers.image.description="Field-level encryption for Avro records on Kafka and in Avro files: envelope keys, deterministic and randomized modes, blind indexes." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="debian:bookworm-slim"

# Shared libraries the binary links dynamically: libssl3 (libssl + libcrypto)
# and zlib1g; ca-certificates for TLS to brokers, registries and AWS KMS.
# librdkafka and zstd are static; librdkafka is built without curl, so no libcurl.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/*

# A fixed non-root uid/gid (10001) so volume ownership is predictable. The
# working directory is created owned by it: a named volume mounted there (the
# compose stack's keyset volume) is initialised with this ownership, so the
# process can write its keyset and reports.
RUN groupadd --gid 10001 fieldcrypt \
 && useradd --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/fieldcrypt --shell /usr/sbin/nologin fieldcrypt \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/fieldcrypt \
 && install -d -m 0755 /etc/fieldcrypt /opt/fieldcrypt

COPY --from=builder /out/fieldcrypt /usr/local/bin/fieldcrypt
COPY schemas/ /opt/fieldcrypt/schemas/

# Fail the build here, not at start-up, if a shared library is missing (grep's
# status is the one tested, so no pipefail needed).
# hadolint ignore=DL4006
RUN if ldd /usr/local/bin/fieldcrypt | grep 'not found'; then \
      echo "fieldcrypt needs a shared library the runtime image lacks (above)" >&2; exit 1; \
    fi \
 && fieldcrypt --version

WORKDIR /var/lib/fieldcrypt
USER 10001:10001

# /metrics, /health/live, /health/ready (set [metrics] listen = "0.0.0.0:9464").
EXPOSE 9464

ENTRYPOINT ["fieldcrypt"]
CMD ["run", "--config", "/etc/fieldcrypt/fieldcrypt.toml"]
