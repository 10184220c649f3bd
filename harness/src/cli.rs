//! The `fieldcrypt` binary as the integration tests run it: in a working
//! directory, deaf to the caller's `FIELDCRYPT_*` and `RUST_LOG` (a developer's
//! shell must not change what a test sees), with the environment a test adds.
//! Tests build it from their `env!("CARGO_BIN_EXE_fieldcrypt")`, which only
//! integration tests of the package can read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Variables of the caller's environment the binary never sees.
const SCRUBBED: [&str; 5] = [
    "FIELDCRYPT_CONFIG",
    "FIELDCRYPT_LOG",
    "FIELDCRYPT_LOG_FORMAT",
    "RUST_LOG",
    "FC_TEST_GROUP",
];

/// How to run the binary.
#[derive(Debug, Clone)]
pub struct Fc {
    bin: PathBuf,
    envs: Vec<(String, String)>,
}

impl Fc {
    /// The binary at `bin` (`env!("CARGO_BIN_EXE_fieldcrypt")`).
    pub fn new(bin: impl Into<PathBuf>) -> Fc {
        Fc {
            bin: bin.into(),
            envs: Vec::new(),
        }
    }

    /// The same, with `key=value` in its environment.
    pub fn env(mut self, key: &str, value: &str) -> Fc {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The command, ready for arguments: in `dir`, with the scrubbed environment.
    pub fn command(&self, dir: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(dir);
        for v in SCRUBBED {
            c.env_remove(v);
        }
        c.envs(self.envs.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs `fieldcrypt ARGS` in `dir`.
    pub fn output(&self, dir: &Path, args: &[&str]) -> Output {
        self.command(dir)
            .args(args)
            .output()
            .expect("runs the fieldcrypt binary")
    }

    /// Runs a command that must succeed; returns its stdout then stderr.
    pub fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let o = self.output(dir, args);
        let (out, err) = text(&o);
        assert!(
            o.status.success(),
            "fieldcrypt {args:?} failed:\n{out}{err}"
        );
        out + &err
    }

    /// Runs a command that must fail with an error line and no panic; returns
    /// its stderr.
    pub fn fails(&self, dir: &Path, args: &[&str]) -> String {
        let o = self.output(dir, args);
        let (out, err) = text(&o);
        assert!(
            !o.status.success(),
            "fieldcrypt {args:?} should have failed:\n{out}{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("error: "), "an error line: {err}");
        err
    }
}

/// stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
