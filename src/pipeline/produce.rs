//! The produce stage of a lane: fits each output to its topic's size limit
//! (an output too large becomes a dead letter; a dead letter too large sheds its
//! payload, then the original key and headers) and hands it to the lane's producer
//! with a token. librdkafka reports each delivery through [`AckContext`]; the lane
//! collects the reports where it polls the producer, on its own thread, so no
//! future or channel is made per record.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use super::limits::Limits;
use super::record::dead_letter_headers;
use crate::codes::Code;
use crate::config::DeadLetterPayload;
use crate::kafka::headers;
use crate::kafka::route::Destination;

/// One delivery report: the token the record was sent with, and its error.
pub struct Ack {
    pub token: usize,
    pub error: Option<KafkaError>,
}

/// The producer's context: delivery reports, picked up by the lane.
pub struct AckContext {
    acks: Mutex<Vec<Ack>>,
    /// Where the client's logs and errors go.
    kafka: std::sync::Arc<crate::observe::kafka::KafkaLog>,
}

impl AckContext {
    pub fn new(kafka: std::sync::Arc<crate::observe::kafka::KafkaLog>) -> Self {
        AckContext {
            acks: Mutex::default(),
            kafka,
        }
    }
}

impl ClientContext for AckContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.kafka.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.kafka.error(&error, reason);
    }
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, token: usize) {
        let error = r.as_ref().err().map(|(e, _)| e.clone());
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Ack { token, error });
    }
}

/// A lane's producer.
pub type LaneProducer = BaseProducer<AckContext>;

/// Serves delivery reports: runs the producer's callbacks and moves their reports
/// into `into` (reused, so no allocation per call).
pub fn take_acks(producer: &LaneProducer, into: &mut Vec<Ack>) {
    producer.poll(Duration::ZERO);
    let mut acks = producer
        .context()
        .acks
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    std::mem::swap(&mut *acks, into);
}

/// A record's key as it will be sent.
pub enum Key {
    /// The consumed record's key.
    Original,
    New(Vec<u8>),
    /// None (a dead letter shrunk to fit).
    Dropped,
}

/// A record's value as it will be sent.
pub enum Payload {
    None,
    Original,
    /// The lane's value buffer (the transform's output).
    Buffer,
}

/// What to produce for one consumed record: its output, or its dead letter.
pub struct Out {
    pub to_dead_letter: bool,
    pub key: Key,
    pub payload: Payload,
    pub headers: Option<OwnedHeaders>,
    /// The dead-letter code, for dead letters.
    pub code: Option<Code>,
}

impl Out {
    fn key<'a, M: Message>(&'a self, msg: &'a M) -> Option<&'a [u8]> {
        match &self.key {
            Key::Original => msg.key(),
            Key::New(k) => Some(k),
            Key::Dropped => None,
        }
    }

    fn payload<'a, M: Message>(&self, msg: &'a M, buf: &'a [u8]) -> Option<&'a [u8]> {
        match &self.payload {
            Payload::None => None,
            Payload::Original => msg.payload(),
            Payload::Buffer => Some(buf),
        }
    }

    fn size<M: Message>(&self, msg: &M, buf: &[u8]) -> usize {
        super::limits::record_size(self.key(msg), self.payload(msg, buf), self.headers.as_ref())
    }

    /// The dead letter of `msg`: its key and (per config) payload, its headers and
    /// the error headers.
    pub fn dead_letter<M: Message>(
        msg: &M,
        code: Code,
        message: &str,
        payload: DeadLetterPayload,
    ) -> Out {
        Out {
            to_dead_letter: true,
            key: Key::Original,
            payload: match payload {
                DeadLetterPayload::Keep if msg.payload().is_some() => Payload::Original,
                _ => Payload::None,
            },
            headers: Some(dead_letter_headers(msg, code, message)),
            code: Some(code),
        }
    }

    /// Makes a dead letter smaller: first without its payload, then without the
    /// original key and headers. False when there is nothing left to drop.
    fn shrink(&mut self, limit: usize, size: usize) -> bool {
        let note = |what: &str| {
            match limit {
            0 => format!("{what} left out: the brokers refused the dead letter ({size} bytes) as too large"),
            _ => format!("{what} left out: the dead letter ({size} bytes) exceeds the dead-letter topic's limit of {limit} bytes"),
        }
        };
        let hs = self.headers.take().unwrap_or_default();
        if !matches!(self.payload, Payload::None) {
            self.payload = Payload::None;
            self.headers = Some(hs.insert(Header {
                key: headers::ERROR_PAYLOAD,
                value: Some(note("payload").as_bytes()),
            }));
            return true;
        }
        if !matches!(self.key, Key::Dropped) {
            // Keep only fieldcrypt's own error and source headers.
            let mut h = OwnedHeaders::new();
            for x in hs
                .iter()
                .filter(|x| headers::is_reserved(x.key) && x.key != headers::DEK)
            {
                h = h.insert(Header {
                    key: x.key,
                    value: x.value,
                });
            }
            self.headers = Some(h.insert(Header {
                key: headers::ERROR_HEADERS,
                value: Some(note("key and original headers").as_bytes()),
            }));
            self.key = Key::Dropped;
            return true;
        }
        self.headers = Some(hs);
        false
    }
}

/// Why an output could not be sent as it is — the record's own fault, so it is
/// dead-lettered instead (and a dead letter shrunk until it fits).
enum Refusal {
    /// Larger than the topic's limit, by fieldcrypt's own estimate.
    TooLarge,
    /// librdkafka or the brokers refused it for what it is.
    Broker(Code, KafkaError),
}

impl Refusal {
    fn code(&self) -> Code {
        match self {
            Refusal::TooLarge => Code::RecordTooLarge,
            Refusal::Broker(code, _) => *code,
        }
    }

    /// For the dead letter that replaces the output.
    fn message(&self, topic: &str, size: usize, limit: usize) -> String {
        match self {
            Refusal::TooLarge => format!(
                "the output record ({size} bytes) exceeds the limit of {limit} bytes for topic {topic} (its max.message.bytes, or the producer's message.max.bytes)"
            ),
            Refusal::Broker(_, e) => format!("cannot produce to {topic}: {e}"),
        }
    }

    /// When even the smallest dead letter is refused.
    fn last(&self, topic: &str, limit: usize) -> String {
        match self {
            Refusal::TooLarge => format!(
                "even a dead letter without payload, key or original headers exceeds {limit} bytes for topic {topic}"
            ),
            Refusal::Broker(_, e) => format!("cannot produce to {topic}: {e}"),
        }
    }
}

/// Whether a produce or delivery error is about the record itself (too large,
/// invalid), so the record becomes a dead letter, rather than about the brokers.
pub fn record_error(e: &KafkaError) -> Option<Code> {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code()? {
        C::MessageSizeTooLarge | C::MessageBatchTooLarge => Some(Code::RecordTooLarge),
        C::InvalidRecord | C::InvalidMessage | C::InvalidMessageSize => Some(Code::InvalidRecord),
        C::InvalidTimestamp => Some(Code::InvalidTimestamp),
        _ => None,
    }
}

/// A lane's sending side: its producer, and what it knows of the topics it
/// writes to.
pub struct Sender {
    pub producer: std::sync::Arc<LaneProducer>,
    pub limits: Limits,
    pub dead_letter_payload: DeadLetterPayload,
    /// Per topic: its size limit and partition count, looked up together on first
    /// use and again after each [`refresh`](Sender::refresh) (every minute, by the
    /// lane): the one freshness rule for topic metadata, so a raised
    /// `max.message.bytes` or added partitions are seen within a minute, a failed
    /// lookup is retried within a minute, and the hot path reads no clock.
    topics: foldhash::HashMap<String, (usize, Option<i32>)>,
}

/// Why a record could not be handed to the producer.
pub enum SendError {
    /// A record-level failure the record could not even be dead-lettered with.
    Record { code: Code, msg: String },
    /// The producer failed (not the record's fault).
    Kafka(KafkaError),
}

/// What was sent: the record's size (for metrics), and its dead-letter code if it
/// went to the dead-letter topic (possibly because it did not fit).
pub struct Sent {
    pub bytes: usize,
    pub code: Option<Code>,
    pub message: Option<String>,
}

impl Sender {
    pub fn new(
        producer: std::sync::Arc<LaneProducer>,
        limits: Limits,
        dead_letter_payload: DeadLetterPayload,
    ) -> Self {
        Sender {
            producer,
            limits,
            dead_letter_payload,
            topics: Default::default(),
        }
    }

    /// Forgets what was looked up about topics, so limits and partition counts
    /// are read again (the lane calls this every minute).
    pub fn refresh(&mut self) {
        self.topics.clear();
    }

    /// A topic's size limit and partition count.
    async fn topic(&mut self, topic: &str) -> (usize, Option<i32>) {
        if let Some(t) = self.topics.get(topic) {
            return *t;
        }
        let t = (
            self.limits.for_topic(topic).await,
            self.partition_count(topic).await,
        );
        self.topics.insert(topic.to_string(), t);
        t
    }

    /// Produces `out` for `msg` (fitting it to its topic, dead-lettering an output
    /// too large), with delivery token `token`.
    pub async fn send<M: Message>(
        &mut self,
        msg: &M,
        buf: &[u8],
        dest: &Destination,
        mut out: Out,
        token: usize,
    ) -> Result<Sent, SendError> {
        let mut message = None;
        loop {
            let topic = if out.to_dead_letter {
                &dest.dead_letter
            } else {
                &dest.target
            };
            let (limit, partitions) = self.topic(topic).await;
            let size = out.size(msg, buf);
            let refusal = if size > limit {
                Refusal::TooLarge
            } else {
                // Keep the input partition when the target has enough partitions, so
                // per-key order holds end to end; otherwise the partitioner hashes the key.
                let partition = partitions
                    .filter(|n| !out.to_dead_letter && msg.partition() < *n)
                    .map(|_| msg.partition());
                match self
                    .produce(msg, buf, topic, &mut out, partition, token)
                    .await
                {
                    Ok(()) => {
                        return Ok(Sent {
                            bytes: size,
                            code: out.code,
                            message,
                        })
                    }
                    // librdkafka's own checks disagree with our estimate: same path.
                    Err(e) => match record_error(&e) {
                        Some(code) => Refusal::Broker(code, e),
                        None => return Err(SendError::Kafka(e)),
                    },
                }
            };
            // The record's own fault: its dead letter instead, then smaller ones.
            if !out.to_dead_letter {
                let m = refusal.message(topic, size, limit);
                out = Out::dead_letter(msg, refusal.code(), &m, self.dead_letter_payload);
                message = Some(m);
            } else if !out.shrink(limit, size) {
                return Err(SendError::Record {
                    code: refusal.code(),
                    msg: refusal.last(topic, limit),
                });
            }
        }
    }

    /// Hands one record to librdkafka, waiting (without blocking the runtime)
    /// while its queue is full.
    async fn produce<M: Message>(
        &self,
        msg: &M,
        buf: &[u8],
        topic: &str,
        out: &mut Out,
        partition: Option<i32>,
        token: usize,
    ) -> Result<(), KafkaError> {
        let mut headers = out.headers.take();
        let result = loop {
            let mut rec: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(topic, token);
            if let Some(k) = out.key(msg) {
                rec = rec.key(k);
            }
            if let Some(p) = out.payload(msg, buf) {
                rec = rec.payload(p);
            }
            if let Some(ts) = msg.timestamp().to_millis() {
                rec = rec.timestamp(ts);
            }
            if let Some(p) = partition {
                rec = rec.partition(p);
            }
            if let Some(h) = headers.take() {
                rec = rec.headers(h);
            }
            match self.producer.send(rec) {
                Ok(()) => break Ok(()),
                Err((e, r)) => {
                    headers = r.headers;
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                        // Backpressure: let deliveries drain, never drop.
                        self.producer.poll(Duration::ZERO);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    break Err(e);
                }
            }
        };
        out.headers = headers;
        result
    }

    /// The target's partition count from the brokers (off the async threads);
    /// `None` when the lookup fails. Uncached: [`topic`](Sender::topic) caches.
    async fn partition_count(&self, topic: &str) -> Option<i32> {
        let producer = self.producer.clone();
        let t = topic.to_string();
        let count = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&t), Timeout::After(Duration::from_secs(10)))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
                .filter(|n| *n > 0)
        })
        .await
        .ok()
        .flatten();
        if count.is_none() {
            tracing::warn!(topic, "partition count of the target unknown; records are partitioned by key until it is known");
        }
        count
    }
}
