//! `fieldcrypt run`: consume → transform → produce → acknowledge.
//!
//! The work is done by [`lane`]s: each is one consumer (a member of the consumer
//! group), its own producer and one task that takes every record of its partitions
//! through the stages in turn, owning its offsets, so per-partition order holds and
//! nothing is shared between records on the way. `pipeline.workers` lanes run side
//! by side (partitions spread over them by the group).
//!
//! - [`clients`]: librdkafka settings and one lane's consumer and producer;
//! - [`lane`]: the stages of one lane and its state machine ([`lane`]'s `phase`);
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

mod clients;
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

use rdkafka::error::KafkaError;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Delivery};
use crate::engine::Engine;
use crate::kafka::route::Router;
use crate::observe::kafka::KafkaLog;
use crate::registry::SchemaRegistry;
pub use clients::lanes;
pub(crate) use clients::{client_config, client_error};
use lane::Shared;
use produce::LaneProducer;
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

/// Runs until `shutdown` resolves (then drains and commits) or a fatal error.
pub async fn run(
    engine: Arc<Engine>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<RunStats, PipelineError> {
    let metrics = engine.metrics().clone();
    metrics.set_max_topics(config.metrics.max_topics);
    let kafka = Arc::new(KafkaLog::new(
        &config.kafka.bootstrap_servers,
        metrics.clone(),
    ));
    let shared = shared(engine, config, &metrics)?;
    let server = if config.metrics.listen.is_empty() {
        None
    } else {
        Some(
            crate::observe::server::serve(&config.metrics.listen, metrics.clone())
                .await
                .map_err(|e| PipelineError::Setup(e.to_string()))?,
        )
    };
    let n = lanes(config);
    let subs = shared.router.subscriptions();
    let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
    let cancel = CancellationToken::new();
    let mut running = tokio::task::JoinSet::new();
    let mut watch_client: Option<Arc<LaneProducer>> = None;
    for id in 0..n {
        let lane = clients::new_lane(config, id, &shared, &kafka, &subs).await?;
        watch_client.get_or_insert_with(|| lane.state.sender.producer.clone());
        running.spawn(lane.run(cancel.child_token()));
    }
    log_started(
        config,
        &shared.transformer,
        n,
        server.as_ref().map(|s| s.addr),
    );
    let watcher = watch_client.map(|client| spawn_watcher(client, config, &kafka));
    let (stats, failure) = supervise(running, shutdown, &cancel, config, &metrics).await;
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

/// Looks at the routes' topics every [`topics::WATCH_INTERVAL`], on its own task:
/// a metadata request to unreachable brokers takes its whole timeout, and the
/// supervisor must keep answering signals meanwhile.
fn spawn_watcher(
    client: Arc<LaneProducer>,
    config: &Config,
    kafka: &Arc<KafkaLog>,
) -> tokio::task::JoinHandle<()> {
    let routes = config.routes.clone();
    let kafka = kafka.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(topics::WATCH_INTERVAL);
        loop {
            every.tick().await;
            watch_topics(client.clone(), &routes, &kafka).await;
        }
    })
}

/// What every lane shares: the router, the transformer (with the registry
/// client, when one is configured) and the metrics, whose series exist from
/// start-up for literal routes (a regex route's topics get theirs when first
/// assigned).
fn shared(
    engine: Arc<Engine>,
    config: &Config,
    metrics: &Arc<crate::observe::Metrics>,
) -> Result<Shared, PipelineError> {
    let setup = |e: String| PipelineError::Setup(e);
    let registry = match &config.schema_registry.url {
        Some(_) => Some(Arc::new(
            SchemaRegistry::new(&config.schema_registry, metrics.clone())
                .map_err(|e| setup(e.to_string()))?,
        ) as Arc<dyn crate::registry::Registry>),
        None => None,
    };
    let router = Arc::new(Router::new(&config.routes).map_err(|e| setup(e.to_string()))?);
    for r in config.routes.iter().filter(|r| !r.source.starts_with('^')) {
        let target = router.route(&r.source).ok().map(|d| d.target.clone());
        metrics.prepare_route(&r.source, target.as_deref());
    }
    let transformer =
        Transformer::new(engine, config, registry).map_err(|e| setup(e.to_string()))?;
    Ok(Shared {
        transformer: Arc::new(transformer),
        router,
        metrics: metrics.clone(),
    })
}

/// The start-up line: version, mode, delivery, lanes, routes, AES path, listener.
fn log_started(
    config: &Config,
    transformer: &Transformer,
    n: usize,
    listen: Option<std::net::SocketAddr>,
) {
    let routes: Vec<String> = config
        .routes
        .iter()
        .map(|r| format!("{} -> {}", r.source, r.target))
        .collect();
    let delivery = match config.pipeline.delivery {
        Delivery::ExactlyOnce => "exactly-once",
        _ => "at-least-once",
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        mode = transformer.operation(),
        delivery,
        workers = n,
        group_id = %config.kafka.group_id,
        bootstrap_servers = %config.kafka.bootstrap_servers,
        routes = ?routes,
        listen = %listen.map_or_else(|| "off".to_string(), |a| a.to_string()),
        crypto = crate::crypto::accel::path().describe(),
        "fieldcrypt {} started: {} {} route(s), {delivery}, {n} worker(s), AES on the {} path; metrics and health on {}",
        env!("CARGO_PKG_VERSION"),
        transformer.operation(),
        routes.len(),
        crate::crypto::accel::path().describe(),
        listen.map_or_else(|| "no listener".to_string(), |a| format!("http://{a}")),
    );
}

/// Waits for the lanes: `shutdown` or one lane ending (with an error or not)
/// cancels them all — fail closed, nothing half-done — and the progress line is
/// logged meanwhile. The lanes' totals, and the first failure.
async fn supervise(
    mut running: tokio::task::JoinSet<Result<RunStats, PipelineError>>,
    shutdown: impl Future<Output = ()>,
    cancel: &CancellationToken,
    config: &Config,
    metrics: &crate::observe::Metrics,
) -> (RunStats, Option<PipelineError>) {
    tokio::pin!(shutdown);
    let mut stats = RunStats::default();
    let mut failure: Option<PipelineError> = None;
    let mut stopping = false;
    let progress_every = std::time::Duration::from_secs(config.metrics.progress_seconds.max(1));
    let mut progress_tick = tokio::time::interval(progress_every);
    progress_tick.reset();
    let progress_on = config.metrics.progress_seconds > 0;
    let mut progress = Progress::new(metrics);
    while !running.is_empty() {
        tokio::select! {
            _ = &mut shutdown, if !stopping => {
                stopping = true;
                cancel.cancel();
            }
            _ = progress_tick.tick(), if !stopping && progress_on => progress.log(metrics),
            Some(ended) = running.join_next() => {
                match ended {
                    Ok(Ok(s)) => stats.add(&s),
                    Ok(Err(e)) => {
                        failure.get_or_insert(e);
                    }
                    Err(e) => {
                        failure.get_or_insert(PipelineError::Setup(format!("a lane ended unexpectedly: {e}")));
                    }
                }
                cancel.cancel();
                stopping = true;
            }
        }
    }
    (stats, failure)
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
