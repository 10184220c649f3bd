//! Interop with a real third-party client through a Schema Registry: python
//! confluent-kafka produces with its AvroSerializer (registering the writer schema in
//! the project's Confluent-API test registry), fieldcrypt encrypts the
//! Confluent-framed records and registers the derived schema under the target
//! subject, confluent-kafka's AvroDeserializer reads the output with that registered
//! schema (sensitive fields are bytes, no plaintext), and after fieldcrypt decrypts
//! again the deserializer reads records equal to the ones produced. A record with an
//! unknown schema id goes to the dead-letter topic.

mod common;

use std::process::Command;
use std::time::Duration;

use common::broker::*;
use fieldcrypt::config::PipelineMode;
use fieldcrypt::kafka::headers;
use fieldcrypt::kafka::route::RouteConfig;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn client(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(repo().join("tests/interop/confluent_client.py"))
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "confluent_client.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn schema_ids(summary: &str) -> Vec<u64> {
    let line = summary
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a JSON summary line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["schema_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect()
}

#[test]
fn confluent_serializer_to_fieldcrypt_to_confluent_deserializer() {
    let broker = Broker::start();
    let registry = Registry::start();
    let (bs, reg) = (broker.bootstrap(), registry.url());
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    client(&[
        "create-topics",
        "--bootstrap",
        &bs,
        "--topics",
        "customers,secure.customers,plain.customers,dlq.customers",
        "--partitions",
        "3",
    ]);
    let schema = repo().join("schemas/customer.avsc").display().to_string();
    let produced = client(&[
        "produce",
        "--bootstrap",
        &bs,
        "--registry",
        &reg,
        "--topic",
        "customers",
        "--schema",
        &schema,
        "--count",
        "500",
        "--seed",
        "11",
        "--dump",
        &p("dump.jsonl"),
    ]);
    let in_ids = schema_ids(&produced);
    // One record framed with a schema id the registry never issued.
    let bad: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .unwrap();
    bad.send(
        BaseRecord::to("customers")
            .key("bad")
            .payload(&[0u8, 0, 0, 3, 231, 2, 4][..]),
    )
    .unwrap();
    bad.flush(Duration::from_secs(10)).unwrap();

    let mut cfg = keys_on_disk(dir.path(), &bs, &["default"], &["email"]);
    cfg.kafka.group_id = "interop".into();
    cfg.schema_registry.url = Some(reg.clone());
    cfg.routes = vec![RouteConfig {
        source: "customers".into(),
        target: "secure.${topic}".into(),
        ..Default::default()
    }];
    let (stop, run) = start_pipeline(engine(&cfg), cfg.clone());
    let encrypted = client(&[
        "consume",
        "--bootstrap",
        &bs,
        "--registry",
        &reg,
        "--topic",
        "secure.customers",
        "--count",
        "500",
        "--timeout-seconds",
        "120",
        "--out",
        &p("encrypted.jsonl"),
    ]);
    let dead = consume(&bs, "dlq.customers", 1, Duration::from_secs(60));
    stop.send(()).unwrap();
    let stats = run.join().unwrap().expect("pipeline stops cleanly");
    assert_eq!((stats.produced, stats.dead_lettered), (500, 1));

    // The deserializer read the output with the registered, derived schema.
    let out_ids = schema_ids(&encrypted);
    assert_eq!(out_ids.len(), 1);
    assert!(
        !in_ids.contains(&out_ids[0]),
        "output has its own schema id"
    );
    let (status, subjects) = http_get(&format!("127.0.0.1:{}", registry.port), "/subjects");
    assert_eq!(status, 200);
    assert!(
        subjects.contains("secure.customers-value"),
        "registered under the target subject: {subjects}"
    );
    let dump = std::fs::read_to_string(p("dump.jsonl")).unwrap();
    let enc = std::fs::read_to_string(p("encrypted.jsonl")).unwrap();
    // Plaintext of sensitive fields must not appear anywhere in the output (checked
    // for values long enough to be unique and not also some clear field's value).
    let originals: Vec<serde_json::Value> = dump
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let clear: std::collections::HashSet<String> = originals
        .iter()
        .flat_map(|o| {
            let v = &o["value"];
            [
                &v["account_id"],
                &v["country"],
                &v["source"],
                &v["address"]["city"],
                &v["address"]["postal_code"],
            ]
            .into_iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect::<Vec<_>>()
        })
        .collect();
    let mut secrets = 0;
    for o in &originals {
        for f in ["ssn", "full_name", "email"] {
            let s = o["value"][f].as_str().unwrap();
            if s.len() >= 8 && s.is_ascii() && !clear.iter().any(|c| c.contains(s)) {
                assert!(!enc.contains(s), "plaintext of {f} in the output");
                secrets += 1;
            }
        }
    }
    assert!(
        secrets > 300,
        "enough distinctive values were checked ({secrets})"
    );
    let mut checked = 0;
    for line in enc.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let v = &r["value"];
        for f in ["email", "ssn", "full_name", "email_bidx"] {
            assert!(v[f].get("$bytes").is_some(), "{f} is encrypted bytes: {v}");
        }
        assert!(v["address"]["street"].get("$bytes").is_some());
        assert!(v["id"].is_i64(), "other fields stay as they were");
        assert!(
            r["headers"].get(headers::DEK).is_some(),
            "the DEK travels in a header"
        );
        checked += 1;
    }
    assert_eq!(checked, 500);
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], headers::ERROR_CODE).as_deref(),
        Some("unknown_schema_id")
    );

    // Decrypt mode: the deserializer reads records equal to the originals.
    let mut dcfg = cfg.clone();
    dcfg.pipeline.mode = PipelineMode::Decrypt;
    dcfg.kafka.group_id = "interop-dec".into();
    dcfg.metrics.listen = format!("127.0.0.1:{}", free_port());
    dcfg.routes = vec![RouteConfig {
        source: "secure.customers".into(),
        target: "plain.customers".into(),
        ..Default::default()
    }];
    let (stop, run) = start_pipeline(engine(&dcfg), dcfg);
    let plain = client(&[
        "consume",
        "--bootstrap",
        &bs,
        "--registry",
        &reg,
        "--topic",
        "plain.customers",
        "--count",
        "500",
        "--timeout-seconds",
        "120",
        "--out",
        &p("plain.jsonl"),
    ]);
    stop.send(()).unwrap();
    run.join().unwrap().expect("decrypt pipeline stops cleanly");
    assert_eq!(
        schema_ids(&plain),
        in_ids,
        "the original schema, registered again, has its id"
    );
    client(&[
        "compare",
        "--expected",
        &p("dump.jsonl"),
        "--actual",
        &p("plain.jsonl"),
    ]);
}

/// Confluent schema references: the producer's schema uses types registered under
/// other subjects (BankingInfo, which itself references Currency, and Address).
/// fieldcrypt resolves them through the registry, encrypts the fields the
/// referenced schemas mark, registers a self-contained output schema that the
/// Confluent deserializer reads, and decrypting restores records equal to the ones
/// produced.
#[test]
fn schema_references_resolve_through_the_registry_and_round_trip() {
    let broker = Broker::start();
    let registry = Registry::start();
    let (bs, reg) = (broker.bootstrap(), registry.url());
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    client(&[
        "create-topics",
        "--bootstrap",
        &bs,
        "--topics",
        "accounts,secure.accounts,plain.accounts",
        "--partitions",
        "2",
    ]);
    let refs = repo().join("tests/interop/refs");
    let r = |f: &str| refs.join(f).display().to_string();
    let produced = client(&[
        "produce",
        "--bootstrap",
        &bs,
        "--registry",
        &reg,
        "--topic",
        "accounts",
        "--schema",
        &r("Customer.avsc"),
        "--reference",
        &format!(
            "com.example.Currency=com.example.Currency={}",
            r("Currency.avsc")
        ),
        "--reference",
        &format!(
            "com.example.BankingInfo=com.example.BankingInfo={}",
            r("BankingInfo.avsc")
        ),
        "--reference",
        &format!(
            "com.example.Address=com.example.Address={}",
            r("Address.avsc")
        ),
        "--count",
        "200",
        "--seed",
        "5",
        "--dump",
        &p("dump.jsonl"),
    ]);
    let in_ids = schema_ids(&produced);
    let (_, body) = http_get(
        &format!("127.0.0.1:{}", registry.port),
        &format!("/schemas/ids/{}", in_ids[0]),
    );
    assert!(
        body.contains("references"),
        "the producer registered references: {body}"
    );

    let mut cfg = keys_on_disk(dir.path(), &bs, &["default"], &["email"]);
    cfg.kafka.group_id = "refs".into();
    cfg.schema_registry.url = Some(reg.clone());
    cfg.routes = vec![RouteConfig {
        source: "accounts".into(),
        target: "secure.${topic}".into(),
        ..Default::default()
    }];
    let (stop, run) = start_pipeline(engine(&cfg), cfg.clone());
    let encrypted = client(&[
        "consume",
        "--bootstrap",
        &bs,
        "--registry",
        &reg,
        "--topic",
        "secure.accounts",
        "--count",
        "200",
        "--timeout-seconds",
        "120",
        "--out",
        &p("encrypted.jsonl"),
    ]);
    stop.send(()).unwrap();
    let stats = run.join().unwrap().expect("pipeline stops cleanly");
    assert_eq!((stats.produced, stats.dead_lettered), (200, 0));
    let out_ids = schema_ids(&encrypted);
    assert_eq!(out_ids.len(), 1);
    let dump = std::fs::read_to_string(p("dump.jsonl")).unwrap();
    let enc = std::fs::read_to_string(p("encrypted.jsonl")).unwrap();
    // Every string of the produced records outside the encrypted fields: the
    // generator reuses strings, so a secret equal to (or inside) one of them may
    // rightly appear in clear.
    fn strings(v: &serde_json::Value, skip: &[&str], out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, skip, out)),
            serde_json::Value::Object(o) => o
                .iter()
                .filter(|(k, _)| !skip.contains(&k.as_str()))
                .for_each(|(_, x)| strings(x, skip, out)),
            _ => {}
        }
    }
    let originals: Vec<serde_json::Value> = dump
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut clear = Vec::new();
    for o in &originals {
        strings(&o["value"], &["iban", "street", "email"], &mut clear);
    }
    let mut secrets = 0;
    for o in &originals {
        let iban = o["value"]["banking"]["iban"].as_str().unwrap();
        if iban.len() >= 6 && !clear.iter().any(|c| c.contains(iban)) {
            assert!(!enc.contains(iban), "plaintext iban in the output");
            secrets += 1;
        }
    }
    assert!(
        secrets > 20,
        "enough distinctive values were checked ({secrets})"
    );
    let mut checked = 0;
    for line in enc.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let v = &v["value"];
        assert!(
            v["banking"]["iban"].get("$bytes").is_some(),
            "iban is encrypted: {v}"
        );
        assert!(v["banking"]["currency"].is_string(), "the rest stays: {v}");
        for a in v["previous_addresses"].as_array().unwrap() {
            assert!(a["street"].get("$bytes").is_some());
        }
        if !v["email"].is_null() {
            assert!(v["email"].get("$bytes").is_some() && v["email_bidx"].get("$bytes").is_some());
        }
        checked += 1;
    }
    assert_eq!(checked, 200);

    let mut dcfg = cfg.clone();
    dcfg.pipeline.mode = PipelineMode::Decrypt;
    dcfg.kafka.group_id = "refs-dec".into();
    dcfg.metrics.listen = format!("127.0.0.1:{}", free_port());
    dcfg.routes = vec![RouteConfig {
        source: "secure.accounts".into(),
        target: "plain.accounts".into(),
        ..Default::default()
    }];
    let (stop, run) = start_pipeline(engine(&dcfg), dcfg);
    client(&[
        "consume",
        "--bootstrap",
        &bs,
        "--registry",
        &reg,
        "--topic",
        "plain.accounts",
        "--count",
        "200",
        "--timeout-seconds",
        "120",
        "--out",
        &p("plain.jsonl"),
    ]);
    stop.send(()).unwrap();
    run.join().unwrap().expect("decrypt pipeline stops cleanly");
    client(&[
        "compare",
        "--expected",
        &p("dump.jsonl"),
        "--actual",
        &p("plain.jsonl"),
    ]);
}
