#!/usr/bin/env bash
# Runs every check a submission must pass: formatting, clippy, and all tests
# (unit, property, golden-vector, CLI, Python interop, the real-broker pipeline
# tests, and the AWS KMS tests against moto). Installs what the tests need if it
# is missing: the Python test tools (fastavro, cryptography, confluent-kafka,
# moto's KMS emulator) and the tansu broker binary (scripts/broker.sh install).
# The broker and KMS tests start their own tansu, test registry and moto on free
# 127.0.0.1 ports and stop them when they finish.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import fastavro, cryptography, confluent_kafka.schema_registry.avro, moto.server, yaml' 2>/dev/null; then
  echo "== installing Python test tools"
  python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
fi

if ! command -v promtool >/dev/null; then
  echo "promtool not found: the stack checks need it (apt-get install prometheus)" >&2
  exit 1
fi

echo "== tansu broker"
scripts/broker.sh install

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --release --all-targets
