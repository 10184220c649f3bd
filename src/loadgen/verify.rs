//! The load run's verifier: reads every partition of the route's target topic (from
//! its end when assigned before producing, or from the beginning for `check`),
//! picks out one run's records by their headers, and tallies them: distinct,
//! duplicated, missing, and whether every sensitive field holds a ciphertext. The
//! sensitive fields are the ones the source schema's plan encrypts; a record is
//! unencrypted if its output schema leaves any of them out or any of them holds
//! something other than a fieldcrypt ciphertext. No keys, no plaintext.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value as Json;
use tokio::sync::watch;

use super::{
    now_micros, Histogram, Live, LoadgenError, SeqSet, VerifyReport, RUN_HEADER, SEQ_HEADER,
    TOMBSTONE_HEADER, TS_HEADER,
};
use crate::kafka::wire;
use crate::registry::SchemaRegistry;
use crate::schema::plan::{DecryptPlan, EncryptPlan, PlanConfig};
use crate::transform::inspect::Inspector;
use crate::transform::TransformErrorKind;

/// Where the verifier starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The partitions' current ends: only records written from now on.
    End,
    /// The earliest offsets.
    Beginning,
}

/// How long the verifier keeps reading after it has seen every expected record,
/// to catch duplicates that arrive just behind.
const LINGER: Duration = Duration::from_secs(1);
/// Problems kept for the report.
const MAX_PROBLEMS: usize = 5;

/// What the target's records must look like.
pub struct Expectations {
    /// Sensitive fields (`record.field`) the output must encrypt.
    required: BTreeSet<String>,
    /// Raw Avro: the derived output schema's inspector.
    raw: Option<Arc<Inspector>>,
    /// Confluent framing: output schemas by id, from the registry.
    registry: Option<Arc<SchemaRegistry>>,
    by_id: HashMap<u32, Result<Arc<Inspector>, Verdict>>,
}

impl Expectations {
    /// From the source schema the load generator writes: the plan says which fields
    /// get encrypted; without a registry the output schema is the plan's.
    pub fn new(
        source_schema: &Json,
        plan_config: &PlanConfig,
        registry: Option<Arc<SchemaRegistry>>,
    ) -> Result<Self, LoadgenError> {
        let plan = EncryptPlan::build(source_schema, "the load generator's schema", plan_config)?;
        let derived = Arc::new(Inspector::new(Arc::new(DecryptPlan::build_with_depth(
            &plan.output_json,
            "the derived output schema",
            plan_config.max_depth,
        )?)));
        Ok(Expectations {
            required: derived.encrypted_fields(),
            raw: registry.is_none().then_some(derived),
            registry,
            by_id: HashMap::new(),
        })
    }

    /// The fields every output record must encrypt.
    pub fn required(&self) -> &BTreeSet<String> {
        &self.required
    }

    /// The inspector for output schema `id`, or why its records cannot be checked.
    /// Only answers that cannot change are cached: a registry that is down is
    /// asked again for the next record.
    async fn inspector(&mut self, id: u32) -> Result<Arc<Inspector>, Verdict> {
        if let Some(i) = self.by_id.get(&id) {
            return i.clone();
        }
        let Some(reg) = &self.registry else {
            return Err(Verdict::Malformed(
                "framed record but no registry configured".into(),
            ));
        };
        let found = match reg.schema_by_id(id).await {
            Ok(s) if s.schema_type != crate::registry::AVRO => Err(format!(
                "output schema id {id} is of type {}, not Avro",
                s.schema_type
            )),
            Ok(s) => match DecryptPlan::build(&s.json, &format!("schema id {id}")) {
                Ok(plan) => {
                    let ins = Inspector::new(Arc::new(plan));
                    let have = ins.encrypted_fields();
                    match self.required.iter().find(|f| !have.contains(*f)) {
                        Some(f) => Err(format!("output schema id {id} leaves {f} unencrypted")),
                        None => Ok(Arc::new(ins)),
                    }
                }
                Err(e) => Err(format!("output schema id {id}: {e}")),
            },
            Err(e) if e.is_infrastructure() => {
                return Err(Verdict::Malformed(format!(
                    "output schema id {id} could not be fetched: {e}"
                )))
            }
            Err(e) => return Err(Verdict::Malformed(format!("output schema id {id}: {e}"))),
        };
        let found = found.map_err(Verdict::Unencrypted);
        self.by_id.insert(id, found.clone());
        found
    }

    /// Checks one output value; `tombstone`: the load generator sent a tombstone.
    async fn check(&mut self, payload: Option<&[u8]>, tombstone: bool) -> Verdict {
        let v = match (payload, tombstone) {
            (None, true) => return Verdict::Tombstone,
            (None, false) => {
                return Verdict::Malformed(
                    "the value is missing (null) but a record was sent".into(),
                )
            }
            (Some(_), true) => {
                return Verdict::Malformed("a value where a tombstone was sent".into())
            }
            (Some(v), false) => v,
        };
        let (inspector, datum) = match &self.raw {
            Some(raw) => (raw.clone(), v),
            None => {
                let (id, datum) = match wire::parse(v) {
                    Ok(x) => x,
                    Err(e) => return Verdict::Malformed(e.to_string()),
                };
                match self.inspector(id).await {
                    Ok(i) => (i, datum),
                    Err(verdict) => return verdict,
                }
            }
        };
        match inspector.inspect(datum) {
            Ok(i) => Verdict::Encrypted(i.ciphertexts),
            Err(e) if matches!(e.kind, TransformErrorKind::Crypto(_)) => {
                Verdict::Unencrypted(e.to_string())
            }
            Err(e) => Verdict::Malformed(e.to_string()),
        }
    }
}

#[derive(Clone)]
enum Verdict {
    Tombstone,
    Encrypted(u64),
    Unencrypted(String),
    Malformed(String),
}

/// A consumer assigned to the target topic, ready to verify one run.
pub struct Verifier {
    consumer: StreamConsumer,
    target: String,
    run_id: String,
    expect: Expectations,
    timeout: Duration,
    /// Partitions and the end offsets they had at assignment, until the consumer
    /// has read that far (reading from the beginning only): the timeout for missing
    /// records starts once they are all read.
    behind: Vec<(i32, i64)>,
}

impl Verifier {
    /// Assigns every partition of `target` at `start`. Blocking (metadata and
    /// watermark requests): call it before producing, off the async workers.
    pub fn assign(
        mut client: ClientConfig,
        target: &str,
        run_id: &str,
        start: Start,
        expect: Expectations,
        timeout: Duration,
    ) -> Result<Verifier, LoadgenError> {
        client
            .set("group.id", format!("fieldcrypt-loadgen-verify-{run_id}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false");
        let consumer: StreamConsumer = client
            .create()
            .map_err(LoadgenError::kafka("cannot create the verifier's consumer"))?;
        let wait = Duration::from_secs(15);
        let md = consumer
            .fetch_metadata(Some(target), wait)
            .map_err(LoadgenError::kafka(format!("metadata of {target}")))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == target && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(LoadgenError::Invalid(format!(
                "the route's target topic {target} does not exist; create it (the verifier reads it)"
            )));
        }
        let mut tpl = TopicPartitionList::new();
        let mut behind = Vec::new();
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(target, p, wait)
                .map_err(LoadgenError::kafka(format!("end offset of {target}/{p}")))?;
            let offset = match start {
                Start::Beginning => {
                    if high > low {
                        behind.push((p, high));
                    }
                    Offset::Beginning
                }
                Start::End => Offset::Offset(high),
            };
            tpl.add_partition_offset(target, p, offset)
                .map_err(LoadgenError::kafka("assignment"))?;
        }
        consumer
            .assign(&tpl)
            .map_err(LoadgenError::kafka(format!("cannot assign {target}")))?;
        Ok(Verifier {
            consumer,
            target: target.to_string(),
            run_id: run_id.to_string(),
            expect,
            timeout,
            behind,
        })
    }

    /// Has the consumer read every partition up to where it ended at assignment?
    fn caught_up(&mut self) -> bool {
        if self.behind.is_empty() {
            return true;
        }
        if let Ok(pos) = self.consumer.position() {
            let target = &self.target;
            self.behind.retain(|(p, end)| {
                match pos.find_partition(target, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o < *end,
                    _ => true,
                }
            });
        }
        self.behind.is_empty()
    }

    /// Reads until every expected record has been seen (and [`LINGER`] more), or
    /// until `timeout` after the expected records became known (and, reading from
    /// the beginning, the consumer reached the topic's end as it was at
    /// assignment). `expected` holds `None` while the producer is still running,
    /// then the sequence numbers the broker acknowledged.
    pub async fn run(
        mut self,
        mut expected: watch::Receiver<Option<Arc<SeqSet>>>,
        live: Arc<Live>,
    ) -> Result<VerifyReport, LoadgenError> {
        let started = Instant::now();
        let mut r = VerifyReport::default();
        let mut seen = SeqSet::default();
        let mut latency = Histogram::default();
        let mut deadline: Option<Instant> = None;
        let mut complete_at: Option<Instant> = None;
        // Expected records not seen yet, once the expected set is known.
        let mut remaining: Option<u64> = None;
        // One past the largest acknowledged sequence number, once known.
        let mut acked_end: Option<u64> = None;
        loop {
            let want = expected.borrow_and_update().clone();
            if let Some(acked) = &want {
                acked_end.get_or_insert_with(|| acked.end());
                let now = Instant::now();
                let left = *remaining.get_or_insert_with(|| acked.absent_from(&seen, 0).0);
                if live.stopped() {
                    r.interrupted = true;
                    let soon = now + STOPPED_TIMEOUT;
                    deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
                }
                if deadline.is_none() && self.caught_up() {
                    deadline = Some(now + self.timeout);
                }
                if left == 0 {
                    if *complete_at.get_or_insert(now + LINGER) <= now {
                        break;
                    }
                } else if deadline.is_some_and(|d| now >= d) {
                    break;
                }
            }
            let msg = match tokio::time::timeout(Duration::from_millis(200), self.consumer.recv())
                .await
            {
                Err(_) => continue,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, topic = %self.target, "verifier consume error");
                    continue;
                }
                Ok(Ok(m)) => m,
            };
            let (mut run, mut seq, mut ts, mut tombstone) = (None, None, None, false);
            // Unreadable headers: not a record of this run.
            for (k, v) in crate::kafka::headers::read(msg.headers()).unwrap_or_default() {
                let v = v.and_then(|v| std::str::from_utf8(v).ok());
                match k {
                    RUN_HEADER => run = v,
                    SEQ_HEADER => seq = Some(v.and_then(|s| s.parse::<u64>().ok())),
                    TS_HEADER => ts = v.and_then(|s| s.parse::<u64>().ok()),
                    TOMBSTONE_HEADER => tombstone = true,
                    _ => {}
                }
            }
            if run != Some(self.run_id.as_str()) {
                r.other += 1;
                continue;
            }
            // Where the record is, for problems only (never its contents).
            let at = || format!("{}/{}@{}", self.target, msg.partition(), msg.offset());
            // Sequence numbers above what was sent belong to another run that reused
            // this run id; checking them could also make the seen set huge.
            let sent = live.sent.load(Ordering::Relaxed);
            let bound = acked_end.map_or(sent, |end| end.max(sent));
            let seq = match seq {
                Some(Some(s)) if s < bound => s,
                Some(Some(_)) => {
                    r.other += 1;
                    continue;
                }
                _ => {
                    r.malformed += 1;
                    note(
                        &mut r.problems,
                        format!("{}: malformed: no valid sequence number header", at()),
                    );
                    continue;
                }
            };
            if seen.insert(seq) {
                if let Some(ts) = ts {
                    latency.record(now_micros().saturating_sub(ts));
                }
                if let (Some(acked), Some(left)) = (&want, remaining.as_mut()) {
                    if acked.contains(seq) {
                        *left = left.saturating_sub(1);
                    }
                }
                live.seen.store(seen.len(), Ordering::Relaxed);
            } else {
                r.duplicates += 1;
                *r.duplicates_by_partition
                    .entry(msg.partition())
                    .or_default() += 1;
            }
            match self.expect.check(msg.payload(), tombstone).await {
                Verdict::Tombstone => r.tombstones += 1,
                Verdict::Encrypted(n) => r.fields_checked += n,
                Verdict::Unencrypted(why) => {
                    r.unencrypted += 1;
                    note(&mut r.problems, format!("{}: unencrypted: {why}", at()));
                }
                Verdict::Malformed(why) => {
                    r.malformed += 1;
                    note(&mut r.problems, format!("{}: malformed: {why}", at()));
                }
            }
        }
        let acked = expected.borrow().clone().unwrap_or_default();
        r.expected = acked.len();
        r.seen = seen.len();
        let (missing, first) = acked.absent_from(&seen, MAX_PROBLEMS);
        r.missing = missing;
        if missing > 0 {
            let list: Vec<String> = first.iter().map(u64::to_string).collect();
            // First, whatever else was noted: it is the headline.
            r.problems.insert(
                0,
                format!(
                    "missing: {missing} records, the first with sequence numbers {}",
                    list.join(", ")
                ),
            );
        }
        r.latency_ms = latency.summary();
        r.seconds = started.elapsed().as_secs_f64();
        Ok(r)
    }
}

/// How long the verifier keeps reading after a stop request.
const STOPPED_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps the first few problems.
fn note(problems: &mut Vec<String>, p: String) {
    if problems.len() < MAX_PROBLEMS {
        problems.push(p);
    }
}
