//! fieldcrypt: field-level encryption for Avro records, on Kafka and in Avro files.
//!
//! # Layout
//!
//! Read top to bottom; each module's own doc says what it hides.
//!
//! - [`schema`]: compiles Avro schemas, selects sensitive fields (attributes, tags,
//!   rules), and derives transform plans and the encrypted output schema.
//! - [`avro`]: the Avro binary encoding walked as bytes, and object container files.
//! - [`crypto`]: the field ciphertext format (versioned: readers accept every
//!   version they know, writers write `crypto.write_version`), AES-256-GCM / AES-SIV ciphers and HMAC
//!   blind indexes. Pure: bytes and keys in, bytes out. AES runs on AES-NI kernels
//!   where the CPU has them, portably elsewhere (`crypto::accel` chooses once).
//! - [`csfle`]: Confluent's client-side field-level encryption format (Tink
//!   ciphertexts, DEK protos, local-kms), spoken per route beside fieldcrypt's own.
//! - [`keys`]: the KMS interface and its providers (one driver each in the table of
//!   `keys::driver`, used by both formats: the local KEK file, AWS KMS; configured
//!   from `[kms]` by `keys::provider`), the instrumented and resilient layers,
//!   the key ring of KEKs (per route or tenant), the keyset file of wrapped
//!   long-lived keys (rotate, rewrap), and the DEK caches.
//! - [`transform`]: the record walker that encrypts or decrypts one datum by plan, and
//!   checks without keys that an encrypted datum's sensitive fields are ciphertexts.
//! - [`engine`]: puts config, keys and plans together; the one entry point for
//!   encryption (DEK choice, the retry when a DEK runs out, the DEK header).
//! - [`file`]: encrypt/decrypt Avro container files (no Kafka), written through a
//!   staged output that leaves nothing behind when interrupted.
//! - [`kafka`]: Kafka record formats: Confluent framing, DEK and dead-letter headers,
//!   topic routing.
//! - [`registry`]: the Schema Registry client (writer schemas by id, output schemas
//!   registered under the target subject).
//! - [`pipeline`]: `fieldcrypt run`, lanes of consume → transform → produce →
//!   acknowledge (rdkafka): the transform step (`pipeline::record`: resolve →
//!   value codec → outcome, one file per value format), the lane's state machine
//!   and stages (`pipeline::lane`: phase, take, settle, outage, membership), size
//!   limits, offsets, rebalances and transactions in their own files;
//!   at-least-once or exactly-once; dead letters.
//! - [`loadgen`]: `fieldcrypt loadgen` and `check`: synthetic records at a target
//!   rate, and a verifier of the target topic (missing, duplicates, unencrypted,
//!   end-to-end latency).
//! - [`observe`]: Prometheus metrics, events (log and count together), readiness
//!   as a `watch` components report into, and the `/metrics` + `/health` listener.
//! - [`codes`]: every error code fieldcrypt reports (dead letters, metrics, logs).
//! - [`backoff`]: exponential backoff with full jitter (KMS, registry, held records).
//! - [`config`]: the TOML configuration, validated at start-up; each section's
//!   struct lives with the code it configures where that is a component of its own
//!   (`[kms]` in `keys::provider`).
//! - [`sample`]: random schema-conforming records (demo, bench, tests).
//! - [`bench`]: the throughput benchmark behind `fieldcrypt bench`, and beside it the
//!   primitives micro-benchmark (`bench::primitives`) its crypto cost is judged by.
//! - `cli` (binary only): the `fieldcrypt` command line, one file per command
//!   (`cli::args` holds the grammar).
//!
//! Where new things go (CONTRIBUTING.md has the files of each): a KMS provider in
//! `keys/` with its driver in `keys::driver`; a ciphertext version in
//! `crypto::format`; a sink beside `pipeline::produce`; a value format (JSON Schema,
//! Protobuf) as a `ValueFormat` in `pipeline::record` and one line in its `FORMATS`.

// `unsafe` only in `crypto::aesni`: calling its AES-NI functions once the CPU
// has been seen to have the instructions (that module says why it is sound).
#![deny(unsafe_code)]

pub mod avro;
pub mod backoff;
pub mod bench;
pub mod codes;
pub mod config;
pub mod crypto;
pub mod csfle;
pub mod engine;
pub mod file;
pub mod kafka;
pub mod keys;
pub mod loadgen;
pub mod observe;
pub mod pipeline;
pub mod registry;
pub mod sample;
pub mod schema;
pub mod transform;
