//! `fieldcrypt loadgen` and `fieldcrypt check`: synthetic load for a route's source
//! topic at a target rate, and a verifier that reads the route's target topic and
//! reports what arrived: records seen, duplicates, missing, sensitive fields that are
//! not encrypted, and end-to-end latency.
//!
//! Every generated record carries three headers that fieldcrypt passes through
//! untouched: the run id, a sequence number (0, 1, 2, ... per run) and the creation
//! time in microseconds. The verifier keys on them, so it needs no plaintext and no
//! keys: it checks each sensitive field by the output schema and the ciphertext
//! format ([`crate::transform::inspect`]).
//!
//! - [`produce`]: the rate-paced producer (plain events or Debezium-style change
//!   events with tombstones; raw or Confluent-framed).
//! - [`verify`]: the consumer that tallies the run.

pub mod produce;
pub mod verify;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::{Config, PipelineMode};
use crate::kafka::route::{KeyFormat, RouteError, Router};
use crate::pipeline::client_config;
use crate::registry::{RegistryError, SchemaRegistry};
use crate::sample::Envelope;
use crate::schema::model::SchemaTree;
use crate::schema::SchemaError;
use produce::{produce, ProduceSpec};
use verify::{Expectations, Start, Verifier};

/// Header naming the load-generator run a record belongs to. The `loadgen.`
/// headers are outside the `fieldcrypt.` namespace, which the pipeline keeps for
/// its own headers, so they pass through it like any application header.
pub const RUN_HEADER: &str = "loadgen.run";
/// Header with the record's sequence number within its run (decimal).
pub const SEQ_HEADER: &str = "loadgen.seq";
/// Header with the record's creation time, microseconds since the Unix epoch
/// (decimal): when it was due at the target rate, or when it was sent at rate 0.
pub const TS_HEADER: &str = "loadgen.ts";
/// Header present (value `1`) on tombstones only, so a value lost on the way (a null
/// where a record was sent) is told apart from a tombstone.
pub const TOMBSTONE_HEADER: &str = "loadgen.tombstone";

/// Why a load run could not start or finish. Never contains field values or keys.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read schema {path}: {msg}")]
    SchemaFile { path: PathBuf, msg: String },
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("schema registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("kafka: {what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: KafkaError,
    },
}

impl LoadgenError {
    fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> LoadgenError {
        let what = what.into();
        move |source| LoadgenError::Kafka { what, source }
    }
}

/// How long a load run lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Count(u64),
    Duration(Duration),
}

/// Which records to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One record of the schema per event.
    Events,
    /// Debezium-style change events; deletes are followed by a tombstone.
    ChangeEvents,
}

/// The route a load run feeds, as the config describes it.
#[derive(Debug, Clone)]
pub struct RouteView {
    pub source: String,
    pub target: String,
    /// The route's raw-Avro writer schema, if it has one.
    pub value_schema: Option<PathBuf>,
    /// Whether the route reads keys as Avro (loadgen writes text keys).
    pub avro_keys: bool,
}

/// Finds the route for `topic`; a verifier needs an encrypting pipeline.
pub fn route_for(config: &Config, topic: &str, verify: bool) -> Result<RouteView, LoadgenError> {
    let router = Router::new(&config.routes)?;
    let d = router.route(topic)?;
    if verify && config.pipeline.mode == PipelineMode::Decrypt {
        return Err(LoadgenError::Invalid(
            "pipeline.mode is \"decrypt\": the verifier checks an encrypting pipeline's output; \
             point --config at the encrypting instance's config"
                .into(),
        ));
    }
    Ok(RouteView {
        source: topic.to_string(),
        target: d.target,
        value_schema: config.routes[d.route].value_schema.clone(),
        avro_keys: config.routes[d.route].key_format == KeyFormat::Avro,
    })
}

/// Counters shared between the producer, the verifier and the progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    pub seen: AtomicU64,
    /// Set by a signal: stop producing and report what was done.
    pub stop: AtomicBool,
}

impl Live {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// What the producer did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProduceReport {
    /// Records acknowledged by the broker (tombstones included).
    pub records: u64,
    pub tombstones: u64,
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    /// Records the broker did not take (after the producer's own retries).
    pub failed: u64,
    /// Key and value bytes sent.
    pub bytes: u64,
    /// From the first send to the last (the send window).
    pub seconds: f64,
    /// Then, waiting for the last acknowledgements.
    pub flush_seconds: f64,
    /// Records acknowledged per second, from the first send to the last
    /// acknowledgement.
    pub rate: f64,
    /// Stopped early by a signal.
    pub interrupted: bool,
    /// The requested rate (0: as fast as possible).
    pub target_rate: f64,
    /// The first delivery error, if any (no record contents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// End-to-end latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Latencies in logarithmic buckets 1% wide: constant memory however long the run,
/// percentiles within 1% (reported as their bucket's upper edge, capped at the max).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

/// Buckets per factor e of latency: 100 gives buckets 1% wide.
const PER_E: f64 = 100.0;

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        let b = ((micros as f64 + 1.0).ln() * PER_E) as usize;
        if b >= self.counts.len() {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    /// The nearest-rank percentile `q` (0 < q <= 1), microseconds.
    fn quantile(&self, q: f64) -> f64 {
        let rank = ((self.total as f64 * q).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = ((b + 1) as f64 / PER_E).exp() - 1.0;
                return upper.min(self.max as f64);
            }
        }
        self.max as f64
    }

    pub fn summary(&self) -> Latency {
        if self.total == 0 {
            return Latency::default();
        }
        Latency {
            p50: self.quantile(0.50) / 1000.0,
            p90: self.quantile(0.90) / 1000.0,
            p99: self.quantile(0.99) / 1000.0,
            max: self.max as f64 / 1000.0,
        }
    }
}

/// A set of sequence numbers `0..n`, one bit each.
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// `0..n`.
    pub fn full(n: u64) -> SeqSet {
        let mut words = vec![u64::MAX; n.div_ceil(64) as usize];
        if n % 64 != 0 {
            if let Some(last) = words.last_mut() {
                *last = (1u64 << (n % 64)) - 1;
            }
        }
        SeqSet { words, len: n }
    }

    /// Adds `seq`; false if it was there already.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let fresh = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.len += u64::from(fresh);
        fresh
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the largest member (0 when empty).
    pub fn end(&self) -> u64 {
        self.words.iter().rposition(|&w| w != 0).map_or(0, |i| {
            i as u64 * 64 + 64 - u64::from(self.words[i].leading_zeros())
        })
    }

    /// How many members `other` lacks, and the first `limit` of them.
    pub fn absent_from(&self, other: &SeqSet, limit: usize) -> (u64, Vec<u64>) {
        let mut count = 0;
        let mut first = Vec::new();
        for (i, &w) in self.words.iter().enumerate() {
            let mut lack = w & !other.words.get(i).copied().unwrap_or(0);
            count += u64::from(lack.count_ones());
            while lack != 0 && first.len() < limit {
                first.push(i as u64 * 64 + u64::from(lack.trailing_zeros()));
                lack &= lack - 1;
            }
        }
        (count, first)
    }
}

/// What the verifier found on the target topic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Records of this run the producer had acknowledged.
    pub expected: u64,
    /// Distinct records of this run seen on the target.
    pub seen: u64,
    /// Records of this run seen more than once (at-least-once redelivery).
    pub duplicates: u64,
    /// The duplicates by target partition: after a crash, which partitions
    /// the redelivered records were on.
    pub duplicates_by_partition: std::collections::BTreeMap<i32, u64>,
    /// Expected records never seen (by sequence number, so a duplicate or a stray
    /// record cannot hide a lost one).
    pub missing: u64,
    /// Records whose sensitive fields are not all fieldcrypt ciphertexts (must be 0).
    pub unencrypted: u64,
    /// Records of this run that do not decode with their schema or framing, or
    /// whose value was lost (null where no tombstone was sent) (must be 0).
    pub malformed: u64,
    /// Records on the target from other runs, without loadgen headers, or numbered
    /// beyond what was produced (ignored).
    pub other: u64,
    pub tombstones: u64,
    /// Sensitive field values checked to be ciphertexts (nulls not counted).
    pub fields_checked: u64,
    /// Creation in loadgen (the time the record was due) to arrival at the verifier.
    pub latency_ms: Latency,
    /// Stopped early by a signal.
    pub interrupted: bool,
    pub seconds: f64,
    /// The first few problems, with partition and offset (never values).
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.unencrypted == 0 && self.malformed == 0
    }
}

/// The whole run, as printed and as written by `--report`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: String,
    pub topic: String,
    pub target: String,
    pub framing: &'static str,
    pub cdc: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub produce: Option<ProduceReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyReport>,
    pub ok: bool,
}

impl Report {
    pub fn finish(mut self) -> Report {
        let produced = self
            .produce
            .as_ref()
            .is_none_or(|p| p.failed == 0 && p.records > 0);
        self.ok = produced && self.verify.as_ref().is_none_or(VerifyReport::ok);
        self
    }

    /// The human summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let keys = self.keys.map(|k| format!(", {k} keys")).unwrap_or_default();
        let _ = writeln!(
            s,
            "run {}: {} -> {} ({}, {}{keys})",
            self.run_id,
            self.topic,
            self.target,
            self.framing,
            if self.cdc { "change events" } else { "events" },
        );
        if let Some(p) = &self.produce {
            let target = if p.target_rate > 0.0 {
                format!("{:.0}/s", p.target_rate)
            } else {
                "max".into()
            };
            let _ = writeln!(
                s,
                "  produced   {} records ({} tombstones; {} inserts, {} updates, {} deletes), {} failed, {:.1} MB in {:.2} s (+{:.2} s for the last acks): {:.0} records/s (target {target}){}",
                p.records,
                p.tombstones,
                p.inserts,
                p.updates,
                p.deletes,
                p.failed,
                p.bytes as f64 / 1e6,
                p.seconds,
                p.flush_seconds,
                p.rate,
                if p.interrupted { ", interrupted" } else { "" }
            );
            if let Some(e) = &p.first_error {
                let _ = writeln!(s, "  first delivery error: {e}");
            }
        }
        if let Some(v) = &self.verify {
            let _ = writeln!(
                s,
                "  verified   {} of {} seen, {} duplicates, {} missing, {} unencrypted, {} malformed ({} fields checked, {} tombstones, {} other records ignored){}",
                v.seen,
                v.expected,
                v.duplicates,
                v.missing,
                v.unencrypted,
                v.malformed,
                v.fields_checked,
                v.tombstones,
                v.other,
                if v.interrupted { "; interrupted" } else { "" }
            );
            let _ = writeln!(
                s,
                "  end-to-end latency ms: p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
                v.latency_ms.p50, v.latency_ms.p90, v.latency_ms.p99, v.latency_ms.max
            );
            for p in &v.problems {
                let _ = writeln!(s, "  problem: {p}");
            }
        }
        let _ = writeln!(s, "  result: {}", if self.ok { "OK" } else { "FAILED" });
        s
    }
}

/// One `fieldcrypt loadgen` invocation.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub topic: String,
    /// The records' schema; default: the route's `value_schema`.
    pub schema: Option<PathBuf>,
    /// Records per second; 0 = as fast as possible.
    pub rate: f64,
    pub limit: Limit,
    pub keys: u64,
    /// Change events or plain events; `None`: change events if the schema is an envelope.
    pub cdc: Option<bool>,
    pub seed: u64,
    pub verify: bool,
    /// How long the verifier waits for stragglers once producing has ended.
    pub verify_timeout: Duration,
    pub run_id: String,
}

/// The schema a run writes: from `--schema` or the route. Without a registry the
/// route's `value_schema` is what the pipeline decodes with, so another schema would
/// only be dead-lettered: refused.
fn load_schema(
    config: &Config,
    explicit: Option<&PathBuf>,
    route: Option<&RouteView>,
) -> Result<(PathBuf, serde_json::Value), LoadgenError> {
    let path = explicit
        .cloned()
        .or_else(|| route.and_then(|r| r.value_schema.clone()))
        .ok_or_else(|| {
            LoadgenError::Invalid(
                "no schema: give --schema FILE.avsc (the route has no value_schema)".into(),
            )
        })?;
    let text = std::fs::read_to_string(&path).map_err(|e| LoadgenError::SchemaFile {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    let refs = config.schema.references()?;
    let json =
        crate::schema::parse_schema_with(&text, &refs).map_err(|e| LoadgenError::SchemaFile {
            path: path.clone(),
            msg: e.to_string(),
        })?;
    if let (Some(r), None) = (route, &config.schema_registry.url) {
        if let Some(rs) = r.value_schema.as_ref().filter(|rs| **rs != path) {
            let (_, theirs) = load_schema(config, Some(rs), None)?;
            if theirs != json {
                return Err(LoadgenError::Invalid(format!(
                    "{} differs from the route's value_schema {}: without a registry the \
                     pipeline decodes {} with that schema; drop --schema or use the same file",
                    path.display(),
                    rs.display(),
                    r.source
                )));
            }
        }
    }
    Ok((path, json))
}

fn registry(config: &Config) -> Result<Option<Arc<SchemaRegistry>>, LoadgenError> {
    if config.schema_registry.url.is_none() {
        return Ok(None);
    }
    let metrics = Arc::new(crate::observe::Metrics::new());
    Ok(Some(Arc::new(SchemaRegistry::new(
        &config.schema_registry,
        metrics,
    )?)))
}

/// Produces the run and, with `verify`, checks the route's target concurrently.
pub async fn run(
    config: &Config,
    spec: &LoadSpec,
    live: Arc<Live>,
) -> Result<Report, LoadgenError> {
    let route = match route_for(config, &spec.topic, spec.verify) {
        Ok(r) => Some(r),
        Err(LoadgenError::Route(RouteError::NoRoute(_))) if !spec.verify => None,
        Err(e) => return Err(e),
    };
    if route.as_ref().is_some_and(|r| r.avro_keys) {
        return Err(LoadgenError::Invalid(format!(
            "the route for {} has key_format = \"avro\"; loadgen writes text keys (the row id), \
             which that pipeline would dead-letter",
            spec.topic
        )));
    }
    let (path, json) = load_schema(config, spec.schema.as_ref(), route.as_ref())?;
    let tree = SchemaTree::compile(&json)?;
    crate::sample::check(&tree)
        .map_err(|m| LoadgenError::Invalid(format!("schema {}: {m}", path.display())))?;
    let envelope = Envelope::detect(&tree).is_some();
    let shape = match spec.cdc {
        Some(true) | None if envelope => Shape::ChangeEvents,
        Some(true) => {
            return Err(LoadgenError::Invalid(format!(
                "--cdc on, but {} is not a change-event envelope (a root record with `before` and \
                 `after` of the same [null, record] type and a string `op`)",
                path.display()
            )))
        }
        _ => Shape::Events,
    };
    let registry = registry(config)?;
    let schema_id = match &registry {
        Some(reg) => {
            let subject =
                config
                    .schema_registry
                    .subject_strategy
                    .subject(&spec.topic, false, &json);
            // As a producer would: register, or only look up when the config says
            // schemas are registered by someone else.
            Some(
                reg.id_for(&subject, &json, config.schema_registry.auto_register)
                    .await?,
            )
        }
        None => None,
    };
    let (done_tx, done_rx) = watch::channel(None);
    let verifier = match (&route, spec.verify) {
        (Some(route), true) => {
            let expect = Expectations::new(&json, &config.plan_config(), registry.clone())?;
            if expect.required().is_empty() {
                tracing::warn!(schema = %path.display(), "the schema marks no field sensitive: nothing to check for encryption");
            }
            let client = client_config(config, &[]);
            let (target, run_id, timeout) = (
                route.target.clone(),
                spec.run_id.clone(),
                spec.verify_timeout,
            );
            let v = tokio::task::spawn_blocking(move || {
                Verifier::assign(client, &target, &run_id, Start::End, expect, timeout)
            })
            .await
            .map_err(|e| LoadgenError::Invalid(format!("verifier setup panicked: {e}")))??;
            Some(tokio::spawn(v.run(done_rx, live.clone())))
        }
        _ => None,
    };
    let mut client = client_config(config, &[("linger.ms", "5")]);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("client.id", format!("{}-loadgen", config.kafka.client_id));
    let pspec = ProduceSpec {
        topic: spec.topic.clone(),
        run_id: spec.run_id.clone(),
        tree,
        shape,
        schema_id,
        rate: spec.rate,
        limit: spec.limit,
        keys: spec.keys,
        seed: spec.seed,
    };
    let plive = live.clone();
    let produced = tokio::task::spawn_blocking(move || {
        produce(&pspec, client, plive, Duration::from_secs(60))
    })
    .await
    .map_err(|e| LoadgenError::Invalid(format!("producer panicked: {e}")))?;
    let produced = match produced {
        Ok(p) => p,
        Err(e) => {
            let _ = done_tx.send(Some(Arc::new(SeqSet::default())));
            return Err(e);
        }
    };
    let _ = done_tx.send(Some(Arc::new(produced.acked)));
    let produced = produced.report;
    let verify = match verifier {
        Some(task) => Some(
            task.await
                .map_err(|e| LoadgenError::Invalid(format!("verifier panicked: {e}")))??,
        ),
        None => None,
    };
    Ok(Report {
        run_id: spec.run_id.clone(),
        topic: spec.topic.clone(),
        target: route.map(|r| r.target).unwrap_or_else(|| "-".into()),
        framing: if schema_id.is_some() {
            "confluent"
        } else {
            "raw"
        },
        cdc: shape == Shape::ChangeEvents,
        keys: Some(spec.keys),
        produce: Some(produced),
        verify,
        ok: false,
    }
    .finish())
}

/// `fieldcrypt check`: verifies a finished run by reading the route's target from
/// the beginning. Latency is then creation-to-now, so only meaningful while the run
/// is fresh: `loadgen --verify` measures it live.
pub async fn check(
    config: &Config,
    topic: &str,
    schema: Option<&PathBuf>,
    run_id: &str,
    expect: u64,
    timeout: Duration,
    live: Arc<Live>,
) -> Result<Report, LoadgenError> {
    let route = route_for(config, topic, true)?;
    let (_, json) = load_schema(config, schema, Some(&route))?;
    let registry = registry(config)?;
    let framing = if registry.is_some() {
        "confluent"
    } else {
        "raw"
    };
    let expectations = Expectations::new(&json, &config.plan_config(), registry)?;
    let client = client_config(config, &[]);
    let (target, id) = (route.target.clone(), run_id.to_string());
    let v = tokio::task::spawn_blocking(move || {
        Verifier::assign(
            client,
            &target,
            &id,
            Start::Beginning,
            expectations,
            timeout,
        )
    })
    .await
    .map_err(|e| LoadgenError::Invalid(format!("verifier setup panicked: {e}")))??;
    let (_tx, rx) = watch::channel(Some(Arc::new(SeqSet::full(expect))));
    let verify = v.run(rx, live).await?;
    let cdc = Envelope::detect(&SchemaTree::compile(&json)?).is_some();
    Ok(Report {
        run_id: run_id.to_string(),
        topic: topic.to_string(),
        target: route.target,
        framing,
        cdc,
        keys: None,
        produce: None,
        verify: Some(verify),
        ok: false,
    }
    .finish())
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A random run id: 12 hex digits.
pub fn new_run_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 6];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Emits a progress line through `emit` every `every` until `done` is set:
/// records acknowledged (when producing) and seen on the target (when verifying).
pub async fn progress(
    live: Arc<Live>,
    every: Duration,
    producing: bool,
    verifying: bool,
    done: Arc<AtomicBool>,
    emit: impl Fn(&str),
) {
    let start = Instant::now();
    let mut last = (0u64, start);
    loop {
        tokio::time::sleep(every).await;
        if done.load(Ordering::Relaxed) {
            return;
        }
        let mut line = format!("loadgen: {:>6.1}s", start.elapsed().as_secs_f64());
        if producing {
            let acked = live.acked.load(Ordering::Relaxed);
            let now = Instant::now();
            let rate = (acked - last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-3);
            last = (acked, now);
            line.push_str(&format!("  acked {acked}  {rate:.0} records/s"));
            let failed = live.failed.load(Ordering::Relaxed);
            if failed > 0 {
                line.push_str(&format!("  failed {failed}"));
            }
        }
        if verifying {
            line.push_str(&format!(
                "  seen on target {}",
                live.seen.load(Ordering::Relaxed)
            ));
        }
        emit(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_one_percent() {
        let mut h = Histogram::default();
        for i in 1..=100_000u64 {
            h.record(i * 10); // 10 µs .. 1 s
        }
        let l = h.summary();
        for (got, want) in [(l.p50, 500.0), (l.p90, 900.0), (l.p99, 990.0)] {
            assert!((got - want).abs() / want < 0.01, "{got} vs {want}");
        }
        assert_eq!(l.max, 1000.0);
        let mut h = Histogram::default();
        h.record(7000);
        assert_eq!((h.summary().p50, h.summary().p99), (7.0, 7.0));
        assert_eq!(Histogram::default().summary().p50, 0.0);
    }

    #[test]
    fn seq_sets_count_and_compare() {
        let mut seen = SeqSet::default();
        assert!(seen.insert(0) && seen.insert(130) && !seen.insert(130));
        assert_eq!((seen.len(), seen.end()), (2, 131));
        let all = SeqSet::full(131);
        assert_eq!((all.len(), all.end()), (131, 131));
        assert!(all.contains(130) && !all.contains(131));
        let (n, first) = all.absent_from(&seen, 3);
        assert_eq!((n, first), (129, vec![1, 2, 3]));
        assert_eq!(seen.absent_from(&all, 5), (0, vec![]));
        assert_eq!(SeqSet::full(64).end(), 64);
        assert_eq!(SeqSet::default().end(), 0);
    }

    #[test]
    fn a_run_with_missing_or_unencrypted_records_fails() {
        let base = Report {
            run_id: "r".into(),
            topic: "a".into(),
            target: "b".into(),
            framing: "raw",
            cdc: false,
            keys: Some(1),
            produce: Some(ProduceReport {
                records: 10,
                ..Default::default()
            }),
            verify: Some(VerifyReport {
                expected: 10,
                seen: 10,
                ..Default::default()
            }),
            ok: false,
        };
        assert!(base.clone().finish().ok);
        let mut r = base.clone();
        r.verify.as_mut().unwrap().missing = 1;
        assert!(!r.finish().ok);
        let mut r = base.clone();
        r.verify.as_mut().unwrap().unencrypted = 1;
        assert!(!r.finish().ok);
        let mut r = base.clone();
        r.produce.as_mut().unwrap().failed = 1;
        let r = r.finish();
        assert!(!r.ok);
        assert!(r.render().contains("FAILED"));
    }
}
