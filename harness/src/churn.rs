//! The scale-out churn run: `fieldcrypt run` processes of one consumer group
//! changing under a steady load, the way replicas change on Kubernetes — 1 → 3
//! instances, a rolling restart (SIGTERM, wait, start), a `kill -9` and its
//! replacement, a scale-down to 1 — while `fieldcrypt loadgen` writes to a
//! multi-partition source. Afterwards `fieldcrypt check` (an independent
//! `read_committed` reader) counts every record of the run on the target:
//! missing, duplicated, unencrypted. Each SIGTERM's exit status and time are
//! kept, and the group's produced counters are sampled every 100 ms, so the
//! pauses a rebalance causes (no record produced while the source keeps
//! growing) are measured, not guessed.
//!
//! Replicas keep a stable identity per slot (`transactional_id = "churn-a"`,
//! as a container restarted inside its pod keeps its pod name and pid 1), so a
//! replacement fences the transaction a killed instance left open.
//!
//! Used once per delivery mode by `tests/scale_out.rs`, and repeatedly by
//! `cargo xtask churn`.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::broker::{create_topics, free_port, keys_on_disk, metric, repo, try_http_get, Broker};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChurnSpec {
    /// `at-least-once` or `exactly-once`.
    pub delivery: String,
    /// Source (and target) partitions.
    pub partitions: i32,
    /// Records per second loadgen writes.
    pub rate: u32,
    /// Seconds loadgen writes; the churn happens in its first two thirds.
    pub seconds: u64,
    /// `pipeline.workers` per instance.
    pub workers: usize,
    /// Replace the `kill -9` with a SIGTERM (a churn with no crash at all).
    pub no_crash: bool,
    /// Where configs, logs and reports go (kept for a failed run).
    pub dir: PathBuf,
    /// The `fieldcrypt` binary.
    pub bin: PathBuf,
}

/// One instance's SIGTERM: its slot, exit status and how long it took.
#[derive(Debug, Clone)]
pub struct Stop {
    pub name: String,
    pub status: Option<i32>,
    pub took: Duration,
    /// Its counters just before the SIGTERM: partitions revoked from it, and
    /// exactly-once transactions committed and aborted (a graceful revoke commits;
    /// none should have been aborted).
    pub revokes: f64,
    pub committed: f64,
    pub aborted: f64,
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct ChurnReport {
    pub delivery: String,
    /// Records loadgen had acknowledged.
    pub expected: u64,
    pub seen: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Duplicates by target partition (= source partition here).
    pub duplicates_by_partition: std::collections::BTreeMap<i32, u64>,
    /// The partitions the `kill -9`'d instance held when it was killed (from its
    /// log). Its open transaction is aborted when its replacement fences it, but
    /// tansu still shows an aborted transaction's records to `read_committed`
    /// readers (`tools/tansu_churn_repro.py txn-abort`, with confluent-kafka
    /// alone), so on tansu the records its partitions' next owner redoes can be
    /// seen twice there; a Kafka broker hides them.
    pub crashed_partitions: Vec<i32>,
    pub unencrypted: u64,
    pub malformed: u64,
    /// Every SIGTERM's outcome.
    pub stops: Vec<Stop>,
    /// Longest stretch (ms) without a record produced by the group around each
    /// event, as `(event, ms)`.
    /// `None`: the step came after the load had ended (nothing to pause).
    pub pauses: Vec<(String, Option<u64>)>,
    /// How long the group took to hold every partition again after each event
    /// (`None`: it did not within a minute).
    pub settle_ms: Vec<(String, Option<u64>)>,
    /// End-to-end latency seen by a live verifier, ms (p50, p99, max): a record
    /// whose partition moved waited the rebalance out.
    pub latency_ms: (f64, f64, f64),
    /// Problems the verifier listed (positions, never values).
    pub problems: Vec<String>,
    /// Log tails of instances whose SIGTERM did not exit 0.
    pub failures: Vec<String>,
}

impl ChurnReport {
    /// Duplicates on partitions the killed instance did not hold.
    pub fn duplicates_outside_crash(&self) -> u64 {
        self.duplicates_by_partition
            .iter()
            .filter(|(p, _)| !self.crashed_partitions.contains(p))
            .map(|(_, n)| n)
            .sum()
    }

    /// Nothing missing, nothing in clear or malformed, every SIGTERM exit 0 in
    /// time, every step settled; unless `duplicates_ok`, nothing twice but the
    /// killed instance's aborted transaction that tansu shows (see
    /// [`crashed_partitions`](Self::crashed_partitions)); exactly-once, no
    /// transaction aborted by a graceful revoke.
    pub fn ok(&self, duplicates_ok: bool) -> bool {
        let eos = self.delivery == "exactly-once";
        self.expected > 0
            && self.missing == 0
            && self.unencrypted == 0
            && self.malformed == 0
            && self.stops.iter().all(|s| s.status == Some(0))
            && (duplicates_ok || self.duplicates_outside_crash() == 0)
            && self.settle_ms.iter().all(|(_, ms)| ms.is_some())
            && (!eos
                || self
                    .stops
                    .iter()
                    .all(|s| s.aborted == 0.0 && s.committed > 0.0))
    }

    /// A summary for logs and reports.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: expected {}, seen {}, missing {}, duplicates {}, unencrypted {}, malformed {}",
            self.delivery,
            self.expected,
            self.seen,
            self.missing,
            self.duplicates,
            self.unencrypted,
            self.malformed
        );
        if self.duplicates > 0 {
            let _ = writeln!(
                s,
                "  duplicates by partition {:?}; the kill -9'd instance held {:?}",
                self.duplicates_by_partition, self.crashed_partitions
            );
        }
        for st in &self.stops {
            let _ = writeln!(
                s,
                "  SIGTERM {}: exit {:?} in {:.1} s (before it: {} revokes, {} transactions committed, {} aborted)",
                st.name,
                st.status,
                st.took.as_secs_f64(),
                st.revokes as u64,
                st.committed as u64,
                st.aborted as u64
            );
        }
        for (ev, ms) in &self.pauses {
            let _ = match ms {
                Some(ms) => writeln!(s, "  pause around {ev}: {ms} ms without a record produced"),
                None => writeln!(
                    s,
                    "  pause around {ev}: not measured (after the load ended)"
                ),
            };
        }
        for (ev, ms) in &self.settle_ms {
            match ms {
                Some(ms) => {
                    let _ = writeln!(s, "  group settled {ms} ms after {ev}");
                }
                None => {
                    let _ = writeln!(s, "  group did NOT settle within 60 s after {ev}");
                }
            }
        }
        let _ = writeln!(
            s,
            "  end-to-end latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            self.latency_ms.0, self.latency_ms.1, self.latency_ms.2
        );
        for p in self.problems.iter().take(5) {
            let _ = writeln!(s, "  problem: {p}");
        }
        for f in &self.failures {
            let _ = writeln!(s, "  {f}");
        }
        s
    }
}

/// A `fieldcrypt run` process in a slot.
struct Instance {
    name: String,
    child: Child,
    metrics: String,
    log: PathBuf,
}

impl Instance {
    fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(self.child.id() as i32).expect("a child has a pid")
    }

    /// SIGTERM, and its exit status within `grace` (`None`: killed after it).
    fn stop(mut self, grace: Duration) -> (Stop, Option<String>) {
        let body = try_http_get(&self.metrics, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let revokes = metric(&body, "fieldcrypt_rebalances_total", &[("kind", "revoke")]);
        let txns = |outcome| {
            metric(
                &body,
                "fieldcrypt_transactions_total",
                &[("outcome", outcome)],
            )
        };
        let (committed, aborted) = (txns("committed"), txns("aborted"));
        let started = Instant::now();
        let _ = rustix::process::kill_process(self.pid(), rustix::process::Signal::TERM);
        let status = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st.code();
            }
            if started.elapsed() > grace {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let tail = (status != Some(0)).then(|| {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "{} (SIGTERM → {status:?}) log tail:\n{}",
                self.name,
                lines[lines.len().saturating_sub(15)..].join("\n")
            )
        });
        (
            Stop {
                name: std::mem::take(&mut self.name),
                status,
                took: started.elapsed(),
                revokes,
                committed,
                aborted,
            },
            tail,
        )
    }

    /// `kill -9`: no drain, no commit. Returns the `source` partitions it held.
    fn crash(mut self, source: &str) -> Vec<i32> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        held_partitions(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            source,
        )
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The partitions of `topic` an instance held at the end of its JSON log: its
/// `partitions assigned` / `partitions revoked` lines (`churn[1,3]`; incremental,
/// so added and removed in turn).
fn held_partitions(log: &str, topic: &str) -> Vec<i32> {
    let mut held = std::collections::BTreeSet::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let assigned = match v["message"].as_str() {
            Some("partitions assigned") => true,
            Some("partitions revoked") => false,
            _ => continue,
        };
        let list = v["partitions"].as_str().unwrap_or("");
        let Some(rest) = list.split(&format!("{topic}[")).nth(1) else {
            continue;
        };
        let ids = rest.split(']').next().unwrap_or("");
        for p in ids.split(',').filter_map(|p| p.trim().parse::<i32>().ok()) {
            if assigned {
                held.insert(p);
            } else {
                held.remove(&p);
            }
        }
    }
    held.into_iter().collect()
}

/// The run's shared pieces.
struct Run<'a> {
    spec: &'a ChurnSpec,
    config: String,
    /// Metrics listeners of the instances running now (for the sampler).
    live: Arc<Mutex<Vec<String>>>,
}

impl Run<'_> {
    /// Starts slot `name` (`a`, `b`, ...) and waits until it serves /metrics.
    fn start(&self, name: &str, generation: u32) -> Instance {
        let port = free_port();
        let metrics = format!("127.0.0.1:{port}");
        let cfg = self.spec.dir.join(format!("{name}{generation}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "{}\n[metrics]\nlisten = \"{metrics}\"\nprogress_seconds = 5\n",
                self.config.replace("@SLOT@", name)
            ),
        )
        .expect("writes the instance's config");
        let log = self.spec.dir.join(format!("{name}{generation}.log"));
        let out = File::create(&log).expect("creates the log");
        let child = Command::new(&self.spec.bin)
            .args(["--log-format", "json", "run", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("starts fieldcrypt run");
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_http_get(&metrics, "/health/live").is_err() {
            assert!(
                Instant::now() < deadline,
                "{name} did not serve /health/live"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.live.lock().unwrap().push(metrics.clone());
        Instance {
            name: format!("{name}{generation}"),
            child,
            metrics,
            log,
        }
    }

    fn gone(&self, i: &Instance) {
        self.live.lock().unwrap().retain(|m| *m != i.metrics);
    }

    /// Each running instance's (assign events seen, partitions held).
    fn group_state(&self) -> Vec<(String, f64, f64)> {
        let addrs = self.live.lock().unwrap().clone();
        addrs
            .into_iter()
            .filter_map(|a| {
                let (_, body) = try_http_get(&a, "/metrics").ok()?;
                let assigns = metric(&body, "fieldcrypt_rebalances_total", &[("kind", "assign")]);
                let held = metric(&body, "fieldcrypt_assigned_partitions", &[]);
                Some((a, assigns, held))
            })
            .collect()
    }

    /// Waits until the group has settled after a change made when its state was
    /// `before`: every running instance has seen an assignment since (the
    /// rebalance the change caused has completed for it) and together they hold
    /// every source partition, steadily for half a second. How long it took, or
    /// `None` when it did not settle within `timeout`.
    fn settled(&self, before: &[(String, f64, f64)], timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut steady_since: Option<Instant> = None;
        while started.elapsed() < timeout {
            let now = self.group_state();
            let rebalanced = now.iter().all(|(a, assigns, _)| {
                before
                    .iter()
                    .find(|(b, _, _)| b == a)
                    .is_none_or(|(_, was, _)| assigns > was)
            });
            let held: f64 = now.iter().map(|(_, _, h)| h).sum();
            if rebalanced && held as i32 == self.spec.partitions {
                let since = *steady_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(500) {
                    return Some(since.duration_since(started));
                }
            } else {
                steady_since = None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

/// The group's produced total, sampled: `(time since start, total)`; a stopped
/// instance's count stays in the total.
struct Sampler {
    samples: Arc<Mutex<Vec<(Duration, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(live: Arc<Mutex<Vec<String>>>, t0: Instant) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut last: std::collections::HashMap<String, u64> = Default::default();
            while !st.load(Ordering::Relaxed) {
                let addrs = live.lock().unwrap().clone();
                for a in addrs {
                    if let Ok((200, body)) = try_http_get(&a, "/metrics") {
                        let n = metric(&body, "fieldcrypt_records_produced_total", &[]) as u64;
                        last.insert(a, n);
                    }
                }
                s.lock().unwrap().push((t0.elapsed(), last.values().sum()));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// The longest run of samples in `[from, to]` over which the total did not
    /// grow, in ms.
    fn longest_stall(&self, from: Duration, to: Duration) -> u64 {
        let s = self.samples.lock().unwrap();
        let mut best = 0u64;
        let mut since: Option<(Duration, u64)> = None;
        for &(t, n) in s.iter().filter(|(t, _)| *t >= from && *t <= to) {
            match since {
                Some((t0, n0)) if n == n0 => best = best.max((t - t0).as_millis() as u64),
                _ => since = Some((t, n)),
            }
        }
        best
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `bin` with `args` to completion; its stdout and stderr.
fn run_to_end(bin: &Path, args: &[&str], log: &Path) -> (bool, String) {
    let o = Command::new(bin)
        .args(args)
        .output()
        .expect("runs a fieldcrypt command");
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    let _ = std::fs::write(log, &text);
    (o.status.success(), text)
}

/// One churn run, as [`ChurnSpec`] says. Panics on a harness failure (a broker
/// that does not start); what the pipeline does wrong is in the report.
pub fn run(spec: &ChurnSpec) -> ChurnReport {
    std::fs::create_dir_all(&spec.dir).expect("creates the run directory");
    let broker = Broker::start();
    let bs = broker.bootstrap();
    let (source, target) = ("churn", "secure.churn");
    create_topics(
        &bs,
        &[
            (source, spec.partitions),
            (target, spec.partitions),
            ("dlq.churn", 1),
        ],
    );
    let keys = keys_on_disk(&spec.dir, &bs, &["default"], &["email"]);
    let schema = repo().join("schemas/customer.avsc");
    let config = format!(
        "[kms]\nkek_file = \"{}\"\n[keyset]\nfile = \"{}\"\n\
         [kafka]\nbootstrap_servers = \"{bs}\"\ngroup_id = \"churn\"\n\
         properties = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"1000\", \"max.poll.interval.ms\" = \"15000\" }}\n\
         [pipeline]\ndelivery = \"{}\"\nworkers = {}\ntransactional_id = \"churn-@SLOT@\"\ndrain_timeout_seconds = 20\n\
         [[routes]]\nsource = \"{source}\"\ntarget = \"{target}\"\nvalue_schema = \"{}\"\n",
        keys.kms.kek_file().expect("a local KEK").display(),
        keys.keyset.file.display(),
        spec.delivery,
        spec.workers,
        schema.display()
    );
    let base = spec.dir.join("base.toml");
    std::fs::write(&base, config.replace("@SLOT@", "tools")).expect("writes the tools' config");
    let run = Run {
        spec,
        config,
        live: Arc::new(Mutex::new(Vec::new())),
    };
    let t0 = Instant::now();
    let sampler = Sampler::start(run.live.clone(), t0);
    let mut report = ChurnReport {
        delivery: spec.delivery.clone(),
        ..Default::default()
    };
    let grace = Duration::from_secs(30);
    let mut events: Vec<(String, Duration)> = Vec::new();
    let stop = |i: Instance, run: &Run<'_>, report: &mut ChurnReport| {
        run.gone(&i);
        let (st, tail) = i.stop(grace);
        report.stops.push(st);
        report.failures.extend(tail);
    };

    let a = run.start("a", 1);
    let settle = |what: &str, before: &[(String, f64, f64)], report: &mut ChurnReport| {
        let ms = run
            .settled(before, Duration::from_secs(60))
            .map(|d| d.as_millis() as u64);
        report.settle_ms.push((what.to_string(), ms));
    };
    settle("start of a", &[], &mut report);
    // The load, in the background for `seconds`.
    let loadgen_report = spec.dir.join("loadgen.json");
    let rate = spec.rate.to_string();
    let seconds = spec.seconds.to_string();
    let base_s = base.display().to_string();
    let lg_report = loadgen_report.display().to_string();
    let load_start = t0.elapsed();
    let loadgen = {
        let bin = spec.bin.clone();
        let log = spec.dir.join("loadgen.log");
        let args: Vec<String> = [
            "loadgen",
            "--config",
            &base_s,
            "--topic",
            source,
            "--rate",
            &rate,
            "--duration",
            &seconds,
            "--keys",
            "1000",
            "--cdc",
            "off",
            "--run-id",
            "churn",
            "--report",
            &lg_report,
            // Read the target live too: each record's end-to-end latency is the
            // pause it met (a rebalance moving its partition shows as latency).
            "--verify",
            "--verify-timeout",
            "60",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_to_end(&bin, &args, &log)
        })
    };
    let at = |frac: f64| t0 + Duration::from_secs_f64(spec.seconds as f64 * frac);
    let sleep_until = |t: Instant| {
        if let Some(d) = t.checked_duration_since(Instant::now()) {
            std::thread::sleep(d)
        }
    };

    // 1 → 3.
    sleep_until(at(1.0 / 6.0));
    events.push(("scale 1 → 3".into(), t0.elapsed()));
    let before = run.group_state();
    let b = run.start("b", 1);
    let c = run.start("c", 1);
    settle("scale 1 → 3", &before, &mut report);
    // A rolling restart of a.
    sleep_until(at(2.0 / 6.0));
    events.push(("rolling restart of a (SIGTERM)".into(), t0.elapsed()));
    let before = run.group_state();
    stop(a, &run, &mut report);
    settle("SIGTERM of a", &before, &mut report);
    let before = run.group_state();
    let a = run.start("a", 2);
    settle("a's replacement", &before, &mut report);
    // A crash of b, and its replacement in the same slot.
    sleep_until(at(3.0 / 6.0));
    let before = run.group_state();
    if spec.no_crash {
        events.push(("b stopped (SIGTERM) and replaced".into(), t0.elapsed()));
        stop(b, &run, &mut report);
    } else {
        events.push(("kill -9 of b, replaced".into(), t0.elapsed()));
        run.gone(&b);
        report.crashed_partitions = b.crash(source);
    }
    settle("b gone", &before, &mut report);
    let before = run.group_state();
    let b = run.start("b", 2);
    settle("b's replacement", &before, &mut report);
    // Down to 1.
    sleep_until(at(4.0 / 6.0));
    events.push(("scale 3 → 1 (SIGTERM b and c)".into(), t0.elapsed()));
    let before = run.group_state();
    stop(c, &run, &mut report);
    settle("SIGTERM of c", &before, &mut report);
    let before = run.group_state();
    stop(b, &run, &mut report);
    settle("SIGTERM of b", &before, &mut report);

    let (_, lg_text) = loadgen.join().expect("the loadgen thread");
    // When loadgen stopped writing: after it the group is idle, not paused.
    let load_end = (load_start + Duration::from_secs(spec.seconds)).min(t0.elapsed());
    let lg: serde_json::Value = std::fs::read_to_string(&loadgen_report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let expected = lg["produce"]["records"].as_u64().unwrap_or(0);
    assert!(
        expected > 0 && lg["produce"]["failed"].as_u64() == Some(0),
        "loadgen failed: {lg_text}"
    );
    report.expected = expected;
    let lat = &lg["verify"]["latency_ms"];
    let f = |k: &str| lat[k].as_f64().unwrap_or(0.0);
    report.latency_ms = (f("p50"), f("p99"), f("max"));

    // The survivor drains the backlog; the verifier reads everything committed.
    let check_report = spec.dir.join("check.json");
    let (_, check_text) = run_to_end(
        &spec.bin,
        &[
            "check",
            "--config",
            &base_s,
            "--topic",
            source,
            "--run-id",
            "churn",
            "--expect",
            &expected.to_string(),
            "--timeout",
            "90",
            "--report",
            &check_report.display().to_string(),
        ],
        &spec.dir.join("check.log"),
    );
    stop(a, &run, &mut report);
    sampler.finish_into(&events, load_end, &mut report);
    drop(broker);

    let v: serde_json::Value = std::fs::read_to_string(&check_report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| panic!("fieldcrypt check wrote no report: {check_text}"));
    let v = &v["verify"];
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    report.seen = n("seen");
    report.missing = n("missing");
    report.duplicates = n("duplicates");
    report.duplicates_by_partition = v["duplicates_by_partition"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(p, n)| Some((p.parse().ok()?, n.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    report.unencrypted = n("unencrypted");
    report.malformed = n("malformed");
    report.problems = v["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let _ = std::fs::write(spec.dir.join("report.txt"), report.render());
    report
}

impl Sampler {
    /// Stops sampling; each event's pause is the longest stall from the event to
    /// the next one (or the end of the load: after it a quiet group is idle, not
    /// paused).
    fn finish_into(self, events: &[(String, Duration)], end: Duration, report: &mut ChurnReport) {
        for (i, (name, at)) in events.iter().enumerate() {
            let until = events.get(i + 1).map_or(end, |(_, t)| *t).min(end);
            let pause = (*at < end).then(|| self.longest_stall(*at, until));
            report.pauses.push((name.clone(), pause));
        }
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::held_partitions;

    #[test]
    fn held_partitions_follow_incremental_assignments() {
        let log = [
            r#"{"message":"partitions assigned","partitions":"churn[1,3]"}"#,
            r#"{"message":"progress: 10 records/s","partitions":"churn[9]"}"#,
            r#"{"message":"partitions assigned","partitions":"churn[5]"}"#,
            r#"{"message":"partitions revoked","partitions":"churn[1]"}"#,
            r#"{"message":"partitions assigned","partitions":""}"#,
            "not json",
        ]
        .join("\n");
        assert_eq!(held_partitions(&log, "churn"), vec![3, 5]);
        assert!(held_partitions("", "churn").is_empty());
    }
}
