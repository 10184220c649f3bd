//! Relative paths in a config file resolve against the file's own directory (as
//! Prometheus and Vector resolve theirs), so `fieldcrypt run -c deploy/encrypt.toml`
//! reads the same files from any working directory. Defaults count too: with
//! a config file, `.fieldcrypt/keyset.json` means the one beside the file. With no
//! config file (the embedded defaults) paths stay relative to the working
//! directory. Absolute paths are never changed.

use std::path::{Path, PathBuf};

use super::Config;
use crate::keys::provider::{Provider, ProviderConfig};

/// `p` against `base` when it is relative.
fn against(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.as_os_str().is_empty() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// A KEK reference (`local:PATH`, `aws:KEY`, unprefixed): a local KEK file's
/// path against `base`; any other reference as it is.
fn kek_against(cfg_kind: Provider, base: &Path, r: &str) -> String {
    match crate::keys::provider::KekRef::parse(r, cfg_kind) {
        Ok(k) if k.provider.driver().names_a_file() => {
            let p = Path::new(&k.name);
            if p.is_absolute() {
                r.to_string()
            } else {
                format!("{}:{}", k.provider.name(), base.join(p).display())
            }
        }
        // Invalid references are left for validation to name.
        _ => r.to_string(),
    }
}

impl Config {
    /// Resolves every relative path in the config against `base` (the config
    /// file's directory).
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        if base.as_os_str().is_empty() {
            return;
        }
        let kind = self.kms.provider.kind();
        if let ProviderConfig::Local(l) = &mut self.kms.provider {
            l.kek_file = against(base, &l.kek_file);
        }
        for k in &mut self.kms.decrypt_keks {
            *k = kek_against(kind, base, k);
        }
        self.keyset.file = against(base, &self.keyset.file);
        for f in &mut self.schema.reference_files {
            *f = against(base, f);
        }
        let reg = &mut self.schema_registry;
        for f in [&mut reg.ca_file, &mut reg.cert_file, &mut reg.key_file]
            .into_iter()
            .flatten()
        {
            *f = against(base, f);
        }
        for r in &mut self.routes {
            for f in [&mut r.value_schema, &mut r.key_schema]
                .into_iter()
                .flatten()
            {
                *f = against(base, f);
            }
            if let Some(k) = &mut r.kek {
                *k = kek_against(kind, base, k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let mut c: Config = toml::from_str(
            r#"
[kms]
kek_file = "keys/kek.key"
decrypt_keks = ["local:old.key", "/abs/older.key", "aws:alias/x"]
[schema]
reference_files = ["schemas/common.avsc", "/abs/ref.avsc"]
[schema_registry]
url = "https://r:8081"
ca_file = "tls/ca.pem"
[[routes]]
source = "a"
target = "secure.${topic}"
value_schema = "schemas/a.avsc"
kek = "tenant.key"
"#,
        )
        .unwrap();
        c.resolve_paths(Path::new("deploy"));
        assert_eq!(c.kms.kek_file(), Some(Path::new("deploy/keys/kek.key")));
        assert_eq!(
            c.kms.decrypt_keks,
            vec!["local:deploy/old.key", "/abs/older.key", "aws:alias/x"]
        );
        assert_eq!(c.keyset.file, Path::new("deploy/.fieldcrypt/keyset.json"));
        assert_eq!(
            c.schema.reference_files,
            vec![
                PathBuf::from("deploy/schemas/common.avsc"),
                PathBuf::from("/abs/ref.avsc")
            ]
        );
        assert_eq!(
            c.schema_registry.ca_file.as_deref(),
            Some(Path::new("deploy/tls/ca.pem"))
        );
        assert_eq!(
            c.routes[0].value_schema.as_deref(),
            Some(Path::new("deploy/schemas/a.avsc"))
        );
        assert_eq!(c.routes[0].kek.as_deref(), Some("local:deploy/tenant.key"));
        assert_eq!(c.routes[0].target, "secure.${topic}", "not a path");
    }

    #[test]
    fn a_config_in_the_working_directory_changes_nothing() {
        let mut c = Config::default();
        c.resolve_paths(Path::new(""));
        assert_eq!(c.keyset.file, Path::new(".fieldcrypt/keyset.json"));
    }
}
