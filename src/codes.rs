//! Error codes: the stable names of what went wrong, as they appear in the
//! `code` label of `fieldcrypt_errors_total` and `fieldcrypt_dead_letters_total`
//! and in dead letters' `fieldcrypt.error.code` header. One enum, so a code is
//! never misspelled and docs/OPERATIONS.md's table can be checked against it (a
//! test fails when they disagree).

use std::fmt;

/// The class of a record code: `None` for infrastructure codes.
macro_rules! class_of {
    () => {
        None
    };
    ($c:ident) => {
        Some(Class::$c)
    };
}

macro_rules! codes {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, $kind:ident $(/ $class:ident)?; )*) => {
        /// Every error code fieldcrypt reports.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Code {
            /// All codes, in the order docs/OPERATIONS.md lists them.
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            /// The code as it appears in metrics and headers.
            pub const fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $name,)* }
            }

            /// Whether the code is about one record (it is dead-lettered) or about
            /// the infrastructure (the pipeline pauses or stops).
            pub const fn kind(self) -> Kind {
                match self { $(Code::$variant => Kind::$kind,)* }
            }

            /// A record code's class: the `class` label of
            /// `fieldcrypt_dead_letters_total` (a small fixed set, so every
            /// series can exist from start-up).
            pub const fn class(self) -> Option<Class> {
                match self { $(Code::$variant => class_of!($($class)?),)* }
            }
        }
    };
}

/// Whom a code is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One record: it becomes a dead letter (or stops the pipeline with
    /// `on_error = "stop"`).
    Record,
    /// The infrastructure: the pipeline pauses (outages) or stops.
    Infrastructure,
}

/// What kind of problem a record code is, for dead-letter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// The bytes do not fit: framing, headers, schema, nesting.
    Format,
    /// Where the schema comes from: unknown ids, registrations, routing.
    Schema,
    /// What the encryption policy allows: downgrades, nothing to encrypt, keys.
    Policy,
    /// Keys and ciphertexts: DEK headers, authentication, unknown keys.
    Crypto,
    /// What the brokers refused: size, validity, timestamps.
    Delivery,
}

impl Class {
    /// Every class, in the order docs list them.
    pub const ALL: [Class; 5] = [
        Class::Format,
        Class::Schema,
        Class::Policy,
        Class::Crypto,
        Class::Delivery,
    ];

    /// The class as it appears in the `class` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Format => "format",
            Class::Schema => "schema",
            Class::Policy => "policy",
            Class::Crypto => "crypto",
            Class::Delivery => "delivery",
        }
    }
}

codes! {
    /// The value does not match its schema.
    SchemaMismatch = "schema_mismatch", Record/Format;
    /// Values nested deeper than `schema.max_depth`.
    TooDeep = "too_deep", Record/Format;
    /// The value is not Confluent-framed.
    BadFraming = "bad_framing", Record/Format;
    /// The key is not Confluent-framed.
    BadKeyFraming = "bad_key_framing", Record/Format;
    /// The registry does not know the record's schema id.
    UnknownSchemaId = "unknown_schema_id", Record/Schema;
    /// The registry refused the output schema (or it is not registered with
    /// `auto_register = false`).
    SchemaRejected = "schema_rejected", Record/Schema;
    /// The schema's encryption policy is invalid, or a key it needs is missing.
    PolicyError = "policy_error", Record/Policy;
    /// The writer schema leaves in clear what its subject (or `require`) encrypts.
    PolicyDowngrade = "policy_downgrade", Record/Policy;
    /// A record key field with a randomized policy.
    RandomizedKeyField = "randomized_key_field", Record/Policy;
    /// A header name that cannot be read exactly.
    BadHeader = "bad_header", Record/Format;
    /// The output exceeds the topic's or the producer's size limit.
    RecordTooLarge = "record_too_large", Record/Delivery;
    /// The brokers refused the record as invalid.
    InvalidRecord = "invalid_record", Record/Delivery;
    /// The brokers refused the record's timestamp.
    InvalidTimestamp = "invalid_timestamp", Record/Delivery;
    /// More randomized fields than one DEK may encrypt.
    DekExhausted = "dek_exhausted", Record/Crypto;
    /// A ciphertext failed authentication.
    AuthenticationFailed = "authentication_failed", Record/Crypto;
    /// A field does not hold a fieldcrypt ciphertext.
    MalformedCiphertext = "malformed_ciphertext", Record/Crypto;
    /// A ciphertext names a key that is not available.
    UnknownKey = "unknown_key", Record/Crypto;
    /// A `fieldcrypt.dek` header cannot be read.
    BadDekHeader = "bad_dek_header", Record/Crypto;
    /// A `fieldcrypt.dek` header's scope is not accepted by the route.
    DekScopeRefused = "dek_scope_refused", Record/Crypto;
    /// A known DEK id with another scope, KEK or wrapped key.
    DekBindingMismatch = "dek_binding_mismatch", Record/Crypto;
    /// A wrapped DEK did not unwrap.
    DekUnwrapFailed = "dek_unwrap_failed", Record/Crypto;
    /// A decrypted value does not match the field's original schema.
    PlaintextMismatch = "plaintext_mismatch", Record/Format;
    /// No route for the record's topic (a bug: subscriptions come from routes).
    NoRoute = "no_route", Record/Schema;
    /// No Schema Registry configured for a framed record.
    NoRegistry = "no_registry", Record/Schema;
    /// The writer schema encrypts nothing (the route does not allow that).
    NothingToEncrypt = "nothing_to_encrypt", Record/Policy;
    /// A decrypting route got a schema with nothing encrypted in it.
    NotEncrypted = "not_encrypted", Record/Policy;
    /// The KMS could not be reached (counted once per retry of a held record).
    KmsUnavailable = "kms_unavailable", Infrastructure;
    /// The KMS refused (access denied, a disabled key, bad configuration).
    KmsRefused = "kms_refused", Infrastructure;
    /// The registry could not be reached (counted once per retry).
    RegistryUnavailable = "registry_unavailable", Infrastructure;
    /// The registry refused the credentials.
    RegistryUnauthorized = "registry_unauthorized", Infrastructure;
    /// The registry answered something unusable.
    RegistryInvalidAnswer = "registry_invalid_answer", Infrastructure;
    /// The registry client is misconfigured.
    RegistryConfig = "registry_config", Infrastructure;
    /// A consumer error (logged; the consumer goes on).
    KafkaConsume = "kafka_consume", Infrastructure;
    /// The producer refused a record for a reason that is not the record's.
    ProduceFailed = "produce_failed", Infrastructure;
    /// A delivery failed for a reason that is not the record's.
    DeliveryFailed = "delivery_failed", Infrastructure;
    /// An exactly-once transaction failed.
    Transaction = "transaction", Infrastructure;
    /// A Kafka client error stopped the pipeline.
    Kafka = "kafka", Infrastructure;
    /// The pipeline could not start.
    Setup = "setup", Infrastructure;
}

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/OPERATIONS.md's code table lists exactly the codes, in order.
    #[test]
    fn the_operations_docs_list_every_code() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/OPERATIONS.md"),
        )
        .unwrap();
        let table: Vec<(String, String)> = doc
            .split("<!-- codes:begin -->")
            .nth(1)
            .and_then(|t| t.split("<!-- codes:end -->").next())
            .expect("docs/OPERATIONS.md has the codes table between its markers")
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((code.to_string(), cells.get(2)?.to_string()))
            })
            .collect();
        let expected: Vec<(String, String)> = Code::ALL
            .iter()
            .map(|c| {
                let kind = match (c.kind(), c.class()) {
                    (Kind::Record, Some(class)) => format!("record ({})", class.as_str()),
                    (Kind::Record, None) => "record".to_string(),
                    (Kind::Infrastructure, _) => "infrastructure".to_string(),
                };
                (c.as_str().to_string(), kind)
            })
            .collect();
        assert_eq!(
            table, expected,
            "docs/OPERATIONS.md's code table and codes::Code disagree"
        );
    }

    #[test]
    fn every_record_code_has_a_class_and_no_infrastructure_code_has_one() {
        for c in Code::ALL {
            assert_eq!(
                c.class().is_some(),
                c.kind() == Kind::Record,
                "{c}: record codes are classed for the dead-letter counter"
            );
        }
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }
}
