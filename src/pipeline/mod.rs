//! `fieldcrypt run`: consume → transform → produce → acknowledge.
//!
//! The work is done by [`lane`]s: each is one consumer (a member of the consumer
//! group), its own producer and one task that takes every record of its partitions
//! through the stages in turn, owning its offsets, so per-partition order holds and
//! nothing is shared between records on the way. `pipeline.workers` lanes run side
//! by side (partitions spread over them by the group).
//!
//! - [`record`]: the transform step — a consumed record in, an outcome out
//!   (output, dead letter, or an infrastructure failure), callable without a broker;
//! - [`produce`]: fitting outputs to their topics' size limits ([`limits`]) and
//!   handing them to the producer; delivery reports by token;
//! - [`offsets`]: in-order offset bookkeeping per partition;
//! - [`rebalance`]: rebalances as messages, settled and completed by the lane;
//! - [`transaction`]: exactly-once commits;
//! - [`floor`]: the benchmark floor (the same consume and produce, no transform);
//! - [`config`]: the `[pipeline]` section and its validation.
//!
//! At-least-once (after rust-rdkafka's `at_least_once` example and Vector's Kafka
//! source): offsets are stored only after the output (or its dead letter) is
//! acknowledged, in order per partition; librdkafka auto-commits what is stored, and
//! a revoke commits what is stored before the partitions go. Exactly-once: a
//! transactional producer per lane, committed with the consumed offsets every
//! `pipeline.transaction_interval_ms`. A record that cannot be transformed becomes
//! a dead letter (or stops the pipeline with `on_error = "stop"`); a KMS or registry
//! outage holds the record and pauses the lane until the service answers; a
//! refusal (access denied, a disabled key) or a producer failure stops the pipeline
//! without committing the record, so it is read again after a restart. Shutdown is
//! one cancellation: lanes stop consuming, drain up to
//! `pipeline.drain_timeout_seconds`, commit and return.

pub mod config;
pub mod floor;
pub mod lane;
pub mod limits;
pub mod offsets;
pub mod produce;
pub mod rebalance;
pub mod record;
pub mod topics;
pub mod transaction;

use std::future::Future;
use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Delivery};
use crate::engine::Engine;
use crate::kafka::route::Router;
use crate::registry::SchemaRegistry;
use lane::{Lane, LaneState, Shared};
use produce::{AckContext, LaneProducer, Sender};
use rebalance::LaneContext;
use record::Transformer;

/// Why the pipeline stopped with an error.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Setup(String),
    #[error("{topic}/{partition}@{offset}: {code}: {msg}")]
    Record {
        topic: String,
        partition: i32,
        offset: i64,
        code: crate::codes::Code,
        msg: String,
    },
    #[error("exactly-once transaction failed: {0}")]
    Transaction(String),
}

impl PipelineError {
    /// A record's error, at the record's position.
    pub(crate) fn at<M: rdkafka::message::Message>(
        record: &M,
        code: crate::codes::Code,
        msg: String,
    ) -> Self {
        PipelineError::Record {
            topic: record.topic().to_string(),
            partition: record.partition(),
            offset: record.offset(),
            code,
            msg,
        }
    }
}

/// Counters of one run, for reports and tests.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    pub consumed: u64,
    pub produced: u64,
    pub dead_lettered: u64,
    pub transactions: u64,
}

impl RunStats {
    fn add(&mut self, o: &RunStats) {
        self.consumed += o.consumed;
        self.produced += o.produced;
        self.dead_lettered += o.dead_lettered;
        self.transactions += o.transactions;
    }
}

/// The librdkafka settings common to consumer and producer: fieldcrypt's defaults,
/// then the user's pass-through properties (which may override the defaults but
/// not the managed keys, refused by config validation).
pub(crate) fn client_config(config: &Config, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("client.id", &config.kafka.client_id);
    c.set_log_level(crate::observe::kafka::log_level());
    c
}

/// A Kafka client that librdkafka would not create: when it refused one of the
/// user's `kafka.properties`, the error names that key.
pub(crate) fn client_error(config: &Config, e: KafkaError) -> PipelineError {
    if let KafkaError::ClientConfig(_, desc, key, _) = &e {
        // The value is left out: it may be a credential (sasl.password).
        let msg = format!("librdkafka refused it: {desc}");
        return PipelineError::Setup(if config.kafka.properties.contains_key(key) {
            format!(
                "config key kafka.properties.\"{key}\": {msg} (librdkafka's properties: https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md)"
            )
        } else {
            format!("Kafka client setting {key}: {msg}")
        });
    }
    if let KafkaError::ClientCreation(msg) = &e {
        if let Some(k) = config
            .kafka
            .properties
            .keys()
            .find(|k| msg.contains(&format!("\"{k}\"")) || msg.contains(k.as_str()))
        {
            return PipelineError::Setup(format!(
                "config key kafka.properties.\"{k}\": librdkafka refused it: {msg} (its properties: https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md)"
            ));
        }
        return PipelineError::Setup(format!("cannot create the Kafka client: {msg}"));
    }
    PipelineError::Kafka(e)
}

/// The consumer settings fieldcrypt chooses (the user's `kafka.properties` win).
/// Incremental rebalancing (KIP-429): a join or leave moves only the partitions
/// that change owner while the others keep flowing; both delivery modes settle
/// revoked partitions before they go. Under the KIP-848 protocol
/// (`group.protocol = "consumer"`) the broker assigns, and librdkafka refuses a
/// client-side strategy, so none is set.
fn consumer_defaults(config: &Config) -> Vec<(&'static str, &'static str)> {
    let mut d = vec![
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", "5000"),
    ];
    let kip848 = config
        .kafka
        .properties
        .get("group.protocol")
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("consumer"));
    if !kip848 {
        d.push(("partition.assignment.strategy", "cooperative-sticky"));
    }
    d
}

/// This instance's `transactional.id`.
fn transactional_id(config: &Config) -> String {
    if let Some(id) = &config.pipeline.transactional_id {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{}-{host}-{}", config.kafka.group_id, std::process::id())
}

/// How many lanes: `pipeline.workers`, or one per two cores (at least one).
pub fn lanes(config: &Config) -> usize {
    match config.pipeline.workers {
        0 => (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1),
        n => n,
    }
}

/// Runs until `shutdown` resolves (then drains and commits) or a fatal error.
pub async fn run(
    engine: Arc<Engine>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<RunStats, PipelineError> {
    let setup = |e: String| PipelineError::Setup(e);
    let metrics = engine.metrics().clone();
    metrics.set_max_topics(config.metrics.max_topics);
    let registry = match &config.schema_registry.url {
        Some(_) => Some(Arc::new(
            SchemaRegistry::new(&config.schema_registry, metrics.clone())
                .map_err(|e| setup(e.to_string()))?,
        ) as Arc<dyn crate::registry::Registry>),
        None => None,
    };
    let router = Arc::new(Router::new(&config.routes).map_err(|e| setup(e.to_string()))?);
    let kafka = Arc::new(crate::observe::kafka::KafkaLog::new(
        &config.kafka.bootstrap_servers,
        metrics.clone(),
    ));
    for r in &config.routes {
        // Literal routes' series exist from start-up; a regex route's topics get
        // theirs when first assigned.
        if !r.source.starts_with('^') {
            let target = router.route(&r.source).ok().map(|d| d.target.clone());
            metrics.prepare_route(&r.source, target.as_deref());
        }
    }
    let transformer = Arc::new(
        Transformer::new(engine.clone(), config, registry).map_err(|e| setup(e.to_string()))?,
    );
    let shared = Shared {
        transformer: transformer.clone(),
        router: router.clone(),
        metrics: metrics.clone(),
    };
    let server = if config.metrics.listen.is_empty() {
        None
    } else {
        Some(
            crate::observe::server::serve(&config.metrics.listen, metrics.clone())
                .await
                .map_err(|e| setup(e.to_string()))?,
        )
    };
    let eos = config.pipeline.delivery == Delivery::ExactlyOnce;
    let n = lanes(config);
    let subs = router.subscriptions();
    let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
    let cancel = CancellationToken::new();
    let mut running = tokio::task::JoinSet::new();
    let mut watch_client: Option<Arc<LaneProducer>> = None;
    for id in 0..n {
        let mut pc = client_config(config, &[("linger.ms", "5")]);
        pc.set("enable.idempotence", "true").set("acks", "all");
        if eos {
            pc.set(
                "transactional.id",
                format!("{}-{id}", transactional_id(config)),
            );
        }
        let producer: Arc<LaneProducer> = Arc::new(
            pc.create_with_context(AckContext::new(kafka.clone()))
                .map_err(|e| client_error(config, e))?,
        );
        if id == 0 {
            watch_client = Some(producer.clone());
        }
        if eos {
            transaction::init(&producer).await?;
        }
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let consumer: StreamConsumer<LaneContext> =
            client_config(config, &consumer_defaults(config))
                .set("group.id", &config.kafka.group_id)
                .set("enable.auto.commit", if eos { "false" } else { "true" })
                .set("enable.auto.offset.store", "false")
                // Records of aborted upstream transactions must never be encrypted and passed on.
                .set("isolation.level", "read_committed")
                .create_with_context(LaneContext::new(events_tx, metrics.clone(), kafka.clone()))
                .map_err(|e| client_error(config, e))?;
        consumer.subscribe(&subs)?;
        let sender = Sender::new(
            producer,
            limits::Limits::new(config)?,
            config.pipeline.dead_letter_payload,
        );
        let lane = Lane {
            consumer: Arc::new(consumer),
            events,
            state: LaneState::new(id, sender, &shared, &config.pipeline),
        };
        running.spawn(lane.run(cancel.child_token()));
    }
    let routes: Vec<String> = config
        .routes
        .iter()
        .map(|r| format!("{} -> {}", r.source, r.target))
        .collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        mode = transformer.operation(),
        delivery = if eos { "exactly-once" } else { "at-least-once" },
        workers = n,
        group_id = %config.kafka.group_id,
        bootstrap_servers = %config.kafka.bootstrap_servers,
        routes = ?routes,
        listen = %server.as_ref().map_or_else(|| "off".to_string(), |s| s.addr.to_string()),
        crypto = crate::crypto::accel::path().describe(),
        "fieldcrypt {} started: {} {} route(s), {}, {n} worker(s), AES on the {} path; metrics and health on {}",
        env!("CARGO_PKG_VERSION"),
        transformer.operation(),
        routes.len(),
        if eos { "exactly-once" } else { "at-least-once" },
        crate::crypto::accel::path().describe(),
        server.as_ref().map_or_else(|| "no listener".to_string(), |s| format!("http://{}", s.addr)),
    );
    tokio::pin!(shutdown);
    let mut stats = RunStats::default();
    let mut failure: Option<PipelineError> = None;
    let mut stopping = false;
    // Its own task: a metadata request to unreachable brokers takes its whole
    // timeout, and the loop below must keep answering signals meanwhile.
    let watcher = watch_client.map(|client| {
        let routes = config.routes.clone();
        let kafka = kafka.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(topics::WATCH_INTERVAL);
            loop {
                every.tick().await;
                watch_topics(client.clone(), &routes, &kafka).await;
            }
        })
    });
    let progress_every = std::time::Duration::from_secs(config.metrics.progress_seconds.max(1));
    let mut progress_tick = tokio::time::interval(progress_every);
    progress_tick.reset();
    let progress_on = config.metrics.progress_seconds > 0;
    let mut progress = Progress::new(&metrics);
    while !running.is_empty() {
        tokio::select! {
            _ = &mut shutdown, if !stopping => {
                stopping = true;
                cancel.cancel();
            }
            _ = progress_tick.tick(), if !stopping && progress_on => progress.log(&metrics),
            Some(ended) = running.join_next() => {
                match ended {
                    Ok(Ok(s)) => stats.add(&s),
                    Ok(Err(e)) => {
                        failure.get_or_insert(e);
                    }
                    Err(e) => {
                        failure.get_or_insert(setup(format!("a lane ended unexpectedly: {e}")));
                    }
                }
                // One lane failing stops them all (fail closed, nothing half-done).
                cancel.cancel();
                stopping = true;
            }
        }
    }
    if let Some(w) = watcher {
        w.abort();
    }
    metrics.clear_assigned();
    match failure {
        Some(e) => {
            metrics
                .errors
                .with_label_values(&[error_code(&e).as_str()])
                .inc();
            Err(e)
        }
        None => Ok(stats),
    }
}

/// The sum of a counter family over all its label values.
fn total(c: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    c.collect()
        .iter()
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// The progress line: rates since the last one, from the metrics.
struct Progress {
    at: std::time::Instant,
    consumed: u64,
    produced: u64,
    dead: u64,
}

impl Progress {
    fn new(m: &crate::observe::Metrics) -> Self {
        Progress {
            at: std::time::Instant::now(),
            consumed: total(&m.records_consumed),
            produced: total(&m.records_produced),
            dead: total(&m.dead_letters),
        }
    }

    fn log(&mut self, m: &crate::observe::Metrics) {
        let now = Progress::new(m);
        let secs = now.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let lag: i64 = {
            use prometheus::core::Collector;
            m.consumer_lag
                .collect()
                .iter()
                .flat_map(|f| f.get_metric().iter())
                .map(|g| g.get_gauge().get_value() as i64)
                .sum()
        };
        let rate_in = (now.consumed - self.consumed) as f64 / secs;
        let rate_out = (now.produced - self.produced) as f64 / secs;
        let dead = now.dead - self.dead;
        let assigned = m.assigned_partitions.get();
        tracing::info!(
            records_in_per_sec = rate_in.round() as u64,
            records_out_per_sec = rate_out.round() as u64,
            dead_letters = dead,
            lag,
            assigned_partitions = assigned,
            "progress: {rate_in:.0} records/s in, {rate_out:.0} out, {dead} dead letters in the last {secs:.0} s; lag {lag}; {assigned} partition(s) assigned",
        );
        *self = now;
    }
}

/// One look at the routes' topics (off the async threads): missing sources
/// are named in the log and in readiness.
async fn watch_topics(
    client: Arc<LaneProducer>,
    routes: &[crate::kafka::route::RouteConfig],
    kafka: &crate::observe::kafka::KafkaLog,
) {
    let routes = routes.to_vec();
    let r = tokio::task::spawn_blocking(move || {
        topics::fetch(
            rdkafka::producer::Producer::client(&*client),
            &routes,
            std::time::Duration::from_secs(10),
        )
    })
    .await;
    match r {
        Ok(Ok(report)) => kafka.missing_topics(report.missing),
        // Unreachable brokers are reported by the clients' own errors.
        Ok(Err(e)) => tracing::debug!(error = %e, "topic metadata not available"),
        Err(e) => tracing::debug!(error = %e, "topic metadata lookup did not run"),
    }
}

fn error_code(e: &PipelineError) -> crate::codes::Code {
    use crate::codes::Code;
    match e {
        PipelineError::Kafka(_) => Code::Kafka,
        PipelineError::Setup(_) => Code::Setup,
        PipelineError::Record { code, .. } => *code,
        PipelineError::Transaction(_) => Code::Transaction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(props: &[(&str, &str)]) -> Option<String> {
        let mut config = Config::default();
        for (k, v) in props {
            config.kafka.properties.insert(k.to_string(), v.to_string());
        }
        client_config(&config, &consumer_defaults(&config))
            .get("partition.assignment.strategy")
            .map(str::to_string)
    }

    #[test]
    fn consumers_rebalance_incrementally_unless_told_otherwise() {
        assert_eq!(strategy(&[]).as_deref(), Some("cooperative-sticky"));
        // The user's choice wins.
        assert_eq!(
            strategy(&[("partition.assignment.strategy", "range")]).as_deref(),
            Some("range")
        );
        // KIP-848: the broker assigns; librdkafka refuses a client-side strategy.
        assert_eq!(strategy(&[("group.protocol", "Consumer")]), None);
        assert_eq!(
            strategy(&[("group.protocol", "classic")]).as_deref(),
            Some("cooperative-sticky")
        );
    }
}
