//! The walkers on single datums: nulls of encrypted fields, what deterministic
//! ciphertexts equal, and that a datum that does not fit (left-over bytes, cut
//! short, a bad ciphertext) is an error of the right kind, naming the field, with
//! the output buffer left exactly as it was.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{json, Value as Json};

use super::*;
use crate::avro::binary::{write_bytes, DecodeErrorKind};
use crate::codes::Code;
use crate::crypto::blind_index::BlindIndexKey;
use crate::crypto::cipher::DeterministicKey;
use crate::keys::keyset::KeyMaterial;
use crate::keys::{Dek, DekCache, DekManager, DekSettings, Kms, LocalKms, ManualClock};
use crate::schema::plan::{DecryptPlan, EncryptPlan, PlanConfig};
use crate::schema::policy::SelectionConfig;
use crate::transform::decrypt::DekSet;

/// What a failed call must leave in the caller's buffer.
const BEFORE: &[u8] = b"earlier records";

fn keys() -> Arc<KeyMaterial> {
    let det = Arc::new(DeterministicKey::new([3; 16], &[7; 64]).unwrap());
    let index = Arc::new(BlindIndexKey::new([4; 16], &[5; 32], 16, vec![]).unwrap());
    Arc::new(KeyMaterial::from_keys(
        vec![("default".into(), det)],
        vec![("i".into(), index)],
    ))
}

fn walkers(schema: &Json) -> (Encryptor, Decryptor) {
    let cfg = PlanConfig {
        selection: SelectionConfig {
            default_deterministic_domain: "default".into(),
            ..Default::default()
        },
        blind_index_suffix: "_bidx".into(),
        text_only_domains: HashSet::new(),
        max_depth: 64,
    };
    let plan = Arc::new(EncryptPlan::build(schema, "t", &cfg).unwrap());
    let enc = Encryptor::new(plan.clone(), &keys()).unwrap();
    let dplan = DecryptPlan::build_with_depth(&plan.output_json, "t", 64).unwrap();
    (enc, Decryptor::new(Arc::new(dplan), keys()))
}

/// A randomized DEK from a local KMS, and the decrypt side's key for it.
async fn dek() -> (Arc<Dek>, DekSet) {
    let kms: Arc<dyn Kms> = Arc::new(LocalKms::from_bytes(&[1; 32]).unwrap());
    let settings = DekSettings::default();
    let m = DekManager::new(kms.clone(), Arc::new(ManualClock::default()), settings);
    let d = m.current("test").await.unwrap();
    let mut set = DekSet::new();
    let key = DekCache::new(kms, settings).get(d.wrapped()).await.unwrap();
    set.insert(*d.id(), key);
    (d, set)
}

fn string(s: &str) -> Vec<u8> {
    let mut v = Vec::new();
    write_bytes(&mut v, s.as_bytes());
    v
}

fn long(n: i64) -> Vec<u8> {
    let mut v = Vec::new();
    write_long(&mut v, n);
    v
}

/// Encrypts, expecting success; returns the output alone.
fn encrypt(enc: &Encryptor, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    enc.encrypt(datum, None, &mut out).unwrap();
    out
}

/// Encrypting must fail and leave the buffer as it was.
fn encrypt_fails(enc: &Encryptor, datum: &[u8]) -> TransformError {
    let mut out = BEFORE.to_vec();
    let e = enc.encrypt(datum, None, &mut out).unwrap_err();
    assert_eq!(out, BEFORE, "out changed by a failed encrypt ({e})");
    e
}

/// Decrypting must fail and leave the buffer as it was.
fn decrypt_fails(dec: &Decryptor, datum: &[u8], deks: &DekSet) -> TransformError {
    let mut out = BEFORE.to_vec();
    let e = dec.decrypt(datum, deks, &mut out).unwrap_err();
    assert_eq!(out, BEFORE, "out changed by a failed decrypt ({e})");
    e
}

fn decode_kind(e: &TransformError) -> &DecodeErrorKind {
    match &e.kind {
        TransformErrorKind::Decode(d) => &d.kind,
        other => panic!("not a decode error: {other:?}"),
    }
}

#[test]
fn a_null_in_a_nullable_encrypted_field_is_counted_as_null_not_encrypted() {
    let schema = json!({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": ["null", "string"], "default": null,
         "sensitive": {"blind_index": "i"}},
        {"name": "b", "type": ["string", "null"], "sensitive": {"mode": "deterministic"}}
    ]});
    let (enc, dec) = walkers(&schema);
    // a: branch 0 (null); b: branch 1 (null).
    let datum = [long(0), long(1)].concat();
    let mut out = Vec::new();
    // A null needs no key: no DEK is handed in although `a` is randomized.
    let counts = enc.encrypt(&datum, None, &mut out).unwrap();
    assert_eq!(
        counts,
        Counts {
            nulls: 2,
            ..Default::default()
        }
    );
    // a: null (branch 0) and its index null (branch 0); b: null (branch 1).
    assert_eq!(out, [long(0), long(0), long(1)].concat());
    let mut back = Vec::new();
    let counts = dec.decrypt(&out, &DekSet::new(), &mut back).unwrap();
    assert_eq!((back, counts.nulls, counts.randomized), (datum, 2, 0));

    // The same field holding a value does need the DEK.
    let datum = [long(1), string("x"), long(1)].concat();
    let e = encrypt_fails(&enc, &datum);
    assert_eq!(e.kind, TransformErrorKind::DekExhausted);
}

#[test]
fn deterministic_ciphertexts_are_equal_for_equal_values_of_one_field_only() {
    let schema = json!({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "string", "sensitive": {"mode": "deterministic", "blind_index": "i"}},
        {"name": "b", "type": "string", "sensitive": {"mode": "deterministic"}}
    ]});
    let (enc, dec) = walkers(&schema);
    let fields = |out: &[u8]| {
        let mut c = Cursor::new(out);
        let a = c.read_bytes().unwrap().to_vec();
        let a_index = c.read_bytes().unwrap().to_vec();
        let b = c.read_bytes().unwrap().to_vec();
        assert_eq!(c.remaining(), 0);
        (a, a_index, b)
    };
    let same = [string("alice@example.com"), string("alice@example.com")].concat();
    let (a, a_index, b) = fields(&encrypt(&enc, &same));
    assert_ne!(a, b, "the field is bound into each ciphertext");
    assert_eq!(a_index.len(), 16);
    let again = fields(&encrypt(&enc, &same));
    assert_eq!((&again.0, &again.1, &again.2), (&a, &a_index, &b));

    let other = [string("bob@example.com"), string("alice@example.com")].concat();
    let (a2, a2_index, b2) = fields(&encrypt(&enc, &other));
    assert_ne!(a2, a);
    assert_ne!(a2_index, a_index);
    assert_eq!(b2, b);

    let mut back = Vec::new();
    let counts = dec
        .decrypt(&encrypt(&enc, &other), &DekSet::new(), &mut back)
        .unwrap();
    assert_eq!(back, other);
    assert_eq!(counts.deterministic, 2);
}

#[test]
fn deterministic_ciphertexts_do_not_depend_on_how_the_writer_blocked_an_array() {
    let schema = json!({"type": "record", "name": "R", "fields": [
        {"name": "xs", "type": {"type": "array", "items": "long"},
         "sensitive": {"mode": "deterministic"}}]});
    let (enc, dec) = walkers(&schema);
    let one_block = [long(2), long(10), long(20), long(0)].concat();
    let two_blocks = [long(1), long(10), long(1), long(20), long(0)].concat();
    // A negative count is followed by the block's size in bytes.
    let sized = [long(-2), long(2), long(10), long(20), long(0)].concat();
    let ct = encrypt(&enc, &one_block);
    assert_eq!(encrypt(&enc, &two_blocks), ct);
    assert_eq!(encrypt(&enc, &sized), ct);
    // What comes back is the canonical layout.
    let mut back = Vec::new();
    dec.decrypt(&ct, &DekSet::new(), &mut back).unwrap();
    assert_eq!(back, one_block);
}

#[tokio::test]
async fn randomized_ciphertexts_of_equal_values_differ_and_count_one_use_each() {
    let schema = json!({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "string", "sensitive": true},
        {"name": "n", "type": "int"}]});
    let (enc, dec) = walkers(&schema);
    let (d, deks) = dek().await;
    let datum = [string("secret"), long(7)].concat();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let counts = enc.encrypt(&datum, Some(&d), &mut x).unwrap();
    enc.encrypt(&datum, Some(&d), &mut y).unwrap();
    assert_eq!(counts.randomized, 1);
    assert_eq!(d.uses(), 2);
    assert_ne!(x, y);
    assert_eq!(x.len(), y.len());
    for ct in [x, y] {
        assert!(!ct.windows(6).any(|w| w == b"secret"));
        let mut back = Vec::new();
        dec.decrypt(&ct, &deks, &mut back).unwrap();
        assert_eq!(back, datum);
    }
}

fn record_with_a_secret_then_an_int() -> (Encryptor, Decryptor, Vec<u8>) {
    let schema = json!({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "string", "sensitive": {"mode": "deterministic"}},
        {"name": "n", "type": "int"}]});
    let (enc, dec) = walkers(&schema);
    (enc, dec, [string("hello"), long(5)].concat())
}

#[test]
fn encrypting_a_datum_with_left_over_or_missing_bytes_fails_and_leaves_out_unchanged() {
    let (enc, _, datum) = record_with_a_secret_then_an_int();

    let e = encrypt_fails(&enc, &[datum.as_slice(), &[0, 0]].concat());
    assert_eq!(decode_kind(&e), &DecodeErrorKind::TrailingBytes(2));
    assert_eq!(e.code(), Code::SchemaMismatch);

    // Cut short after `a` was encrypted: nothing of it may stay in `out`.
    let e = encrypt_fails(&enc, &datum[..datum.len() - 1]);
    assert_eq!(decode_kind(&e), &DecodeErrorKind::Truncated);
    assert_eq!(e.field_path(), "n");
    assert_eq!(e.code(), Code::SchemaMismatch);

    // Cut short inside the sensitive value.
    let e = encrypt_fails(&enc, &datum[..3]);
    assert_eq!(decode_kind(&e), &DecodeErrorKind::Truncated);
    assert_eq!(e.field_path(), "a");

    let e = encrypt_fails(&enc, &[]);
    assert_eq!(decode_kind(&e), &DecodeErrorKind::Truncated);
}

#[test]
fn decrypting_a_datum_with_left_over_or_missing_bytes_fails_and_leaves_out_unchanged() {
    let (enc, dec, datum) = record_with_a_secret_then_an_int();
    let ct = encrypt(&enc, &datum);
    let deks = DekSet::new();

    let e = decrypt_fails(&dec, &[ct.as_slice(), &[0]].concat(), &deks);
    assert_eq!(decode_kind(&e), &DecodeErrorKind::TrailingBytes(1));
    assert_eq!(e.code(), Code::SchemaMismatch);

    // `a` decrypts, then `n` is missing.
    let e = decrypt_fails(&dec, &ct[..ct.len() - 1], &deks);
    assert_eq!(decode_kind(&e), &DecodeErrorKind::Truncated);
    assert_eq!(e.field_path(), "n");

    let e = decrypt_fails(&dec, &ct[..10], &deks);
    assert_eq!(decode_kind(&e), &DecodeErrorKind::Truncated);
    assert_eq!(e.field_path(), "a");
}

#[test]
fn a_failed_datum_in_a_block_leaves_the_cursor_and_out_where_they_were() {
    let (enc, _, datum) = record_with_a_secret_then_an_int();
    // Two records back to back, the second cut short.
    let block = [datum.as_slice(), &datum[..datum.len() - 1]].concat();
    let mut cur = Cursor::new(&block);
    let mut out = Vec::new();
    enc.encrypt_next(&mut cur, None, &mut out).unwrap();
    assert_eq!(cur.position(), datum.len());
    let first = out.clone();
    let e = enc.encrypt_next(&mut cur, None, &mut out).unwrap_err();
    assert_eq!(decode_kind(&e), &DecodeErrorKind::Truncated);
    assert_eq!(cur.position(), datum.len(), "the cursor is restored");
    assert_eq!(out, first, "only the first record's output");
}

#[test]
fn decode_errors_name_the_array_item_and_the_map_entry_by_position_not_key() {
    let schema = json!({"type": "record", "name": "R", "fields": [
        {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "I",
            "fields": [
                {"name": "s", "type": "string", "sensitive": {"mode": "deterministic"}},
                {"name": "n", "type": "int"}]}}},
        {"name": "m", "type": {"type": "map", "values": "I"}}]});
    let (enc, _) = walkers(&schema);
    let item = [string("x"), long(1)].concat();
    let datum = [long(2), item.clone(), string("y")].concat(); // item 1 has no `n`
    let e = encrypt_fails(&enc, &datum);
    assert_eq!(e.field_path(), "items[1].n");

    let datum = [long(0), long(1), string("customer-key-9"), string("z")].concat();
    let e = encrypt_fails(&enc, &datum);
    assert_eq!(e.field_path(), "m{#0}.n");
    assert!(!e.to_string().contains("customer-key-9"), "{e}");
}

#[tokio::test]
async fn a_ciphertext_that_does_not_open_is_an_error_of_its_kind_naming_the_field() {
    let schema = json!({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "string", "sensitive": {"mode": "deterministic"}},
        {"name": "b", "type": "string", "sensitive": {"mode": "deterministic"}},
        {"name": "r", "type": "string", "sensitive": true}]});
    let (enc, dec) = walkers(&schema);
    let (d, deks) = dek().await;
    let datum = [string("same"), string("size"), string("rand")].concat();
    let mut ct = Vec::new();
    enc.encrypt(&datum, Some(&d), &mut ct).unwrap();
    let mut c = Cursor::new(&ct);
    let parts: Vec<Vec<u8>> = (0..3).map(|_| c.read_bytes().unwrap().to_vec()).collect();
    let join = |p: &[&Vec<u8>]| {
        let mut v = Vec::new();
        for x in p {
            write_bytes(&mut v, x);
        }
        v
    };

    // One bit flipped in the last byte of `b`.
    let mut b = parts[1].clone();
    *b.last_mut().unwrap() ^= 1;
    let e = decrypt_fails(&dec, &join(&[&parts[0], &b, &parts[2]]), &deks);
    assert_eq!(
        e.kind,
        TransformErrorKind::Crypto(CryptoError::Authentication)
    );
    assert_eq!(
        (e.field_path(), e.code()),
        ("b", Code::AuthenticationFailed)
    );

    // Valid ciphertexts in each other's fields.
    let e = decrypt_fails(&dec, &join(&[&parts[1], &parts[0], &parts[2]]), &deks);
    assert_eq!(
        (e.field_path(), e.code()),
        ("a", Code::AuthenticationFailed)
    );

    // No DEK for the randomized field.
    let e = decrypt_fails(&dec, &ct, &DekSet::new());
    assert_eq!((e.field_path(), e.code()), ("r", Code::UnknownKey));

    // Not a fieldcrypt ciphertext at all.
    let junk = b"plain text, not a ciphertext".to_vec();
    let e = decrypt_fails(&dec, &join(&[&junk, &parts[1], &parts[2]]), &deks);
    assert_eq!((e.field_path(), e.code()), ("a", Code::MalformedCiphertext));

    // A deterministic key this process does not have.
    let stranger = Decryptor::new(dec.plan().clone(), Arc::new(KeyMaterial::default()));
    let e = decrypt_fails(&stranger, &ct, &deks);
    assert_eq!((e.field_path(), e.code()), ("a", Code::UnknownKey));
}

#[test]
fn a_decrypted_value_that_does_not_fit_the_original_type_is_refused() {
    // Ciphertexts of a string, read back by a plan whose field was an int (same
    // record and field, so the ciphertext opens).
    let (as_string, _) = walkers(&json!({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "string", "sensitive": {"mode": "deterministic"}}]}));
    let (_, as_int) = walkers(&json!({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "int", "sensitive": {"mode": "deterministic"}}]}));
    let ct = encrypt(&as_string, &string("hello"));
    let e = decrypt_fails(&as_int, &ct, &DekSet::new());
    assert!(matches!(e.kind, TransformErrorKind::Plaintext(_)), "{e:?}");
    assert_eq!((e.field_path(), e.code()), ("a", Code::PlaintextMismatch));
}
