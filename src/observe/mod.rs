//! Observability: the Prometheus metrics ([`metrics`]) and the HTTP listener that
//! serves them with the liveness and readiness probes ([`server`]).

pub mod metrics;
pub mod server;

pub use metrics::Metrics;
