//! The pipeline against a real Kafka-protocol broker (tansu, one per test on a free
//! port): 10,000 records over 3 partitions encrypted with nothing lost and every
//! sensitive field encrypted, garbage to the dead-letter topic while good records
//! flow, `/metrics` counters equal to what was sent, decrypt mode back to the
//! originals; exactly-once end to end; a processor killed with SIGKILL and restarted
//! loses nothing and then shuts down gracefully with everything committed; two
//! instances in one group split the partitions; Avro keys encrypted
//! deterministically, and a randomized key policy refused at start-up.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use common::broker::*;
use fieldcrypt::config::{Config, Delivery, PipelineMode};
use fieldcrypt::kafka::headers;
use fieldcrypt::kafka::route::{KeyFormat, RouteConfig};
use fieldcrypt::sample::Generator;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::TopicPartitionList;

fn customer_schema() -> std::path::PathBuf {
    repo().join("schemas/customer.avsc")
}

fn schema_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Produces `n` customer records keyed `k{i}`, to partition `i % partitions`, each
/// with a `seq` header; returns the values by seq.
fn produce_customers(bootstrap: &str, topic: &str, n: usize, partitions: i32) -> Vec<Vec<u8>> {
    let json = schema_json(&customer_schema());
    let tree = fieldcrypt::schema::model::SchemaTree::compile(&json).unwrap();
    let mut g = Generator::new(&tree, 7, 1000);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mut values = Vec::with_capacity(n);
    for i in 0..n {
        let mut d = Vec::new();
        g.next(&mut d);
        let key = format!("k{i}");
        let seq = i.to_string();
        let mut rec = BaseRecord::to(topic)
            .key(&key)
            .payload(&d)
            .partition(i as i32 % partitions)
            .headers(OwnedHeaders::new().insert(Header {
                key: "seq",
                value: Some(seq.as_bytes()),
            }));
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(50));
                }
            }
        }
        values.push(d);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    values
}

/// A broker holding `topics`, keys on disk, and a config for consumer `group`.
struct Setup {
    _broker: Broker,
    bs: String,
    dir: tempfile::TempDir,
    cfg: Config,
}

fn setup(topics: &[(&str, i32)], group: &str) -> Setup {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    create_topics(&bs, topics);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = keys_on_disk(dir.path(), &bs, &["default"], &["email"]);
    cfg.kafka.group_id = group.into();
    Setup {
        _broker: broker,
        bs,
        dir,
        cfg,
    }
}

fn seq(m: &OwnedMessage) -> usize {
    header(m, "seq").expect("seq header kept").parse().unwrap()
}

fn route(source: &str, target: &str, schema: &Path) -> RouteConfig {
    RouteConfig {
        source: source.into(),
        target: target.into(),
        value_schema: Some(schema.to_path_buf()),
        ..Default::default()
    }
}

/// Every sensitive field of an encrypted customer is bytes, and the blind index is there.
#[allow(deprecated)] // from_avro_datum: the builder replacing it is more ceremony here.
fn assert_encrypted(value: &[u8], out_schema: &apache_avro::Schema) {
    let v = apache_avro::from_avro_datum(out_schema, &mut &value[..], None).unwrap();
    let Value::Record(fields) = v else {
        panic!("not a record")
    };
    let f: HashMap<&str, &Value> = fields.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for name in ["email", "ssn", "full_name"] {
        assert!(matches!(f[name], Value::Bytes(_)), "{name} is encrypted");
    }
    assert!(
        matches!(f["phone"], Value::Union(_, b) if matches!(**b, Value::Bytes(_) | Value::Null)),
        "phone is encrypted or null"
    );
    assert!(matches!(f["email_bidx"], Value::Bytes(_)));
    let Value::Record(addr) = f["address"] else {
        panic!("address")
    };
    assert!(
        matches!(addr[0].1, Value::Bytes(_)),
        "address.street is encrypted"
    );
}

/// Decrypts an encrypted record with the DEKs from its headers.
fn decrypt(
    engine: &fieldcrypt::engine::Engine,
    dec: &fieldcrypt::transform::Decryptor,
    m: &OwnedMessage,
) -> Vec<u8> {
    use rdkafka::message::Headers;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut deks = fieldcrypt::transform::decrypt::DekSet::new();
    for h in m
        .headers()
        .unwrap()
        .iter()
        .filter(|h| h.key == headers::DEK)
    {
        let w = headers::decode_dek(h.value.unwrap()).unwrap();
        let k = rt.block_on(engine.unwrap_dek(&w)).unwrap();
        deks.insert(w.id, k);
    }
    let mut back = Vec::new();
    dec.decrypt(m.payload().unwrap(), &deks, &mut back).unwrap();
    back
}

fn committed_total(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(0).max(0))
        .sum()
}

#[test]
fn ten_thousand_records_dead_letters_metrics_and_decrypt() {
    let Setup {
        _broker,
        bs,
        dir,
        mut cfg,
    } = setup(
        &[
            ("customers", 3),
            ("secure.customers", 3),
            ("dlq.customers", 1),
            ("plain.customers", 3),
        ],
        "encryptor",
    );
    cfg.routes = vec![route("customers", "secure.customers", &customer_schema())];
    let engine = engine(&cfg);

    let originals = produce_customers(&bs, "customers", 10_000, 3);
    let garbage: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .unwrap();
    for i in 0..5 {
        garbage
            .send(
                BaseRecord::to("customers")
                    .key("bad")
                    .payload(&b"\x02\xff not avro"[..])
                    .partition(i % 3),
            )
            .unwrap();
    }
    garbage.flush(Duration::from_secs(10)).unwrap();

    let addr = cfg.metrics.listen.clone();
    let (stop, runner) = start_pipeline(engine.clone(), cfg.clone());
    wait_until(Duration::from_secs(60), "/health/ready", || {
        std::net::TcpStream::connect(&addr).is_ok() && http_get(&addr, "/health/ready").0 == 200
    });
    assert_eq!(http_get(&addr, "/health/live").0, 200);
    wait_until(
        Duration::from_secs(120),
        "10,000 produced and 5 dead letters",
        || {
            let m = http_get(&addr, "/metrics").1;
            metric(&m, "fieldcrypt_records_produced_total", &[]) >= 10_000.0
                && metric(&m, "fieldcrypt_dead_letters_total", &[]) >= 5.0
        },
    );
    let m = http_get(&addr, "/metrics").1;
    assert_eq!(
        metric(
            &m,
            "fieldcrypt_records_consumed_total",
            &[("topic", "customers")]
        ),
        10_005.0
    );
    assert_eq!(
        metric(
            &m,
            "fieldcrypt_records_produced_total",
            &[("topic", "secure.customers")]
        ),
        10_000.0
    );
    // Dead letters count by class (every series exists from start-up); the code
    // is in fieldcrypt_errors_total and the dead letters' headers.
    assert_eq!(
        metric(
            &m,
            "fieldcrypt_dead_letters_total",
            &[("topic", "customers"), ("class", "format")]
        ),
        5.0
    );
    assert_eq!(
        metric(
            &m,
            "fieldcrypt_errors_total",
            &[("code", "schema_mismatch")]
        ),
        5.0
    );
    let fields = |mode| {
        metric(
            &m,
            "fieldcrypt_fields_total",
            &[("operation", "encrypt"), ("mode", mode)],
        )
    };
    assert_eq!(fields("deterministic"), 10_000.0, "one e-mail per record");
    assert_eq!(fields("blind_index"), 10_000.0);
    assert!(
        fields("randomized") >= 30_000.0,
        "ssn, name, street (+ phone)"
    );
    assert_eq!(metric(&m, "fieldcrypt_in_flight_records", &[]), 0.0);
    let kms_calls = metric(
        &m,
        "fieldcrypt_kms_requests_total",
        &[("operation", "generate_data_key")],
    );
    assert!(
        (1.0..=3.0).contains(&kms_calls),
        "one DEK serves the run, not {kms_calls}"
    );
    assert!(metric(&m, "fieldcrypt_end_to_end_latency_seconds_count", &[]) >= 10_005.0);
    // One transform in 64 is timed (two clock reads per record cost more than the
    // histogram is worth).
    let timed = metric(&m, "fieldcrypt_transform_duration_seconds_count", &[]);
    assert!(
        (150.0..=10_005.0).contains(&timed),
        "{timed} transforms timed"
    );
    assert_eq!(metric(&m, "fieldcrypt_assigned_partitions", &[]), 3.0);
    stop.send(()).unwrap();
    let stats = runner.join().unwrap().expect("pipeline stops cleanly");
    assert_eq!(
        (stats.consumed, stats.produced, stats.dead_lettered),
        (10_005, 10_000, 5)
    );
    assert_eq!(
        committed_total(&bs, "encryptor", "customers", 3),
        10_005,
        "graceful stop commits"
    );

    // Nothing lost, nothing twice, partitions kept, every sensitive field encrypted.
    let out = consume(&bs, "secure.customers", 10_000, Duration::from_secs(120));
    assert_eq!(out.len(), 10_000);
    let json = schema_json(&customer_schema());
    let out_json = engine
        .encryptor(&json, "c")
        .unwrap()
        .plan()
        .output_json
        .clone();
    let out_schema = apache_avro::Schema::parse(&out_json).unwrap();
    let dec = engine.decryptor(&out_json, "out").unwrap();
    let mut seen = HashSet::new();
    for m in &out {
        let s = seq(m);
        assert!(seen.insert(s), "record {s} twice");
        assert_eq!(m.partition(), s as i32 % 3, "partition follows the input");
        assert_eq!(m.key(), Some(format!("k{s}").as_bytes()));
        assert_encrypted(m.payload().unwrap(), &out_schema);
        assert_eq!(decrypt(&engine, &dec, m), originals[s]);
    }
    let dead = consume(&bs, "dlq.customers", 5, Duration::from_secs(60));
    assert_eq!(dead.len(), 5);
    for d in &dead {
        assert_eq!(
            header(d, headers::ERROR_CODE).as_deref(),
            Some("schema_mismatch")
        );
        assert_eq!(
            header(d, headers::SOURCE_TOPIC).as_deref(),
            Some("customers")
        );
        assert!(header(d, headers::ERROR_MESSAGE).is_some());
        let offset: i64 = header(d, headers::SOURCE_OFFSET).unwrap().parse().unwrap();
        assert!(offset >= 3333, "garbage came after the good records");
        assert_eq!(d.payload(), Some(&b"\x02\xff not avro"[..]));
    }

    // Decrypt mode restores the originals for an authorised zone.
    let out_file = dir.path().join("customer.encrypted.avsc");
    std::fs::write(&out_file, out_json.to_string()).unwrap();
    let mut dcfg = cfg.clone();
    dcfg.pipeline.mode = PipelineMode::Decrypt;
    dcfg.kafka.group_id = "decryptor".into();
    dcfg.metrics.listen = format!("127.0.0.1:{}", free_port());
    dcfg.routes = vec![route("secure.customers", "plain.customers", &out_file)];
    let (stop, runner) = start_pipeline(common::broker::engine(&dcfg), dcfg);
    let plain = consume(&bs, "plain.customers", 10_000, Duration::from_secs(120));
    stop.send(()).unwrap();
    runner
        .join()
        .unwrap()
        .expect("decrypt pipeline stops cleanly");
    assert_eq!(plain.len(), 10_000);
    for m in &plain {
        assert_eq!(m.payload().unwrap(), originals[seq(m)].as_slice());
        assert!(header(m, headers::DEK).is_none(), "DEK headers are removed");
    }
}

#[test]
fn exactly_once_end_to_end() {
    let Setup {
        _broker,
        bs,
        dir: _dir,
        mut cfg,
    } = setup(
        &[("orders", 3), ("secure.orders", 3), ("dlq.orders", 1)],
        "eos",
    );
    cfg.pipeline.delivery = Delivery::ExactlyOnce;
    cfg.routes = vec![route("orders", "secure.orders", &customer_schema())];
    let engine = engine(&cfg);
    let originals = produce_customers(&bs, "orders", 3000, 3);
    let (stop, runner) = start_pipeline(engine.clone(), cfg.clone());
    let out = consume(&bs, "secure.orders", 3000, Duration::from_secs(120));
    stop.send(()).unwrap();
    let stats = runner.join().unwrap().expect("pipeline stops cleanly");
    assert!(
        stats.transactions >= 1,
        "work was committed in transactions"
    );
    assert_eq!(
        out.len(),
        3000,
        "each record exactly once for read_committed readers"
    );
    let seqs: HashSet<usize> = out.iter().map(seq).collect();
    assert_eq!(seqs.len(), 3000);
    assert_eq!(
        committed_total(&bs, "eos", "orders", 3),
        3000,
        "offsets committed with the transactions"
    );
    let json = schema_json(&customer_schema());
    let out_json = engine
        .encryptor(&json, "c")
        .unwrap()
        .plan()
        .output_json
        .clone();
    let dec = engine.decryptor(&out_json, "out").unwrap();
    for m in out.iter().take(50) {
        assert_eq!(decrypt(&engine, &dec, m), originals[seq(m)]);
    }
    let m = engine.metrics().render();
    assert!(
        metric(
            &m,
            "fieldcrypt_transactions_total",
            &[("outcome", "committed")]
        ) >= 1.0
    );
}

/// The config file the binary reads.
fn write_config(path: &Path, cfg: &Config, extra: &str) {
    let r = &cfg.routes[0];
    let props: String = cfg
        .kafka
        .properties
        .iter()
        .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
        .collect();
    std::fs::write(
        path,
        format!(
            "[kms]\nkek_file = \"{}\"\n[keyset]\nfile = \"{}\"\n[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{}\"\n[kafka.properties]\n{props}[metrics]\nlisten = \"{}\"\n{extra}\n[[routes]]\nsource = \"{}\"\ntarget = \"{}\"\nvalue_schema = \"{}\"\n",
            cfg.kms.kek_file().unwrap().display(),
            cfg.keyset.file.display(),
            cfg.kafka.bootstrap_servers,
            cfg.kafka.group_id,
            cfg.metrics.listen,
            r.source,
            r.target,
            r.value_schema.as_ref().unwrap().display()
        ),
    )
    .unwrap();
}

#[test]
fn sigkill_mid_stream_then_restart_loses_nothing_and_sigterm_commits() {
    let Setup {
        _broker,
        bs,
        dir,
        mut cfg,
    } = setup(&[("events", 3), ("secure.events", 3)], "killed");
    cfg.routes = vec![route("events", "secure.events", &customer_schema())];
    let conf = dir.path().join("fieldcrypt.toml");
    // A small window keeps the first run from finishing before it is killed.
    write_config(&conf, &cfg, "[pipeline]\nmax_in_flight = 200");
    let n = 20_000;
    produce_customers(&bs, "events", n, 3);
    let bin = env!("CARGO_BIN_EXE_fieldcrypt");
    let addr = cfg.metrics.listen.clone();

    let mut first = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&conf)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "the first run to produce", || {
        std::net::TcpStream::connect(&addr).is_ok()
            && metric(
                &http_get(&addr, "/metrics").1,
                "fieldcrypt_records_produced_total",
                &[],
            ) >= 1000.0
    });
    first.kill().unwrap(); // SIGKILL: no drain, no final commit.
    first.wait().unwrap();

    let log = dir.path().join("second.log");
    let mut second = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&conf)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let out = consume(&bs, "secure.events", n, Duration::from_secs(180));
    let seqs: HashSet<usize> = out.iter().map(seq).collect();
    assert_eq!(
        seqs.len(),
        n,
        "every record delivered at least once across the kill"
    );
    // Graceful shutdown: SIGTERM drains, commits and exits 0.
    wait_until(Duration::from_secs(30), "the restart to settle", || {
        metric(
            &http_get(&addr, "/metrics").1,
            "fieldcrypt_in_flight_records",
            &[],
        ) == 0.0
    });
    let pid = second.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = second.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM exits 0; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        committed_total(&bs, "killed", "events", 3),
        n as i64,
        "everything committed"
    );
}

#[test]
fn two_instances_split_the_partitions() {
    let Setup {
        _broker,
        bs,
        dir: _dir,
        mut cfg,
    } = setup(&[("clicks", 4), ("secure.clicks", 4)], "pair");
    cfg.routes = vec![route("clicks", "secure.clicks", &customer_schema())];
    let mut cfg2 = cfg.clone();
    cfg2.metrics.listen = format!("127.0.0.1:{}", free_port());
    let (a_addr, b_addr) = (cfg.metrics.listen.clone(), cfg2.metrics.listen.clone());
    let (stop_a, a) = start_pipeline(engine(&cfg), cfg.clone());
    let (stop_b, b) = start_pipeline(engine(&cfg2), cfg2);
    let assigned = |addr: &str| {
        std::net::TcpStream::connect(addr).is_ok()
            && metric(
                &http_get(addr, "/metrics").1,
                "fieldcrypt_assigned_partitions",
                &[],
            ) == 2.0
    };
    wait_until(Duration::from_secs(90), "two partitions each", || {
        assigned(&a_addr) && assigned(&b_addr)
    });
    produce_customers(&bs, "clicks", 4000, 4);
    let out = consume(&bs, "secure.clicks", 4000, Duration::from_secs(120));
    stop_a.send(()).unwrap();
    stop_b.send(()).unwrap();
    let (sa, sb) = (a.join().unwrap().unwrap(), b.join().unwrap().unwrap());
    let seqs: HashSet<usize> = out.iter().map(seq).collect();
    assert_eq!(seqs.len(), 4000, "together they deliver everything");
    assert!(
        sa.consumed > 0 && sb.consumed > 0,
        "both did work: {sa:?} {sb:?}"
    );
    assert_eq!(
        sa.consumed + sb.consumed,
        4000,
        "and nothing twice in a stable group"
    );
}

#[test]
fn avro_keys_encrypt_deterministically_and_randomized_keys_are_refused() {
    let Setup {
        _broker,
        bs,
        dir,
        mut cfg,
    } = setup(
        &[("users", 3), ("secure.users", 3), ("plain.users", 3)],
        "keys",
    );
    let key_schema = dir.path().join("key.avsc");
    std::fs::write(
        &key_schema,
        r#"{"type":"record","name":"UserKey","namespace":"t","fields":[
            {"name":"user_id","type":"string","sensitive":{"mode":"deterministic"}}]}"#,
    )
    .unwrap();
    cfg.routes = vec![RouteConfig {
        key_format: KeyFormat::Avro,
        key_schema: Some(key_schema.clone()),
        ..route("users", "secure.users", &customer_schema())
    }];

    // A randomized key field is a start-up error.
    let bad = dir.path().join("bad_key.avsc");
    std::fs::write(
        &bad,
        r#"{"type":"record","name":"K","fields":[{"name":"id","type":"string","sensitive":true}]}"#,
    )
    .unwrap();
    let mut bad_cfg = cfg.clone();
    bad_cfg.routes[0].key_schema = Some(bad);
    let (_stop, r) = start_pipeline(engine(&bad_cfg), bad_cfg);
    let err = r.join().unwrap().unwrap_err().to_string();
    assert!(
        err.contains("key_schema") && err.contains("deterministic"),
        "clear start-up error: {err}"
    );

    // 300 records, 30 distinct keys: equal keys stay equal, none stays plaintext.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .unwrap();
    let json = schema_json(&customer_schema());
    let tree = fieldcrypt::schema::model::SchemaTree::compile(&json).unwrap();
    let mut g = Generator::new(&tree, 3, 10);
    let mut keys = HashMap::new();
    for i in 0..300 {
        let user = format!("user-{}", i % 30);
        let mut key = Vec::new();
        fieldcrypt::avro::binary::write_bytes(&mut key, user.as_bytes());
        let mut v = Vec::new();
        g.next(&mut v);
        let seq = i.to_string();
        producer
            .send(BaseRecord::to("users").key(&key).payload(&v).headers(
                OwnedHeaders::new().insert(Header {
                    key: "seq",
                    value: Some(seq.as_bytes()),
                }),
            ))
            .unwrap();
        keys.insert(i, key);
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let (stop, r) = start_pipeline(engine(&cfg), cfg.clone());
    let out = consume(&bs, "secure.users", 300, Duration::from_secs(120));
    stop.send(()).unwrap();
    r.join().unwrap().unwrap();
    assert_eq!(out.len(), 300);
    let mut by_user: HashMap<Vec<u8>, HashSet<Vec<u8>>> = HashMap::new();
    for m in &out {
        let input = &keys[&seq(m)];
        let k = m.key().unwrap().to_vec();
        assert_ne!(&k, input, "the key is encrypted");
        assert!(
            !k.windows(5).any(|w| w == b"user-"),
            "no plaintext in the key"
        );
        by_user.entry(input.clone()).or_default().insert(k);
    }
    assert_eq!(by_user.len(), 30);
    assert!(
        by_user.values().all(|ks| ks.len() == 1),
        "equal keys stay equal"
    );

    // Decrypt mode restores the keys.
    let engine_out = engine(&cfg);
    let enc_key = engine_out
        .encryptor(&schema_json(&key_schema), "k")
        .unwrap();
    let enc_key_file = dir.path().join("key.encrypted.avsc");
    std::fs::write(&enc_key_file, enc_key.plan().output_json.to_string()).unwrap();
    let enc_val_file = dir.path().join("value.encrypted.avsc");
    std::fs::write(
        &enc_val_file,
        engine_out
            .encryptor(&json, "v")
            .unwrap()
            .plan()
            .output_json
            .to_string(),
    )
    .unwrap();
    let mut dcfg = cfg.clone();
    dcfg.pipeline.mode = PipelineMode::Decrypt;
    dcfg.kafka.group_id = "keys-dec".into();
    dcfg.metrics.listen = format!("127.0.0.1:{}", free_port());
    dcfg.routes = vec![RouteConfig {
        key_format: KeyFormat::Avro,
        key_schema: Some(enc_key_file),
        ..route("secure.users", "plain.users", &enc_val_file)
    }];
    let (stop, r) = start_pipeline(engine(&dcfg), dcfg);
    let plain = consume(&bs, "plain.users", 300, Duration::from_secs(120));
    stop.send(()).unwrap();
    r.join().unwrap().unwrap();
    assert_eq!(plain.len(), 300);
    for m in &plain {
        assert_eq!(m.key().unwrap(), keys[&seq(m)].as_slice());
    }
    let _ = Arc::strong_count(&engine_out);
}

/// Records in batches compressed with every codec a Kafka producer may use
/// (gzip, snappy, lz4, zstd), produced by a third-party client (Python's
/// confluent-kafka), are all consumed and encrypted: none stalls a partition.
#[test]
fn batches_compressed_with_every_codec_are_consumed() {
    let Setup {
        _broker,
        bs,
        dir,
        mut cfg,
    } = setup(&[("zipped", 1), ("secure.zipped", 1)], "zipped");
    cfg.routes = vec![route("zipped", "secure.zipped", &customer_schema())];
    let file = dir.path().join("customers.avro");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldcrypt"))
        .args(["sample", "--schema"])
        .arg(customer_schema())
        .args(["--count", "50"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    for codec in codecs {
        let out = std::process::Command::new("python3")
            .arg(repo().join("scripts/kafka_tool.py"))
            .args([
                "produce-file",
                "--bootstrap",
                &bs,
                "--topic",
                "zipped",
                "--compression",
                codec,
            ])
            .arg("--file")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{codec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (stop, runner) = start_pipeline(engine(&cfg), cfg.clone());
    let got = consume(
        &bs,
        "secure.zipped",
        50 * codecs.len(),
        Duration::from_secs(90),
    );
    stop.send(()).unwrap();
    let stats = runner.join().unwrap().unwrap();
    assert_eq!(got.len(), 50 * codecs.len(), "{stats:?}");
    assert_eq!(stats.dead_lettered, 0);
}
