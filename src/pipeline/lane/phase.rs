//! The lane's state machine: what the lane is doing, what it may do in that
//! state, and where each event moves it. Pure (no consumer, no producer, no
//! clock reads), so every decision is unit-tested here; [`super::Lane::run`]
//! carries the moves out.
//!
//! ```text
//!             txn interval             all acked → commit
//!   Running ───────────────▶ Committing ───────────────▶ Running
//!      │  ▲                      │
//!      │  │ retry ok             │ outage (a record in a batch)
//!      ▼  │                      ▼
//!   Stalled{commit_due} ◀────────┘      (txn interval while stalled: commit_due)
//!      │ retry ok with commit_due → Committing
//!   any ── cancel / fatal error ──▶ Draining{held}
//! ```

use std::time::Instant;

use rdkafka::message::OwnedMessage;

use crate::backoff::Backoff;

/// A record held through a KMS or registry outage.
pub(super) struct Stall {
    /// The record, owned: the consumer's buffer is not kept through an outage.
    pub msg: OwnedMessage,
    /// Its epoch in the offset tracker: a revoke meanwhile makes it stale.
    pub epoch: u64,
    /// When the outage began (the resumed event's duration).
    pub since: Instant,
    /// Waits between retries (full jitter, 250 ms doubling to 10 s).
    pub backoff: Backoff,
    /// When the record is tried again.
    pub retry_at: tokio::time::Instant,
}

/// What the lane is doing.
pub(super) enum Phase {
    /// Taking records while fewer than `pipeline.max_in_flight` are unacknowledged.
    Running,
    /// Exactly-once: the transaction interval passed. Nothing is taken; when every
    /// record in flight is acknowledged the transaction commits and the lane runs.
    Committing,
    /// A record is held through an outage: nothing else is taken; the consumer is
    /// still polled (group membership, rebalances) and what it returns is put back
    /// to be read again. `commit_due`: the transaction interval passed meanwhile,
    /// so the lane commits once the held record goes through.
    Stalled { stall: Stall, commit_due: bool },
    /// The run is over (cancelled, or a fatal error): what is in flight gets until
    /// the drain deadline, then the final commit. `held`: a record was held by an
    /// outage when the run ended (it is read again after a restart, so an
    /// exactly-once lane aborts rather than commit past it).
    Draining { held: bool },
}

impl Phase {
    /// May the lane take another record, with `in_flight` of at most `max`
    /// unacknowledged?
    pub fn taking(&self, in_flight: usize, max: usize) -> bool {
        matches!(self, Phase::Running) && in_flight < max
    }

    /// Is the consumer polled? While taking, and while stalled (to stay in the
    /// group; a record it returns is put back).
    pub fn polling(&self, in_flight: usize, max: usize) -> bool {
        self.taking(in_flight, max) || self.stalled()
    }

    /// Is a record held through an outage?
    pub fn stalled(&self) -> bool {
        matches!(self, Phase::Stalled { .. })
    }

    /// When the held record is tried again.
    pub fn retry_at(&self) -> Option<tokio::time::Instant> {
        match self {
            Phase::Stalled { stall, .. } => Some(stall.retry_at),
            _ => None,
        }
    }

    /// Exactly-once: the transaction interval passed. A running lane stops taking
    /// to commit; a stalled one commits after the stall.
    pub fn commit_due(&mut self) {
        match self {
            Phase::Running => *self = Phase::Committing,
            Phase::Stalled { commit_due, .. } => *commit_due = true,
            Phase::Committing | Phase::Draining { .. } => {}
        }
    }

    /// Commit now? Only when committing and nothing is in flight: a transaction
    /// commits only records that were acknowledged.
    pub fn ready_to_commit(&self, in_flight: usize) -> bool {
        matches!(self, Phase::Committing) && in_flight == 0
    }

    /// The transaction committed (or there was nothing to commit): run again.
    pub fn committed(&mut self) {
        if matches!(self, Phase::Committing) {
            *self = Phase::Running;
        }
    }

    /// An outage met a record: hold it. A commit that was due waits for it.
    pub fn hold(&mut self, stall: Stall) {
        let commit_due = matches!(
            self,
            Phase::Committing
                | Phase::Stalled {
                    commit_due: true,
                    ..
                }
        );
        *self = Phase::Stalled { stall, commit_due };
    }

    /// The held record, to retry or give up (revoked meanwhile): the lane runs
    /// again, or commits first if a commit came due. To hold it again, [`hold`](Self::hold).
    pub fn release(&mut self) -> Option<Stall> {
        match std::mem::replace(self, Phase::Running) {
            Phase::Stalled { stall, commit_due } => {
                if commit_due {
                    *self = Phase::Committing;
                }
                Some(stall)
            }
            other => {
                *self = other;
                None
            }
        }
    }

    /// The run ends: drain. Whether a record was held.
    pub fn drain(&mut self) -> bool {
        let held = match self {
            Phase::Stalled { .. } => true,
            Phase::Draining { held } => *held,
            Phase::Running | Phase::Committing => false,
        };
        *self = Phase::Draining { held };
        held
    }

    /// Its name, for tests.
    #[cfg(test)]
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Committing => "committing",
            Phase::Stalled { .. } => "stalled",
            Phase::Draining { .. } => "draining",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::message::Message;

    use super::*;

    fn stall(retry_in_ms: u64) -> Stall {
        Stall {
            msg: OwnedMessage::new(
                Some(b"v".to_vec()),
                None,
                "orders".into(),
                rdkafka::Timestamp::NotAvailable,
                0,
                7,
                None,
            ),
            epoch: 1,
            since: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(10)),
            retry_at: tokio::time::Instant::now() + Duration::from_millis(retry_in_ms),
        }
    }

    #[test]
    fn a_running_lane_takes_up_to_max_in_flight_and_no_further() {
        let p = Phase::Running;
        assert!(p.taking(0, 2) && p.taking(1, 2));
        assert!(!p.taking(2, 2), "at max_in_flight the lane waits for acks");
        assert!(p.polling(1, 2) && !p.polling(2, 2));
        assert_eq!(p.retry_at(), None);
        assert!(!p.ready_to_commit(0), "only a due commit commits");
    }

    #[test]
    fn a_due_commit_stops_taking_until_every_record_in_flight_is_acknowledged() {
        let mut p = Phase::Running;
        p.commit_due();
        assert_eq!(p.name(), "committing");
        assert!(!p.taking(0, 10) && !p.polling(0, 10));
        assert!(
            !p.ready_to_commit(3),
            "records in flight are not in the commit yet"
        );
        assert!(p.ready_to_commit(0));
        p.commit_due();
        assert_eq!(p.name(), "committing", "a second tick changes nothing");
        p.committed();
        assert_eq!(p.name(), "running");
        assert!(p.taking(0, 10));
    }

    #[test]
    fn a_stalled_lane_takes_nothing_but_keeps_polling_and_knows_its_retry_time() {
        let mut p = Phase::Running;
        let s = stall(500);
        let at = s.retry_at;
        p.hold(s);
        assert!(p.stalled() && !p.taking(0, 10));
        assert!(p.polling(0, 10), "membership: the consumer is still polled");
        assert!(p.polling(10, 10));
        assert_eq!(p.retry_at(), Some(at));
        assert!(!p.ready_to_commit(0));
        p.committed();
        assert!(p.stalled(), "a commit does not end a stall");
    }

    #[test]
    fn a_commit_due_during_a_stall_runs_after_it() {
        // The interval passes while stalled: the commit waits for the record.
        let mut p = Phase::Running;
        p.hold(stall(10));
        p.commit_due();
        assert!(!p.ready_to_commit(0));
        let s = p.release().expect("held");
        assert_eq!(s.msg.offset(), 7);
        assert_eq!(p.name(), "committing");
        assert!(p.ready_to_commit(0) && !p.taking(0, 10));
        // An outage met a record while committing (the batch it was in).
        let mut p = Phase::Committing;
        p.hold(stall(10));
        assert!(p.release().is_some());
        assert_eq!(p.name(), "committing", "the due commit survives the stall");
    }

    #[test]
    fn a_retry_that_meets_the_outage_again_holds_the_record_with_its_due_commit() {
        let mut p = Phase::Running;
        p.hold(stall(10));
        p.commit_due();
        let s = p.release().unwrap();
        p.hold(s);
        assert!(p.stalled());
        assert!(p.release().is_some());
        assert_eq!(p.name(), "committing");
        let mut p = Phase::Running;
        p.hold(stall(10));
        let s = p.release().unwrap();
        p.hold(s);
        p.release();
        assert_eq!(p.name(), "running", "no commit was due");
    }

    #[test]
    fn release_without_a_held_record_changes_nothing() {
        for mut p in [Phase::Running, Phase::Committing] {
            let name = p.name();
            assert!(p.release().is_none());
            assert_eq!(p.name(), name);
        }
    }

    #[test]
    fn draining_remembers_whether_a_record_was_held() {
        let mut p = Phase::Running;
        assert!(!p.drain());
        assert_eq!(p.name(), "draining");
        assert!(!p.taking(0, 10) && !p.polling(0, 10));
        let mut p = Phase::Committing;
        assert!(!p.drain());
        let mut p = Phase::Running;
        p.hold(stall(10));
        assert!(p.drain(), "a held record is read again after a restart");
        assert!(p.drain(), "draining twice keeps the answer");
        p.commit_due();
        assert_eq!(p.name(), "draining");
        assert!(p.release().is_none());
    }
}
