//! The HTTP listener (default `127.0.0.1:9464`): `GET /metrics` (Prometheus text
//! format), `GET /health/live` (the process is serving) and `GET /health/ready`
//! (partitions assigned and the KMS reachable; 503 otherwise). Anything else is 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use serde::{Deserialize, Serialize};

use super::Metrics;

/// `[metrics]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP listener (default `127.0.0.1:9464`; port 0 picks one;
    /// empty turns it off).
    pub listen: String,
    /// Most topics that get their own `topic` label (default 1,000); the rest
    /// share the label `other`, so regex routes cannot grow the series without
    /// bound.
    pub max_topics: usize,
    /// Seconds between `run`'s progress lines at info level (records/s in and
    /// out, dead letters, lag); default 30, 0 turns them off.
    pub progress_seconds: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".into(),
            max_topics: super::metrics::DEFAULT_MAX_TOPICS,
            progress_seconds: 30,
        }
    }
}

impl MetricsConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if self.max_topics == 0 {
            return Err(crate::config::invalid(
                "metrics.max_topics",
                "must be at least 1 (topics past it share the label \"other\")",
            ));
        }
        Ok(())
    }
}

/// A running listener; dropping it stops serving.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves in a background task.
pub async fn serve(addr: &str, metrics: Arc<Metrics>) -> std::io::Result<Server> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("metrics.listen: cannot listen on {addr}: {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let m = metrics.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let m = m.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &m)) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "metrics connection ended");
                }
            });
        }
    });
    tracing::info!(%addr, "serving /metrics, /health/live and /health/ready");
    Ok(Server { addr, task })
}

fn respond(req: &Request<Incoming>, m: &Metrics) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            m.render(),
        ),
        (&Method::GET, "/health/live") => (StatusCode::OK, "text/plain", "live\n".into()),
        (&Method::GET, "/health/ready") => match m.health.get().why_not() {
            None => (StatusCode::OK, "text/plain", "ready\n".into()),
            Some(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        (_, "/metrics" | "/health/live" | "/health/ready") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /health/live or /health/ready\n".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
