//! Ciphertexts are bound to their field and key: swapping ciphertexts between
//! fields, records or schemas fails authentication; deterministic mode repeats
//! within a field only.

mod common;

use apache_avro::types::Value;
use apache_avro::Schema;
use fieldcrypt::config::Config;
use fieldcrypt::crypto::CryptoError;
use fieldcrypt::transform::TransformErrorKind;
use serde_json::json;

fn schema() -> serde_json::Value {
    json!({"type": "record", "name": "Person", "namespace": "t", "fields": [
        {"name": "a", "type": "string", "sensitive": true},
        {"name": "b", "type": "string", "sensitive": true},
        {"name": "c", "type": "string", "sensitive": {"mode": "deterministic"}},
        {"name": "d", "type": "string", "sensitive": {"mode": "deterministic"}},
        {"name": "plain", "type": "string"}]})
}

fn encode(s: &Schema, v: [&str; 5]) -> Vec<u8> {
    let names = ["a", "b", "c", "d", "plain"];
    let rec = Value::Record(
        names
            .iter()
            .zip(v)
            .map(|(n, x)| (n.to_string(), Value::String(x.into())))
            .collect(),
    );
    apache_avro::writer::datum::GenericDatumWriter::builder(s)
        .build()
        .unwrap()
        .write_value_to_vec(rec)
        .unwrap()
}

fn fields(out_schema: &Schema, datum: &[u8]) -> Vec<(String, Value)> {
    let v = apache_avro::reader::datum::GenericDatumReader::builder(out_schema)
        .build()
        .unwrap()
        .read_value(&mut &datum[..])
        .unwrap();
    match v {
        Value::Record(f) => f,
        _ => unreachable!(),
    }
}

fn reencode(out_schema: &Schema, f: Vec<(String, Value)>) -> Vec<u8> {
    apache_avro::writer::datum::GenericDatumWriter::builder(out_schema)
        .build()
        .unwrap()
        .write_value_to_vec(Value::Record(f))
        .unwrap()
}

#[test]
fn swapped_and_replayed_ciphertexts_fail_with_the_field_named() {
    let f = common::Fixture::new(Config::default(), &["default"], &[]);
    let json = schema();
    let s = Schema::parse(&json).unwrap();
    let enc = f.engine.encryptor(&json, "t").unwrap();
    let out_schema = Schema::parse(&enc.plan().output_json).unwrap();
    let dec = f.engine.decryptor(&enc.plan().output_json, "t").unwrap();
    // Equal-length values so a swap is not caught by length alone.
    let (ct, deks) = f
        .encrypt(&enc, &encode(&s, ["aaaa", "bbbb", "cccc", "dddd", "p"]))
        .unwrap();

    let mut back = Vec::new();
    dec.decrypt(&ct, &deks, &mut back).unwrap();

    for (i, j, name) in [(0, 1, "a"), (2, 3, "c")] {
        let mut fs = fields(&out_schema, &ct);
        let tmp = fs[i].1.clone();
        fs[i].1 = fs[j].1.clone();
        fs[j].1 = tmp;
        let e = dec
            .decrypt(&reencode(&out_schema, fs), &deks, &mut Vec::new())
            .unwrap_err();
        assert_eq!(
            e.kind,
            TransformErrorKind::Crypto(CryptoError::Authentication)
        );
        assert_eq!(e.field_path(), name);
        assert!(!e.to_string().contains("aaaa") && !e.to_string().contains("cccc"));
    }

    // The same field of another schema (another record name) does not accept it.
    let other = json!({"type": "record", "name": "Other", "namespace": "t", "fields": json["fields"].clone()});
    let enc2 = f.engine.encryptor(&other, "t2").unwrap();
    let dec2 = f.engine.decryptor(&enc2.plan().output_json, "t2").unwrap();
    let e = dec2.decrypt(&ct, &deks, &mut Vec::new()).unwrap_err();
    assert_eq!(
        e.kind,
        TransformErrorKind::Crypto(CryptoError::Authentication)
    );

    // Without the DEK the ciphertext names, decryption says which key is missing.
    let e = dec
        .decrypt(&ct, &Default::default(), &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(
            e.kind,
            TransformErrorKind::Crypto(CryptoError::UnknownKey(_))
        ),
        "{e}"
    );
}

#[test]
fn deterministic_repeats_within_a_field_only_randomized_never() {
    let f = common::Fixture::new(Config::default(), &["default"], &[]);
    let json = schema();
    let s = Schema::parse(&json).unwrap();
    let enc = f.engine.encryptor(&json, "t").unwrap();
    let out_schema = Schema::parse(&enc.plan().output_json).unwrap();
    let datum = encode(&s, ["same", "same", "same", "same", "p"]);
    let (x, _) = f.encrypt(&enc, &datum).unwrap();
    let (y, _) = f.encrypt(&enc, &datum).unwrap();
    let (fx, fy) = (fields(&out_schema, &x), fields(&out_schema, &y));
    assert_eq!(
        fx[2].1, fy[2].1,
        "deterministic: equal in the same field across records"
    );
    assert_ne!(fx[2].1, fx[3].1, "deterministic: different across fields");
    assert_ne!(fx[0].1, fy[0].1, "randomized: never equal");
    assert_ne!(fx[0].1, fx[1].1);
    assert_eq!(fx[4].1, Value::String("p".into()));
}

#[test]
fn keyless_inspection_accepts_ciphertexts_and_names_a_field_holding_plaintext() {
    use fieldcrypt::transform::inspect::Inspector;
    let f = common::Fixture::new(Config::default(), &["default"], &[]);
    let json = schema();
    let s = Schema::parse(&json).unwrap();
    let enc = f.engine.encryptor(&json, "t").unwrap();
    let out_schema = Schema::parse(&enc.plan().output_json).unwrap();
    let plan = fieldcrypt::schema::plan::DecryptPlan::build(&enc.plan().output_json, "t").unwrap();
    let ins = Inspector::new(std::sync::Arc::new(plan));
    assert_eq!(
        ins.encrypted_fields().into_iter().collect::<Vec<_>>(),
        ["t.Person.a", "t.Person.b", "t.Person.c", "t.Person.d"]
    );
    let (ct, _) = f
        .encrypt(&enc, &encode(&s, ["alice", "bob", "carol", "dave", "p"]))
        .unwrap();
    assert_eq!(ins.inspect(&ct).unwrap().ciphertexts, 4);

    // A plaintext value where a ciphertext belongs, in either mode's field.
    for (i, name) in [(1, "b"), (3, "d")] {
        let mut fs = fields(&out_schema, &ct);
        fs[i].1 = Value::Bytes(b"bob@example.com".to_vec());
        let e = ins.inspect(&reencode(&out_schema, fs)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                TransformErrorKind::Crypto(CryptoError::Malformed(_))
            ),
            "{e}"
        );
        assert_eq!(e.field_path(), name);
        assert!(!e.to_string().contains("example.com"), "{e}");
    }
    // A datum of the original (unencrypted) schema does not pass either.
    assert!(ins
        .inspect(&encode(&s, ["alice", "bob", "carol", "dave", "p"]))
        .is_err());
}
