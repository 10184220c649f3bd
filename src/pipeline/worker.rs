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
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::offsets::OffsetTracker;
use super::record::{dead_letter_headers, Outcome, Transformer};
use crate::config::{DeadLetterPayload, OnError};
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
    let (target, key, payload, headers, code) = match outcome {
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
            (&dest.target, key, payload, headers, None)
        }
        Outcome::DeadLetter { code, message } => {
            if shared.on_error == OnError::Stop {
                return Err(fail(
                    code,
                    format!("{message} (pipeline.on_error = \"stop\")"),
                    permit,
                ));
            }
            // (With on_error = "stop" the loop counts it when it stops.)
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
            let headers = dead_letter_headers(&msg, code, &message);
            let payload = match shared.dead_letter_payload {
                DeadLetterPayload::Keep => msg.payload().map(<[u8]>::to_vec),
                DeadLetterPayload::Drop => None,
            };
            (&dest.dead_letter, None, payload, headers, Some(code))
        }
    };
    let out_partition = partition_count(shared, target).await;
    let key: Option<&[u8]> = match &key {
        Some(k) => Some(k.as_slice()),
        None => msg.key(),
    };
    let bytes = key.map_or(0, <[u8]>::len) + payload.as_ref().map_or(0, Vec::len);
    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(target).headers(headers);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if let Some(p) = payload.as_deref() {
        rec = rec.payload(p);
    }
    let timestamp = msg.timestamp().to_millis();
    if let Some(ts) = timestamp {
        rec = rec.timestamp(ts);
    }
    // Keep the input partition when the target has enough partitions, so per-key
    // order holds end to end; otherwise let the partitioner hash the key.
    if let Some(n) = out_partition {
        if source.partition < n {
            rec = rec.partition(source.partition);
        }
    }
    let fut = loop {
        let sent = {
            let _g = gate_read(&shared.gate).await;
            if !owned(shared) {
                return Err(stale(permit));
            }
            shared.producer.send_result(rec)
        };
        match sent {
            Ok(f) => break f,
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
            Err((e, _)) => {
                return Err(fail(
                    "produce_failed",
                    format!("cannot produce to {target}: {e}"),
                    permit,
                ))
            }
        }
    };
    let target = target.clone();
    Ok(Box::pin(async move {
        match fut.await {
            Ok(Ok(_)) => Done::Delivered {
                source,
                dest,
                code,
                bytes,
                timestamp,
                _permit: permit,
            },
            Ok(Err((e, _))) => Done::Failed {
                source,
                code: "delivery_failed",
                msg: format!("delivery to {target} failed: {e}"),
                _permit: permit,
            },
            Err(_) => Done::Failed {
                source,
                code: "delivery_failed",
                msg: format!("delivery to {target} failed: producer dropped"),
                _permit: permit,
            },
        }
    }))
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
