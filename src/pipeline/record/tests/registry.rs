//! The registry and CSFLE paths without a server: a [`Registry`] held in memory
//! (schemas by id, subjects' versions, the DEK Registry's KEKs and DEKs) behind
//! the transform, with a switch that makes it unreachable. Framed values and keys
//! go through fieldcrypt's format, Confluent's, and re-keying between them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use super::*;
use crate::kafka::route::{ConfluentRule, Format};
use crate::registry::dek::{Dek, DekVersion, Kek, NewDek, NewKek};
use crate::registry::{OutputSchema, RegisteredSchema, RegistryError, SubjectVersion, AVRO};

/// One registered schema: subject, type, text, rule set, metadata.
type Entry = (String, String, Json, Option<Json>, Option<Json>);

/// A Schema Registry (and DEK Registry) in memory. Ids are 1, 2, ... in
/// registration order; a subject's versions are its entries in that order.
#[derive(Default)]
struct FakeRegistry {
    schemas: Mutex<Vec<Entry>>,
    keks: Mutex<BTreeMap<String, Kek>>,
    deks: Mutex<BTreeMap<(String, String, String, i32), Dek>>,
    /// Every call fails as an unreachable registry would.
    down: AtomicBool,
    schema_fetches: AtomicUsize,
}

impl FakeRegistry {
    fn up(&self, what: &str) -> Result<(), RegistryError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(RegistryError::Unavailable {
                what: what.into(),
                msg: "connection refused".into(),
            });
        }
        Ok(())
    }

    /// Registers `json` under `subject` as a writer would, returning its id.
    fn add(&self, subject: &str, json: Json, rules: Option<Json>) -> u32 {
        self.add_typed(subject, AVRO, json, rules)
    }

    fn add_typed(&self, subject: &str, schema_type: &str, json: Json, rules: Option<Json>) -> u32 {
        let mut s = self.schemas.lock().unwrap();
        s.push((subject.into(), schema_type.into(), json, rules, None));
        s.len() as u32
    }

    /// The schema registered with id `id`.
    fn json(&self, id: u32) -> Json {
        self.entry(id).unwrap().2
    }

    fn entry(&self, id: u32) -> Option<Entry> {
        let s = self.schemas.lock().unwrap();
        s.get((id as usize).checked_sub(1)?).cloned()
    }

    fn ids_of(&self, subject: &str) -> Vec<u32> {
        let s = self.schemas.lock().unwrap();
        (1..=s.len() as u32)
            .filter(|id| s[*id as usize - 1].0 == subject)
            .collect()
    }
}

#[async_trait]
impl Registry for FakeRegistry {
    async fn schema_by_id(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError> {
        self.up("schema")?;
        self.schema_fetches.fetch_add(1, Ordering::SeqCst);
        let (_, schema_type, json, rule_set, metadata) =
            self.entry(id).ok_or(RegistryError::NotFound {
                what: format!("schema id {id}"),
            })?;
        Ok(Arc::new(RegisteredSchema {
            id,
            schema_type,
            json,
            references: Vec::new(),
            rule_set,
            metadata,
        }))
    }

    async fn subject_versions(&self, subject: &str) -> Result<Vec<i64>, RegistryError> {
        self.up("versions")?;
        Ok((1..=self.ids_of(subject).len() as i64).collect())
    }

    async fn subject_schema(
        &self,
        subject: &str,
        version: i64,
    ) -> Result<SubjectVersion, RegistryError> {
        self.up("version")?;
        let id = self.ids_of(subject)[version as usize - 1];
        let (_, schema_type, json, rule_set, metadata) = self.entry(id).unwrap();
        Ok(SubjectVersion {
            schema_type,
            json,
            rule_set,
            metadata,
        })
    }

    async fn output_id(
        &self,
        subject: &str,
        out: &OutputSchema<'_>,
        register: bool,
    ) -> Result<u32, RegistryError> {
        self.up("register")?;
        let wanted = (
            subject.to_string(),
            out.schema_type.to_string(),
            out.json.clone(),
            out.rule_set.cloned(),
            out.metadata.cloned(),
        );
        let mut s = self.schemas.lock().unwrap();
        if let Some(i) = s.iter().position(|e| *e == wanted) {
            return Ok(i as u32 + 1);
        }
        if !register {
            return Err(RegistryError::NotFound {
                what: format!("subject {subject} with this schema"),
            });
        }
        s.push(wanted);
        Ok(s.len() as u32)
    }

    async fn kek(&self, name: &str) -> Result<Option<Kek>, RegistryError> {
        self.up("kek")?;
        Ok(self.keks.lock().unwrap().get(name).cloned())
    }

    async fn create_kek(&self, new: &NewKek) -> Result<Kek, RegistryError> {
        self.up("create kek")?;
        let kek = Kek {
            name: new.name.clone(),
            kms_type: new.kms_type.clone(),
            kms_key_id: new.kms_key_id.clone(),
            kms_props: BTreeMap::new(),
            doc: None,
            shared: new.shared,
            ts: Some(0),
            deleted: false,
        };
        let mut keks = self.keks.lock().unwrap();
        Ok(keks.entry(new.name.clone()).or_insert(kek).clone())
    }

    async fn dek(
        &self,
        kek: &str,
        subject: &str,
        version: DekVersion,
        algorithm: &str,
        _deleted: bool,
    ) -> Result<Option<Dek>, RegistryError> {
        self.up("dek")?;
        let deks = self.deks.lock().unwrap();
        let mut of = deks
            .iter()
            .filter(|((k, s, a, _), _)| k == kek && s == subject && a == algorithm);
        Ok(match version {
            DekVersion::Latest => of.map(|(_, d)| d).max_by_key(|d| d.version).cloned(),
            DekVersion::Number(v) => of.find(|((.., n), _)| *n == v).map(|(_, d)| d.clone()),
        })
    }

    async fn create_dek(&self, kek: &str, new: &NewDek) -> Result<Dek, RegistryError> {
        self.up("create dek")?;
        let dek = Dek {
            kek_name: kek.into(),
            subject: new.subject.clone(),
            version: new.version,
            algorithm: new.algorithm.clone(),
            encrypted_key_material: new.encrypted_key_material.clone(),
            key_material: None,
            ts: Some(i64::MAX / 2),
            deleted: false,
        };
        let key = (
            kek.into(),
            new.subject.clone(),
            new.algorithm.clone(),
            new.version,
        );
        Ok(self.deks.lock().unwrap().entry(key).or_insert(dek).clone())
    }
}

/// A value (or key) framed with schema id `id`.
fn framed(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    crate::kafka::wire::frame_header(id, &mut v);
    v.extend_from_slice(datum);
    v
}

fn schema_id(framed: &[u8]) -> u32 {
    crate::kafka::wire::parse(framed).unwrap().0
}

/// Encrypting and decrypting transformers over one fake registry: SOURCE →
/// TARGET encrypting with `route`'s settings, TARGET → plain.orders decrypting.
struct Registered {
    reg: Arc<FakeRegistry>,
    engine: Arc<Engine>,
    encrypt: Transformer,
    decrypt: Transformer,
    _dir: tempfile::TempDir,
}

impl Registered {
    async fn new(route: impl FnOnce(&mut RouteConfig)) -> Self {
        let (engine, mut cfg, dir) = local_engine().await;
        let reg = Arc::new(FakeRegistry::default());
        cfg.schema_registry.url = Some("http://registry.invalid".into());
        let mut r = RouteConfig {
            source: SOURCE.into(),
            target: TARGET.into(),
            ..Default::default()
        };
        route(&mut r);
        cfg.routes = vec![r];
        let encrypt = Transformer::new(engine.clone(), &cfg, Some(reg.clone())).unwrap();
        cfg.pipeline.mode = PipelineMode::Decrypt;
        cfg.routes = vec![RouteConfig {
            source: TARGET.into(),
            target: "plain.orders".into(),
            ..Default::default()
        }];
        let decrypt = Transformer::new(engine.clone(), &cfg, Some(reg.clone())).unwrap();
        Registered {
            reg,
            engine,
            encrypt,
            decrypt,
            _dir: dir,
        }
    }

    async fn encrypt(&self, msg: &OwnedMessage) -> (Outcome, Vec<u8>) {
        let mut out = Vec::new();
        let o = self.encrypt.transform(msg, 0, TARGET, &mut out).await;
        (o.expect("no infrastructure failure"), out)
    }

    /// Decrypts what [`encrypt`](Self::encrypt) produced.
    async fn decrypt(&self, value: Vec<u8>, headers: Option<OwnedHeaders>) -> (Outcome, Vec<u8>) {
        let msg = message(TARGET, Some(value), headers);
        let mut out = Vec::new();
        let o = self
            .decrypt
            .transform(&msg, 0, "plain.orders", &mut out)
            .await;
        (o.expect("no infrastructure failure"), out)
    }
}

#[tokio::test]
async fn a_registry_value_is_encrypted_under_its_registered_output_schema_and_decrypts_exactly() {
    let fx = Registered::new(|_| {}).await;
    let id = fx.reg.add("orders-value", order_schema(), None);
    let msg = message(SOURCE, Some(framed(id, &order(1))), None);
    let (o, enc) = fx.encrypt(&msg).await;
    let (_, _, headers, counts) = produced(o);
    assert_eq!((counts.randomized, counts.deterministic), (1, 1));
    assert!(pairs(&headers).iter().any(|(k, _)| k == headers::DEK));
    assert!(!enc.windows(CARD.len()).any(|w| w == CARD.as_bytes()));
    // The output names the encrypted schema, registered under the target's subject.
    let out_id = schema_id(&enc);
    assert_eq!(fx.reg.ids_of("secure.orders-value"), vec![out_id]);
    let expected = fx.engine.encryptor(&order_schema(), "o").unwrap();
    assert_eq!(fx.reg.json(out_id), expected.plan().output_json);

    let (o, plain) = fx.decrypt(enc, headers).await;
    let (_, _, headers, _) = produced(o);
    assert!(
        pairs(&headers).is_empty(),
        "the DEK header is not passed on"
    );
    assert_eq!(&plain[5..], &order(1)[..]);
    // Decrypted under the plain schema, registered under the decrypted topic's subject.
    let plain_id = schema_id(&plain);
    assert_eq!(fx.reg.ids_of("plain.orders-value"), vec![plain_id]);
    assert_eq!(fx.reg.json(plain_id), order_schema());
}

#[tokio::test]
async fn a_schema_id_is_fetched_once_and_its_refusal_is_kept() {
    let fx = Registered::new(|_| {}).await;
    let plain =
        json!({"type": "record", "name": "Note", "fields": [{"name": "text", "type": "string"}]});
    let id = fx.reg.add("orders-value", plain, None);
    let mut datum = Vec::new();
    crate::avro::binary::write_bytes(&mut datum, b"hello");
    for _ in 0..3 {
        let msg = message(SOURCE, Some(framed(id, &datum)), None);
        let (code, m) = dead_letter(fx.encrypt(&msg).await.0);
        assert_eq!(code, Code::NothingToEncrypt, "{m}");
        assert!(m.contains("allow_unencrypted"), "{m}");
    }
    assert_eq!(fx.reg.schema_fetches.load(Ordering::SeqCst), 1);
    assert!(
        fx.reg.ids_of("secure.orders-value").is_empty(),
        "nothing registered for a refused schema"
    );
}

#[tokio::test]
async fn a_registry_outage_holds_the_record_and_is_not_remembered() {
    let fx = Registered::new(|_| {}).await;
    let id = fx.reg.add("orders-value", order_schema(), None);
    let msg = message(SOURCE, Some(framed(id, &order(1))), None);
    fx.reg.down.store(true, Ordering::SeqCst);
    let e = fx
        .encrypt
        .transform(&msg, 0, TARGET, &mut Vec::new())
        .await
        .expect_err("an outage is not the record's fault");
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.code(), Code::RegistryUnavailable);
    fx.reg.down.store(false, Ordering::SeqCst);
    produced(fx.encrypt(&msg).await.0);
}

#[tokio::test]
async fn a_writer_schema_that_drops_an_earlier_versions_encryption_is_refused() {
    let fx = Registered::new(|_| {}).await;
    fx.reg.add("orders-value", order_schema(), None);
    let mut v2 = order_schema();
    v2["fields"][2] = json!({"name": "card", "type": "string"});
    let id = fx.reg.add("orders-value", v2, None);
    let msg = message(SOURCE, Some(framed(id, &order(1))), None);
    let (code, m) = dead_letter(fx.encrypt(&msg).await.0);
    assert_eq!(code, Code::PolicyDowngrade, "{m}");
    assert!(
        m.contains("shop.Order.card") && m.contains("allow_downgrade"),
        "{m}"
    );

    // The same schema on a route that allows it goes through, card in clear.
    let fx = Registered::new(|r| r.allow_downgrade = true).await;
    fx.reg.add("orders-value", order_schema(), None);
    let mut v2 = order_schema();
    v2["fields"][2] = json!({"name": "card", "type": "string"});
    let id = fx.reg.add("orders-value", v2, None);
    let msg = message(SOURCE, Some(framed(id, &order(1))), None);
    let (o, _) = fx.encrypt(&msg).await;
    assert_eq!(produced(o).3.randomized, 0);
}

/// A record whose key (`user`, framed with `key_id`) is Avro.
fn keyed(key_id: u32, user: &str, value_id: u32) -> OwnedMessage {
    let mut datum = Vec::new();
    crate::avro::binary::write_bytes(&mut datum, user.as_bytes());
    OwnedMessage::new(
        Some(framed(value_id, &order(1))),
        Some(framed(key_id, &datum)),
        SOURCE.into(),
        Timestamp::CreateTime(1_700_000_000_000),
        0,
        1,
        None,
    )
}

#[tokio::test]
async fn framed_keys_are_encrypted_deterministically_and_randomized_key_fields_refused() {
    let fx = Registered::new(|r| r.key_format = KeyFormat::Avro).await;
    let det = json!({"type": "record", "name": "K", "fields": [
        {"name": "user", "type": "string", "sensitive": {"mode": "deterministic"}}]});
    let key_id = fx.reg.add("orders-key", det, None);
    let value_id = fx.reg.add("orders-value", order_schema(), None);
    let mut keys = Vec::new();
    for user in ["ann", "ann", "bob"] {
        let (o, _) = fx.encrypt(&keyed(key_id, user, value_id)).await;
        keys.push(produced(o).0.expect("a new key"));
    }
    let [a1, a2, b] = <[Vec<u8>; 3]>::try_from(keys).unwrap();
    assert_eq!(a1, a2, "equal keys stay equal");
    assert_ne!(a1, b);
    assert!(!a1.windows(3).any(|w| w == b"ann"));
    assert_eq!(fx.reg.ids_of("secure.orders-key"), vec![schema_id(&a1)]);

    let rnd = json!({"type": "record", "name": "K", "fields": [
        {"name": "user", "type": "string", "sensitive": true}]});
    let key_id = fx.reg.add("orders-key", rnd, None);
    let (code, m) = dead_letter(fx.encrypt(&keyed(key_id, "ann", value_id)).await.0);
    assert_eq!(code, Code::RandomizedKeyField, "{m}");
}

#[tokio::test]
async fn a_schema_type_no_value_format_reads_is_refused_for_good() {
    let fx = Registered::new(|_| {}).await;
    let proto = Json::String("syntax = \"proto3\"; message Order { string card = 1; }".into());
    let id = fx.reg.add_typed("orders-value", "PROTOBUF", proto, None);
    for _ in 0..2 {
        let msg = message(SOURCE, Some(framed(id, b"\x0a\x04abcd")), None);
        let (code, m) = dead_letter(fx.encrypt(&msg).await.0);
        assert_eq!(code, Code::SchemaRejected, "{m}");
        assert!(
            m.contains("PROTOBUF") && m.contains("confluent, fieldcrypt"),
            "{m}"
        );
    }
    assert_eq!(fx.reg.schema_fetches.load(Ordering::SeqCst), 1);
}

mod csfle;
