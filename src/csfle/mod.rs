//! Confluent client-side field level encryption (CSFLE) as a second ciphertext
//! format: what Confluent's serdes (Java, Go, Python, .NET, JavaScript) write and
//! read when a schema's rule set holds an `ENCRYPT` rule over tagged fields.
//!
//! - [`crypto`]: the field ciphertext (Tink's raw AES-GCM / AES-SIV output, the
//!   optional DEK-version prefix, base64 for strings) and the DEK as a serialized
//!   Tink key proto;
//! - [`local_kms`]: Confluent's `local-kms` KEK (HKDF of a secret) and its wrap;
//! - [`rules`]: the `ENCRYPT` rules of a schema's rule set and the tags they select;
//! - [`plan`]: which fields of a writer schema those rules encrypt, per schema;
//! - [`transform`]: one record encrypted or decrypted in Confluent's format;
//! - [`keys`]: DEKs from the DEK Registry (created when missing), unwrapped and
//!   cached.

pub mod crypto;
pub mod keys;
pub mod local_kms;
pub mod plan;
pub mod rules;
pub mod transform;
