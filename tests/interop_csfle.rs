//! Confluent CSFLE interop with the real third-party client: python
//! `confluent-kafka[rules]` 2.16 with its `FieldEncryptionExecutor` and
//! `LocalKmsDriver` (tests/interop/csfle_client.py), tansu and the test registry
//! with its DEK Registry.
//!
//! 1. Python encrypts with an ENCRYPT rule → `fieldcrypt run` decrypts → the
//!    records equal the ones produced.
//! 2. Plaintext → `fieldcrypt run` encrypts with `format = "confluent"` → Python
//!    decrypts with nothing but the registry and the secret → equal records, and no
//!    plaintext in the topic bytes.
//! 3. Deterministic (AES256_SIV): equal values encrypt equally across both
//!    implementations (fieldcrypt uses the DEK the Python client created).
//! 4. Re-keying CSFLE → fieldcrypt's format → CSFLE through two pipelines, exact.
//! 5. A field fieldcrypt's policy encrypts but the rule does not select: refused.
//! 6. aws-kms KEKs against moto, both ways (the Python client's AWS driver).
//! 7. `encrypt.dek.expiry.days`: a DEK older than the rule allows is followed by
//!    a new version, which fieldcrypt's ciphertexts name and Python decrypts.

mod common;

use std::process::Command;
use std::time::Duration;

use common::broker::*;
use fieldcrypt::config::PipelineMode;
use fieldcrypt::kafka::route::{ConfluentRule, Format, RouteConfig};

const SECRET: &str = "interop-secret";

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(repo().join("tests/interop").join(script))
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Produces JSONL records through Confluent's serializer with an ENCRYPT rule over
/// the `PII` tag (`extra`: more flags, e.g. `--tags NONE` for plaintext).
fn produce(
    bs: &str,
    reg: &str,
    topic: &str,
    schema: &str,
    records: &str,
    kek: &str,
    extra: &[&str],
) {
    let mut args = vec![
        "produce",
        "--bootstrap",
        bs,
        "--registry",
        reg,
        "--topic",
        topic,
        "--schema",
        schema,
        "--records",
        records,
        "--kek-name",
        kek,
        "--secret",
        SECRET,
    ];
    args.extend_from_slice(extra);
    python("csfle_client.py", &args);
}

/// Reads `count` records through Confluent's deserializer and its executor.
fn consume_py(
    bs: &str,
    reg: &str,
    topic: &str,
    count: &str,
    secret: &str,
    timeout: &str,
) -> String {
    python(
        "csfle_client.py",
        &[
            "consume",
            "--bootstrap",
            bs,
            "--registry",
            reg,
            "--topic",
            topic,
            "--count",
            count,
            "--secret",
            secret,
            "--timeout-seconds",
            timeout,
        ],
    )
}

fn schema() -> String {
    repo()
        .join("tests/interop/csfle/payment.avsc")
        .display()
        .to_string()
}

/// `n` payments as JSONL (bytes as {"$bytes": base64}); the SSNs are distinctive.
fn records(n: usize, dir: &std::path::Path) -> (String, Vec<serde_json::Value>) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let rs: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let city = ["Lagos", "Lima", "Oslo"][i % 3];
            serde_json::json!({
                "id": i,
                "ssn": format!("{:03}-{:02}-{:04}", 100 + i % 800, i % 97, 7000 + i),
                "card": {"$bytes": b64.encode(format!("4111-0000-{i:04}"))},
                "note": if i % 3 == 0 { serde_json::Value::Null } else { format!("call back #{i}").into() },
                "city": city,
            })
        })
        .collect();
    let path = dir.join(format!("records-{n}.jsonl"));
    let text: String = rs.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, text).unwrap();
    (path.display().to_string(), rs)
}

/// The Python consumer's JSON lines, values only, sorted by id.
fn consumed(out: &str) -> Vec<serde_json::Value> {
    let mut v: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|l| l.get("value").cloned().unwrap_or(l))
        .filter(|v| v.get("id").is_some())
        .collect();
    v.sort_by_key(|r| r["id"].as_i64());
    v
}

fn rule(algorithm: &str) -> ConfluentRule {
    ConfluentRule {
        tags: vec!["PII".into()],
        kek_name: "kek1".into(),
        kms_type: "local-kms".into(),
        kms_key_id: "kek1".into(),
        algorithm: algorithm.into(),
        dek_expiry_days: 0,
        rule_name: "fieldcrypt".into(),
    }
}

/// A registry-mode config (keys on disk under `dir`) whose one route encrypts
/// `source` into `target` in Confluent's format under `rule`.
fn confluent_cfg(
    dir: &std::path::Path,
    bs: &str,
    reg: &str,
    group: &str,
    (source, target): (&str, &str),
    rule: ConfluentRule,
) -> fieldcrypt::config::Config {
    let mut cfg = keys_on_disk(dir, bs, &["default"], &["pii"]);
    cfg.kafka.group_id = group.into();
    cfg.schema_registry.url = Some(reg.into());
    cfg.routes = vec![RouteConfig {
        source: source.into(),
        target: target.into(),
        format: Format::Confluent,
        confluent: Some(rule),
        ..Default::default()
    }];
    cfg
}

fn setup() -> (Broker, Registry, tempfile::TempDir) {
    // The local-kms secret, as fieldcrypt reads it (the same for every test), set
    // once, before any test starts threads that read the environment.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("FIELDCRYPT_LOCAL_KMS_SECRET", SECRET));
    (
        Broker::start(),
        Registry::start(),
        tempfile::tempdir().unwrap(),
    )
}

#[test]
fn confluent_encrypted_records_decrypt_through_fieldcrypt() {
    let (broker, registry, dir) = setup();
    let (bs, reg) = (broker.bootstrap(), registry.url());
    create_topics(
        &bs,
        &[("payments", 2), ("plain.payments", 2), ("dlq.payments", 1)],
    );
    let (file, want) = records(60, dir.path());
    produce(
        &bs,
        &reg,
        "payments",
        &schema(),
        &file,
        "kek1",
        &["--expiry-days", "3"],
    );
    let mut cfg = keys_on_disk(dir.path(), &bs, &["default"], &[]);
    cfg.kafka.group_id = "csfle-dec".into();
    cfg.pipeline.mode = PipelineMode::Decrypt;
    cfg.schema_registry.url = Some(reg.clone());
    cfg.routes = vec![RouteConfig {
        source: "payments".into(),
        target: "plain.${topic}".into(),
        ..Default::default()
    }];
    let (stop, run) = start_pipeline(engine(&cfg), cfg.clone());
    // A plain Confluent consumer (no rules on the output schema) reads them back.
    let out = consume_py(&bs, &reg, "plain.payments", "60", "unused", "120");
    stop.send(()).unwrap();
    let stats = run.join().unwrap().expect("pipeline stops cleanly");
    assert_eq!((stats.produced, stats.dead_lettered), (60, 0));
    assert_eq!(consumed(&out), want);
    // The decrypted topic holds the plaintext; the source did not.
    let source = consume(&bs, "payments", 60, Duration::from_secs(30));
    let ssn = want[7]["ssn"].as_str().unwrap();
    assert!(source
        .iter()
        .all(|m| !String::from_utf8_lossy(rdkafka::Message::payload(m).unwrap()).contains(ssn)));
}

#[test]
fn fieldcrypt_confluent_format_decrypts_in_confluents_client() {
    let (broker, registry, dir) = setup();
    let (bs, reg) = (broker.bootstrap(), registry.url());
    create_topics(&bs, &[("raw", 2), ("secure.raw", 2), ("dlq.raw", 1)]);
    let (file, want) = records(50, dir.path());
    // Plaintext in: the same client with an empty tag set encrypts nothing.
    produce(
        &bs,
        &reg,
        "raw",
        &schema(),
        &file,
        "unused",
        &["--tags", "NONE"],
    );
    let raw = consume(&bs, "raw", 50, Duration::from_secs(30));
    let ssn = want[3]["ssn"].as_str().unwrap().to_string();
    assert!(raw
        .iter()
        .any(|m| String::from_utf8_lossy(rdkafka::Message::payload(m).unwrap()).contains(&ssn)));
    let mut cfg = confluent_cfg(
        dir.path(),
        &bs,
        &reg,
        "csfle-enc",
        ("raw", "secure.${topic}"),
        rule("AES256_GCM"),
    );
    // fieldcrypt's policy for the tag adds blind indexes: they become extra bytes
    // fields beside the Confluent-encrypted ones.
    cfg.tags.insert(
        "PII".into(),
        fieldcrypt::schema::policy::PolicySpec {
            blind_index: Some("pii".into()),
            ..Default::default()
        },
    );
    cfg.validate().unwrap();
    let (stop, run) = start_pipeline(engine(&cfg), cfg.clone());
    let out = consume_py(&bs, &reg, "secure.raw", "50", SECRET, "120");
    stop.send(()).unwrap();
    let stats = run.join().unwrap().expect("pipeline stops cleanly");
    assert_eq!((stats.produced, stats.dead_lettered), (50, 0));
    let got = consumed(&out);
    // Blind indexes: 16 bytes after each non-null tagged field (SSNs are
    // distinct, so their indexes are).
    let mut ssn_ix = std::collections::HashSet::new();
    for r in &got {
        let ix = r["ssn_bidx"]["$bytes"]
            .as_str()
            .expect("an ssn blind index");
        assert_eq!(ix.len(), 24, "16 bytes in base64");
        ssn_ix.insert(ix.to_string());
        assert!(r["card_bidx"]["$bytes"].is_string());
        assert_eq!(r["note"].is_null(), r["note_bidx"].is_null());
    }
    assert_eq!(ssn_ix.len(), 50, "distinct SSNs, distinct indexes");
    let strip = |mut v: serde_json::Value| {
        v.as_object_mut()
            .unwrap()
            .retain(|k, _| !k.ends_with("_bidx"));
        v
    };
    let got: Vec<serde_json::Value> = got.into_iter().map(strip).collect();
    assert_eq!(got, want, "Confluent's client decrypts fieldcrypt's output");
    let secure = consume(&bs, "secure.raw", 50, Duration::from_secs(30));
    for r in &want {
        let ssn = r["ssn"].as_str().unwrap();
        assert!(secure
            .iter()
            .all(
                |m| !String::from_utf8_lossy(rdkafka::Message::payload(m).unwrap()).contains(ssn)
            ));
    }
    assert!(secure
        .iter()
        .any(|m| String::from_utf8_lossy(rdkafka::Message::payload(m).unwrap()).contains("Lagos")));
    // The DEK is in the DEK Registry under the target's subject, wrapped by local-kms.
    let (status, body) = http_get(
        &format!("127.0.0.1:{}", registry.port),
        "/dek-registry/v1/keks/kek1/deks/secure.raw-value/versions/1?algorithm=AES256_GCM",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("encryptedKeyMaterial"), "{body}");
}

#[test]
fn deterministic_fields_encrypt_equally_in_both_implementations() {
    let (broker, registry, dir) = setup();
    let (bs, reg) = (broker.bootstrap(), registry.url());
    create_topics(&bs, &[("plainsiv", 1), ("siv", 1), ("dlq.plainsiv", 1)]);
    let (file, _) = records(5, dir.path());
    // Python writes SIV records to `siv`, creating the DEK of subject siv-value.
    produce(
        &bs,
        &reg,
        "siv",
        &schema(),
        &file,
        "kek1",
        &["--algorithm", "AES256_SIV"],
    );
    // The same records in clear to `plainsiv`...
    produce(
        &bs,
        &reg,
        "plainsiv",
        &schema(),
        &file,
        "unused",
        &["--tags", "NONE"],
    );
    // ...encrypted by fieldcrypt into `siv` too, with the DEK Python created.
    let cfg = confluent_cfg(
        dir.path(),
        &bs,
        &reg,
        "csfle-siv",
        ("plainsiv", "siv"),
        rule("AES256_SIV"),
    );
    let (stop, run) = start_pipeline(engine(&cfg), cfg.clone());
    let all = consume(&bs, "siv", 10, Duration::from_secs(120));
    stop.send(()).unwrap();
    run.join().unwrap().expect("pipeline stops cleanly");
    assert_eq!(all.len(), 10);
    // Past the 5-byte framing (schema ids may differ), Python's and fieldcrypt's
    // records of the same plaintext are byte-identical.
    let body =
        |m: &rdkafka::message::OwnedMessage| rdkafka::Message::payload(m).unwrap()[5..].to_vec();
    let (py, fc) = all.split_at(5);
    let mut a: Vec<Vec<u8>> = py.iter().map(body).collect();
    let mut b: Vec<Vec<u8>> = fc.iter().map(body).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    // And Python reads all ten.
    let out = consume_py(&bs, &reg, "siv", "10", SECRET, "60");
    assert_eq!(consumed(&out).len(), 10);
}

#[test]
fn rekeying_from_confluents_format_to_fieldcrypts_and_back_is_exact() {
    let (broker, registry, dir) = setup();
    let (bs, reg) = (broker.bootstrap(), registry.url());
    create_topics(
        &bs,
        &[
            ("orders", 2),
            ("fc.orders", 2),
            ("cf.fc.orders", 2),
            ("dlq.orders", 1),
            ("dlq.fc.orders", 1),
        ],
    );
    let (file, want) = records(40, dir.path());
    produce(&bs, &reg, "orders", &schema(), &file, "kek1", &[]);
    let mut base = keys_on_disk(dir.path(), &bs, &["default"], &[]);
    base.schema_registry.url = Some(reg.clone());
    // fieldcrypt's policy encrypts what the tag marks (randomized).
    base.tags.insert("PII".into(), Default::default());
    // Confluent's format in, fieldcrypt's out.
    let mut to_fc = base.clone();
    to_fc.kafka.group_id = "rekey-1".into();
    to_fc.routes = vec![RouteConfig {
        source: "orders".into(),
        target: "fc.${topic}".into(),
        ..Default::default()
    }];
    // fieldcrypt's format in, Confluent's out.
    let mut to_cf = base.clone();
    to_cf.kafka.group_id = "rekey-2".into();
    to_cf.metrics.listen = format!("127.0.0.1:{}", free_port());
    to_cf.routes = vec![RouteConfig {
        source: "fc.orders".into(),
        target: "cf.${topic}".into(),
        format: Format::Confluent,
        confluent: Some(ConfluentRule {
            kek_name: "kek2".into(),
            kms_key_id: "kek2".into(),
            ..rule("AES256_GCM")
        }),
        ..Default::default()
    }];
    to_cf.validate().unwrap();
    let (stop1, run1) = start_pipeline(engine(&to_fc), to_fc.clone());
    let (stop2, run2) = start_pipeline(engine(&to_cf), to_cf.clone());
    let out = consume_py(&bs, &reg, "cf.fc.orders", "40", SECRET, "120");
    stop1.send(()).unwrap();
    stop2.send(()).unwrap();
    let s1 = run1.join().unwrap().expect("first pipeline stops cleanly");
    let s2 = run2.join().unwrap().expect("second pipeline stops cleanly");
    assert_eq!((s1.produced, s1.dead_lettered), (40, 0));
    assert_eq!((s2.produced, s2.dead_lettered), (40, 0));
    assert_eq!(
        consumed(&out),
        want,
        "CSFLE -> fieldcrypt -> CSFLE is exact"
    );
    // In between, fieldcrypt's format: DEK headers, no plaintext, no base64 of it.
    let mid = consume(&bs, "fc.orders", 40, Duration::from_secs(30));
    assert!(mid
        .iter()
        .all(|m| header(m, fieldcrypt::kafka::headers::DEK).is_some()));
    for r in &want {
        let ssn = r["ssn"].as_str().unwrap();
        assert!(mid
            .iter()
            .all(
                |m| !String::from_utf8_lossy(rdkafka::Message::payload(m).unwrap()).contains(ssn)
            ));
    }
}

#[test]
fn a_field_fieldcrypt_would_encrypt_but_the_rule_does_not_select_is_refused() {
    let (broker, registry, dir) = setup();
    let (bs, reg) = (broker.bootstrap(), registry.url());
    create_topics(
        &bs,
        &[("marked", 1), ("secure.marked", 1), ("dlq.marked", 1)],
    );
    let file = dir.path().join("marked.jsonl");
    let lines: String = (0..5)
        .map(|i| format!("{{\"id\": {i}, \"ssn\": \"111-22-{i:04}\", \"pin\": \"pin-{i:04}\"}}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let schema = repo().join("tests/interop/csfle/marked.avsc");
    produce(
        &bs,
        &reg,
        "marked",
        &schema.display().to_string(),
        &file.display().to_string(),
        "unused",
        &["--tags", "NONE"],
    );
    let cfg = confluent_cfg(
        dir.path(),
        &bs,
        &reg,
        "csfle-marked",
        ("marked", "secure.${topic}"),
        rule("AES256_GCM"),
    );
    let (stop, run) = start_pipeline(engine(&cfg), cfg.clone());
    let dead = consume(&bs, "dlq.marked", 5, Duration::from_secs(60));
    stop.send(()).unwrap();
    let stats = run
        .join()
        .unwrap()
        .expect("the pipeline keeps running and stops cleanly");
    assert_eq!(
        (stats.produced, stats.dead_lettered),
        (0, 5),
        "nothing reaches the target"
    );
    for m in &dead {
        assert_eq!(
            header(m, "fieldcrypt.error.code").as_deref(),
            Some("policy_error")
        );
        let msg = header(m, "fieldcrypt.error.message").unwrap_or_default();
        assert!(msg.contains("com.acme.Marked.pin"), "{msg}");
    }
}

#[test]
fn aws_kms_keks_work_both_ways_against_a_kms_emulator() {
    use common::kms::{Moto, CREDENTIALS, REGION};
    let (broker, registry, dir) = setup();
    let (bs, reg) = (broker.bootstrap(), registry.url());
    let moto = Moto::start();
    let arn = moto.create_key(None);
    create_topics(&bs, &[("awsin", 1), ("plain.awsin", 1), ("dlq.awsin", 1)]);
    let (file, want) = records(20, dir.path());
    // Confluent's client wraps its DEK with AWS KMS (moto), as in production.
    let out = Command::new("python3")
        .arg(repo().join("tests/interop/csfle_client.py"))
        .args([
            "produce",
            "--bootstrap",
            &bs,
            "--registry",
            &reg,
            "--topic",
            "awsin",
            "--schema",
            &schema(),
            "--records",
            &file,
            "--kek-name",
            "awskek",
            "--secret",
            SECRET,
            "--kms-type",
            "aws-kms",
            "--kms-key-id",
            &arn,
        ])
        .envs(CREDENTIALS)
        .env("AWS_ENDPOINT_URL_KMS", moto.url())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // fieldcrypt on the AWS provider (its own keyset wrapped there too).
    let mut cfg = keys_on_disk(dir.path(), &bs, &[], &[]);
    cfg.kafka.group_id = "csfle-aws".into();
    cfg.pipeline.mode = PipelineMode::Decrypt;
    cfg.schema_registry.url = Some(reg.clone());
    cfg.kms.provider = fieldcrypt::config::ProviderConfig::Aws(fieldcrypt::keys::aws::AwsConfig {
        key_id: Some(arn.clone()),
        region: Some(REGION.into()),
        endpoint_url: Some(moto.url()),
    });
    cfg.keyset.file = dir.path().join("aws-keyset.json");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let kms = fieldcrypt::engine::open_kms(&cfg).await.unwrap();
            common::write_keyset(kms.as_ref(), &cfg.keyset.file, &["default"], &[]).await;
        });
    cfg.routes = vec![RouteConfig {
        source: "awsin".into(),
        target: "plain.${topic}".into(),
        ..Default::default()
    }];
    let (stop, run) = start_pipeline(engine(&cfg), cfg.clone());
    let out = consume_py(&bs, &reg, "plain.awsin", "20", "unused", "120");
    stop.send(()).unwrap();
    let stats = run.join().unwrap().expect("pipeline stops cleanly");
    assert_eq!((stats.produced, stats.dead_lettered), (20, 0));
    assert_eq!(consumed(&out), want);
    let (_, kek) = http_get(
        &format!("127.0.0.1:{}", registry.port),
        "/dek-registry/v1/keks/awskek",
    );
    assert!(kek.contains("aws-kms") && kek.contains(&arn), "{kek}");

    // And the other way: fieldcrypt creates an aws-kms KEK and DEK, Confluent's
    // client unwraps it through AWS KMS.
    create_topics(&bs, &[("secure.plain.awsin", 1), ("dlq.plain.awsin", 1)]);
    let mut enc = cfg.clone();
    enc.kafka.group_id = "csfle-aws-enc".into();
    enc.pipeline.mode = PipelineMode::Encrypt;
    enc.metrics.listen = format!("127.0.0.1:{}", free_port());
    enc.routes = vec![RouteConfig {
        source: "plain.awsin".into(),
        target: "secure.${topic}".into(),
        format: Format::Confluent,
        confluent: Some(ConfluentRule {
            kek_name: "awskek2".into(),
            kms_type: "aws-kms".into(),
            kms_key_id: arn.clone(),
            ..rule("AES256_GCM")
        }),
        ..Default::default()
    }];
    enc.validate().unwrap();
    let (stop, run) = start_pipeline(engine(&enc), enc.clone());
    let out = Command::new("python3")
        .arg(repo().join("tests/interop/csfle_client.py"))
        .args([
            "consume",
            "--bootstrap",
            &bs,
            "--registry",
            &reg,
            "--topic",
            "secure.plain.awsin",
            "--count",
            "20",
            "--secret",
            "unused",
            "--timeout-seconds",
            "120",
        ])
        .envs(CREDENTIALS)
        .env("AWS_ENDPOINT_URL_KMS", moto.url())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    stop.send(()).unwrap();
    run.join().unwrap().expect("pipeline stops cleanly");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(consumed(&String::from_utf8_lossy(&out.stdout)), want);
    let (_, kek) = http_get(
        &format!("127.0.0.1:{}", registry.port),
        "/dek-registry/v1/keks/awskek2",
    );
    assert!(kek.contains("aws-kms") && kek.contains(&arn), "{kek}");
}

/// The versions of a subject's AES256_GCM DEK under kek1, from the DEK Registry.
fn dek_versions(registry: &Registry, subject: &str) -> Vec<u32> {
    let (status, body) = http_get(
        &format!("127.0.0.1:{}", registry.port),
        &format!("/dek-registry/v1/keks/kek1/deks/{subject}/versions?algorithm=AES256_GCM"),
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The DEK version in the prefix of a Payment's `ssn` ciphertext (Confluent
/// framing, then id as a zigzag long, then ssn as a base64 string).
fn ssn_dek_version(payload: &[u8]) -> u32 {
    use base64::Engine as _;
    fn varint(b: &[u8], at: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[*at];
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    let mut at = 5;
    varint(payload, &mut at); // id
    let len = (varint(payload, &mut at) >> 1) as usize;
    let ct = base64::engine::general_purpose::STANDARD
        .decode(&payload[at..at + len])
        .expect("ssn holds base64");
    assert_eq!(ct[0], 0, "a versioned ciphertext starts with 0x00");
    u32::from_be_bytes(ct[1..5].try_into().unwrap())
}

#[test]
fn an_expired_dek_is_followed_by_a_new_version_that_confluents_client_reads() {
    setup();
    let registry = Registry::start_with(&["--dek-age-days", "10"]);
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (bs, reg) = (broker.bootstrap(), registry.url());
    create_topics(&bs, &[("rot", 1), ("secure.rot", 1), ("dlq.rot", 1)]);
    // Python writes first to the target with a 3-day expiry: its DEK is stored
    // 10 days old.
    let (early, early_want) = records(5, dir.path());
    produce(
        &bs,
        &reg,
        "secure.rot",
        &schema(),
        &early,
        "kek1",
        &["--expiry-days", "3"],
    );
    let before = dek_versions(&registry, "secure.rot-value");
    let newest_before = *before.iter().max().expect("Python created a DEK");
    // Plaintext in, encrypted by fieldcrypt under the same rule.
    let (file, want) = records(30, dir.path());
    produce(
        &bs,
        &reg,
        "rot",
        &schema(),
        &file,
        "unused",
        &["--tags", "NONE"],
    );
    let cfg = confluent_cfg(
        dir.path(),
        &bs,
        &reg,
        "csfle-rot",
        ("rot", "secure.${topic}"),
        ConfluentRule {
            dek_expiry_days: 3,
            ..rule("AES256_GCM")
        },
    );
    cfg.validate().unwrap();
    let (stop, run) = start_pipeline(engine(&cfg), cfg.clone());
    let out = consume_py(&bs, &reg, "secure.rot", "35", SECRET, "120");
    stop.send(()).unwrap();
    let stats = run.join().unwrap().expect("pipeline stops cleanly");
    assert_eq!((stats.produced, stats.dead_lettered), (30, 0));
    // fieldcrypt found the latest DEK expired and created the next version...
    let after = dek_versions(&registry, "secure.rot-value");
    let newest = *after.iter().max().unwrap();
    assert_eq!(
        newest,
        newest_before + 1,
        "before {before:?}, after {after:?}"
    );
    // ...and every record it wrote names that version (the topic has one
    // partition: Python's 5 records come first).
    let secure = consume(&bs, "secure.rot", 35, Duration::from_secs(30));
    assert_eq!(secure.len(), 35);
    for m in &secure[5..] {
        let payload = rdkafka::Message::payload(m).unwrap();
        assert_eq!(ssn_dek_version(payload), newest);
    }
    // Python's client decrypts both writers' records, old version and new.
    // (Records of the same id are equal, so the id orders them fully.)
    let key = |v: &serde_json::Value| v["id"].as_i64();
    let mut all: Vec<serde_json::Value> = early_want.into_iter().chain(want).collect();
    all.sort_by_key(key);
    let mut got = consumed(&out);
    got.sort_by_key(key);
    assert_eq!(got, all);
}
