//! `fieldcrypt run`: the consume → transform → produce loop, at-least-once.
//!
//! Delivery idea (after rust-rdkafka's `at_least_once` example and Vector's Kafka
//! source): offsets are stored for commit only after the output record (or its dead
//! letter) is acknowledged by the broker, in order per partition
//! ([`offsets::OffsetTracker`]); librdkafka auto-commits what was stored.
//! Acknowledgements are handled before new input, and at most
//! `pipeline.max_in_flight` records are consumed but undelivered (backpressure: a
//! full window stops consumption, never drops). On shutdown the loop stops
//! fetching, waits for in-flight deliveries up to `pipeline.drain_timeout_seconds`,
//! commits, and returns. A record that fails to deliver stops the pipeline without
//! storing its offset, so it is read again on restart.

pub mod offsets;
pub mod record;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use thiserror::Error;

use crate::config::{Config, OnError};
use crate::engine::Engine;
use crate::kafka::route::Router;
use offsets::OffsetTracker;
use record::{Outcome, Transformer};

/// Why the pipeline stopped with an error.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Setup(String),
    #[error("{topic}/{partition}@{offset}: {msg}")]
    Record {
        topic: String,
        partition: i32,
        offset: i64,
        msg: String,
    },
}

/// Counters of one run, for reports and tests.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    pub consumed: u64,
    pub produced: u64,
    pub dead_lettered: u64,
}

/// Commits what is done for revoked partitions and forgets what is not.
struct Context {
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(tpl) = rebalance {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::warn!(error = %e, "commit before revoking partitions failed");
            }
            let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
            for e in tpl.elements() {
                t.forget(e.topic(), e.partition());
            }
        }
    }
}

type Delivery = Pin<Box<dyn Future<Output = (String, i32, i64, bool, Result<(), String>)> + Send>>;

fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("client.id", &config.kafka.client_id);
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c
}

/// Runs until `shutdown` resolves (then drains and commits) or a fatal error.
pub async fn run(
    engine: Arc<Engine>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<RunStats, PipelineError> {
    let router = Router::new(&config.routes).map_err(|e| PipelineError::Setup(e.to_string()))?;
    let transformer =
        Transformer::new(engine.clone(), config, &router).map_err(PipelineError::Setup)?;
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));

    let consumer: StreamConsumer<Context> = client_config(config)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(Context {
            tracker: tracker.clone(),
        })?;
    let producer: FutureProducer = client_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
    let subs = router.subscriptions();
    let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
    consumer.subscribe(&subs)?;

    let mut stats = RunStats::default();
    let mut in_flight: FuturesUnordered<Delivery> = FuturesUnordered::new();
    let mut partitions: HashMap<String, Option<i32>> = HashMap::new();
    let max = config.pipeline.max_in_flight;
    tokio::pin!(shutdown);
    let mut failure: Option<PipelineError> = None;

    loop {
        tokio::select! {
            biased;
            Some(done) = in_flight.next() => {
                if let Err(e) = settle(&consumer, &tracker, done, &mut stats) {
                    failure = Some(e);
                    break;
                }
            }
            _ = &mut shutdown => break,
            msg = consumer.recv(), if in_flight.len() < max => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "consume error");
                        continue;
                    }
                };
                stats.consumed += 1;
                match dispatch(&msg, &transformer, &producer, &router, &mut partitions, config.pipeline.on_error).await {
                    Ok(d) => {
                        tracker
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .begin(msg.topic(), msg.partition(), msg.offset());
                        in_flight.push(d);
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
    }

    // Drain: deliveries already handed to the producer finish or time out.
    let deadline = tokio::time::sleep(Duration::from_secs(config.pipeline.drain_timeout_seconds));
    tokio::pin!(deadline);
    while !in_flight.is_empty() {
        tokio::select! {
            Some(done) = in_flight.next() => {
                if let Err(e) = settle(&consumer, &tracker, done, &mut stats) {
                    failure.get_or_insert(e);
                }
            }
            _ = &mut deadline => {
                tracing::warn!(left = in_flight.len(), "drain deadline reached; undelivered records will be read again");
                break;
            }
        }
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored yet is not an error worth failing the shutdown for.
        tracing::debug!(error = %e, "final commit");
    }
    let _ = producer.flush(Timeout::After(Duration::from_secs(5)));
    match failure {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

/// Handles one acknowledgement: store the offset if the partition advanced.
fn settle(
    consumer: &StreamConsumer<Context>,
    tracker: &Arc<Mutex<OffsetTracker>>,
    (topic, partition, offset, dead, result): (String, i32, i64, bool, Result<(), String>),
    stats: &mut RunStats,
) -> Result<(), PipelineError> {
    if let Err(msg) = result {
        return Err(PipelineError::Record {
            topic,
            partition,
            offset,
            msg: format!("delivery failed: {msg}"),
        });
    }
    if dead {
        stats.dead_lettered += 1;
    } else {
        stats.produced += 1;
    }
    let store = tracker
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .done(&topic, partition, offset);
    if let Some(o) = store {
        if let Err(e) = consumer.store_offset(&topic, partition, o) {
            tracing::debug!(error = %e, topic, partition, "offset not stored (partition revoked?)");
        }
    }
    Ok(())
}

/// Transforms one message and hands the result to the producer.
async fn dispatch(
    msg: &BorrowedMessage<'_>,
    transformer: &Transformer,
    producer: &FutureProducer,
    router: &Router,
    partitions: &mut HashMap<String, Option<i32>>,
    on_error: OnError,
) -> Result<Delivery, PipelineError> {
    let (topic, partition, offset) = (msg.topic().to_string(), msg.partition(), msg.offset());
    let fail = |m: String| PipelineError::Record {
        topic: topic.clone(),
        partition,
        offset,
        msg: m,
    };
    let dest = router.route(&topic).map_err(|e| fail(e.to_string()))?;
    let outcome = transformer
        .transform(msg, dest.route)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (target, payload, headers, dead) = match outcome {
        Outcome::Produce { payload, headers } => (dest.target.clone(), payload, headers, false),
        Outcome::DeadLetter { code, message } => {
            if on_error == OnError::Stop {
                return Err(fail(format!("{code}: {message}")));
            }
            let headers = record::dead_letter_headers(msg, code, &message);
            (
                dest.dead_letter.clone(),
                msg.payload().map(<[u8]>::to_vec),
                headers,
                true,
            )
        }
    };
    // Keep the input partition when the target has enough partitions, so per-key
    // order holds end to end; otherwise let the partitioner hash the key.
    let out_partition = match partitions.get(&target) {
        Some(p) => *p,
        None => {
            let count = producer
                .client()
                .fetch_metadata(Some(&target), Timeout::After(Duration::from_secs(10)))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
                .filter(|n| *n > 0);
            partitions.insert(target.clone(), count);
            count
        }
    };
    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&target).headers(headers);
    if let Some(k) = msg.key() {
        rec = rec.key(k);
    }
    if let Some(p) = payload.as_deref() {
        rec = rec.payload(p);
    }
    if let Some(ts) = msg.timestamp().to_millis() {
        rec = rec.timestamp(ts);
    }
    if let Some(n) = out_partition {
        if partition < n {
            rec = rec.partition(partition);
        }
    }
    let fut = loop {
        match producer.send_result(rec) {
            Ok(f) => break f,
            Err((e, r))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                ) =>
            {
                // Backpressure: wait for the producer queue to drain, never drop.
                rec = r;
                producer.poll(Timeout::After(Duration::from_millis(10)));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(fail(format!("cannot produce to {target}: {e}"))),
        }
    };
    Ok(Box::pin(async move {
        let r = match fut.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(e.to_string()),
            Err(_) => Err("producer dropped".to_string()),
        };
        (topic, partition, offset, dead, r)
    }))
}
