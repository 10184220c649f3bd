//! Interop with independent implementations from PyPI: fastavro reads our encrypted
//! files with nothing but the output schema, and files written by fastavro go
//! through encrypt → decrypt back to equal records; pyca/cryptography checks the
//! golden vectors. Needs `python3 -m pip install fastavro cryptography` (.ci/run
//! installs them); a missing package fails the test, it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fieldcrypt");

fn root() -> PathBuf {
    fieldcrypt_harness::broker::repo()
}

fn python(args: &[&str], dir: &Path) -> String {
    let o = Command::new("python3")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("python3 must be installed for the interop tests");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "python3 {args:?} failed (install the test tools with `python3 -m pip install fastavro cryptography`):\n{out}{err}"
    );
    out
}

fn fc(dir: &Path, args: &[&str]) {
    fieldcrypt_harness::cli::Fc::new(BIN).ok(dir, args);
}

fn script(name: &str) -> String {
    root()
        .join("tests/interop")
        .join(name)
        .display()
        .to_string()
}

fn keys(d: &Path, det: &[&str], idx: &[&str]) {
    fc(d, &["keys", "init"]);
    for x in det {
        fc(
            d,
            &[
                "keys",
                "create",
                "--purpose",
                "deterministic",
                "--domain",
                x,
            ],
        );
    }
    for x in idx {
        fc(
            d,
            &["keys", "create", "--purpose", "blind-index", "--domain", x],
        );
    }
}

#[test]
fn golden_vectors_match_pyca_cryptography() {
    let out = python(&[&script("golden_vectors.py")], &root());
    assert!(out.contains("match"), "{out}");
}

#[test]
fn fastavro_reads_our_encrypted_file_with_the_output_schema() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keys(d, &["default"], &["email"]);
    let schema = root().join("schemas/customer.avsc").display().to_string();
    fc(
        d,
        &[
            "sample",
            "--schema",
            &schema,
            "--count",
            "2000",
            "--codec",
            "deflate",
            "plain.avro",
        ],
    );
    fc(d, &["plan", &schema, "--output-schema", "out.avsc"]);
    fc(d, &["encrypt-file", "plain.avro", "enc.avro"]);
    let out = python(
        &[
            &script("fastavro_check.py"),
            "check-encrypted",
            "plain.avro",
            "enc.avro",
            "out.avsc",
        ],
        d,
    );
    assert!(out.contains("2000 encrypted records"), "{out}");
}

#[test]
fn fastavro_written_files_round_trip_through_fieldcrypt() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keys(d, &["default"], &["email", "flags"]);
    // Tags through config: `notes` is tagged PII in the schema.
    std::fs::write(d.join("fc.toml"), "[tags.PII]\nmode = \"randomized\"\n").unwrap();
    for codec in ["null", "deflate"] {
        let (plain, enc, dec) = (
            format!("rich-{codec}.avro"),
            format!("enc-{codec}.avro"),
            format!("dec-{codec}.avro"),
        );
        python(&[&script("fastavro_check.py"), "write", &plain, codec], d);
        fc(d, &["encrypt-file", "--config", "fc.toml", &plain, &enc]);
        // fastavro reads the encrypted file with the schema embedded in it.
        let r = fieldcrypt::avro::container::ContainerReader::open(
            std::fs::File::open(d.join(&enc)).unwrap(),
        )
        .unwrap();
        std::fs::write(d.join("enc.avsc"), &r.schema).unwrap();
        // 12 encrypted fields (attributes, a tag, nested in arrays and unions) + 2 indexes.
        assert_eq!(
            r.schema.matches("\"fieldcrypt\":").count(),
            14,
            "{}",
            r.schema
        );
        assert_eq!(
            r.meta("app.origin"),
            Some(&b"fastavro"[..]),
            "user metadata kept"
        );
        let out = python(
            &[
                &script("fastavro_check.py"),
                "check-encrypted",
                &plain,
                &enc,
                "enc.avsc",
            ],
            d,
        );
        assert!(out.contains("500 encrypted records"), "{out}");
        fc(d, &["decrypt-file", "--config", "fc.toml", &enc, &dec]);
        let out = python(&[&script("fastavro_check.py"), "compare", &plain, &dec], d);
        assert!(out.contains("500 records equal"), "{out}");
    }
}
