//! Real components for the broker tests: a tansu Kafka-protocol broker and the
//! project's test Schema Registry, each started on a free 127.0.0.1 port for one
//! test and killed when dropped; keys on disk (as `fieldcrypt keys init` makes
//! them); and small Kafka client helpers (topics, produce, consume, scrape).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldcrypt::config::Config;
use fieldcrypt::keys::{Kms, LocalKms};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};

/// The fieldcrypt checkout (this crate is its `harness/`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ sits in the repository")
        .to_path_buf()
}

/// A free 127.0.0.1 port, never the same one twice in this process: the kernel may
/// hand a just-released port to the next `bind(0)`, and two parallel tests that got
/// the same port would find each other's server (one test's fault proxy in front of
/// another test's KMS emulator).
///
/// The port is found by binding a socket that never listens: a child that another
/// thread forks meanwhile inherits a copy of the socket until its exec, and a
/// listening copy would accept `wait_for_port`'s probe with nothing started yet
/// (the flaky registry tests' cause); a bound one refuses it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let port = s
            .local_addr()
            .unwrap()
            .as_socket()
            .expect("an IPv4 address")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early ({status})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 30 s");
}

/// A tansu broker with in-memory storage.
pub struct Broker {
    child: Child,
    pub port: u16,
}

impl Broker {
    /// On a free port.
    pub fn start() -> Broker {
        Broker::start_on(free_port())
    }

    /// On `port`.
    pub fn start_on(port: u16) -> Broker {
        let bin = std::env::var_os("FIELDCRYPT_TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join(".tools/bin/tansu"));
        assert!(
            bin.exists(),
            "the tansu broker is not installed at {}: scripts/test.sh installs it (or set FIELDCRYPT_TANSU)",
            bin.display()
        );
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        wait_for_port(port, "tansu", &mut child);
        Broker { child, port }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The project's Confluent-API test registry (tools/test_registry.py).
pub struct Registry {
    child: Child,
    pub port: u16,
    /// Holds the port file and the registry's stderr (`registry.log`).
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with(&[])
    }

    /// With extra arguments, e.g. `["--basic-auth", "user:password"]`.
    ///
    /// The registry binds port 0 itself and writes the bound port to a file once
    /// it listens (`--port-file`, written after bind + listen); no `free_port` +
    /// `wait_for_port`. That pair made this flaky (about 1 run in 7 of
    /// tests/dek_registry.rs, first request `Connection refused`): `free_port`'s
    /// probe socket is a *listening* socket for a moment, and a test thread that
    /// spawns a child in that moment (fork/vfork) gives the child a copy of it,
    /// open until the child's exec (CLOEXEC). A second test's `wait_for_port`
    /// then connected to its port through that stray listener (strace: connect
    /// to 43787 = 0 at 25.476, from 127.0.0.1:39598, while the other test's
    /// vfork child cloned at 25.471 only exec'd at 25.483) and returned while
    /// python3 (behind the pyenv shims, ~0.3 s) was still starting.
    pub fn start_with(extra: &[&str]) -> Registry {
        let dir = tempfile::tempdir().expect("a temp dir for the test registry");
        let port_file = dir.path().join("port");
        let log = dir.path().join("registry.log");
        let mut child = Command::new("python3")
            .arg(repo().join("tools/test_registry.py"))
            .args(["--host", "127.0.0.1", "--port", "0", "--exit-with-parent"])
            .arg("--port-file")
            .arg(&port_file)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the test registry's log"))
            .spawn()
            .expect("python3 runs the test registry");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            // Written atomically (temp file + rename), so never seen half-written.
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                break text
                    .trim()
                    .parse::<u16>()
                    .unwrap_or_else(|e| panic!("test registry port file {text:?}: {e}"));
            }
            if let Ok(Some(status)) = child.try_wait() {
                let stderr = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("test registry exited early ({status}):\n{stderr}");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("test registry did not listen within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Registry {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A KEK file and keyset on disk under `dir`, with the given domains; returns a
/// config pointing at them (and at `bootstrap`), with test-friendly Kafka timings.
pub fn keys_on_disk(dir: &Path, bootstrap: &str, deterministic: &[&str], index: &[&str]) -> Config {
    let mut cfg = Config {
        kms: fieldcrypt::config::KmsConfig::local(dir.join("kek.key")),
        ..Config::default()
    };
    cfg.keyset.file = dir.join("keyset.json");
    LocalKms::init(cfg.kms.kek_file().unwrap()).unwrap();
    let kms: Arc<dyn Kms> = Arc::new(LocalKms::open(cfg.kms.kek_file().unwrap()).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(super::write_keyset(
        kms.as_ref(),
        &cfg.keyset.file,
        deterministic,
        index,
    ));
    cfg.kafka.bootstrap_servers = bootstrap.to_string();
    // tansu completes a group join in about half the session timeout.
    cfg.kafka
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    cfg.kafka
        .properties
        .insert("heartbeat.interval.ms".into(), "1000".into());
    cfg.metrics.listen = format!("127.0.0.1:{}", free_port());
    cfg
}

pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .unwrap();
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// Reads `topic` from the start with a fresh group until `want` records arrived
/// (then a little longer, to catch duplicates) or `timeout` passed.
pub fn consume(bootstrap: &str, topic: &str, want: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("check-{topic}-{}", free_port()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(m.detach());
        }
    }
    let extra = Instant::now() + Duration::from_secs(2);
    while Instant::now() < extra {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

/// A header's value as text.
pub fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// GET `path` from the metrics listener; (status, body). Panics when nothing
/// listens (see [`try_http_get`]).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// GET `path` over HTTP/1.0 (so no server answers in chunks); (status, body).
pub fn try_http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The sum of a metric's samples whose label set contains every `labels` pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, r)) => (n, r),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub type Runner = std::thread::JoinHandle<
    Result<fieldcrypt::pipeline::RunStats, fieldcrypt::pipeline::PipelineError>,
>;

/// Runs a pipeline in this process on its own runtime until the sender fires.
pub fn start_pipeline(
    engine: Arc<fieldcrypt::engine::Engine>,
    cfg: Config,
) -> (tokio::sync::oneshot::Sender<()>, Runner) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(fieldcrypt::pipeline::run(engine, &cfg, async {
            let _ = stop_rx.await;
        }))
    });
    (stop_tx, runner)
}

/// An engine for `cfg` (keys on disk), built on a throwaway runtime.
pub fn engine(cfg: &Config) -> Arc<fieldcrypt::engine::Engine> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Arc::new(
        rt.block_on(fieldcrypt::engine::Engine::start(cfg.clone()))
            .unwrap(),
    )
}
