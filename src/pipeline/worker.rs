//! Transform workers: each owns a share of the partitions (a partition always goes
//! to the same worker, so its records are transformed and produced in order),
//! transforms records concurrently with the other workers, hands the results to the
//! producer, and reports every acknowledgement back to the loop.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::offsets::OffsetTracker;
use super::record::{dead_letter_headers, Outcome, Transformer};
use crate::config::{DeadLetterPayload, OnError};
use crate::kafka::headers;
use crate::kafka::route::{Destination, RouteError, Router};
use crate::observe::Metrics;

/// One consumed record on its way to a worker.
pub struct Job {
    pub msg: OwnedMessage,
    /// The partition epoch from [`OffsetTracker::begin`].
    pub epoch: u64,
    /// Holds one slot of the in-flight window until the record is settled.
    pub permit: OwnedSemaphorePermit,
}

/// Where a record came from, and the partition epoch it belongs to.
#[derive(Debug, Clone)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub epoch: u64,
}

/// What became of one record.
pub enum Done {
    /// Acknowledged by the broker on the destination's target (or, when `code` is
    /// set, its dead-letter topic).
    Delivered {
        source: Source,
        dest: Arc<Destination>,
        code: Option<&'static str>,
        bytes: usize,
        timestamp: Option<i64>,
        _permit: OwnedSemaphorePermit,
    },
    /// No longer this instance's (revoked or rewound) before it was produced.
    Stale { _permit: OwnedSemaphorePermit },
    /// The record could not be delivered, or an infrastructure failure (KMS,
    /// registry) happened while transforming it: the pipeline stops without
    /// storing its offset.
    Failed {
        source: Source,
        code: &'static str,
        msg: String,
        _permit: OwnedSemaphorePermit,
    },
}

type Delivery = Pin<Box<dyn Future<Output = Done> + Send>>;

/// Everything the workers share.
pub struct Shared {
    pub producer: FutureProducer,
    pub transformer: Transformer,
    pub router: Router,
    pub metrics: Arc<Metrics>,
    pub tracker: Arc<Mutex<OffsetTracker>>,
    /// Exactly-once: held for reading while a record is handed to the producer,
    /// for writing while a transaction is aborted, so no record of an aborted
    /// transaction's partitions slips into the next one.
    pub gate: Arc<RwLock<()>>,
    pub on_error: OnError,
    pub dead_letter_payload: DeadLetterPayload,
    /// Target topic → partition count (None: unknown, let the partitioner pick)
    /// and when it was fetched.
    pub partitions: Mutex<HashMap<String, (Option<i32>, Instant)>>,
    /// Source topic → where its records go (routing once per topic, not per record).
    pub destinations: Mutex<HashMap<String, Arc<Destination>>>,
    /// Set when the pipeline stops: records waiting out an outage give up (undelivered).
    pub stopping: std::sync::atomic::AtomicBool,
    /// Record size limits per output topic.
    pub limits: super::limits::Limits,
    /// Exactly-once: a refused delivery aborts the transaction, so it cannot be
    /// turned into a dead letter afterwards.
    pub eos: bool,
}

/// Longest wait between retries of a record held by an outage.
const STALL_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One worker waiting out a KMS or registry outage; counted in the metrics while
/// it lasts (the loop pauses consumption while any worker is stalled).
struct Stall<'a> {
    metrics: &'a Metrics,
    since: Option<Instant>,
    backoff: Duration,
}

impl<'a> Stall<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        Stall {
            metrics,
            since: None,
            backoff: Duration::from_millis(250),
        }
    }

    fn active(&self) -> bool {
        self.since.is_some()
    }

    async fn wait(&mut self, source: &Source, e: &super::record::Fatal) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            self.metrics.add_stalled(1);
            tracing::warn!(
                topic = %source.topic,
                partition = source.partition,
                offset = source.offset,
                code = e.code(),
                error = %e,
                "outage: holding the record and pausing consumption until the service answers"
            );
        }
        self.metrics.errors.with_label_values(&[e.code()]).inc();
        // Full jitter, so instances recovering together do not retry in step.
        tokio::time::sleep(self.backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0)).await;
        self.backoff = (self.backoff * 2).min(STALL_MAX_BACKOFF);
    }
}

/// Resolves once the pipeline is stopping (checked every 100 ms; only awaited by
/// records held through an outage).
async fn stopped(flag: &std::sync::atomic::AtomicBool) {
    while !flag.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for Stall<'_> {
    fn drop(&mut self) {
        if let Some(since) = self.since {
            self.metrics.add_stalled(-1);
            tracing::info!(
                waited_ms = since.elapsed().as_millis() as u64,
                "stopped holding the record (the service answered, or the pipeline is stopping)"
            );
        }
    }
}

/// Runs one worker until its queue closes and its deliveries are reported.
pub async fn run(
    shared: Arc<Shared>,
    mut jobs: mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Done>,
) {
    let mut deliveries: FuturesUnordered<Delivery> = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some(d) = deliveries.next() => {
                let _ = done.send(d);
            }
            job = jobs.recv() => match job {
                Some(job) => match process(&shared, job).await {
                    Ok(d) => deliveries.push(d),
                    Err(d) => {
                        let _ = done.send(d);
                    }
                },
                None => break,
            },
        }
    }
    while let Some(d) = deliveries.next().await {
        let _ = done.send(d);
    }
}

/// Transforms one record and hands it to the producer.
async fn process(shared: &Shared, job: Job) -> Result<Delivery, Done> {
    let Job { msg, epoch, permit } = job;
    let source = Source {
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        offset: msg.offset(),
        epoch,
    };
    let stale = |permit| Done::Stale { _permit: permit };
    let owned = |s: &Shared| {
        s.tracker.lock().unwrap_or_else(|p| p.into_inner()).owns(
            &source.topic,
            source.partition,
            source.offset,
            source.epoch,
        )
    };
    if !owned(shared) {
        return Err(stale(permit));
    }
    let fail = |code: &'static str, msg: String, permit| Done::Failed {
        source: source.clone(),
        code,
        msg,
        _permit: permit,
    };
    let dest = match shared.destination(&source.topic) {
        Ok(d) => d,
        Err(e) => return Err(fail("no_route", e.to_string(), permit)),
    };
    // An outage (KMS or registry unreachable after the client's own retries) holds
    // the record here and retries it until the service answers: the loop sees the
    // stall and pauses consumption, and nothing behind it in this partition moves.
    let mut stall = Stall::new(&shared.metrics);
    let outcome = loop {
        let started = Instant::now();
        let transform = shared.transformer.transform(&msg, dest.route, &dest.target);
        let outcome = if stall.active() {
            // A retry can take the KMS client's whole retry budget: a shutdown must
            // not wait for it.
            tokio::select! {
                o = transform => o,
                _ = stopped(&shared.stopping) => return Err(stale(permit)),
            }
        } else {
            transform.await
        };
        shared
            .metrics
            .transform_seconds
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(o) => break o,
            Err(e) if e.is_transient() => {
                if shared.stopping.load(std::sync::atomic::Ordering::SeqCst) || !owned(shared) {
                    // Not delivered, so its offset is not committed: read again.
                    return Err(stale(permit));
                }
                tokio::select! {
                    _ = stall.wait(&source, &e) => {}
                    _ = stopped(&shared.stopping) => return Err(stale(permit)),
                }
            }
            Err(e) => return Err(fail(e.code(), e.to_string(), permit)),
        }
    };
    drop(stall);
    let out = match outcome {
        Outcome::Produce {
            key,
            payload,
            headers,
            counts,
        } => {
            let op = match shared.transformer_mode() {
                crate::config::PipelineMode::Encrypt => "encrypt",
                crate::config::PipelineMode::Decrypt => "decrypt",
            };
            shared.metrics.count_fields(op, &counts);
            Out {
                to_dead_letter: false,
                key: key.map(Key::New).unwrap_or(Key::Original),
                payload: payload.map(Payload::New).unwrap_or(Payload::None),
                headers,
                code: None,
            }
        }
        Outcome::DeadLetter { code, message } => {
            if shared.on_error == OnError::Stop {
                return Err(fail(
                    code,
                    format!("{message} (pipeline.on_error = \"stop\")"),
                    permit,
                ));
            }
            dead_letter(shared, &msg, &source, &dest, code, &message)
        }
    };
    send(shared, msg, source, dest, out, permit).await
}

/// A record's key as it will be sent.
enum Key {
    /// The consumed record's key.
    Original,
    New(Vec<u8>),
    /// None (a dead letter shrunk to fit).
    Dropped,
}

/// A record's value as it will be sent.
enum Payload {
    None,
    Original,
    New(Vec<u8>),
}

/// What to produce for one consumed record: its output, or its dead letter.
struct Out {
    to_dead_letter: bool,
    key: Key,
    payload: Payload,
    headers: OwnedHeaders,
    /// The dead-letter code, for dead letters.
    code: Option<&'static str>,
}

impl Out {
    fn key<'a>(&'a self, msg: &'a OwnedMessage) -> Option<&'a [u8]> {
        match &self.key {
            Key::Original => msg.key(),
            Key::New(k) => Some(k),
            Key::Dropped => None,
        }
    }

    fn payload<'a>(&'a self, msg: &'a OwnedMessage) -> Option<&'a [u8]> {
        match &self.payload {
            Payload::None => None,
            Payload::Original => msg.payload(),
            Payload::New(p) => Some(p),
        }
    }

    /// Makes a dead letter smaller: first without its payload, then without the
    /// original key and headers. False when there is nothing left to drop.
    fn shrink(&mut self, limit: usize, size: usize) -> bool {
        let note = |what: &str| {
            match limit {
            0 => format!("{what} left out: the brokers refused the dead letter ({size} bytes) as too large"),
            _ => format!("{what} left out: the dead letter ({size} bytes) exceeds the dead-letter topic's limit of {limit} bytes"),
        }
        };
        if !matches!(self.payload, Payload::None) {
            self.payload = Payload::None;
            self.headers = std::mem::replace(&mut self.headers, OwnedHeaders::new()).insert(
                rdkafka::message::Header {
                    key: headers::ERROR_PAYLOAD,
                    value: Some(note("payload").as_bytes()),
                },
            );
            return true;
        }
        if !matches!(self.key, Key::Dropped) {
            // Keep only fieldcrypt's own error and source headers.
            let mut h = OwnedHeaders::new();
            for x in self
                .headers
                .iter()
                .filter(|x| headers::is_reserved(x.key) && x.key != headers::DEK)
            {
                h = h.insert(rdkafka::message::Header {
                    key: x.key,
                    value: x.value,
                });
            }
            self.headers = h.insert(rdkafka::message::Header {
                key: headers::ERROR_HEADERS,
                value: Some(note("key and original headers").as_bytes()),
            });
            self.key = Key::Dropped;
            return true;
        }
        false
    }
}

/// The dead letter for a record: the original key and (per config) payload, the
/// original headers and the error headers. Logged and counted here.
fn dead_letter(
    shared: &Shared,
    msg: &OwnedMessage,
    source: &Source,
    dest: &Destination,
    code: &'static str,
    message: &str,
) -> Out {
    shared.metrics.errors.with_label_values(&[code]).inc();
    tracing::warn!(
        topic = %source.topic,
        partition = source.partition,
        offset = source.offset,
        code,
        error = %message,
        dead_letter_topic = %dest.dead_letter,
        "record sent to the dead-letter topic"
    );
    Out {
        to_dead_letter: true,
        key: Key::Original,
        payload: match shared.dead_letter_payload {
            DeadLetterPayload::Keep if msg.payload().is_some() => Payload::Original,
            _ => Payload::None,
        },
        headers: dead_letter_headers(msg, code, message),
        code: Some(code),
    }
}

/// Whether a produce or delivery error is about the record itself (too large,
/// invalid), so the record becomes a dead letter, rather than about the brokers.
fn record_error(e: &KafkaError) -> Option<&'static str> {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code()? {
        C::MessageSizeTooLarge | C::MessageBatchTooLarge => Some("record_too_large"),
        C::InvalidRecord | C::InvalidMessage | C::InvalidMessageSize => Some("invalid_record"),
        C::InvalidTimestamp => Some("invalid_timestamp"),
        _ => None,
    }
}

/// Produces `out` (shrinking or dead-lettering it to fit the topic's size limit)
/// and returns the future of its acknowledgement.
async fn send(
    shared: &Shared,
    msg: OwnedMessage,
    source: Source,
    dest: Arc<Destination>,
    mut out: Out,
    permit: OwnedSemaphorePermit,
) -> Result<Delivery, Done> {
    let fail = |code: &'static str, m: String, permit| Done::Failed {
        source: source.clone(),
        code,
        msg: m,
        _permit: permit,
    };
    let stale = |permit| Done::Stale { _permit: permit };
    // Fit the record to its topic: an output too large becomes a dead letter, and
    // a dead letter too large sheds its payload, then the original key and headers.
    let (fut, bytes, topic) = loop {
        let topic = if out.to_dead_letter {
            &dest.dead_letter
        } else {
            &dest.target
        };
        let limit = shared.limits.for_topic(topic).await;
        let size = super::limits::record_size(out.key(&msg), out.payload(&msg), &out.headers);
        if size > limit {
            if !out.to_dead_letter {
                let m = format!(
                    "the output record ({size} bytes) exceeds the limit of {limit} bytes for topic {topic} (its max.message.bytes, or the producer's message.max.bytes)"
                );
                out = dead_letter(shared, &msg, &source, &dest, "record_too_large", &m);
                continue;
            }
            if out.shrink(limit, size) {
                continue;
            }
            return Err(fail(
                "record_too_large",
                format!("even a dead letter without payload, key or original headers exceeds {limit} bytes for topic {topic}"),
                permit,
            ));
        }
        match produce(shared, &msg, &source, &dest, &out).await {
            Ok(Some(f)) => break (f, size, topic.clone()),
            Ok(None) => return Err(stale(permit)),
            Err(e) => match record_error(&e) {
                // librdkafka's own checks disagree with our estimate: same path.
                Some(code) if !out.to_dead_letter => {
                    let m = format!("cannot produce to {topic}: {e}");
                    out = dead_letter(shared, &msg, &source, &dest, code, &m);
                }
                Some(_) if out.shrink(limit, size) => {}
                _ => {
                    return Err(fail(
                        "produce_failed",
                        format!("cannot produce to {topic}: {e}"),
                        permit,
                    ))
                }
            },
        }
    };
    let timestamp = msg.timestamp().to_millis();
    let eos = shared.eos;
    let retry = (!eos).then(|| (msg, shared.dead_letter_payload, shared.metrics.clone()));
    let producer = shared.producer.clone();
    Ok(Box::pin(async move {
        let code = out.code;
        let delivered = fut.await;
        let err = match delivered {
            Ok(Ok(_)) => {
                return Done::Delivered {
                    source,
                    dest,
                    code,
                    bytes,
                    timestamp,
                    _permit: permit,
                }
            }
            Ok(Err((e, _))) => e,
            Err(_) => KafkaError::Canceled,
        };
        // A record the brokers refused for what it is goes to the dead-letter
        // topic (at-least-once; in a transaction the failure aborts it, so the
        // pipeline stops and the record is read again).
        if let (Some(c), Some((msg, payload_mode, metrics)), false) =
            (record_error(&err), retry, out.to_dead_letter)
        {
            return late_dead_letter(
                producer,
                msg,
                source,
                dest,
                c,
                &err,
                payload_mode,
                metrics,
                timestamp,
                permit,
            )
            .await;
        }
        Done::Failed {
            source,
            code: "delivery_failed",
            msg: format!("delivery to {topic} failed: {err}"),
            _permit: permit,
        }
    }))
}

/// Hands a record to the producer, waiting while its queue is full. `None`: the
/// record's partition is no longer ours.
async fn produce(
    shared: &Shared,
    msg: &OwnedMessage,
    source: &Source,
    dest: &Destination,
    out: &Out,
) -> Result<Option<rdkafka::producer::DeliveryFuture>, KafkaError> {
    let topic = if out.to_dead_letter {
        &dest.dead_letter
    } else {
        &dest.target
    };
    let out_partition = if out.to_dead_letter {
        None
    } else {
        partition_count(shared, topic).await
    };
    let mut rec: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(topic).headers(out.headers.clone());
    if let Some(k) = out.key(msg) {
        rec = rec.key(k);
    }
    if let Some(p) = out.payload(msg) {
        rec = rec.payload(p);
    }
    if let Some(ts) = msg.timestamp().to_millis() {
        rec = rec.timestamp(ts);
    }
    // Keep the input partition when the target has enough partitions, so per-key
    // order holds end to end; otherwise let the partitioner hash the key.
    if let Some(n) = out_partition {
        if source.partition < n {
            rec = rec.partition(source.partition);
        }
    }
    loop {
        let sent = {
            let _g = gate_read(&shared.gate).await;
            let owned = shared
                .tracker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .owns(&source.topic, source.partition, source.offset, source.epoch);
            if !owned {
                return Ok(None);
            }
            shared.producer.send_result(rec)
        };
        match sent {
            Ok(f) => return Ok(Some(f)),
            Err((e, r))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                ) =>
            {
                // Backpressure: wait for the producer queue to drain, never drop.
                rec = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The dead letter of a record the brokers refused after it was sent: produced
/// from within its delivery (at-least-once only), shrunk if the refusal was its size.
#[allow(clippy::too_many_arguments)]
async fn late_dead_letter(
    producer: FutureProducer,
    msg: OwnedMessage,
    source: Source,
    dest: Arc<Destination>,
    code: &'static str,
    err: &KafkaError,
    payload_mode: DeadLetterPayload,
    metrics: Arc<Metrics>,
    timestamp: Option<i64>,
    permit: OwnedSemaphorePermit,
) -> Done {
    let message = format!("the brokers refused the output record: {err}");
    metrics.errors.with_label_values(&[code]).inc();
    tracing::warn!(topic = %source.topic, partition = source.partition, offset = source.offset, code, error = %message, dead_letter_topic = %dest.dead_letter, "record sent to the dead-letter topic");
    let mut out = Out {
        to_dead_letter: true,
        key: Key::Original,
        payload: match payload_mode {
            DeadLetterPayload::Keep if msg.payload().is_some() => Payload::Original,
            _ => Payload::None,
        },
        headers: dead_letter_headers(&msg, code, &message),
        code: Some(code),
    };
    loop {
        let size = super::limits::record_size(out.key(&msg), out.payload(&msg), &out.headers);
        let mut rec: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&dest.dead_letter).headers(out.headers.clone());
        if let Some(k) = out.key(&msg) {
            rec = rec.key(k);
        }
        if let Some(p) = out.payload(&msg) {
            rec = rec.payload(p);
        }
        if let Some(ts) = timestamp {
            rec = rec.timestamp(ts);
        }
        let r = match producer.send_result(rec) {
            Ok(f) => match f.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e),
                Err(_) => Err(KafkaError::Canceled),
            },
            Err((e, _)) => Err(e),
        };
        match r {
            Ok(()) => {
                return Done::Delivered {
                    source,
                    dest,
                    code: Some(code),
                    bytes: size,
                    timestamp,
                    _permit: permit,
                }
            }
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) if record_error(&e).is_some() && out.shrink(0, size) => {}
            Err(e) => {
                return Done::Failed {
                    source,
                    code: "delivery_failed",
                    msg: format!("the dead letter to {} failed: {e}", dest.dead_letter),
                    _permit: permit,
                }
            }
        }
    }
}

impl Shared {
    fn transformer_mode(&self) -> crate::config::PipelineMode {
        self.transformer.mode()
    }

    fn destination(&self, topic: &str) -> Result<Arc<Destination>, RouteError> {
        if let Some(d) = self
            .destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
        {
            return Ok(d.clone());
        }
        let d = Arc::new(self.router.route(topic)?);
        self.destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string(), d.clone());
        Ok(d)
    }
}

/// Takes the gate for reading without blocking a runtime thread: while the
/// rebalance callback holds it (aborting a transaction can take a while) the
/// worker yields instead, so the rest of the runtime (probes included) keeps going.
async fn gate_read(gate: &RwLock<()>) -> std::sync::RwLockReadGuard<'_, ()> {
    loop {
        {
            // The match's temporaries (a would-be guard) must be gone before awaiting.
            match gate.try_read() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How long an unknown partition count is trusted before asking again (the
/// topic may be created, or the broker reachable, by then).
const UNKNOWN_PARTITIONS_TTL: Duration = Duration::from_secs(30);

/// The target's partition count, fetched once per topic off the async threads.
async fn partition_count(shared: &Shared, target: &str) -> Option<i32> {
    if let Some((p, at)) = shared
        .partitions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(target)
    {
        if p.is_some() || at.elapsed() < UNKNOWN_PARTITIONS_TTL {
            return *p;
        }
    }
    let producer = shared.producer.clone();
    let t = target.to_string();
    let count = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&t), Timeout::After(Duration::from_secs(10)))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
            .filter(|n| *n > 0)
    })
    .await
    .ok()
    .flatten();
    if count.is_none() {
        tracing::warn!(topic = target, "partition count of the target unknown; records are partitioned by key until it is known");
    }
    shared
        .partitions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(target.to_string(), (count, Instant::now()));
    count
}
