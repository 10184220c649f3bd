//! Named events of the pipeline: each one writes one structured log line and
//! bumps its metric together, so what the logs say and what the metrics count
//! never drift apart. Messages name positions and codes, never record values.

use std::fmt::Display;

use super::Metrics;
use crate::codes::Code;

/// Where a record is: its source topic, partition and offset.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// A record goes to the dead-letter topic with `code`.
pub fn dead_lettered(m: &Metrics, at: At<'_>, code: Code, message: &str, dead_letter_topic: &str) {
    m.errors.with_label_values(&[code.as_str()]).inc();
    tracing::warn!(
        topic = %at.topic,
        partition = at.partition,
        offset = at.offset,
        code = %code,
        error = %message,
        dead_letter_topic,
        "record sent to the dead-letter topic"
    );
}

/// The KMS or registry is out: a record is held (`first`) or retried again.
pub fn outage(m: &Metrics, at: At<'_>, code: Code, error: &dyn Display, first: bool) {
    m.errors.with_label_values(&[code.as_str()]).inc();
    if first {
        m.set_paused(true);
        tracing::warn!(
            topic = %at.topic,
            partition = at.partition,
            offset = at.offset,
            code = %code,
            error = %error,
            "outage: holding the record and pausing consumption until the service answers"
        );
    } else {
        tracing::debug!(code = %code, error = %error, "outage: the service still does not answer");
    }
}

/// The service answered: consumption resumes after `waited_ms`.
pub fn resumed(m: &Metrics, waited_ms: u64) {
    m.set_paused(false);
    tracing::info!(waited_ms, "consumption resumed");
}
