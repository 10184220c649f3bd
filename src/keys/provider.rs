//! KMS providers: which exist, how `[kms]` configures them (a table tagged by
//! `provider`, each provider's keys in its own struct beside its code), how a KEK
//! reference names its provider, and opening the key ring of every KEK a config
//! uses.
//!
//! A KEK reference in the config (`kms.key_id`, a route's `kek`, `decrypt_keks`)
//! is `local:PATH`, `aws:KEY` (key id, `alias/NAME` or ARN), or unprefixed, which
//! means the `[kms]` provider's kind. A wrapped key names its KEK by the id the
//! provider recorded (`local:<fingerprint>`, an `arn:aws…:kms:` ARN), so unwrapping
//! goes to exactly one provider and an id no provider claims is refused.
//!
//! Providers themselves are the entries of the driver table ([`super::driver`]);
//! this module only reads the config and opens what it names through them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::aws::AwsConfig;
use super::driver::Clients;
pub use super::driver::Provider;
use super::kms::{Kms, KmsError};
use super::local::LocalConfig;
use super::resilient::RetryPolicy;
use super::ring::KeyRing;

/// One KEK as the config names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KekRef {
    pub provider: Provider,
    /// The provider's own name for it: a KEK file, an AWS key id, alias or ARN.
    pub name: String,
}

/// A KEK reference that names no KEK (`aws:`, empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" names no KEK")]
pub struct NoKek(pub String);

impl KekRef {
    /// Reads `local:PATH`, `aws:KEY`, or an unprefixed name of the `default` kind.
    pub fn parse(s: &str, default: Provider) -> Result<KekRef, NoKek> {
        let (provider, name) = Provider::all()
            .find_map(|p| {
                s.strip_prefix(p.name())
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(|rest| (p, rest))
            })
            .unwrap_or((default, s));
        if name.is_empty() {
            return Err(NoKek(s.to_string()));
        }
        Ok(KekRef {
            provider,
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for KekRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.provider.name(), self.name)
    }
}

/// The provider of the default KEK, with its own settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum ProviderConfig {
    Local(LocalConfig),
    Aws(AwsConfig),
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig::Local(LocalConfig::default())
    }
}

impl ProviderConfig {
    pub fn kind(&self) -> Provider {
        match self {
            ProviderConfig::Local(_) => super::local::PROVIDER,
            ProviderConfig::Aws(_) => super::aws::PROVIDER,
        }
    }

    /// The default KEK.
    fn default_kek(&self) -> Result<KekRef, SettingError> {
        match self {
            ProviderConfig::Local(c) => c.kek_ref(),
            ProviderConfig::Aws(c) => c.kek_ref(),
        }
    }

    fn validate(&self) -> Result<(), SettingError> {
        self.default_kek().map(drop)?;
        match self {
            ProviderConfig::Local(_) => Ok(()),
            ProviderConfig::Aws(c) => c.validate(),
        }
    }
}

/// A provider's setting under `[kms]` that is missing or wrong, and what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("kms.{key}: {msg}")]
pub struct SettingError {
    pub key: &'static str,
    pub msg: &'static str,
}

/// `[kms]`: the provider and its keys, plus what every provider shares.
#[derive(Debug, Clone, Serialize)]
pub struct KmsConfig {
    #[serde(flatten)]
    pub provider: ProviderConfig,
    /// KEKs kept for unwrapping only, e.g. the previous KEK after a rewrap.
    pub decrypt_keks: Vec<String>,
    /// Per-call timeout (default 5).
    pub timeout_seconds: u64,
    /// Retries of a call that could not reach the KMS or timed out, with
    /// exponential backoff and full jitter (default 3). Refusals are never retried.
    pub retries: u32,
}

impl Default for KmsConfig {
    fn default() -> Self {
        KmsConfig {
            provider: ProviderConfig::default(),
            decrypt_keks: Vec::new(),
            timeout_seconds: 5,
            retries: 3,
        }
    }
}

impl<'de> Deserialize<'de> for KmsConfig {
    /// The shared keys are taken out and the rest goes to the provider named by
    /// `provider` (default `local`), whose struct refuses keys it does not know
    /// (so `kek_file` under `provider = "aws"` is an error, not ignored).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let mut cfg = KmsConfig::default();
        if let Some(v) = table.remove("decrypt_keks") {
            cfg.decrypt_keks = v.try_into().map_err(D::Error::custom)?;
        }
        if let Some(v) = table.remove("timeout_seconds") {
            cfg.timeout_seconds = v.try_into().map_err(D::Error::custom)?;
        }
        if let Some(v) = table.remove("retries") {
            cfg.retries = v.try_into().map_err(D::Error::custom)?;
        }
        table
            .entry("provider")
            .or_insert_with(|| super::local::PROVIDER.name().into());
        cfg.provider = toml::Value::Table(table).try_into().map_err(|e| {
            D::Error::custom(format!("kms: {e} (providers: {})", Provider::names()))
        })?;
        Ok(cfg)
    }
}

impl KmsConfig {
    /// The local provider with the KEK in `kek_file`.
    pub fn local(kek_file: impl Into<PathBuf>) -> Self {
        KmsConfig {
            provider: ProviderConfig::Local(LocalConfig {
                kek_file: kek_file.into(),
            }),
            ..Default::default()
        }
    }

    /// AWS KMS with `key_id` as the default KEK.
    pub fn aws(config: AwsConfig) -> Self {
        KmsConfig {
            provider: ProviderConfig::Aws(config),
            ..Default::default()
        }
    }

    /// The local KEK file, when the provider is local.
    pub fn kek_file(&self) -> Option<&std::path::Path> {
        match &self.provider {
            ProviderConfig::Local(c) => Some(&c.kek_file),
            _ => None,
        }
    }

    /// Reads a KEK reference from the config (unprefixed: this provider's kind).
    pub fn kek_ref(&self, s: &str) -> Result<KekRef, NoKek> {
        KekRef::parse(s, self.provider.kind())
    }

    /// The timeout and retry policy of KMS calls.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            timeout: Duration::from_secs(self.timeout_seconds),
            retries: self.retries,
            ..Default::default()
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        use crate::config::invalid;
        self.provider
            .validate()
            .map_err(|e| invalid(format!("kms.{}", e.key), e.msg))?;
        for (i, k) in self.decrypt_keks.iter().enumerate() {
            self.kek_ref(k)
                .map_err(|e| invalid(format!("kms.decrypt_keks[{i}]"), e.to_string()))?;
        }
        if self.timeout_seconds == 0 {
            return Err(invalid("kms.timeout_seconds", "must be at least 1"));
        }
        Ok(())
    }
}

/// Opens KEKs of any provider through its driver, each client built once and
/// each KEK opened once.
struct Opener {
    clients: Clients,
    opened: HashMap<KekRef, Arc<dyn Kms>>,
}

impl Opener {
    fn new(config: &KmsConfig) -> Self {
        Opener {
            clients: Clients::new(config),
            opened: HashMap::new(),
        }
    }

    async fn open(&mut self, r: &KekRef) -> Result<Arc<dyn Kms>, KmsError> {
        if let Some(k) = self.opened.get(r) {
            return Ok(k.clone());
        }
        let kms = r.provider.driver().open(&r.name, &self.clients).await?;
        self.opened.insert(r.clone(), kms.clone());
        Ok(kms)
    }
}

fn reference(config: &KmsConfig, what: &str, s: &str) -> Result<KekRef, KmsError> {
    config
        .kek_ref(s)
        .map_err(|e| KmsError::Config(format!("{what}: {e}")))
}

/// Opens one KEK named the way the config names them (`keys rewrap --to-kek`).
pub async fn open_kek(config: &KmsConfig, kek: &str) -> Result<Arc<dyn Kms>, KmsError> {
    let r = reference(config, "KEK", kek)?;
    Opener::new(config).open(&r).await
}

/// Opens the key ring: the default KEK, the KEK of each data-key scope given as
/// `(scope, reference)`, and the unwrap-only `decrypt_keks`.
pub async fn open_ring<'s>(
    config: &KmsConfig,
    scoped: impl IntoIterator<Item = (String, &'s str)>,
) -> Result<Arc<dyn Kms>, KmsError> {
    let mut opener = Opener::new(config);
    let default = config
        .provider
        .default_kek()
        .map_err(|e| KmsError::Config(e.to_string()))?;
    let mut ring = KeyRing::new(opener.open(&default).await?);
    for (scope, kek) in scoped {
        let r = reference(config, &format!("kek of scope {scope}"), kek)?;
        ring = ring.scope(scope, opener.open(&r).await?);
    }
    for kek in &config.decrypt_keks {
        let r = reference(config, "kms.decrypt_keks", kek)?;
        ring = ring.member(opener.open(&r).await?);
    }
    Ok(Arc::new(ring))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<KmsConfig, toml::de::Error> {
        #[derive(Deserialize)]
        struct W {
            kms: KmsConfig,
        }
        toml::from_str::<W>(s).map(|w| w.kms)
    }

    #[test]
    fn no_table_and_an_empty_table_are_the_local_provider() {
        let c = parse("[kms]\n").unwrap();
        assert_eq!(c.provider.kind(), crate::keys::local::PROVIDER);
        assert_eq!(
            c.kek_file(),
            Some(std::path::Path::new(".fieldcrypt/kek.key"))
        );
        assert_eq!((c.timeout_seconds, c.retries), (5, 3));
    }

    #[test]
    fn each_provider_takes_its_own_keys_and_refuses_the_others() {
        let c = parse(
            "[kms]\nprovider = \"aws\"\nkey_id = \"alias/k\"\nregion = \"eu-west-1\"\nretries = 7\ndecrypt_keks = [\"local:/old.key\"]\n",
        )
        .unwrap();
        match &c.provider {
            ProviderConfig::Aws(a) => {
                assert_eq!(a.key_id.as_deref(), Some("alias/k"));
                assert_eq!(a.region.as_deref(), Some("eu-west-1"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.retries, 7);
        let e = parse("[kms]\nprovider = \"aws\"\nkek_file = \"k\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kek_file"), "{e}");
        let e = parse("[kms]\nkey_id = \"alias/k\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key_id"), "{e}");
        let e = parse("[kms]\nprovider = \"vault\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vault") && e.contains("local, aws"), "{e}");
        let e = parse("[kms]\ntimeout_seconds = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn references_name_their_provider_or_take_the_default_kind() {
        use crate::keys::{aws::PROVIDER as AWS, local::PROVIDER as LOCAL};
        let local = KekRef::parse("local:/k/a.key", AWS).unwrap();
        assert_eq!((local.provider, local.name.as_str()), (LOCAL, "/k/a.key"));
        let aws = KekRef::parse("aws:alias/x", LOCAL).unwrap();
        assert_eq!((aws.provider, aws.name.as_str()), (AWS, "alias/x"));
        let arn = "arn:aws:kms:us-east-1:111122223333:key/abc";
        let r = KekRef::parse(arn, AWS).unwrap();
        assert_eq!((r.provider, r.name.as_str()), (AWS, arn));
        let bare = KekRef::parse("keys/t.key", LOCAL).unwrap();
        assert_eq!(bare.provider, LOCAL);
        assert!(KekRef::parse("aws:", LOCAL).is_err());
        assert!(KekRef::parse("", LOCAL).is_err());
    }

    #[test]
    fn wrapped_key_ids_belong_to_one_provider_or_none() {
        use crate::keys::{aws::PROVIDER as AWS, local::PROVIDER as LOCAL};
        assert_eq!(Provider::of_wrapped("local:ab12"), Some(LOCAL));
        assert_eq!(
            Provider::of_wrapped("arn:aws:kms:us-east-1:111122223333:key/abc"),
            Some(AWS)
        );
        assert_eq!(
            Provider::of_wrapped("arn:aws-cn:kms:cn-north-1:111122223333:key/abc"),
            Some(AWS)
        );
        // A second remote provider's ids must not be routed to AWS.
        assert_eq!(Provider::of_wrapped("vault:transit/k"), None);
        assert_eq!(Provider::of_wrapped("gcp-kms://projects/p"), None);
        assert_eq!(Provider::of_wrapped(""), None);
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = KmsConfig::aws(AwsConfig::default());
        assert_eq!(c.validate().unwrap_err().key().unwrap(), "kms.key_id");
        c.provider = ProviderConfig::Aws(AwsConfig {
            key_id: Some("alias/k".into()),
            endpoint_url: Some("ftp://x".into()),
            ..Default::default()
        });
        assert_eq!(c.validate().unwrap_err().key().unwrap(), "kms.endpoint_url");
        let mut c = KmsConfig::local("");
        assert_eq!(c.validate().unwrap_err().key().unwrap(), "kms.kek_file");
        c = KmsConfig::local("k");
        c.decrypt_keks = vec!["aws:".into()];
        assert_eq!(
            c.validate().unwrap_err().key().unwrap(),
            "kms.decrypt_keks[0]"
        );
        c.decrypt_keks.clear();
        c.timeout_seconds = 0;
        assert_eq!(
            c.validate().unwrap_err().key().unwrap(),
            "kms.timeout_seconds"
        );
    }
}
