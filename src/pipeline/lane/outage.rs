//! Outages: a KMS or registry outage holds the record that met it
//! ([`Phase::Stalled`](super::phase::Phase::Stalled)), pauses the lane's
//! partitions and keeps polling (membership), retrying with full-jitter backoff
//! until the service answers; then the partitions resume. A record the consumer
//! returns meanwhile is put back, to be read again in order.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use super::phase::Stall;
use super::{at, LaneState};
use crate::backoff::Backoff;
use crate::observe::events;
use crate::pipeline::rebalance::LaneContext;
use crate::pipeline::record::Fatal;
use crate::pipeline::PipelineError;

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
pub(super) fn put_back<M: Message>(
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
    /// Holds a record through an outage: pauses the assignment and schedules a
    /// retry.
    pub(super) fn hold<M: Message>(
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
        self.phase.hold(Stall {
            msg: own(msg),
            epoch,
            since: Instant::now(),
            backoff,
            retry_at: tokio::time::Instant::now() + wait,
        });
        Ok(())
    }

    /// Retries the held record; on success the assignment resumes.
    pub(super) async fn retry_stalled(
        &mut self,
        consumer: &StreamConsumer<LaneContext>,
    ) -> Result<(), PipelineError> {
        let Some(mut st) = self.phase.release() else {
            return Ok(());
        };
        let (topic, partition, offset) = (st.msg.topic(), st.msg.partition(), st.msg.offset());
        if !self.tracker.owns(topic, partition, offset, st.epoch) {
            // Revoked meanwhile: its next owner reads it again.
            return self.resume(consumer, st.since);
        }
        let topic = self.topic(topic).0;
        match self.process(topic, &st.msg, st.epoch).await? {
            Some(e) => {
                events::outage(&self.metrics, at(&st.msg), e.code(), &e, false);
                st.retry_at = tokio::time::Instant::now() + st.backoff.next_delay();
                self.phase.hold(st);
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
}
