//! `fieldcrypt loadgen` and `fieldcrypt check` (the real binary) against a real
//! Kafka-protocol broker (tansu), the test Schema Registry and a running pipeline;
//! and the load-test stack's files (compose, Prometheus, Grafana) against what a
//! running fieldcrypt really exports.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::broker::{
    create_topics, engine, free_port, http_get, keys_on_disk, metric, repo, start_pipeline,
    wait_until, Broker, Registry,
};
use fieldcrypt::config::Config;
use fieldcrypt::kafka::route::RouteConfig;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value as Json;

const BIN: &str = env!("CARGO_BIN_EXE_fieldcrypt");

/// The config file the binary reads (keys on disk, the route, maybe a registry).
fn write_config(path: &Path, cfg: &Config) {
    let r = &cfg.routes[0];
    let mut text = format!(
        "[kms]\nkek_file = \"{}\"\n[keyset]\nfile = \"{}\"\n[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{}\"\n[metrics]\nlisten = \"\"\n",
        cfg.kms.kek_file().unwrap().display(),
        cfg.keyset.file.display(),
        cfg.kafka.bootstrap_servers,
        cfg.kafka.group_id,
    );
    if let Some(url) = &cfg.schema_registry.url {
        text.push_str(&format!("[schema_registry]\nurl = \"{url}\"\n"));
    }
    text.push_str(&format!(
        "[[routes]]\nsource = \"{}\"\ntarget = \"{}\"\n",
        r.source, r.target
    ));
    if let Some(s) = &r.value_schema {
        text.push_str(&format!("value_schema = \"{}\"\n", s.display()));
    }
    std::fs::write(path, text).unwrap();
}

fn fieldcrypt(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run fieldcrypt");
    eprintln!(
        "fieldcrypt {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn report(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn n(v: &Json, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Json::as_u64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

/// Is `name` a series in the exposition `text`?
fn exported(text: &str, name: &str) -> bool {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
}

#[test]
fn change_events_through_the_pipeline_verify_clean_and_the_stack_names_only_real_metrics() {
    let broker = Broker::start();
    let registry = Registry::start();
    let bs = broker.bootstrap();
    create_topics(
        &bs,
        &[
            ("cdc.customers", 3),
            ("secure.cdc.customers", 3),
            ("dlq.cdc.customers", 1),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = keys_on_disk(dir.path(), &bs, &["default"], &["email"]);
    cfg.kafka.group_id = "loadgen-test".into();
    cfg.schema_registry.url = Some(registry.url());
    cfg.routes = vec![RouteConfig {
        source: "cdc.customers".into(),
        target: "secure.${topic}".into(),
        ..Default::default()
    }];
    let metrics_addr = cfg.metrics.listen.clone();
    let (stop, runner) = start_pipeline(engine(&cfg), cfg.clone());

    // One record that is not Confluent-framed Avro: dead-lettered, so the dead-letter
    // and error series exist when the stack's metric names are checked below.
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .unwrap();
    p.send(BaseRecord::to("cdc.customers").key("x").payload("not avro"))
        .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();

    let cfg_path = dir.path().join("fieldcrypt.toml");
    write_config(&cfg_path, &cfg);
    let rep = dir.path().join("report.json");
    let out = fieldcrypt(&[
        "loadgen",
        "--config",
        cfg_path.to_str().unwrap(),
        "--topic",
        "cdc.customers",
        "--schema",
        "schemas/customer_cdc.avsc",
        "--rate",
        "3000",
        "--count",
        "3000",
        "--keys",
        "100",
        "--verify",
        "--verify-timeout",
        "90",
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "loadgen --verify failed");
    let r = report(&rep);
    assert_eq!(r["framing"], "confluent");
    assert_eq!(r["cdc"], true);
    assert_eq!(n(&r, "/produce/records"), 3000);
    assert_eq!(n(&r, "/produce/failed"), 0);
    for op in ["inserts", "updates", "deletes", "tombstones"] {
        assert!(n(&r, &format!("/produce/{op}")) > 0, "no {op}: {r}");
    }
    // Each delete is followed by its tombstone (the last may be cut by --count).
    assert!(n(&r, "/produce/deletes") - n(&r, "/produce/tombstones") <= 1);
    assert_eq!(n(&r, "/verify/expected"), 3000);
    assert_eq!(n(&r, "/verify/seen"), 3000);
    assert_eq!(n(&r, "/verify/missing"), 0);
    assert_eq!(n(&r, "/verify/unencrypted"), 0);
    assert_eq!(n(&r, "/verify/malformed"), 0);
    assert_eq!(n(&r, "/verify/tombstones"), n(&r, "/produce/tombstones"));
    // Every row image has 3 non-null sensitive fields (first/last name, e-mail);
    // inserts and deletes carry one image, updates two.
    let images =
        n(&r, "/produce/inserts") + 2 * n(&r, "/produce/updates") + n(&r, "/produce/deletes");
    assert!(n(&r, "/verify/fields_checked") >= 3 * images, "{r}");
    let p50 = r
        .pointer("/verify/latency_ms/p50")
        .and_then(Json::as_f64)
        .unwrap();
    let p99 = r
        .pointer("/verify/latency_ms/p99")
        .and_then(Json::as_f64)
        .unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "latency p50 {p50} p99 {p99}");
    let run_id = r["run_id"].as_str().unwrap().to_string();

    // The same run checked afterwards from the beginning of the target topic.
    let rep2 = dir.path().join("check.json");
    let out = fieldcrypt(&[
        "check",
        "--config",
        cfg_path.to_str().unwrap(),
        "--topic",
        "cdc.customers",
        "--schema",
        "schemas/customer_cdc.avsc",
        "--run-id",
        &run_id,
        "--expect",
        "3000",
        "--timeout",
        "60",
        "--report",
        rep2.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "check failed");
    let c = report(&rep2);
    assert_eq!(n(&c, "/verify/seen"), 3000);
    assert_eq!(n(&c, "/verify/missing"), 0);
    assert_eq!(n(&c, "/verify/unencrypted"), 0);
    // The garbage record has no run headers: on the dead-letter topic, not here.
    assert_eq!(n(&c, "/verify/other"), 0);

    // The stack's dashboard and Prometheus files name only metrics fieldcrypt exports.
    let mut text = String::new();
    wait_until(Duration::from_secs(30), "the dead letter and lag", || {
        text = http_get(&metrics_addr, "/metrics").1;
        metric(&text, "fieldcrypt_dead_letters_total", &[]) >= 1.0
            && exported(&text, "fieldcrypt_consumer_lag")
    });
    let stack = Command::new("python3")
        .arg("tools/check_stack.py")
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&stack.stdout).to_string();
    assert!(
        stack.status.success(),
        "tools/check_stack.py failed:\n{stdout}{}",
        String::from_utf8_lossy(&stack.stderr)
    );
    let names: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "METRICS")
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(names.len() >= 15, "too few metric names found: {names:?}");
    let missing: Vec<&&str> = names.iter().filter(|m| !exported(&text, m)).collect();
    assert!(
        missing.is_empty(),
        "the stack references metrics fieldcrypt does not export: {missing:?}"
    );
    // The config (and its rule file) is valid, and the alerts fire when they should
    // (docker/prometheus/alerts.test.yml: promtool's rule unit tests).
    for args in [
        ["check", "config", "docker/prometheus/prometheus.yml"],
        ["test", "rules", "docker/prometheus/alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(repo())
            .output()
            .expect("promtool (Debian package prometheus) is needed: apt-get install prometheus");
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    stop.send(()).unwrap();
    runner.join().unwrap().unwrap();
}

#[test]
fn check_reports_plaintext_and_missing_records_without_printing_values() {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    create_topics(&bs, &[("plain.src", 1), ("plain.out", 2)]);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = keys_on_disk(dir.path(), &bs, &["default"], &["email"]);
    cfg.routes = vec![RouteConfig {
        source: "plain.src".into(),
        target: "plain.out".into(),
        value_schema: Some(repo().join("schemas/customer.avsc")),
        ..Default::default()
    }];
    let cfg_path = dir.path().join("fieldcrypt.toml");
    write_config(&cfg_path, &cfg);
    // Plaintext records written straight to the route's target, as a misconfigured
    // pipeline (or none) would leave them.
    let run_id = format!("plain{}", free_port());
    let out = fieldcrypt(&[
        "loadgen",
        "--config",
        cfg_path.to_str().unwrap(),
        "--topic",
        "plain.out",
        "--schema",
        "schemas/customer.avsc",
        "--rate",
        "0",
        "--count",
        "200",
        "--keys",
        "20",
        "--run-id",
        &run_id,
    ]);
    assert!(out.status.success(), "plain loadgen failed");
    let rep = dir.path().join("check.json");
    let out = fieldcrypt(&[
        "check",
        "--config",
        cfg_path.to_str().unwrap(),
        "--topic",
        "plain.src",
        "--run-id",
        &run_id,
        "--expect",
        "250",
        "--timeout",
        "5",
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "check passed plaintext");
    let r = report(&rep);
    assert_eq!(r["ok"], false);
    assert_eq!(n(&r, "/verify/seen"), 200);
    assert_eq!(n(&r, "/verify/missing"), 50);
    assert_eq!(
        n(&r, "/verify/unencrypted") + n(&r, "/verify/malformed"),
        200
    );
    // Problems name where and what, never a value: every reason is one of the
    // fixed texts (a ciphertext check or a decode error at a byte offset).
    let problems: Vec<&str> = r["verify"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(!problems.is_empty());
    for p in &problems {
        let fixed = [
            "not a fieldcrypt field ciphertext: unknown format version",
            "not a fieldcrypt field ciphertext: unknown algorithm",
            "not a fieldcrypt field ciphertext: too short for a ciphertext header",
            "not a fieldcrypt field ciphertext: too short for its algorithm",
        ];
        assert!(
            fixed.iter().any(|f| p.ends_with(f))
                || p.contains(" at byte ")
                || p.starts_with("missing: "),
            "unexpected problem text: {p}"
        );
    }
    assert!(
        problems
            .iter()
            .any(|p| p.contains("missing: 50 records, the first with sequence numbers 200, 201")),
        "{problems:?}"
    );
    let all = format!(
        "{}{}{r}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("FAILED"));
    assert!(
        !all.contains("@example.com"),
        "a plaintext value reached the report"
    );

    // A record whose value was lost on the way (null, but no tombstone was sent).
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .unwrap();
    let lost = format!("lost{}", free_port());
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: fieldcrypt::loadgen::RUN_HEADER,
            value: Some(lost.as_str()),
        })
        .insert(rdkafka::message::Header {
            key: fieldcrypt::loadgen::SEQ_HEADER,
            value: Some("0"),
        });
    p.send(
        BaseRecord::<str, [u8]>::to("plain.out")
            .key("1")
            .headers(headers),
    )
    .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    let rep = dir.path().join("lost.json");
    let out = fieldcrypt(&[
        "check",
        "--config",
        cfg_path.to_str().unwrap(),
        "--topic",
        "plain.src",
        "--run-id",
        &lost,
        "--expect",
        "1",
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let r = report(&rep);
    assert_eq!((n(&r, "/verify/seen"), n(&r, "/verify/missing")), (1, 0));
    assert_eq!(n(&r, "/verify/malformed"), 1);
    assert!(r["verify"]["problems"][0]
        .as_str()
        .unwrap()
        .contains("the value is missing"));

    // A --verify run against a route whose target nobody fills: all missing.
    let out = fieldcrypt(&[
        "loadgen",
        "--config",
        cfg_path.to_str().unwrap(),
        "--topic",
        "plain.src",
        "--count",
        "20",
        "--verify",
        "--verify-timeout",
        "2",
    ]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("0 of 20 seen") && text.contains("20 missing"),
        "{text}"
    );
}

#[test]
fn bad_invocations_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("fieldcrypt.toml");
    std::fs::write(
        &cfg_path,
        // A registry, so the route needs no value_schema (nothing is contacted:
        // every error below comes first).
        "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[schema_registry]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nsource = \"a\"\ntarget = \"b\"\n",
    )
    .unwrap();
    let c = cfg_path.to_str().unwrap();
    let err = |args: &[&str]| {
        let out = fieldcrypt(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = err(&["loadgen", "-c", c, "--topic", "a", "--count", "1"]);
    assert!(e.contains("--schema"), "{e}");
    let e = err(&["loadgen", "-c", c, "--topic", "a", "--schema", "nope.avsc"]);
    assert!(e.contains("nope.avsc"), "{e}");
    let e = err(&[
        "loadgen",
        "-c",
        c,
        "--topic",
        "a",
        "--schema",
        "schemas/customer.avsc",
        "--cdc",
        "on",
    ]);
    assert!(e.contains("not a change-event envelope"), "{e}");
    let e = err(&[
        "loadgen",
        "-c",
        c,
        "--topic",
        "zzz",
        "--schema",
        "schemas/customer.avsc",
        "--verify",
    ]);
    assert!(e.contains("zzz"), "{e}");
    let e = err(&["loadgen", "-c", c, "--topic", "a", "--rate=-5"]);
    assert!(e.contains("--rate"), "{e}");

    // Raw Avro: records of another schema than the route's, or text keys for a
    // route that reads Avro keys, would only be dead-lettered.
    let raw = dir.path().join("raw.toml");
    let schema = repo().join("schemas/customer.avsc");
    std::fs::write(
        &raw,
        format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[[routes]]\nsource = \"a\"\ntarget = \"b\"\nvalue_schema = \"{0}\"\n[[routes]]\nsource = \"k\"\ntarget = \"kk\"\nvalue_schema = \"{0}\"\nkey_format = \"avro\"\nkey_schema = \"{0}\"\n",
            schema.display()
        ),
    )
    .unwrap();
    let r = raw.to_str().unwrap();
    let e = err(&[
        "loadgen",
        "-c",
        r,
        "--topic",
        "a",
        "--schema",
        "schemas/customer_cdc.avsc",
    ]);
    assert!(e.contains("differs from the route's value_schema"), "{e}");
    let e = err(&["loadgen", "-c", r, "--topic", "k"]);
    assert!(e.contains("key_format"), "{e}");
}
