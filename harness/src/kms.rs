//! A real KMS emulator for the AWS tests: moto's server on a free 127.0.0.1 port,
//! one per test, killed when dropped, with keys created through the SDK; and a
//! fault-injecting TCP proxy that can cut the KMS off (refusing new connections and
//! severing open ones) and bring it back mid-test.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldcrypt::keys::aws::{self, AwsSettings};

use super::broker::free_port;

pub const REGION: &str = "us-east-1";

/// Static test credentials, as the AWS provider chain reads them.
pub const CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
];

/// Sets the test credentials in this process's environment, once: the first test
/// to start sets them before it reads anything, and no test changes them again.
pub fn use_test_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (k, v) in CREDENTIALS {
            std::env::set_var(k, v);
        }
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_SESSION_TOKEN");
    });
}

/// moto's server (`pip install 'moto[server]'`).
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        use_test_credentials();
        // A port taken by another process between `free_port` and moto's bind makes
        // moto exit; try another port rather than talk to whoever holds it.
        for _ in 0..5 {
            if let Some(moto) = Moto::try_start(free_port()) {
                return moto;
            }
        }
        panic!("moto_server could not bind a port in five tries");
    }

    fn try_start(port: u16) -> Option<Moto> {
        // `python3 -m moto.server` is moto_server without depending on PATH.
        let bin = std::env::var("FIELDCRYPT_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&bin)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} -m moto.server ({e}): pip install 'moto[server]'")
            });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Listening is not enough: something else may hold the port while
                // moto fails to bind it. moto stays up; a failed bind exits.
                std::thread::sleep(Duration::from_millis(300));
                if let Ok(Some(_)) = child.try_wait() {
                    return None;
                }
                return Some(Moto { child, port });
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn settings(&self) -> AwsSettings {
        settings(&self.url())
    }

    /// Creates a symmetric key (with `alias`, if given) and returns its ARN.
    pub fn create_key(&self, alias: Option<&str>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = aws::client(&self.settings()).await.unwrap();
            let meta = c
                .create_key()
                .description("fieldcrypt test KEK")
                .send()
                .await
                .unwrap()
                .key_metadata
                .unwrap();
            if let Some(a) = alias {
                c.create_alias()
                    .alias_name(a)
                    .target_key_id(meta.key_id())
                    .send()
                    .await
                    .unwrap();
            }
            meta.arn.unwrap()
        })
    }
}

pub fn settings(url: &str) -> AwsSettings {
    AwsSettings {
        region: Some(REGION.into()),
        endpoint_url: Some(url.into()),
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of a service; `set_down(true)` severs every open connection
/// and closes each new one at once, as an unreachable service looks to a client.
pub struct FaultProxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    bad_gateway: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl FaultProxy {
    pub fn start(upstream: u16) -> FaultProxy {
        // A port from `free_port`, so no other test in this process is handed it.
        let listener = std::iter::repeat_with(|| TcpListener::bind(("127.0.0.1", free_port())))
            .take(5)
            .find_map(Result::ok)
            .expect("a free port for the fault proxy");
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let bad_gateway = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, b, s, o) = (
            down.clone(),
            bad_gateway.clone(),
            stop.clone(),
            open.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                if b.load(Ordering::SeqCst) {
                    answer_bad_gateway(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut o = o.lock().unwrap();
                o.retain(|c| c.peer_addr().is_ok());
                for sock in [&client, &server] {
                    o.push(sock.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        FaultProxy {
            port,
            down,
            bad_gateway,
            stop,
            open,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers every request with a bare `502 Bad Gateway`, as a failing load
    /// balancer or VPC endpoint does (no KMS error code in it).
    pub fn set_bad_gateway(&self, on: bool) {
        self.bad_gateway.store(on, Ordering::SeqCst);
        if on {
            self.sever();
        }
    }

    fn sever(&self) {
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.sever();
        }
    }
}

fn answer_bad_gateway(mut client: TcpStream) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        // Read the request head (and whatever body came with it), then answer.
        let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 8192];
        let _ = client.read(&mut buf);
        let _ = client.write_all(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 11\r\nConnection: close\r\n\r\nbad gateway",
        );
        let _ = client.shutdown(Shutdown::Both);
    });
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_down(true);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
