//! `fieldcrypt loadgen` and `check`: a load run against the pipeline (and its
//! verification), with a progress line and a JSON report.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use fieldcrypt::loadgen::{self, Limit, LoadSpec};

use super::args::{CdcChoice, LoadgenArgs};
use super::signal::shutdown_signal;
use super::{load_config, log};

/// `fieldcrypt loadgen`: produce (and with --verify check) a load run.
pub(super) async fn loadgen_cmd(a: LoadgenArgs) -> Result<()> {
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

pub(super) fn seconds(flag: &str, s: f64) -> Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s < 1e7) {
        bail!("{flag} must be a positive number of seconds (got {s})");
    }
    Ok(Duration::from_secs_f64(s))
}

/// Runs a load run or check with a progress line every 2 s. The first SIGINT or
/// SIGTERM stops producing (what was sent is then verified, briefly, and reported);
/// a second one exits at once with status 130.
pub(super) async fn with_progress(
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
pub(super) fn finish_report(r: &loadgen::Report, path: Option<&Path>) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_positive_finite_and_name_their_flag() {
        assert_eq!(
            seconds("--timeout", 1.5).unwrap(),
            Duration::from_millis(1500)
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            let e = seconds("--timeout", bad).unwrap_err().to_string();
            assert!(
                e.contains("--timeout") && e.contains("positive"),
                "{bad}: {e}"
            );
        }
    }
}
