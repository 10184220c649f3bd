//! The load generator's producer: generates records of one schema (plain events, or
//! coherent change events with a tombstone after each delete), Confluent-frames them
//! or not, and sends them at a target rate on a blocking thread. Record `i` is due
//! `i / rate` seconds after the start, so a slow moment is caught up rather than
//! lost; with rate 0 records go as fast as the producer queue takes them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::{
    now_micros, Limit, Live, LoadgenError, ProduceReport, Shape, RUN_HEADER, SEQ_HEADER, TS_HEADER,
};
use crate::kafka::wire;
use crate::sample::{ChangeEvents, Envelope, Generator, Op};
use crate::schema::model::SchemaTree;

/// One producer run.
pub struct ProduceSpec {
    pub topic: String,
    pub run_id: String,
    pub tree: SchemaTree,
    pub shape: Shape,
    /// Confluent framing with this schema id; raw Avro when `None`.
    pub schema_id: Option<u32>,
    /// Records per second; 0 = as fast as possible.
    pub rate: f64,
    pub limit: Limit,
    /// Distinct record keys.
    pub keys: u64,
    pub seed: u64,
}

/// Counts deliveries; keeps the first error.
struct Deliveries {
    live: Arc<Live>,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.live.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.live.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// The record source: one datum (and maybe a tombstone after it) per step.
enum Source<'a> {
    Events {
        gen: Generator<'a>,
        keys: u64,
        /// Events so far: the key of event `n` is a hash of (seed, n).
        n: u64,
        seed: u64,
    },
    Changes(ChangeEvents<'a>),
}

impl Source<'_> {
    /// Writes the next value; returns its key and operation (change events only).
    fn next(&mut self, out: &mut Vec<u8>) -> (u64, Option<Op>) {
        match self {
            Source::Events { gen, keys, n, seed } => {
                *n += 1;
                let k = splitmix64(*seed ^ *n) % *keys;
                gen.next_for(k, out);
                (k, None)
            }
            Source::Changes(c) => {
                let (k, op) = c.next(out);
                (k, Some(op))
            }
        }
    }
}

/// A well-mixed 64-bit hash (SplitMix64's finaliser).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Sends records until the limit, a stop request, or a fatal producer error; then
/// waits (up to `flush_timeout`) for every record to be acknowledged.
pub fn produce(
    spec: &ProduceSpec,
    client: ClientConfig,
    live: Arc<Live>,
    flush_timeout: Duration,
) -> Result<ProduceReport, LoadgenError> {
    let ctx = Deliveries {
        live: live.clone(),
        first_error: Mutex::new(None),
    };
    let producer: ThreadedProducer<Deliveries> = client
        .create_with_context(ctx)
        .map_err(LoadgenError::kafka("cannot create the producer"))?;
    let mut source = match spec.shape {
        Shape::Events => Source::Events {
            gen: Generator::new(&spec.tree, spec.seed, spec.keys),
            keys: spec.keys.max(1),
            n: 0,
            seed: spec.seed,
        },
        Shape::ChangeEvents => {
            let env = Envelope::detect(&spec.tree).ok_or_else(|| {
                LoadgenError::Invalid(
                    "the schema is not a change-event envelope (a root record with `before` and `after` \
                     of the same [null, record] type and a string `op`); use --cdc off"
                        .into(),
                )
            })?;
            Source::Changes(ChangeEvents::new(&spec.tree, env, spec.seed, spec.keys))
        }
    };
    let mut report = ProduceReport {
        target_rate: spec.rate,
        ..Default::default()
    };
    let start = Instant::now();
    let mut seq: u64 = 0;
    let mut value = Vec::with_capacity(512);
    let mut datum = Vec::with_capacity(512);
    let due = |seq: u64| {
        (spec.rate > 0.0).then(|| start + Duration::from_secs_f64(seq as f64 / spec.rate))
    };
    let finished = |seq: u64| match spec.limit {
        Limit::Count(n) => seq >= n,
        Limit::Duration(d) => start.elapsed() >= d,
    };
    while !finished(seq) && !live.stopped() {
        if let Some(at) = due(seq) {
            let now = Instant::now();
            if at > now {
                std::thread::sleep((at - now).min(Duration::from_millis(50)));
                continue;
            }
        }
        datum.clear();
        let (key, op) = source.next(&mut datum);
        value.clear();
        if let Some(id) = spec.schema_id {
            wire::frame_header(id, &mut value);
        }
        value.extend_from_slice(&datum);
        let key = key.to_string();
        match op {
            Some(Op::Insert) => report.inserts += 1,
            Some(Op::Update) => report.updates += 1,
            Some(Op::Delete) => report.deletes += 1,
            None => {}
        }
        send(&producer, spec, &live, seq, key.as_bytes(), Some(&value))?;
        report.bytes += (key.len() + value.len()) as u64;
        seq += 1;
        // A delete is followed by its tombstone, so compaction can drop the key.
        if op == Some(Op::Delete) && !(matches!(spec.limit, Limit::Count(n) if seq >= n)) {
            send(&producer, spec, &live, seq, key.as_bytes(), None)?;
            report.bytes += key.len() as u64;
            report.tombstones += 1;
            seq += 1;
        }
    }
    let flushed = producer.flush(flush_timeout);
    report.seconds = start.elapsed().as_secs_f64();
    report.records = live.acked.load(Ordering::Relaxed);
    report.failed = live.failed.load(Ordering::Relaxed);
    report.rate = report.records as f64 / report.seconds.max(1e-9);
    report.first_error = producer
        .context()
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Err(e) = flushed {
        let unacked = seq.saturating_sub(report.records + report.failed);
        report.failed += unacked;
        report.first_error.get_or_insert_with(|| {
            format!("{unacked} records unacknowledged after {flush_timeout:?}: {e}")
        });
    }
    Ok(report)
}

/// Sends one record, waiting while the producer queue is full.
fn send(
    producer: &ThreadedProducer<Deliveries>,
    spec: &ProduceSpec,
    live: &Live,
    seq: u64,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<(), LoadgenError> {
    let seq_text = seq.to_string();
    let ts = now_micros();
    let ts_text = ts.to_string();
    let headers = OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: RUN_HEADER,
            value: Some(spec.run_id.as_str()),
        })
        .insert(Header {
            key: SEQ_HEADER,
            value: Some(seq_text.as_str()),
        })
        .insert(Header {
            key: TS_HEADER,
            value: Some(ts_text.as_str()),
        });
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&spec.topic)
        .key(key)
        .headers(headers)
        .timestamp((ts / 1000) as i64);
    if let Some(v) = value {
        record = record.payload(v);
    }
    loop {
        match producer.send(record) {
            Ok(()) => {
                live.sent.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => {
                return Err(LoadgenError::Kafka {
                    what: format!("cannot send to {}", spec.topic),
                    source: e,
                })
            }
        }
    }
}
