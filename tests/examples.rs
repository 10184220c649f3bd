//! The runnable `examples/` as a user runs them: `encrypt_datum` on its own, and
//! `decrypt_kafka_record` against a real broker (tansu), reading records the engine
//! encrypted with their `fieldcrypt.dek` headers, and printing values equal to the
//! source records. `scripts/test.sh` builds the example binaries first; run alone,
//! the test builds the one it needs with `cargo build --example`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::broker::{create_topics, engine, keys_on_disk, repo, Broker};
use fieldcrypt::kafka::headers;
use fieldcrypt::schema::model::SchemaTree;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        // `cargo test --all-targets` compiles examples as test harnesses, which
        // are not placed in examples/; build the real binary with this profile.
        let release = profile_dir.file_name().is_some_and(|p| p == "release");
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "--example", name]);
        if release {
            build.arg("--release");
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example {name} failed");
    }
    assert!(
        path.exists(),
        "{} is not built: run cargo build --examples with this profile",
        path.display()
    );
    path
}

#[test]
fn encrypt_datum_round_trips_and_shows_ciphertext() {
    let out = Command::new(example("encrypt_datum")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("1 randomized, 1 deterministic, 1 blind index"),
        "{text}"
    );
    assert!(text.contains("decrypted: the original"), "{text}");
    // The sensitive values are not in what it prints of the encrypted datum.
    assert!(
        !text.contains("123-45-6789") && !text.contains("ada@example.com"),
        "{text}"
    );
    assert!(
        text.contains("\"GB\""),
        "untouched fields are shown as they were: {text}"
    );
}

#[test]
fn decrypt_kafka_record_reads_what_fieldcrypt_encrypted() {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    create_topics(&bs, &[("secure.customers", 1)]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = keys_on_disk(dir.path(), &bs, &["default"], &["email"]);
    let engine = engine(&cfg);
    let writer: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/customer.avsc")).unwrap(),
    )
    .unwrap();
    let avro = apache_avro::Schema::parse(&writer).unwrap();
    let tree = SchemaTree::compile(&writer).unwrap();
    let mut gen = fieldcrypt::sample::Generator::new(&tree, 11, 100);
    let enc = engine.encryptor(&writer, "customer.avsc").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .unwrap();
    let mut want = Vec::new();
    for _ in 0..3 {
        let mut datum = Vec::new();
        gen.next(&mut datum);
        let mut value = Vec::new();
        let done = rt
            .block_on(engine.encrypt(&enc, "customers", &datum, &mut value))
            .unwrap();
        let dek = engine.dek_header(done.dek.as_ref().unwrap()).unwrap();
        producer
            .send(
                BaseRecord::<(), _>::to("secure.customers")
                    .payload(&value)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: headers::DEK,
                        value: Some(&dek[..]),
                    })),
            )
            .unwrap();
        let v = apache_avro::reader::datum::GenericDatumReader::builder(&avro)
            .build()
            .unwrap()
            .read_value(&mut datum.as_slice())
            .unwrap();
        want.push(serde_json::Value::try_from(v).unwrap());
    }
    producer.flush(std::time::Duration::from_secs(10)).unwrap();

    let config = dir.path().join("decrypt.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nkek_file = {:?}\n[keyset]\nfile = {:?}\n[kafka]\nbootstrap_servers = \"{bs}\"\n",
            cfg.kms.kek_file().unwrap(),
            cfg.keyset.file
        ),
    )
    .unwrap();
    let schema = dir.path().join("customer.encrypted.avsc");
    std::fs::write(&schema, enc.plan().output_json.to_string()).unwrap();
    let out = Command::new(example("decrypt_kafka_record"))
        .args(["--config".as_ref(), config.as_os_str()])
        .args(["--topic", "secure.customers", "--count", "3"])
        .args(["--schema".as_ref(), schema.as_os_str()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l.split_once(": ").unwrap().1).unwrap())
        .collect();
    assert_eq!(got, want);
}
