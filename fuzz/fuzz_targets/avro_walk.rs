//! Avro datums from untrusted producers through the walker and the record transform.
//!
//! Input: one selector byte, then the bytes. Selector low 6 bits pick the schema
//! (modulo the fixture count, see `fieldcrypt_fuzz::fixtures`), high 2 bits the mode:
//!
//! - 0: a plaintext datum (producer side): validate, canonical re-encoding, encrypt,
//!   check the output against the encrypted schema and the inspector, decrypt, and
//!   compare with the canonical re-encoding of the input.
//! - 1: a block of plaintext datums back to back (file mode, `encrypt_next`), each
//!   round-tripped as in mode 0.
//! - 2: an encrypted Kafka value (consumer side): a length byte, that many bytes of
//!   `fieldcrypt.dek` header (decoded and unwrapped through the DEK cache as the
//!   pipeline does; the TEST-ONLY KEK is constant, so seeds carry working DEKs),
//!   then the encrypted datum: inspect and decrypt; what decrypts must be a valid
//!   datum of the original schema that encrypts again.
//! - 3: as 2 with a block of encrypted datums (`decrypt_next`, file mode).
//!
//! Assertion messages never contain input bytes.

#![no_main]

use fieldcrypt::avro::binary::{validate, walk, Cursor, DecodeError, DecodeErrorKind};
use fieldcrypt::schema::model::SchemaTree;
use fieldcrypt::kafka::headers::encode_dek;
use fieldcrypt::transform::decrypt::DekSet;
use fieldcrypt::transform::{TransformError, TransformErrorKind};
use fieldcrypt_fuzz::{deks, fixtures, save_seed, seedgen_dir, Fixture};
use libfuzzer_sys::fuzz_target;

/// Canonical re-encoding of exactly one datum (what `validate` accepts).
fn canonical(tree: &SchemaTree, datum: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut cur = Cursor::new(datum);
    let mut out = Vec::with_capacity(datum.len());
    walk(tree, tree.root, &mut cur, &mut out, 0)?;
    if cur.remaining() != 0 {
        return Err(DecodeError {
            kind: DecodeErrorKind::TrailingBytes(cur.remaining()),
            offset: cur.position(),
            path: String::new(),
        });
    }
    Ok(out)
}

fn exhausted(e: &TransformError) -> bool {
    e.kind == TransformErrorKind::DekExhausted
}

/// Checks a successful encryption of `datum` (one record) into `out` and that it
/// decrypts to the same values.
fn check_encrypted(f: &Fixture, datum: &[u8], out: &[u8]) {
    let tree = &f.plan.tree;
    let canon = canonical(tree, datum).expect("encrypted a datum the walker rejects");
    validate(&f.plan.output_tree, out)
        .unwrap_or_else(|e| panic!("{}: encrypted datum does not match the output schema: {e}", f.name));
    validate(&f.dplan.tree, out).unwrap_or_else(|e| {
        panic!("{}: encrypted datum does not match the decrypt plan's schema: {e}", f.name)
    });
    f.insp
        .inspect(out)
        .unwrap_or_else(|e| panic!("{}: inspector rejects a fresh encryption: {e}", f.name));
    let mut back = Vec::new();
    f.dec
        .decrypt(out, &deks().set, &mut back)
        .unwrap_or_else(|e| panic!("{}: fresh encryption does not decrypt: {e}", f.name));
    let canon_back = canonical(tree, &back)
        .unwrap_or_else(|e| panic!("{}: decrypted datum does not validate: {e}", f.name));
    assert!(
        canon_back == canon,
        "{}: decrypted values differ from the input's",
        f.name
    );
    let canon_orig = canonical(&f.dplan.original_tree, &back).unwrap_or_else(|e| {
        panic!("{}: decrypted datum does not match the restored schema: {e}", f.name)
    });
    assert!(
        canon_orig == canon,
        "{}: restored schema reads the decrypted datum differently",
        f.name
    );
    if canon == datum {
        assert!(
            back == datum,
            "{}: canonical input does not decrypt to the same bytes",
            f.name
        );
    }
}

/// The start of a mode 2/3 seed: selector, then the process DEK's header.
fn encrypted_seed_prefix(mode: u8, sel: u8) -> Vec<u8> {
    let header = encode_dek(deks().dek.wrapped()).expect("DEK header");
    let mut seed = vec![mode << 6 | (sel & 0x3f), u8::try_from(header.len()).expect("short DEK header")];
    seed.extend_from_slice(&header);
    seed
}

/// Splits a mode 2/3 input into the DEKs its header provides and the datum(s).
fn split_encrypted(data: &[u8]) -> Option<(DekSet, &[u8])> {
    let (&n, rest) = data.split_first()?;
    let n = usize::from(n);
    if rest.len() < n {
        return None;
    }
    let (header, datum) = rest.split_at(n);
    let mut set = DekSet::new();
    if let Some(key) = deks().from_header(header) {
        set.insert(*key.id(), key);
    }
    Some((set, datum))
}

/// Mode 0: one plaintext datum.
fn plaintext(f: &Fixture, sel: u8, datum: &[u8]) {
    let tree = &f.plan.tree;
    let v = validate(tree, datum);
    let c = canonical(tree, datum);
    assert_eq!(
        v.as_ref().err(),
        c.as_ref().err(),
        "{}: validation and canonical re-encoding disagree",
        f.name
    );
    if let Ok(canon) = &c {
        let again = canonical(tree, canon)
            .unwrap_or_else(|e| panic!("{}: canonical re-encoding does not validate: {e}", f.name));
        assert!(again == *canon, "{}: canonical re-encoding is not a fixpoint", f.name);
    }

    let dek = &deks().dek;
    let mut out = Vec::new();
    let r = f.enc.encrypt(datum, Some(dek), &mut out);
    match (&v, &r) {
        (Ok(()), Ok(_)) => {}
        (_, Err(e)) if exhausted(e) => return,
        (Ok(()), Err(e)) => panic!("{}: a valid datum does not encrypt: {e}", f.name),
        (Err(e), Ok(_)) => panic!("{}: an invalid datum ({e}) was encrypted", f.name),
        (Err(_), Err(_)) => {
            assert!(out.is_empty(), "{}: failed encrypt left output behind", f.name);
            return;
        }
    }
    check_encrypted(f, datum, &out);
    if !f.enc.needs_dek() {
        let mut twice = Vec::new();
        f.enc
            .encrypt(datum, None, &mut twice)
            .unwrap_or_else(|e| panic!("{}: deterministic-only encrypt not repeatable: {e}", f.name));
        assert!(twice == out, "{}: deterministic-only encryption differs between runs", f.name);
    }
    if seedgen_dir().is_some() {
        let mut seed = encrypted_seed_prefix(2, sel);
        seed.extend_from_slice(&out);
        save_seed(&seed);
    }
}

/// Mode 1: plaintext datums back to back, as in a container block.
fn plaintext_block(f: &Fixture, sel: u8, data: &[u8]) {
    let dek = &deks().dek;
    let mut cur = Cursor::new(data);
    let mut out = Vec::new();
    while cur.remaining() > 0 {
        let start = cur.position();
        let out_start = out.len();
        match f.enc.encrypt_next(&mut cur, Some(dek), &mut out) {
            Ok(_) => {
                if cur.position() == start {
                    // Only a zero-size record (all nulls) consumes nothing.
                    assert_eq!(f.plan.tree.min_size(f.plan.tree.root), 0, "{}: encrypt_next made no progress", f.name);
                    break;
                }
                let datum = &data[start..cur.position()];
                check_encrypted(f, datum, &out[out_start..]);
            }
            Err(e) => {
                assert_eq!(cur.position(), start, "{}: failed encrypt_next moved the cursor", f.name);
                assert_eq!(out.len(), out_start, "{}: failed encrypt_next left output behind", f.name);
                if !exhausted(&e) {
                    // The walker must reject the same record.
                    let mut c = Cursor::new(&data[start..]);
                    let w = walk(&f.plan.tree, f.plan.tree.root, &mut c, &mut fieldcrypt::avro::binary::Discard, 0);
                    assert!(w.is_err(), "{}: encrypt_next rejects a record the walker accepts: {e}", f.name);
                }
                break;
            }
        }
    }
    if seedgen_dir().is_some() && !out.is_empty() {
        let mut seed = encrypted_seed_prefix(3, sel);
        seed.extend_from_slice(&out);
        save_seed(&seed);
    }
}

/// Checks a successful decryption of encrypted `datum` into `back`.
fn check_decrypted(f: &Fixture, datum: &[u8], back: &[u8]) {
    validate(&f.dplan.tree, datum)
        .unwrap_or_else(|e| panic!("{}: decrypted a datum the encrypted schema rejects: {e}", f.name));
    f.insp
        .inspect(datum)
        .unwrap_or_else(|e| panic!("{}: inspector rejects a datum that decrypts: {e}", f.name));
    validate(&f.plan.tree, back)
        .unwrap_or_else(|e| panic!("{}: decrypted datum does not match the original schema: {e}", f.name));
    validate(&f.dplan.original_tree, back)
        .unwrap_or_else(|e| panic!("{}: decrypted datum does not match the restored schema: {e}", f.name));
    let mut again = Vec::new();
    match f.enc.encrypt(back, Some(&deks().dek), &mut again) {
        Ok(_) => {}
        Err(e) if exhausted(&e) => {}
        Err(e) => panic!("{}: a decrypted datum does not encrypt again: {e}", f.name),
    }
}

/// Mode 2: one encrypted datum from an untrusted producer.
fn encrypted(f: &Fixture, data: &[u8]) {
    let Some((set, datum)) = split_encrypted(data) else {
        return;
    };
    let inspected = f.insp.inspect(datum);
    if inspected.is_ok() {
        validate(&f.dplan.tree, datum).unwrap_or_else(|e| {
            panic!("{}: inspector accepts a datum the encrypted schema rejects: {e}", f.name)
        });
    }
    let mut back = Vec::new();
    match f.dec.decrypt(datum, &set, &mut back) {
        Ok(_) => check_decrypted(f, datum, &back),
        Err(_) => assert!(back.is_empty(), "{}: failed decrypt left output behind", f.name),
    }
}

/// Mode 3: encrypted datums back to back.
fn encrypted_block(f: &Fixture, data: &[u8]) {
    let Some((set, data)) = split_encrypted(data) else {
        return;
    };
    let mut cur = Cursor::new(data);
    let mut back = Vec::new();
    while cur.remaining() > 0 {
        let start = cur.position();
        let back_start = back.len();
        match f.dec.decrypt_next(&mut cur, &set, &mut back) {
            Ok(_) => {
                if cur.position() == start {
                    assert_eq!(f.dplan.tree.min_size(f.dplan.tree.root), 0, "{}: decrypt_next made no progress", f.name);
                    break;
                }
                check_decrypted(f, &data[start..cur.position()], &back[back_start..]);
            }
            Err(_) => {
                assert_eq!(cur.position(), start, "{}: failed decrypt_next moved the cursor", f.name);
                assert_eq!(back.len(), back_start, "{}: failed decrypt_next left output behind", f.name);
                break;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let all = fixtures();
    let f = &all[usize::from(sel & 0x3f) % all.len()];
    match sel >> 6 {
        0 => plaintext(f, sel, rest),
        1 => plaintext_block(f, sel, rest),
        2 => encrypted(f, rest),
        _ => encrypted_block(f, rest),
    }
});
