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
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value as Json;
use tokio::sync::watch;

use super::{
    now_micros, Latency, Live, LoadgenError, VerifyReport, RUN_HEADER, SEQ_HEADER, TS_HEADER,
};
use crate::kafka::wire;
use crate::registry::{RegistryError, SchemaRegistry};
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
    by_id: HashMap<u32, Result<Arc<Inspector>, String>>,
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
        let derived = Arc::new(Inspector::new(Arc::new(DecryptPlan::build(
            &plan.output_json,
            "the derived output schema",
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

    async fn inspector(&mut self, id: u32) -> Result<Result<Arc<Inspector>, String>, LoadgenError> {
        if let Some(i) = self.by_id.get(&id) {
            return Ok(i.clone());
        }
        let Some(reg) = &self.registry else {
            return Ok(Err("framed record but no registry configured".into()));
        };
        let found = match reg.schema_by_id(id).await {
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
            Err(e @ RegistryError::NotFound { .. }) => Err(e.to_string()),
            Err(e) => return Err(e.into()),
        };
        self.by_id.insert(id, found.clone());
        Ok(found)
    }

    /// Checks one output value.
    async fn check(&mut self, payload: Option<&[u8]>) -> Result<Verdict, LoadgenError> {
        let Some(v) = payload else {
            return Ok(Verdict::Tombstone);
        };
        let (inspector, datum) = match &self.raw {
            Some(raw) => (raw.clone(), v),
            None => {
                let (id, datum) = match wire::parse(v) {
                    Ok(x) => x,
                    Err(e) => return Ok(Verdict::Malformed(e.to_string())),
                };
                match self.inspector(id).await? {
                    Ok(i) => (i, datum),
                    Err(why) => return Ok(Verdict::Unencrypted(why)),
                }
            }
        };
        Ok(match inspector.inspect(datum) {
            Ok(i) => Verdict::Encrypted(i.ciphertexts),
            Err(e) if matches!(e.kind, TransformErrorKind::Crypto(_)) => {
                Verdict::Unencrypted(e.to_string())
            }
            Err(e) => Verdict::Malformed(e.to_string()),
        })
    }
}

enum Verdict {
    Tombstone,
    Encrypted(u64),
    Unencrypted(String),
    Malformed(String),
}

/// Sequence numbers seen, as a growable bit set.
#[derive(Default)]
struct Seen(Vec<u64>);

impl Seen {
    /// Marks `seq`; false if it was already marked.
    fn insert(&mut self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        let fresh = self.0[w] & (1 << b) == 0;
        self.0[w] |= 1 << b;
        fresh
    }
}

/// A consumer assigned to the target topic, ready to verify one run.
pub struct Verifier {
    consumer: StreamConsumer,
    target: String,
    run_id: String,
    expect: Expectations,
    timeout: Duration,
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
        for p in partitions {
            let offset = match start {
                Start::Beginning => Offset::Beginning,
                Start::End => {
                    let (_, high) = consumer
                        .fetch_watermarks(target, p, wait)
                        .map_err(LoadgenError::kafka(format!("end offset of {target}/{p}")))?;
                    Offset::Offset(high)
                }
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
        })
    }

    /// Reads until every expected record has been seen (and [`LINGER`] more), or
    /// until `timeout` after the expected count became known. `expected` holds
    /// `None` while the producer is still running, then the records it had
    /// acknowledged.
    pub async fn run(
        mut self,
        mut expected: watch::Receiver<Option<u64>>,
        live: Arc<Live>,
    ) -> Result<VerifyReport, LoadgenError> {
        let started = Instant::now();
        let mut r = VerifyReport::default();
        let mut seen = Seen::default();
        let mut latencies: Vec<u64> = Vec::new();
        let mut deadline: Option<Instant> = None;
        let mut complete_at: Option<Instant> = None;
        loop {
            let want = *expected.borrow_and_update();
            if let Some(n) = want {
                let now = Instant::now();
                let deadline = *deadline.get_or_insert(now + self.timeout);
                if r.seen >= n {
                    if *complete_at.get_or_insert(now + LINGER) <= now {
                        break;
                    }
                } else if now >= deadline {
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
            let (mut run, mut seq, mut ts) = (None, None, None);
            if let Some(hs) = msg.headers() {
                for h in hs.iter() {
                    let v = h.value.and_then(|v| std::str::from_utf8(v).ok());
                    match h.key {
                        RUN_HEADER => run = v,
                        SEQ_HEADER => seq = v.and_then(|s| s.parse::<u64>().ok()),
                        TS_HEADER => ts = v.and_then(|s| s.parse::<u64>().ok()),
                        _ => {}
                    }
                }
            }
            let (Some(seq), true) = (seq, run == Some(self.run_id.as_str())) else {
                r.other += 1;
                continue;
            };
            if seen.insert(seq) {
                r.seen += 1;
                live.seen.store(r.seen, Ordering::Relaxed);
                if let Some(ts) = ts {
                    latencies.push(now_micros().saturating_sub(ts));
                }
            } else {
                r.duplicates += 1;
            }
            let at = format!("{}/{}@{}", self.target, msg.partition(), msg.offset());
            match self.expect.check(msg.payload()).await? {
                Verdict::Tombstone => r.tombstones += 1,
                Verdict::Encrypted(n) => r.fields_checked += n,
                Verdict::Unencrypted(why) => {
                    r.unencrypted += 1;
                    if r.problems.len() < MAX_PROBLEMS {
                        r.problems.push(format!("{at}: unencrypted: {why}"));
                    }
                }
                Verdict::Malformed(why) => {
                    r.malformed += 1;
                    if r.problems.len() < MAX_PROBLEMS {
                        r.problems.push(format!("{at}: malformed: {why}"));
                    }
                }
            }
        }
        r.expected = expected.borrow().unwrap_or(0);
        r.missing = r.expected.saturating_sub(r.seen);
        r.latency_ms = Latency::of(&mut latencies);
        r.seconds = started.elapsed().as_secs_f64();
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_marks_each_sequence_once() {
        let mut s = Seen::default();
        assert!(s.insert(0));
        assert!(s.insert(130));
        assert!(!s.insert(130));
        assert!(s.insert(129));
        assert!(!s.insert(0));
    }
}
