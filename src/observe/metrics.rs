//! The Prometheus metrics of one process: every counter, gauge and histogram that
//! `/metrics` exposes, registered once in a private registry. Names are stable
//! (dashboards and alerts depend on them) and listed in docs/OPERATIONS.md. No label
//! ever carries a record value: labels are topics, partitions, modes and error codes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::keys::DekStats;
use crate::transform::Counts;

/// Every metric fieldcrypt exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub records_consumed: IntCounterVec,
    pub bytes_consumed: IntCounterVec,
    pub records_produced: IntCounterVec,
    pub bytes_produced: IntCounterVec,
    pub fields: IntCounterVec,
    pub dead_letters: IntCounterVec,
    /// Records passed to the target with nothing encrypted (`allow_unencrypted`).
    pub unencrypted_records: IntCounterVec,
    pub errors: IntCounterVec,
    pub transform_seconds: Histogram,
    pub end_to_end_seconds: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub in_flight: IntGauge,
    pub assigned_partitions: IntGauge,
    pub ready: IntGauge,
    pub paused: IntGauge,
    /// 1 while librdkafka reports a broker up (0 before the first report).
    pub brokers_reachable: IntGauge,
    pub transactions: IntCounterVec,
    pub rebalances: IntCounterVec,
    dek_hits: IntCounterVec,
    dek_misses: IntCounterVec,
    pub kms_requests: IntCounterVec,
    pub kms_seconds: HistogramVec,
    pub registry_requests: IntCounterVec,
    /// Incoming headers in fieldcrypt's namespace, dropped.
    pub reserved_headers_dropped: prometheus::IntCounter,
    /// The DEK counters live in the key managers; they are copied in at scrape time.
    dek_sources: std::sync::Mutex<Vec<(&'static str, Arc<DekStats>)>>,
    /// Readiness, reported by message (see [`super::health`]).
    pub health: super::health::HealthTx,
    /// Topics that have their own label value; past `max_topics` the rest share
    /// [`OTHER_TOPIC`], so regex routes over many topics cannot grow the series
    /// without bound.
    topics: std::sync::RwLock<std::collections::HashSet<String>>,
    max_topics: std::sync::atomic::AtomicUsize,
}

/// The `topic` label of topics past `metrics.max_topics`.
pub const OTHER_TOPIC: &str = "other";
/// Default of `metrics.max_topics`.
pub const DEFAULT_MAX_TOPICS: usize = 1_000;

/// Latency buckets from 10 µs to 10 s: transforms take microseconds, deliveries
/// milliseconds, KMS calls up to seconds.
fn buckets() -> Vec<f64> {
    vec![
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

macro_rules! reg {
    ($r:expr, $m:expr) => {{
        let m = $m.expect("metric definition is valid");
        $r.register(Box::new(m.clone()))
            .expect("metric names are unique");
        m
    }};
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self::unprepared();
        // Every code's series exists from the start, at 0, so an alert on
        // increase() sees the first error.
        for c in crate::codes::Code::ALL {
            m.errors.with_label_values(&[c.as_str()]);
        }
        for kind in ["assign", "revoke"] {
            m.rebalances.with_label_values(&[kind]);
        }
        m
    }

    fn unprepared() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let hist = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets()))
        };
        Metrics {
            records_consumed: reg!(
                r,
                counter(
                    "fieldcrypt_records_consumed_total",
                    "Records read from source topics.",
                    &["topic"]
                )
            ),
            bytes_consumed: reg!(
                r,
                counter(
                    "fieldcrypt_bytes_consumed_total",
                    "Key and value bytes read from source topics.",
                    &["topic"]
                )
            ),
            records_produced: reg!(
                r,
                counter(
                    "fieldcrypt_records_produced_total",
                    "Records acknowledged by the broker on target topics (dead letters not included).",
                    &["topic"]
                )
            ),
            bytes_produced: reg!(
                r,
                counter(
                    "fieldcrypt_bytes_produced_total",
                    "Key and value bytes acknowledged on target topics.",
                    &["topic"]
                )
            ),
            fields: reg!(
                r,
                counter(
                    "fieldcrypt_fields_total",
                    "Field values transformed, by operation (encrypt, decrypt) and mode (randomized, deterministic, blind_index).",
                    &["operation", "mode"]
                )
            ),
            dead_letters: reg!(
                r,
                counter(
                    "fieldcrypt_dead_letters_total",
                    "Records acknowledged on a dead-letter topic, by source topic and error class (format, schema, policy, crypto, delivery; fieldcrypt_errors_total has the codes).",
                    &["topic", "class"]
                )
            ),
            unencrypted_records: reg!(
                r,
                counter(
                    "fieldcrypt_unencrypted_records_total",
                    "Records passed to the target with nothing encrypted because their route sets allow_unencrypted, by source topic.",
                    &["topic"]
                )
            ),
            errors: reg!(
                r,
                counter(
                    "fieldcrypt_errors_total",
                    "Errors by code: record errors (also dead-lettered) and pipeline errors (kafka, kms, registry, delivery).",
                    &["code"]
                )
            ),
            transform_seconds: reg!(
                r,
                hist(
                    "fieldcrypt_transform_duration_seconds",
                    "Time to transform one record (decode, crypto, encode), KMS waits included."
                )
            ),
            end_to_end_seconds: reg!(
                r,
                hist(
                    "fieldcrypt_end_to_end_latency_seconds",
                    "From the source record's timestamp to the broker's acknowledgement of its output."
                )
            ),
            consumer_lag: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "fieldcrypt_consumer_lag",
                        "Records behind the high watermark per assigned partition (from librdkafka statistics)."
                    ),
                    &["topic", "partition"]
                )
            ),
            in_flight: reg!(
                r,
                IntGauge::new(
                    "fieldcrypt_in_flight_records",
                    "Records consumed but not yet acknowledged on their output topic."
                )
            ),
            assigned_partitions: reg!(
                r,
                IntGauge::new(
                    "fieldcrypt_assigned_partitions",
                    "Source partitions assigned to this instance."
                )
            ),
            ready: reg!(
                r,
                IntGauge::new(
                    "fieldcrypt_ready",
                    "1 when partitions are assigned, the KMS is reachable and consumption is not paused (as /health/ready)."
                )
            ),
            paused: reg!(
                r,
                IntGauge::new(
                    "fieldcrypt_paused",
                    "1 while consumption is paused because the KMS or the Schema Registry is unavailable."
                )
            ),
            brokers_reachable: reg!(
                r,
                IntGauge::new(
                    "fieldcrypt_brokers_reachable",
                    "1 while the Kafka client reports at least one broker up, 0 when none is (or before the first report)."
                )
            ),
            reserved_headers_dropped: reg!(
                r,
                prometheus::IntCounter::new(
                    "fieldcrypt_reserved_headers_dropped_total",
                    "Incoming record headers in fieldcrypt's own namespace (fieldcrypt.*) that were dropped: only fieldcrypt writes them."
                )
            ),
            transactions: reg!(
                r,
                counter(
                    "fieldcrypt_transactions_total",
                    "Exactly-once transactions by outcome (committed, aborted).",
                    &["outcome"]
                )
            ),
            rebalances: reg!(
                r,
                counter(
                    "fieldcrypt_rebalances_total",
                    "Consumer group rebalances seen by this instance, by kind (assign, revoke).",
                    &["kind"]
                )
            ),
            dek_hits: reg!(
                r,
                counter(
                    "fieldcrypt_dek_cache_hits_total",
                    "Data-key lookups served from the cache, by side (encrypt, decrypt).",
                    &["side"]
                )
            ),
            dek_misses: reg!(
                r,
                counter(
                    "fieldcrypt_dek_cache_misses_total",
                    "Data-key lookups that went to the KMS, by side (encrypt, decrypt).",
                    &["side"]
                )
            ),
            kms_requests: reg!(
                r,
                counter(
                    "fieldcrypt_kms_requests_total",
                    "KMS requests by operation and outcome.",
                    &["operation", "outcome"]
                )
            ),
            kms_seconds: reg!(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "fieldcrypt_kms_request_duration_seconds",
                        "KMS request latency by operation."
                    )
                    .buckets(buckets()),
                    &["operation"]
                )
            ),
            registry_requests: reg!(
                r,
                counter(
                    "fieldcrypt_schema_registry_requests_total",
                    "Schema Registry requests by operation and outcome.",
                    &["operation", "outcome"]
                )
            ),
            registry: r,
            dek_sources: std::sync::Mutex::new(Vec::new()),
            health: Default::default(),
            topics: std::sync::RwLock::default(),
            max_topics: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_TOPICS),
        }
    }

    /// Exposes a DEK cache's counters as `side`.
    pub fn watch_dek_stats(&self, side: &'static str, stats: Arc<DekStats>) {
        self.dek_hits.with_label_values(&[side]);
        self.dek_misses.with_label_values(&[side]);
        self.dek_sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((side, stats));
    }

    /// Adds one record's field counts.
    /// Sets `metrics.max_topics`.
    pub fn set_max_topics(&self, n: usize) {
        self.max_topics.store(n, Ordering::Relaxed);
    }

    /// The `topic` label value for a topic: its name while fewer than
    /// `metrics.max_topics` topics have one, [`OTHER_TOPIC`] after that.
    pub fn topic_label<'a>(&self, topic: &'a str) -> &'a str {
        {
            let known = self.topics.read().unwrap_or_else(|p| p.into_inner());
            if known.contains(topic) {
                return topic;
            }
        }
        let mut known = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if known.contains(topic) || known.len() < self.max_topics.load(Ordering::Relaxed) {
            known.insert(topic.to_string());
            topic
        } else {
            OTHER_TOPIC
        }
    }

    /// Creates a route's series at 0 (before its first record): records and
    /// bytes consumed, records passed unencrypted and dead letters of every
    /// class for the source topic; records and bytes produced for the target.
    /// They stay for the life of the process, through rebalances, so counters
    /// never restart at the first event of a new assignment.
    pub fn prepare_route(&self, source: &str, target: Option<&str>) {
        let s = self.topic_label(source);
        self.records_consumed.with_label_values(&[s]);
        self.bytes_consumed.with_label_values(&[s]);
        self.unencrypted_records.with_label_values(&[s]);
        for class in crate::codes::Class::ALL {
            self.dead_letters.with_label_values(&[s, class.as_str()]);
        }
        if let Some(t) = target {
            let t = self.topic_label(t);
            self.records_produced.with_label_values(&[t]);
            self.bytes_produced.with_label_values(&[t]);
        }
    }

    /// A source topic's partitions were revoked: its lag gauges go (another
    /// instance reports them now); its counters stay.
    pub fn revoked_topic(&self, topic: &str) {
        use prometheus::core::Collector;
        type Labels<'a> = std::collections::HashMap<&'a str, &'a str>;
        let label = self.topic_label(topic);
        for fam in self.consumer_lag.collect() {
            for m in fam.get_metric() {
                let labels: Labels<'_> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if labels.get("topic") == Some(&label) {
                    let _ = self.consumer_lag.remove(&labels);
                }
            }
        }
    }

    pub fn count_fields(&self, operation: &str, c: &Counts) {
        for (mode, n) in [
            ("randomized", c.randomized),
            ("deterministic", c.deterministic),
            ("blind_index", c.indexes),
        ] {
            if n > 0 {
                self.fields.with_label_values(&[operation, mode]).inc_by(n);
            }
        }
    }

    /// Partitions assigned (+) or revoked (−).
    pub fn add_assigned(&self, delta: i64) {
        let h = self
            .health
            .update(|h| h.assigned = (h.assigned + delta).max(0));
        self.assigned_partitions.set(h.assigned);
        self.ready.set(i64::from(h.ready()));
    }

    /// Forgets every assignment (the consumer left the group).
    pub fn clear_assigned(&self) {
        let h = self.health.update(|h| h.assigned = 0);
        self.assigned_partitions.set(0);
        self.ready.set(i64::from(h.ready()));
    }

    /// Records whether the last KMS call reached the KMS.
    pub fn set_kms_reachable(&self, ok: bool) {
        let h = self.health.update(|h| h.kms_reachable = ok);
        self.ready.set(i64::from(h.ready()));
    }

    /// Consumption paused (or resumed) for an outage.
    pub fn set_paused(&self, paused: bool) {
        let h = self.health.update(|h| h.paused = paused);
        self.paused.set(i64::from(paused));
        self.ready.set(i64::from(h.ready()));
    }

    /// The brokers answer (or not).
    pub fn set_brokers_reachable(&self, up: bool) {
        let h = self.health.update(|h| h.brokers = Some(up));
        self.brokers_reachable.set(i64::from(up));
        self.ready.set(i64::from(h.ready()));
    }

    /// `kafka.bootstrap_servers`, for readiness messages.
    pub fn set_bootstrap(&self, bootstrap: &str) {
        self.health.update(|h| h.bootstrap = bootstrap.to_string());
    }

    /// The source topics that do not exist (empty: all do).
    pub fn set_missing_topics(&self, missing: Vec<String>) {
        self.health.update(|h| h.missing_topics = missing);
    }

    /// Ready: partitions assigned, the KMS reachable, consumption not paused.
    pub fn is_ready(&self) -> bool {
        self.health.get().ready()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        for (side, s) in self
            .dek_sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            sync_counter(&self.dek_hits, side, s.hits.load(Ordering::Relaxed));
            sync_counter(&self.dek_misses, side, s.misses.load(Ordering::Relaxed));
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

/// Brings a counter up to a monotonic total kept elsewhere.
fn sync_counter(c: &IntCounterVec, side: &str, total: u64) {
    let c = c.with_label_values(&[side]);
    let have = c.get();
    if total > have {
        c.inc_by(total - have);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_and_readiness() {
        let m = Metrics::new();
        let stats = Arc::new(DekStats::default());
        m.watch_dek_stats("encrypt", stats.clone());
        stats.hits.fetch_add(5, Ordering::Relaxed);
        m.records_consumed.with_label_values(&["a"]).inc_by(3);
        m.count_fields(
            "encrypt",
            &Counts {
                randomized: 2,
                deterministic: 1,
                indexes: 1,
                nulls: 0,
            },
        );
        let text = m.render();
        assert!(text.contains("fieldcrypt_records_consumed_total{topic=\"a\"} 3"));
        assert!(text.contains("fieldcrypt_dek_cache_hits_total{side=\"encrypt\"} 5"));
        assert!(
            text.contains("fieldcrypt_fields_total{mode=\"randomized\",operation=\"encrypt\"} 2")
        );
        assert!(!m.is_ready(), "nothing assigned yet");
        m.add_assigned(3);
        assert!(m.is_ready());
        m.set_kms_reachable(false);
        assert!(!m.is_ready());
        assert!(m.render().contains("fieldcrypt_ready 0"));
    }

    #[test]
    fn topic_labels_are_capped() {
        let m = Metrics::new();
        m.set_max_topics(2);
        for t in ["a", "b", "c", "d"] {
            let l = m.topic_label(t);
            m.records_consumed.with_label_values(&[l]).inc();
        }
        let text = m.render();
        assert!(
            text.contains("fieldcrypt_records_consumed_total{topic=\"other\"} 2"),
            "{text}"
        );
        assert!(!text.contains("topic=\"c\""));
        assert_eq!(m.topic_label("d"), OTHER_TOPIC);
    }

    #[test]
    fn series_exist_at_zero_before_the_first_event_and_survive_a_revoke() {
        let m = Metrics::new();
        let text = m.render();
        for c in crate::codes::Code::ALL {
            assert!(
                text.contains(&format!("fieldcrypt_errors_total{{code=\"{c}\"}} 0")),
                "{c}: {text}"
            );
        }
        m.prepare_route("orders", Some("secure.orders"));
        let text = m.render();
        for class in crate::codes::Class::ALL {
            assert!(
                text.contains(&format!(
                    "fieldcrypt_dead_letters_total{{class=\"{}\",topic=\"orders\"}} 0",
                    class.as_str()
                )),
                "{text}"
            );
        }
        assert!(text.contains("fieldcrypt_records_consumed_total{topic=\"orders\"} 0"));
        assert!(text.contains("fieldcrypt_unencrypted_records_total{topic=\"orders\"} 0"));
        assert!(text.contains("fieldcrypt_records_produced_total{topic=\"secure.orders\"} 0"));
        m.dead_letters
            .with_label_values(&["orders", "format"])
            .inc();
        m.consumer_lag.with_label_values(&["orders", "0"]).set(5);
        m.revoked_topic("orders");
        let text = m.render();
        assert!(
            text.contains("fieldcrypt_dead_letters_total{class=\"format\",topic=\"orders\"} 1"),
            "counters survive a revoke: {text}"
        );
        assert!(
            !text.contains("fieldcrypt_consumer_lag{"),
            "lag is another instance's to report now: {text}"
        );
    }
}
