//! The transform step without a broker: records built as `OwnedMessage`s go
//! through raw-Avro routes (encrypt, then decrypt) with a local KMS, and each
//! outcome is checked — the output, its headers, or the dead letter's code.

use std::sync::Arc;

use apache_avro::types::Value;
use prometheus::core::Collector;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
use serde_json::json;

use super::*;
use crate::kafka::route::RouteConfig;
use crate::keys::{Keyset, Kms, LocalKms, Purpose};

const SOURCE: &str = "orders";
const TARGET: &str = "secure.orders";
const CARD: &str = "4111111111111111";
const EMAIL: &str = "ann@example.com";

fn order_schema() -> Json {
    json!({"type": "record", "name": "Order", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"},
        {"name": "email", "type": "string", "sensitive": {"mode": "deterministic"}},
        {"name": "card", "type": "string", "sensitive": true},
        {"name": "note", "type": ["null", "string"], "default": null}]})
}

/// One order, encoded by apache-avro (an independent writer).
fn order(id: i64) -> Vec<u8> {
    let schema = apache_avro::Schema::parse(&order_schema()).unwrap();
    let v = Value::Record(vec![
        ("id".into(), Value::Long(id)),
        ("email".into(), Value::String(EMAIL.into())),
        ("card".into(), Value::String(CARD.into())),
        (
            "note".into(),
            Value::Union(1, Box::new(Value::String("ring twice".into()))),
        ),
    ]);
    apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(v)
        .unwrap()
}

/// An engine over a local KEK and a keyset with the `default` deterministic key,
/// its config, and the directory holding the keyset.
async fn local_engine() -> (Arc<Engine>, Config, tempfile::TempDir) {
    local_engine_with(Config::default()).await
}

/// [`local_engine`] over `cfg`.
async fn local_engine_with(mut cfg: Config) -> (Arc<Engine>, Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kms: Arc<dyn Kms> = Arc::new(LocalKms::from_bytes(&[7; 32]).unwrap());
    cfg.keyset.file = dir.path().join("keyset.json");
    let mut ks = Keyset::default();
    ks.create(kms.as_ref(), Purpose::Deterministic, "default")
        .await
        .unwrap();
    ks.save(&cfg.keyset.file).unwrap();
    let engine = Arc::new(Engine::with_kms(cfg.clone(), kms).await.unwrap());
    (engine, cfg, dir)
}

/// An engine over a local KEK, a keyset with the `default` deterministic key, and
/// an encrypting and a decrypting transformer for the orders topics.
struct Fixture {
    engine: Arc<Engine>,
    encrypt: Transformer,
    decrypt: Transformer,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        Self::with_decrypt_route(|_| {}).await
    }

    /// As [`new`](Self::new), with the decrypting route adjusted by `f`.
    async fn with_decrypt_route(f: impl FnOnce(&mut RouteConfig)) -> Self {
        let (engine, cfg, dir) = local_engine().await;

        let input = dir.path().join("order.avsc");
        std::fs::write(&input, order_schema().to_string()).unwrap();
        let mut enc_cfg = cfg.clone();
        enc_cfg.routes = vec![RouteConfig {
            source: SOURCE.into(),
            target: "secure.${topic}".into(),
            value_schema: Some(input),
            ..Default::default()
        }];
        let encrypt = Transformer::new(engine.clone(), &enc_cfg, None).unwrap();

        let output = dir.path().join("order.out.avsc");
        std::fs::write(&output, output_schema(&engine).to_string()).unwrap();
        let mut dec_cfg = cfg;
        dec_cfg.pipeline.mode = PipelineMode::Decrypt;
        let mut route = RouteConfig {
            source: TARGET.into(),
            target: "plain.orders".into(),
            value_schema: Some(output),
            ..Default::default()
        };
        f(&mut route);
        dec_cfg.routes = vec![route];
        let decrypt = Transformer::new(engine.clone(), &dec_cfg, None).unwrap();
        Fixture {
            engine,
            encrypt,
            decrypt,
            _dir: dir,
        }
    }

    /// Every KMS request so far, whatever its outcome.
    fn kms_requests(&self) -> f64 {
        self.engine
            .metrics()
            .kms_requests
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value())
            .sum()
    }
}

/// The output schema of the encrypting route.
fn output_schema(engine: &Engine) -> Json {
    let enc = engine.encryptor(&order_schema(), "order.avsc").unwrap();
    enc.plan().output_json.clone()
}

fn message(topic: &str, payload: Option<Vec<u8>>, headers: Option<OwnedHeaders>) -> OwnedMessage {
    OwnedMessage::new(
        payload,
        Some(b"order-1".to_vec()),
        topic.into(),
        Timestamp::CreateTime(1_700_000_000_000),
        3,
        42,
        headers,
    )
}

fn headers_of(pairs: &[(&str, Option<&[u8]>)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header { key: k, value: *v })
    })
}

/// (name, value) pairs of output headers.
fn pairs(h: &Option<OwnedHeaders>) -> Vec<(String, Option<Vec<u8>>)> {
    match h {
        None => Vec::new(),
        Some(h) => headers::read(Some(h))
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
            .collect(),
    }
}

/// A produced record: (key, payload kept, headers, counts).
fn produced(o: Outcome) -> (Option<Vec<u8>>, bool, Option<OwnedHeaders>, Counts) {
    match o {
        Outcome::Produce {
            key,
            payload,
            headers,
            counts,
            ..
        } => (key, payload, headers, counts),
        Outcome::DeadLetter { code, message } => panic!("dead letter {code:?}: {message}"),
    }
}

fn dead_letter(o: Outcome) -> (Code, String) {
    match o {
        Outcome::DeadLetter { code, message } => (code, message),
        o => panic!("produced, not dead-lettered: {o:?}"),
    }
}

impl Fixture {
    async fn encrypt(&self, msg: &OwnedMessage, value: &mut Vec<u8>) -> Outcome {
        self.encrypt.transform(msg, 0, TARGET, value).await.unwrap()
    }

    async fn decrypt(&self, msg: &OwnedMessage, value: &mut Vec<u8>) -> Outcome {
        self.decrypt
            .transform(msg, 0, "plain.orders", value)
            .await
            .unwrap()
    }

    /// Decrypts `encrypted` with one `fieldcrypt.dek` header of value `dek`,
    /// expecting a dead letter.
    async fn decrypt_with_dek(&self, encrypted: &[u8], dek: Option<&[u8]>) -> (Code, String) {
        let h = headers_of(&[(headers::DEK, dek)]);
        let msg = message(TARGET, Some(encrypted.to_vec()), Some(h));
        dead_letter(self.decrypt(&msg, &mut Vec::new()).await)
    }

    /// One order encrypted: (value, headers).
    async fn encrypted_order(&self) -> (Vec<u8>, Option<OwnedHeaders>) {
        let mut value = Vec::new();
        let msg = message(SOURCE, Some(order(1)), None);
        let (_, _, headers, _) = produced(self.encrypt(&msg, &mut value).await);
        (value, headers)
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_good_record_is_encrypted_under_the_output_schema_with_its_dek_header() {
    let fx = Fixture::new().await;
    let mut value = b"left over from the last record".to_vec();
    let msg = message(SOURCE, Some(order(1)), None);
    let (key, payload, headers, counts) = produced(fx.encrypt(&msg, &mut value).await);
    assert_eq!(key, None, "passthrough keys are kept as they are");
    assert!(payload);
    assert_eq!((counts.randomized, counts.deterministic), (1, 1));
    assert!(!contains(&value, CARD) && !contains(&value, EMAIL));

    let out_schema = apache_avro::Schema::parse(&output_schema(&fx.engine)).unwrap();
    let decoded = apache_avro::reader::datum::GenericDatumReader::builder(&out_schema)
        .build()
        .unwrap()
        .read_value(&mut &value[..])
        .unwrap();
    let Value::Record(fields) = decoded else {
        panic!("not a record: {decoded:?}")
    };
    assert_eq!(fields[0], ("id".to_string(), Value::Long(1)));
    assert!(matches!(&fields[1], (n, Value::Bytes(_)) if n == "email"));
    assert!(matches!(&fields[2], (n, Value::Bytes(_)) if n == "card"));
    assert_eq!(
        fields[3],
        (
            "note".to_string(),
            Value::Union(1, Box::new(Value::String("ring twice".into())))
        )
    );

    let hs = pairs(&headers);
    assert_eq!(hs.len(), 1, "{hs:?}");
    assert_eq!(hs[0].0, headers::DEK);
    let w = headers::decode_dek(hs[0].1.as_deref().unwrap()).unwrap();
    assert_eq!(w.scope, "route:secure.${topic}");
}

#[tokio::test]
async fn bytes_that_are_not_a_record_of_the_schema_are_dead_lettered() {
    let fx = Fixture::new().await;
    let mut value = Vec::new();
    let cases = [
        b"\xff\xff\xff".to_vec(),
        Vec::new(),
        [order(1), vec![0]].concat(),
        order(1)[..5].to_vec(),
    ];
    for payload in cases {
        let msg = message(SOURCE, Some(payload.clone()), None);
        let (code, text) = dead_letter(fx.encrypt(&msg, &mut value).await);
        assert_eq!(code, Code::SchemaMismatch, "{payload:?}: {text}");
        assert!(text.starts_with("value: "), "{text}");
    }
    // In decrypt mode too.
    let msg = message(TARGET, Some(b"\x02".to_vec()), None);
    let (code, _) = dead_letter(fx.decrypt(&msg, &mut value).await);
    assert_eq!(code, Code::SchemaMismatch);
}

#[tokio::test]
async fn a_tombstone_stays_a_tombstone() {
    let fx = Fixture::new().await;
    let mut value = b"stale".to_vec();
    let msg = message(SOURCE, None, None);
    let (key, payload, headers, counts) = produced(fx.encrypt(&msg, &mut value).await);
    assert_eq!((key, payload), (None, false));
    assert!(headers.is_none());
    assert_eq!(counts, Counts::default());
    assert!(value.is_empty());
    // Its other headers go along; there is no DEK to name.
    let msg = message(
        SOURCE,
        None,
        Some(headers_of(&[("op", Some(b"d".as_slice()))])),
    );
    let (_, payload, headers, _) = produced(fx.decrypt(&msg, &mut value).await);
    assert!(!payload);
    assert_eq!(pairs(&headers), [("op".to_string(), Some(b"d".to_vec()))]);
}

#[tokio::test]
async fn headers_in_the_fieldcrypt_namespace_are_not_passed_on() {
    let fx = Fixture::new().await;
    let dropped = fx.engine.metrics().reserved_headers_dropped.get();
    let forged_dek = b"\x01not really a wrapped key".as_slice();
    let input = headers_of(&[
        ("trace-id", Some(b"abc".as_slice())),
        (headers::ERROR_CODE, Some(b"forged".as_slice())),
        ("no-value", None),
        (headers::DEK, Some(forged_dek)),
        ("fieldcrypt.anything", Some(b"x".as_slice())),
    ]);
    let mut value = Vec::new();
    let msg = message(SOURCE, Some(order(1)), Some(input));
    let (_, _, headers, _) = produced(fx.encrypt(&msg, &mut value).await);
    let hs = pairs(&headers);
    let names: Vec<&str> = hs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["trace-id", "no-value", headers::DEK]);
    assert_eq!(hs[0].1.as_deref(), Some(&b"abc"[..]));
    assert_eq!(hs[1].1, None);
    assert_ne!(hs[2].1.as_deref(), Some(forged_dek), "our own DEK header");
    headers::decode_dek(hs[2].1.as_deref().unwrap()).unwrap();
    // The incoming DEK header is ours to read, not a forgery: it is not counted.
    assert_eq!(
        fx.engine.metrics().reserved_headers_dropped.get() - dropped,
        2
    );
}

#[tokio::test]
async fn decrypting_restores_the_exact_bytes_and_drops_the_dek_header() {
    let fx = Fixture::new().await;
    let (encrypted, headers) = fx.encrypted_order().await;
    let mut with_trace = pairs(&headers);
    with_trace.insert(0, ("trace-id".into(), Some(b"abc".to_vec())));
    let input = with_trace.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: v.as_deref(),
        })
    });
    let mut value = Vec::new();
    let msg = message(TARGET, Some(encrypted), Some(input));
    let (key, payload, headers, counts) = produced(fx.decrypt(&msg, &mut value).await);
    assert_eq!(value, order(1));
    assert_eq!((key, payload), (None, true));
    assert_eq!((counts.randomized, counts.deterministic), (1, 1));
    assert_eq!(
        pairs(&headers),
        [("trace-id".to_string(), Some(b"abc".to_vec()))]
    );
}

#[tokio::test]
async fn a_dek_header_that_cannot_be_read_or_unwrapped_is_dead_lettered() {
    let fx = Fixture::new().await;
    let (encrypted, headers) = fx.encrypted_order().await;
    let good = pairs(&headers)[0].1.clone().unwrap();
    for bad in [
        None,
        Some(Vec::new()),
        Some(b"\x09wrong version".to_vec()),
        Some(good[..10].to_vec()),
    ] {
        let (code, text) = fx.decrypt_with_dek(&encrypted, bad.as_deref()).await;
        assert_eq!(code, Code::BadDekHeader, "{bad:?}: {text}");
    }

    // Well formed, but the key id is not the one the blob was wrapped for.
    let mut other_id = good.clone();
    other_id[1] ^= 1;
    let (code, text) = fx.decrypt_with_dek(&encrypted, Some(&other_id)).await;
    assert_eq!(code, Code::DekUnwrapFailed, "{text}");

    // The id of a DEK already unwrapped, with another blob: refused without the KMS.
    let mut value = Vec::new();
    let ok = message(TARGET, Some(encrypted.clone()), headers.clone());
    produced(fx.decrypt(&ok, &mut value).await);
    let mut other_blob = good.clone();
    *other_blob.last_mut().unwrap() ^= 1;
    let before = fx.kms_requests();
    let (code, _) = fx.decrypt_with_dek(&encrypted, Some(&other_blob)).await;
    assert_eq!(code, Code::DekBindingMismatch);
    assert_eq!(fx.kms_requests(), before);

    // No DEK header at all: the randomized field names a key nobody handed in.
    let msg = message(TARGET, Some(encrypted.clone()), None);
    let (code, text) = dead_letter(fx.decrypt(&msg, &mut value).await);
    assert_eq!(code, Code::UnknownKey, "{text}");
    assert!(text.contains("card"), "{text}");
}

#[tokio::test]
async fn a_dek_header_of_a_scope_the_route_does_not_accept_is_refused_before_the_kms() {
    let fx = Fixture::new().await;
    let (encrypted, headers) = fx.encrypted_order().await;
    let before = fx.kms_requests();
    let mut value = Vec::new();
    // By default a route accepts the scopes of routes that write its topic.
    let msg = message("elsewhere", Some(encrypted.clone()), headers.clone());
    let (code, text) = dead_letter(fx.decrypt(&msg, &mut value).await);
    assert_eq!(code, Code::DekScopeRefused);
    assert!(
        text.contains("route:secure.${topic}") && text.contains("accept_scopes"),
        "{text}"
    );
    assert_eq!(fx.kms_requests(), before, "no KMS call for a refused scope");

    // A route that lists its scopes accepts only those.
    let fx =
        Fixture::with_decrypt_route(|r| r.accept_scopes = Some(vec!["tenant:acme".into()])).await;
    let (encrypted, headers) = fx.encrypted_order().await;
    let msg = message(TARGET, Some(encrypted), headers);
    let (code, _) = dead_letter(fx.decrypt(&msg, &mut value).await);
    assert_eq!(code, Code::DekScopeRefused);
}

#[tokio::test]
async fn a_tampered_ciphertext_is_dead_lettered_not_produced() {
    let fx = Fixture::new().await;
    let (mut encrypted, headers) = fx.encrypted_order().await;
    // The plain `note` ends the value (branch, length, 10 bytes); the byte
    // before it is the last of `card`'s ciphertext.
    let at = encrypted.len() - "ring twice".len() - 2 - 1;
    encrypted[at] ^= 1;
    let mut value = Vec::new();
    let msg = message(TARGET, Some(encrypted), headers);
    let (code, text) = dead_letter(fx.decrypt(&msg, &mut value).await);
    assert_eq!(code, Code::AuthenticationFailed, "{text}");
    assert!(text.contains("card"), "{text}");
}

#[tokio::test]
async fn a_route_index_without_a_transform_is_dead_lettered() {
    let fx = Fixture::new().await;
    let mut value = Vec::new();
    let msg = message(SOURCE, Some(order(1)), None);
    let o = fx
        .encrypt
        .transform(&msg, 7, TARGET, &mut value)
        .await
        .unwrap();
    assert_eq!(dead_letter(o).0, Code::NoRoute);
}

mod registry;
