//! Several replicas of one consumer group, changing under a steady load the way
//! Kubernetes changes them — 1 → 3 instances, a rolling restart, a `kill -9` and
//! its replacement, a scale-down to 1 — against a real broker, in both delivery
//! modes. An independent `read_committed` reader (`fieldcrypt check`) then finds
//! every record present and none in clear; exactly-once delivers none twice; every
//! SIGTERM exits 0 within the drain timeout. `cargo xtask churn` runs the same
//! scenario repeatedly and prints the numbers.

mod common;

use std::time::Duration;

use common::churn::{self, ChurnSpec};

fn spec(delivery: &str, dir: &std::path::Path) -> ChurnSpec {
    ChurnSpec {
        delivery: delivery.into(),
        partitions: 6,
        rate: 500,
        seconds: 70,
        workers: 1,
        no_crash: false,
        dir: dir.to_path_buf(),
        bin: env!("CARGO_BIN_EXE_fieldcrypt").into(),
    }
}

fn check(delivery: &str, duplicates_ok: bool) {
    let dir = tempfile::tempdir().unwrap();
    let r = churn::run(&spec(delivery, dir.path()));
    println!("{}", r.render());
    assert!(
        r.ok(duplicates_ok),
        "churn run failed ({delivery}); files in {}:\n{}",
        dir.keep().display(),
        r.render()
    );
    for s in &r.stops {
        assert!(
            s.took < Duration::from_secs(25),
            "{} took {:?} to stop (drain timeout 20 s)",
            s.name,
            s.took
        );
    }
}

#[test]
fn at_least_once_through_churn_loses_nothing_and_writes_nothing_in_clear() {
    check("at-least-once", true);
}

#[test]
fn exactly_once_through_churn_loses_nothing_and_delivers_nothing_twice() {
    check("exactly-once", false);
}
