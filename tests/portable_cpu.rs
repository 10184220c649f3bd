//! The shipped binary on a CPU without AES-NI, PCLMULQDQ, SSSE3, SSE4.1 or AVX2:
//! Debian's qemu-user emulating the baseline `qemu64` CPU runs `fieldcrypt`, which
//! must choose the portable AES path (its debug line says so), never execute an
//! instruction that CPU lacks (SIGILL), and write the same bytes the fast path
//! writes: files encrypted on either path decrypt on the other, and the
//! deterministic ciphertexts and blind indexes (no random nonce in them) are equal
//! byte for byte. Also: `FIELDCRYPT_CRYPTO=portable` forces the portable path
//! natively, and a value that is not a path is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_fieldcrypt");

/// The emulated CPU: x86-64 with SSE3 and nothing newer.
const CPU: &str = "qemu64";

fn qemu() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("qemu-x86_64"))
            .find(|f| f.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "qemu-x86_64 not found: install Debian's qemu-user (apt-get install qemu-user; \
             scripts/test.sh does) to run this test"
        )
    })
}

/// Runs the binary natively (`emulated` false) or as the baseline CPU.
fn fc(dir: &Path, emulated: bool, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = if emulated {
        let mut c = Command::new(qemu());
        c.args(["-cpu", CPU, BIN]);
        c
    } else {
        Command::new(BIN)
    };
    cmd.current_dir(dir)
        .env_remove("FIELDCRYPT_CRYPTO")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("runs the binary")
}

fn ok(dir: &Path, emulated: bool, env: &[(&str, &str)], args: &[&str]) -> String {
    let o = fc(dir, emulated, env, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "fieldcrypt {args:?} (emulated: {emulated}) failed with {:?}: {err}",
        o.status
    );
    String::from_utf8_lossy(&o.stdout).into_owned() + &err
}

fn cat(dir: &Path, file: &str) -> Vec<serde_json::Value> {
    ok(dir, false, &[], &["cat", file])
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, false, &[], &["keys", "init"]);
    for (purpose, domain) in [("deterministic", "default"), ("blind-index", "email")] {
        ok(
            d,
            false,
            &[],
            &["keys", "create", "--purpose", purpose, "--domain", domain],
        );
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/customer.avsc"),
        d.join("customer.avsc"),
    )
    .unwrap();
    ok(
        d,
        false,
        &[],
        &[
            "sample",
            "--schema",
            "customer.avsc",
            "--count",
            "300",
            "--codec",
            "null",
            "in.avro",
        ],
    );
    dir
}

#[test]
fn the_baseline_cpu_runs_the_portable_path_and_both_paths_agree() {
    let dir = setup();
    let d = dir.path();

    // Natively: the fast path where this CPU has it.
    let native = ok(
        d,
        false,
        &[],
        &["--log", "debug", "encrypt-file", "in.avro", "native.avro"],
    );
    let fast = std::is_x86_feature_detected!("aes")
        && std::is_x86_feature_detected!("pclmulqdq")
        && std::is_x86_feature_detected!("avx2");
    let want = if fast {
        "aes-ni+pclmulqdq+avx2"
    } else {
        "portable"
    };
    assert!(
        native.contains(&format!("AES runs on the {want} path")),
        "native run names its path: {native}"
    );

    // As a CPU without AES-NI: the portable path, and no illegal instruction.
    let emulated = ok(
        d,
        true,
        &[],
        &["--log", "debug", "encrypt-file", "in.avro", "qemu.avro"],
    );
    assert!(
        emulated.contains("AES runs on the portable path"),
        "the baseline CPU runs portably: {emulated}"
    );
    ok(
        d,
        true,
        &[],
        &["decrypt-file", "native.avro", "native-on-qemu.avro"],
    );
    ok(
        d,
        false,
        &[],
        &["decrypt-file", "qemu.avro", "qemu-on-native.avro"],
    );

    let plain = cat(d, "in.avro");
    assert_eq!(plain.len(), 300);
    assert_eq!(
        cat(d, "native-on-qemu.avro"),
        plain,
        "fast-path ciphertexts open portably"
    );
    assert_eq!(
        cat(d, "qemu-on-native.avro"),
        plain,
        "portable ciphertexts open on the fast path"
    );

    // Deterministic fields and blind indexes carry no nonce: the same bytes from
    // both paths. Randomized fields differ (fresh nonces) but both decrypted above.
    let (a, b) = (cat(d, "native.avro"), cat(d, "qemu.avro"));
    assert_eq!(a.len(), b.len());
    let mut compared = 0;
    for (x, y) in a.iter().zip(&b) {
        for f in ["email", "email_bidx"] {
            assert!(x[f].is_string(), "{f} is present: {x}");
            assert_eq!(x[f], y[f], "{f}: the same bytes on both paths");
            compared += 1;
        }
        assert_ne!(x["ssn"], y["ssn"], "randomized fields use fresh nonces");
    }
    assert_eq!(compared, 600);
}

#[test]
fn the_environment_forces_the_portable_path_and_refuses_anything_else() {
    let dir = setup();
    let d = dir.path();
    let forced = ok(
        d,
        false,
        &[("FIELDCRYPT_CRYPTO", "portable")],
        &["--log", "debug", "encrypt-file", "in.avro", "forced.avro"],
    );
    assert!(forced.contains("AES runs on the portable path"), "{forced}");
    ok(d, false, &[], &["decrypt-file", "forced.avro", "back.avro"]);
    assert_eq!(cat(d, "back.avro"), cat(d, "in.avro"));

    let o = fc(
        d,
        false,
        &[("FIELDCRYPT_CRYPTO", "aesni")],
        &["encrypt-file", "in.avro", "never.avro"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("FIELDCRYPT_CRYPTO=\"aesni\" is not a crypto path (use auto or portable)"),
        "{err}"
    );
    assert!(!d.join("never.avro").exists(), "nothing written");
}
