//! The load generator's producer: generates records of one schema (plain events, or
//! coherent change events with a tombstone after each delete), Confluent-frames them
//! or not, and sends them at a target rate on a blocking thread. Record `i` is due
//! `i / rate` seconds after the start, so a slow moment is caught up rather than
//! lost; with rate 0 records go as fast as the producer queue takes them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::{
    now_micros, Limit, Live, LoadgenError, ProduceReport, SeqSet, Shape, RUN_HEADER, SEQ_HEADER,
    TOMBSTONE_HEADER, TS_HEADER,
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

/// Counts deliveries and keeps the sequence numbers acknowledged and the first error.
struct Deliveries {
    live: Arc<Live>,
    acked: Mutex<SeqSet>,
    first_error: Mutex<Option<String>>,
    start: Instant,
    /// Microseconds from `start` to the latest acknowledgement.
    last_ack: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    /// The record's sequence number.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => {
                lock(&self.acked).insert(seq as u64);
                self.live.acked.fetch_add(1, Ordering::Relaxed);
                let at = self.start.elapsed().as_micros() as u64;
                self.last_ack.fetch_max(at, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.live.failed.fetch_add(1, Ordering::Relaxed);
                lock(&self.first_error).get_or_insert_with(|| e.to_string());
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the producer did, and which records the broker acknowledged.
pub struct Produced {
    pub report: ProduceReport,
    pub acked: SeqSet,
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

/// Sends records until the limit, a stop request, or a producer error; then waits
/// (up to `flush_timeout`) for every record to be acknowledged. A paced record's
/// timestamp is the time it was due, so a producer that falls behind shows up in
/// the latency rather than hiding it.
pub fn produce(
    spec: &ProduceSpec,
    client: ClientConfig,
    live: Arc<Live>,
    flush_timeout: Duration,
) -> Result<Produced, LoadgenError> {
    if spec.rate > 0.0 && spec.rate < MIN_RATE {
        return Err(LoadgenError::Invalid(format!(
            "--rate {} is below {MIN_RATE} records/s; use 0 for as fast as possible",
            spec.rate
        )));
    }
    let start = Instant::now();
    let ctx = Deliveries {
        live: live.clone(),
        acked: Mutex::new(SeqSet::default()),
        first_error: Mutex::new(None),
        start,
        last_ack: AtomicU64::new(0),
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
    let start_wall = now_micros();
    let mut seq: u64 = 0;
    let mut value = Vec::with_capacity(512);
    let mut datum = Vec::with_capacity(512);
    // Offsets from the start, in µs, at which record `seq` is due (None: unpaced).
    let due = |seq: u64| (spec.rate > 0.0).then(|| (seq as f64 * 1e6 / spec.rate) as u64);
    let out_of_time = || matches!(spec.limit, Limit::Duration(d) if start.elapsed() >= d);
    let done = |seq: u64| match spec.limit {
        Limit::Count(n) => seq >= n,
        Limit::Duration(_) => out_of_time(),
    };
    let mut sender = Sender {
        producer: &producer,
        spec,
        live: &live,
        out_of_time: &out_of_time,
    };
    'run: while !done(seq) && !live.stopped() {
        let ts = match due(seq) {
            Some(off) => {
                let elapsed = start.elapsed().as_micros() as u64;
                if off > elapsed {
                    std::thread::sleep(Duration::from_micros(off - elapsed).min(MAX_NAP));
                    continue;
                }
                start_wall + off
            }
            None => now_micros(),
        };
        datum.clear();
        let (key, op) = source.next(&mut datum);
        value.clear();
        if let Some(id) = spec.schema_id {
            wire::frame_header(id, &mut value);
        }
        value.extend_from_slice(&datum);
        let key = key.to_string();
        // A delete is followed by its tombstone, so compaction can drop the key
        // (unless --count ends the run between the two).
        let tombstone =
            op == Some(Op::Delete) && !matches!(spec.limit, Limit::Count(n) if seq + 1 >= n);
        for value in [Some(value.as_slice()), None] {
            if value.is_none() && !tombstone {
                break;
            }
            match sender.send(seq, ts, key.as_bytes(), value) {
                Ok(true) => {}
                Ok(false) => break 'run,
                Err(e) => {
                    report.failed += 1;
                    report.first_error = Some(format!("cannot send to {}: {e}", spec.topic));
                    break 'run;
                }
            }
            report.bytes += (key.len() + value.map_or(0, <[u8]>::len)) as u64;
            match (value.is_none(), op) {
                (true, _) => report.tombstones += 1,
                (false, Some(Op::Insert)) => report.inserts += 1,
                (false, Some(Op::Update)) => report.updates += 1,
                (false, Some(Op::Delete)) => report.deletes += 1,
                (false, None) => {}
            }
            seq += 1;
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.interrupted = live.stopped();
    let flushed = producer.flush(flush_timeout);
    report.flush_seconds = start.elapsed().as_secs_f64() - report.seconds;
    let ctx = producer.context();
    report.records = live.acked.load(Ordering::Relaxed);
    report.failed += live.failed.load(Ordering::Relaxed);
    // Throughput the broker took: first send to last acknowledgement (a full
    // producer queue still draining after the send window counts).
    let acked_in = ctx.last_ack.load(Ordering::Relaxed) as f64 / 1e6;
    report.rate = report.records as f64 / acked_in.max(1e-9);
    if let Some(e) = lock(&ctx.first_error).clone() {
        report.first_error.get_or_insert(e);
    }
    if let Err(e) = flushed {
        let unacked = seq.saturating_sub(report.records + report.failed);
        report.failed += unacked;
        report.first_error.get_or_insert_with(|| {
            format!("{unacked} records unacknowledged after {flush_timeout:?}: {e}")
        });
    }
    let acked = std::mem::take(&mut *lock(&ctx.acked));
    Ok(Produced { report, acked })
}

/// The lowest paced rate: one record every 1000 s.
const MIN_RATE: f64 = 0.001;
/// The longest sleep between checks of the clock, the limit and a stop request.
const MAX_NAP: Duration = Duration::from_millis(50);

struct Sender<'a> {
    producer: &'a ThreadedProducer<Deliveries>,
    spec: &'a ProduceSpec,
    live: &'a Live,
    out_of_time: &'a dyn Fn() -> bool,
}

impl Sender<'_> {
    /// Queues one record, waiting while the producer queue is full. Ok(false): gave
    /// up waiting because of a stop request or the end of the run's time; Err: the
    /// producer refused the record (librdkafka's error; it holds no values).
    fn send(
        &mut self,
        seq: u64,
        ts: u64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<bool, KafkaError> {
        let seq_text = seq.to_string();
        let ts_text = ts.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: RUN_HEADER,
                value: Some(self.spec.run_id.as_str()),
            })
            .insert(Header {
                key: SEQ_HEADER,
                value: Some(seq_text.as_str()),
            })
            .insert(Header {
                key: TS_HEADER,
                value: Some(ts_text.as_str()),
            });
        if value.is_none() {
            headers = headers.insert(Header {
                key: TOMBSTONE_HEADER,
                value: Some("1"),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&self.spec.topic, seq as usize)
                .key(key)
                .headers(headers)
                .timestamp((ts / 1000) as i64);
        if let Some(v) = value {
            record = record.payload(v);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.live.sent.fetch_add(1, Ordering::Relaxed);
                    return Ok(true);
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if self.live.stopped() || (self.out_of_time)() {
                        return Ok(false);
                    }
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}
