//! Acknowledgement: delivery reports, collected where the lane polls its
//! producer, find their in-flight record through a slab token and settle it —
//! its offset is stored in order per partition (at-least-once) or counted in the
//! open transaction (exactly-once), and its output counted. A record the brokers
//! refused for what it is (too large, invalid) is read again and dead-lettered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::util::Timeout;
use rdkafka::Offset;

use super::{LaneState, TopicCounters, ACK_POLL};
use crate::codes::Code;
use crate::kafka::route::Destination;
use crate::pipeline::offsets::Settled;
use crate::pipeline::produce::{record_error, take_acks};
use crate::pipeline::rebalance::LaneContext;
use crate::pipeline::PipelineError;

/// One record handed to the producer and not yet acknowledged.
pub(super) struct InFlight {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Its epoch in the offset tracker (a revoke or rewind makes it stale).
    pub epoch: u64,
    pub dest: Arc<Destination>,
    /// Dead-letter code, for dead letters.
    pub code: Option<Code>,
    /// Bytes produced (key, value, headers), for the produced-bytes counter.
    pub bytes: usize,
    /// The source record's timestamp, for the end-to-end latency histogram.
    pub timestamp: Option<i64>,
}

/// Tokens for in-flight records: a slab, so a delivery report finds its record
/// without a hash lookup and nothing is allocated per record.
pub(super) struct Slab<T = InFlight> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
    /// Occupied slots.
    pub len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, v: T) -> usize {
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

    /// The item of `token`, once: a second report for a token is ignored.
    pub fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.items.get_mut(i)?.take()?;
        self.len -= 1;
        self.free.push(i);
        Some(v)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i)?.as_mut()
    }
}

/// A record the brokers refused after it was sent: dead-lettered when its partition
/// is read again from it.
pub(super) struct LateDeadLetter {
    pub offset: i64,
    pub code: Code,
    pub message: String,
}

/// What a refused delivery means: `Some(code)` — the record's own fault, so it is
/// read again and dead-lettered with `code`; `None` — the pipeline stops
/// uncommitted. Only at-least-once replays (a transaction cannot take back what
/// it already holds), and a refused dead letter has nowhere further to go.
fn replay_as(
    record_fault: Option<Code>,
    exactly_once: bool,
    was_dead_letter: bool,
) -> Option<Code> {
    record_fault.filter(|_| !exactly_once && !was_dead_letter)
}

impl LaneState {
    /// Collects delivery reports and settles their records: offsets stored in
    /// order per partition (at-least-once), counted for the open transaction
    /// (exactly-once); a record the brokers refused for what it is is read again
    /// and dead-lettered (at-least-once).
    pub(super) fn settle(
        &mut self,
        consumer: &StreamConsumer<LaneContext>,
    ) -> Result<(), PipelineError> {
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
            if let Settled::Owned(store) =
                self.tracker.done(&f.topic, f.partition, f.offset, f.epoch)
            {
                self.count(&f, now_ms);
                match &mut self.txn {
                    Some(txn) => txn.acked(),
                    None => {
                        let Some(o) = store else { continue };
                        if let Err(e) = consumer.store_offset(&f.topic, f.partition, o) {
                            tracing::debug!(error = %e, topic = %f.topic, partition = f.partition, "offset not stored (partition revoked?)");
                        }
                    }
                }
            }
        }
        self.acks = acks;
        result
    }

    /// Counts a delivered record: produced or dead-lettered, and its end-to-end
    /// latency.
    fn count(&mut self, f: &InFlight, now_ms: i64) {
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
        let Some(code) = replay_as(record_error(&e), self.txn.is_some(), f.code.is_some()) else {
            let to = if f.code.is_some() {
                &f.dest.dead_letter
            } else {
                &f.dest.target
            };
            return Err(PipelineError::Record {
                topic: f.topic.to_string(),
                partition: f.partition,
                offset: f.offset,
                code: Code::DeliveryFailed,
                msg: format!("delivery to {to} failed: {e}"),
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

    /// Polls the producer until every record in flight is settled, or `within`
    /// passes; whether all settled.
    pub(in crate::pipeline) async fn settle_all(
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
    pub(in crate::pipeline) fn in_flight(&self) -> usize {
        self.inflight.len
    }

    /// Exactly-once, aborting: the delivery reports of purged records are
    /// collected until the producer has nothing in flight (10 s at most), and
    /// every record in flight is forgotten (it belongs to the aborted transaction;
    /// its partition is rewound or revoked).
    pub(in crate::pipeline) async fn discard_in_flight(&mut self) {
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
    pub(in crate::pipeline) fn discard_in_flight_now(&mut self) {
        take_acks(&self.sender.producer, &mut self.acks);
        for ack in self.acks.drain(..) {
            if self.inflight.remove(ack.token).is_some() {
                self.metrics.in_flight.dec();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_tokens_are_reused_and_a_second_report_for_a_token_is_ignored() {
        let mut s: Slab<&str> = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_ne!(a, b);
        assert_eq!(s.len, 2);
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None, "a duplicate report settles nothing");
        assert_eq!(s.len, 1);
        let c = s.insert("c");
        assert_eq!(c, a, "a freed slot is reused: no growth in steady state");
        *s.get_mut(c).unwrap() = "c2";
        assert_eq!(s.remove(c), Some("c2"));
        assert_eq!(s.remove(99), None, "an unknown token is ignored");
        assert_eq!(s.get_mut(99), None);
        assert_eq!(s.len, 1);
    }

    #[test]
    fn only_an_at_least_once_output_the_brokers_refused_for_itself_is_replayed() {
        let too_big = Some(Code::RecordTooLarge);
        assert_eq!(replay_as(too_big, false, false), too_big);
        assert_eq!(
            replay_as(too_big, true, false),
            None,
            "a transaction already holds what came after it: stop, uncommitted"
        );
        assert_eq!(
            replay_as(too_big, false, true),
            None,
            "a refused dead letter has nowhere further to go"
        );
        assert_eq!(
            replay_as(None, false, false),
            None,
            "not the record's fault"
        );
    }
}
