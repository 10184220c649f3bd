#!/usr/bin/env bash
# fieldcrypt file-mode demo on embedded defaults (no config file, local KEK, no Kafka):
# build, create keys, generate 100,000 sample customer records in an Avro container
# file, encrypt the file, decrypt it, show one record before, encrypted, and after, and
# check every decrypted record equals its original. Everything lands in demo-out/
# (recreated on each run). The Kafka quick start is scripts/quickstart.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building fieldcrypt (release)"
cargo build --release --quiet
FC="$PWD/target/release/fieldcrypt"
SCHEMA="$PWD/schemas/customer.avsc"

rm -rf demo-out && mkdir -p demo-out && cd demo-out

echo "== keys: a local KEK, a deterministic key and an e-mail blind-index key"
"$FC" keys init
"$FC" keys create --purpose deterministic --domain default
"$FC" keys create --purpose blind-index --domain email
"$FC" keys list

echo "== the plan for $SCHEMA"
"$FC" plan "$SCHEMA" --output-schema customer.encrypted.avsc

echo "== sample data, encrypt, decrypt"
"$FC" sample --schema "$SCHEMA" --count 100000 customers.avro
"$FC" encrypt-file customers.avro customers.encrypted.avro
"$FC" decrypt-file customers.encrypted.avro customers.decrypted.avro

echo "== first record, before:"
"$FC" cat -n 1 customers.avro
echo "== encrypted (bytes shown as base64):"
"$FC" cat -n 1 customers.encrypted.avro
echo "== decrypted:"
"$FC" cat -n 1 customers.decrypted.avro

if cmp -s <("$FC" cat customers.avro) <("$FC" cat customers.decrypted.avro); then
  echo "== all 100000 decrypted records equal the originals (files in demo-out/)"
else
  echo "== MISMATCH between original and decrypted records" >&2
  exit 1
fi
