//! What the Kafka clients say, made visible: librdkafka's own log lines become
//! tracing events with target `librdkafka` at matching levels (filter them with
//! `FIELDCRYPT_LOG=info,librdkafka=debug`); its global errors and the consumer's
//! errors are logged with the bootstrap address they are about, repeated
//! identical ones rate-limited with a count; broker reachability (from errors and
//! the clients' statistics) and missing source topics go into readiness, so
//! `/health/ready` says why it is not ready.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use super::Metrics;
use crate::codes::Code;

/// How long identical messages are held back after one is logged.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(30);

/// Logs a message the first time, then at most once per window with the count of
/// repeats held back meanwhile (keyed by the message's text).
#[derive(Debug)]
pub struct RateLimit {
    window: Duration,
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

/// Most distinct messages remembered; past it the memory starts afresh (a
/// hostile stream of distinct messages cannot grow it).
const MAX_KEYS: usize = 1_000;

impl RateLimit {
    pub fn new(window: Duration) -> Self {
        RateLimit {
            window,
            seen: Mutex::default(),
        }
    }

    /// `Some(n)`: log now, saying `n` identical messages were held back since the
    /// last one; `None`: hold it back.
    pub fn check(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, held)) = seen.get_mut(key) {
            if now.duration_since(*last) < self.window {
                *held += 1;
                return None;
            }
            let n = *held;
            *last = now;
            *held = 0;
            return Some(n);
        }
        if seen.len() >= MAX_KEYS {
            seen.clear();
        }
        seen.insert(key.to_string(), (now, 0));
        Some(0)
    }
}

/// ` (repeated 12 times in the last 30 s)` when anything was held back.
fn repeats(n: u64, window: Duration) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" (and {n} more times in the last {} s)", window.as_secs())
    }
}

/// A message's text with every digit run as `#`: the key under which repeats
/// of "the same" message (differing only in timings and counts) are counted.
fn without_digits(s: &str) -> String {
    // librdkafka's own "(after 0ms in state CONNECT, 3 identical error(s)
    // suppressed)" is a repeat of the line without the count.
    const SUPPRESSED: &str = " identical error(s) suppressed";
    let owned;
    let s = match s.find(SUPPRESSED) {
        Some(i) => {
            let start = s[..i].rfind(", ").unwrap_or(i);
            owned = format!("{}{}", &s[..start], &s[i + SUPPRESSED.len()..]);
            owned.as_str()
        }
        None => s,
    };
    let mut out = String::with_capacity(s.len());
    let mut in_digits = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// The librdkafka log level that lets through what the tracing filter enables
/// for target `librdkafka`, so lines nobody reads are not even formatted.
pub fn log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::WARN) {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Error
    }
}

/// Shared by every Kafka client of the process (consumers and producers).
#[derive(Debug)]
pub struct KafkaLog {
    /// `kafka.bootstrap_servers`, named in errors about reaching brokers.
    bootstrap: String,
    metrics: Arc<Metrics>,
    limit: RateLimit,
    /// The last broker state reported: 0 none yet, 1 up, 2 down (read on the hot
    /// path without touching the health channel).
    state: std::sync::atomic::AtomicU8,
}

impl KafkaLog {
    pub fn new(bootstrap: &str, metrics: Arc<Metrics>) -> Self {
        metrics.set_bootstrap(bootstrap);
        KafkaLog {
            bootstrap: bootstrap.to_string(),
            metrics,
            limit: RateLimit::new(REPEAT_WINDOW),
            state: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// One librdkafka log line (`ClientContext::log`).
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // librdkafka repeats connection failures every reconnect backoff.
        let held = match level {
            RDKafkaLogLevel::Debug | RDKafkaLogLevel::Info => Some(0),
            // Keyed without numbers: librdkafka's lines differ by timings and
            // counts ("after 0ms", "3 identical error(s) suppressed").
            _ => self.limit.check(&without_digits(message), Instant::now()),
        };
        let Some(n) = held else { return };
        // One [kafka] properties table serves consumers and producers, so each
        // ignores the other's properties: expected, not worth a warning.
        let level = if facility == "CONFWARN"
            && (message.contains("is a consumer property and will be ignored by this producer")
                || message.contains("is a producer property and will be ignored by this consumer"))
        {
            RDKafkaLogLevel::Debug
        } else {
            level
        };
        let r = repeats(n, self.limit.window);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}{r}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility, "{message}{r}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility, "{message}")
            }
        }
    }

    /// A client-wide error (`ClientContext::error`): logged once per window with
    /// the bootstrap address; all brokers down makes the process not ready.
    pub fn error(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if matches!(code, Some(RDKafkaErrorCode::AllBrokersDown)) {
            self.set_brokers(false);
        }
        let msg = match code {
            Some(
                RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve,
            ) => format!(
                "cannot reach the Kafka brokers of kafka.bootstrap_servers = \"{}\": {reason}",
                self.bootstrap
            ),
            _ => format!("Kafka client error: {error}: {reason}"),
        };
        if let Some(n) = self.limit.check(&without_digits(&msg), Instant::now()) {
            tracing::error!(target: "fieldcrypt::kafka", "{msg}{}", repeats(n, self.limit.window));
        }
    }

    /// A consumer error from the record stream (the consumer goes on): counted
    /// always, logged once per window.
    pub fn consume_error(&self, error: &KafkaError) {
        self.metrics
            .errors
            .with_label_values(&[Code::KafkaConsume.as_str()])
            .inc();
        let code = error.rdkafka_error_code();
        let msg = match code {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.set_brokers(false);
                format!(
                    "consume error: no broker of kafka.bootstrap_servers = \"{}\" answers ({error})",
                    self.bootstrap
                )
            }
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve) => format!(
                "consume error: a broker of kafka.bootstrap_servers = \"{}\" cannot be reached ({error})",
                self.bootstrap
            ),
            _ => format!("consume error: {error}"),
        };
        if let Some(n) = self.limit.check(&msg, Instant::now()) {
            tracing::warn!(target: "fieldcrypt::kafka", "{msg}{}", repeats(n, self.limit.window));
        }
    }

    /// The clients' statistics: a broker in state `UP` means the brokers are
    /// reachable again.
    pub fn stats(&self, s: &Statistics) {
        let up = s.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
        if up {
            self.set_brokers(true);
        }
    }

    /// Records were consumed: brokers answer (cheap when they already did).
    pub fn consumed(&self) {
        if self.state.load(std::sync::atomic::Ordering::Relaxed) != 1 {
            self.set_brokers(true);
        }
    }

    fn set_brokers(&self, up: bool) {
        let (new, was) = (
            if up { 1 } else { 2 },
            self.state.load(std::sync::atomic::Ordering::Relaxed),
        );
        self.state.store(new, std::sync::atomic::Ordering::Relaxed);
        if was == 2 && up {
            tracing::info!(target: "fieldcrypt::kafka", bootstrap = %self.bootstrap, "Kafka brokers reachable again");
        }
        self.metrics.set_brokers_reachable(up);
    }

    /// The source topics named by routes that the brokers do not have (from a
    /// metadata answer): logged by name when the set changes, and reported into
    /// readiness.
    pub fn missing_topics(&self, missing: Vec<String>) {
        let before = self.metrics.health.get().missing_topics;
        if before != missing {
            if missing.is_empty() {
                tracing::info!(target: "fieldcrypt::kafka", "every source topic exists now");
            } else {
                tracing::warn!(
                    target: "fieldcrypt::kafka",
                    topics = ?missing,
                    "source topic(s) {} do not exist on kafka.bootstrap_servers = \"{}\": nothing is consumed from them until they are created",
                    missing.join(", "),
                    self.bootstrap
                );
            }
        }
        self.metrics.set_missing_topics(missing);
    }
}

/// Logs `e` as a plain warning with its text (for errors outside the clients).
pub fn warn_once(limit: &RateLimit, what: &str, e: &dyn Display) {
    let msg = format!("{what}: {e}");
    if let Some(n) = limit.check(&msg, Instant::now()) {
        tracing::warn!("{msg}{}", repeats(n, limit.window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_held_back_and_counted_per_message() {
        let l = RateLimit::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(l.check("a", t0), Some(0), "the first is logged");
        for i in 1..=5 {
            assert_eq!(l.check("a", t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(l.check("b", t0), Some(0), "another message is its own");
        assert_eq!(
            l.check("a", t0 + Duration::from_secs(31)),
            Some(5),
            "after the window: logged, with the count held back"
        );
        assert_eq!(l.check("a", t0 + Duration::from_secs(32)), None);
        assert_eq!(repeats(5, l.window), " (and 5 more times in the last 30 s)");
        assert_eq!(repeats(0, l.window), "");
        assert_eq!(
            without_digits("Connect to ipv4#127.0.0.1:1 failed (after 0ms in state CONNECT, 3 identical error(s) suppressed)"),
            without_digits("Connect to ipv4#127.0.0.1:1 failed (after 12ms in state CONNECT)"),
            "librdkafka's own suppression count is a repeat"
        );
    }

    #[test]
    fn all_brokers_down_names_the_address_and_makes_the_process_not_ready() {
        let m = Arc::new(Metrics::new());
        let k = KafkaLog::new("10.0.0.9:9092", m.clone());
        m.add_assigned(1);
        assert!(m.is_ready());
        k.error(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        let why = m.health.get().why_not().unwrap();
        assert!(
            why.contains("brokers") && why.contains("10.0.0.9:9092"),
            "{why}"
        );
        assert_eq!(m.brokers_reachable.get(), 0);
        k.consumed();
        assert!(m.is_ready());
        assert_eq!(m.brokers_reachable.get(), 1);
    }

    #[test]
    fn missing_topics_are_named_in_readiness() {
        let m = Arc::new(Metrics::new());
        let k = KafkaLog::new("b:9092", m.clone());
        k.missing_topics(vec!["orders".into()]);
        let why = m.health.get().why_not().unwrap();
        assert!(why.contains("orders"), "{why}");
        k.missing_topics(Vec::new());
        assert_eq!(
            m.health.get().why_not().as_deref(),
            Some("no partitions assigned")
        );
    }
}
