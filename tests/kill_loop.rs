//! The kill loop: `fieldcrypt loadgen --verify` produces change events at a steady
//! rate while `fieldcrypt run` is killed with SIGKILL at random moments and
//! restarted, again and again; at-least-once means the verifier then finds nothing
//! missing and nothing unencrypted, only duplicates (counted and reported).
//!
//! Scale by environment: `KILL_LOOP_KILLS` (default 5), `KILL_LOOP_RATE` records/s
//! (default 300), `KILL_LOOP_SEED` (default: from the clock; printed). The figures
//! in docs/TESTING.md come from `KILL_LOOP_KILLS=20`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::*;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_fieldcrypt");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start_run(dir: &Path, log: &str) -> Child {
    Command::new(BIN)
        .current_dir(dir)
        .args(["run", "--config", "fc.toml", "--log", "info"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_leaks_nothing() {
    let kills = env_or("KILL_LOOP_KILLS", 5);
    let rate = env_or("KILL_LOOP_RATE", 300);
    let seed = env_or(
        "KILL_LOOP_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    println!("kill loop: {kills} kills at {rate} records/s, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let broker = Broker::start();
    let bs = broker.bootstrap();
    create_topics(&bs, &[("cdc", 3), ("secure.cdc", 3), ("dlq.cdc", 1)]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = keys_on_disk(d, &bs, &["default"], &["email"]);
    let schema = repo().join("schemas/customer_cdc.avsc");
    std::fs::write(
        d.join("fc.toml"),
        format!(
            r#"[kms]
kek_file = {kek:?}
[keyset]
file = {keyset:?}
[kafka]
bootstrap_servers = "{bs}"
group_id = "kill-loop"
properties = {{ "session.timeout.ms" = "3000", "heartbeat.interval.ms" = "500" }}
[metrics]
listen = "127.0.0.1:0"
[[routes]]
source = "cdc"
target = "secure.${{topic}}"
value_schema = {schema:?}
"#,
            kek = cfg.kms.kek_file().unwrap(),
            keyset = cfg.keyset.file,
        ),
    )
    .unwrap();

    // Long enough for every kill, then a steady tail the last instance finishes.
    let seconds = kills * 3 + 6;
    let loadgen = Command::new(BIN)
        .current_dir(d)
        .args([
            "loadgen",
            "--config",
            "fc.toml",
            "--topic",
            "cdc",
            "--rate",
            &rate.to_string(),
            "--duration",
            &seconds.to_string(),
            "--keys",
            "200",
            "--verify",
            "--verify-timeout",
            "120",
            "--report",
            "report.json",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("loadgen.log")).unwrap())
        .spawn()
        .unwrap();

    let started = Instant::now();
    for k in 0..kills {
        let mut run = start_run(d, &format!("run-{k}.log"));
        let alive = Duration::from_millis(rng.random_range(500..3_500));
        std::thread::sleep(alive);
        run.kill().unwrap(); // SIGKILL
        run.wait().unwrap();
        println!("kill {} after {:?}", k + 1, alive);
    }
    // The survivor drains what is left, then stops cleanly.
    let mut last = start_run(d, "run-last.log");
    let report = loadgen.wait_with_output().unwrap();
    Command::new("kill")
        .args(["-TERM", &last.id().to_string()])
        .status()
        .unwrap();
    let status = last.wait().unwrap();
    println!("loadgen:\n{}", String::from_utf8_lossy(&report.stdout));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("report.json")).unwrap()).unwrap();
    let v = &r["verify"];
    println!(
        "kill loop result after {:?}: sent {} seen {} missing {} duplicates {} unencrypted {} malformed {}",
        started.elapsed(),
        r["produce"]["records"],
        v["seen"],
        v["missing"],
        v["duplicates"],
        v["unencrypted"],
        v["malformed"]
    );
    assert_eq!(v["missing"], 0, "at-least-once: nothing missing");
    assert_eq!(v["unencrypted"], 0, "nothing in clear");
    assert_eq!(v["malformed"], 0);
    assert!(
        v["expected"].as_u64().unwrap() > rate * seconds / 2,
        "the load ran"
    );
    assert!(status.success(), "the survivor stops cleanly on SIGTERM");
    assert!(
        report.status.success(),
        "loadgen's verdict: {}",
        String::from_utf8_lossy(&report.stdout)
    );
}
