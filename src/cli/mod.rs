//! The `fieldcrypt` command line: parses arguments, sets up logging and the tokio
//! runtime, and calls into the library. Errors are printed once, with their causes,
//! and exit non-zero; nothing here prints field values or key material.

mod args;
mod bench;
mod display;
mod file;
mod keys;
mod load;
mod log;
mod plan;
mod signal;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;

use fieldcrypt::config::Config;
use fieldcrypt::engine::Engine;
use fieldcrypt::loadgen::{self};
use fieldcrypt::schema::model::SchemaTree;

use args::{Cli, Command};
use bench::bench;
use file::file_cmd;
use keys::keys;
use load::{finish_report, loadgen_cmd, seconds, with_progress};
use plan::plan;
use signal::shutdown_signal;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_says_each_cause_once() {
        let e = anyhow::anyhow!("disk full")
            .context("cannot write out.avro")
            .context("encrypt-file failed");
        assert_eq!(
            report(&e),
            "encrypt-file failed: cannot write out.avro: disk full"
        );
        // A message that already holds its cause's text does not repeat it.
        let e = anyhow::anyhow!("timed out").context("registry: timed out");
        assert_eq!(report(&e), "registry: timed out");
    }
}
