#!/usr/bin/env bash
# Runs every check a submission must pass: formatting, clippy, and all tests
# (unit, property, golden-vector, CLI and Python interop). Installs the Python test
# tools (fastavro, cryptography) into the current Python if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import fastavro, cryptography' 2>/dev/null; then
  echo "== installing Python test tools"
  python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --release --all-targets
