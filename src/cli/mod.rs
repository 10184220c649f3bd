//! The `fieldcrypt` command line: parses arguments, sets up logging and the tokio
//! runtime, and calls into the library. Errors are printed once, with their causes,
//! and exit non-zero; nothing here prints field values or key material.

mod display;
mod log;
mod validate;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use fieldcrypt::config::Config;
use fieldcrypt::engine::{open_kek, open_kms, Engine};
use fieldcrypt::file::{decrypt_file_with, encrypt_file_with};
use fieldcrypt::keys::keyset::Purpose;
use fieldcrypt::keys::{Keyset, Kms, LocalKms};
use fieldcrypt::loadgen::{self, Limit, LoadSpec};
use fieldcrypt::schema::model::SchemaTree;

/// Field-level encryption for Avro records: Kafka streams and Avro files.
#[derive(Debug, Parser)]
#[command(name = "fieldcrypt", version, about, long_about = None)]
struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing filter
    /// such as "info,librdkafka=debug". Default: FIELDCRYPT_LOG, then RUST_LOG,
    /// then info for run (warn for the other commands).
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    /// Format of everything written to stderr: pretty, or json (one object per line).
    #[arg(long, global = true, value_enum, env = "FIELDCRYPT_LOG_FORMAT", default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

use log::LogFormat;

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the KEK file and the keyset.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show which fields a schema's records get encrypted and how, and write the
    /// derived output schema.
    Plan {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Avro schema file (.avsc).
        schema: PathBuf,
        /// A schema file defining named types the schema uses without defining
        /// them (a Confluent schema reference); repeat for several. Adds to the
        /// config's schema.reference_files.
        #[arg(long = "schema-path", value_name = "FILE.avsc")]
        schema_paths: Vec<PathBuf>,
        /// Write the derived (encrypted) output schema here.
        #[arg(long)]
        output_schema: Option<PathBuf>,
    },
    /// Encrypt an Avro container file.
    EncryptFile {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Write the output even if the schema encrypts nothing (it is then
        /// plaintext); without it, such a file is an error.
        #[arg(long)]
        allow_unencrypted: bool,
        /// The Avro container file to encrypt.
        #[arg(value_name = "INPUT")]
        input: PathBuf,
        /// Where the encrypted file goes (written only when complete; never INPUT).
        #[arg(value_name = "OUTPUT")]
        output: PathBuf,
    },
    /// Decrypt an Avro container file written by `encrypt-file`.
    DecryptFile {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The encrypted Avro container file.
        #[arg(value_name = "INPUT")]
        input: PathBuf,
        /// Where the decrypted file goes (written only when complete; never INPUT).
        #[arg(value_name = "OUTPUT")]
        output: PathBuf,
    },
    /// Check a config without running it: the config itself, the keys, each
    /// route's schema and plan, and (with a metadata request only, never joining
    /// the group) the brokers, topics and Schema Registry. One line per check;
    /// exit status 0 only when every check passes.
    Validate {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Skip the checks that need the network (brokers, registry).
        #[arg(long)]
        offline: bool,
    },
    /// Run the Kafka stream processor (consume, encrypt or decrypt, produce) until
    /// SIGINT/SIGTERM, then drain in-flight records and commit.
    Run {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The benchmark floor: forward the routes' records unchanged (consume, produce
    /// the same bytes, store offsets after delivery), serving the same /metrics.
    #[command(hide = true)]
    Forward {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Produce synthetic records to a route's source topic at a target rate (plain
    /// events, or Debezium-style change events for envelope schemas), and with
    /// --verify read the route's target topic at the same time and report missing,
    /// duplicated and unencrypted records and end-to-end latency.
    Loadgen(LoadgenArgs),
    /// Verify a finished load run: read the route's target topic from the
    /// beginning and report missing, duplicated and unencrypted records of the run.
    Check {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The run's source topic (its route gives the target topic).
        #[arg(long)]
        topic: String,
        /// Avro schema the run produced (default: the route's value_schema).
        #[arg(long)]
        schema: Option<PathBuf>,
        /// The run id loadgen printed.
        #[arg(long)]
        run_id: String,
        /// Records the run produced.
        #[arg(long)]
        expect: u64,
        /// Give up on missing records after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Write the summary as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Print records of an Avro container file as JSON lines (bytes as base64).
    Cat {
        /// The Avro container file.
        file: PathBuf,
        /// Print at most this many records.
        #[arg(long, short = 'n')]
        limit: Option<usize>,
    },
    /// Write random records of a schema to an Avro container file.
    Sample {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Avro schema file (.avsc).
        #[arg(long)]
        schema: PathBuf,
        /// A schema file defining named types the schema uses without defining
        /// them (a Confluent schema reference); repeat for several. The records'
        /// file carries the schema with those types defined in it.
        #[arg(long = "schema-path", value_name = "FILE.avsc")]
        schema_paths: Vec<PathBuf>,
        /// Number of records.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Random seed (same seed, same records).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Block codec: null, deflate, snappy, zstandard.
        #[arg(long, default_value = "deflate")]
        codec: String,
        /// The Avro container file to write.
        #[arg(value_name = "OUTPUT")]
        output: PathBuf,
    },
    /// Measure encrypt/decrypt throughput on one core against a plain apache-avro
    /// round trip of the same records. Uses a throwaway KEK and keyset.
    Bench {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Avro schema file (.avsc).
        #[arg(long, default_value = "schemas/customer.avsc")]
        schema: PathBuf,
        /// Records generated and cycled through.
        #[arg(long, default_value_t = 20_000)]
        records: usize,
        /// Rounds per measurement (the best is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Minimum seconds per round.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CdcChoice {
    Auto,
    On,
    Off,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create the local KEK file (32 random bytes, mode 0600). Refuses to overwrite.
    Init {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Create a deterministic or blind-index key (a new version if the domain exists).
    Create {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_enum)]
        purpose: Purpose,
        /// Key domain, e.g. `default` or `email`.
        #[arg(long)]
        domain: String,
    },
    /// List the keyset's keys (ids and metadata only, never key material).
    List {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Add a new active version of a domain's deterministic and/or blind-index
    /// keys; older versions stay for decrypting older data.
    Rotate {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Key domain to rotate.
        #[arg(long)]
        domain: String,
        /// Only this purpose (default: every purpose the domain has).
        #[arg(long, value_enum)]
        purpose: Option<Purpose>,
    },
    /// Re-encrypt every wrapped key of the keyset under another KEK (AWS
    /// ReEncrypt where possible). Data is not touched.
    Rewrap {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The new KEK: AWS key id, alias/NAME or ARN; or a KEK file (local).
        #[arg(long)]
        to_kek: String,
    },
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` (and its floor) are long-lived: an operator wants to see them work.
    let default_level = match cli.command {
        Command::Run { .. } | Command::Forward { .. } => "info",
        _ => "warn",
    };
    let env = |v: &str| std::env::var(v).ok();
    let (spec, from) = log::filter_spec(cli.log.as_deref(), &env, default_level);
    if let Err(e) = log::init(cli.log_format, &spec, from) {
        // No subscriber is installed: the line is written as the format asks.
        log::line(tracing::Level::ERROR, &e.to_string());
        return ExitCode::FAILURE;
    }
    // The AES path is chosen once, here, before any key is built: a value of
    // FIELDCRYPT_CRYPTO that is neither auto nor portable is refused, not guessed.
    let accel = fieldcrypt::crypto::accel::ENV;
    if let Err(e) = fieldcrypt::crypto::accel::parse(env(accel).as_deref()) {
        log::line(
            tracing::Level::ERROR,
            &format!("{e}; unset it to choose by CPU"),
        );
        return ExitCode::FAILURE;
    }
    tracing::debug!(
        crypto = fieldcrypt::crypto::accel::path().describe(),
        "AES runs on the {} path",
        fieldcrypt::crypto::accel::path().describe()
    );
    // `run` transforms on several worker tasks; the other commands are one task.
    // File commands too: a signal must be seen while a block is being transformed.
    let rt = if matches!(
        cli.command,
        Command::Run { .. }
            | Command::Forward { .. }
            | Command::Loadgen(_)
            | Command::Check { .. }
            | Command::EncryptFile { .. }
            | Command::DecryptFile { .. }
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            log::line(
                tracing::Level::ERROR,
                &format!("cannot start the async runtime: {e}"),
            );
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::line(tracing::Level::ERROR, &report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: a cause whose text the
/// message already holds (errors that print their source) is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn read_schema(path: &Path) -> Result<serde_json::Value> {
    read_schema_with(path, &fieldcrypt::schema::References::default())
}

/// Reads a schema whose referenced types come from `refs`.
fn read_schema_with(
    path: &Path,
    refs: &fieldcrypt::schema::References,
) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read schema {}", path.display()))?;
    fieldcrypt::schema::parse_schema_with(&text, refs)
        .map_err(|e| anyhow::anyhow!("schema {}: {e}", path.display()))
}

/// The named types of the config's schema.reference_files and of `--schema-path`.
fn references(cfg: &Config, extra: &[PathBuf]) -> Result<fieldcrypt::schema::References> {
    let mut paths = cfg.schema.reference_files.clone();
    paths.extend_from_slice(extra);
    Ok(fieldcrypt::schema::References::from_files(&paths)?)
}

async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Keys(k) => keys(k).await,
        Command::Plan {
            config,
            schema,
            schema_paths,
            output_schema,
        } => plan(
            config.as_deref(),
            &schema,
            &schema_paths,
            output_schema.as_deref(),
        ),
        Command::EncryptFile {
            config,
            allow_unencrypted,
            input,
            output,
        } => {
            let opts = fieldcrypt::file::EncryptOptions {
                allow_unencrypted,
                ..Default::default()
            };
            file_cmd(config.as_deref(), &input, &output, Some(opts)).await
        }
        Command::DecryptFile {
            config,
            input,
            output,
        } => file_cmd(config.as_deref(), &input, &output, None).await,
        Command::Validate { config, offline } => validate::run(config.as_deref(), offline).await,
        Command::Run { config } => {
            let cfg = load_config(config.as_deref())?;
            if cfg.routes.is_empty() {
                bail!("no [[routes]] in the config: nothing to consume");
            }
            let engine = Arc::new(Engine::start(cfg.clone()).await?);
            let stats = fieldcrypt::pipeline::run(engine, &cfg, shutdown_signal()).await?;
            log::line(
                tracing::Level::INFO,
                &format!(
                    "stopped: {} records consumed, {} produced, {} dead-lettered, {} transactions",
                    stats.consumed, stats.produced, stats.dead_lettered, stats.transactions
                ),
            );
            Ok(())
        }
        Command::Forward { config } => {
            let cfg = load_config(config.as_deref())?;
            let metrics = Arc::new(fieldcrypt::observe::Metrics::new());
            let stats = fieldcrypt::pipeline::floor::run(&cfg, metrics, shutdown_signal()).await?;
            log::line(
                tracing::Level::INFO,
                &format!(
                    "stopped: {} records consumed, {} forwarded",
                    stats.consumed, stats.produced
                ),
            );
            Ok(())
        }
        Command::Loadgen(args) => loadgen_cmd(args).await,
        Command::Check {
            config,
            topic,
            schema,
            run_id,
            expect,
            timeout,
            report,
        } => {
            let cfg = load_config(config.as_deref())?;
            let live = Arc::new(loadgen::Live::default());
            let timeout = seconds("--timeout", timeout)?;
            let work = loadgen::check(
                &cfg,
                &topic,
                schema.as_ref(),
                &run_id,
                expect,
                timeout,
                live.clone(),
            );
            let r = with_progress(live, false, true, work).await?;
            finish_report(&r, report.as_deref())
        }
        Command::Cat { file, limit } => display::cat(&file, limit),
        Command::Sample {
            config,
            schema,
            schema_paths,
            count,
            seed,
            codec,
            output,
        } => {
            let cfg = load_config(config.as_deref())?;
            let json = read_schema_with(&schema, &references(&cfg, &schema_paths)?)?;
            let tree = SchemaTree::compile(&json)?;
            fieldcrypt::sample::check(&tree)
                .map_err(|m| anyhow::anyhow!("schema {}: {m}", schema.display()))?;
            let c = fieldcrypt::avro::container::parse_codec(&codec)?;
            fieldcrypt::sample::write_file(&json, &tree, count, seed, c, &codec, &output)
                .with_context(|| format!("cannot write {}", output.display()))?;
            log::line(
                tracing::Level::INFO,
                &format!("wrote {count} records to {}", output.display()),
            );
            Ok(())
        }
        Command::Bench {
            config,
            schema,
            records,
            rounds,
            seconds,
        } => bench(config.as_deref(), &schema, records, rounds, seconds).await,
    }
}

/// `fieldcrypt loadgen`'s options.
#[derive(Debug, clap::Args)]
struct LoadgenArgs {
    /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
    #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Source topic to produce to (a route's source, for --verify).
    #[arg(long)]
    topic: String,
    /// Avro schema of the records (default: the route's value_schema).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Records per second (0: as fast as possible).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Stop after this many records (tombstones included).
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// Stop after this many seconds (default 10 unless --count is given).
    #[arg(long)]
    duration: Option<f64>,
    /// Distinct record keys (and people behind names and e-mails), so
    /// deterministic encryption and blind indexes see repeats.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Change events (inserts, updates, deletes with tombstones): auto = when
    /// the schema is a Debezium-style envelope.
    #[arg(long, value_enum, default_value_t = CdcChoice::Auto)]
    cdc: CdcChoice,
    /// Random seed (same seed, same keys, operations and values; timestamps
    /// are the clock's).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Read the route's target topic while producing and check every record.
    #[arg(long)]
    verify: bool,
    /// Seconds the verifier waits for missing records after producing ends.
    #[arg(long, default_value_t = 60.0)]
    verify_timeout: f64,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Run id carried in each record's header (default: random).
    #[arg(long)]
    run_id: Option<String>,
}

/// `fieldcrypt plan`: what a schema's records become, and the keys they need.
fn plan(
    config: Option<&Path>,
    schema: &Path,
    schema_paths: &[PathBuf],
    output_schema: Option<&Path>,
) -> Result<()> {
    let cfg = load_config(config)?;
    let json = read_schema_with(schema, &references(&cfg, schema_paths)?)?;
    let plan = fieldcrypt::schema::plan::EncryptPlan::build(
        &json,
        &schema.display().to_string(),
        &cfg.plan_config(),
    )?;
    print!("{}", plan.table());
    if plan.is_passthrough() {
        log::line(
            tracing::Level::WARN,
            &format!(
                "warning: nothing in {} is encrypted: {}; encrypt-file and run refuse such a schema unless told to allow it",
                schema.display(),
                fieldcrypt::schema::policy::why_nothing_selected(&plan.tree, &cfg.plan_config().selection)
            ),
        );
    }
    let det = sorted(plan.deterministic_domains());
    let idx = sorted(plan.index_domains());
    if !det.is_empty() || !idx.is_empty() {
        println!(
            "\nkeys needed: deterministic [{}], blind-index [{}]",
            det.join(", "),
            idx.join(", ")
        );
        // Which of them the keyset lacks, each with the command that creates it.
        let ks = Keyset::load(&cfg.keyset.file)?;
        let missing: Vec<String> = det
            .iter()
            .map(|d| (Purpose::Deterministic, d))
            .chain(idx.iter().map(|d| (Purpose::BlindIndex, d)))
            .filter(|(p, d)| ks.active(*p, d).is_none())
            .map(|(p, d)| {
                cfg.command(
                    "keys create",
                    &format!(
                        "--purpose {p} --domain {}",
                        fieldcrypt::config::shell_word(d)
                    ),
                )
            })
            .collect();
        if missing.is_empty() {
            println!("keyset {}: has them all", cfg.keyset.file.display());
        } else {
            println!(
                "keyset {} lacks {} of them; create them with:",
                cfg.keyset.file.display(),
                missing.len()
            );
            for c in missing {
                println!("  {c}");
            }
        }
    }
    if let Some(out) = output_schema {
        let text = serde_json::to_string_pretty(&plan.output_json)? + "\n";
        std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
        println!("output schema written to {}", out.display());
    }
    Ok(())
}

/// `fieldcrypt encrypt-file` and `decrypt-file`: an Avro container file
/// transformed into another, with a progress view and a summary.
async fn file_cmd(
    config: Option<&Path>,
    input: &Path,
    output: &Path,
    encrypting: Option<fieldcrypt::file::EncryptOptions>,
) -> Result<()> {
    let cancel = cancel_on_signal();
    let engine = Engine::start(load_config(config)?).await?;
    let bar = ProgressView::new(input);
    let mut progress = |b, r| bar.update(b, r);
    let encrypts = encrypting.is_some();
    let report = if let Some(opts) = encrypting {
        let opts = fieldcrypt::file::EncryptOptions { cancel, ..opts };
        encrypt_file_with(&engine, input, output, opts, &mut progress).await
    } else {
        decrypt_file_with(&engine, input, output, &cancel, &mut progress).await
    };
    bar.finish();
    let r = report?;
    let rate = format!(
        "in {:.2}s ({:.0} records/s) -> {}",
        r.elapsed.as_secs_f64(),
        r.records_per_sec(),
        output.display()
    );
    let f = &r.fields;
    let summary = if encrypts {
        format!(
            "encrypted {} records ({} randomized, {} deterministic, {} blind indexes, {} null) \
             with {} data key(s) {rate}",
            r.records, f.randomized, f.deterministic, f.indexes, f.nulls, r.deks
        )
    } else {
        let fields = f.randomized + f.deterministic;
        format!("decrypted {} records ({fields} fields) {rate}", r.records)
    };
    log::line(tracing::Level::INFO, &summary);
    Ok(())
}

/// `fieldcrypt loadgen`: produce (and with --verify check) a load run.
async fn loadgen_cmd(a: LoadgenArgs) -> Result<()> {
    let LoadgenArgs {
        config,
        topic,
        schema,
        rate,
        count,
        duration,
        keys,
        cdc,
        seed,
        verify,
        verify_timeout,
        report,
        run_id,
    } = a;
    let cfg = load_config(config.as_deref())?;
    let limit = match (count, duration) {
        (Some(n), _) => Limit::Count(n),
        (None, d) => Limit::Duration(seconds("--duration", d.unwrap_or(10.0))?),
    };
    if !(rate.is_finite() && (rate == 0.0 || (0.001..=1e8).contains(&rate))) {
        bail!(
            "--rate must be 0 (as fast as possible) or from 0.001 to 100000000 records per second (got {rate})"
        );
    }
    if keys == 0 {
        bail!("--keys must be at least 1");
    }
    let spec = LoadSpec {
        topic,
        schema,
        rate,
        limit,
        keys,
        cdc: match cdc {
            CdcChoice::Auto => None,
            CdcChoice::On => Some(true),
            CdcChoice::Off => Some(false),
        },
        seed,
        verify,
        verify_timeout: seconds("--verify-timeout", verify_timeout)?,
        run_id: run_id.unwrap_or_else(loadgen::new_run_id),
    };
    log::line(
        tracing::Level::INFO,
        &format!("loadgen: run {} to {}", spec.run_id, spec.topic),
    );
    let live = Arc::new(loadgen::Live::default());
    let work = loadgen::run(&cfg, &spec, live.clone());
    let r = with_progress(live, true, verify, work).await?;
    finish_report(&r, report.as_deref())
}

fn seconds(flag: &str, s: f64) -> Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s < 1e7) {
        bail!("{flag} must be a positive number of seconds (got {s})");
    }
    Ok(Duration::from_secs_f64(s))
}

/// Runs a load run or check with a progress line every 2 s. The first SIGINT or
/// SIGTERM stops producing (what was sent is then verified, briefly, and reported);
/// a second one exits at once with status 130.
async fn with_progress(
    live: Arc<loadgen::Live>,
    producing: bool,
    verifying: bool,
    work: impl std::future::Future<Output = Result<loadgen::Report, loadgen::LoadgenError>>,
) -> Result<loadgen::Report> {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = tokio::spawn(loadgen::progress(
        live.clone(),
        Duration::from_secs(2),
        producing,
        verifying,
        done.clone(),
        |l: &str| log::line(tracing::Level::INFO, l),
    ));
    let stopper = {
        let live = live.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            log::line(
                tracing::Level::WARN,
                "loadgen: stopping (signal); reporting what was done; a second signal exits now",
            );
            live.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            shutdown_signal().await;
            log::line(
                tracing::Level::WARN,
                "loadgen: second signal: exiting without a report",
            );
            std::process::exit(130);
        })
    };
    let r = work.await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    ticker.abort();
    stopper.abort();
    Ok(r?)
}

/// Prints the summary, writes the JSON report, and fails if the run did.
fn finish_report(r: &loadgen::Report, path: Option<&Path>) -> Result<()> {
    print!("{}", r.render());
    if let Some(p) = path {
        let text = serde_json::to_string_pretty(r)? + "\n";
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if !r.ok {
        bail!("the load run failed its checks (see above)");
    }
    Ok(())
}

/// A token cancelled on SIGINT or SIGTERM (the pipeline's cancellation type):
/// file commands stop at their next block and leave no output (the staged file
/// is dropped unnamed); the process then exits non-zero.
fn cancel_on_signal() -> tokio_util::sync::CancellationToken {
    let cancel = tokio_util::sync::CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    cancel
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested: draining");
}

fn sorted(s: std::collections::HashSet<String>) -> Vec<String> {
    let mut v: Vec<String> = s.into_iter().collect();
    v.sort();
    v
}

/// A progress bar over input bytes with a records/s message, drawn only on a terminal.
struct ProgressView {
    bar: indicatif::ProgressBar,
    start: std::time::Instant,
}

impl ProgressView {
    fn new(input: &Path) -> Self {
        let total = std::fs::metadata(input).map(|m| m.len()).unwrap_or(0);
        let bar = if std::io::stderr().is_terminal() {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        ProgressView {
            bar,
            start: std::time::Instant::now(),
        }
    }

    fn update(&self, bytes: u64, records: u64) {
        self.bar.set_position(bytes);
        let rate = records as f64 / self.start.elapsed().as_secs_f64().max(1e-6);
        self.bar
            .set_message(format!("{records} records, {rate:.0} records/s"));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

async fn keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Init { config } => {
            let cfg = load_config(config.as_deref())?;
            let Some(kek_file) = cfg.kms.kek_file() else {
                bail!(
                    "kms.provider is \"{}\": the KEK lives in that KMS and is never a file; \
                     create a symmetric key there (aws kms create-key) and set kms.key_id",
                    cfg.kms.provider.kind().name()
                );
            };
            let p = LocalKms::init(kek_file)?;
            let kms = LocalKms::open(&p)?;
            println!(
                "created KEK file {} ({}); keep it secret, never commit it",
                p.display(),
                kms.kek_id()
            );
            // A keyset wrapped by another KEK stays unreadable with this one: say
            // so, and how to move it under the new KEK (rewrap needs the old one).
            let ks = Keyset::load(&cfg.keyset.file)?;
            let mut others: Vec<&str> = ks
                .keys
                .iter()
                .map(|k| k.kek.as_str())
                .filter(|k| *k != kms.kek_id())
                .collect();
            others.sort_unstable();
            others.dedup();
            if !others.is_empty() {
                log::line(
                    tracing::Level::WARN,
                    &format!(
                        "warning: keyset {} holds keys wrapped by KEK {}, which this new KEK cannot unwrap. \
                         If that KEK is lost, restore it from where you keep it instead; to move the keyset \
                         under the new KEK, run keys rewrap --to-kek {} with a config whose kms.kek_file is the old KEK",
                        cfg.keyset.file.display(),
                        others.join(" and "),
                        fieldcrypt::config::shell_word(&format!("local:{}", p.display()))
                    ),
                );
            }
            Ok(())
        }
        KeysCommand::Create {
            config,
            purpose,
            domain,
        } => {
            let cfg = load_config(config.as_deref())?;
            fieldcrypt::engine::check_local_kek(&cfg)?;
            let kms = open_kms(&cfg).await?;
            let mut ks = Keyset::load(&cfg.keyset.file)?;
            let e = ks.create(kms.as_ref(), purpose, &domain).await?;
            ks.save(&cfg.keyset.file)?;
            println!(
                "created {} key for domain {} (version {}, id {}) in {}",
                e.purpose,
                e.domain,
                e.version,
                e.id,
                cfg.keyset.file.display()
            );
            Ok(())
        }
        KeysCommand::Rotate {
            config,
            domain,
            purpose,
        } => {
            let cfg = load_config(config.as_deref())?;
            let mut ks = Keyset::load(&cfg.keyset.file)?;
            let has = |p: Purpose| ks.active(p, &domain).is_some();
            let wanted: Vec<Purpose> = match purpose {
                Some(p) => vec![p],
                None => vec![Purpose::Deterministic, Purpose::BlindIndex],
            };
            if !wanted.iter().any(|p| has(*p)) {
                let create: Vec<String> = wanted
                    .iter()
                    .map(|p| {
                        format!(
                            "`{}`",
                            cfg.command(
                                "keys create",
                                &format!(
                                    "--purpose {p} --domain {}",
                                    fieldcrypt::config::shell_word(&domain)
                                )
                            )
                        )
                    })
                    .collect();
                bail!(
                    "keyset {} has no {} key for domain \"{domain}\" to rotate; create one with {}",
                    cfg.keyset.file.display(),
                    purpose.map_or("deterministic or blind-index".to_string(), |p| p
                        .to_string()),
                    create.join(" or ")
                );
            }
            fieldcrypt::engine::check_local_kek(&cfg)?;
            let kms = open_kms(&cfg).await?;
            let added = ks.rotate(kms.as_ref(), &domain, purpose).await?;
            ks.save(&cfg.keyset.file)?;
            for e in &added {
                println!(
                    "rotated {} key of domain {}: version {} (id {}) is active; older versions stay for decryption",
                    e.purpose, e.domain, e.version, e.id
                );
            }
            println!(
                "deploy {} to every instance; see docs/KEYS.md for what rotation means for blind-index lookups",
                cfg.keyset.file.display()
            );
            Ok(())
        }
        KeysCommand::Rewrap { config, to_kek } => {
            let cfg = load_config(config.as_deref())?;
            fieldcrypt::engine::check_local_kek(&cfg)?;
            let from = open_kms(&cfg).await?;
            let to = open_kek(&cfg, &to_kek).await?;
            let mut ks = Keyset::load(&cfg.keyset.file)?;
            if ks.keys.is_empty() {
                bail!("keyset {} has no keys to rewrap", cfg.keyset.file.display());
            }
            let moved = ks.rewrap(from.as_ref(), to.as_ref()).await?;
            ks.save(&cfg.keyset.file)?;
            for m in &moved {
                println!(
                    "{} {} v{} ({}): {} -> {}{}",
                    m.purpose,
                    m.domain,
                    m.version,
                    m.id,
                    m.from,
                    m.to,
                    if m.in_kms { " (ReEncrypt)" } else { "" }
                );
            }
            println!(
                "rewrapped {} keys in {}. Point the config's KEK at {to_kek} for new data keys, and \
                 keep the old KEK usable for decryption while data wrapped by it remains (docs/KEYS.md)",
                moved.len(),
                cfg.keyset.file.display()
            );
            Ok(())
        }
        KeysCommand::List { config } => {
            let cfg = load_config(config.as_deref())?;
            let ks = Keyset::load(&cfg.keyset.file)?;
            if ks.keys.is_empty() {
                println!("keyset {} has no keys", cfg.keyset.file.display());
                return Ok(());
            }
            println!(
                "{:<14} {:<16} {:>7}  {:<8} {:<32}  {:<20}  KEK",
                "PURPOSE", "DOMAIN", "VERSION", "STATE", "ID", "CREATED"
            );
            let mut keys = ks.keys.clone();
            keys.sort_by(|a, b| {
                (a.purpose.to_string(), &a.domain, a.version).cmp(&(
                    b.purpose.to_string(),
                    &b.domain,
                    b.version,
                ))
            });
            for k in &keys {
                let active = ks
                    .active(k.purpose, &k.domain)
                    .map(|a| a.id == k.id)
                    .unwrap_or(false);
                println!(
                    "{:<14} {:<16} {:>7}  {:<8} {:<32}  {:<20}  {}",
                    k.purpose.to_string(),
                    k.domain,
                    k.version,
                    if active { "active" } else { "decrypt" },
                    k.id,
                    k.created_at,
                    k.kek
                );
            }
            Ok(())
        }
    }
}

async fn bench(
    config: Option<&Path>,
    schema: &Path,
    records: usize,
    rounds: usize,
    seconds: f64,
) -> Result<()> {
    if records == 0 || rounds == 0 || seconds <= 0.0 {
        bail!("--records, --rounds and --seconds must be positive");
    }
    let mut cfg = load_config(config)?;
    let dir = tempfile::tempdir()?;
    let kek_file = dir.path().join("kek.key");
    cfg.kms = fieldcrypt::config::KmsConfig::local(&kek_file);
    cfg.keyset.file = dir.path().join("keyset.json");
    // One DEK for the whole run: rotation is a KMS round trip, not transform cost.
    cfg.dek.max_uses = fieldcrypt::keys::dek::MAX_USES_CEILING;
    LocalKms::init(&kek_file)?;
    let kms: Arc<dyn Kms> = Arc::new(LocalKms::open(&kek_file)?);
    let json = read_schema(schema)?;
    let plan = fieldcrypt::schema::plan::EncryptPlan::build(
        &json,
        &schema.display().to_string(),
        &cfg.plan_config(),
    )?;
    let mut ks = Keyset::default();
    for d in plan.deterministic_domains() {
        ks.create(kms.as_ref(), Purpose::Deterministic, &d).await?;
    }
    for d in plan.index_domains() {
        ks.create(kms.as_ref(), Purpose::BlindIndex, &d).await?;
    }
    ks.save(&cfg.keyset.file)?;
    let engine = Engine::with_kms(cfg, kms).await?;
    log::line(
        tracing::Level::INFO,
        &format!(
            "benchmarking {} ({} sensitive fields, AES on the {} path) ...",
            schema.display(),
            plan.rows.len(),
            fieldcrypt::crypto::accel::path().describe()
        ),
    );
    let report = fieldcrypt::bench::run(
        &engine,
        &json,
        records,
        rounds,
        Duration::from_secs_f64(seconds),
    )
    .await?;
    print!("{}", report.table());
    Ok(())
}
