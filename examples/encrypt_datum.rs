//! Encrypting one Avro datum with the library, as `fieldcrypt run` and
//! `encrypt-file` do, and decrypting it again.
//!
//! A KEK file and a keyset (the blind-index key of the `email` domain and the
//! deterministic key) are created in a temporary directory; the schema marks the
//! fields to encrypt; [`Engine::encrypt`] picks the data key, encrypts, and reports
//! the DEK whose wrapped form must travel with the datum (in Kafka: the
//! `fieldcrypt.dek` header).
//!
//! Run it with `cargo run --example encrypt_datum`.

use std::sync::Arc;

use apache_avro::types::Value;
use fieldcrypt::config::{Config, KmsConfig};
use fieldcrypt::engine::Engine;
use fieldcrypt::keys::{Keyset, Kms, LocalKms, Purpose};
use fieldcrypt::transform::decrypt::DekSet;
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keys: `fieldcrypt keys init` and `keys create` do the same from the CLI.
    let dir = tempfile::tempdir()?;
    let kek = dir.path().join("kek.key");
    LocalKms::init(&kek)?;
    let kms: Arc<dyn Kms> = Arc::new(LocalKms::open(&kek)?);
    let mut keyset = Keyset::default();
    keyset
        .create(kms.as_ref(), Purpose::Deterministic, "default")
        .await?;
    keyset
        .create(kms.as_ref(), Purpose::BlindIndex, "email")
        .await?;
    let mut config = Config {
        kms: KmsConfig::local(&kek),
        ..Config::default()
    };
    config.keyset.file = dir.path().join("keyset.json");
    keyset.save(&config.keyset.file)?;
    let engine = Engine::start(config).await?;

    // The writer schema marks what to encrypt.
    let schema = json!({
        "type": "record", "name": "Customer", "namespace": "com.example",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "email", "type": "string",
             "sensitive": {"mode": "deterministic", "blind_index": "email"}},
            {"name": "ssn", "type": "string", "sensitive": true},
            {"name": "country", "type": "string"}
        ]
    });
    let avro = apache_avro::Schema::parse(&schema)?;
    let record = Value::Record(vec![
        ("id".into(), Value::Long(42)),
        ("email".into(), Value::String("ada@example.com".into())),
        ("ssn".into(), Value::String("123-45-6789".into())),
        ("country".into(), Value::String("GB".into())),
    ]);
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&avro)
        .build()?
        .write_value_to_vec(record)?;

    // Encrypt: the DEK scope names whose data keys these are (a route, a tenant).
    let encryptor = engine.encryptor(&schema, "Customer")?;
    let mut encrypted = Vec::new();
    let done = engine
        .encrypt(&encryptor, "example", &datum, &mut encrypted)
        .await?;
    let output_schema = &encryptor.plan().output_json;
    let out_avro = apache_avro::Schema::parse(output_schema)?;
    let c = &done.counts;
    println!(
        "encrypted datum ({} randomized, {} deterministic, {} blind index):",
        c.randomized, c.deterministic, c.indexes
    );
    if let Value::Record(fields) =
        apache_avro::reader::datum::GenericDatumReader::builder(&out_avro)
            .build()?
            .read_value(&mut encrypted.as_slice())?
    {
        for (name, value) in fields {
            println!("  {name:<16} {}", show(&value));
        }
    }

    // Decrypt: the decryptor is built from the encrypted schema alone; randomized
    // fields need their DEK, unwrapped through the KMS (once, then cached).
    let decryptor = engine.decryptor(output_schema, "Customer (encrypted)")?;
    let mut deks = DekSet::new();
    if let Some(dek) = &done.dek {
        let wrapped = dek.wrapped().clone();
        deks.insert(wrapped.id, engine.unwrap_dek(&wrapped).await?);
    }
    let mut decrypted = Vec::new();
    decryptor.decrypt(&encrypted, &deks, &mut decrypted)?;
    assert_eq!(decrypted, datum, "decryption restores the exact bytes");
    println!("decrypted: the original {} bytes, exactly", datum.len());
    Ok(())
}

fn show(v: &Value) -> String {
    match v {
        Value::Bytes(b) => format!("bytes[{}] {}", b.len(), hex(&b[..b.len().min(12)])),
        Value::String(s) => format!("{s:?}"),
        other => format!("{other:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<String>() + "…"
}
