//! Golden vectors: the field ciphertext layout, the blind index and the derived
//! output schema are pinned byte for byte (docs/ENCRYPTION.md). The vectors live in
//! tests/golden/vectors.json so that the Python interop test can check them with an
//! independent AES-GCM / AES-SIV implementation. Keys are derived in the tests from
//! public labels (SHA-256 of the label), never stored.

use fieldcrypt::avro::binary::write_bytes;
use fieldcrypt::config::Config;
use fieldcrypt::crypto::blind_index::{BlindIndexKey, Normalize};
use fieldcrypt::crypto::cipher::{DeterministicKey, RandomizedKey};
use fieldcrypt::schema::parse_schema_json;
use fieldcrypt::schema::plan::EncryptPlan;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

fn vectors() -> Json {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/vectors.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Key bytes from labels: SHA-256 of each label, concatenated.
fn key(labels: &Json) -> Vec<u8> {
    labels
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| Sha256::digest(l.as_str().unwrap().as_bytes()).to_vec())
        .collect()
}

fn hex16(v: &Json) -> [u8; 16] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn avro_string(s: &str) -> Vec<u8> {
    let mut v = Vec::new();
    write_bytes(&mut v, s.as_bytes());
    v
}

/// The GCM vector `name` in format `version`: sealed with its nonce it gives the
/// pinned bytes, which open again.
fn gcm_vector_is_pinned(name: &str, version: fieldcrypt::crypto::format::Version) {
    let v = &vectors()[name];
    let k = RandomizedKey::new(hex16(&v["key_id"]), &key(&v["key_labels"])).unwrap();
    let nonce: [u8; 12] = hex::decode(v["nonce"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let pt = avro_string(v["value"].as_str().unwrap());
    assert_eq!(hex::encode(&pt), v["plaintext"].as_str().unwrap());
    let context = v["context"].as_str().unwrap();
    let mut ct = Vec::new();
    k.seal_with_nonce_in(version, &nonce, context, &pt, &mut ct)
        .unwrap();
    assert_eq!(
        hex::encode(&ct),
        v["ciphertext"].as_str().unwrap(),
        "{name}"
    );
    let mut back = Vec::new();
    k.open_into(context, &ct, &mut back).unwrap();
    assert_eq!(back, pt);
}

#[test]
fn gcm_field_ciphertext_is_pinned() {
    gcm_vector_is_pinned("aes_256_gcm", fieldcrypt::crypto::format::Version::V1);
}

#[test]
fn gcm_field_ciphertext_version_2_is_pinned() {
    gcm_vector_is_pinned("aes_256_gcm_v2", fieldcrypt::crypto::format::Version::V2);
}

#[test]
fn siv_field_ciphertext_is_pinned() {
    let v = &vectors()["aes_256_siv"];
    let k = DeterministicKey::new(hex16(&v["key_id"]), &key(&v["key_labels"])).unwrap();
    let pt = avro_string(v["value"].as_str().unwrap());
    assert_eq!(hex::encode(&pt), v["plaintext"].as_str().unwrap());
    let mut ct = Vec::new();
    k.seal_into(v["context"].as_str().unwrap(), &pt, &mut ct)
        .unwrap();
    assert_eq!(hex::encode(&ct), v["ciphertext"].as_str().unwrap());
}

#[test]
fn blind_index_is_pinned() {
    let v = &vectors()["blind_index"];
    let norm: Vec<Normalize> = serde_json::from_value(v["normalize"].clone()).unwrap();
    let k = BlindIndexKey::new(
        [0; 16],
        &key(&v["key_labels"]),
        v["length"].as_u64().unwrap() as usize,
        norm,
    )
    .unwrap();
    for case in v["cases"].as_array().unwrap() {
        let mut out = Vec::new();
        k.index_text(case["value"].as_str().unwrap(), &mut out);
        assert_eq!(hex::encode(&out), case["index"].as_str().unwrap(), "{case}");
    }
}

#[test]
fn customer_output_schema_is_pinned() {
    let root = env!("CARGO_MANIFEST_DIR");
    let schema = parse_schema_json(
        &std::fs::read_to_string(format!("{root}/schemas/customer.avsc")).unwrap(),
    )
    .unwrap();
    let plan =
        EncryptPlan::build(&schema, "customer.avsc", &Config::default().plan_config()).unwrap();
    let golden: Json = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/tests/golden/customer.encrypted.avsc")).unwrap(),
    )
    .unwrap();
    assert_eq!(plan.output_json, golden);
}

/// A whole record in deterministic mode with blind indexes over every indexable
/// type, nullable fields null and not null: pins the output datum layout (union
/// branches, length prefixes, index placement) byte for byte.
#[test]
fn deterministic_record_layout_is_pinned() {
    use std::sync::Arc;
    let v = vectors();
    let g = &v["record"];
    let det = Arc::new(
        DeterministicKey::new(hex16(&g["siv_key_id"]), &key(&g["siv_key_labels"])).unwrap(),
    );
    let idx = |norm: Vec<Normalize>| {
        Arc::new(BlindIndexKey::new([0; 16], &key(&g["index_key_labels"]), 8, norm).unwrap())
    };
    let keys = fieldcrypt::keys::KeyMaterial::from_keys(
        vec![("default".into(), det)],
        vec![
            ("plain".into(), idx(vec![])),
            (
                "email".into(),
                idx(vec![Normalize::Trim, Normalize::Lowercase]),
            ),
        ],
    );
    let schema = g["schema"].clone();
    let mut cfg = Config::default();
    cfg.blind_index.domains.insert(
        "email".into(),
        fieldcrypt::config::DomainConfig {
            normalize: vec![Normalize::Trim, Normalize::Lowercase],
        },
    );
    let plan =
        std::sync::Arc::new(EncryptPlan::build(&schema, "golden", &cfg.plan_config()).unwrap());
    let enc = fieldcrypt::transform::Encryptor::new(plan.clone(), &keys).unwrap();
    let avro = apache_avro::Schema::parse(&schema).unwrap();
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&avro)
        .build()
        .unwrap();
    use apache_avro::types::Value as V;
    let value = V::Record(vec![
        ("email".into(), V::String(" Ann@Example.COM ".into())),
        ("age".into(), V::Int(42)),
        ("balance".into(), V::Long(-7)),
        ("score".into(), V::Float(1.5)),
        ("ratio".into(), V::Double(0.25)),
        ("vip".into(), V::Boolean(true)),
        ("tier".into(), V::Enum(1, "GOLD".into())),
        ("tag".into(), V::Fixed(4, b"abcd".to_vec())),
        ("blob".into(), V::Bytes(b"xyz".to_vec())),
        (
            "phone".into(),
            V::Union(1, Box::new(V::String("+1 555".into()))),
        ),
        ("fax".into(), V::Union(0, Box::new(V::Null))),
        ("kept".into(), V::String("plain text".into())),
    ]);
    let datum = writer.write_value_to_vec(value).unwrap();
    let mut out = Vec::new();
    enc.encrypt(&datum, None, &mut out).unwrap();
    assert_eq!(hex::encode(&out), g["encrypted"].as_str().unwrap());
    // And it decrypts back with the same keys.
    let dec = fieldcrypt::transform::Decryptor::new(
        Arc::new(
            fieldcrypt::schema::plan::DecryptPlan::build(&plan.output_json, "golden").unwrap(),
        ),
        Arc::new(keys),
    );
    let mut back = Vec::new();
    dec.decrypt(&out, &Default::default(), &mut back).unwrap();
    assert_eq!(back, datum);
}
