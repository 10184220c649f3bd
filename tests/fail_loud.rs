//! Issue 18, "fail loud", against the `fieldcrypt` binary (and, where Kafka is
//! involved, a real tansu broker on a free port): output that would be plaintext
//! is refused unless allowed; misspelled markings, config keys and environment
//! variables are named; every hint that suggests a command suggests one that runs
//! as printed; unreachable brokers and missing topics are named in the log and in
//! readiness; a healthy `run` says that it started, was assigned partitions,
//! makes progress and stopped; the JSON log format is JSON on every line; every
//! dead-letter series exists from start-up and survives a rebalance; and
//! `fieldcrypt validate` checks what `run` would, without joining the group.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::broker::{create_topics, free_port, http_get, try_http_get, Broker};
use common::cli::{text, Fc};
use fieldcrypt::avro::binary::{write_bytes, write_long};
use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const BIN: &str = env!("CARGO_BIN_EXE_fieldcrypt");

/// One randomized field: no keyset keys needed, only the KEK.
const NOTE: &str = r#"{"type":"record","name":"Note","namespace":"t","fields":[
    {"name":"id","type":"long"},
    {"name":"text","type":"string","sensitive":true}]}"#;

/// The same record with nothing marked.
const PLAIN_NOTE: &str = r#"{"type":"record","name":"Note","namespace":"t","fields":[
    {"name":"id","type":"long"},
    {"name":"text","type":"string"}]}"#;

/// The binary in `dir`, deaf to the caller's FIELDCRYPT_* and RUST_LOG.
fn command(dir: &Path) -> Command {
    Fc::new(BIN).command(dir)
}

fn fc(dir: &Path, args: &[&str]) -> Output {
    Fc::new(BIN).output(dir, args)
}

/// Runs a command that must succeed; returns stdout + stderr.
fn ok(dir: &Path, args: &[&str]) -> String {
    Fc::new(BIN).ok(dir, args)
}

/// A command line's words (none of them holds a space).
fn argv(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Runs a command that must fail with one error and no panic; returns stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    Fc::new(BIN).fails(dir, args)
}

/// The `fieldcrypt ...` commands a message quotes in backticks.
fn backticked(msg: &str) -> Vec<String> {
    msg.split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with("fieldcrypt "))
        .map(str::to_string)
        .collect()
}

/// Runs a command as a message printed it (the binary for `fieldcrypt`) from `dir`.
fn run_as_printed(dir: &Path, cmd: &str) -> String {
    assert!(
        !cmd.contains(['\'', '"', '\\']),
        "a plain command line: {cmd}"
    );
    let words: Vec<&str> = cmd.split_whitespace().collect();
    assert_eq!(words[0], "fieldcrypt", "{cmd}");
    ok(dir, &words[1..])
}

/// A working directory with a KEK (`keys init` with the defaults) and the schemas.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["keys", "init"]);
    std::fs::write(dir.path().join("note.avsc"), NOTE).unwrap();
    std::fs::write(dir.path().join("plain.avsc"), PLAIN_NOTE).unwrap();
    dir
}

/// A `run` config: the defaults' KEK and keyset beside it, tansu-friendly group
/// timings plus `props`, the metrics listener, then `tail` (routes, other sections).
fn run_config(
    bootstrap: &str,
    group: &str,
    listen: &str,
    props: &[(&str, &str)],
    progress_seconds: u64,
    tail: &str,
) -> String {
    let mut p =
        String::from("\"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"1000\"");
    for (k, v) in props {
        p.push_str(&format!(", \"{k}\" = \"{v}\""));
    }
    format!(
        "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"{group}\"\nproperties = {{ {p} }}\n\
         [metrics]\nlisten = \"{listen}\"\nprogress_seconds = {progress_seconds}\n{tail}\n"
    )
}

fn route(source: &str, target: &str, schema: &str) -> String {
    format!(
        "[[routes]]\nsource = \"{source}\"\ntarget = \"{target}\"\nvalue_schema = \"{schema}\"\n"
    )
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn listen() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Polls `f` until true; on timeout panics with `what` and `context()`.
fn wait_for(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "timed out after {timeout:?} waiting for {what}:\n{}",
        context()
    );
}

/// A running `fieldcrypt` whose stderr (a pipe) is collected as it comes; killed
/// when dropped, so a failed test leaves nothing behind.
struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn spawn(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut child = command(dir)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs the binary");
        let err = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(err);
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
        Proc {
            child,
            log,
            reader: Some(reader),
        }
    }

    /// Its stderr so far.
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until stderr satisfies `f`.
    fn wait_log(&self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) {
        wait_for(timeout, what, || f(&self.log()), || self.log());
    }

    /// SIGTERM, then its exit status and complete stderr.
    fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within 40 s of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.log())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over HTTP, `None` while nothing listens.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    try_http_get(addr, path).ok()
}

fn metrics(addr: &str) -> String {
    http_get(addr, "/metrics").1
}

/// The value of exactly this series (`name{labels}` as the text format writes
/// it, labels sorted); `None` when the series does not exist.
fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn wait_ready(p: &Proc, addr: &str) {
    wait_for(
        Duration::from_secs(60),
        "/health/ready to answer 200",
        || get(addr, "/health/ready").is_some_and(|(s, _)| s == 200),
        || p.log(),
    );
}

/// A raw Avro `Note` (id, text).
fn note(id: i64, text: &str) -> Vec<u8> {
    let mut v = Vec::new();
    write_long(&mut v, id);
    write_bytes(&mut v, text.as_bytes());
    v
}

fn produce(bootstrap: &str, topic: &str, partition: i32, value: &[u8]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    p.send(
        BaseRecord::to(topic)
            .key("k")
            .payload(value)
            .partition(partition),
    )
    .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
}

// ---- plaintext output is refused unless allowed ----

#[test]
fn encrypt_file_refuses_a_schema_that_encrypts_nothing_unless_allow_unencrypted() {
    let w = workdir();
    let d = w.path();
    ok(d, &argv("sample --schema plain.avsc --count 20 in.avro"));
    let err = fails(d, &["encrypt-file", "in.avro", "out.avro"]);
    assert!(
        err.contains("nothing in its schema would be encrypted")
            && err.contains("--allow-unencrypted"),
        "{err}"
    );
    assert!(!d.join("out.avro").exists(), "no output file is left");

    ok(
        d,
        &argv("encrypt-file --allow-unencrypted in.avro out.avro"),
    );
    let records = ok(d, &["cat", "out.avro"]);
    assert_eq!(
        records.lines().filter(|l| l.starts_with('{')).count(),
        20,
        "{records}"
    );
}

#[test]
fn run_refuses_a_route_whose_misspelled_rule_selects_nothing_until_the_route_allows_it() {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    create_topics(&bs, &[("notes", 1), ("out.notes", 1), ("dlq.notes", 1)]);
    let w = workdir();
    let d = w.path();
    let addr = listen();
    // Rule #1 names "t.Nte"; with unmatched rules ignored, nothing is selected.
    let rules = "[schema]\nunmatched_rules = \"ignore\"\n[[rules]]\nrecord = \"t.Nte\"\nfields = [\"text\"]\n";
    let refused = run_config(
        &bs,
        "misspelled-rule",
        &addr,
        &[],
        0,
        &format!("{rules}{}", route("notes", "out.notes", "plain.avsc")),
    );
    write(d, "run.toml", &refused);
    let err = fails(d, &["run", "-c", "run.toml"]);
    assert!(
        err.contains("rule #1 names record \"t.Nte\"") && err.contains("allow_unencrypted = true"),
        "{err}"
    );
    assert!(get(&addr, "/health/live").is_none(), "it did not start");

    write(
        d,
        "run.toml",
        &format!("{refused}allow_unencrypted = true\n"),
    );
    let p = Proc::spawn(d, &["run", "-c", "run.toml"], &[]);
    wait_ready(&p, &addr);
    produce(&bs, "notes", 0, &note(7, "nothing secret"));
    let out = common::broker::consume(&bs, "out.notes", 1, Duration::from_secs(60));
    assert_eq!(out.len(), 1, "{}", p.log());
    assert_eq!(
        out[0].payload(),
        Some(&note(7, "nothing secret")[..]),
        "passed through as it was"
    );
    assert_eq!(
        series(
            &metrics(&addr),
            "fieldcrypt_unencrypted_records_total{topic=\"notes\"}"
        ),
        Some(1.0),
        "and counted as unencrypted"
    );
    let (status, log) = p.terminate();
    assert!(status.success(), "{log}");
}

#[test]
fn plan_refuses_a_misspelled_sensitive_attribute_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (attr, field) in [("sensitve", "ssn"), ("Sensitive", "card")] {
        let schema = format!(
            r#"{{"type":"record","name":"N","namespace":"t","fields":[
                {{"name":"id","type":"long"}},
                {{"name":"{field}","type":"string","{attr}":true}}]}}"#
        );
        write(d, "s.avsc", &schema);
        let err = fails(d, &["plan", "s.avsc"]);
        assert!(
            err.contains(&format!("t.N.{field}"))
                && err.contains(&format!("\"{attr}\""))
                && err.contains("\"sensitive\""),
            "{attr}: {err}"
        );
    }
}

// ---- hints name the config and run as printed ----

/// `w/encrypt.toml` keeping its KEK in `w/keys/`, run from the parent directory.
fn nested_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("w")).unwrap();
    write(d, "w/encrypt.toml", "[kms]\nkek_file = \"keys/kek.key\"\n");
    std::fs::copy(
        common::broker::repo().join("schemas/customer.avsc"),
        d.join("w/customer.avsc"),
    )
    .unwrap();
    dir
}

#[test]
fn a_missing_kek_hint_is_a_keys_init_command_that_runs_as_printed() {
    let dir = nested_config();
    let d = dir.path();
    ok(
        d,
        &argv("sample --schema w/customer.avsc --count 5 in.avro"),
    );
    let err = fails(d, &argv("encrypt-file -c w/encrypt.toml in.avro out.avro"));
    let cmds = backticked(&err);
    assert_eq!(
        cmds,
        vec!["fieldcrypt keys init --config w/encrypt.toml".to_string()],
        "{err}"
    );
    run_as_printed(d, &cmds[0]);
    assert!(
        d.join("w/keys/kek.key").is_file(),
        "the KEK is beside the config, where it says"
    );
    assert!(!d.join("keys").exists(), "not in the working directory");
}

#[test]
fn a_missing_kek_that_wrapped_keys_is_named_by_fingerprint_and_keys_init_is_not_offered() {
    let dir = nested_config();
    let d = dir.path();
    let init = ok(d, &argv("keys init -c w/encrypt.toml"));
    let kek = init
        .split(['(', ')'])
        .find(|s| s.starts_with("local:"))
        .unwrap_or_else(|| panic!("the KEK's id: {init}"))
        .to_string();
    ok(
        d,
        &argv("keys create -c w/encrypt.toml --purpose deterministic --domain default"),
    );
    std::fs::remove_file(d.join("w/keys/kek.key")).unwrap();
    ok(
        d,
        &argv("sample --schema w/customer.avsc --count 5 in.avro"),
    );

    let err = fails(d, &argv("encrypt-file -c w/encrypt.toml in.avro out.avro"));
    assert!(err.contains(&kek) && err.contains("restore"), "{err}");
    // It may warn what `keys init` would do; it must not offer it as the fix.
    assert!(
        !err.contains("create it with")
            && !err.contains("fieldcrypt keys init --config w/encrypt.toml"),
        "keys init is not the fix: {err}"
    );
    // `keys init` never passes silently for the fix: it refuses naming the KEK,
    // or it makes a new KEK and warns that the keyset needs that other one.
    let o = fc(d, &argv("keys init -c w/encrypt.toml"));
    let (out, err) = text(&o);
    assert!(err.contains(&kek), "{out}{err}");
    if o.status.success() {
        assert!(err.contains("warning"), "{err}");
    } else {
        assert!(!d.join("w/keys/kek.key").exists(), "refused: no new KEK");
    }
    // Either way the keyset still says which KEK it needs.
    let err = fails(d, &argv("encrypt-file -c w/encrypt.toml in.avro out.avro"));
    assert!(err.contains(&kek), "{err}");
}

#[test]
fn keys_rotate_of_an_unknown_domain_prints_create_commands_that_run_as_printed() {
    let dir = nested_config();
    let d = dir.path();
    ok(d, &argv("keys init -c w/encrypt.toml"));
    let err = fails(d, &argv("keys rotate -c w/encrypt.toml --domain nosuch"));
    let cmds = backticked(&err);
    assert!(!cmds.is_empty(), "{err}");
    for c in &cmds {
        assert!(
            c.starts_with("fieldcrypt keys create --config w/encrypt.toml --purpose ")
                && c.ends_with(" --domain nosuch"),
            "{c}"
        );
        run_as_printed(d, c);
    }
    let listed = ok(d, &argv("keys list -c w/encrypt.toml"));
    assert_eq!(
        listed.lines().filter(|l| l.contains("nosuch")).count(),
        cmds.len(),
        "each command created its key: {listed}"
    );
    ok(d, &argv("keys rotate -c w/encrypt.toml --domain nosuch"));
}

#[test]
fn encrypt_file_names_every_missing_key_at_once_with_commands_that_run_as_printed() {
    let dir = nested_config();
    let d = dir.path();
    ok(d, &argv("keys init -c w/encrypt.toml"));
    ok(
        d,
        &argv("sample --schema w/customer.avsc --count 5 in.avro"),
    );
    let args = [
        "encrypt-file",
        "-c",
        "w/encrypt.toml",
        "in.avro",
        "out.avro",
    ];
    let err = fails(d, &args);
    let mut cmds = backticked(&err);
    cmds.sort();
    assert_eq!(
        cmds,
        vec![
            "fieldcrypt keys create --config w/encrypt.toml --purpose blind-index --domain email"
                .to_string(),
            "fieldcrypt keys create --config w/encrypt.toml --purpose deterministic --domain default"
                .to_string(),
        ],
        "both missing keys in one error: {err}"
    );
    for c in &cmds {
        run_as_printed(d, c);
    }
    ok(d, &args);
    assert!(d.join("out.avro").is_file());
}

#[test]
fn plan_lists_the_keys_the_keyset_lacks_with_commands_that_run_as_printed() {
    let dir = nested_config();
    let d = dir.path();
    ok(d, &argv("keys init -c w/encrypt.toml"));
    let args = ["plan", "-c", "w/encrypt.toml", "w/customer.avsc"];
    let out = ok(d, &args);
    let cmds: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("fieldcrypt keys create"))
        .collect();
    assert_eq!(cmds.len(), 2, "{out}");
    assert!(out.contains("lacks 2"), "{out}");
    for c in &cmds {
        assert!(c.contains("--config w/encrypt.toml"), "{c}");
        run_as_printed(d, c);
    }
    let out = ok(d, &args);
    assert!(out.contains("has them all"), "{out}");
}

// ---- the environment ----

#[test]
fn config_strings_take_environment_variables_and_an_unset_one_is_named_with_its_key() {
    let w = workdir();
    let d = w.path();
    write(
        d,
        "env.toml",
        &run_config(
            "127.0.0.1:9",
            "${FC_TEST_GROUP}",
            &listen(),
            &[],
            0,
            &route("notes", "secure.notes", "note.avsc"),
        ),
    );
    for args in [
        &argv("validate --offline -c env.toml")[..],
        &["run", "-c", "env.toml"][..],
    ] {
        let o = fc(d, args);
        let (out, err) = text(&o);
        assert!(!o.status.success());
        let all = out + &err;
        assert!(
            all.contains("FC_TEST_GROUP") && all.contains("kafka.group_id"),
            "{args:?}: {all}"
        );
    }
    let o = command(d)
        .args(["validate", "--offline", "-c", "env.toml"])
        .env("FC_TEST_GROUP", "from-the-environment")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("ok    config: env.toml"), "{out}");
}

#[test]
fn fieldcrypt_config_in_the_environment_is_the_config_validate_checks() {
    let w = workdir();
    let d = w.path();
    write(
        d,
        "env.toml",
        &run_config(
            "127.0.0.1:9",
            "env-config",
            &listen(),
            &[],
            0,
            &route("notes", "secure.notes", "note.avsc"),
        ),
    );
    let o = command(d)
        .args(["validate", "--offline"])
        .env("FIELDCRYPT_CONFIG", "env.toml")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("ok    config: env.toml")
            && out.contains("ok    routes[0] notes -> secure.notes"),
        "{out}"
    );
    let defaults = fc(d, &["validate", "--offline"]);
    assert!(
        text(&defaults).0.contains("embedded defaults"),
        "without it, the defaults: {}",
        text(&defaults).0
    );
}

// ---- broker problems are named ----

#[test]
fn an_unreachable_bootstrap_address_is_named_in_a_few_log_lines_and_in_readiness() {
    let w = workdir();
    let d = w.path();
    let closed = format!("127.0.0.1:{}", free_port());
    let addr = listen();
    write(
        d,
        "run.toml",
        &run_config(
            &closed,
            "unreachable",
            &addr,
            &[],
            0,
            &route("notes", "secure.notes", "note.avsc"),
        ),
    );
    let started = Instant::now();
    let p = Proc::spawn(d, &["run", "-c", "run.toml"], &[]);
    let readiness = || get(&addr, "/health/ready").unwrap_or_default();
    wait_for(
        Duration::from_secs(15),
        "readiness to name the unreachable brokers",
        || {
            let (status, body) = readiness();
            status == 503 && body.contains("brokers unreachable") && body.contains(&closed)
        },
        || format!("{:?}\n{}", readiness(), p.log()),
    );
    p.wait_log("the address in the log", Duration::from_secs(15), |l| {
        l.lines()
            .any(|l| l.contains(&closed) && (l.contains("ERROR") || l.contains("WARN")))
    });
    // Ten seconds of librdkafka reconnecting: repeats are held back.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    let lines = p.log().lines().count();
    assert!(lines < 40, "{lines} lines in 10 s:\n{}", p.log());
    let (status, log) = p.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("stopped:"), "{log}");
}

#[test]
fn a_missing_source_topic_is_named_in_readiness_and_in_the_log() {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    create_topics(&bs, &[("secure.notes", 1)]);
    let w = workdir();
    let d = w.path();
    let addr = listen();
    write(
        d,
        "run.toml",
        &run_config(
            &bs,
            "missing-topic",
            &addr,
            &[],
            0,
            &route("absent.notes", "secure.notes", "note.avsc"),
        ),
    );
    let p = Proc::spawn(d, &["run", "-c", "run.toml"], &[]);
    let readiness = || get(&addr, "/health/ready").unwrap_or_default();
    wait_for(
        Duration::from_secs(30),
        "readiness to name the missing topic",
        || {
            let (status, body) = readiness();
            status == 503 && body.contains("absent.notes") && body.contains("missing")
        },
        || format!("{:?}\n{}", readiness(), p.log()),
    );
    p.wait_log("the topic in the log", Duration::from_secs(15), |l| {
        l.lines()
            .any(|l| l.contains("WARN") && l.contains("absent.notes") && l.contains("do not exist"))
    });
}

#[test]
fn librdkafka_debug_lines_reach_the_log_under_target_librdkafka_when_the_filter_asks() {
    let w = workdir();
    let d = w.path();
    let closed = format!("127.0.0.1:{}", free_port());
    let config = |addr: &str| {
        run_config(
            &closed,
            "rdkafka-log",
            addr,
            &[("debug", "broker")],
            0,
            &route("notes", "secure.notes", "note.avsc"),
        )
    };
    write(d, "debug.toml", &config(&listen()));
    write(d, "info.toml", &config(&listen()));
    let json = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok();
    let rdkafka_at = |log: &str, level: &str| {
        log.lines()
            .filter_map(json)
            .any(|v| v["target"] == "librdkafka" && v["level"] == level)
    };
    let debug = Proc::spawn(
        d,
        &argv("run -c debug.toml --log info,librdkafka=debug --log-format json"),
        &[],
    );
    let info = Proc::spawn(d, &argv("run -c info.toml --log-format json"), &[]);
    debug.wait_log("librdkafka debug lines", Duration::from_secs(20), |l| {
        rdkafka_at(l, "DEBUG")
    });
    // Its connection errors come after its first debug lines ("Added new broker").
    info.wait_log(
        "librdkafka's connection error",
        Duration::from_secs(20),
        |l| rdkafka_at(l, "ERROR"),
    );
    assert!(
        !rdkafka_at(&info.log(), "DEBUG"),
        "at the default level librdkafka's debug lines are filtered out:\n{}",
        info.log()
    );
}

// ---- a healthy run is visible ----

#[test]
fn run_logs_its_start_its_partitions_its_progress_and_a_summary_when_stopped() {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    create_topics(&bs, &[("notes", 1), ("secure.notes", 1), ("dlq.notes", 1)]);
    let w = workdir();
    let d = w.path();
    let addr = listen();
    write(
        d,
        "run.toml",
        &run_config(
            &bs,
            "${FC_TEST_GROUP}",
            &addr,
            &[],
            1,
            &route("notes", "secure.notes", "note.avsc"),
        ),
    );
    let p = Proc::spawn(
        d,
        &["run", "-c", "run.toml"],
        &[("FC_TEST_GROUP", "visible-group")],
    );
    p.wait_log(
        "a progress line after the assignment",
        Duration::from_secs(60),
        |l| {
            l.contains("partitions assigned")
                && l.lines()
                    .any(|l| l.contains("progress:") && l.contains("1 partition(s) assigned"))
        },
    );
    let (status, log) = p.terminate();
    assert!(status.success(), "SIGTERM exits 0:\n{log}");
    let started = log
        .lines()
        .find(|l| l.contains(" started: "))
        .unwrap_or_else(|| panic!("a start-up line:\n{log}"));
    for want in [
        env!("CARGO_PKG_VERSION"),
        "INFO",
        "notes -> secure.notes",
        addr.as_str(),
        "group_id=visible-group",
    ] {
        assert!(started.contains(want), "{want} in {started}");
    }
    let stopped = log.lines().last().unwrap_or_default();
    assert!(
        stopped.starts_with("stopped: 0 records consumed"),
        "the summary is last:\n{log}"
    );
    assert!(
        !log.contains("\x1b["),
        "no ANSI escapes when stderr is a pipe:\n{log}"
    );
}

#[test]
fn fieldcrypt_log_warn_silences_the_info_lines_but_not_the_stopped_summary() {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    create_topics(&bs, &[("notes", 1), ("secure.notes", 1)]);
    let w = workdir();
    let d = w.path();
    let addr = listen();
    write(
        d,
        "run.toml",
        &run_config(
            &bs,
            "quiet",
            &addr,
            &[],
            1,
            &route("notes", "secure.notes", "note.avsc"),
        ),
    );
    let p = Proc::spawn(d, &["run", "-c", "run.toml"], &[("FIELDCRYPT_LOG", "warn")]);
    wait_ready(&p, &addr);
    // Progress lines come every second at info: two seconds would show them.
    std::thread::sleep(Duration::from_secs(2));
    let (status, log) = p.terminate();
    assert!(status.success(), "{log}");
    assert!(
        !log.contains("started")
            && !log.contains("partitions assigned")
            && !log.contains("progress:"),
        "nothing at info:\n{log}"
    );
    assert!(log.contains("stopped: "), "{log}");
}

#[test]
fn json_log_format_makes_every_stderr_line_one_json_object() {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    create_topics(&bs, &[("notes", 1), ("secure.notes", 1)]);
    let w = workdir();
    let d = w.path();
    let addr = listen();
    write(
        d,
        "run.toml",
        &run_config(
            &bs,
            "json-lines",
            &addr,
            &[],
            1,
            &route("notes", "secure.notes", "note.avsc"),
        ),
    );
    let p = Proc::spawn(d, &argv("run -c run.toml --log-format json"), &[]);
    p.wait_log("a progress event", Duration::from_secs(60), |l| {
        l.contains("partitions assigned") && l.contains("\"message\":\"progress:")
    });
    let (status, log) = p.terminate();
    assert!(status.success(), "{log}");
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            for k in ["timestamp", "level", "target", "message"] {
                assert!(v[k].is_string(), "{k} in {l}");
            }
            v
        })
        .collect();
    let started = events
        .iter()
        .find(|v| v["message"].as_str().unwrap().contains(" started: "))
        .unwrap_or_else(|| panic!("a start-up event:\n{log}"));
    assert_eq!(
        started["routes"],
        serde_json::json!(["notes -> secure.notes"])
    );
    assert_eq!(started["workers"], 1, "numbers stay numbers");
    let last = events.last().unwrap();
    assert!(
        last["message"].as_str().unwrap().starts_with("stopped: ") && last["level"] == "INFO",
        "{last}"
    );

    // A fatal error before anything runs (a multi-line TOML error) is one line too.
    write(d, "bad.toml", "[kafka]\nbootstrap_servers = \n");
    let o = fc(d, &argv("run -c bad.toml --log-format json"));
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert!(v["message"].as_str().unwrap().contains("bad.toml"), "{v}");
}

// ---- metrics exist before the first event ----

#[test]
fn every_dead_letter_class_is_counted_from_zero_and_a_count_survives_a_rebalance() {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    create_topics(&bs, &[("notes", 2), ("secure.notes", 2), ("dlq.notes", 1)]);
    let w = workdir();
    let d = w.path();
    let (a_addr, b_addr) = (listen(), listen());
    let cfg = |addr: &str| {
        run_config(
            &bs,
            "counted",
            addr,
            &[],
            0,
            &route("notes", "secure.notes", "note.avsc"),
        )
    };
    write(d, "a.toml", &cfg(&a_addr));
    write(d, "b.toml", &cfg(&b_addr));
    let a = Proc::spawn(d, &["run", "-c", "a.toml"], &[]);
    wait_ready(&a, &a_addr);

    let m = metrics(&a_addr);
    for class in ["format", "schema", "policy", "crypto", "delivery"] {
        let s = format!("fieldcrypt_dead_letters_total{{class=\"{class}\",topic=\"notes\"}}");
        assert_eq!(series(&m, &s), Some(0.0), "{s} before the first record");
    }
    for s in [
        "fieldcrypt_errors_total{code=\"schema_mismatch\"}",
        "fieldcrypt_records_consumed_total{topic=\"notes\"}",
    ] {
        assert_eq!(series(&m, s), Some(0.0), "{s} before the first record");
    }

    // Not a Note: a string length that is negative.
    produce(&bs, "notes", 0, b"\x02\xff not avro");
    let format_dead = "fieldcrypt_dead_letters_total{class=\"format\",topic=\"notes\"}";
    wait_for(
        Duration::from_secs(30),
        "the dead letter to be counted",
        || series(&metrics(&a_addr), format_dead) == Some(1.0),
        || metrics(&a_addr) + &a.log(),
    );
    let m = metrics(&a_addr);
    assert_eq!(
        series(&m, "fieldcrypt_errors_total{code=\"schema_mismatch\"}"),
        Some(1.0)
    );
    assert_eq!(
        series(&m, "fieldcrypt_records_consumed_total{topic=\"notes\"}"),
        Some(1.0)
    );

    // A second instance in the group: the first gives a partition up.
    let b = Proc::spawn(d, &["run", "-c", "b.toml"], &[]);
    let assigned = |addr: &str| {
        get(addr, "/metrics")
            .and_then(|(_, m)| series(&m, "fieldcrypt_assigned_partitions"))
            .unwrap_or(-1.0)
    };
    wait_for(
        Duration::from_secs(60),
        "the rebalance to give each instance one partition",
        || {
            series(
                &metrics(&a_addr),
                "fieldcrypt_rebalances_total{kind=\"revoke\"}",
            )
            .is_some_and(|n| n >= 1.0)
                && assigned(&a_addr) == 1.0
                && assigned(&b_addr) == 1.0
        },
        || format!("{}\n---\n{}", a.log(), b.log()),
    );
    let m = metrics(&a_addr);
    assert_eq!(
        series(&m, format_dead),
        Some(1.0),
        "the count survives the rebalance"
    );
    for class in ["schema", "policy", "crypto", "delivery"] {
        let s = format!("fieldcrypt_dead_letters_total{{class=\"{class}\",topic=\"notes\"}}");
        assert_eq!(series(&m, &s), Some(0.0), "{s} after the rebalance");
    }
    let (sa, la) = a.terminate();
    let (sb, lb) = b.terminate();
    assert!(sa.success() && sb.success(), "{la}\n---\n{lb}");
}

// ---- decrypting routes need the encrypted schema ----

#[test]
fn a_decrypting_route_given_the_plain_schema_is_refused_until_it_has_the_encrypted_one() {
    let w = workdir();
    let d = w.path();
    std::fs::create_dir(d.join("w")).unwrap();
    write(d, "w/note.avsc", NOTE);
    let config = |schema: &str| {
        format!(
            "[kms]\nkek_file = \"../.fieldcrypt/kek.key\"\n[pipeline]\nmode = \"decrypt\"\n{}",
            run_config(
                &format!("127.0.0.1:{}", free_port()),
                "decryptor",
                &listen(),
                &[],
                0,
                &route("secure.notes", "plain.notes", schema),
            )
        )
    };
    write(d, "w/dec.toml", &config("note.avsc"));
    let err = fails(d, &["run", "-c", "w/dec.toml"]);
    assert!(err.contains("--output-schema"), "{err}");

    let o = fc(d, &argv("validate --offline -c w/dec.toml"));
    let (out, _) = text(&o);
    assert!(!o.status.success(), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("FAIL  routes[0]"))
        .unwrap_or_else(|| panic!("a FAIL line for the route:\n{out}"));
    // Its hint writes the encrypted schema; the route then takes that.
    let cmds = backticked(line);
    assert_eq!(cmds.len(), 1, "{line}");
    assert!(
        cmds[0].starts_with("fieldcrypt plan --config w/dec.toml "),
        "{line}"
    );
    run_as_printed(d, &cmds[0]);
    let written = cmds[0].rsplit(' ').next().unwrap();
    let encrypted = Path::new(written).file_name().unwrap().to_str().unwrap();
    assert!(d.join("w").join(encrypted).is_file(), "{written}");

    write(d, "w/dec.toml", &config(encrypted));
    let o = fc(d, &argv("validate --offline -c w/dec.toml"));
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("ok    routes[0] secure.notes -> plain.notes: decrypts 1 field(s)"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
}

// ---- validate against a live broker ----

#[test]
fn validate_checks_brokers_and_topics_without_joining_the_group() {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    create_topics(&bs, &[("notes", 1), ("secure.notes", 1)]);
    let w = workdir();
    let d = w.path();
    let addr = listen();
    let cfg = |bootstrap: &str, source: &str| {
        run_config(
            bootstrap,
            "validated",
            &addr,
            &[],
            0,
            &route(source, "secure.notes", "note.avsc"),
        )
    };
    write(d, "run.toml", &cfg(&bs, "notes"));
    write(d, "missing.toml", &cfg(&bs, "absent.notes"));
    let closed = format!("127.0.0.1:{}", free_port());
    write(d, "closed.toml", &cfg(&closed, "notes"));

    // A member of the group, to see whether validate joins it.
    let member = Proc::spawn(d, &["run", "-c", "run.toml"], &[]);
    wait_ready(&member, &addr);
    let rebalances = || {
        let m = metrics(&addr);
        (
            series(&m, "fieldcrypt_rebalances_total{kind=\"assign\"}"),
            series(&m, "fieldcrypt_rebalances_total{kind=\"revoke\"}"),
        )
    };
    let before = rebalances();
    // The closed port takes validate's metadata timeout: let it run meanwhile.
    let unreachable = command(d)
        .args(["validate", "-c", "closed.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let o = fc(d, &["validate", "-c", "run.toml"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains(&format!("ok    kafka: {bs}"))
            && out.contains("ok    source topics: present: notes"),
        "{out}"
    );

    let o = fc(d, &["validate", "-c", "missing.toml"]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("ok    kafka"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL  source topics") && l.contains("absent.notes")),
        "{out}"
    );

    let o = unreachable.wait_with_output().unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL  kafka") && l.contains(&closed)),
        "{out}"
    );

    // A join would have rebalanced the member within a few heartbeats (1 s) by now.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rebalances(), before, "validate never joined the group");
    assert_eq!(
        series(&metrics(&addr), "fieldcrypt_assigned_partitions"),
        Some(1.0)
    );
    let (status, log) = member.terminate();
    assert!(status.success(), "{log}");
}

// ---- kafka.properties and --help ----

#[test]
fn a_misspelled_kafka_property_is_refused_at_start_up_naming_its_key() {
    let w = workdir();
    let d = w.path();
    write(
        d,
        "run.toml",
        &run_config(
            &format!("127.0.0.1:{}", free_port()),
            "typo",
            &listen(),
            &[("fetch.max.bytez", "1")],
            0,
            &route("notes", "secure.notes", "note.avsc"),
        ),
    );
    let err = fails(d, &["run", "-c", "run.toml"]);
    assert!(
        err.contains("kafka.properties.\"fetch.max.bytez\""),
        "{err}"
    );
}

#[test]
fn encrypt_file_help_describes_input_output_and_the_config_option() {
    let dir = tempfile::tempdir().unwrap();
    let help = ok(dir.path(), &["encrypt-file", "--help"]);
    let line = |what: &str| {
        help.lines()
            .find(|l| l.trim_start().starts_with(what))
            .unwrap_or_else(|| panic!("{what} in:\n{help}"))
            .to_string()
    };
    assert!(line("<INPUT>").contains("Avro container file"), "{help}");
    assert!(line("<OUTPUT>").contains("encrypted file"), "{help}");
    let config = line("-c, --config");
    assert!(
        config.contains("config file") && config.contains("FIELDCRYPT_CONFIG"),
        "{config}"
    );
    assert!(help.contains("--allow-unencrypted"), "{help}");
}
