//! How large a record each output topic takes, known before producing: the
//! producer's `message.max.bytes` and the topic's `max.message.bytes` (read with
//! DescribeConfigs; `produce::Sender` caches it with the rest of what it knows of
//! a topic), and the size a record will have. A record
//! over its topic's limit is a dead letter (`record_too_large`) instead of a
//! produce error that would stop the pipeline; a dead letter over the limit of the
//! dead-letter topic goes without its payload (and, if need be, without the
//! original key and headers), saying so in a header.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;

use crate::config::Config;

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_PRODUCER_MAX: usize = 1_000_000;
/// Bytes a record costs beyond key, value and headers: the record batch header
/// (61 bytes) and the record's own varints, with margin. Sizes are checked before
/// compression, so a record that only fits compressed is also refused (fail safe).
pub const RECORD_OVERHEAD: usize = 128;

/// The size a record takes against `message.max.bytes` / `max.message.bytes`
/// (the one size rule: the producer checks every output record with it).
pub fn record_size<H: Headers>(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<&H>,
) -> usize {
    let hdrs: usize = headers.map_or(0, |h| {
        h.iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + 10)
            .sum()
    });
    key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len) + hdrs + RECORD_OVERHEAD
}

/// Per-topic record size limits.
pub struct Limits {
    producer_max: usize,
    admin: Option<AdminClient<DefaultClientContext>>,
}

impl Limits {
    /// Reads the producer's limit from the config's Kafka properties; topic limits
    /// are read from the brokers on first use.
    pub fn new(config: &Config) -> Result<Self, KafkaError> {
        let admin = super::client_config(config, &[]).create()?;
        Ok(Limits {
            producer_max: producer_max(config),
            admin: Some(admin),
        })
    }

    /// Limits without a broker (tests): the producer's only.
    pub fn fixed(producer_max: usize) -> Self {
        Limits {
            producer_max,
            admin: None,
        }
    }

    /// The largest record `topic` takes: the smaller of the producer's limit and
    /// the topic's, when the topic's can be read. Asks the brokers on every call:
    /// the caller caches.
    pub async fn for_topic(&self, topic: &str) -> usize {
        self.effective(self.describe(topic).await)
    }

    /// The smaller of the producer's limit and a topic's (`None`: unknown).
    fn effective(&self, topic_max: Option<usize>) -> usize {
        topic_max.map_or(self.producer_max, |t| t.min(self.producer_max))
    }

    async fn describe(&self, topic: &str) -> Option<usize> {
        let admin = self.admin.as_ref()?;
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let r = admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
            .await;
        let found = match r {
            Ok(mut v) => match v.pop() {
                Some(Ok(res)) => res
                    .get("max.message.bytes")
                    .and_then(|e| e.value.as_deref())
                    .and_then(|v| v.parse::<usize>().ok()),
                Some(Err(e)) => {
                    tracing::debug!(topic, error = %e, "cannot read the topic's max.message.bytes");
                    None
                }
                None => None,
            },
            Err(e) => {
                tracing::warn!(topic, error = %e, "cannot read the topic's max.message.bytes (DescribeConfigs); using the producer's message.max.bytes alone");
                None
            }
        };
        found
    }
}

/// The producer's `message.max.bytes`, as configured or librdkafka's default.
pub fn producer_max(config: &Config) -> usize {
    config
        .kafka
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_PRODUCER_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};

    #[test]
    fn sizes_count_key_value_and_headers() {
        let h = OwnedHeaders::new().insert(Header {
            key: "abc",
            value: Some(&[0u8; 100][..]),
        });
        assert_eq!(
            record_size(Some(&[0u8; 10]), Some(&[0u8; 1000]), Some(&h)),
            10 + 1000 + 3 + 100 + 10 + RECORD_OVERHEAD
        );
        assert_eq!(
            record_size(None, None, Some(&OwnedHeaders::new())),
            RECORD_OVERHEAD
        );
    }

    #[tokio::test]
    async fn the_smaller_limit_wins() {
        let l = Limits::fixed(5000);
        // No brokers: the topic's limit is unknown and the producer's holds.
        assert_eq!(l.for_topic("any").await, 5000);
        assert_eq!(l.effective(Some(2000)), 2000);
        assert_eq!(l.effective(Some(9000)), 5000);
    }
}
