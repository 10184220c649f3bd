//! A lane: one consumer (a member of the consumer group), its producer, and one
//! task that takes each record through the stages in turn —
//!
//! 1. **consume**: the next record, borrowed from librdkafka (no copy);
//! 2. **transform**: [`Transformer::transform`](super::record::Transformer::transform),
//!    a function from the record to an outcome (output or dead letter);
//! 3. **produce**: [`Sender::send`](super::produce::Sender::send) hands it to the
//!    producer with a token;
//! 4. **acknowledge**: delivery reports, collected where the lane polls its
//!    producer, settle records in order per partition and store their offsets
//!    (at-least-once) or feed the open transaction (exactly-once).
//!
//! The lane owns its offsets, its in-flight records and its partitions' state, so
//! nothing is shared or locked on the way. Rebalances arrive as messages
//! ([`super::rebalance`]) and are settled here before the lane completes them.
//! A KMS or registry outage holds the record that met it, pauses the lane's
//! partitions and keeps polling (membership), retrying with full-jitter backoff
//! until the service answers. Shutdown is a [`CancellationToken`]: the lane stops
//! consuming, waits for what is in flight up to the drain deadline, commits and
//! returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::offsets::{OffsetTracker, Settled};
use super::produce::{record_error, take_acks, Ack, Key, Out, Payload, SendError, Sender};
use super::rebalance::{self, Event, LaneContext};
use super::record::{Fatal, Outcome, Transformer};
use super::{PipelineError, RunStats};
use crate::backoff::Backoff;
use crate::codes::Code;
use crate::config::{Delivery, OnError, PipelineConfig};
use crate::kafka::route::{Destination, Router};
use crate::observe::events::{self, At};
use crate::observe::Metrics;

/// How often delivery reports are collected while records are in flight.
const ACK_POLL: Duration = Duration::from_millis(2);
/// One record in this many has its transform timed.
const TIMING_SAMPLE: u64 = 64;
/// Most records taken in one go before the lane looks at anything else.
const BATCH: usize = 256;
/// How often topics' size limits and partition counts are looked up again.
const TOPIC_REFRESH: Duration = Duration::from_secs(60);

/// A record's position, for events.
fn at<M: Message>(m: &M) -> At<'_> {
    At {
        topic: m.topic(),
        partition: m.partition(),
        offset: m.offset(),
    }
}

/// One record handed to the producer and not yet acknowledged.
struct InFlight {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    epoch: u64,
    dest: Arc<Destination>,
    /// Dead-letter code, for dead letters.
    code: Option<Code>,
    bytes: usize,
    timestamp: Option<i64>,
}

/// Tokens for in-flight records: a slab, so a delivery report finds its record
/// without a hash lookup and nothing is allocated per record.
#[derive(Default)]
struct Slab {
    items: Vec<Option<InFlight>>,
    free: Vec<usize>,
    len: usize,
}

impl Slab {
    fn insert(&mut self, v: InFlight) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                self.items[i] = Some(v);
                i
            }
            None => {
                self.items.push(Some(v));
                self.items.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) -> Option<InFlight> {
        let v = self.items.get_mut(i)?.take()?;
        self.len -= 1;
        self.free.push(i);
        Some(v)
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut InFlight> {
        self.items.get_mut(i)?.as_mut()
    }
}

/// A record held through a KMS or registry outage.
struct Stall {
    msg: OwnedMessage,
    epoch: u64,
    since: Instant,
    backoff: Backoff,
    retry_at: tokio::time::Instant,
}

/// A record the brokers refused after it was sent: dead-lettered when its partition
/// is read again from it.
struct LateDeadLetter {
    offset: i64,
    code: Code,
    message: String,
}

/// Counters per topic, fetched once (a label lookup per record is too slow).
struct TopicCounters {
    records: prometheus::IntCounter,
    bytes: prometheus::IntCounter,
    /// Source topics: records passed with nothing encrypted (`allow_unencrypted`).
    unencrypted: Option<prometheus::IntCounter>,
}

/// Everything a lane owns except its consumer (which records borrow from).
pub struct LaneState {
    /// The lane's number (logs, `lane` labels).
    pub id: usize,
    /// Its producer, with the size limits of the topics it writes to.
    pub(super) sender: Sender,
    /// The transform step (`pipeline::record`), shared by the lanes.
    transformer: Arc<Transformer>,
    /// Source topic → route and target topic.
    router: Arc<Router>,
    pub(super) metrics: Arc<Metrics>,
    /// `pipeline.on_error`: dead-letter bad records, or stop on the first.
    on_error: OnError,
    /// Exactly-once delivery (`pipeline.delivery = "exactly-once"`).
    eos: bool,
    /// Records handed to the producer and not yet acknowledged, at most
    /// (`pipeline.max_in_flight`): the lane stops taking at this many.
    max_in_flight: usize,
    /// How long shutdown waits for acknowledgements (`pipeline.drain_timeout_seconds`).
    drain_timeout: Duration,
    /// Exactly-once: how often the open transaction commits
    /// (`pipeline.transaction_interval_ms`).
    txn_interval: Duration,
    /// Per partition: offsets begun and done, and what may be committed.
    pub(super) tracker: OffsetTracker,
    /// Records in flight by their delivery-report token.
    inflight: Slab,
    /// Delivery reports collected from the producer, reused between batches.
    acks: Vec<Ack>,
    /// The transform's output, reused record after record.
    value: Vec<u8>,
    /// Records taken, for sampling the transform's duration.
    taken: u64,
    /// Fields transformed since the counters were last updated (per batch).
    fields: crate::transform::Counts,
    /// Source topic → where its records go (route, target, dead-letter topic),
    /// resolved once per topic.
    destinations: foldhash::HashMap<String, Arc<Destination>>,
    /// Source topic → its interned name and consumed-record counters.
    topics: foldhash::HashMap<Arc<str>, (Arc<str>, TopicCounters)>,
    /// Target topic → its produced-record counters.
    produced: foldhash::HashMap<String, TopicCounters>,
    /// Records the brokers refused after they were sent, by partition: each is
    /// dead-lettered when its partition is read again from its offset.
    late: HashMap<(Arc<str>, i32), LateDeadLetter>,
    /// The record held through a KMS or registry outage (the lane takes nothing
    /// else until it goes through).
    stall: Option<Stall>,
    /// Partitions currently assigned to this lane.
    assigned: usize,
    /// Exactly-once: records acknowledged in the open transaction.
    pub(super) sent_in_txn: u64,
    /// Totals for the `stopped:` summary.
    pub(super) stats: RunStats,
}

/// A lane ready to run.
pub struct Lane {
    pub consumer: Arc<StreamConsumer<LaneContext>>,
    pub events: UnboundedReceiver<Event>,
    pub state: LaneState,
}

impl LaneState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        sender: Sender,
        transformer: Arc<Transformer>,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        cfg: &PipelineConfig,
    ) -> Self {
        LaneState {
            id,
            sender,
            transformer,
            router,
            metrics,
            on_error: cfg.on_error,
            eos: cfg.delivery == Delivery::ExactlyOnce,
            max_in_flight: cfg.max_in_flight.max(1),
            drain_timeout: Duration::from_secs(cfg.drain_timeout_seconds),
            txn_interval: Duration::from_millis(cfg.transaction_interval_ms.max(1)),
            tracker: OffsetTracker::default(),
            inflight: Slab::default(),
            acks: Vec::new(),
            value: Vec::with_capacity(4096),
            taken: 0,
            fields: Default::default(),
            destinations: Default::default(),
            topics: Default::default(),
            produced: Default::default(),
            late: HashMap::new(),
            stall: None,
            assigned: 0,
            sent_in_txn: 0,
            stats: RunStats::default(),
        }
    }
}

impl Lane {
    /// Runs until `cancel` fires (then drains and commits) or a fatal error.
    pub async fn run(self, cancel: CancellationToken) -> Result<RunStats, PipelineError> {
        let Lane {
            consumer,
            mut events,
            mut state,
        } = self;
        let s = &mut state;
        let mut acks = tokio::time::interval(ACK_POLL);
        acks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut txn_timer = tokio::time::interval(s.txn_interval);
        txn_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh = tokio::time::interval(TOPIC_REFRESH);
        refresh.reset();
        let mut committing = false;
        // One stream for the lane's life: a new one per record would register and
        // drop a waker each time.
        let mut stream = consumer.stream();
        let result: Result<(), PipelineError> = async {
            loop {
                s.settle(&consumer)?;
                if committing && s.inflight.len == 0 && s.stall.is_none() {
                    super::transaction::commit(s, &consumer).await?;
                    committing = false;
                }
                let stalled = s.stall.is_some();
                let retry_at = s.stall.as_ref().map(|st| st.retry_at);
                let taking = !committing && !stalled && s.inflight.len < s.max_in_flight;
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    Some(ev) = events.recv() => s.rebalance(&consumer, ev).await?,
                    _ = acks.tick(), if s.inflight.len > 0 => {}
                    _ = txn_timer.tick(), if s.eos && !committing => committing = true,
                    _ = refresh.tick() => s.sender.refresh(),
                    _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if stalled => {
                        s.retry_stalled(&consumer).await?;
                    }
                    // While stalled the consumer is still polled (group membership,
                    // rebalances); a record that arrives goes back to be read later.
                    m = stream.next(), if stalled || taking => match m {
                        Some(Ok(m)) if stalled => put_back(&consumer, &m)?,
                        Some(Ok(m)) => {
                            consumer.context().kafka.consumed();
                            s.take(&consumer, &m).await?;
                            // Take what is already fetched without going back
                            // through select: its cost is per wake-up, not per record.
                            for _ in 1..BATCH {
                                if s.stall.is_some() || s.inflight.len >= s.max_in_flight {
                                    break;
                                }
                                match stream.next().now_or_never() {
                                    Some(Some(Ok(m))) => s.take(&consumer, &m).await?,
                                    Some(Some(Err(e))) => consumer.context().kafka.consume_error(&e),
                                    _ => break,
                                }
                            }
                        }
                        Some(Err(e)) => consumer.context().kafka.consume_error(&e),
                        None => return Ok(()),
                    },
                }
            }
        }
        .await;
        drop(stream);
        let drained = s.drain(&consumer, result.is_ok()).await;
        s.metrics.add_assigned(-(s.assigned as i64));
        s.metrics.in_flight.sub(s.inflight.len as i64);
        if s.stall.take().is_some() {
            s.metrics.set_paused(false);
        }
        // Events first: the consumer's close revokes its partitions, and with the
        // lane gone the context completes that itself.
        drop(events);
        drop(consumer);
        result.and(drained)?;
        Ok(std::mem::take(&mut s.stats))
    }
}

/// `topic[0,1,2], other[3]`: a partition list for a log line.
fn partition_list(tpl: &TopicPartitionList) -> String {
    let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for e in tpl.elements() {
        by_topic
            .entry(e.topic().to_string())
            .or_default()
            .push(e.partition());
    }
    by_topic
        .into_iter()
        .map(|(t, mut ps)| {
            ps.sort_unstable();
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{t}[{}]", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// An owned copy of a record (only for one held through an outage).
fn own<M: Message>(m: &M) -> OwnedMessage {
    let headers = crate::kafka::headers::read(m.headers()).ok().map(|hs| {
        hs.into_iter()
            .fold(rdkafka::message::OwnedHeaders::new(), |o, (k, v)| {
                o.insert(rdkafka::message::Header { key: k, value: v })
            })
    });
    OwnedMessage::new(
        m.payload().map(<[u8]>::to_vec),
        m.key().map(<[u8]>::to_vec),
        m.topic().to_string(),
        m.timestamp(),
        m.partition(),
        m.offset(),
        headers,
    )
}

/// Sends a record the lane cannot take now back to be fetched again: its partition
/// is paused and rewound to it, so it is neither lost nor taken out of order.
fn put_back<M: Message>(
    consumer: &StreamConsumer<LaneContext>,
    msg: &M,
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

impl LaneState {
    /// Where records of `topic` go (routing once per topic).
    fn destination(&mut self, topic: &str) -> Result<Arc<Destination>, PipelineError> {
        if let Some(d) = self.destinations.get(topic) {
            return Ok(d.clone());
        }
        let d = Arc::new(
            self.router
                .route(topic)
                .map_err(|e| PipelineError::Setup(e.to_string()))?,
        );
        self.destinations.insert(topic.to_string(), d.clone());
        Ok(d)
    }

    /// The interned topic name and its counters.
    fn topic(&mut self, topic: &str) -> (Arc<str>, &TopicCounters) {
        if !self.topics.contains_key(topic) {
            let t: Arc<str> = Arc::from(topic);
            let label = self.metrics.topic_label(topic);
            let c = TopicCounters {
                records: self.metrics.records_consumed.with_label_values(&[label]),
                bytes: self.metrics.bytes_consumed.with_label_values(&[label]),
                unencrypted: Some(self.metrics.unencrypted_records.with_label_values(&[label])),
            };
            self.topics.insert(t.clone(), (t, c));
        }
        let (t, c) = &self.topics[topic];
        (t.clone(), c)
    }

    /// Takes one consumed record through transform and produce.
    async fn take<M: Message>(
        &mut self,
        consumer: &StreamConsumer<LaneContext>,
        msg: &M,
    ) -> Result<(), PipelineError> {
        let (topic, counters) = self.topic(msg.topic());
        counters.records.inc();
        counters.bytes.inc_by(
            (msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len)) as u64,
        );
        self.stats.consumed += 1;
        self.metrics.in_flight.inc();
        let epoch = self.tracker.begin(&topic, msg.partition(), msg.offset());
        if let Some(e) = self.process(topic, msg, epoch).await? {
            self.hold(consumer, msg, epoch, &e)?;
        }
        Ok(())
    }

    /// Transforms and produces a record already begun (`epoch`). `Some`: the KMS
    /// or registry is out, and the record must be held.
    async fn process<M: Message>(
        &mut self,
        topic: Arc<str>,
        msg: &M,
        epoch: u64,
    ) -> Result<Option<Fatal>, PipelineError> {
        let dest = self.destination(&topic)?;
        let key = (topic.clone(), msg.partition());
        let late = match self.late.get(&key) {
            Some(l) if l.offset == msg.offset() => self.late.remove(&key),
            _ => None,
        };
        let out = match late {
            Some(l) => self.dead_letter(msg, &dest, l.code, &l.message)?,
            None => {
                // The transform's duration is sampled: two clock reads per record
                // cost more than the histogram is worth.
                self.taken += 1;
                let started = (self.taken % TIMING_SAMPLE == 0).then(Instant::now);
                let mut value = std::mem::take(&mut self.value);
                let outcome = self
                    .transformer
                    .transform(msg, dest.route, &dest.target, &mut value)
                    .await;
                self.value = value;
                if let Some(t) = started {
                    self.metrics
                        .transform_seconds
                        .observe(t.elapsed().as_secs_f64());
                }
                match outcome {
                    Ok(Outcome::Produce {
                        key,
                        payload,
                        headers,
                        counts,
                        unencrypted,
                    }) => {
                        self.fields += counts;
                        if unencrypted {
                            if let Some(c) = self
                                .topics
                                .get(&*topic)
                                .and_then(|(_, c)| c.unencrypted.as_ref())
                            {
                                c.inc();
                            }
                        }
                        Out {
                            to_dead_letter: false,
                            key: key.map_or(Key::Original, Key::New),
                            payload: if payload {
                                Payload::Buffer
                            } else {
                                Payload::None
                            },
                            headers,
                            code: None,
                        }
                    }
                    Ok(Outcome::DeadLetter { code, message }) => {
                        self.dead_letter(msg, &dest, code, &message)?
                    }
                    Err(e) if e.is_transient() => return Ok(Some(e)),
                    Err(e) => {
                        return Err(PipelineError::Record {
                            topic: topic.to_string(),
                            partition: msg.partition(),
                            offset: msg.offset(),
                            code: e.code(),
                            msg: e.to_string(),
                        })
                    }
                }
            }
        };
        self.send(topic, msg, dest, out, epoch).await?;
        Ok(None)
    }

    /// The dead letter for a record, logged and counted; or the end of the
    /// pipeline with `on_error = "stop"`.
    fn dead_letter<M: Message>(
        &self,
        msg: &M,
        dest: &Destination,
        code: Code,
        message: &str,
    ) -> Result<Out, PipelineError> {
        if self.on_error == OnError::Stop {
            return Err(PipelineError::Record {
                topic: msg.topic().to_string(),
                partition: msg.partition(),
                offset: msg.offset(),
                code,
                msg: format!("{message} (pipeline.on_error = \"stop\")"),
            });
        }
        events::dead_lettered(&self.metrics, at(msg), code, message, &dest.dead_letter);
        Ok(Out::dead_letter(
            msg,
            code,
            message,
            self.sender.dead_letter_payload,
        ))
    }

    async fn send<M: Message>(
        &mut self,
        topic: Arc<str>,
        msg: &M,
        dest: Arc<Destination>,
        out: Out,
        epoch: u64,
    ) -> Result<(), PipelineError> {
        let token = self.inflight.insert(InFlight {
            topic,
            partition: msg.partition(),
            offset: msg.offset(),
            epoch,
            dest: dest.clone(),
            code: out.code,
            bytes: 0,
            timestamp: msg.timestamp().to_millis(),
        });
        let value = std::mem::take(&mut self.value);
        let sent = self.sender.send(msg, &value, &dest, out, token).await;
        self.value = value;
        match sent {
            Ok(sent) => {
                if let Some(f) = self.inflight.get_mut(token) {
                    f.bytes = sent.bytes;
                    f.code = sent.code;
                }
                if let (Some(code), Some(m)) = (sent.code, &sent.message) {
                    // The output did not fit and went to the dead-letter topic.
                    events::dead_lettered(&self.metrics, at(msg), code, m, &dest.dead_letter);
                }
                Ok(())
            }
            Err(e) => {
                self.inflight.remove(token);
                let (code, m) = match e {
                    SendError::Record { code, msg } => (code, msg),
                    SendError::Kafka(e) => (Code::ProduceFailed, e.to_string()),
                };
                Err(PipelineError::Record {
                    topic: msg.topic().to_string(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                    code,
                    msg: m,
                })
            }
        }
    }

    /// Collects delivery reports and settles their records: offsets stored in
    /// order per partition (at-least-once), counted for the open transaction
    /// (exactly-once); a record the brokers refused for what it is is read again
    /// and dead-lettered (at-least-once).
    fn settle(&mut self, consumer: &StreamConsumer<LaneContext>) -> Result<(), PipelineError> {
        if self.fields != Default::default() {
            let c = std::mem::take(&mut self.fields);
            self.metrics.count_fields(self.transformer.operation(), &c);
        }
        if self.inflight.len == 0 {
            return Ok(());
        }
        take_acks(&self.sender.producer, &mut self.acks);
        let mut acks = std::mem::take(&mut self.acks);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut result = Ok(());
        for ack in acks.drain(..) {
            let Some(f) = self.inflight.remove(ack.token) else {
                continue;
            };
            self.metrics.in_flight.dec();
            if let Some(e) = ack.error {
                if let Err(e) = self.refused(consumer, f, e) {
                    result = result.and(Err(e));
                }
                continue;
            }
            let Settled::Owned(store) = self.tracker.done(&f.topic, f.partition, f.offset, f.epoch)
            else {
                continue;
            };
            match f.code {
                None => {
                    self.stats.produced += 1;
                    let c = self
                        .produced
                        .entry(f.dest.target.clone())
                        .or_insert_with(|| {
                            let label = self.metrics.topic_label(&f.dest.target);
                            TopicCounters {
                                records: self.metrics.records_produced.with_label_values(&[label]),
                                bytes: self.metrics.bytes_produced.with_label_values(&[label]),
                                unencrypted: None,
                            }
                        });
                    c.records.inc();
                    c.bytes.inc_by(f.bytes as u64);
                }
                Some(code) => {
                    self.stats.dead_lettered += 1;
                    let class = code.class().map_or("delivery", crate::codes::Class::as_str);
                    self.metrics
                        .dead_letters
                        .with_label_values(&[self.metrics.topic_label(&f.topic), class])
                        .inc();
                }
            }
            if let Some(ts) = f.timestamp.filter(|ts| now_ms >= *ts) {
                self.metrics
                    .end_to_end_seconds
                    .observe((now_ms - ts) as f64 / 1000.0);
            }
            if self.eos {
                self.sent_in_txn += 1;
            } else if let Some(o) = store {
                if let Err(e) = consumer.store_offset(&f.topic, f.partition, o) {
                    tracing::debug!(error = %e, topic = %f.topic, partition = f.partition, "offset not stored (partition revoked?)");
                }
            }
        }
        self.acks = acks;
        result
    }

    /// A delivery the brokers refused. For the record's own fault (too large,
    /// invalid) under at-least-once, the partition is read again from it and the
    /// record dead-lettered; anything else stops the pipeline uncommitted.
    fn refused(
        &mut self,
        consumer: &StreamConsumer<LaneContext>,
        f: InFlight,
        e: KafkaError,
    ) -> Result<(), PipelineError> {
        if !self.tracker.owns(&f.topic, f.partition, f.offset, f.epoch) {
            return Ok(()); // revoked or rewound meanwhile
        }
        let code = record_error(&e).filter(|_| !self.eos && f.code.is_none());
        let Some(code) = code else {
            return Err(PipelineError::Record {
                topic: f.topic.to_string(),
                partition: f.partition,
                offset: f.offset,
                code: Code::DeliveryFailed,
                msg: format!(
                    "delivery to {} failed: {e}",
                    if f.code.is_some() {
                        &f.dest.dead_letter
                    } else {
                        &f.dest.target
                    }
                ),
            });
        };
        // Records of the partition after it are produced again (at-least-once).
        self.tracker.forget(&f.topic, f.partition);
        consumer.seek(
            &f.topic,
            f.partition,
            Offset::Offset(f.offset),
            Timeout::After(Duration::from_secs(10)),
        )?;
        self.late.insert(
            (f.topic.clone(), f.partition),
            LateDeadLetter {
                offset: f.offset,
                code,
                message: format!("the brokers refused the output record: {e}"),
            },
        );
        Ok(())
    }

    /// Holds a record through an outage: pauses the assignment and schedules a
    /// retry.
    fn hold<M: Message>(
        &mut self,
        consumer: &StreamConsumer<LaneContext>,
        msg: &M,
        epoch: u64,
        e: &Fatal,
    ) -> Result<(), PipelineError> {
        let assignment = consumer.assignment()?;
        consumer.pause(&assignment)?;
        events::outage(&self.metrics, at(msg), e.code(), e, true);
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        let wait = backoff.next_delay();
        self.stall = Some(Stall {
            msg: own(msg),
            epoch,
            since: Instant::now(),
            backoff,
            retry_at: tokio::time::Instant::now() + wait,
        });
        Ok(())
    }

    /// Retries the held record; on success the assignment resumes.
    async fn retry_stalled(
        &mut self,
        consumer: &StreamConsumer<LaneContext>,
    ) -> Result<(), PipelineError> {
        let Some(mut st) = self.stall.take() else {
            return Ok(());
        };
        if !self.tracker.owns(
            st.msg.topic(),
            st.msg.partition(),
            st.msg.offset(),
            st.epoch,
        ) {
            // Revoked meanwhile: its next owner reads it again.
            self.resume(consumer, st.since)?;
            return Ok(());
        }
        let topic = self.topic(st.msg.topic()).0;
        match self.process(topic, &st.msg, st.epoch).await? {
            Some(e) => {
                events::outage(&self.metrics, at(&st.msg), e.code(), &e, false);
                st.retry_at = tokio::time::Instant::now() + st.backoff.next_delay();
                self.stall = Some(st);
                Ok(())
            }
            None => self.resume(consumer, st.since),
        }
    }

    fn resume(
        &mut self,
        consumer: &StreamConsumer<LaneContext>,
        since: Instant,
    ) -> Result<(), PipelineError> {
        let assignment = consumer.assignment()?;
        consumer.resume(&assignment)?;
        events::resumed(&self.metrics, since.elapsed().as_millis() as u64);
        Ok(())
    }

    /// Settles a rebalance, then completes it.
    async fn rebalance(
        &mut self,
        consumer: &Arc<StreamConsumer<LaneContext>>,
        ev: Event,
    ) -> Result<(), PipelineError> {
        match &ev {
            Event::Assign(tpl) => {
                let mut topics = std::collections::BTreeSet::new();
                for e in tpl.elements() {
                    topics.insert(e.topic().to_string());
                }
                for t in &topics {
                    // The topic's series exist at 0 before its first record.
                    let target = self.destination(t).ok().map(|d| d.target.clone());
                    self.metrics.prepare_route(t, target.as_deref());
                }
                tracing::info!(
                    worker = self.id,
                    partitions = %partition_list(tpl),
                    "partitions assigned"
                );
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                self.metrics.add_assigned(tpl.count() as i64);
                self.assigned += tpl.count();
                rebalance::complete(consumer.as_ref(), &ev)?;
                if self.stall.is_some() {
                    // Still waiting out an outage: the new partitions wait too.
                    consumer.pause(tpl)?;
                }
            }
            Event::Revoke(tpl) => {
                tracing::info!(
                    worker = self.id,
                    partitions = %partition_list(tpl),
                    "partitions revoked"
                );
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                self.settle(consumer)?;
                if self.eos {
                    super::transaction::commit_on_revoke(self, consumer, tpl).await?;
                } else {
                    // Commit what is stored before the partitions go (not in the
                    // callback: the rebalance waits for us).
                    let c = consumer.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        c.commit_consumer_state(CommitMode::Sync)
                    })
                    .await
                    .map_err(|e| PipelineError::Setup(e.to_string()))?;
                    match r {
                        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "commit before revoking partitions failed")
                        }
                    }
                }
                let mut topics = std::collections::BTreeSet::new();
                for e in tpl.elements() {
                    self.tracker.forget(e.topic(), e.partition());
                    self.late.remove(&(Arc::from(e.topic()), e.partition()));
                    topics.insert(e.topic().to_string());
                }
                for t in topics {
                    self.metrics.revoked_topic(&t);
                }
                self.metrics.add_assigned(-(tpl.count() as i64));
                self.assigned = self.assigned.saturating_sub(tpl.count());
                rebalance::complete(consumer.as_ref(), &ev)?;
            }
            Event::Error(e) => tracing::warn!(worker = self.id, error = %e, "rebalance error"),
        }
        Ok(())
    }

    /// Polls the producer until every record in flight is settled, or `within`
    /// passes; whether all settled.
    pub(super) async fn settle_all(
        &mut self,
        consumer: &StreamConsumer<LaneContext>,
        within: Duration,
    ) -> Result<bool, PipelineError> {
        let deadline = Instant::now() + within;
        loop {
            self.settle(consumer)?;
            if self.inflight.len == 0 {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(ACK_POLL).await;
        }
    }

    /// Records handed to the producer and not yet settled.
    pub(super) fn in_flight(&self) -> usize {
        self.inflight.len
    }

    /// Exactly-once, aborting: the delivery reports of purged records are
    /// collected until the producer has nothing in flight (10 s at most), and
    /// every record in flight is forgotten (it belongs to the aborted transaction;
    /// its partition is rewound or revoked).
    pub(super) async fn discard_in_flight(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.discard_in_flight_now();
            if self.sender.producer.in_flight_count() == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(ACK_POLL).await;
        }
        let left = self.inflight.len;
        self.inflight = Slab::default();
        self.metrics.in_flight.sub(left as i64);
    }

    /// Polls the producer once and drops the reports it had (see
    /// [`discard_in_flight`](Self::discard_in_flight)).
    pub(super) fn discard_in_flight_now(&mut self) {
        take_acks(&self.sender.producer, &mut self.acks);
        for ack in self.acks.drain(..) {
            if self.inflight.remove(ack.token).is_some() {
                self.metrics.in_flight.dec();
            }
        }
    }

    /// The end of a run: what is in flight gets until the drain deadline, then the
    /// final commit (at-least-once: what is stored; exactly-once: the open
    /// transaction if everything in it settled, else it is aborted).
    async fn drain(
        &mut self,
        consumer: &Arc<StreamConsumer<LaneContext>>,
        ok: bool,
    ) -> Result<(), PipelineError> {
        // A record held by an outage gives up now: it is read again after a restart.
        let deadline = Instant::now() + self.drain_timeout;
        while self.inflight.len > 0 && Instant::now() < deadline {
            self.settle(consumer)?;
            tokio::time::sleep(ACK_POLL).await;
        }
        let drained = self.inflight.len == 0;
        if !drained {
            tracing::warn!(
                worker = self.id,
                left = self.inflight.len,
                "drain deadline reached; undelivered records will be read again"
            );
        }
        if self.eos {
            return super::transaction::finish(
                self,
                consumer,
                ok && drained && self.stall.is_none(),
            )
            .await;
        }
        let c = consumer.clone();
        match tokio::task::spawn_blocking(move || c.commit_consumer_state(CommitMode::Sync)).await {
            Ok(Ok(())) | Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "final commit failed"),
            Err(e) => tracing::warn!(error = %e, "final commit did not run"),
        }
        let p = self.sender.producer.clone();
        let _ =
            tokio::task::spawn_blocking(move || p.flush(Timeout::After(Duration::from_secs(5))))
                .await;
        Ok(())
    }
}
