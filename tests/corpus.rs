//! Real-world schemas nobody here wrote (tests/corpus/, sources and licences in
//! MANIFEST.md) through the `fieldcrypt` binary in file mode: sample records,
//! encrypt with rules on the fields the manifest names (randomized, deterministic,
//! randomized), decrypt, and check with fastavro (tests/interop/corpus_check.py)
//! that the encrypted file reads with its embedded schema, holds no plaintext of
//! the encrypted fields, and that the round trip restores data and schema exactly.
//! Schemas with Confluent references get the referenced files through
//! `schema.reference_files`.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fieldcrypt");

fn root() -> PathBuf {
    fieldcrypt_harness::broker::repo()
}

fn run(dir: &Path, args: &[&str]) -> Result<String, String> {
    let o = Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&o.stderr).into_owned();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!("fieldcrypt {args:?}: {text}"))
    }
}

/// The top-level record's full name, per Avro's naming rules.
fn root_fullname(schema: &serde_json::Value) -> String {
    let name = schema["name"].as_str().unwrap();
    match schema["namespace"].as_str() {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

fn one(entry: &serde_json::Value, dir: &Path) -> Result<String, String> {
    let corpus = root().join("tests/corpus");
    let file = entry["file"].as_str().unwrap();
    let schema_path = corpus.join(file);
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).unwrap()).unwrap();
    let record = root_fullname(&schema);
    let mut toml = String::from("[schema]\n");
    let refs: Vec<String> = entry["references"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| format!("{:?}", corpus.join(r["file"].as_str().unwrap())))
                .collect()
        })
        .unwrap_or_default();
    toml += &format!("reference_files = [{}]\n", refs.join(", "));
    for (i, path) in entry["sensitive"].as_array().unwrap().iter().enumerate() {
        let mode = if i == 1 {
            "deterministic"
        } else {
            "randomized"
        };
        toml += &format!(
            "\n[[rules]]\nrecord = {record:?}\nfields = [{:?}]\nmode = {mode:?}\n",
            path.as_str().unwrap()
        );
    }
    std::fs::write(dir.join("fc.toml"), toml).unwrap();
    run(dir, &["keys", "init", "--config", "fc.toml"])?;
    run(
        dir,
        &[
            "keys",
            "create",
            "--config",
            "fc.toml",
            "--purpose",
            "deterministic",
            "--domain",
            "default",
        ],
    )?;
    let s = schema_path.display().to_string();
    run(
        dir,
        &[
            "sample",
            "--config",
            "fc.toml",
            "--schema",
            &s,
            "--count",
            "40",
            "--codec",
            "null",
            "plain.avro",
        ],
    )?;
    run(
        dir,
        &[
            "encrypt-file",
            "--config",
            "fc.toml",
            "plain.avro",
            "enc.avro",
        ],
    )?;
    run(
        dir,
        &[
            "decrypt-file",
            "--config",
            "fc.toml",
            "enc.avro",
            "dec.avro",
        ],
    )?;
    let o = Command::new("python3")
        .arg(root().join("tests/interop/corpus_check.py"))
        .args(["plain.avro", "enc.avro", "dec.avro"])
        .current_dir(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

#[test]
fn public_schemas_round_trip_through_encrypt_and_decrypt_files() {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/corpus/manifest.json")).unwrap(),
    )
    .unwrap();
    let entries = manifest.as_array().unwrap();
    assert!(entries.len() >= 30, "the corpus keeps at least 30 schemas");
    let mut failures = Vec::new();
    for e in entries {
        let dir = tempfile::tempdir().unwrap();
        let file = e["file"].as_str().unwrap();
        match one(e, dir.path()) {
            Ok(summary) => println!("{file}: {summary}"),
            Err(msg) => failures.push(format!("{file}: {msg}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} schemas failed:\n{}",
        failures.len(),
        entries.len(),
        failures.join("\n")
    );
}
