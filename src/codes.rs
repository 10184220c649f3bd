//! Error codes: the stable names of what went wrong, as they appear in the
//! `code` label of `fieldcrypt_errors_total` and `fieldcrypt_dead_letters_total`
//! and in dead letters' `fieldcrypt.error.code` header. One enum, so a code is
//! never misspelled and docs/OPERATIONS.md's table can be checked against it (a
//! test fails when they disagree).

use std::fmt;

macro_rules! codes {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, $kind:ident; )*) => {
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

codes! {
    /// The value does not match its schema.
    SchemaMismatch = "schema_mismatch", Record;
    /// Values nested deeper than `schema.max_depth`.
    TooDeep = "too_deep", Record;
    /// The value is not Confluent-framed.
    BadFraming = "bad_framing", Record;
    /// The key is not Confluent-framed.
    BadKeyFraming = "bad_key_framing", Record;
    /// The registry does not know the record's schema id.
    UnknownSchemaId = "unknown_schema_id", Record;
    /// The registry refused the output schema (or it is not registered with
    /// `auto_register = false`).
    SchemaRejected = "schema_rejected", Record;
    /// The schema's encryption policy is invalid, or a key it needs is missing.
    PolicyError = "policy_error", Record;
    /// The writer schema leaves in clear what its subject (or `require`) encrypts.
    PolicyDowngrade = "policy_downgrade", Record;
    /// A record key field with a randomized policy.
    RandomizedKeyField = "randomized_key_field", Record;
    /// A header name that cannot be read exactly.
    BadHeader = "bad_header", Record;
    /// The output exceeds the topic's or the producer's size limit.
    RecordTooLarge = "record_too_large", Record;
    /// The brokers refused the record as invalid.
    InvalidRecord = "invalid_record", Record;
    /// The brokers refused the record's timestamp.
    InvalidTimestamp = "invalid_timestamp", Record;
    /// More randomized fields than one DEK may encrypt.
    DekExhausted = "dek_exhausted", Record;
    /// A ciphertext failed authentication.
    AuthenticationFailed = "authentication_failed", Record;
    /// A field does not hold a fieldcrypt ciphertext.
    MalformedCiphertext = "malformed_ciphertext", Record;
    /// A ciphertext names a key that is not available.
    UnknownKey = "unknown_key", Record;
    /// A `fieldcrypt.dek` header cannot be read.
    BadDekHeader = "bad_dek_header", Record;
    /// A `fieldcrypt.dek` header's scope is not accepted by the route.
    DekScopeRefused = "dek_scope_refused", Record;
    /// A known DEK id with another scope, KEK or wrapped key.
    DekBindingMismatch = "dek_binding_mismatch", Record;
    /// A wrapped DEK did not unwrap.
    DekUnwrapFailed = "dek_unwrap_failed", Record;
    /// A decrypted value does not match the field's original schema.
    PlaintextMismatch = "plaintext_mismatch", Record;
    /// No route for the record's topic (a bug: subscriptions come from routes).
    NoRoute = "no_route", Record;
    /// No Schema Registry configured for a framed record.
    NoRegistry = "no_registry", Record;
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
                let kind = match c.kind() {
                    Kind::Record => "record",
                    Kind::Infrastructure => "infrastructure",
                };
                (c.as_str().to_string(), kind.to_string())
            })
            .collect();
        assert_eq!(
            table, expected,
            "docs/OPERATIONS.md's code table and codes::Code disagree"
        );
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
