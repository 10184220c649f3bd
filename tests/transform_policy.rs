//! What the transform step lets through, decided per writer schema, against the
//! project's test Schema Registry and without a broker: a schema that encrypts
//! nothing is refused unless the route allows it; the registry's `metadata.tags`
//! select fields on fieldcrypt-format routes too; a `format = "confluent"` route
//! keeps its subject's policy floor (a later version that drops a tag is a
//! downgrade); a decrypting route refuses a schema with nothing encrypted; and a
//! Confluent-framed record on a raw route says it looks framed.

mod common;

use std::sync::{Arc, Once};

use common::broker::{engine, keys_on_disk, Registry};
use fieldcrypt::avro::binary::{write_bytes, write_long};
use fieldcrypt::codes::Code;
use fieldcrypt::config::{Config, PipelineMode};
use fieldcrypt::kafka::route::{ConfluentRule, Format, RouteConfig};
use fieldcrypt::observe::Metrics;
use fieldcrypt::pipeline::record::{Outcome, Transformer};
use fieldcrypt::registry::SchemaRegistry;
use fieldcrypt::schema::policy::PolicySpec;
use rdkafka::message::OwnedMessage;
use rdkafka::Timestamp;
use serde_json::{json, Value as Json};

const SOURCE: &str = "pay.raw";
const TARGET: &str = "pay.secure";

fn local_kms_secret() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var("FIELDCRYPT_LOCAL_KMS_SECRET", "transform-policy-test"));
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A registry-mode config, keys on disk under `dir`, one route `route`.
fn cfg(dir: &std::path::Path, registry: &str, route: RouteConfig) -> Config {
    let mut c = keys_on_disk(dir, "127.0.0.1:1", &["default"], &[]);
    c.schema_registry.url = Some(registry.into());
    c.routes = vec![route];
    c
}

fn route() -> RouteConfig {
    RouteConfig {
        source: SOURCE.into(),
        target: TARGET.into(),
        ..Default::default()
    }
}

fn client(url: &str) -> Arc<SchemaRegistry> {
    let c = fieldcrypt::config::SchemaRegistryConfig {
        url: Some(url.into()),
        retries: 0,
        ..Default::default()
    };
    Arc::new(SchemaRegistry::new(&c, Arc::new(Metrics::new())).unwrap())
}

fn framed(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(datum);
    v
}

fn message(value: Vec<u8>) -> OwnedMessage {
    OwnedMessage::new(
        Some(value),
        Some(b"k".to_vec()),
        SOURCE.into(),
        Timestamp::CreateTime(1),
        0,
        7,
        None,
    )
}

/// `{id: long, ssn: string[, note: string]}` as Avro binary.
fn datum(id: i64, ssn: &str, note: Option<&str>) -> Vec<u8> {
    let mut d = Vec::new();
    write_long(&mut d, id);
    write_bytes(&mut d, ssn.as_bytes());
    if let Some(n) = note {
        write_bytes(&mut d, n.as_bytes());
    }
    d
}

fn transform(t: &Transformer, value: Vec<u8>) -> (Outcome, Vec<u8>) {
    let mut out = Vec::new();
    let o = rt()
        .block_on(t.transform(&message(value), 0, TARGET, &mut out))
        .unwrap_or_else(|e| panic!("infrastructure failure: {e}"));
    (o, out)
}

fn dead_letter(o: Outcome) -> (Code, String) {
    match o {
        Outcome::DeadLetter { code, message } => (code, message),
        Outcome::Produce { .. } => panic!("produced; a dead letter was expected"),
    }
}

fn produced(o: Outcome) -> (fieldcrypt::transform::Counts, bool) {
    match o {
        Outcome::Produce {
            counts,
            unencrypted,
            ..
        } => (counts, unencrypted),
        Outcome::DeadLetter { code, message } => panic!("dead letter {code}: {message}"),
    }
}

fn register(reg: &SchemaRegistry, subject: &str, schema: &Json, metadata: Option<&Json>) -> u32 {
    rt().block_on(reg.id_for_with(subject, schema, None, metadata, true))
        .unwrap()
}

fn plain_schema(tagged: bool, note: bool) -> Json {
    let mut ssn = json!({"name": "ssn", "type": "string"});
    if tagged {
        ssn["confluent:tags"] = json!(["PII"]);
    }
    let mut fields = vec![json!({"name": "id", "type": "long"}), ssn];
    if note {
        fields.push(json!({"name": "note", "type": "string", "default": ""}));
    }
    json!({"type": "record", "name": "P", "namespace": "t", "fields": fields})
}

#[test]
fn a_registry_schema_that_encrypts_nothing_is_a_dead_letter_unless_the_route_allows_it() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), &reg.url(), route());
    let rc = client(&reg.url());
    let id = register(&rc, "pay.raw-value", &plain_schema(false, false), None);
    let t = Transformer::new(engine(&c), &c, Some(rc.clone())).unwrap();
    let (code, msg) = dead_letter(transform(&t, framed(id, &datum(1, "123-45-6789", None))).0);
    assert_eq!(code, Code::NothingToEncrypt);
    assert!(
        msg.contains("allow_unencrypted") && msg.contains("t.P"),
        "{msg}"
    );
    assert!(
        !msg.contains("123-45-6789"),
        "no value in the message: {msg}"
    );

    let mut r = route();
    r.allow_unencrypted = true;
    let dir2 = tempfile::tempdir().unwrap();
    let c = cfg(dir2.path(), &reg.url(), r);
    let t = Transformer::new(engine(&c), &c, Some(rc)).unwrap();
    let (counts, unencrypted) = produced(transform(&t, framed(id, &datum(1, "x", None))).0);
    assert!(unencrypted, "counted as passed unencrypted");
    assert_eq!(counts.randomized + counts.deterministic, 0);
}

#[test]
fn registry_metadata_tags_select_fields_on_fieldcrypt_format_routes() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), &reg.url(), route());
    c.tags.insert("PII".into(), PolicySpec::default());
    let rc = client(&reg.url());
    let md = json!({"tags": {"t.P.ssn": ["PII"]}});
    let id = register(&rc, "pay.raw-value", &plain_schema(false, false), Some(&md));
    let t = Transformer::new(engine(&c), &c, Some(rc.clone())).unwrap();
    let secret = "987-65-4321";
    let (o, out) = transform(&t, framed(id, &datum(1, secret, None)));
    let (counts, unencrypted) = produced(o);
    assert_eq!(
        counts.randomized, 1,
        "ssn is encrypted: its tag comes from metadata.tags"
    );
    assert!(!unencrypted);
    assert!(
        !out.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the value is not in the output in clear"
    );
    // The output schema registered for the target encrypts ssn.
    let out_id = u32::from_be_bytes([out[1], out[2], out[3], out[4]]);
    let out_schema = rt().block_on(rc.schema_by_id(out_id)).unwrap();
    let ssn = out_schema.json["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "ssn")
        .unwrap();
    assert_eq!(ssn["type"], "bytes", "{ssn}");
    assert!(ssn.get("fieldcrypt").is_some(), "{ssn}");
}

fn confluent_route(allow_downgrade: bool) -> RouteConfig {
    RouteConfig {
        format: Format::Confluent,
        allow_downgrade,
        confluent: Some(ConfluentRule {
            tags: vec!["PII".into()],
            kek_name: "kek1".into(),
            kms_type: "local-kms".into(),
            kms_key_id: "kek1".into(),
            algorithm: "AES256_GCM".into(),
            dek_expiry_days: 0,
            rule_name: "fieldcrypt".into(),
        }),
        ..route()
    }
}

#[test]
fn a_confluent_format_route_refuses_a_version_that_drops_a_tag_an_earlier_version_had() {
    local_kms_secret();
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), &reg.url(), confluent_route(false));
    let rc = client(&reg.url());
    let v1 = register(&rc, "pay.raw-value", &plain_schema(true, false), None);
    // v2: the tag is gone (and a defaulted field came), so the rule selects nothing.
    let v2 = register(&rc, "pay.raw-value", &plain_schema(false, true), None);
    assert_ne!(v1, v2);
    let t = Transformer::new(engine(&c), &c, Some(rc.clone())).unwrap();
    let (counts, _) = produced(transform(&t, framed(v1, &datum(1, "111-22-3333", None))).0);
    assert_eq!(counts.randomized, 1, "v1's ssn is encrypted");
    let (o, _) = transform(&t, framed(v2, &datum(2, "444-55-6666", Some("n"))));
    let (code, msg) = dead_letter(o);
    assert_eq!(code, Code::PolicyDowngrade, "{msg}");
    assert!(
        msg.contains("t.P.ssn") && msg.contains("allow_downgrade"),
        "{msg}"
    );
    assert!(!msg.contains("444-55-6666"), "{msg}");

    // A deliberate downgrade passes (the note field is not sensitive anywhere).
    let dir2 = tempfile::tempdir().unwrap();
    let c = cfg(dir2.path(), &reg.url(), {
        let mut r = confluent_route(true);
        r.allow_unencrypted = true;
        r
    });
    let t = Transformer::new(engine(&c), &c, Some(rc)).unwrap();
    let (_, unencrypted) = produced(transform(&t, framed(v2, &datum(2, "x", Some("n")))).0);
    assert!(unencrypted);
}

#[test]
fn a_decrypting_route_refuses_a_schema_with_nothing_encrypted() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), &reg.url(), route());
    c.pipeline.mode = PipelineMode::Decrypt;
    let rc = client(&reg.url());
    let id = register(&rc, "pay.raw-value", &plain_schema(true, false), None);
    let t = Transformer::new(engine(&c), &c, Some(rc)).unwrap();
    let (code, msg) = dead_letter(transform(&t, framed(id, &datum(1, "x", None))).0);
    assert_eq!(code, Code::NotEncrypted, "{msg}");
    assert!(msg.contains("allow_unencrypted"), "{msg}");
}

#[test]
fn a_framed_record_on_a_raw_route_says_it_looks_framed() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("p.avsc");
    let mut s = plain_schema(false, false);
    s["fields"][1]["sensitive"] = json!(true);
    std::fs::write(&schema, s.to_string()).unwrap();
    let mut c = keys_on_disk(dir.path(), "127.0.0.1:1", &[], &[]);
    c.routes = vec![RouteConfig {
        value_schema: Some(schema),
        ..route()
    }];
    let t = Transformer::new(engine(&c), &c, None).unwrap();
    // A long id, then a string length larger than what follows: framed bytes read
    // as raw Avro run out of data.
    let (code, msg) = dead_letter(transform(&t, framed(42, &datum(1, "123-45-6789", None))).0);
    assert_eq!(code, Code::SchemaMismatch, "{msg}");
    assert!(
        msg.contains("Confluent-framed")
            && msg.contains("schema id 42")
            && msg.contains("[schema_registry]"),
        "{msg}"
    );
    // A raw record of the schema still goes through.
    let (counts, _) = produced(transform(&t, datum(1, "123-45-6789", None)).0);
    assert_eq!(counts.randomized, 1);
}

#[test]
fn a_field_tagged_for_a_disabled_encrypt_rule_is_not_passed_on_in_clear() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    // fieldcrypt's own policy encrypts a marked field, but not the PII tag.
    let mut schema = plain_schema(true, true);
    schema["fields"][2]["sensitive"] = json!(true);
    let c = cfg(dir.path(), &reg.url(), route());
    let rc = client(&reg.url());
    let rules = json!({"domainRules": [{
        "name": "pii", "kind": "TRANSFORM", "mode": "WRITEREAD", "type": "ENCRYPT",
        "tags": ["PII"], "params": {"encrypt.kek.name": "kek1"}, "disabled": true}]});
    let id = rt()
        .block_on(rc.id_for_with("pay.raw-value", &schema, Some(&rules), None, true))
        .unwrap();
    let t = Transformer::new(engine(&c), &c, Some(rc.clone())).unwrap();
    let (o, _) = transform(&t, framed(id, &datum(1, "123-45-6789", Some("n"))));
    let (code, msg) = dead_letter(o);
    assert_eq!(code, Code::PolicyDowngrade, "{msg}");
    assert!(msg.contains("t.P.ssn") && msg.contains("disabled"), "{msg}");

    // Mapping the tag in fieldcrypt's policy encrypts it: then it passes.
    let dir2 = tempfile::tempdir().unwrap();
    let mut c = cfg(dir2.path(), &reg.url(), route());
    c.tags.insert("PII".into(), PolicySpec::default());
    let t = Transformer::new(engine(&c), &c, Some(rc)).unwrap();
    let (counts, _) = produced(transform(&t, framed(id, &datum(1, "123-45-6789", Some("n")))).0);
    assert_eq!(counts.randomized, 2, "ssn (by tag) and note (marked)");
}

#[test]
fn a_kek_in_the_dek_registry_that_is_not_the_rules_is_refused() {
    local_kms_secret();
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), &reg.url(), confluent_route(false));
    let rc = client(&reg.url());
    // Someone created the rule's KEK name first, pointing at their own key.
    rt().block_on(rc.create_kek(&fieldcrypt::registry::dek::NewKek {
        name: "kek1".into(),
        kms_type: "local-kms".into(),
        kms_key_id: "somebody-elses-key".into(),
        shared: false,
    }))
    .unwrap();
    let id = register(&rc, "pay.raw-value", &plain_schema(true, false), None);
    let t = Transformer::new(engine(&c), &c, Some(rc)).unwrap();
    let mut out = Vec::new();
    let msg = message(framed(id, &datum(1, "x", None)));
    let Err(e) = rt().block_on(t.transform(&msg, 0, TARGET, &mut out)) else {
        panic!("a KEK the rule does not name stops the pipeline (no DEK is made under it)")
    };
    assert!(!e.is_transient());
    assert_eq!(e.code(), Code::KmsRefused);
    let msg = e.to_string();
    assert!(
        msg.contains("somebody-elses-key") && msg.contains("kek1"),
        "{msg}"
    );
}

#[test]
fn a_registry_schema_with_100000_fields_is_refused_once_or_taken_in_linear_time() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut fields: Vec<Json> = (0..100_000)
        .map(|i| json!({"name": format!("f{i}"), "type": "string"}))
        .collect();
    fields[3]["sensitive"] = json!(true);
    let big = json!({"type": "record", "name": "Big", "namespace": "t", "fields": fields});
    let rc = client(&reg.url());
    let id = register(&rc, "pay.raw-value", &big, None);
    let mut datum = Vec::new();
    for i in 0..100_000 {
        write_bytes(&mut datum, if i == 3 { b"secret" } else { b"" });
    }
    // Default schema.max_fields (10,000): a dead letter, decided once per id.
    let c = cfg(dir.path(), &reg.url(), route());
    let metrics = Arc::new(Metrics::new());
    let fresh = Arc::new(SchemaRegistry::new(&c.schema_registry, metrics.clone()).unwrap());
    let t = Transformer::new(engine(&c), &c, Some(fresh)).unwrap();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let (code, msg) = dead_letter(transform(&t, framed(id, &datum)).0);
        assert_eq!(code, Code::PolicyError, "{msg}");
        assert!(
            msg.contains("100000 fields") && msg.contains("schema.max_fields"),
            "{msg}"
        );
    }
    println!(
        "refused 3 records of a 100,000-field schema in {:?}",
        started.elapsed()
    );
    let gets = metrics
        .registry_requests
        .with_label_values(&["get_schema", "ok"])
        .get();
    assert_eq!(gets, 1, "the schema is fetched once, not per record");
    // Raised on purpose, the schema is planned and its records encrypted (the
    // planning is linear in the fields: a second or so here, not minutes).
    let dir2 = tempfile::tempdir().unwrap();
    let mut c = cfg(dir2.path(), &reg.url(), route());
    c.schema.max_fields = 200_000;
    let t = Transformer::new(engine(&c), &c, Some(client(&reg.url()))).unwrap();
    let started = std::time::Instant::now();
    let (counts, _) = produced(transform(&t, framed(id, &datum)).0);
    assert_eq!(counts.randomized, 1);
    println!(
        "planned and encrypted a 100,000-field record in {:?}",
        started.elapsed()
    );
}
