//! The at-least-once pipeline against librdkafka's in-process mock cluster: records
//! over 3 partitions are encrypted and delivered with nothing lost, partitions,
//! keys, timestamps, headers and tombstones preserved, garbage goes to the dead-letter
//! topic with its headers while good records flow, offsets are committed after
//! delivery, and decrypt mode restores the originals.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fieldcrypt::config::{Config, PipelineMode};
use fieldcrypt::kafka::headers;
use fieldcrypt::kafka::route::RouteConfig;
use fieldcrypt::sample::Generator;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::TopicPartitionList;

fn schema_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas/customer.avsc")
}

#[test]
fn encrypts_routes_dead_letters_and_commits_on_a_mock_cluster() {
    let cluster = MockCluster::new(3).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    for t in [
        "customers",
        "secure.customers",
        "dlq.customers",
        "plain.customers",
    ] {
        cluster.create_topic(t, 3, 1).unwrap();
    }

    let mut cfg = Config::default();
    cfg.metrics.listen = "127.0.0.1:0".into();
    cfg.kafka.bootstrap_servers = bootstrap.clone();
    cfg.kafka.group_id = "fieldcrypt-test".into();
    cfg.routes = vec![RouteConfig {
        source: "customers".into(),
        target: "secure.customers".into(),
        dead_letter: None,
        value_schema: Some(schema_path()),
        ..Default::default()
    }];
    let f = common::Fixture::new(cfg.clone(), &["default"], &["email"]);
    cfg.keyset = f.engine.config().keyset.clone();

    // 600 good records over 3 partitions (keyed), 4 garbage values, 2 tombstones.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path()).unwrap()).unwrap();
    let tree = fieldcrypt::schema::model::SchemaTree::compile(&json).unwrap();
    let mut g = Generator::new(&tree, 9, 100);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let mut originals: HashMap<String, (i32, Vec<u8>)> = HashMap::new();
    for i in 0..600 {
        let mut d = Vec::new();
        g.next(&mut d);
        let key = format!("k{i}");
        let part = i % 3;
        producer
            .send(
                BaseRecord::to("customers")
                    .key(&key)
                    .payload(&d)
                    .partition(part)
                    .timestamp(1_700_000_000_000 + i as i64)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "trace",
                        value: Some(key.as_bytes()),
                    })),
            )
            .unwrap();
        originals.insert(key, (part, d));
    }
    for i in 0..4 {
        let key = format!("bad{i}");
        producer
            .send(
                BaseRecord::to("customers")
                    .key(&key)
                    .payload(&b"\xff\xff garbage"[..])
                    .partition(i % 3),
            )
            .unwrap();
    }
    for i in 0..2 {
        let key = format!("gone{i}");
        producer
            .send(
                BaseRecord::<String, [u8]>::to("customers")
                    .key(&key)
                    .partition(0),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let engine = Arc::new(
        f.rt.block_on(fieldcrypt::engine::Engine::with_kms(
            cfg.clone(),
            f.engine.kms().clone(),
        ))
        .unwrap(),
    );
    let (stop_tx, runner) = common::broker::start_pipeline(engine.clone(), cfg.clone());

    let out = common::broker::consume(&bootstrap, "secure.customers", 602, Duration::from_secs(60));
    let dead = common::broker::consume(&bootstrap, "dlq.customers", 4, Duration::from_secs(60));
    stop_tx.send(()).unwrap();
    let stats = runner.join().unwrap().expect("pipeline stops cleanly");
    assert_eq!(stats.consumed, 606);
    assert_eq!((stats.produced, stats.dead_lettered), (602, 4));

    // Every good record exactly once, encrypted, same partition, key, timestamp, headers.
    assert_eq!(out.len(), 602, "no loss, no duplicates");
    let dec = engine
        .decryptor(
            &engine.encryptor(&json, "c").unwrap().plan().output_json,
            "c",
        )
        .unwrap();
    let mut seen = 0;
    for m in &out {
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let Some(value) = m.payload() else {
            assert!(key.starts_with("gone"), "tombstones stay tombstones");
            continue;
        };
        let (part, original) = &originals[&key];
        assert_eq!(m.partition(), *part, "partition follows the input");
        let hs = m.headers().unwrap();
        assert!(hs
            .iter()
            .any(|h| h.key == "trace" && h.value == Some(key.as_bytes())));
        let dek_headers: Vec<_> = hs.iter().filter(|h| h.key == headers::DEK).collect();
        assert_eq!(dek_headers.len(), 1);
        let w = headers::decode_dek(dek_headers[0].value.unwrap()).unwrap();
        let k = f.rt.block_on(engine.unwrap_dek(&w)).unwrap();
        let deks = [(w.id, k)].into_iter().collect();
        let mut back = Vec::new();
        dec.decrypt(value, &deks, &mut back).unwrap();
        assert_eq!(&back, original);
        assert_ne!(value, original.as_slice());
        seen += 1;
    }
    assert_eq!(seen, 600);

    assert_eq!(dead.len(), 4);
    for m in &dead {
        let hs = m.headers().unwrap();
        let get = |k: &str| {
            hs.iter()
                .find(|h| h.key == k)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(get(headers::ERROR_CODE).as_deref(), Some("schema_mismatch"));
        assert_eq!(get(headers::SOURCE_TOPIC).as_deref(), Some("customers"));
        assert!(get(headers::SOURCE_OFFSET).is_some() && get(headers::SOURCE_PARTITION).is_some());
        assert_eq!(
            m.payload(),
            Some(&b"\xff\xff garbage"[..]),
            "dead letters keep the original bytes"
        );
    }

    // Offsets were committed after delivery: the group resumes at the end.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "fieldcrypt-test")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition("customers", p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(0))
        .sum();
    assert_eq!(total, 606, "every consumed record's offset is committed");

    // Decrypt mode reads the encrypted topic back to the original values.
    let mut dcfg = cfg.clone();
    dcfg.pipeline.mode = PipelineMode::Decrypt;
    dcfg.kafka.group_id = "fieldcrypt-decrypt".into();
    let out_schema = f.dir.path().join("customer.encrypted.avsc");
    std::fs::write(
        &out_schema,
        engine
            .encryptor(&json, "c")
            .unwrap()
            .plan()
            .output_json
            .to_string(),
    )
    .unwrap();
    dcfg.routes = vec![RouteConfig {
        source: "secure.customers".into(),
        target: "plain.customers".into(),
        dead_letter: Some("dlq.secure.customers".into()),
        value_schema: Some(out_schema),
        ..Default::default()
    }];
    let (stop_tx, runner) = common::broker::start_pipeline(engine.clone(), dcfg);
    let plain =
        common::broker::consume(&bootstrap, "plain.customers", 602, Duration::from_secs(60));
    stop_tx.send(()).unwrap();
    runner
        .join()
        .unwrap()
        .expect("decrypt pipeline stops cleanly");
    assert_eq!(plain.len(), 602);
    for m in &plain {
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        if let Some(v) = m.payload() {
            assert_eq!(v, originals[&key].1.as_slice());
            assert!(m
                .headers()
                .map(|h| h.iter().all(|h| h.key != headers::DEK))
                .unwrap_or(true));
        }
    }
}
