//! Avro object container files from untrusted sources, read as `fieldcrypt
//! encrypt-file` reads them: the header, every block (decompressed within the
//! limits), and, when the embedded schema compiles into a plan, every record of
//! every block through the encryptor (with the same record-count plausibility
//! check as src/file/mod.rs) and back through the decryptor. Must never panic or
//! allocate without bound. Assertion messages never contain input bytes.

#![no_main]

use std::sync::Arc;

use fieldcrypt::avro::binary::{validate, Cursor, MAX_ZERO_SIZE_ITEMS};
use fieldcrypt::avro::container::{ContainerReader, MAX_DECOMPRESSED_BYTES};
use fieldcrypt::schema::plan::{is_encrypted_schema, DecryptPlan, EncryptPlan};
use fieldcrypt::transform::{Decryptor, Encryptor, TransformErrorKind};
use fieldcrypt_fuzz::{base_config, base_keys, deks};
use libfuzzer_sys::fuzz_target;

struct Transform {
    enc: Encryptor,
    dec: Decryptor,
}

/// The encryptor and decryptor for the file's schema, if it has one we accept.
fn transform(schema_text: &str) -> Option<Transform> {
    let schema = fieldcrypt::schema::parse_schema_json(schema_text).ok()?;
    if is_encrypted_schema(&schema) {
        return None;
    }
    let cfg = base_config();
    let plan = Arc::new(EncryptPlan::build(&schema, "fuzz", &cfg.plan_config()).ok()?);
    // Schemas may name key domains the fixture has no key for.
    let enc = Encryptor::new(plan.clone(), base_keys()).ok()?;
    let dplan = DecryptPlan::build_with_depth(&plan.output_json, "fuzz", cfg.schema.max_depth)
        .unwrap_or_else(|e| panic!("an output schema does not build a decrypt plan: {e}"));
    let dec = Decryptor::new(Arc::new(dplan), base_keys().clone());
    Some(Transform { enc, dec })
}

/// src/file/mod.rs `block_count_plausible`.
fn plausible(count: u64, data_len: usize, min: usize) -> bool {
    if min == 0 {
        count <= (MAX_ZERO_SIZE_ITEMS as u64).max(data_len as u64)
    } else {
        count.saturating_mul(min as u64) <= data_len as u64
    }
}

fn records(t: &Transform, count: u64, data: &[u8]) {
    let tree = &t.enc.plan().tree;
    if !plausible(count, data.len(), tree.min_size(tree.root)) {
        return;
    }
    let dek = &deks().dek;
    let mut cur = Cursor::new(data);
    let mut out = Vec::with_capacity(data.len() + data.len() / 2 + 64);
    let mut done = 0u64;
    for _ in 0..count {
        let start = cur.position();
        match t.enc.encrypt_next(&mut cur, Some(dek), &mut out) {
            Ok(_) => {
                validate(tree, &data[start..cur.position()])
                    .unwrap_or_else(|e| panic!("encrypt_next accepted a record validate rejects: {e}"));
                done += 1;
            }
            Err(e) if e.kind == TransformErrorKind::DekExhausted => return,
            Err(_) => break,
        }
    }
    // Decrypt what was encrypted, record by record, and compare with the input.
    let mut ec = Cursor::new(&out);
    let mut pc = Cursor::new(data);
    for _ in 0..done {
        let p_start = pc.position();
        fieldcrypt::avro::binary::walk(tree, tree.root, &mut pc, &mut fieldcrypt::avro::binary::Discard, 0)
            .expect("record validated a moment ago");
        let mut back = Vec::new();
        t.dec
            .decrypt_next(&mut ec, &deks().set, &mut back)
            .unwrap_or_else(|e| panic!("a fresh encryption does not decrypt: {e}"));
        let mut canon_in = Vec::new();
        let mut canon_back = Vec::new();
        let mut c1 = Cursor::new(&data[p_start..pc.position()]);
        fieldcrypt::avro::binary::walk(tree, tree.root, &mut c1, &mut canon_in, 0).unwrap();
        let mut c2 = Cursor::new(&back);
        fieldcrypt::avro::binary::walk(tree, tree.root, &mut c2, &mut canon_back, 0)
            .unwrap_or_else(|e| panic!("decrypted record does not validate: {e}"));
        assert_eq!(c2.remaining(), 0, "decrypted record has trailing bytes");
        assert!(canon_in == canon_back, "decrypted record differs from the input");
    }
    assert_eq!(ec.remaining(), 0, "encrypted block has trailing bytes");
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = ContainerReader::open(data) else {
        return;
    };
    let _ = reader.codec();
    let _ = reader.meta("avro.schema");
    let t = transform(&reader.schema);
    // Every block takes at least 18 input bytes (count, size, sync): this ends.
    loop {
        match reader.next_block() {
            Ok(Some(block)) => {
                assert!(block.data.len() <= MAX_DECOMPRESSED_BYTES, "block over the decompression limit");
                if let Some(t) = &t {
                    records(t, block.count, &block.data);
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
});
