//! Rebalances as messages. librdkafka announces assignments and revocations from
//! inside the consumer's poll; the callback here only copies the partition list
//! into the lane's event channel and returns — nothing blocks in it. The lane then
//! settles what it must (exactly-once: commits the open transaction once its
//! records are acknowledged; at-least-once: commits what is stored) and completes
//! the rebalance itself with [`complete`], which librdkafka waits for. Consumer statistics (lag) are read here too.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;

use crate::observe::kafka::KafkaLog;
use crate::observe::Metrics;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

/// A rebalance the lane must complete.
#[derive(Debug)]
pub enum Event {
    Assign(TopicPartitionList),
    Revoke(TopicPartitionList),
    /// The group reported an error; nothing to complete.
    Error(String),
}

/// The consumer's context: forwards rebalances to its lane, exports lag, and
/// passes librdkafka's logs and errors to [`KafkaLog`].
pub struct LaneContext {
    events: UnboundedSender<Event>,
    metrics: Arc<Metrics>,
    /// Where the client's logs, errors and broker states go.
    pub kafka: Arc<KafkaLog>,
}

impl LaneContext {
    pub fn new(
        events: UnboundedSender<Event>,
        metrics: Arc<Metrics>,
        kafka: Arc<KafkaLog>,
    ) -> Self {
        LaneContext {
            events,
            metrics,
            kafka,
        }
    }
}

impl ClientContext for LaneContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.kafka.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.kafka.error(&error, reason);
    }

    fn stats(&self, s: Statistics) {
        self.kafka.stats(&s);
        for (topic, t) in &s.topics {
            let label = self.metrics.topic_label(topic);
            for (p, part) in &t.partitions {
                // Partition -1 is librdkafka's internal one; lag -1 means unknown.
                if *p >= 0 && part.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[label, &p.to_string()])
                        .set(part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LaneContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let ev = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Event::Assign(tpl.clone()),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Event::Revoke(tpl.clone()),
            e => Event::Error(format!("{e:?}")),
        };
        // The lane has ended (the consumer is closing, which revokes everything):
        // nothing is left to settle, so complete the rebalance here, or the close
        // would wait for it forever.
        if let Err(e) = self.events.send(ev) {
            if let Err(err) = complete(consumer, &e.0) {
                tracing::debug!(error = %err, "completing the closing rebalance failed");
            }
        }
    }
}

/// Completes a rebalance the lane has settled: takes the assignment (or gives the
/// revoked partitions up), incrementally under the cooperative protocol.
pub fn complete<C: Consumer<LaneContext>>(consumer: &C, ev: &Event) -> KafkaResult<()> {
    let cooperative = matches!(
        consumer.rebalance_protocol(),
        RebalanceProtocol::Cooperative
    );
    match ev {
        Event::Assign(tpl) if cooperative => consumer.incremental_assign(tpl),
        Event::Assign(tpl) => consumer.assign(tpl),
        Event::Revoke(tpl) if cooperative => consumer.incremental_unassign(tpl),
        Event::Revoke(_) => consumer.unassign(),
        Event::Error(_) => Ok(()),
    }
}
