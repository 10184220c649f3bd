//! Exactly-once: each lane's transactional producer. Every
//! `pipeline.transaction_interval_ms` the lane stops taking records, lets those in
//! flight be acknowledged, then sends the consumed offsets with
//! `send_offsets_to_transaction` and commits. On revoke the open transaction is
//! aborted before the partitions go (its records are discarded for
//! `read_committed` readers and read again by the partitions' next owner); an
//! abortable commit failure aborts and rewinds every partition to its last commit;
//! a fatal one (fenced by a newer producer with the same `transactional.id`) stops
//! the pipeline. librdkafka's transactional calls block, so they run on the
//! blocking pool, never in a callback.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use super::lane::LaneState;
use super::produce::LaneProducer;
use super::rebalance::LaneContext;
use super::PipelineError;

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

/// Commits the open transaction with the consumed offsets and begins the next.
/// Everything taken must be settled first.
pub async fn commit(
    s: &mut LaneState,
    consumer: &Arc<StreamConsumer<LaneContext>>,
) -> Result<(), PipelineError> {
    let offsets = s.tracker.uncommitted();
    if offsets.is_empty() && s.sent_in_txn == 0 {
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
            tracing::debug!(records = s.sent_in_txn, partitions = offsets.len(), "transaction committed");
        }
        Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
            tracing::warn!(error = %e, "transaction commit failed; aborting and rewinding to the last commit");
            abort(s).await?;
            for (t, p, o) in s.tracker.rewind() {
                consumer
                    .seek(&t, p, Offset::Offset(o), Timeout::After(Duration::from_secs(10)))
                    .map_err(|e| {
                        PipelineError::Transaction(format!("cannot rewind {t}/{p} to {o}: {e}"))
                    })?;
            }
        }
        Err(e) => {
            return Err(PipelineError::Transaction(format!(
                "{e} (a fatal error such as being fenced by another instance with the same transactional.id; records since the last commit will be read again)"
            )))
        }
    }
    s.sent_in_txn = 0;
    s.sender
        .producer
        .begin_transaction()
        .map_err(txn_err("cannot begin a transaction"))
}

async fn abort(s: &mut LaneState) -> Result<(), PipelineError> {
    let p = s.sender.producer.clone();
    blocking(move || p.abort_transaction(Timeout::After(Duration::from_secs(30))))
        .await?
        .map_err(txn_err("abort failed"))?;
    s.metrics.transactions.with_label_values(&["aborted"]).inc();
    s.sent_in_txn = 0;
    Ok(())
}

/// Partitions are being revoked: the open transaction is aborted (its records
/// belong to the partitions' next owner now) and a new one begins.
pub async fn abort_on_revoke(s: &mut LaneState) -> Result<(), PipelineError> {
    abort(s).await?;
    s.sender
        .producer
        .begin_transaction()
        .map_err(txn_err("cannot begin a transaction after a revoke"))
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
    let p = s.sender.producer.clone();
    let _ = blocking(move || p.abort_transaction(Timeout::After(Duration::from_secs(30)))).await;
    Ok(())
}
