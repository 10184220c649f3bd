//! The KMS driver table: one [`KmsDriver`] per provider, each in its provider's
//! file (`keys/local.rs`, `keys/aws.rs`), registered once in [`DRIVERS`]. Both
//! formats go through it: a KEK reference's or a wrapped key's provider in
//! fieldcrypt's format ([`Provider`]), and a Confluent KEK's `kmsType` in
//! Confluent's (`csfle::keys`). Nothing else matches KMS types by string.
//!
//! A driver opens a KEK as a [`Kms`]: for fieldcrypt's format by the provider's own
//! name for the key (a KEK file, an AWS key id, alias or ARN), for Confluent's by
//! the KEK's `kmsKeyId`, with no encryption context (Confluent's clients bind
//! none). Clients a driver builds (the AWS SDK client) are built once per
//! [`Clients`] and shared by every KEK it opens.
//!
//! Adding a provider (Vault Transit, GCP, Azure): its file under `keys/` with its
//! `[kms]` settings struct, its [`Kms`] implementation and its driver; one entry in
//! [`DRIVERS`], one arm in [`super::ProviderConfig`] for its `[kms]` keys, and a
//! fixture in `tests/kms_drivers.rs`, whose conformance suite every driver runs.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::kms::{Kms, KmsError};
use super::provider::KmsConfig;

/// A key id a driver's KMS would not accept: what it needs instead, for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyIdRefused(pub &'static str);

/// What a KMS provider must do for both formats.
#[async_trait]
pub trait KmsDriver: Send + Sync + 'static {
    /// `provider = "..."` in `[kms]`, and the prefix of a KEK reference (`aws:KEY`).
    fn name(&self) -> &'static str;

    /// Confluent's `kmsType` for this KMS (`encrypt.kms.type`), if it speaks it.
    fn confluent_type(&self) -> Option<&'static str> {
        None
    }

    /// Does a wrapped key whose KEK id reads `kek_id` belong to this driver? The
    /// ids of two drivers must never overlap (the conformance suite checks).
    fn claims_wrapped(&self, kek_id: &str) -> bool;

    /// Is this driver's name for a KEK a file path (resolved against the config
    /// file's directory)?
    fn names_a_file(&self) -> bool {
        false
    }

    /// Checks a Confluent KEK's `kmsKeyId` for this KMS type.
    fn check_confluent_key_id(&self, _kms_key_id: &str) -> Result<(), KeyIdRefused> {
        Ok(())
    }

    /// Log targets of the clients this driver uses that echo requests and
    /// responses (key ids, wrapped keys) at debug and trace: held at info by
    /// [`cap_client_logs`] unless a filter names them.
    fn chatty_log_targets(&self) -> &'static [&'static str] {
        &[]
    }

    /// Opens the KEK `name` for fieldcrypt's format.
    async fn open(&self, name: &str, clients: &Clients) -> Result<Arc<dyn Kms>, KmsError>;

    /// Opens the Confluent KEK `kms_key_id` of this KMS type.
    async fn open_confluent(
        &self,
        _kms_key_id: &str,
        _clients: &Clients,
    ) -> Result<Arc<dyn Kms>, KmsError> {
        Err(KmsError::Config(format!(
            "the {} KMS does not speak Confluent's format",
            self.name()
        )))
    }
}

/// Every provider fieldcrypt speaks, in the order help texts list them.
pub static DRIVERS: [&dyn KmsDriver; 2] = [&super::local::LocalDriver, &super::aws::AwsDriver];

/// `spec` (a tracing filter) with every driver's chatty client targets held at
/// info, except those `spec` names itself: `--log trace` shows fieldcrypt's own
/// trace lines, not the KMS SDK's request and response dumps, which name keys.
pub fn cap_client_logs(spec: &str) -> String {
    let mut out = spec.trim().to_string();
    for t in DRIVERS.iter().flat_map(|d| d.chatty_log_targets()) {
        let named = spec
            .split(',')
            .any(|d| d.trim().split(['=', '[']).next() == Some(*t));
        if !named {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(t);
            out.push_str("=info");
        }
    }
    out
}

/// A provider: a handle on its entry in [`DRIVERS`], compared by name.
#[derive(Clone, Copy)]
pub struct Provider(&'static dyn KmsDriver);

impl Provider {
    pub(super) const fn new(driver: &'static dyn KmsDriver) -> Provider {
        Provider(driver)
    }

    /// Every provider, in [`DRIVERS`] order.
    pub fn all() -> impl Iterator<Item = Provider> {
        DRIVERS.iter().map(|d| Provider(*d))
    }

    /// The names of every provider, for messages (`local, aws`).
    pub fn names() -> String {
        Provider::all()
            .map(Provider::name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The name used in `provider = "..."` and as a reference prefix.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    pub fn driver(self) -> &'static dyn KmsDriver {
        self.0
    }

    /// The provider called `name`.
    pub fn named(name: &str) -> Option<Provider> {
        Provider::all().find(|p| p.name() == name)
    }

    /// The provider that recorded `kek_id` in a wrapped key, if any.
    pub fn of_wrapped(kek_id: &str) -> Option<Provider> {
        Provider::all().find(|p| p.0.claims_wrapped(kek_id))
    }

    /// The provider of a Confluent `kmsType` (case-insensitive, as Confluent's
    /// clients compare them).
    pub fn of_confluent_type(kms_type: &str) -> Option<Provider> {
        Provider::all().find(|p| {
            p.0.confluent_type()
                .is_some_and(|t| t.eq_ignore_ascii_case(kms_type))
        })
    }

    /// The Confluent `kmsType`s fieldcrypt speaks, for messages.
    pub fn confluent_types() -> String {
        Provider::all()
            .filter_map(|p| p.0.confluent_type())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl PartialEq for Provider {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Provider {}

impl std::hash::Hash for Provider {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state)
    }
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Provider({})", self.name())
    }
}

type Shared = Arc<dyn Any + Send + Sync>;

/// What drivers open KEKs with: the `[kms]` config and the clients they built,
/// one per driver, shared by every KEK it opens.
pub struct Clients {
    config: KmsConfig,
    built: tokio::sync::Mutex<HashMap<&'static str, Shared>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("provider", &self.config.provider.kind())
            .finish_non_exhaustive()
    }
}

impl Clients {
    pub fn new(config: &KmsConfig) -> Clients {
        Clients {
            config: config.clone(),
            built: Default::default(),
        }
    }

    pub fn config(&self) -> &KmsConfig {
        &self.config
    }

    /// The client `driver` built, building it with `init` the first time.
    pub async fn get_or_build<T, F, Fut>(
        &self,
        driver: &'static str,
        init: F,
    ) -> Result<Arc<T>, KmsError>
    where
        T: Any + Send + Sync,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, KmsError>>,
    {
        let mut built = self.built.lock().await;
        if let Some(c) = built
            .get(driver)
            .and_then(|c| c.clone().downcast::<T>().ok())
        {
            return Ok(c);
        }
        let c = Arc::new(init().await?);
        built.insert(driver, c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_confluent_types_are_unique() {
        let mut names: Vec<_> = Provider::all().map(Provider::name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DRIVERS.len());
        let mut types: Vec<_> = DRIVERS.iter().filter_map(|d| d.confluent_type()).collect();
        let n = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), n);
        assert_eq!(Provider::names(), "local, aws");
        assert_eq!(Provider::confluent_types(), "local-kms, aws-kms");
    }

    #[test]
    fn client_logs_are_capped_unless_named() {
        let s = cap_client_logs("trace");
        assert!(
            s.starts_with("trace,") && s.contains("aws_smithy_runtime=info"),
            "{s}"
        );
        let s = cap_client_logs("info,aws_smithy_runtime=trace");
        assert!(s.contains("aws_smithy_runtime=trace"), "{s}");
        assert!(!s.contains("aws_smithy_runtime=info"), "{s}");
        assert!(s.contains("aws_sdk_kms=info"), "{s}");
        // Still a filter tracing accepts.
        tracing_subscriber::EnvFilter::try_new(cap_client_logs("debug")).unwrap();
        tracing_subscriber::EnvFilter::try_new(cap_client_logs("")).unwrap();
    }

    #[test]
    fn lookups_find_one_provider_or_none() {
        assert_eq!(Provider::named("aws").map(Provider::name), Some("aws"));
        assert!(Provider::named("vault").is_none());
        assert_eq!(
            Provider::of_confluent_type("AWS-KMS").map(Provider::name),
            Some("aws")
        );
        assert_eq!(
            Provider::of_confluent_type("local-kms").map(Provider::name),
            Some("local")
        );
        assert!(Provider::of_confluent_type("hcvault").is_none());
        assert!(Provider::of_confluent_type("").is_none());
    }
}
