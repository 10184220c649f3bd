//! `cargo xtask churn`: the scale-out churn run (`fieldcrypt_harness::churn`)
//! repeated, per delivery mode, with a summary table: missing, duplicates,
//! records in clear, SIGTERM exits, and the rebalance pauses measured. The test
//! suite runs each scenario once (`tests/scale_out.rs`); this is the soak.

use std::path::PathBuf;

use anyhow::{bail, Result};
use fieldcrypt_harness::churn::{self, ChurnReport, ChurnSpec};

/// `cargo xtask churn` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Runs per mode.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Modes: at-least-once, exactly-once, or both.
    #[arg(long, default_value = "both")]
    mode: String,
    /// Records per second during each run.
    #[arg(long, default_value_t = 800)]
    rate: u32,
    /// Seconds of load per run (the steps, each after the group settled, take
    /// about 60 s on tansu; they should all fall inside the load).
    #[arg(long, default_value_t = 80)]
    seconds: u64,
    /// Source partitions.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Replace the kill -9 with a SIGTERM (graceful churn only).
    #[arg(long)]
    no_crash: bool,
    /// Where each run's configs, logs and reports go (recreated).
    #[arg(long, default_value = "churn-out")]
    out: PathBuf,
    /// The fieldcrypt binary (copied once into the work directory).
    #[arg(long, default_value = "target/release/fieldcrypt")]
    fieldcrypt: PathBuf,
}

pub fn main(a: Args) -> Result<()> {
    let modes: Vec<&str> = match a.mode.as_str() {
        "both" => vec!["at-least-once", "exactly-once"],
        m @ ("at-least-once" | "exactly-once") => vec![m],
        m => bail!("--mode {m}: use at-least-once, exactly-once or both"),
    };
    crate::proc::fresh_dir(&a.out)?;
    let bin = crate::proc::fieldcrypt_copy(&a.fieldcrypt, &a.out)?;
    let mut rows: Vec<(String, usize, ChurnReport)> = Vec::new();
    for mode in &modes {
        for i in 1..=a.runs {
            let dir = a.out.join(format!("{mode}-{i}"));
            crate::proc::fresh_dir(&dir)?;
            println!("== churn {mode} run {i}/{} ({})", a.runs, dir.display());
            let r = churn::run(&ChurnSpec {
                delivery: mode.to_string(),
                partitions: a.partitions,
                rate: a.rate,
                seconds: a.seconds,
                workers: 1,
                no_crash: a.no_crash,
                dir,
                bin: bin.clone(),
            });
            print!("{}", r.render());
            rows.push((mode.to_string(), i, r));
        }
    }
    println!(
        "\n| mode | run | expected | missing | duplicates (outside the kill -9'd partitions) | in clear | SIGTERM exits | worst pause (ms) | e2e p99 / max (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut failed = 0;
    for (mode, i, r) in &rows {
        let exits: Vec<String> = r
            .stops
            .iter()
            .map(|s| s.status.map_or("killed".into(), |c| c.to_string()))
            .collect();
        let worst = r.pauses.iter().filter_map(|(_, ms)| *ms).max().unwrap_or(0);
        println!(
            "| {mode} | {i} | {} | {} | {} ({}) | {} | {} | {worst} | {:.0} / {:.0} |",
            r.expected,
            r.missing,
            r.duplicates,
            r.duplicates_outside_crash(),
            r.unencrypted,
            exits.join(" "),
            r.latency_ms.1,
            r.latency_ms.2
        );
        if !r.ok(mode == "at-least-once") {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} run(s) failed their checks (see above)");
    }
    Ok(())
}
