//! Exactly-once: each lane's transactional producer. Every
//! `pipeline.transaction_interval_ms` the lane stops taking records, lets those in
//! flight be acknowledged, then sends the consumed offsets with
//! `send_offsets_to_transaction` and commits. On revoke (a graceful one: another
//! member joining or leaving) the open transaction is committed the same way
//! before the partitions go, so no work is redone and nothing aborted reaches the
//! log; only if its records cannot be acknowledged in time is it aborted. An
//! abortable commit failure aborts and rewinds every partition to its last
//! commit; a fatal one (fenced by a newer producer with the same
//! `transactional.id`) stops the pipeline. Before any abort the producer's queued
//! and in-flight records are purged and their reports collected, as librdkafka
//! requires of an application that polls its own producer. librdkafka's
//! transactional calls block, so they run on the blocking pool, never in a
//! callback; the producer keeps being polled meanwhile.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer, PurgeConfig};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use super::lane::LaneState;
use super::produce::LaneProducer;
use super::rebalance::LaneContext;
use super::PipelineError;

/// Exactly-once: a lane's transaction state. The lane owns it (`LaneState::txn`,
/// `None` under at-least-once); only this module and the acknowledgement of a
/// record change it.
pub struct Txn {
    /// How often the open transaction commits (`pipeline.transaction_interval_ms`).
    interval: Duration,
    /// Records acknowledged in the open transaction.
    acked: u64,
}

impl Txn {
    pub fn new(interval: Duration) -> Self {
        Txn { interval, acked: 0 }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A record of the open transaction was acknowledged.
    pub fn acked(&mut self) {
        self.acked += 1;
    }
}

/// Records acknowledged in the lane's open transaction.
fn acked(s: &LaneState) -> u64 {
    s.txn.as_ref().map_or(0, |t| t.acked)
}

/// A new transaction begins: nothing is acknowledged in it yet.
fn reset(s: &mut LaneState) {
    if let Some(t) = s.txn.as_mut() {
        t.acked = 0;
    }
}

fn txn_err(what: &str) -> impl Fn(KafkaError) -> PipelineError + '_ {
    move |e| PipelineError::Transaction(format!("{what}: {e}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PipelineError::Transaction(e.to_string()))
}

/// Starts transactions on a new producer and opens the first one.
pub async fn init(producer: &Arc<LaneProducer>) -> Result<(), PipelineError> {
    let p = producer.clone();
    blocking(move || {
        p.init_transactions(Timeout::After(Duration::from_secs(60)))?;
        p.begin_transaction()
    })
    .await?
    .map_err(|e| {
        PipelineError::Transaction(format!(
            "cannot start transactions (does the broker support them, and is transactional.id unique?): {e}"
        ))
    })
}

/// How long a revoke waits for the open transaction's records to be acknowledged
/// before it gives the transaction up (aborts) instead of committing it.
const REVOKE_SETTLE: Duration = Duration::from_secs(10);

/// Commits the open transaction with the consumed offsets and begins the next.
/// Everything taken must be settled first.
pub async fn commit(
    s: &mut LaneState,
    consumer: &Arc<StreamConsumer<LaneContext>>,
) -> Result<(), PipelineError> {
    commit_except(s, consumer, None).await
}

/// Partitions are being revoked (gracefully: a member joined or left): the open
/// transaction is committed with everything acknowledged, before the partitions
/// go, so their next owner starts exactly where this one stopped. If the records
/// in flight cannot be acknowledged within [`REVOKE_SETTLE`], the transaction is
/// aborted instead and the partitions this lane keeps are rewound.
pub async fn commit_on_revoke(
    s: &mut LaneState,
    consumer: &Arc<StreamConsumer<LaneContext>>,
    revoked: &TopicPartitionList,
) -> Result<(), PipelineError> {
    if s.settle_all(consumer, REVOKE_SETTLE).await? {
        return commit_except(s, consumer, Some(revoked)).await;
    }
    tracing::warn!(
        left = s.in_flight(),
        "records of the open transaction were not acknowledged in time; aborting it before the partitions go"
    );
    abort(s).await?;
    rewind(s, consumer, Some(revoked))?;
    s.sender
        .producer
        .begin_transaction()
        .map_err(txn_err("cannot begin a transaction after a revoke"))
}

/// After an abort: every partition back to its last commit (revoked ones are
/// left to their next owner, which starts there anyway).
fn rewind(
    s: &mut LaneState,
    consumer: &Arc<StreamConsumer<LaneContext>>,
    revoked: Option<&TopicPartitionList>,
) -> Result<(), PipelineError> {
    let going = |t: &str, p: i32| {
        revoked.is_some_and(|r| {
            r.elements()
                .iter()
                .any(|e| e.topic() == t && e.partition() == p)
        })
    };
    for (t, p, o) in s.tracker.rewind() {
        if going(&t, p) {
            continue;
        }
        consumer
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

async fn commit_except(
    s: &mut LaneState,
    consumer: &Arc<StreamConsumer<LaneContext>>,
    revoked: Option<&TopicPartitionList>,
) -> Result<(), PipelineError> {
    let offsets = s.tracker.uncommitted();
    if offsets.is_empty() && acked(s) == 0 {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in &offsets {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
    }
    let gm = consumer
        .group_metadata()
        .ok_or_else(|| PipelineError::Transaction("the consumer has no group metadata".into()))?;
    let p = s.sender.producer.clone();
    let committed = blocking(move || {
        if tpl.count() > 0 {
            p.send_offsets_to_transaction(&tpl, &gm, Timeout::After(Duration::from_secs(30)))?;
        }
        p.commit_transaction(Timeout::After(Duration::from_secs(60)))
    })
    .await?;
    match committed {
        Ok(()) => {
            s.tracker.mark_committed();
            s.metrics
                .transactions
                .with_label_values(&["committed"])
                .inc();
            s.stats.transactions += 1;
            tracing::debug!(records = acked(s), partitions = offsets.len(), "transaction committed");
        }
        Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
            tracing::warn!(error = %e, "transaction commit failed; aborting and rewinding to the last commit");
            abort(s).await?;
            rewind(s, consumer, revoked)?;
        }
        Err(e) => {
            return Err(PipelineError::Transaction(format!(
                "{e} (a fatal error such as being fenced by another instance with the same transactional.id; records since the last commit will be read again)"
            )))
        }
    }
    reset(s);
    s.sender
        .producer
        .begin_transaction()
        .map_err(txn_err("cannot begin a transaction"))
}

/// Aborts the open transaction: its queued and in-flight records are purged
/// and their reports collected first, and the producer is polled while the
/// abort runs (librdkafka waits for those reports before it aborts).
async fn abort(s: &mut LaneState) -> Result<(), PipelineError> {
    s.sender
        .producer
        .purge(PurgeConfig::default().queue().inflight());
    s.discard_in_flight().await;
    let p = s.sender.producer.clone();
    let mut task = tokio::task::spawn_blocking(move || {
        p.abort_transaction(Timeout::After(Duration::from_secs(30)))
    });
    let aborted = loop {
        tokio::select! {
            r = &mut task => break r,
            _ = tokio::time::sleep(Duration::from_millis(5)) => s.discard_in_flight_now(),
        }
    };
    aborted
        .map_err(|e| PipelineError::Transaction(e.to_string()))?
        .map_err(txn_err("abort failed"))?;
    s.metrics.transactions.with_label_values(&["aborted"]).inc();
    reset(s);
    Ok(())
}

/// The end of a run: commits the open transaction when everything in it settled
/// (`commit`), aborts it otherwise — committing would publish records behind one
/// given up, whose offsets stay uncommitted, so they would be produced again.
pub async fn finish(
    s: &mut LaneState,
    consumer: &Arc<StreamConsumer<LaneContext>>,
    commit_ok: bool,
) -> Result<(), PipelineError> {
    if commit_ok && s.tracker.in_flight() == 0 {
        return commit(s, consumer).await;
    }
    // Its offsets were never committed: the records are read again after a
    // restart, and the abort keeps them from read_committed readers meanwhile.
    if let Err(e) = abort(s).await {
        tracing::warn!(error = %e, "the final transaction could not be aborted; the broker aborts it after transaction.timeout.ms");
    }
    Ok(())
}
