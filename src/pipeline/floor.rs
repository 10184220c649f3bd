//! The benchmark floor: the least any Kafka forwarder on fieldcrypt's librdkafka
//! settings can cost. It consumes the routes' sources, produces the same bytes
//! (key, value, headers, timestamp, partition) to their targets, and stores each
//! offset after its delivery — no decoding, no routing beyond the topic template,
//! no dead letters. `fieldcrypt forward` runs it; the pipeline benchmark measures
//! the pipeline against it in the same run.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use super::{client_config, PipelineError, RunStats};
use crate::config::Config;
use crate::kafka::route::Router;
use crate::observe::Metrics;

/// A delivery report: the source (topic, partition, offset) and whether it landed.
type Report = (Arc<str>, i32, i64, bool);

/// Delivery reports, collected where the producer is polled (the forwarding task).
struct Acks(std::sync::Mutex<Vec<Report>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    /// The source position: (topic, partition, offset).
    type DeliveryOpaque = Box<(Arc<str>, i32, i64)>;

    fn delivery(&self, r: &DeliveryResult<'_>, o: Self::DeliveryOpaque) {
        let (t, p, off) = *o;
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((t, p, off, r.is_ok()));
    }
}

/// The floor's producer (as `run`'s, idempotent) and consumer, subscribed to the
/// routes' sources.
fn clients(
    config: &Config,
    router: &Router,
) -> Result<(BaseProducer<Acks>, StreamConsumer), PipelineError> {
    let producer: BaseProducer<Acks> = client_config(config, &[("linger.ms", "5")])
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create_with_context(Acks(Default::default()))?;
    let consumer: StreamConsumer = client_config(config, &[("auto.offset.reset", "earliest")])
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let subs = router.subscriptions();
    let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
    consumer.subscribe(&subs)?;
    Ok((producer, consumer))
}

/// Produces a consumed record's bytes to `target`, same partition, with its
/// source position as the delivery opaque; a full queue is served and retried.
fn forward(
    producer: &BaseProducer<Acks>,
    m: &BorrowedMessage<'_>,
    src: Arc<str>,
    target: &str,
) -> Result<(), PipelineError> {
    let mut rec = BaseRecord::with_opaque_to(target, Box::new((src, m.partition(), m.offset())))
        .partition(m.partition());
    if let Some(k) = m.key() {
        rec = rec.key(k);
    }
    if let Some(p) = m.payload() {
        rec = rec.payload(p);
    }
    if let Some(h) = m.headers() {
        rec = rec.headers(h.detach());
    }
    if let Some(ts) = m.timestamp().to_millis() {
        rec = rec.timestamp(ts);
    }
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                // Serve deliveries, then try again.
                rec = r;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(PipelineError::Kafka(e)),
        }
    }
}

/// Collects delivery reports and stores each delivered record's offset; how many
/// settled. A failed delivery stops the floor.
fn settle(
    producer: &BaseProducer<Acks>,
    consumer: &StreamConsumer,
) -> Result<usize, PipelineError> {
    producer.poll(Duration::ZERO);
    let acks = std::mem::take(
        &mut *producer
            .context()
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    for (t, p, o, ok) in &acks {
        if !ok {
            return Err(PipelineError::Setup(format!(
                "delivery from {t}/{p}@{o} failed"
            )));
        }
        // One partition in, the same partition out: deliveries come in order.
        let _ = consumer.store_offset(t, *p, *o);
    }
    Ok(acks.len())
}

/// Forwards until `shutdown` resolves.
pub async fn run(
    config: &Config,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<RunStats, PipelineError> {
    let router = Router::new(&config.routes).map_err(|e| PipelineError::Setup(e.to_string()))?;
    let (producer, consumer) = clients(config, &router)?;
    let _server = match config.metrics.listen.as_str() {
        "" => None,
        l => Some(
            crate::observe::server::serve(l, metrics.clone())
                .await
                .map_err(|e| PipelineError::Setup(e.to_string()))?,
        ),
    };
    metrics.add_assigned(1);
    let consumed = metrics.records_consumed.with_label_values(&["floor"]);
    let produced = metrics.records_produced.with_label_values(&["floor"]);
    // Counted as `run` counts them, so the benchmark reads input bytes the same way.
    let bytes_in = metrics.bytes_consumed.with_label_values(&["floor"]);
    let mut stats = RunStats::default();
    let mut targets: std::collections::HashMap<String, (Arc<str>, String)> = Default::default();
    let mut in_flight = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = tick.tick(), if in_flight > 0 => {}
            m = consumer.recv() => {
                let m = m?;
                let (src, target) = match targets.get(m.topic()) {
                    Some(t) => t.clone(),
                    None => {
                        let d = router.route(m.topic()).map_err(|e| PipelineError::Setup(e.to_string()))?;
                        let t: (Arc<str>, String) = (Arc::from(m.topic()), d.target.clone());
                        targets.insert(m.topic().to_string(), t.clone());
                        t
                    }
                };
                forward(&producer, &m, src, &target)?;
                in_flight += 1;
                stats.consumed += 1;
                consumed.inc();
                bytes_in.inc_by((m.payload_len() + m.key().map_or(0, <[u8]>::len)) as u64);
            }
        }
        let settled = settle(&producer, &consumer)?;
        in_flight -= settled;
        stats.produced += settled as u64;
        produced.inc_by(settled as u64);
    }
    producer
        .flush(Timeout::After(Duration::from_secs(10)))
        .map_err(PipelineError::Kafka)?;
    Ok(stats)
}
