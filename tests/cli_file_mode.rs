//! The `fieldcrypt` binary end to end on Avro files: keys, plan, encrypt-file and
//! decrypt-file, and every bad-input case the issue names — each must exit non-zero
//! with one message naming what and where, leave no output file, and never print a
//! sensitive value.

use std::path::{Path, PathBuf};
use std::process::Command;

use fieldcrypt_harness::cli::Fc;

use fieldcrypt::avro::binary::write_bytes;
use fieldcrypt::avro::binary::write_long;
use fieldcrypt::avro::container::{write_header, BlockWriter};

const BIN: &str = env!("CARGO_BIN_EXE_fieldcrypt");

fn root() -> PathBuf {
    fieldcrypt_harness::broker::repo()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    Fc::new(BIN).ok(dir, args)
}

/// Runs a command that must fail with one clear error line; returns its stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let err = Fc::new(BIN).fails(dir, args);
    assert!(err.starts_with("error: "), "one clear error line: {err}");
    err
}

/// A working directory with a KEK and the keys customer.avsc needs.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["keys", "init"]);
    ok(
        d,
        &[
            "keys",
            "create",
            "--purpose",
            "deterministic",
            "--domain",
            "default",
        ],
    );
    ok(
        d,
        &[
            "keys",
            "create",
            "--purpose",
            "blind-index",
            "--domain",
            "email",
        ],
    );
    std::fs::copy(
        root().join("schemas/customer.avsc"),
        d.join("customer.avsc"),
    )
    .unwrap();
    dir
}

/// `count` records of customer.avsc into `file`, compressed with `codec`.
fn sample(dir: &Path, count: usize, codec: &str, file: &str) {
    let count = count.to_string();
    ok(
        dir,
        &[
            "sample",
            "--schema",
            "customer.avsc",
            "--count",
            &count,
            "--codec",
            codec,
            file,
        ],
    );
}

fn cat(dir: &Path, file: &str) -> Vec<serde_json::Value> {
    ok(dir, &["cat", file])
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const SENSITIVE: [&str; 4] = ["email", "ssn", "full_name", "phone"];

#[test]
fn encrypt_and_decrypt_round_trip_and_leave_no_plaintext() {
    let dir = setup();
    let d = dir.path();
    let listing = ok(d, &["keys", "list"]);
    assert!(
        listing.contains("deterministic")
            && listing.contains("blind-index")
            && listing.contains("active")
    );
    let plan = ok(d, &["plan", "customer.avsc", "--output-schema", "out.avsc"]);
    assert!(
        plan.contains("address.street") && plan.contains("email_bidx (email)"),
        "{plan}"
    );
    sample(d, 5000, "null", "in.avro");
    ok(d, &["encrypt-file", "in.avro", "enc.avro"]);
    ok(d, &["decrypt-file", "enc.avro", "dec.avro"]);

    let plain = cat(d, "in.avro");
    let enc = cat(d, "enc.avro");
    let dec = cat(d, "dec.avro");
    assert_eq!(plain.len(), 5000);
    assert_eq!(plain, dec, "decrypt restores every record");

    // No sensitive value survives anywhere in the encrypted file's bytes.
    let bytes = std::fs::read(d.join("enc.avro")).unwrap();
    // Lossy UTF-8 keeps every ASCII run intact, so a leaked value would still match.
    let hay = String::from_utf8_lossy(&bytes);
    let mut checked = 0;
    for (p, e) in plain.iter().zip(&enc) {
        for f in SENSITIVE {
            if let Some(s) = p[f].as_str() {
                assert!(e[f].as_str().unwrap().starts_with("b64:"), "{f} encrypted");
                assert!(!hay.contains(s), "{f} plaintext leaked");
                checked += 1;
            } else {
                assert!(e[f].is_null(), "null stays null");
            }
        }
        let street = p["address"]["street"].as_str().unwrap();
        assert!(!hay.contains(street), "street plaintext leaked");
        assert_eq!(
            p["account_id"], e["account_id"],
            "non-sensitive fields untouched"
        );
        assert_eq!(
            e["email_bidx"].as_str().unwrap().len(),
            4 + 24,
            "16-byte index"
        );
    }
    assert!(checked > 15_000);

    // Deterministic ciphertexts and blind indexes repeat exactly when the e-mail does.
    let mut by_email = std::collections::HashMap::new();
    for (p, e) in plain.iter().zip(&enc) {
        let prev = by_email.insert(
            p["email"].as_str().unwrap().to_string(),
            (e["email"].clone(), e["email_bidx"].clone()),
        );
        if let Some(prev) = prev {
            assert_eq!(prev, (e["email"].clone(), e["email_bidx"].clone()));
        }
    }
    assert!(by_email.len() < 5000, "the sample repeats people");
    // The derived schema written by `plan` is the one in the file.
    let out_schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out.avsc")).unwrap()).unwrap();
    let mut r = fieldcrypt::avro::container::ContainerReader::open(
        std::fs::File::open(d.join("enc.avro")).unwrap(),
    )
    .unwrap();
    let file_schema: serde_json::Value = serde_json::from_str(&r.schema).unwrap();
    assert_eq!(out_schema, file_schema);
    assert!(r.meta("fieldcrypt.deks").is_some());
    assert!(r.next_block().unwrap().is_some());
}

#[test]
fn deks_rotate_by_usage_and_all_travel_in_the_file() {
    let dir = setup();
    let d = dir.path();
    std::fs::write(d.join("small.toml"), "[dek]\nmax_uses = 50\n").unwrap();
    sample(d, 300, "snappy", "in.avro");
    let out = ok(
        d,
        &[
            "encrypt-file",
            "--config",
            "small.toml",
            "in.avro",
            "enc.avro",
        ],
    );
    let r = fieldcrypt::avro::container::ContainerReader::open(
        std::fs::File::open(d.join("enc.avro")).unwrap(),
    )
    .unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(r.meta("fieldcrypt.deks").unwrap()).unwrap();
    let n = meta["deks"].as_array().unwrap().len();
    // About 4 randomized fields per record, 50 uses per key.
    assert!(n >= 300 * 3 / 50, "{n} keys for 300 records: {out}");
    assert_eq!(r.codec_name, "snappy", "codec kept");
    ok(d, &["decrypt-file", "enc.avro", "dec.avro"]);
    assert_eq!(cat(d, "in.avro"), cat(d, "dec.avro"));
}

#[test]
fn missing_or_wrong_keys_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(
        root().join("schemas/customer.avsc"),
        d.join("customer.avsc"),
    )
    .unwrap();
    ok(
        d,
        &[
            "sample",
            "--schema",
            "customer.avsc",
            "--count",
            "10",
            "in.avro",
        ],
    );

    let e = fails(d, &["encrypt-file", "in.avro", "enc.avro"]);
    assert!(
        e.contains("KEK file") && e.contains("fieldcrypt keys init"),
        "{e}"
    );
    assert!(!d.join("enc.avro").exists());

    ok(d, &["keys", "init"]);
    let e = fails(d, &["keys", "init"]);
    assert!(e.contains("refusing to overwrite"), "{e}");

    let e = fails(d, &["encrypt-file", "in.avro", "enc.avro"]);
    assert!(
        e.contains("--purpose deterministic --domain default"),
        "{e}"
    );
    ok(
        d,
        &[
            "keys",
            "create",
            "--purpose",
            "deterministic",
            "--domain",
            "default",
        ],
    );
    let e = fails(d, &["encrypt-file", "in.avro", "enc.avro"]);
    assert!(e.contains("--purpose blind-index --domain email"), "{e}");
    ok(
        d,
        &[
            "keys",
            "create",
            "--purpose",
            "blind-index",
            "--domain",
            "email",
        ],
    );
    ok(d, &["encrypt-file", "in.avro", "enc.avro"]);

    // Another KEK cannot unwrap the keyset or the file's DEKs.
    std::fs::create_dir(d.join("other")).unwrap();
    std::fs::write(
        d.join("other.toml"),
        "[kms]\nkek_file = \"other/kek.key\"\n",
    )
    .unwrap();
    ok(d, &["keys", "init", "--config", "other.toml"]);
    let e = fails(
        d,
        &[
            "decrypt-file",
            "--config",
            "other.toml",
            "enc.avro",
            "dec.avro",
        ],
    );
    // The message names the KEK the keyset needs and the one the config has.
    assert!(
        e.contains("wrapped by KEK local:")
            && e.contains("other/kek.key is KEK local:")
            && e.contains("`fieldcrypt keys list --config other.toml`"),
        "{e}"
    );
    assert!(!d.join("dec.avro").exists());

    let e = fails(
        d,
        &["encrypt-file", "--config", "nope.toml", "in.avro", "x.avro"],
    );
    assert!(e.contains("nope.toml"), "{e}");
    std::fs::write(d.join("bad.toml"), "[dek]\nmax_use = 3\n").unwrap();
    let e = fails(
        d,
        &["encrypt-file", "--config", "bad.toml", "in.avro", "x.avro"],
    );
    assert!(e.contains("max_use") && e.contains("bad.toml"), "{e}");
}

#[test]
fn damaged_inputs_name_file_record_and_field_and_write_nothing() {
    let dir = setup();
    let d = dir.path();

    std::fs::write(d.join("notes.txt"), "hello, not avro").unwrap();
    let e = fails(d, &["encrypt-file", "notes.txt", "out.avro"]);
    assert!(
        e.contains("notes.txt") && e.contains("not an Avro object container file"),
        "{e}"
    );

    sample(d, 20, "null", "in.avro");
    let full = std::fs::read(d.join("in.avro")).unwrap();
    std::fs::write(d.join("cut.avro"), &full[..full.len() - 30]).unwrap();
    let e = fails(d, &["encrypt-file", "cut.avro", "out.avro"]);
    assert!(
        e.contains("cut.avro") && e.contains("block 0 is truncated"),
        "{e}"
    );
    assert!(!d.join("out.avro").exists());
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files are removed");

    // A record that does not match its schema: the second record's sensitive string
    // claims 50 bytes but the block ends after 3.
    let schema = serde_json::json!({"type": "record", "name": "R", "namespace": "t", "fields": [
        {"name": "n", "type": "long"},
        {"name": "secret", "type": "string", "sensitive": true}]});
    let mut data = Vec::new();
    write_long(&mut data, 1);
    write_bytes(&mut data, b"TOP-SECRET-VALUE");
    write_long(&mut data, 2);
    write_long(&mut data, 50);
    data.extend_from_slice(b"abc");
    let mut f = Vec::new();
    let meta = vec![("avro.schema".to_string(), schema.to_string().into_bytes())];
    write_header(&mut f, &meta, &[9; 16]).unwrap();
    let mut bw = BlockWriter::new(f, apache_avro::Codec::Null, [9; 16]);
    bw.write_block(2, data).unwrap();
    std::fs::write(d.join("bad.avro"), bw.into_inner()).unwrap();
    let e = fails(d, &["encrypt-file", "bad.avro", "out.avro"]);
    assert!(
        e.contains("bad.avro") && e.contains("record 1 (block 0)") && e.contains("field secret"),
        "{e}"
    );
    assert!(
        !e.contains("TOP-SECRET") && !e.contains("abc"),
        "no values in errors: {e}"
    );
    assert!(!d.join("out.avro").exists());
}

#[test]
fn tampered_ciphertext_is_rejected_with_its_location() {
    let dir = setup();
    let d = dir.path();
    sample(d, 50, "null", "in.avro");
    ok(d, &["encrypt-file", "in.avro", "enc.avro"]);
    let mut bytes = std::fs::read(d.join("enc.avro")).unwrap();
    let r = fieldcrypt::avro::container::ContainerReader::open(bytes.as_slice()).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(r.meta("fieldcrypt.deks").unwrap()).unwrap();
    let dek = hex::decode(meta["deks"][0]["id"].as_str().unwrap()).unwrap();
    let mut header = vec![1u8, 1];
    header.extend_from_slice(&dek);
    // The first GCM field ciphertext in the file is record 0's ssn.
    let at = bytes
        .windows(header.len())
        .position(|w| w == header.as_slice())
        .unwrap();
    bytes[at + 40] ^= 0x01;
    std::fs::write(d.join("tampered.avro"), &bytes).unwrap();
    let e = fails(d, &["decrypt-file", "tampered.avro", "dec.avro"]);
    assert!(
        e.contains("tampered.avro")
            && e.contains("record 0")
            && e.contains("field ssn")
            && e.contains("failed authentication"),
        "{e}"
    );
    assert!(!d.join("dec.avro").exists());

    let e = fails(d, &["decrypt-file", "in.avro", "dec.avro"]);
    assert!(e.contains("not encrypted by fieldcrypt"), "{e}");
    let e = fails(d, &["encrypt-file", "enc.avro", "again.avro"]);
    assert!(e.contains("already encrypted"), "{e}");
}

#[test]
fn plan_rejects_impossible_policies_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write =
        |name: &str, s: serde_json::Value| std::fs::write(d.join(name), s.to_string()).unwrap();
    write(
        "idx.avsc",
        serde_json::json!({"type": "record", "name": "R", "fields": [
        {"name": "tags", "type": {"type": "array", "items": "string"}, "sensitive": {"blind_index": "t"}}]}),
    );
    let e = fails(d, &["plan", "idx.avsc"]);
    assert!(
        e.contains("R.tags") && e.contains("blind index needs a primitive"),
        "{e}"
    );
    write(
        "mode.avsc",
        serde_json::json!({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "string", "sensitive": {"mode": "reversible"}}]}),
    );
    let e = fails(d, &["plan", "mode.avsc"]);
    assert!(e.contains("R.a") && e.contains("reversible"), "{e}");
    std::fs::write(
        d.join("rules.toml"),
        "[[rules]]\nrecord = \"R\"\nfields = [\"b\"]\n",
    )
    .unwrap();
    write(
        "ok.avsc",
        serde_json::json!({"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}),
    );
    let e = fails(d, &["plan", "--config", "rules.toml", "ok.avsc"]);
    assert!(e.contains("rule #1") && e.contains("no field \"b\""), "{e}");
    let out = ok(d, &["plan", "ok.avsc"]);
    assert!(out.contains("no sensitive fields"), "{out}");
}

/// Schema files as people write them: a UTF-8 BOM is fine; a comment is named as
/// the problem; a type with no values is refused, not a panic; and no error says
/// the same thing twice.
#[test]
fn schema_files_with_bom_comments_and_empty_unions() {
    let dir = setup();
    let d = dir.path();
    let mut bom = vec![0xef, 0xbb, 0xbf];
    bom.extend_from_slice(
        br#"{"type":"record","name":"R","fields":[{"name":"a","type":"string","sensitive":true}]}"#,
    );
    std::fs::write(d.join("bom.avsc"), bom).unwrap();
    let out = ok(d, &["plan", "bom.avsc"]);
    assert!(out.contains("randomized"), "{out}");

    std::fs::write(
        d.join("comment.avsc"),
        "{\"type\": \"record\", // the customer\n \"name\": \"R\", \"fields\": []}",
    )
    .unwrap();
    let err = fails(d, &["plan", "comment.avsc"]);
    assert!(
        err.contains("comment.avsc") && err.contains("comments"),
        "{err}"
    );

    std::fs::write(
        d.join("empty.avsc"),
        r#"{"type":"record","name":"R","fields":[{"name":"u","type":[]}]}"#,
    )
    .unwrap();
    let err = fails(d, &["sample", "--schema", "empty.avsc", "x.avro"]);
    assert!(err.contains("empty union") && err.contains(" u "), "{err}");
    assert!(!d.join("x.avro").exists());

    // A damaged record: the message names file, record and field once.
    sample(d, 20, "null", "in.avro");
    let mut bytes = std::fs::read(d.join("in.avro")).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 40);
    bytes.extend_from_slice(&[0xff; 24]);
    bytes.extend_from_slice(&std::fs::read(d.join("in.avro")).unwrap()[n - 16..]);
    std::fs::write(d.join("bad.avro"), &bytes).unwrap();
    let err = fails(d, &["encrypt-file", "bad.avro", "out.avro"]);
    let line = err.lines().next().unwrap();
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(p) || p.len() < 12,
            "\"{p}\" repeated in: {line}"
        );
    }
}

/// The KEK file is the root of every key: `keys init` makes its directory 0700
/// and the file 0600 whatever the umask, and a KEK file that group or others can
/// read is refused with the command that fixes it.
#[test]
fn kek_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = Command::new("sh")
        .current_dir(d)
        .args(["-c", &format!("umask 000 && {BIN} keys init")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(".fieldcrypt"), 0o700);
    assert_eq!(mode(".fieldcrypt/kek.key"), 0o600);

    std::fs::set_permissions(
        d.join(".fieldcrypt/kek.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let err = fails(
        d,
        &[
            "keys",
            "create",
            "--purpose",
            "deterministic",
            "--domain",
            "default",
        ],
    );
    assert!(
        err.contains(".fieldcrypt/kek.key") && err.contains("chmod 600") && err.contains("640"),
        "{err}"
    );
    // A symlink to a private KEK (how Kubernetes mounts secrets) is fine.
    std::fs::set_permissions(
        d.join(".fieldcrypt/kek.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::rename(d.join(".fieldcrypt/kek.key"), d.join("real.key")).unwrap();
    std::os::unix::fs::symlink(d.join("real.key"), d.join(".fieldcrypt/kek.key")).unwrap();
    ok(
        d,
        &[
            "keys",
            "create",
            "--purpose",
            "deterministic",
            "--domain",
            "default",
        ],
    );
    // keys init never writes through a symlink.
    std::fs::remove_file(d.join(".fieldcrypt/kek.key")).unwrap();
    std::os::unix::fs::symlink(d.join("elsewhere.key"), d.join(".fieldcrypt/kek.key")).unwrap();
    let err = fails(d, &["keys", "init"]);
    assert!(err.contains("already exists"), "{err}");
    assert!(!d.join("elsewhere.key").exists());
}

/// An interrupted decrypt-file leaves no plaintext behind: SIGTERM and SIGINT stop
/// it at the next block with nothing written, and even SIGKILL leaves nothing,
/// because the output is an unnamed (O_TMPFILE) file until it is complete.
#[test]
fn interrupted_decrypt_leaves_nothing_readable() {
    let dir = setup();
    let d = dir.path();
    ok(
        d,
        &[
            "sample",
            "--schema",
            "customer.avsc",
            "--count",
            "150000",
            "in.avro",
        ],
    );
    ok(d, &["encrypt-file", "in.avro", "enc.avro"]);
    let before: std::collections::BTreeSet<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for (signal, name) in [("-TERM", "TERM"), ("-INT", "INT"), ("-KILL", "KILL")] {
        let mut interrupted = false;
        for delay_ms in [250u64, 120, 60, 400, 30] {
            let child = Command::new(BIN)
                .current_dir(d)
                .args(["decrypt-file", "enc.avro", "dec.avro"])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let after: std::collections::BTreeSet<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            if out.status.success() {
                // Finished before the signal: the output is whole; try sooner.
                std::fs::remove_file(d.join("dec.avro")).unwrap();
                continue;
            }
            assert_eq!(
                after, before,
                "SIG{name} after {delay_ms} ms left files behind"
            );
            if name != "KILL" {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("interrupted"), "{err}");
            }
            interrupted = true;
            break;
        }
        assert!(interrupted, "SIG{name} never arrived mid-run");
    }
}

#[test]
fn ciphertext_versions_roll_out_readers_first() {
    let dir = setup();
    let d = dir.path();
    sample(d, 500, "null", "in.avro");
    std::fs::write(d.join("v2.toml"), "[crypto]\nwrite_version = 2\n").unwrap();
    std::fs::write(d.join("v1only.toml"), "[crypto]\nread_versions = [1]\n").unwrap();
    let plain = cat(d, "in.avro");

    // A writer configured for version 1 (the default) and a reader that accepts
    // only version 1 interoperate.
    ok(d, &["encrypt-file", "in.avro", "enc1.avro"]);
    ok(
        d,
        &[
            "decrypt-file",
            "--config",
            "v1only.toml",
            "enc1.avro",
            "dec1.avro",
        ],
    );
    assert_eq!(cat(d, "dec1.avro"), plain);

    // A version 2 writer: 8 bytes less per randomized field (customer.avsc has 4),
    // read by a default reader, refused by a version-1-only one with the fix.
    ok(
        d,
        &[
            "encrypt-file",
            "--config",
            "v2.toml",
            "in.avro",
            "enc2.avro",
        ],
    );
    let size = |f: &str| std::fs::metadata(d.join(f)).unwrap().len();
    let saved = size("enc1.avro") as i64 - size("enc2.avro") as i64;
    assert!(
        (500 * 4 * 8 - 2_000..=500 * 4 * 8).contains(&saved),
        "version 2 saved {saved} bytes over 500 records"
    );
    ok(d, &["decrypt-file", "enc2.avro", "dec2.avro"]);
    assert_eq!(cat(d, "dec2.avro"), plain);
    let err = fails(
        d,
        &[
            "decrypt-file",
            "--config",
            "v1only.toml",
            "enc2.avro",
            "dec3.avro",
        ],
    );
    assert!(
        err.contains("format version 2") && err.contains("crypto.read_versions"),
        "{err}"
    );
    assert!(
        !d.join("dec3.avro").exists(),
        "a refused file leaves nothing"
    );

    // A config that could not read what it writes, or names an unknown version.
    std::fs::write(
        d.join("bad.toml"),
        "[crypto]\nwrite_version = 2\nread_versions = [1]\n",
    )
    .unwrap();
    let err = fails(
        d,
        &["encrypt-file", "--config", "bad.toml", "in.avro", "x.avro"],
    );
    assert!(err.contains("crypto.write_version"), "{err}");
    std::fs::write(d.join("bad.toml"), "[crypto]\nwrite_version = 3\n").unwrap();
    let err = fails(
        d,
        &["encrypt-file", "--config", "bad.toml", "in.avro", "x.avro"],
    );
    assert!(
        err.contains("crypto.write_version") && err.contains("1, 2"),
        "{err}"
    );
}
