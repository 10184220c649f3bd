//! `[pipeline]`: how `fieldcrypt run` treats records (mode, delivery guarantee,
//! errors, dead letters, windows and lanes), with its own validation.

use serde::{Deserialize, Serialize};

/// What the pipeline does to records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineMode {
    #[default]
    Encrypt,
    Decrypt,
}

/// What happens to a record that cannot be transformed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Send it (original bytes) to the route's dead-letter topic and go on.
    #[default]
    DeadLetter,
    /// Stop the pipeline without committing the record.
    Stop,
}

/// Delivery guarantee of the pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Offsets committed only after delivery: no loss, duplicates after a crash.
    #[default]
    AtLeastOnce,
    /// Output records and input offsets committed in one Kafka transaction.
    ExactlyOnce,
}

/// What a dead letter carries as its value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterPayload {
    /// The original record bytes (the topic then needs the source's access controls).
    #[default]
    Keep,
    /// No value: headers only (error, source topic/partition/offset).
    Drop,
}

/// `[pipeline]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// `encrypt` (default) or `decrypt`.
    pub mode: PipelineMode,
    /// `at-least-once` (default) or `exactly-once`.
    pub delivery: Delivery,
    /// `dead-letter` (default) or `stop`.
    pub on_error: OnError,
    /// `keep` (default) or `drop` the original bytes in dead letters.
    pub dead_letter_payload: DeadLetterPayload,
    /// Most records consumed but not yet delivered (default 10000).
    pub max_in_flight: usize,
    /// Transform workers; partitions are spread over them (default 0: one per core).
    pub workers: usize,
    /// Exactly-once: how often a transaction is committed (default 100 ms).
    pub transaction_interval_ms: u64,
    /// Exactly-once: `transactional.id` of this instance (default
    /// `<group_id>-<host>-<pid>`; must be unique among running instances).
    pub transactional_id: Option<String>,
    /// Seconds to wait for in-flight records on shutdown (default 30).
    pub drain_timeout_seconds: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            mode: PipelineMode::Encrypt,
            delivery: Delivery::AtLeastOnce,
            on_error: OnError::DeadLetter,
            dead_letter_payload: DeadLetterPayload::Keep,
            max_in_flight: 10_000,
            workers: 0,
            transaction_interval_ms: 100,
            transactional_id: None,
            drain_timeout_seconds: 30,
        }
    }
}

impl PipelineConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if self.max_in_flight == 0 {
            return Err(crate::config::invalid(
                "pipeline.max_in_flight",
                "must be at least 1",
            ));
        }
        if self.transaction_interval_ms == 0 {
            return Err(crate::config::invalid(
                "pipeline.transaction_interval_ms",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
