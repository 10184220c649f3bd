//! Malformed input through a real broker (tansu): every class of bad record lands
//! in the dead-letter topic with its code while the good records around it flow,
//! the pipeline keeps running, and consumed = produced + dead-lettered exactly.
//!
//! Encrypting (raw Avro route): empty, one byte, truncated, trailing bytes, a huge
//! length varint, a negative length, a datum of another schema, 3 MB of garbage
//! (dead letter without payload), a record whose ciphertext outgrows the target's
//! max.message.bytes, a valid 3 MB record, a forged `fieldcrypt.error.code` header,
//! a header name with a NUL byte, a tombstone. Decrypting: a missing, garbage,
//! duplicated or re-scoped `fieldcrypt.dek` header, a known key id with another
//! wrapped blob, a tampered ciphertext. Registry-framed: a wrong magic byte and an
//! unknown schema id.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::broker::*;
use fieldcrypt::config::PipelineMode;
use fieldcrypt::kafka::headers;
use fieldcrypt::kafka::route::RouteConfig;
use fieldcrypt::sample::Generator;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const WAIT: Duration = Duration::from_secs(90);

fn create(bs: &str, topics: &[(&str, Option<&str>)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, max)| {
            let n = NewTopic::new(t, 1, TopicReplication::Fixed(1));
            match max {
                Some(m) => n.set("max.message.bytes", m),
                None => n,
            }
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
}

/// One record to produce: its label (the `case` header) and contents.
struct Case {
    label: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn case(label: &str, value: Option<Vec<u8>>) -> Case {
    Case {
        label: label.into(),
        key: Some(label.as_bytes().to_vec()),
        value,
        headers: Vec::new(),
    }
}

fn produce(bs: &str, topic: &str, cases: &[Case]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("message.max.bytes", "10000000")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for c in cases {
        let mut h = OwnedHeaders::new().insert(Header {
            key: "case",
            value: Some(c.label.as_bytes()),
        });
        for (k, v) in &c.headers {
            h = h.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(h);
        if let Some(k) = &c.key {
            rec = rec.key(k);
        }
        if let Some(v) = &c.value {
            rec = rec.payload(v);
        }
        p.send(rec).map_err(|(e, _)| e).unwrap();
        // One at a time: the order of cases in the topic is the order here.
        p.flush(Duration::from_secs(30)).unwrap();
    }
}

fn label(m: &OwnedMessage) -> String {
    match header(m, "case") {
        Some(l) => l,
        // A dead letter whose original headers could not be read says so.
        None if header(m, headers::ERROR_HEADERS).is_some() => "unreadable-headers".into(),
        None => "?".into(),
    }
}

/// The dead letters by case label: (code, has payload).
fn dead_letters(msgs: &[OwnedMessage]) -> Vec<(String, String, bool)> {
    let mut v: Vec<(String, String, bool)> = msgs
        .iter()
        .map(|m| {
            (
                label(m),
                header(m, headers::ERROR_CODE).unwrap_or_default(),
                m.payload().is_some(),
            )
        })
        .collect();
    v.sort();
    v
}

fn good_records(n: usize) -> Vec<Vec<u8>> {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/customer.avsc")).unwrap(),
    )
    .unwrap();
    let tree = fieldcrypt::schema::model::SchemaTree::compile(&json).unwrap();
    let mut g = Generator::new(&tree, 3, 100);
    (0..n)
        .map(|_| {
            let mut d = Vec::new();
            g.next(&mut d);
            d
        })
        .collect()
}

/// A customer datum whose `ssn` (a sensitive string) is `n` bytes long: id (long),
/// account_id, email, then ssn follow the customer schema's field order.
fn customer_with_big_ssn(template: &[u8], n: usize) -> Vec<u8> {
    use fieldcrypt::avro::binary::{write_bytes, Cursor};
    let mut c = Cursor::new(template);
    c.read_long().unwrap();
    c.read_str().unwrap();
    c.read_str().unwrap();
    let head = template[..c.position()].to_vec();
    c.read_str().unwrap();
    let mut out = head;
    write_bytes(&mut out, "9".repeat(n).as_bytes());
    out.extend_from_slice(&template[c.position()..]);
    out
}

fn count(text: &str, name: &str) -> f64 {
    metric(text, name, &[])
}

#[test]
fn malformed_records_are_dead_letters_and_the_stream_goes_on() {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    create(
        &bs,
        &[
            ("src", None),
            ("secure", Some("20000")),
            ("dlq.src", None),
            ("tampered", None),
            ("plain", None),
            ("dlq.tampered", None),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = keys_on_disk(dir.path(), &bs, &["default"], &["email"]);
    cfg.kafka.group_id = "poison".into();
    cfg.routes = vec![RouteConfig {
        source: "src".into(),
        target: "secure".into(),
        value_schema: Some(repo().join("schemas/customer.avsc")),
        ..Default::default()
    }];
    let good = good_records(16);
    let mut g = good.iter().cloned();
    let mut cases = Vec::new();
    let mut bad = |label: &str, value: Option<Vec<u8>>, hdrs: Vec<(String, Option<Vec<u8>>)>| {
        let mut c = case(label, value);
        c.headers = hdrs;
        cases.push(c);
    };
    let valid = good[0].clone();
    bad("empty", Some(vec![]), vec![]);
    bad("one-byte", Some(vec![0x02]), vec![]);
    bad("truncated", Some(valid[..valid.len() / 2].to_vec()), vec![]);
    bad(
        "trailing",
        Some([valid.clone(), vec![1, 2, 3]].concat()),
        vec![],
    );
    // id 1, then account_id with a length varint of 2^62.
    bad(
        "huge-length",
        Some(vec![
            0x02, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
        ]),
        vec![],
    );
    bad("negative-length", Some(vec![0x02, 0x03, b'a']), vec![]);
    // A string datum: "hello".
    bad("other-schema", Some(b"\x0ahello".to_vec()), vec![]);
    bad("garbage-3mb", Some(vec![0xee; 3 << 20]), vec![]);
    bad(
        "grows-past-limit",
        Some(customer_with_big_ssn(&valid, 19_900)),
        vec![],
    );
    bad(
        "valid-3mb",
        Some(customer_with_big_ssn(&valid, 3 << 20)),
        vec![],
    );
    bad(
        "forged-error-on-bad",
        Some(vec![0x02]),
        vec![("fieldcrypt.error.code".into(), Some(b"forged".to_vec()))],
    );
    bad(
        "nul-header-name",
        Some(valid.clone()),
        vec![("trace\0id".into(), Some(b"x".to_vec()))],
    );
    let n_bad = cases.len();
    // Good records between and after the bad ones; one carries a forged header,
    // one is a tombstone.
    let mut all = Vec::new();
    for (i, c) in cases.into_iter().enumerate() {
        all.push(c);
        let mut ok = case(&format!("good-{i}"), g.next());
        if i == 0 {
            ok.headers = vec![("fieldcrypt.error.code".into(), Some(b"forged".to_vec()))];
        }
        all.push(ok);
    }
    all.push(case("tombstone", None));
    let n_good = all.len() - n_bad;
    produce(&bs, "src", &all);

    let (stop, run) = start_pipeline(engine(&cfg), cfg.clone());
    let out = consume(&bs, "secure", n_good, WAIT);
    let dlq = consume(&bs, "dlq.src", n_bad, WAIT);
    let addr = cfg.metrics.listen.clone();
    wait_until(WAIT, "everything settled", || {
        let (_, m) = http_get(&addr, "/metrics");
        count(&m, "fieldcrypt_in_flight_records") == 0.0
            && count(&m, "fieldcrypt_records_consumed_total") as usize == all.len()
    });
    let (_, m) = http_get(&addr, "/metrics");
    stop.send(()).unwrap();
    let stats = run.join().unwrap().expect("the pipeline ran to the end");

    assert_eq!(stats.consumed as usize, all.len());
    assert_eq!(
        (stats.produced + stats.dead_lettered) as usize,
        all.len(),
        "in = out + dead letters"
    );
    assert_eq!(stats.dead_lettered as usize, n_bad);
    assert_eq!(out.len(), n_good, "every good record is out");
    assert!(
        out.iter()
            .all(|m| header(m, "fieldcrypt.error.code").is_none()),
        "a forged fieldcrypt.* header never passes"
    );
    assert!(out
        .iter()
        .any(|m| label(m) == "tombstone" && m.payload().is_none()));
    assert!(count(&m, "fieldcrypt_reserved_headers_dropped_total") >= 1.0);

    let d = dead_letters(&dlq);
    let expect: Vec<(&str, &str, bool)> = vec![
        ("empty", "schema_mismatch", true),
        ("forged-error-on-bad", "schema_mismatch", true),
        ("garbage-3mb", "schema_mismatch", false),
        ("grows-past-limit", "record_too_large", true),
        ("huge-length", "schema_mismatch", true),
        ("negative-length", "schema_mismatch", true),
        ("one-byte", "schema_mismatch", true),
        ("other-schema", "schema_mismatch", true),
        ("trailing", "schema_mismatch", true),
        ("truncated", "schema_mismatch", true),
        ("unreadable-headers", "bad_header", true),
        ("valid-3mb", "record_too_large", false),
    ];
    let got: Vec<(&str, &str, bool)> = d
        .iter()
        .map(|(l, c, p)| (l.as_str(), c.as_str(), *p))
        .collect();
    assert_eq!(got, expect);
    for m in &dlq {
        let codes: Vec<_> = m
            .headers()
            .unwrap()
            .iter()
            .filter(|h| h.key == headers::ERROR_CODE)
            .collect();
        assert_eq!(codes.len(), 1, "one error code, ours, on {}", label(m));
        if m.payload().is_none() {
            assert!(
                header(m, headers::ERROR_PAYLOAD).is_some(),
                "says why the payload is gone"
            );
        }
        assert!(header(m, headers::SOURCE_OFFSET).is_some());
    }
    assert_eq!(
        committed_offset(&bs, "poison", "src"),
        all.len() as i64,
        "committed past every record, bad ones included"
    );

    // Decrypting: tampered copies of the encrypted records.
    let enc: Vec<&OwnedMessage> = out.iter().filter(|m| m.payload().is_some()).collect();
    let dek = |m: &OwnedMessage| header_bytes(m, headers::DEK).unwrap();
    let genuine = dek(enc[0]);
    let w = headers::decode_dek(&genuine).unwrap();
    let mut rescoped = w.clone();
    rescoped.scope = "tenant:evil".into();
    let mut reblobbed = w.clone();
    reblobbed.wrapped.blob[20] ^= 1;
    // Flip a bit inside the encrypted email (id, account_id, then email's bytes).
    let mut tampered_ct = enc[2].payload().unwrap().to_vec();
    let at = {
        let mut c = fieldcrypt::avro::binary::Cursor::new(&tampered_ct);
        c.read_long().unwrap();
        c.read_str().unwrap();
        c.read_bytes().unwrap();
        c.position() - 3
    };
    tampered_ct[at] ^= 0x40;
    let with = |label: &str, m: &OwnedMessage, payload: Vec<u8>, deks: Vec<Vec<u8>>| Case {
        label: label.into(),
        key: m.key().map(<[u8]>::to_vec),
        value: Some(payload),
        headers: deks
            .into_iter()
            .map(|d| (headers::DEK.to_string(), Some(d)))
            .chain([(
                "fieldcrypt.error.code".to_string(),
                Some(b"forged".to_vec()),
            )])
            .collect(),
    };
    let p = |m: &OwnedMessage| m.payload().unwrap().to_vec();
    let dec_cases = vec![
        with("genuine", enc[0], p(enc[0]), vec![dek(enc[0])]),
        with(
            "duplicated-header",
            enc[1],
            p(enc[1]),
            vec![dek(enc[1]), dek(enc[1])],
        ),
        with("missing-header", enc[1], p(enc[1]), vec![]),
        with(
            "garbage-header",
            enc[1],
            p(enc[1]),
            vec![vec![0x01, 0xff, 0x00]],
        ),
        with(
            "rescoped-header",
            enc[1],
            p(enc[1]),
            vec![headers::encode_dek(&rescoped).unwrap()],
        ),
        with(
            "reblobbed-header",
            enc[1],
            p(enc[1]),
            vec![headers::encode_dek(&reblobbed).unwrap()],
        ),
        with(
            "tampered-ciphertext",
            enc[2],
            tampered_ct,
            vec![dek(enc[2])],
        ),
        with("genuine-2", enc[3], p(enc[3]), vec![dek(enc[3])]),
    ];
    produce(&bs, "tampered", &dec_cases);
    let mut dcfg = cfg.clone();
    dcfg.pipeline.mode = PipelineMode::Decrypt;
    dcfg.kafka.group_id = "poison-dec".into();
    dcfg.metrics.listen = format!("127.0.0.1:{}", free_port());
    let out_schema = dir.path().join("customer.enc.avsc");
    let plan = fieldcrypt::schema::plan::EncryptPlan::build(
        &serde_json::from_str(
            &std::fs::read_to_string(repo().join("schemas/customer.avsc")).unwrap(),
        )
        .unwrap(),
        "c",
        &cfg.plan_config(),
    )
    .unwrap();
    std::fs::write(&out_schema, plan.output_json.to_string()).unwrap();
    dcfg.routes = vec![RouteConfig {
        source: "tampered".into(),
        target: "plain".into(),
        value_schema: Some(out_schema),
        // The encrypting route wrote to "secure": its DEKs have that scope.
        accept_scopes: Some(vec!["route:secure".into()]),
        ..Default::default()
    }];
    let (stop, run) = start_pipeline(engine(&dcfg), dcfg);
    let plain = consume(&bs, "plain", 3, WAIT);
    let ddlq = consume(&bs, "dlq.tampered", 5, WAIT);
    stop.send(()).unwrap();
    let stats = run
        .join()
        .unwrap()
        .expect("the decrypting pipeline ran to the end");
    let seen: Vec<String> = plain.iter().map(label).collect();
    assert_eq!(
        (stats.produced, stats.dead_lettered),
        (3, 5),
        "out: {seen:?}, dead letters: {:?}",
        dead_letters(&ddlq)
    );
    let mut ok: Vec<String> = plain.iter().map(label).collect();
    ok.sort();
    assert_eq!(ok, ["duplicated-header", "genuine", "genuine-2"]);
    assert!(
        plain
            .iter()
            .all(|m| header(m, "fieldcrypt.error.code").is_none()
                && header(m, headers::DEK).is_none())
    );
    let d = dead_letters(&ddlq);
    let got: Vec<(&str, &str)> = d.iter().map(|(l, c, _)| (l.as_str(), c.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("garbage-header", "bad_dek_header"),
            ("missing-header", "unknown_key"),
            ("reblobbed-header", "dek_binding_mismatch"),
            ("rescoped-header", "dek_scope_refused"),
            ("tampered-ciphertext", "authentication_failed"),
        ]
    );
}

/// Registry-framed values: a wrong magic byte and an unknown schema id are dead
/// letters; a framed good record passes.
#[test]
fn bad_framing_and_unknown_schema_ids_are_dead_letters() {
    let broker = Broker::start();
    let registry = Registry::start();
    let bs = broker.bootstrap();
    create(
        &bs,
        &[
            ("framed", None),
            ("secure.framed", None),
            ("dlq.framed", None),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = keys_on_disk(dir.path(), &bs, &["default"], &["email"]);
    cfg.kafka.group_id = "framed".into();
    cfg.schema_registry.url = Some(registry.url());
    cfg.routes = vec![RouteConfig {
        source: "framed".into(),
        target: "secure.${topic}".into(),
        ..Default::default()
    }];
    let schema = std::fs::read_to_string(repo().join("schemas/customer.avsc")).unwrap();
    let id = register(registry.port, "framed-value", &schema);
    let good = good_records(1).remove(0);
    let mut framed = vec![0u8];
    framed.extend_from_slice(&id.to_be_bytes());
    framed.extend_from_slice(&good);
    let mut wrong_magic = framed.clone();
    wrong_magic[0] = 1;
    let mut unknown = framed.clone();
    unknown[1..5].copy_from_slice(&999_999u32.to_be_bytes());
    produce(
        &bs,
        "framed",
        &[
            case("wrong-magic", Some(wrong_magic)),
            case("unknown-id", Some(unknown)),
            case("short", Some(vec![0, 0])),
            case("good", Some(framed)),
        ],
    );
    let (stop, run) = start_pipeline(engine(&cfg), cfg.clone());
    let out = consume(&bs, "secure.framed", 1, WAIT);
    let dlq = consume(&bs, "dlq.framed", 3, WAIT);
    stop.send(()).unwrap();
    let stats = run.join().unwrap().unwrap();
    assert_eq!((stats.produced, stats.dead_lettered), (1, 3));
    assert_eq!(label(&out[0]), "good");
    let d = dead_letters(&dlq);
    let got: Vec<(&str, &str)> = d.iter().map(|(l, c, _)| (l.as_str(), c.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("short", "bad_framing"),
            ("unknown-id", "unknown_schema_id"),
            ("wrong-magic", "bad_framing"),
        ]
    );
}

fn header_bytes(m: &OwnedMessage, key: &str) -> Option<Vec<u8>> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value.map(<[u8]>::to_vec))
}

fn committed_offset(bs: &str, group: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()[0]
        .offset()
        .to_raw()
        .unwrap_or(-1)
}

/// Registers a schema with the test registry; its id.
fn register(port: u16, subject: &str, schema: &str) -> u32 {
    let body = serde_json::json!({ "schema": schema }).to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /subjects/{subject}/versions HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let json = buf.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["id"].as_u64().unwrap() as u32
}

/// A producer cannot switch encryption off by registering a schema version
/// without the markings: the subject's policy only grows. Records written with
/// the downgraded version are dead letters (`policy_downgrade`) and their SSNs
/// never reach the target; `allow_downgrade` lets a deliberate one through. A
/// route's `require` holds for raw schemas at start-up.
#[test]
fn a_schema_version_without_the_markings_is_refused() {
    let broker = Broker::start();
    let registry = Registry::start();
    let bs = broker.bootstrap();
    create(
        &bs,
        &[
            ("down", None),
            ("secure.down", None),
            ("dlq.down", None),
            ("open.down", None),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = keys_on_disk(dir.path(), &bs, &["default"], &["email"]);
    cfg.kafka.group_id = "down".into();
    cfg.schema_registry.url = Some(registry.url());
    cfg.routes = vec![RouteConfig {
        source: "down".into(),
        target: "secure.${topic}".into(),
        ..Default::default()
    }];
    let v1 = std::fs::read_to_string(repo().join("schemas/customer.avsc")).unwrap();
    let v2 = v1.replace(
        r#""ssn", "type": "string", "sensitive": true"#,
        r#""ssn", "type": "string""#,
    );
    assert_ne!(v1, v2, "v2 drops the ssn marking");
    let id1 = register(registry.port, "down-value", &v1);
    let id2 = register(registry.port, "down-value", &v2);
    let good = good_records(2);
    let frame = |id: u32, d: &[u8]| [&[0u8][..], &id.to_be_bytes(), d].concat();
    let ssn = |d: &[u8]| {
        let mut c = fieldcrypt::avro::binary::Cursor::new(d);
        c.read_long().unwrap();
        c.read_str().unwrap();
        c.read_str().unwrap();
        c.read_str().unwrap().to_string()
    };
    produce(
        &bs,
        "down",
        &[
            case("v1", Some(frame(id1, &good[0]))),
            case("v2", Some(frame(id2, &good[1]))),
        ],
    );
    let (stop, run) = start_pipeline(engine(&cfg), cfg.clone());
    let out = consume(&bs, "secure.down", 1, WAIT);
    let dlq = consume(&bs, "dlq.down", 1, WAIT);
    stop.send(()).unwrap();
    let stats = run.join().unwrap().unwrap();
    assert_eq!((stats.produced, stats.dead_lettered), (1, 1));
    assert_eq!(label(&out[0]), "v1");
    let d = dead_letters(&dlq);
    assert_eq!(d[0].0, "v2");
    assert_eq!(d[0].1, "policy_downgrade");
    let msg = header(&dlq[0], headers::ERROR_MESSAGE).unwrap();
    assert!(
        msg.contains("Customer.ssn") && msg.contains("allow_downgrade"),
        "{msg}"
    );
    let secret = ssn(&good[1]);
    assert!(out.iter().all(|m| !m
        .payload()
        .unwrap()
        .windows(secret.len())
        .any(|w| w == secret.as_bytes())));

    // A deliberate downgrade.
    let mut open = cfg.clone();
    open.kafka.group_id = "down-open".into();
    open.metrics.listen = format!("127.0.0.1:{}", free_port());
    open.routes[0].target = "open.${topic}".into();
    open.routes[0].allow_downgrade = true;
    let (stop, run) = start_pipeline(engine(&open), open);
    let out = consume(&bs, "open.down", 2, WAIT);
    stop.send(()).unwrap();
    let stats = run.join().unwrap().unwrap();
    assert_eq!((stats.produced, stats.dead_lettered, out.len()), (2, 0, 2));

    // require, raw: the route's schema must encrypt the fields named.
    let mut raw = cfg.clone();
    raw.schema_registry.url = None;
    let v2_file = dir.path().join("v2.avsc");
    std::fs::write(&v2_file, &v2).unwrap();
    raw.routes[0].value_schema = Some(v2_file);
    raw.routes[0].require = vec!["com.example.crm.Customer.ssn".parse().unwrap()];
    let e = match fieldcrypt::pipeline::record::Transformer::new(engine(&raw), &raw, None) {
        Err(e) => e,
        Ok(_) => panic!("a raw schema below the route's require was accepted"),
    };
    assert_eq!(e.key(), Some("routes[0].require"), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("leaves in clear") && e.contains("Customer.ssn"),
        "{e}"
    );
    raw.routes[0].require = vec!["com.example.crm.Customer.nope".parse().unwrap()];
    let e = match fieldcrypt::pipeline::record::Transformer::new(engine(&raw), &raw, None) {
        Err(e) => e,
        Ok(_) => panic!("a typo in require was accepted"),
    };
    assert_eq!(e.key(), Some("routes[0].require"), "{e}");
    assert!(e.to_string().contains("not a field"), "{e}");
}
