//! `cargo xtask loadtest`: the docker load-test topology without Docker, every
//! service a process on 127.0.0.1 started (and stopped) here through the same
//! harness the integration tests use:
//!
//! - tansu (Kafka protocol, in memory), moto's KMS emulator holding the KEK
//!   (`alias/fieldcrypt`), the project's test Schema Registry (values are
//!   Confluent-framed), `fieldcrypt run` encrypting `cdc.customers` →
//!   `secure.cdc.customers`, and Prometheus scraping it every second with
//!   `docker/prometheus/alerts.yml` as rules;
//! - then `fieldcrypt loadgen --verify` once per rate, and a table.
//!
//! Per rate (numbers from loadgen's `--report` JSON but the CPU): the achieved
//! produce rate, records, seen / missing / duplicates / unencrypted (checked
//! without keys), end-to-end latency p50/p90/p99, and fieldcrypt's CPU seconds per
//! million records over the loadgen run (its verification tail and idle polling
//! included, so low rates look expensive). After the runs Prometheus must report
//! `up{job="fieldcrypt"} == 1` and `sum(fieldcrypt_records_produced_total)` at
//! least the records produced, and fieldcrypt must exit 0 on SIGTERM. Fails (exit
//! 1) if any check fails; every run is still reported.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fieldcrypt_harness::broker::{create_topics, free_port, repo, try_http_get, Broker, Registry};
use fieldcrypt_harness::kms::{Moto, REGION};

use crate::proc::{self, Process};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target produce rates in records/s, run in order; 0 = as fast as possible.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,20000,0")]
    rates: Vec<u64>,
    /// Seconds of producing per rate.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Distinct record keys (row ids).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Partitions of the source and target topics.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// librdkafka fetch.wait.max.ms for fieldcrypt's consumer (tansu holds a fetch
    /// this long even when records arrive, so it is the floor of the latency).
    #[arg(long)]
    fetch_wait_ms: Option<u32>,
    /// The fieldcrypt binary (copied once into the work directory).
    #[arg(long, default_value = "target/release/fieldcrypt")]
    fieldcrypt: PathBuf,
    /// Work directory (recreated): config, keyset, logs, reports, results.tsv.
    #[arg(long, default_value = "loadtest-out")]
    out: PathBuf,
}

const SOURCE: &str = "cdc.customers";
const TARGET: &str = "secure.cdc.customers";
const KMS_ALIAS: &str = "alias/fieldcrypt";
const VERIFY_TIMEOUT: u64 = 60;
const READY: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(45);

/// One rate's row.
struct Row {
    label: String,
    cells: Vec<String>,
    records: u64,
    ok: bool,
}

pub fn main(a: Args) -> Result<()> {
    if a.rates.is_empty() || a.seconds == 0 || a.keys == 0 || a.partitions < 1 {
        bail!("--rates must name a rate; --seconds, --keys and --partitions must be positive");
    }
    let root = repo();
    for (tool, hint) in [
        ("prometheus", "apt-get install prometheus"),
        ("promtool", "apt-get install prometheus"),
    ] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is missing ({hint})");
        }
    }
    let out = root.join(&a.out);
    proc::fresh_dir(&out)?;
    let fc = proc::fieldcrypt_copy(&root.join(&a.fieldcrypt), &out)?;
    let hz = proc::clk_tck()? as f64;
    let mut failures: Vec<String> = Vec::new();

    println!("== 1/7 broker, KMS emulator, schema registry, topics");
    let broker = Broker::start();
    let bs = broker.bootstrap();
    // Dummy credentials for moto, inherited by fieldcrypt; endpoint_url keeps every
    // KMS call on 127.0.0.1.
    let moto = Moto::start();
    std::env::set_var("AWS_REGION", REGION);
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let arn = moto.create_key(Some(KMS_ALIAS));
    println!(
        "tansu {bs}; moto {} with KEK {arn} ({KMS_ALIAS})",
        moto.url()
    );
    let registry = Registry::start();
    println!("schema registry {}", registry.url());
    create_topics(
        &bs,
        &[
            (SOURCE, a.partitions),
            (TARGET, a.partitions),
            ("dlq.cdc.customers", 1),
        ],
    );

    println!("== 2/7 config and keyset");
    let metrics = format!("127.0.0.1:{}", free_port());
    let cfg = out.join("fieldcrypt.toml");
    let fetch_wait = a
        .fetch_wait_ms
        .map(|ms| format!("\"fetch.wait.max.ms\" = \"{ms}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        &cfg,
        format!(
            "# Written by cargo xtask loadtest.\n\
             [kms]\nprovider = \"aws\"\nkey_id = \"{KMS_ALIAS}\"\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\n\
             [keyset]\nfile = {:?}\n\
             [kafka]\nbootstrap_servers = \"{bs}\"\ngroup_id = \"fieldcrypt-loadtest\"\nclient_id = \"fieldcrypt-loadtest\"\n\
             [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n{fetch_wait}\
             [schema_registry]\nurl = \"{}\"\n\
             [metrics]\nlisten = \"{metrics}\"\n\
             [[routes]]\nsource = \"{SOURCE}\"\ntarget = \"secure.${{topic}}\"\n",
            moto.url(),
            out.join("keyset.json"),
            registry.url()
        ),
    )?;
    proc::create_keys(&fc, &cfg)?;
    let schema = root.join("schemas/customer_cdc.avsc");
    proc::run(
        Command::new(&fc)
            .args(["plan", "--config"])
            .arg(&cfg)
            .arg(&schema)
            .arg("--output-schema")
            .arg(out.join("customer_cdc.encrypted.avsc")),
    )?;

    println!("== 3/7 fieldcrypt run");
    let mut fieldcrypt = Process::spawn(
        "fieldcrypt",
        Command::new(&fc).args(["run", "--config"]).arg(&cfg),
        &out.join("fieldcrypt.log"),
    )?;
    proc::wait_for(&mut fieldcrypt, "fieldcrypt /health/ready", READY, || {
        try_http_get(&metrics, "/health/ready").is_ok_and(|r| r.0 == 200)
    })?;
    println!("fieldcrypt ready on http://{metrics}");

    println!("== 4/7 prometheus");
    let prom_port = free_port();
    let mut prometheus = start_prometheus(&root, &out, &metrics, prom_port)?;
    let prom = format!("127.0.0.1:{prom_port}");

    println!(
        "== 5/7 {} loadgen run(s) of {} s, {} keys, {} partitions",
        a.rates.len(),
        a.seconds,
        a.keys,
        a.partitions
    );
    let mut rows = Vec::new();
    for (i, &rate) in a.rates.iter().enumerate() {
        let n = i + 1;
        let label = if rate == 0 {
            "max".to_string()
        } else {
            rate.to_string()
        };
        if !fieldcrypt.alive() {
            failures.push(format!(
                "run {n} ({label}): not run, fieldcrypt is no longer running"
            ));
            continue;
        }
        let report = out.join(format!("report-{n}-{label}.json"));
        println!("-- run {n}: target {label} records/s for {} s", a.seconds);
        let c0 = fieldcrypt.cpu_ticks();
        let status = Command::new(&fc)
            .args(["loadgen", "--config"])
            .arg(&cfg)
            .args(["--topic", SOURCE, "--schema"])
            .arg(&schema)
            .args([
                "--rate",
                &rate.to_string(),
                "--duration",
                &a.seconds.to_string(),
            ])
            .args([
                "--keys",
                &a.keys.to_string(),
                "--verify",
                "--verify-timeout",
            ])
            .arg(VERIFY_TIMEOUT.to_string())
            .arg("--report")
            .arg(&report)
            .status()
            .context("running fieldcrypt loadgen")?;
        let cpu = match (c0, fieldcrypt.cpu_ticks()) {
            (Some(a), Some(b)) => Some((b - a) as f64 / hz),
            _ => None,
        };
        let row = row(
            &label,
            status.code().unwrap_or(-1),
            &report,
            cpu,
            &mut |f| failures.push(format!("run {n} ({label}): {f}")),
        );
        rows.push(row);
        if !fieldcrypt.alive() {
            failures.push(format!(
                "fieldcrypt exited during run {n} ({label})\n{}",
                fieldcrypt.log_tail()
            ));
        }
    }
    let total: u64 = rows.iter().map(|r| r.records).sum();

    println!("== 6/7 prometheus: up{{job=\"fieldcrypt\"}} and sum(fieldcrypt_records_produced_total) >= {total}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut up, mut produced) = (None, None);
    while Instant::now() < deadline {
        up = prom_query(&prom, "up{job=\"fieldcrypt\"}");
        produced = prom_query(&prom, "sum(fieldcrypt_records_produced_total)");
        if up == Some(1.0) && produced.is_some_and(|p| p >= total as f64) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("prometheus: up = {up:?}, sum(fieldcrypt_records_produced_total) = {produced:?}");
    if up != Some(1.0) {
        failures.push(format!(
            "prometheus: up{{job=\"fieldcrypt\"}} is {up:?}, not 1"
        ));
    }
    if !produced.is_some_and(|p| p >= total as f64) {
        failures.push(format!(
            "prometheus: sum(fieldcrypt_records_produced_total) = {produced:?} < {total} records produced"
        ));
    }
    print_alerts(&prom);
    if fieldcrypt.alive() {
        let status = fieldcrypt.stop(STOP_GRACE)?;
        if status.success() {
            println!("fieldcrypt drained, committed and exited 0 on SIGTERM");
        } else {
            failures.push(format!(
                "fieldcrypt exited with {status} after SIGTERM\n{}",
                fieldcrypt.log_tail()
            ));
        }
    }
    let _ = prometheus.stop(Duration::from_secs(10));

    println!(
        "== 7/7 results (tansu in-memory, {} partitions, {} s per rate, {} keys)\n",
        a.partitions, a.seconds, a.keys
    );
    let head = [
        "target", "rate/s", "records", "seen", "missing", "dups", "unenc", "p50 ms", "p90 ms",
        "p99 ms", "CPU s/M", "result",
    ];
    let mut tsv = head.join("\t") + "\n";
    println!("{}", head.map(|h| format!("{h:>8}")).join(" "));
    for r in &rows {
        let mut cells = vec![r.label.clone()];
        cells.extend(r.cells.iter().cloned());
        cells.push(if r.ok { "ok" } else { "FAILED" }.into());
        println!(
            "{}",
            cells
                .iter()
                .map(|c| format!("{c:>8}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        tsv += &(cells.join("\t") + "\n");
    }
    std::fs::write(out.join("results.tsv"), tsv)?;
    println!("\nrate/s: achieved produce rate; p50/p90/p99: end-to-end latency (produce to encrypted copy read)");
    println!("CPU s/M: fieldcrypt CPU seconds per million records over the whole loadgen run");
    println!("raw results, reports and logs: {}", out.display());
    drop((registry, moto, broker));
    if !failures.is_empty() {
        eprintln!("\nFAILED:");
        for f in &failures {
            eprintln!("  {f}");
        }
        bail!("{} check(s) failed", failures.len());
    }
    println!("all runs passed");
    Ok(())
}

/// One rate's row from loadgen's report; failures go to `fail`.
fn row(label: &str, rc: i32, report: &Path, cpu: Option<f64>, fail: &mut dyn FnMut(String)) -> Row {
    let mut ok = true;
    let mut bad = |f: String, ok: &mut bool| {
        *ok = false;
        fail(f)
    };
    if rc != 0 {
        bad(
            format!("loadgen exited {rc} (verification failed or loadgen error)"),
            &mut ok,
        );
    }
    let parsed: Option<serde_json::Value> = std::fs::read_to_string(report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let Some(r) = parsed else {
        bad(
            format!("no readable report at {}", report.display()),
            &mut ok,
        );
        return Row {
            label: label.into(),
            cells: vec!["-".into(); 10],
            records: 0,
            ok,
        };
    };
    let num = |path: &[&str]| {
        path.iter()
            .try_fold(&r, |v, k| v.get(k))
            .and_then(serde_json::Value::as_f64)
    };
    for k in ["missing", "unencrypted", "malformed"] {
        if let Some(v) = num(&["verify", k]).filter(|v| *v > 0.0) {
            bad(format!("{k} = {v}"), &mut ok);
        }
    }
    if r.get("ok").and_then(serde_json::Value::as_bool) != Some(true) {
        bad("report says ok = false".into(), &mut ok);
    }
    let records = num(&["produce", "records"]).unwrap_or(0.0) as u64;
    let f = |v: Option<f64>, prec: usize| v.map_or("-".into(), |v| format!("{v:.prec$}"));
    let per_m = cpu
        .filter(|_| records > 0)
        .map(|c| c / records as f64 * 1e6);
    Row {
        label: label.into(),
        cells: vec![
            f(num(&["produce", "rate"]), 0),
            records.to_string(),
            f(num(&["verify", "seen"]), 0),
            f(num(&["verify", "missing"]), 0),
            f(num(&["verify", "duplicates"]), 0),
            f(num(&["verify", "unencrypted"]), 0),
            f(num(&["verify", "latency_ms", "p50"]), 1),
            f(num(&["verify", "latency_ms", "p90"]), 1),
            f(num(&["verify", "latency_ms", "p99"]), 1),
            f(per_m, 2),
        ],
        records,
        ok,
    }
}

fn start_prometheus(root: &Path, out: &Path, metrics: &str, port: u16) -> Result<Process> {
    let alerts = root.join("docker/prometheus/alerts.yml");
    let rules = if alerts.exists() {
        std::fs::copy(&alerts, out.join("alerts.yml"))?;
        "rule_files:\n  - alerts.yml # a copy of docker/prometheus/alerts.yml\n"
    } else {
        ""
    };
    let conf = out.join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\n{rules}\n\
             scrape_configs:\n  - job_name: fieldcrypt\n    static_configs:\n      - targets: [\"{metrics}\"]\n"
        ),
    )?;
    proc::run(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(&conf),
    )?;
    let mut p = Process::spawn(
        "prometheus",
        Command::new("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                out.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        &out.join("prometheus.log"),
    )?;
    let addr = format!("127.0.0.1:{port}");
    proc::wait_for(&mut p, "prometheus /-/ready", READY, || {
        try_http_get(&addr, "/-/ready").is_ok_and(|r| r.0 == 200)
    })?;
    println!("prometheus ready on http://{addr}");
    Ok(p)
}

/// The value of an instant query with one result, if any.
fn prom_query(addr: &str, q: &str) -> Option<f64> {
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = try_http_get(addr, &format!("/api/v1/query?query={enc}")).ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// The rules Prometheus loaded and any alert pending or firing (informational).
fn print_alerts(addr: &str) {
    let (status, body) = try_http_get(addr, "/api/v1/rules").unwrap_or_default();
    let Some(v) = (status == 200)
        .then(|| serde_json::from_str::<serde_json::Value>(&body).ok())
        .flatten()
    else {
        println!("prometheus: could not list the loaded rules");
        return;
    };
    let groups = v["data"]["groups"].as_array().cloned().unwrap_or_default();
    let rules: Vec<&serde_json::Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    println!(
        "prometheus: {} rule group(s), {} rule(s) loaded",
        groups.len(),
        rules.len()
    );
    for r in rules {
        for a in r["alerts"].as_array().into_iter().flatten() {
            println!("prometheus: alert {} is {}", r["name"], a["state"]);
        }
    }
}
