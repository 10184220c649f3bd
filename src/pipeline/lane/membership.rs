//! The lane's membership in the consumer group and its end: rebalances arrive
//! as messages ([`crate::pipeline::rebalance`]) and are settled here before the
//! lane completes them (at-least-once: stored offsets committed; exactly-once:
//! the open transaction committed, [`crate::pipeline::transaction`]); at the end
//! of a run what is in flight gets until the drain deadline, then the final commit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::TopicPartitionList;

use super::{LaneState, ACK_POLL};
use crate::pipeline::rebalance::{self, Event, LaneContext};
use crate::pipeline::{transaction, PipelineError};

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

/// The topics of a partition list, once each.
fn topics(tpl: &TopicPartitionList) -> BTreeSet<String> {
    tpl.elements()
        .iter()
        .map(|e| e.topic().to_string())
        .collect()
}

/// At-least-once: commits the stored offsets, on the blocking pool (never in a
/// rebalance callback: the rebalance waits for the lane). Nothing stored is not
/// an error; a failed commit is logged (the records are read again).
async fn commit_stored(consumer: &Arc<StreamConsumer<LaneContext>>, when: &'static str) {
    let c = consumer.clone();
    match tokio::task::spawn_blocking(move || c.commit_consumer_state(CommitMode::Sync)).await {
        Ok(Ok(())) | Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "commit {when} failed"),
        Err(e) => tracing::warn!(error = %e, "commit {when} did not run"),
    }
}

impl LaneState {
    /// Settles a rebalance, then completes it.
    pub(super) async fn rebalance(
        &mut self,
        consumer: &Arc<StreamConsumer<LaneContext>>,
        ev: Event,
    ) -> Result<(), PipelineError> {
        match &ev {
            Event::Assign(tpl) => self.assigned(consumer, tpl, &ev)?,
            Event::Revoke(tpl) => self.revoked(consumer, tpl, &ev).await?,
            Event::Error(e) => tracing::warn!(worker = self.id, error = %e, "rebalance error"),
        }
        Ok(())
    }

    fn assigned(
        &mut self,
        consumer: &Arc<StreamConsumer<LaneContext>>,
        tpl: &TopicPartitionList,
        ev: &Event,
    ) -> Result<(), PipelineError> {
        for t in &topics(tpl) {
            // The topic's series exist at 0 before its first record.
            let target = self.destination(t).ok().map(|d| d.target.clone());
            self.metrics.prepare_route(t, target.as_deref());
        }
        tracing::info!(worker = self.id, partitions = %partition_list(tpl), "partitions assigned");
        self.metrics.rebalances.with_label_values(&["assign"]).inc();
        self.metrics.add_assigned(tpl.count() as i64);
        self.assigned += tpl.count();
        rebalance::complete(consumer.as_ref(), ev)?;
        if self.phase.stalled() {
            // Still waiting out an outage: the new partitions wait too.
            consumer.pause(tpl)?;
        }
        Ok(())
    }

    async fn revoked(
        &mut self,
        consumer: &Arc<StreamConsumer<LaneContext>>,
        tpl: &TopicPartitionList,
        ev: &Event,
    ) -> Result<(), PipelineError> {
        tracing::info!(worker = self.id, partitions = %partition_list(tpl), "partitions revoked");
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        self.settle(consumer)?;
        if self.txn.is_some() {
            transaction::commit_on_revoke(self, consumer, tpl).await?;
        } else {
            // What is stored is committed before the partitions go.
            commit_stored(consumer, "before revoking partitions").await;
        }
        for e in tpl.elements() {
            self.tracker.forget(e.topic(), e.partition());
            self.late.remove(&(Arc::from(e.topic()), e.partition()));
        }
        for t in topics(tpl) {
            self.metrics.revoked_topic(&t);
        }
        self.metrics.add_assigned(-(tpl.count() as i64));
        self.assigned = self.assigned.saturating_sub(tpl.count());
        rebalance::complete(consumer.as_ref(), ev)?;
        Ok(())
    }

    /// The end of a run: what is in flight gets until the drain deadline, then the
    /// final commit (at-least-once: what is stored; exactly-once: the open
    /// transaction if `commit_ok` and everything in it settled, else it is aborted).
    pub(super) async fn drain(
        &mut self,
        consumer: &Arc<StreamConsumer<LaneContext>>,
        commit_ok: bool,
    ) -> Result<(), PipelineError> {
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
        if self.txn.is_some() {
            return transaction::finish(self, consumer, commit_ok && drained).await;
        }
        commit_stored(consumer, "at the end of the run").await;
        let p = self.sender.producer.clone();
        let _ =
            tokio::task::spawn_blocking(move || p.flush(Timeout::After(Duration::from_secs(5))))
                .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_lists_are_grouped_by_topic_and_sorted() {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in [("orders", 2), ("audit", 0), ("orders", 0), ("orders", 1)] {
            tpl.add_partition(t, p);
        }
        assert_eq!(partition_list(&tpl), "audit[0], orders[0,1,2]");
        assert_eq!(
            topics(&tpl).into_iter().collect::<Vec<_>>(),
            ["audit", "orders"]
        );
        assert_eq!(partition_list(&TopicPartitionList::new()), "");
    }
}
