//! `fieldcrypt run`: the consume → transform → produce loop.
//!
//! One task consumes and owns the offsets; transform [`worker`]s each own a share of
//! the partitions (a partition always goes to the same worker, so per-partition order
//! holds) and run concurrently. At most `pipeline.max_in_flight` records are
//! consumed but unsettled: a full window (or a full producer queue) stops
//! consumption, never drops.
//!
//! At-least-once (after rust-rdkafka's `at_least_once` example and Vector's Kafka
//! source): offsets are stored for commit only after the output record (or its dead
//! letter) is acknowledged, in order per partition ([`offsets::OffsetTracker`]);
//! librdkafka auto-commits what was stored. On revoke, what is stored is committed
//! and the rest is forgotten.
//!
//! Exactly-once: a transactional producer; every `pipeline.transaction_interval_ms`
//! the loop stops taking records, waits until everything in flight is acknowledged,
//! sends the consumed offsets with `send_offsets_to_transaction` and commits. On
//! revoke the open transaction is aborted (its records are discarded for
//! `read_committed` readers and read again by the partitions' next owner); an
//! abortable commit failure aborts and rewinds every partition to its last commit; a
//! fatal one (fenced by a newer producer with the same `transactional.id`) stops the
//! pipeline.
//!
//! On shutdown the loop stops fetching, waits for in-flight records up to
//! `pipeline.drain_timeout_seconds`, commits, and returns. A record that fails to
//! deliver, or meets a KMS refusal, stops the pipeline without its offset being
//! committed, so it is read again on restart. A KMS or registry outage instead holds
//! the record in its worker and pauses the assignment until the service answers.

pub mod limits;
pub mod offsets;
pub mod record;
pub mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use thiserror::Error;
use tokio::sync::{mpsc, Semaphore};

use crate::config::{Config, Delivery};
use crate::engine::Engine;
use crate::kafka::route::Router;
use crate::observe::Metrics;
use crate::registry::SchemaRegistry;
use offsets::{OffsetTracker, Settled};
use record::Transformer;
use worker::{Done, Job, Shared};

/// Why the pipeline stopped with an error.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Setup(String),
    #[error("{topic}/{partition}@{offset}: {code}: {msg}")]
    Record {
        topic: String,
        partition: i32,
        offset: i64,
        code: &'static str,
        msg: String,
    },
    #[error("exactly-once transaction failed: {0}")]
    Transaction(String),
}

/// Counters of one run, for reports and tests.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    pub consumed: u64,
    pub produced: u64,
    pub dead_lettered: u64,
    pub transactions: u64,
}

/// Exactly-once state the rebalance callback needs.
struct Txn {
    producer: FutureProducer,
    gate: Arc<RwLock<()>>,
}

/// Rebalance handling and statistics (consumer lag).
struct Context {
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: Arc<Metrics>,
    txn: Option<Txn>,
    /// Set when the run ends: the revoke that closing the consumer causes aborts
    /// an empty transaction, which is not worth counting.
    closing: AtomicBool,
}

impl ClientContext for Context {
    fn stats(&self, s: Statistics) {
        for (topic, t) in &s.topics {
            for (p, part) in &t.partitions {
                // Partition -1 is librdkafka's internal one; lag -1 means unknown.
                if *p >= 0 && part.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[self.metrics.topic_label(topic), &p.to_string()])
                        .set(part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions revoked");
            self.metrics.rebalances.with_label_values(&["revoke"]).inc();
            let forget = || {
                let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
                let mut topics = std::collections::BTreeSet::new();
                for e in tpl.elements() {
                    t.forget(e.topic(), e.partition());
                    topics.insert(e.topic().to_string());
                }
                // Series of topics no longer assigned go (regex routes come and go).
                for topic in topics {
                    self.metrics.forget_topic(&topic);
                }
            };
            match &self.txn {
                Some(txn) => {
                    // Hold off workers while the transaction is swapped and the
                    // partitions forgotten, so no record of a revoked partition
                    // lands in the next transaction.
                    let _g = txn.gate.write().unwrap_or_else(|p| p.into_inner());
                    match txn
                        .producer
                        .abort_transaction(Timeout::After(Duration::from_secs(30)))
                    {
                        Ok(()) if !self.closing.load(Ordering::SeqCst) => {
                            self.metrics
                                .transactions
                                .with_label_values(&["aborted"])
                                .inc();
                        }
                        Ok(()) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "aborting the transaction on revoke failed")
                        }
                    }
                    if let Err(e) = txn.producer.begin_transaction() {
                        tracing::error!(error = %e, "beginning a transaction after revoke failed");
                    }
                    forget();
                }
                None => {
                    match consumer.commit_consumer_state(CommitMode::Sync) {
                        Ok(()) => {}
                        Err(KafkaError::ConsumerCommit(
                            rdkafka::types::RDKafkaErrorCode::NoOffset,
                        )) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "commit before revoking partitions failed")
                        }
                    }
                    forget();
                }
            }
            self.metrics.add_assigned(-(tpl.count() as i64));
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                self.metrics.add_assigned(tpl.count() as i64);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

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
    c
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

fn worker_for(topic: &str, partition: i32, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    partition.hash(&mut h);
    (h.finish() % n as u64) as usize
}

/// How often the loop checks for an outage to pause (or resume) consumption.
const OUTAGE_CHECK: Duration = Duration::from_millis(500);

/// Pauses every assigned partition while workers are stalled by an outage (again on
/// each check, which covers partitions assigned meanwhile) and resumes them when
/// none is. Returns whether consumption is paused.
fn pause_for_outage(consumer: &StreamConsumer<Context>, metrics: &Metrics, paused: bool) -> bool {
    let stalled = metrics.is_stalled();
    if !stalled && !paused {
        return false;
    }
    let assignment = match consumer.assignment() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the assignment to pause or resume it");
            return paused;
        }
    };
    let r = if stalled {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot pause or resume the assigned partitions");
        return paused;
    }
    if stalled != paused {
        metrics.set_paused(stalled);
        if stalled {
            tracing::warn!(
                partitions = assignment.count(),
                "consumption paused: the KMS or Schema Registry is unavailable"
            );
        } else {
            tracing::info!(partitions = assignment.count(), "consumption resumed");
        }
    }
    stalled
}

/// Sends a record the loop cannot take now back to be fetched again: its partition
/// is paused and rewound to it, so it is neither lost nor processed out of order.
fn put_back(
    consumer: &StreamConsumer<Context>,
    msg: &rdkafka::message::BorrowedMessage<'_>,
) -> Result<(), PipelineError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(msg.topic(), msg.partition());
    consumer.pause(&tpl)?;
    consumer.seek(
        msg.topic(),
        msg.partition(),
        Offset::Offset(msg.offset()),
        Timeout::After(Duration::from_secs(10)),
    )?;
    Ok(())
}

/// Runs until `shutdown` resolves (then drains and commits) or a fatal error.
pub async fn run(
    engine: Arc<Engine>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<RunStats, PipelineError> {
    let setup = |e: String| PipelineError::Setup(e);
    let metrics = engine.metrics().clone();
    metrics.set_max_topics(config.metrics.max_topics);
    let registry = match &config.schema_registry.url {
        Some(_) => Some(Arc::new(
            SchemaRegistry::new(&config.schema_registry, metrics.clone())
                .map_err(|e| setup(e.to_string()))?,
        )),
        None => None,
    };
    let router = Router::new(&config.routes).map_err(|e| setup(e.to_string()))?;
    let transformer = Transformer::new(engine.clone(), config, registry).map_err(setup)?;
    let _server = if config.metrics.listen.is_empty() {
        None
    } else {
        Some(
            crate::observe::server::serve(&config.metrics.listen, metrics.clone())
                .await
                .map_err(|e| setup(e.to_string()))?,
        )
    };
    let eos = config.pipeline.delivery == Delivery::ExactlyOnce;
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let gate = Arc::new(RwLock::new(()));

    let mut pc = client_config(config, &[("linger.ms", "5")]);
    pc.set("enable.idempotence", "true").set("acks", "all");
    if eos {
        pc.set("transactional.id", transactional_id(config));
    }
    let producer: FutureProducer = pc.create()?;
    if eos {
        let p = producer.clone();
        tokio::task::spawn_blocking(move || {
            p.init_transactions(Timeout::After(Duration::from_secs(60)))?;
            p.begin_transaction()
        })
        .await
        .map_err(|e| setup(e.to_string()))?
        .map_err(|e| {
            PipelineError::Transaction(format!(
                "cannot start transactions (does the broker support them, and is transactional.id unique?): {e}"
            ))
        })?;
    }

    let consumer: StreamConsumer<Context> = client_config(
        config,
        &[
            ("auto.offset.reset", "earliest"),
            ("statistics.interval.ms", "5000"),
        ],
    )
    .set("group.id", &config.kafka.group_id)
    .set("enable.auto.commit", if eos { "false" } else { "true" })
    .set("enable.auto.offset.store", "false")
    // Records of aborted upstream transactions must never be encrypted and passed on.
    .set("isolation.level", "read_committed")
    .create_with_context(Context {
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        txn: eos.then(|| Txn {
            producer: producer.clone(),
            gate: gate.clone(),
        }),
        closing: AtomicBool::new(false),
    })?;
    let subs = router.subscriptions();
    let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
    consumer.subscribe(&subs)?;

    let shared = Arc::new(Shared {
        producer: producer.clone(),
        transformer,
        router,
        metrics: metrics.clone(),
        tracker: tracker.clone(),
        gate,
        on_error: config.pipeline.on_error,
        dead_letter_payload: config.pipeline.dead_letter_payload,
        partitions: Mutex::new(HashMap::new()),
        destinations: Mutex::new(HashMap::new()),
        stopping: AtomicBool::new(false),
        limits: limits::Limits::new(config)?,
        eos,
    });
    let n_workers = match config.pipeline.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut queues = Vec::with_capacity(n_workers);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..n_workers {
        let (tx, rx) = mpsc::channel(1024);
        workers.spawn(worker::run(shared.clone(), rx, done_tx.clone()));
        queues.push(tx);
    }
    drop(done_tx);
    tracing::info!(
        workers = n_workers,
        delivery = if eos { "exactly-once" } else { "at-least-once" },
        topics = ?subs,
        "pipeline started"
    );

    let max = config.pipeline.max_in_flight;
    let window = Arc::new(Semaphore::new(max));
    let mut l = Loop {
        consumer: &consumer,
        producer: &producer,
        tracker: &tracker,
        metrics: &metrics,
        stats: RunStats::default(),
        eos,
        sent_in_txn: 0,
    };
    let mut txn_timer = tokio::time::interval(Duration::from_millis(
        config.pipeline.transaction_interval_ms,
    ));
    txn_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut committing = false;
    // Paused: a worker is holding a record through a KMS or registry outage.
    let mut paused = false;
    let mut outage_timer = tokio::time::interval(OUTAGE_CHECK);
    outage_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut failure: Option<PipelineError> = None;

    loop {
        if committing && l.unsettled() == 0 {
            if let Err(e) = l.commit_transaction().await {
                failure = Some(e);
                break;
            }
            committing = false;
        }
        tokio::select! {
            biased;
            Some(done) = done_rx.recv() => {
                if let Err(e) = l.settle(done) {
                    failure = Some(e);
                    break;
                }
            }
            _ = &mut shutdown => break,
            // Workers only end when their queues close, after this loop: an earlier
            // end is a panic, and its records would never settle.
            Some(ended) = workers.join_next() => {
                let why = match ended {
                    Err(e) if e.is_panic() => "panicked",
                    _ => "ended",
                };
                failure = Some(setup(format!("a transform worker {why} unexpectedly")));
                break;
            }
            _ = txn_timer.tick(), if eos && !committing => committing = true,
            _ = outage_timer.tick() => {
                paused = pause_for_outage(&consumer, &metrics, paused);
            }
            // While paused the consumer is still polled (group membership, rebalances);
            // a record from a partition not paused yet goes back for later.
            msg = consumer.recv(), if paused || (!committing && window.available_permits() > 0) => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        metrics.errors.with_label_values(&["kafka_consume"]).inc();
                        tracing::warn!(error = %e, "consume error");
                        continue;
                    }
                };
                let permit = match window.clone().try_acquire_owned() {
                    Ok(p) if !committing && !paused => p,
                    _ => {
                        if let Err(e) = put_back(&consumer, &msg) {
                            failure = Some(e);
                            break;
                        }
                        continue;
                    }
                };
                let msg = msg.detach();
                let bytes = msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len);
                let topic = metrics.topic_label(msg.topic());
                metrics.records_consumed.with_label_values(&[topic]).inc();
                metrics.bytes_consumed.with_label_values(&[topic]).inc_by(bytes as u64);
                metrics.in_flight.inc();
                l.stats.consumed += 1;
                let epoch = tracker
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .begin(msg.topic(), msg.partition(), msg.offset());
                let w = worker_for(msg.topic(), msg.partition(), n_workers);
                if queues[w].send(Job { msg, epoch, permit }).await.is_err() {
                    failure = Some(setup("a transform worker stopped unexpectedly".into()));
                    break;
                }
            }
        }
    }

    // Records held by an outage give up now rather than at the drain deadline.
    shared.stopping.store(true, Ordering::SeqCst);
    // Drain: records already taken finish (or fail) before the final commit.
    let deadline = tokio::time::sleep(Duration::from_secs(config.pipeline.drain_timeout_seconds));
    tokio::pin!(deadline);
    let mut drained = true;
    while window.available_permits() < max {
        tokio::select! {
            done = done_rx.recv() => match done {
                Some(d) => {
                    if let Err(e) = l.settle(d) {
                        failure.get_or_insert(e);
                    }
                }
                None => break,
            },
            _ = &mut deadline => {
                tracing::warn!(left = max - window.available_permits(), "drain deadline reached; undelivered records will be read again");
                drained = false;
                break;
            }
        }
    }
    if eos {
        // Records given up during an outage are still pending: committing would
        // publish records behind them while their offsets stay uncommitted, so the
        // later ones would be produced again after a restart.
        if failure.is_none() && drained && l.unsettled() == 0 {
            if let Err(e) = l.commit_transaction().await {
                failure = Some(e);
            }
        } else {
            let p = producer.clone();
            let _ = tokio::task::spawn_blocking(move || {
                p.abort_transaction(Timeout::After(Duration::from_secs(30)))
            })
            .await;
        }
    } else {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(())
            | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "final commit failed"),
        }
    }
    drop(queues);
    if drained {
        while workers.join_next().await.is_some() {}
    } else {
        workers.abort_all();
    }
    consumer.context().closing.store(true, Ordering::SeqCst);
    metrics.clear_assigned();
    let stats = l.stats;
    tracing::info!(
        consumed = stats.consumed,
        produced = stats.produced,
        dead_lettered = stats.dead_lettered,
        transactions = stats.transactions,
        "pipeline stopped"
    );
    let p = producer.clone();
    let _ =
        tokio::task::spawn_blocking(move || p.flush(Timeout::After(Duration::from_secs(5)))).await;
    match failure {
        Some(e) => {
            metrics.errors.with_label_values(&[error_code(&e)]).inc();
            Err(e)
        }
        None => Ok(stats),
    }
}

fn error_code(e: &PipelineError) -> &'static str {
    match e {
        PipelineError::Kafka(_) => "kafka",
        PipelineError::Setup(_) => "setup",
        PipelineError::Record { code, .. } => code,
        PipelineError::Transaction(_) => "transaction",
    }
}

/// The loop's state between events.
struct Loop<'a> {
    consumer: &'a StreamConsumer<Context>,
    producer: &'a FutureProducer,
    tracker: &'a Arc<Mutex<OffsetTracker>>,
    metrics: &'a Arc<Metrics>,
    stats: RunStats,
    eos: bool,
    /// Records acknowledged in the open transaction.
    sent_in_txn: u64,
}

impl Loop<'_> {
    fn unsettled(&self) -> usize {
        self.tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_flight()
    }

    /// Books one record's outcome: metrics, and the offset to store.
    fn settle(&mut self, done: Done) -> Result<(), PipelineError> {
        self.metrics.in_flight.dec();
        match done {
            Done::Stale { .. } => Ok(()),
            Done::Failed {
                source, code, msg, ..
            } => {
                let owned = self.tracker.lock().unwrap_or_else(|p| p.into_inner()).owns(
                    &source.topic,
                    source.partition,
                    source.offset,
                    source.epoch,
                );
                if !owned {
                    // Revoked or rewound meanwhile: its failure is no longer ours.
                    return Ok(());
                }
                // Counted once, by `run`, when it stops on this error.
                Err(PipelineError::Record {
                    topic: source.topic,
                    partition: source.partition,
                    offset: source.offset,
                    code,
                    msg,
                })
            }
            Done::Delivered {
                source,
                dest,
                code,
                bytes,
                timestamp,
                ..
            } => {
                let settled = self.tracker.lock().unwrap_or_else(|p| p.into_inner()).done(
                    &source.topic,
                    source.partition,
                    source.offset,
                    source.epoch,
                );
                let Settled::Owned(store) = settled else {
                    return Ok(());
                };
                match code {
                    None => {
                        self.stats.produced += 1;
                        self.metrics
                            .records_produced
                            .with_label_values(&[self.metrics.topic_label(&dest.target)])
                            .inc();
                        self.metrics
                            .bytes_produced
                            .with_label_values(&[self.metrics.topic_label(&dest.target)])
                            .inc_by(bytes as u64);
                    }
                    Some(c) => {
                        self.stats.dead_lettered += 1;
                        self.metrics
                            .dead_letters
                            .with_label_values(&[self.metrics.topic_label(&source.topic), c])
                            .inc();
                    }
                }
                if let Some(ts) = timestamp {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    if now >= ts {
                        self.metrics
                            .end_to_end_seconds
                            .observe((now - ts) as f64 / 1000.0);
                    }
                }
                if self.eos {
                    self.sent_in_txn += 1;
                } else if let Some(o) = store {
                    if let Err(e) = self
                        .consumer
                        .store_offset(&source.topic, source.partition, o)
                    {
                        tracing::debug!(error = %e, topic = %source.topic, partition = source.partition, "offset not stored (partition revoked?)");
                    }
                }
                Ok(())
            }
        }
    }

    /// Exactly-once: commits the open transaction with the consumed offsets and
    /// begins the next. Everything taken must be settled first.
    async fn commit_transaction(&mut self) -> Result<(), PipelineError> {
        let offsets = self
            .tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .uncommitted();
        if offsets.is_empty() && self.sent_in_txn == 0 {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in &offsets {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
        }
        let gm = self.consumer.group_metadata().ok_or_else(|| {
            PipelineError::Transaction("the consumer has no group metadata".into())
        })?;
        let p = self.producer.clone();
        let committed = tokio::task::spawn_blocking(move || {
            if tpl.count() > 0 {
                p.send_offsets_to_transaction(&tpl, &gm, Timeout::After(Duration::from_secs(30)))?;
            }
            p.commit_transaction(Timeout::After(Duration::from_secs(60)))
        })
        .await
        .map_err(|e| PipelineError::Transaction(e.to_string()))?;
        match committed {
            Ok(()) => {
                self.tracker
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .mark_committed();
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                self.stats.transactions += 1;
                tracing::debug!(records = self.sent_in_txn, partitions = offsets.len(), "transaction committed");
            }
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                tracing::warn!(error = %e, "transaction commit failed; aborting and rewinding to the last commit");
                self.abort_and_rewind().await?;
            }
            Err(e) => {
                return Err(PipelineError::Transaction(format!(
                    "{e} (a fatal error such as being fenced by another instance with the same transactional.id; records since the last commit will be read again)"
                )))
            }
        }
        self.sent_in_txn = 0;
        self.producer
            .begin_transaction()
            .map_err(|e| PipelineError::Transaction(format!("cannot begin a transaction: {e}")))
    }

    async fn abort_and_rewind(&mut self) -> Result<(), PipelineError> {
        let p = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            p.abort_transaction(Timeout::After(Duration::from_secs(30)))
        })
        .await
        .map_err(|e| PipelineError::Transaction(e.to_string()))?
        .map_err(|e| PipelineError::Transaction(format!("abort failed: {e}")))?;
        self.metrics
            .transactions
            .with_label_values(&["aborted"])
            .inc();
        let seeks = self
            .tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rewind();
        for (t, p, o) in seeks {
            self.consumer
                .seek(
                    &t,
                    p,
                    Offset::Offset(o),
                    Timeout::After(Duration::from_secs(10)),
                )
                .map_err(|e| {
                    PipelineError::Transaction(format!("cannot rewind {t}/{p} to {o}: {e}"))
                })?;
        }
        Ok(())
    }
}
