//! The Kafka clients of a run: librdkafka's settings (fieldcrypt's defaults, then
//! the user's `kafka.properties`), errors that name the user's key, and one
//! lane's producer (idempotent; transactional under exactly-once) and consumer,
//! subscribed to the routes' topics.

use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;

use super::lane::{Lane, LaneState, Shared};
use super::produce::{AckContext, LaneProducer, Sender};
use super::rebalance::LaneContext;
use super::{limits, transaction, PipelineError};
use crate::config::{Config, Delivery};
use crate::observe::kafka::KafkaLog;

/// The librdkafka settings common to consumer and producer: fieldcrypt's defaults,
/// then the user's pass-through properties (which may override the defaults but
/// not the managed keys, refused by config validation).
pub(crate) fn client_config(config: &Config, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("client.id", &config.kafka.client_id);
    c.set_log_level(crate::observe::kafka::log_level());
    c
}

/// A Kafka client that librdkafka would not create: when it refused one of the
/// user's `kafka.properties`, the error names that key.
pub(crate) fn client_error(config: &Config, e: KafkaError) -> PipelineError {
    if let KafkaError::ClientConfig(_, desc, key, _) = &e {
        // The value is left out: it may be a credential (sasl.password).
        let msg = format!("librdkafka refused it: {desc}");
        return PipelineError::Setup(if config.kafka.properties.contains_key(key) {
            format!(
                "config key kafka.properties.\"{key}\": {msg} (librdkafka's properties: https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md)"
            )
        } else {
            format!("Kafka client setting {key}: {msg}")
        });
    }
    if let KafkaError::ClientCreation(msg) = &e {
        if let Some(k) = config
            .kafka
            .properties
            .keys()
            .find(|k| msg.contains(&format!("\"{k}\"")) || msg.contains(k.as_str()))
        {
            return PipelineError::Setup(format!(
                "config key kafka.properties.\"{k}\": librdkafka refused it: {msg} (its properties: https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md)"
            ));
        }
        return PipelineError::Setup(format!("cannot create the Kafka client: {msg}"));
    }
    PipelineError::Kafka(e)
}

/// The consumer settings fieldcrypt chooses (the user's `kafka.properties` win).
/// Incremental rebalancing (KIP-429): a join or leave moves only the partitions
/// that change owner while the others keep flowing; both delivery modes settle
/// revoked partitions before they go. Under the KIP-848 protocol
/// (`group.protocol = "consumer"`) the broker assigns, and librdkafka refuses a
/// client-side strategy, so none is set.
fn consumer_defaults(config: &Config) -> Vec<(&'static str, &'static str)> {
    let mut d = vec![
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", "5000"),
    ];
    let kip848 = config
        .kafka
        .properties
        .get("group.protocol")
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("consumer"));
    if !kip848 {
        d.push(("partition.assignment.strategy", "cooperative-sticky"));
    }
    d
}

/// This instance's `transactional.id`.
fn transactional_id(config: &Config) -> String {
    if let Some(id) = &config.pipeline.transactional_id {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{}-{host}-{}", config.kafka.group_id, std::process::id())
}

/// How many lanes: `pipeline.workers`, or one per two cores (at least one).
pub fn lanes(config: &Config) -> usize {
    match config.pipeline.workers {
        0 => (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1),
        n => n,
    }
}

/// Lane `id`, ready to run: its producer (transactions started under
/// exactly-once) and its consumer, subscribed to `subs`.
pub(super) async fn new_lane(
    config: &Config,
    id: usize,
    shared: &Shared,
    kafka: &Arc<KafkaLog>,
    subs: &[&str],
) -> Result<Lane, PipelineError> {
    let eos = config.pipeline.delivery == Delivery::ExactlyOnce;
    let mut pc = client_config(config, &[("linger.ms", "5")]);
    pc.set("enable.idempotence", "true").set("acks", "all");
    if eos {
        pc.set(
            "transactional.id",
            format!("{}-{id}", transactional_id(config)),
        );
    }
    let producer: Arc<LaneProducer> = Arc::new(
        pc.create_with_context(AckContext::new(kafka.clone()))
            .map_err(|e| client_error(config, e))?,
    );
    if eos {
        transaction::init(&producer).await?;
    }
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let consumer: StreamConsumer<LaneContext> = client_config(config, &consumer_defaults(config))
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", if eos { "false" } else { "true" })
        .set("enable.auto.offset.store", "false")
        // Records of aborted upstream transactions must never be encrypted and passed on.
        .set("isolation.level", "read_committed")
        .create_with_context(LaneContext::new(
            events_tx,
            shared.metrics.clone(),
            kafka.clone(),
        ))
        .map_err(|e| client_error(config, e))?;
    consumer.subscribe(subs)?;
    let sender = Sender::new(
        producer,
        limits::Limits::new(config)?,
        config.pipeline.dead_letter_payload,
    );
    Ok(Lane {
        consumer: Arc::new(consumer),
        events,
        state: LaneState::new(id, sender, shared, &config.pipeline),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(props: &[(&str, &str)]) -> Option<String> {
        let mut config = Config::default();
        for (k, v) in props {
            config.kafka.properties.insert(k.to_string(), v.to_string());
        }
        client_config(&config, &consumer_defaults(&config))
            .get("partition.assignment.strategy")
            .map(str::to_string)
    }

    #[test]
    fn consumers_rebalance_incrementally_unless_told_otherwise() {
        assert_eq!(strategy(&[]).as_deref(), Some("cooperative-sticky"));
        // The user's choice wins.
        assert_eq!(
            strategy(&[("partition.assignment.strategy", "range")]).as_deref(),
            Some("range")
        );
        // KIP-848: the broker assigns; librdkafka refuses a client-side strategy.
        assert_eq!(strategy(&[("group.protocol", "Consumer")]), None);
        assert_eq!(
            strategy(&[("group.protocol", "classic")]).as_deref(),
            Some("cooperative-sticky")
        );
    }
}
