//! The record path inside a lane: a consumed record is routed, transformed
//! ([`Transformer::transform`](crate::pipeline::record::Transformer::transform)), turned into an output or a dead letter, and
//! handed to the producer with a slab token ([`super::settle`] settles it when
//! its delivery report arrives). An outage returns the record to be held
//! ([`super::outage`]).

use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;

use super::settle::InFlight;
use super::{at, LaneState, TopicCounters, TIMING_SAMPLE};
use crate::codes::Code;
use crate::config::OnError;
use crate::kafka::route::Destination;
use crate::observe::events;
use crate::pipeline::produce::{Key, Out, Payload, SendError};
use crate::pipeline::rebalance::LaneContext;
use crate::pipeline::record::{Fatal, Outcome};
use crate::pipeline::PipelineError;

impl LaneState {
    /// Where records of `topic` go (routing once per topic).
    pub(super) fn destination(&mut self, topic: &str) -> Result<Arc<Destination>, PipelineError> {
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
    pub(super) fn topic(&mut self, topic: &str) -> (Arc<str>, &TopicCounters) {
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
    pub(super) async fn take<M: Message>(
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
    pub(super) async fn process<M: Message>(
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
            None => match self.transform(&topic, msg, &dest).await? {
                Ok(out) => out,
                Err(outage) => return Ok(Some(outage)),
            },
        };
        self.send(topic, msg, dest, out, epoch).await?;
        Ok(None)
    }

    /// The transform step: the output for a record (into `self.value`), its dead
    /// letter, or (inner `Err`) the outage that must hold it.
    async fn transform<M: Message>(
        &mut self,
        topic: &str,
        msg: &M,
        dest: &Destination,
    ) -> Result<Result<Out, Fatal>, PipelineError> {
        // The transform's duration is sampled: two clock reads per record cost
        // more than the histogram is worth.
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
        let out = match outcome {
            Ok(Outcome::Produce {
                key,
                payload,
                headers,
                counts,
                unencrypted,
            }) => {
                self.fields += counts;
                if unencrypted {
                    let counter = self
                        .topics
                        .get(topic)
                        .and_then(|(_, c)| c.unencrypted.as_ref());
                    counter.inspect(|c| c.inc());
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
                self.dead_letter(msg, dest, code, &message)?
            }
            Err(e) if e.is_transient() => return Ok(Err(e)),
            Err(e) => return Err(PipelineError::at(msg, e.code(), e.to_string())),
        };
        Ok(Ok(out))
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
            return Err(PipelineError::at(
                msg,
                code,
                format!("{message} (pipeline.on_error = \"stop\")"),
            ));
        }
        events::dead_lettered(&self.metrics, at(msg), code, message, &dest.dead_letter);
        Ok(Out::dead_letter(
            msg,
            code,
            message,
            self.sender.dead_letter_payload,
        ))
    }

    /// Hands the output to the producer; the record is in flight until its
    /// delivery report settles it.
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
                Err(match e {
                    SendError::Record { code, msg: m } => PipelineError::at(msg, code, m),
                    SendError::Kafka(e) => {
                        PipelineError::at(msg, Code::ProduceFailed, e.to_string())
                    }
                })
            }
        }
    }
}
