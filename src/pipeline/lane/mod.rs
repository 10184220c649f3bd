//! A lane: one consumer (a member of the consumer group), its producer, and one
//! task that takes each record through the stages in turn —
//!
//! 1. **consume**: the next record, borrowed from librdkafka (no copy);
//! 2. **transform**: [`Transformer::transform`](super::record::Transformer::transform),
//!    a function from the record to an outcome (output or dead letter) — [`take`];
//! 3. **produce**: [`Sender::send`](super::produce::Sender::send) hands it to the
//!    producer with a token — [`take`];
//! 4. **acknowledge**: delivery reports, collected where the lane polls its
//!    producer, settle records in order per partition and store their offsets
//!    (at-least-once) or feed the open transaction (exactly-once) — [`settle`].
//!
//! What the lane may do at each moment is its [`phase::Phase`] — running,
//! committing (exactly-once), stalled (an outage, [`outage`]) or draining — a
//! state machine unit-tested on its own; [`Lane::run`] waits for the next event
//! and carries out the move. The lane owns its offsets, its in-flight records and
//! its partitions' state, so nothing is shared or locked on the way. Rebalances
//! arrive as messages ([`super::rebalance`]) and are settled before the lane
//! completes them ([`membership`]). Shutdown is a [`CancellationToken`]: the lane
//! stops consuming, waits for what is in flight up to the drain deadline, commits
//! and returns.

mod membership;
mod outage;
mod phase;
mod settle;
mod take;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use self::phase::Phase;
use self::settle::{LateDeadLetter, Slab};
use super::offsets::OffsetTracker;
use super::produce::{Ack, Sender};
use super::rebalance::{Event, LaneContext};
use super::record::Transformer;
use super::transaction::Txn;
use super::{PipelineError, RunStats};
use crate::config::{Delivery, OnError, PipelineConfig};
use crate::kafka::route::{Destination, Router};
use crate::observe::events::At;
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
    /// What the lane is doing: running, committing, stalled or draining.
    phase: Phase,
    /// Its producer, with the size limits of the topics it writes to.
    pub(super) sender: Sender,
    /// The transform step (`pipeline::record`), shared by the lanes.
    transformer: Arc<Transformer>,
    /// Source topic → route and target topic.
    router: Arc<Router>,
    pub(super) metrics: Arc<Metrics>,
    /// `pipeline.on_error`: dead-letter bad records, or stop on the first.
    on_error: OnError,
    /// Exactly-once (`pipeline.delivery = "exactly-once"`): the open transaction.
    pub(super) txn: Option<Txn>,
    /// Records handed to the producer and not yet acknowledged, at most
    /// (`pipeline.max_in_flight`): the lane stops taking at this many.
    max_in_flight: usize,
    /// How long shutdown waits for acknowledgements (`pipeline.drain_timeout_seconds`).
    drain_timeout: Duration,
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
    /// Partitions currently assigned to this lane.
    assigned: usize,
    /// Totals for the `stopped:` summary.
    pub(super) stats: RunStats,
}

/// A lane ready to run.
pub struct Lane {
    pub consumer: Arc<StreamConsumer<LaneContext>>,
    pub events: UnboundedReceiver<Event>,
    pub state: LaneState,
}

/// What the lane shares with every lane of the pipeline.
pub struct Shared {
    pub transformer: Arc<Transformer>,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
}

impl LaneState {
    pub fn new(id: usize, sender: Sender, shared: &Shared, cfg: &PipelineConfig) -> Self {
        LaneState {
            id,
            phase: Phase::Running,
            sender,
            transformer: shared.transformer.clone(),
            router: shared.router.clone(),
            metrics: shared.metrics.clone(),
            on_error: cfg.on_error,
            txn: (cfg.delivery == Delivery::ExactlyOnce)
                .then(|| Txn::new(Duration::from_millis(cfg.transaction_interval_ms.max(1)))),
            max_in_flight: cfg.max_in_flight.max(1),
            drain_timeout: Duration::from_secs(cfg.drain_timeout_seconds),
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
            assigned: 0,
            stats: RunStats::default(),
        }
    }

    /// May the lane take another record now?
    fn taking(&self) -> bool {
        self.phase.taking(self.inflight.len, self.max_in_flight)
    }

    /// Takes `first` and then what is already fetched, without going back through
    /// `select!`: its cost is per wake-up, not per record.
    async fn take_batch(
        &mut self,
        consumer: &StreamConsumer<LaneContext>,
        stream: &mut rdkafka::consumer::MessageStream<'_, LaneContext>,
        first: &BorrowedMessage<'_>,
    ) -> Result<(), PipelineError> {
        consumer.context().kafka.consumed();
        self.take(consumer, first).await?;
        for _ in 1..BATCH {
            if !self.taking() {
                break;
            }
            match stream.next().now_or_never() {
                Some(Some(Ok(m))) => self.take(consumer, &m).await?,
                Some(Some(Err(e))) => consumer.context().kafka.consume_error(&e),
                _ => break,
            }
        }
        Ok(())
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
        let result = s.run_phases(&consumer, &mut events, &cancel).await;
        let held = s.phase.drain();
        // A record held by an outage gives up now: it is read again after a restart.
        let drained = s.drain(&consumer, result.is_ok() && !held).await;
        s.metrics.add_assigned(-(s.assigned as i64));
        s.metrics.in_flight.sub(s.inflight.len as i64);
        if held {
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

impl LaneState {
    /// The event loop: waits for whatever the phase allows next and carries out
    /// the move, until cancelled, the consumer ends, or a fatal error.
    async fn run_phases(
        &mut self,
        consumer: &Arc<StreamConsumer<LaneContext>>,
        events: &mut UnboundedReceiver<Event>,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let every = |d| {
            let mut i = tokio::time::interval(d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        };
        let mut acks = every(ACK_POLL);
        // At-least-once the transaction timer is never polled.
        let mut txn_timer = every(self.txn.as_ref().map_or(TOPIC_REFRESH, Txn::interval));
        let mut refresh = every(TOPIC_REFRESH);
        refresh.reset();
        // One stream for the lane's life: a new one per record would register and
        // drop a waker each time.
        let mut stream = consumer.stream();
        loop {
            self.settle(consumer)?;
            if self.phase.ready_to_commit(self.inflight.len) {
                super::transaction::commit(self, consumer).await?;
                self.phase.committed();
            }
            let stalled = self.phase.stalled();
            let retry_at = self.phase.retry_at();
            let polling = self.phase.polling(self.inflight.len, self.max_in_flight);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                Some(ev) = events.recv() => self.rebalance(consumer, ev).await?,
                _ = acks.tick(), if self.inflight.len > 0 => {}
                _ = txn_timer.tick(), if self.txn.is_some() => self.phase.commit_due(),
                _ = refresh.tick() => self.sender.refresh(),
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if stalled => {
                    self.retry_stalled(consumer).await?;
                }
                // While stalled the consumer is still polled (group membership,
                // rebalances); a record that arrives goes back to be read later.
                m = stream.next(), if polling => match m {
                    Some(Ok(m)) if stalled => outage::put_back(consumer, &m)?,
                    Some(Ok(m)) => self.take_batch(consumer, &mut stream, &m).await?,
                    Some(Err(e)) => consumer.context().kafka.consume_error(&e),
                    None => return Ok(()),
                },
            }
        }
    }
}
