//! `cargo xtask`: fieldcrypt's own tools, beside the product and apart from it —
//! the pipeline benchmark against its floor ([`bench`]), the local load test
//! ([`loadtest`]), the scale-out churn soak ([`churn`]) and a broker for manual runs — built on the harness the
//! integration tests use (`harness/`), and on fieldcrypt's public API only.

#![forbid(unsafe_code)]

mod bench;
mod churn;
mod loadtest;
mod proc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "fieldcrypt's benchmarks, load test and dev broker"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// `fieldcrypt run` through tansu: floor, pass-through and encrypt, CPU per
    /// record, records/s, millicores per MB/s and peak RSS, with the ratios.
    BenchPipeline(bench::Args),
    /// The docker load-test topology as local processes (tansu, moto, the test
    /// registry, fieldcrypt, Prometheus), `fieldcrypt loadgen --verify` per rate.
    Loadtest(loadtest::Args),
    /// Replicas of one group through scale-up, rolling restart, kill -9 and
    /// scale-down under load, repeated per delivery mode: missing, duplicates,
    /// records in clear, SIGTERM exits and rebalance pauses.
    Churn(churn::Args),
    /// A tansu broker on 127.0.0.1 in the foreground (in memory) until Ctrl-C.
    Broker {
        #[arg(long, default_value_t = 9092)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::BenchPipeline(a) => bench::main(a),
        Cmd::Loadtest(a) => loadtest::main(a),
        Cmd::Churn(a) => churn::main(a),
        Cmd::Broker { port } => broker(port),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn broker(port: u16) -> anyhow::Result<()> {
    let b = fieldcrypt_harness::broker::Broker::start_on(port);
    println!("tansu (in memory) on {}; Ctrl-C stops it", b.bootstrap());
    loop {
        std::thread::park();
    }
}
