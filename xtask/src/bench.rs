//! `cargo xtask bench-pipeline`: `fieldcrypt run` through a real broker (tansu) in
//! three modes over the same records, so each mode's cost shows against the one
//! below it:
//!
//! - `floor`: `fieldcrypt forward`, the same consume and produce with librdkafka
//!   settings as `run`, offsets stored after delivery, no decoding at all;
//! - `passthrough`: `fieldcrypt run` with the schema's `sensitive` markings removed
//!   (records validated and forwarded);
//! - `encrypt`: `fieldcrypt run` with the schema as it is;
//! - `floor-out`: `fieldcrypt forward` again, over the same round's `encrypt`
//!   output (the encrypted records with their `fieldcrypt.dek` headers), so the
//!   cost of consuming and producing the bigger records shows (what a decrypting
//!   instance downstream pays); not in the default `--modes`.
//!
//! When a round ran both `passthrough` and `encrypt`, their outputs are then read
//! back and produced again by this process alone, with `run`'s producer settings
//! and headers built per record as `run` builds them ("produce floor"): the CPU
//! per record of producing encrypt's output minus that of producing
//! pass-through's is what the bigger records cost the broker client, a floor
//! under encrypt − pass-through that no transform can remove.
//!
//! For each schema (default `schemas/customer.avsc`, ~170 B records, and
//! `schemas/order_1k.avsc`, ~1 KB with 10 sensitive fields among 25) the modes
//! alternate for `--rounds` rounds so machine noise hits them all. A run's clock
//! starts at the first /metrics poll that shows a consumed record (start-up and
//! the group join excluded) and stops when every record is acknowledged; CPU is the
//! fieldcrypt process's utime+stime over the same window (/proc), so the broker's
//! work is not counted (it shares the machine, though). Peak RSS is the process's
//! VmHWM at the end of the run. Input MB/s uses the bytes consumed in the window.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fieldcrypt::schema::model::SchemaTree;
use fieldcrypt_harness::broker::{create_topics, metric, repo, try_http_get, Broker};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::proc::{self, Process};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Records in each schema's source topic.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Rounds of every mode.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Modes, in the order each round runs them.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "floor,passthrough,encrypt"
    )]
    modes: Vec<Mode>,
    /// Schemas (paths relative to the repository).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "schemas/customer.avsc,schemas/order_1k.avsc"
    )]
    schemas: Vec<PathBuf>,
    /// Seconds allowed per run, from start to the last acknowledgement.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// The fieldcrypt binary (copied once into the work directory).
    #[arg(long, default_value = "target/release/fieldcrypt")]
    fieldcrypt: PathBuf,
    /// Work directory (recreated): keys, configs, logs, final metrics, results.tsv.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Also record each run with `perf record -g` attached to the fieldcrypt
    /// process (perf-<run>.data in the work directory; perf's own CPU is not
    /// counted, its sampling overhead in fieldcrypt is).
    #[arg(long)]
    perf: bool,
    /// Extra librdkafka properties for every run, floor included (KEY=VALUE,
    /// repeatable), e.g. `--kafka-property queued.max.messages.kbytes=32768`.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = property)]
    kafka_properties: Vec<(String, String)>,
}

fn property(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Mode {
    Floor,
    Passthrough,
    Encrypt,
    FloorOut,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Floor => "floor",
            Mode::Passthrough => "passthrough",
            Mode::Encrypt => "encrypt",
            Mode::FloorOut => "floor-out",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone)]
struct Run {
    schema: String,
    mode: Mode,
    records: u64,
    seconds: f64,
    cpu_seconds: f64,
    input_bytes: f64,
    peak_rss_mib: f64,
}

impl Run {
    fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds
    }
    fn cpu_us_per_record(&self) -> f64 {
        self.cpu_seconds / self.records as f64 * 1e6
    }
    /// CPU millicores spent per MB/s of input: (CPU s / s × 1000) / (MB / s).
    fn millicores_per_mb_s(&self) -> f64 {
        self.cpu_seconds * 1000.0 / (self.input_bytes / 1e6)
    }
}

const POLL: Duration = Duration::from_millis(200);
const START_POLL: Duration = Duration::from_millis(20);
const STOP_GRACE: Duration = Duration::from_secs(45);

pub fn main(a: Args) -> Result<()> {
    if a.records == 0 || a.rounds == 0 || a.modes.is_empty() || a.schemas.is_empty() {
        bail!("--records, --rounds, --modes and --schemas must be non-empty and positive");
    }
    let pos = |m| a.modes.iter().position(|x| *x == m);
    if let Some(f) = pos(Mode::FloorOut) {
        if pos(Mode::Encrypt).is_none_or(|e| e > f) {
            bail!("--modes: floor-out forwards the round's encrypt output, so encrypt must come before it (e.g. --modes passthrough,encrypt,floor-out)");
        }
    }
    let root = repo();
    let out = root.join(&a.out);
    proc::fresh_dir(&out)?;
    let fc = proc::fieldcrypt_copy(&root.join(&a.fieldcrypt), &out)?;
    let hz = proc::clk_tck()? as f64;

    println!("== broker");
    let broker = Broker::start();
    let bs = broker.bootstrap();
    println!("tansu on {bs}");

    println!("== keys");
    let keys = out.join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[kms]\nkek_file = {:?}\n[keyset]\nfile = {:?}\n",
            out.join(".fieldcrypt/kek.key"),
            out.join(".fieldcrypt/keyset.json")
        ),
    )?;
    proc::run(
        Command::new(&fc)
            .args(["keys", "init", "--config"])
            .arg(&keys),
    )?;
    proc::create_keys(&fc, &keys)?;

    let mut runs = Vec::new();
    let mut produce_floors = Vec::new();
    for schema in &a.schemas {
        let name = schema
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let enc_schema = root.join(schema);
        let pass_schema = out.join(format!("{name}.passthrough.avsc"));
        let removed = strip_markings(&enc_schema, &pass_schema)?;
        println!(
            "== {name}: {} ({removed} markings removed for pass-through)",
            schema.display()
        );
        let plan = proc::run(
            Command::new(&fc)
                .args(["plan", "--config"])
                .arg(&keys)
                .arg(&pass_schema),
        )?;
        if !plan.contains("no sensitive fields") {
            bail!("the pass-through plan of {name} still encrypts fields:\n{plan}");
        }
        let source = format!("bench.{name}");
        let mut topics = vec![(source.clone(), 3), (format!("dlq.{source}"), 1)];
        for r in 1..=a.rounds {
            for m in &a.modes {
                topics.push((format!("bench.out.{name}.{}.{r}", m.name()), 3));
            }
        }
        let refs: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
        create_topics(&bs, &refs);
        let bytes = produce_source(&bs, &source, &enc_schema, a.records)?;
        println!(
            "produced {} records to {source} ({:.0} B each on average)",
            a.records,
            bytes as f64 / a.records as f64
        );
        for r in 1..=a.rounds {
            for &m in &a.modes {
                let schema_file = if m == Mode::Encrypt {
                    &enc_schema
                } else {
                    &pass_schema
                };
                let from = if m == Mode::FloorOut {
                    format!("bench.out.{name}.{}.{r}", Mode::Encrypt.name())
                } else {
                    source.clone()
                };
                let run = one_run(&fc, &out, &bs, &name, &from, schema_file, m, r, &a, hz)?;
                println!(
                    "   {} records in {:.2} s = {:.0} records/s; CPU {:.2} µs/record, {:.2} millicores per MB/s; peak RSS {:.0} MiB",
                    run.records,
                    run.seconds,
                    run.records_per_s(),
                    run.cpu_us_per_record(),
                    run.millicores_per_mb_s(),
                    run.peak_rss_mib
                );
                runs.push(run);
            }
        }
        if a.modes.contains(&Mode::Passthrough) && a.modes.contains(&Mode::Encrypt) {
            produce_floors.push(produce_floor(&bs, &name, a.records, hz)?);
        }
    }
    report(&runs, &out, &a)?;
    for f in &produce_floors {
        f.print();
    }
    drop(broker);
    Ok(())
}

/// Writes `dst`: the schema at `src` with every `sensitive` attribute removed.
fn strip_markings(src: &Path, dst: &Path) -> Result<usize> {
    fn strip(v: &mut serde_json::Value) -> usize {
        match v {
            serde_json::Value::Object(o) => {
                let mut n = usize::from(o.remove("sensitive").is_some());
                n += o.values_mut().map(strip).sum::<usize>();
                n
            }
            serde_json::Value::Array(a) => a.iter_mut().map(strip).sum(),
            _ => 0,
        }
    }
    let mut json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(src).with_context(|| format!("reading {}", src.display()))?,
    )?;
    let n = strip(&mut json);
    std::fs::write(dst, serde_json::to_string_pretty(&json)?)?;
    Ok(n)
}

/// Fills `topic` with `n` generated records of the schema (keys "0", "1", ...);
/// their total value bytes.
fn produce_source(bs: &str, topic: &str, schema: &Path, n: usize) -> Result<usize> {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(schema)?)?;
    let tree = SchemaTree::compile(&json).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut gen = fieldcrypt::sample::Generator::new(&tree, 42, 100_000);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut total = 0;
    let mut datum = Vec::new();
    for i in 0..n {
        datum.clear();
        gen.next(&mut datum);
        total += datum.len();
        let key = i.to_string();
        loop {
            match p.send(BaseRecord::to(topic).key(&key).payload(&datum)) {
                Ok(()) => break,
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    p.poll(Duration::from_millis(50));
                }
                Err((e, _)) => bail!("producing to {topic}: {e}"),
            }
        }
    }
    p.flush(Duration::from_secs(120))?;
    Ok(total)
}

/// The "produce floor" of one schema: CPU µs per record of producing the
/// pass-through output and the encrypt output again (medians of 3 alternated).
struct ProduceFloor {
    schema: String,
    plain_bytes: f64,
    encrypted_bytes: f64,
    plain_us: f64,
    encrypted_us: f64,
    /// Encrypt's output without its headers.
    no_headers_us: f64,
    /// Encrypt's output with each header value cut to 16 bytes.
    short_headers_us: f64,
}

impl ProduceFloor {
    fn print(&self) {
        println!(
            "{}: producing encrypt's output ({:.0} B/record, value + key + headers) costs {:.2} µs/record, pass-through's ({:.0} B) {:.2}: the bigger records alone add {:.2} µs/record to encrypt over pass-through",
            self.schema,
            self.encrypted_bytes,
            self.encrypted_us,
            self.plain_bytes,
            self.plain_us,
            self.encrypted_us - self.plain_us
        );
        println!(
            "{}: of which the headers (the fieldcrypt.dek header) {:.2} µs/record: encrypt's output without them costs {:.2}, with each header value cut to 16 bytes {:.2}",
            self.schema,
            self.encrypted_us - self.no_headers_us,
            self.no_headers_us,
            self.short_headers_us
        );
    }
}

/// This process's CPU so far (utime + stime, clock ticks).
fn self_cpu_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = &stat[stat.rfind(") ").context("/proc/self/stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Reads round 1's pass-through and encrypt outputs back, then produces each
/// again (alternating, 3 times) to fresh topics with `run`'s producer settings,
/// measuring this process's CPU from the first send to the last acknowledgement.
fn produce_floor(bs: &str, name: &str, records: usize, hz: f64) -> Result<ProduceFloor> {
    use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
    println!("-- {name}: produce floor (reading the round-1 outputs back)");
    let read = |mode: Mode| -> Result<Vec<rdkafka::message::OwnedMessage>> {
        let t = format!("bench.out.{name}.{}.1", mode.name());
        let got = fieldcrypt_harness::broker::consume(bs, &t, records, Duration::from_secs(120));
        if got.len() < records {
            bail!("{t}: read {} of {records} records back", got.len());
        }
        Ok(got)
    };
    let sets = [read(Mode::Passthrough)?, read(Mode::Encrypt)?];
    let size = |ms: &[rdkafka::message::OwnedMessage]| {
        ms.iter()
            .map(|m| {
                m.payload().map_or(0, <[u8]>::len)
                    + m.key().map_or(0, <[u8]>::len)
                    + m.headers().map_or(0, |h| {
                        h.iter()
                            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                            .sum()
                    })
            })
            .sum::<usize>() as f64
            / ms.len() as f64
    };
    let mut us: [Vec<f64>; 4] = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let names = [
        "passthrough",
        "encrypt",
        "encrypt-noheaders",
        "encrypt-16B-headers",
    ];
    let mut topics = Vec::new();
    for r in 0..3 {
        for n in names {
            topics.push(format!("bench.produce-floor.{name}.{n}.{r}"));
        }
    }
    let refs: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), 3)).collect();
    create_topics(bs, &refs);
    for r in 0..3 {
        for (i, set) in [&sets[0], &sets[1], &sets[1], &sets[1]]
            .into_iter()
            .enumerate()
        {
            let topic = format!("bench.produce-floor.{name}.{}.{r}", names[i]);
            // The settings `run` gives its producer (pipeline/mod.rs).
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", bs)
                .set("linger.ms", "5")
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .create()?;
            let t0 = self_cpu_ticks()?;
            for m in set {
                // Headers built per record, as the transform builds them.
                // Variant 2 drops the headers; variant 3 keeps each header with
                // its value cut to 16 bytes (the size of a DEK id).
                let headers = m.headers().filter(|_| i != 2).map(|h| {
                    h.iter().fold(OwnedHeaders::new_with_capacity(1), |o, h| {
                        o.insert(Header {
                            key: h.key,
                            value: h
                                .value
                                .map(|v| if i == 3 { &v[..v.len().min(16)] } else { v }),
                        })
                    })
                });
                let mut rec = BaseRecord::to(&topic).partition(m.partition());
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                if let Some(v) = m.payload() {
                    rec = rec.payload(v);
                }
                if let Some(h) = headers {
                    rec = rec.headers(h);
                }
                let mut rec = rec;
                loop {
                    match p.send(rec) {
                        Ok(()) => break,
                        Err((e, back))
                            if e.rdkafka_error_code()
                                == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                        {
                            rec = back;
                            p.poll(Duration::from_millis(5));
                        }
                        Err((e, _)) => bail!("producing to {topic}: {e}"),
                    }
                }
                p.poll(Duration::ZERO);
            }
            p.flush(Duration::from_secs(120))?;
            let cpu = (self_cpu_ticks()? - t0) as f64 / hz;
            us[i].push(cpu / set.len() as f64 * 1e6);
        }
    }
    let [plain_us, encrypted_us, no_headers_us, short_headers_us] = us.map(median);
    Ok(ProduceFloor {
        schema: name.to_string(),
        plain_bytes: size(&sets[0]),
        encrypted_bytes: size(&sets[1]),
        plain_us,
        encrypted_us,
        no_headers_us,
        short_headers_us,
    })
}

/// Counter totals from one /metrics text.
struct Counters {
    consumed: f64,
    produced: f64,
    dead: f64,
    bytes_in: f64,
}

fn counters(text: &str) -> Counters {
    Counters {
        consumed: metric(text, "fieldcrypt_records_consumed_total", &[]),
        produced: metric(text, "fieldcrypt_records_produced_total", &[]),
        dead: metric(text, "fieldcrypt_dead_letters_total", &[]),
        bytes_in: metric(text, "fieldcrypt_bytes_consumed_total", &[]),
    }
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    fc: &Path,
    out: &Path,
    bs: &str,
    schema: &str,
    source: &str,
    schema_file: &Path,
    mode: Mode,
    round: usize,
    a: &Args,
    hz: f64,
) -> Result<Run> {
    let tag = format!("{schema}.{}.{round}", mode.name());
    let target = format!("bench.out.{tag}");
    let metrics_port = fieldcrypt_harness::broker::free_port();
    let addr = format!("127.0.0.1:{metrics_port}");
    let cfg = out.join(format!("run-{tag}.toml"));
    let extra: String = a
        .kafka_properties
        .iter()
        .map(|(k, v)| format!("{k:?} = {v:?}\n"))
        .collect();
    std::fs::write(
        &cfg,
        format!(
            "# cargo xtask bench-pipeline: {schema}, {}, round {round}\n\
             [kafka]\nbootstrap_servers = \"{bs}\"\ngroup_id = \"bench-{tag}\"\nclient_id = \"fieldcrypt-bench\"\n\
             [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n{extra}\
             [metrics]\nlisten = \"{addr}\"\n\
             [kms]\nkek_file = {:?}\n[keyset]\nfile = {:?}\n\
             [[routes]]\nsource = \"{source}\"\ntarget = \"{target}\"\nvalue_schema = {:?}\n\
             allow_unencrypted = {}\n",
            mode.name(),
            out.join(".fieldcrypt/kek.key"),
            out.join(".fieldcrypt/keyset.json"),
            schema_file,
            // Pass-through's schema has its markings removed on purpose: say so,
            // or `run` refuses a route that would encrypt nothing.
            mode == Mode::Passthrough
        ),
    )?;
    println!(
        "-- {schema} {} round {round}: {source} -> {target}",
        mode.name()
    );
    let sub = if matches!(mode, Mode::Floor | Mode::FloorOut) {
        "forward"
    } else {
        "run"
    };
    let mut p = Process::spawn(
        "fieldcrypt",
        Command::new(fc).arg(sub).arg("--config").arg(&cfg),
        &out.join(format!("fieldcrypt-{tag}.log")),
    )?;
    let mut perf = if a.perf {
        Some(Process::spawn(
            "perf",
            Command::new("perf")
                .args([
                    "record",
                    "-F",
                    "499",
                    "--call-graph",
                    "dwarf,16384",
                    "-p",
                    &p.pid().to_string(),
                    "-o",
                ])
                .arg(out.join(format!("perf-{tag}.data"))),
            &out.join(format!("perf-{tag}.log")),
        )?)
    } else {
        None
    };
    let want = a.records as f64;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut start: Option<(Instant, u64, Counters)> = None;
    let (end, ticks_end, last, text) = loop {
        if !p.alive() {
            bail!("fieldcrypt exited early in {tag}\n{}", p.log_tail());
        }
        if let Ok((200, text)) = try_http_get(&addr, "/metrics") {
            let now = Instant::now();
            let ticks = p.cpu_ticks();
            let c = counters(&text);
            if c.dead > 0.0 {
                std::fs::write(out.join(format!("metrics-{tag}.txt")), &text)?;
                bail!(
                    "{} records were dead-lettered in {tag}: the measurement would be wrong",
                    c.dead
                );
            }
            if let Some(t) = ticks {
                if start.is_none() && c.consumed > 0.0 {
                    println!(
                        "   clock started: {} consumed, {} produced",
                        c.consumed as u64, c.produced as u64
                    );
                    start = Some((now, t, c));
                } else if start.is_some() && c.produced >= want {
                    break (now, t, c, text);
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "{tag}: not every record was produced within {} s\n{}",
                a.timeout,
                p.log_tail()
            );
        }
        std::thread::sleep(if start.is_some() { POLL } else { START_POLL });
    };
    let peak_rss_mib = p.peak_rss_kib().unwrap_or(0) as f64 / 1024.0;
    if let Some(perf) = perf.as_mut() {
        // SIGTERM makes perf write its data and exit.
        perf.stop(Duration::from_secs(30))?;
    }
    let status = p.stop(STOP_GRACE)?;
    if !status.success() {
        bail!(
            "fieldcrypt exited with {status} after SIGTERM in {tag}\n{}",
            p.log_tail()
        );
    }
    std::fs::write(out.join(format!("metrics-{tag}.txt")), &text)?;
    let (t0, c0, first) = start.expect("the loop ends only after the clock started");
    let records = (last.produced - first.produced) as u64;
    if records == 0 {
        bail!("{tag}: every record was produced before the clock started; use more --records");
    }
    let fields = metric(&text, "fieldcrypt_fields_total", &[]);
    match mode {
        Mode::Encrypt if fields == 0.0 => bail!("{tag}: the encrypt run transformed no fields"),
        Mode::Passthrough | Mode::Floor | Mode::FloorOut if fields > 0.0 => {
            bail!("{tag}: the {} run transformed {fields} fields", mode.name())
        }
        _ => {}
    }
    let seconds = (end - t0).as_secs_f64();
    if seconds < 25.0 * POLL.as_secs_f64() {
        eprintln!("   WARNING: the window ({seconds:.2} s) is under 25 polls: rough numbers; use more --records");
    }
    Ok(Run {
        schema: schema.into(),
        mode,
        records,
        seconds,
        cpu_seconds: (ticks_end - c0) as f64 / hz,
        input_bytes: last.bytes_in - first.bytes_in,
        peak_rss_mib,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per schema and mode: best records/s, median CPU per record and per MB/s,
/// highest peak RSS; then the ratios against the targets.
fn report(runs: &[Run], out: &Path, a: &Args) -> Result<()> {
    let mut tsv = String::from(
        "schema\tmode\trecords\tseconds\trecords_per_s\tcpu_s\tcpu_us_per_record\tmillicores_per_mb_s\tpeak_rss_mib\n",
    );
    for r in runs {
        tsv += &format!(
            "{}\t{}\t{}\t{:.3}\t{:.0}\t{:.3}\t{:.3}\t{:.3}\t{:.1}\n",
            r.schema,
            r.mode.name(),
            r.records,
            r.seconds,
            r.records_per_s(),
            r.cpu_seconds,
            r.cpu_us_per_record(),
            r.millicores_per_mb_s(),
            r.peak_rss_mib
        );
    }
    std::fs::write(out.join("results.tsv"), tsv)?;
    let mut by: BTreeMap<(String, Mode), Vec<&Run>> = BTreeMap::new();
    for r in runs {
        by.entry((r.schema.clone(), r.mode)).or_default().push(r);
    }
    println!(
        "\n== results: {} records per schema, {} round(s), tansu in-memory, 3 partitions",
        a.records, a.rounds
    );
    println!(
        "{:<12} {:<12} {:>14} {:>16} {:>20} {:>14}",
        "schema",
        "mode",
        "best records/s",
        "median CPU µs/rec",
        "median mcores/(MB/s)",
        "peak RSS MiB"
    );
    let mut summary: BTreeMap<(String, Mode), (f64, f64)> = BTreeMap::new();
    for ((schema, mode), rs) in &by {
        let best = rs.iter().map(|r| r.records_per_s()).fold(0.0, f64::max);
        let cpu = median(rs.iter().map(|r| r.cpu_us_per_record()).collect());
        let mc = median(rs.iter().map(|r| r.millicores_per_mb_s()).collect());
        let rss = rs.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max);
        println!(
            "{schema:<12} {:<12} {best:>14.0} {cpu:>16.2} {mc:>20.2} {rss:>14.0}",
            mode.name()
        );
        summary.insert((schema.clone(), *mode), (best, cpu));
    }
    println!();
    let schemas: Vec<String> = by
        .keys()
        .map(|(s, _)| s.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for s in schemas {
        let get = |m| summary.get(&(s.clone(), m)).copied();
        if let (Some(f), Some(p)) = (get(Mode::Floor), get(Mode::Passthrough)) {
            println!(
                "{s}: passthrough / floor CPU per record {:.2} (target <= 1.3)",
                p.1 / f.1
            );
        }
        if let (Some(p), Some(e)) = (get(Mode::Passthrough), get(Mode::Encrypt)) {
            println!(
                "{s}: encrypt / passthrough CPU per record {:.2} (targets: customer <= 1.3, order_1k <= 1.5), records/s {:.2} (order_1k target >= 0.85)",
                e.1 / p.1,
                e.0 / p.0
            );
            if let (Some(f), Some(fo)) = (get(Mode::Floor), get(Mode::FloorOut)) {
                let wire = fo.1 - f.1;
                println!(
                    "{s}: encrypt costs {:.2} µs/record over pass-through; forwarding the encrypted records costs {wire:.2} µs/record over forwarding the plain ones (floor-out / floor {:.2}), leaving {:.2} µs/record for the transform; pass-through + that wire cost alone is {:.2}x pass-through",
                    e.1 - p.1,
                    fo.1 / f.1,
                    e.1 - p.1 - wire,
                    (p.1 + wire) / p.1
                );
            }
        }
    }
    println!("\nraw results: {}", out.join("results.tsv").display());
    Ok(())
}
