//! Observability: the Prometheus metrics ([`metrics`]), the named events that log
//! and count together ([`events`]), readiness as a `watch` of [`health`], and the
//! HTTP listener that serves the metrics with the liveness and readiness probes
//! ([`server`]); what the Kafka clients say (logs, errors, broker reachability)
//! goes through [`kafka`].

pub mod events;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod server;

pub use metrics::Metrics;
