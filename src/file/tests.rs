//! File mode on small container files written by apache-avro: the round trip,
//! no plaintext of a sensitive value in the encrypted file, and failures that
//! name the input and leave nothing behind (nor harm an existing output).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use apache_avro::types::Value;
use apache_avro::{Codec, Schema};
use serde_json::json;

use super::*;
use crate::config::Config;
use crate::keys::{Keyset, Kms, LocalKms, Purpose};

/// The last field is sensitive, so a file's last data byte is ciphertext.
fn patient_schema() -> serde_json::Value {
    json!({"type": "record", "name": "Patient", "namespace": "clinic", "fields": [
        {"name": "id", "type": "long"},
        {"name": "ward", "type": "string"},
        {"name": "name", "type": "string", "sensitive": true},
        {"name": "mrn", "type": "string", "sensitive": {"mode": "deterministic"}}]})
}

fn name(i: i64) -> String {
    format!("Name-{i:04}-Smith")
}

fn mrn(i: i64) -> String {
    format!("MRN{i:06}")
}

fn patient(i: i64) -> Value {
    Value::Record(vec![
        ("id".into(), Value::Long(i)),
        ("ward".into(), Value::String(format!("ward-{}", i % 3))),
        ("name".into(), Value::String(name(i))),
        ("mrn".into(), Value::String(mrn(i))),
    ])
}

/// A container of `n` patients in blocks of about 1 KiB; returns the values.
fn write_input(path: &Path, codec: Codec, n: i64) -> Vec<Value> {
    let schema = Schema::parse(&patient_schema()).unwrap();
    let mut w = apache_avro::Writer::builder()
        .schema(&schema)
        .writer(Vec::new())
        .codec(codec)
        .block_size(1024)
        .build()
        .unwrap();
    w.add_user_metadata("owner".into(), "clinic-ops").unwrap();
    let values: Vec<Value> = (0..n).map(patient).collect();
    for v in &values {
        w.append_value_ref(v).unwrap();
    }
    std::fs::write(path, w.into_inner().unwrap()).unwrap();
    values
}

/// Every record of a container file, and its user metadata.
fn read_back(path: &Path) -> (Vec<Value>, HashMap<String, Vec<u8>>) {
    let bytes = std::fs::read(path).unwrap();
    let r = apache_avro::Reader::new(&bytes[..]).unwrap();
    let meta = r.user_metadata().clone();
    (r.map(Result::unwrap).collect(), meta)
}

/// The schema JSON in a container file's header.
fn schema_of(path: &Path) -> serde_json::Value {
    let r = ContainerReader::open(File::open(path).unwrap()).unwrap();
    serde_json::from_str(&r.schema).unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// An engine over a local KEK with the `default` deterministic key, its keyset
/// in a directory of its own (so the work directory holds only what a test makes).
struct Fixture {
    engine: Engine,
    work: tempfile::TempDir,
    _keys: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let keys = tempfile::tempdir().unwrap();
        let kms: Arc<dyn Kms> = Arc::new(LocalKms::from_bytes(&[7; 32]).unwrap());
        let mut cfg = Config::default();
        cfg.keyset.file = keys.path().join("keyset.json");
        let mut ks = Keyset::default();
        ks.create(kms.as_ref(), Purpose::Deterministic, "default")
            .await
            .unwrap();
        ks.save(&cfg.keyset.file).unwrap();
        Fixture {
            engine: Engine::with_kms(cfg, kms).await.unwrap(),
            work: tempfile::tempdir().unwrap(),
            _keys: keys,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// The names in the work directory, sorted.
    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    async fn encrypt(&self, input: &str, output: &str) -> Result<FileReport, FileError> {
        encrypt_file(
            &self.engine,
            &self.path(input),
            &self.path(output),
            &mut |_, _| {},
        )
        .await
    }

    async fn decrypt(&self, input: &str, output: &str) -> Result<FileReport, FileError> {
        decrypt_file(
            &self.engine,
            &self.path(input),
            &self.path(output),
            &mut |_, _| {},
        )
        .await
    }

    /// The call must fail naming `input`, and leave the work directory as it was.
    fn failed_cleanly(
        &self,
        r: Result<FileReport, FileError>,
        input: &str,
        before: &[String],
    ) -> FileError {
        let e = match r {
            Err(e) => e,
            Ok(_) => panic!("{input} was transformed"),
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with(&self.path(input).display().to_string()),
            "{msg}"
        );
        assert_eq!(self.listing(), before, "files left behind by: {msg}");
        e
    }
}

#[tokio::test]
async fn a_container_round_trips_with_its_schema_codec_metadata_and_blocks() {
    let fx = Fixture::new().await;
    let values = write_input(&fx.path("in.avro"), Codec::Deflate(Default::default()), 200);
    let mut progress = (0, 0);
    let enc = encrypt_file(
        &fx.engine,
        &fx.path("in.avro"),
        &fx.path("enc.avro"),
        &mut |bytes, records| progress = (bytes, records),
    )
    .await
    .unwrap();
    assert_eq!(enc.records, 200);
    assert!(enc.blocks > 1, "{enc:?}");
    assert_eq!(
        (enc.fields.randomized, enc.fields.deterministic),
        (200, 200)
    );
    assert_eq!(enc.deks, 1);
    assert_eq!(progress.1, 200, "progress reported up to the last record");
    assert!(progress.0 > 0 && progress.0 <= enc.bytes_in, "{progress:?}");

    let (encrypted, meta) = read_back(&fx.path("enc.avro"));
    assert_eq!(encrypted.len(), 200);
    let Value::Record(f) = &encrypted[7] else {
        panic!("{:?}", encrypted[7])
    };
    assert_eq!(f[0], ("id".to_string(), Value::Long(7)));
    assert_eq!(f[1], ("ward".to_string(), Value::String("ward-1".into())));
    assert!(matches!(&f[2].1, Value::Bytes(_)) && matches!(&f[3].1, Value::Bytes(_)));
    assert_eq!(meta["owner"], b"clinic-ops");
    assert_eq!(meta[META_FORMAT], b"1");
    assert!(meta.contains_key(META_DEKS));
    let r = ContainerReader::open(File::open(fx.path("enc.avro")).unwrap()).unwrap();
    assert_eq!(r.codec_name, "deflate");

    let dec = fx.decrypt("enc.avro", "out.avro").await.unwrap();
    assert_eq!((dec.records, dec.blocks, dec.deks), (200, enc.blocks, 1));
    let (restored, meta) = read_back(&fx.path("out.avro"));
    assert_eq!(restored, values);
    assert_eq!(schema_of(&fx.path("out.avro")), patient_schema());
    assert_eq!(meta["owner"], b"clinic-ops");
    assert!(
        !meta.keys().any(|k| k.starts_with("fieldcrypt.")),
        "{meta:?}"
    );
}

#[tokio::test]
async fn the_encrypted_file_holds_no_plaintext_of_a_sensitive_value() {
    let fx = Fixture::new().await;
    write_input(&fx.path("in.avro"), Codec::Null, 50);
    let input = std::fs::read(fx.path("in.avro")).unwrap();
    // Uncompressed, so the search below could find them.
    assert!(contains(&input, &name(49)) && contains(&input, &mrn(49)));

    fx.encrypt("in.avro", "enc.avro").await.unwrap();
    let out = std::fs::read(fx.path("enc.avro")).unwrap();
    for i in 0..50 {
        assert!(!contains(&out, &name(i)), "{} in clear", name(i));
        assert!(!contains(&out, &mrn(i)), "{} in clear", mrn(i));
    }
    // Not the digits alone either, and plain fields stay plain.
    assert!(!contains(&out, "000049"));
    assert!(contains(&out, "ward-1"));
}

#[tokio::test]
async fn an_input_that_is_not_a_container_fails_naming_it_and_leaves_no_output() {
    let fx = Fixture::new().await;
    std::fs::write(fx.path("junk.avro"), b"id,name\n1,Ann\n").unwrap();
    let before = fx.listing();
    let r = fx.encrypt("junk.avro", "out.avro").await;
    let e = fx.failed_cleanly(r, "junk.avro", &before);
    assert!(
        matches!(
            e,
            FileError::Container {
                source: ContainerError::NotAvro,
                ..
            }
        ),
        "{e}"
    );
    let r = fx.decrypt("junk.avro", "out.avro").await;
    fx.failed_cleanly(r, "junk.avro", &before);

    // A missing input is named too.
    let r = fx.encrypt("missing.avro", "out.avro").await;
    let e = fx.failed_cleanly(r, "missing.avro", &before);
    assert!(matches!(e, FileError::Io { .. }), "{e}");
}

#[tokio::test]
async fn a_file_cut_short_fails_naming_it_and_leaves_no_output() {
    let fx = Fixture::new().await;
    write_input(&fx.path("in.avro"), Codec::Null, 100);
    let whole = std::fs::read(fx.path("in.avro")).unwrap();
    std::fs::write(fx.path("cut.avro"), &whole[..whole.len() - 40]).unwrap();
    let before = fx.listing();
    let r = fx.encrypt("cut.avro", "out.avro").await;
    let e = fx.failed_cleanly(r, "cut.avro", &before);
    assert!(matches!(e, FileError::Container { .. }), "{e}");
}

/// A container whose first block is good and whose second holds a record cut
/// short: the failure comes after output has been written.
fn write_bad_second_block(path: &Path) {
    let schema = Schema::parse(&patient_schema()).unwrap();
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap();
    let mut good = Vec::new();
    for i in 0..5 {
        good.extend(writer.write_value_to_vec(patient(i)).unwrap());
    }
    let mut bad = writer.write_value_to_vec(patient(5)).unwrap();
    bad.truncate(bad.len() - 3);
    let sync = [9u8; 16];
    let mut file = Vec::new();
    let meta = [
        (
            "avro.schema".to_string(),
            patient_schema().to_string().into_bytes(),
        ),
        ("avro.codec".to_string(), b"null".to_vec()),
    ];
    write_header(&mut file, &meta, &sync).unwrap();
    let mut blocks = BlockWriter::new(file, Codec::Null, sync);
    blocks.write_block(5, good).unwrap();
    blocks.write_block(1, bad).unwrap();
    std::fs::write(path, blocks.into_inner()).unwrap();
}

#[tokio::test]
async fn a_bad_record_fails_naming_the_file_record_and_block_and_spares_an_existing_output() {
    let fx = Fixture::new().await;
    write_bad_second_block(&fx.path("bad.avro"));
    std::fs::write(fx.path("out.avro"), b"yesterday's output").unwrap();
    let before = fx.listing();
    let r = fx.encrypt("bad.avro", "out.avro").await;
    let e = fx.failed_cleanly(r, "bad.avro", &before);
    assert!(
        matches!(
            e,
            FileError::Record {
                index: 5,
                block: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("record 5 (block 1)"), "{e}");
    assert_eq!(
        std::fs::read(fx.path("out.avro")).unwrap(),
        b"yesterday's output"
    );
}

#[tokio::test]
async fn a_tampered_ciphertext_fails_decryption_and_spares_an_existing_output() {
    let fx = Fixture::new().await;
    write_input(&fx.path("in.avro"), Codec::Null, 30);
    fx.encrypt("in.avro", "enc.avro").await.unwrap();
    let mut bytes = std::fs::read(fx.path("enc.avro")).unwrap();
    // The byte before the final sync marker ends the last record's `mrn` ciphertext.
    let at = bytes.len() - 17;
    bytes[at] ^= 1;
    std::fs::write(fx.path("tampered.avro"), &bytes).unwrap();
    std::fs::write(fx.path("out.avro"), b"keep").unwrap();
    let before = fx.listing();

    let r = fx.decrypt("tampered.avro", "out.avro").await;
    let e = fx.failed_cleanly(r, "tampered.avro", &before);
    let FileError::Record { index, source, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(*index, 29);
    assert_eq!(source.code(), crate::codes::Code::AuthenticationFailed);
    assert_eq!(source.field_path(), "mrn");
    assert_eq!(std::fs::read(fx.path("out.avro")).unwrap(), b"keep");

    // A plain file given to decrypt, and an encrypted one given to encrypt.
    let r = fx.decrypt("in.avro", "out.avro").await;
    let e = fx.failed_cleanly(r, "in.avro", &before);
    assert!(e.to_string().contains("not encrypted by fieldcrypt"), "{e}");
    let r = fx.encrypt("enc.avro", "out.avro").await;
    let e = fx.failed_cleanly(r, "enc.avro", &before);
    assert!(e.to_string().contains("already encrypted"), "{e}");
    assert_eq!(std::fs::read(fx.path("out.avro")).unwrap(), b"keep");
}

#[tokio::test]
async fn the_input_is_never_its_own_output() {
    let fx = Fixture::new().await;
    write_input(&fx.path("in.avro"), Codec::Null, 3);
    let original = std::fs::read(fx.path("in.avro")).unwrap();
    let before = fx.listing();
    let r = fx.encrypt("in.avro", "in.avro").await;
    let e = fx.failed_cleanly(r, "in.avro", &before);
    assert!(e.to_string().contains("same file"), "{e}");
    assert_eq!(std::fs::read(fx.path("in.avro")).unwrap(), original);
}

#[tokio::test]
async fn a_successful_run_replaces_an_existing_output_whole() {
    let fx = Fixture::new().await;
    let values = write_input(&fx.path("in.avro"), Codec::Null, 10);
    std::fs::write(fx.path("out.avro"), vec![b'x'; 1 << 16]).unwrap();
    fx.encrypt("in.avro", "enc.avro").await.unwrap();
    fx.decrypt("enc.avro", "out.avro").await.unwrap();
    assert_eq!(read_back(&fx.path("out.avro")).0, values);
    assert_eq!(fx.listing(), ["enc.avro", "in.avro", "out.avro"]);
}

#[tokio::test]
async fn a_cancelled_command_stops_and_leaves_nothing() {
    let fx = Fixture::new().await;
    write_input(&fx.path("in.avro"), Codec::Null, 50);
    fx.encrypt("in.avro", "enc.avro").await.unwrap();
    let before = fx.listing();
    let cancel = tokio_util::sync::CancellationToken::new();
    cancel.cancel();
    let r = encrypt_file_with(
        &fx.engine,
        &fx.path("in.avro"),
        &fx.path("x.avro"),
        EncryptOptions {
            cancel: cancel.clone(),
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .await;
    assert!(matches!(r, Err(FileError::Interrupted { .. })), "{r:?}");
    let r = decrypt_file_with(
        &fx.engine,
        &fx.path("enc.avro"),
        &fx.path("y.avro"),
        &cancel,
        &mut |_, _| {},
    )
    .await;
    assert!(matches!(r, Err(FileError::Interrupted { .. })), "{r:?}");
    assert_eq!(fx.listing(), before, "a cancelled command left a file");
    // A fresh token: the same process runs the next command (nothing global is
    // left set, as the static flag this replaced was).
    fx.decrypt("enc.avro", "y.avro").await.unwrap();
}
