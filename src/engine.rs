//! The engine: config, KMS, unwrapped keyset and DEK caches put together once at
//! start-up, and the per-schema encryptors and decryptors built from them. This is
//! the one place the file mode (and later the Kafka pipeline) gets its crypto from.

use std::sync::Arc;

use thiserror::Error;

use crate::config::{Config, KmsProvider};
use crate::keys::keyset::KeysetError;
use crate::keys::{
    DekCache, DekManager, KeyMaterial, Keyset, Kms, KmsError, LocalKms, SystemClock,
};
use crate::schema::plan::{DecryptPlan, EncryptPlan};
use crate::schema::SchemaError;
use crate::transform::{Decryptor, Encryptor};

/// Start-up and per-schema failures.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Keyset(#[from] KeysetError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// Keys and settings shared by every schema.
#[derive(Debug)]
pub struct Engine {
    pub config: Config,
    pub kms: Arc<dyn Kms>,
    pub keys: Arc<KeyMaterial>,
    /// Encrypt-side DEKs.
    pub deks: DekManager,
    /// Decrypt-side DEKs.
    pub dek_cache: DekCache,
}

/// Opens the configured KMS.
pub fn open_kms(config: &Config) -> Result<Arc<dyn Kms>, KmsError> {
    match config.kms.provider {
        KmsProvider::Local => Ok(Arc::new(LocalKms::open(&config.kms.kek_file)?)),
    }
}

impl Engine {
    /// Opens the KMS and unwraps the keyset.
    pub async fn start(config: Config) -> Result<Self, EngineError> {
        let kms = open_kms(&config)?;
        Self::with_kms(config, kms).await
    }

    /// As [`start`](Self::start) with a given KMS (tests, other providers).
    pub async fn with_kms(config: Config, kms: Arc<dyn Kms>) -> Result<Self, EngineError> {
        let keyset = Keyset::load(&config.keyset.file)?;
        let keys = KeyMaterial::unwrap(
            &keyset,
            &config.keyset.file,
            kms.as_ref(),
            &config.index_settings(),
        )
        .await?;
        let settings = config.dek_settings();
        Ok(Engine {
            deks: DekManager::new(kms.clone(), Arc::new(SystemClock::default()), settings),
            dek_cache: DekCache::new(kms.clone(), settings),
            keys: Arc::new(keys),
            kms,
            config,
        })
    }

    /// The encrypt plan for a writer schema (`label` names it in errors).
    pub fn encrypt_plan(
        &self,
        schema: &serde_json::Value,
        label: &str,
    ) -> Result<Arc<EncryptPlan>, SchemaError> {
        EncryptPlan::build(schema, label, &self.config.plan_config()).map(Arc::new)
    }

    /// An encryptor for a writer schema.
    pub fn encryptor(
        &self,
        schema: &serde_json::Value,
        label: &str,
    ) -> Result<Encryptor, EngineError> {
        let plan = self.encrypt_plan(schema, label)?;
        Ok(Encryptor::new(plan, &self.keys)?)
    }

    /// A decryptor for an encrypted schema.
    pub fn decryptor(
        &self,
        schema: &serde_json::Value,
        label: &str,
    ) -> Result<Decryptor, EngineError> {
        let plan = Arc::new(DecryptPlan::build(schema, label)?);
        Ok(Decryptor::new(plan, self.keys.clone()))
    }
}
