//! The DEK Registry of Confluent Schema Registry (`/dek-registry/v1`): KEKs and
//! the wrapped DEKs of Confluent's client-side field level encryption.
