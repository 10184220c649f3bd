//! The engine: config, KMS, unwrapped keyset and DEK caches put together once at
//! start-up, and the per-schema encryptors and decryptors built from them. This is
//! the one place the file mode (and later the Kafka pipeline) gets its crypto from.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::config::{Config, KmsProvider};
use crate::keys::aws::{self, AwsKms};
use crate::keys::keyset::KeysetError;
use crate::keys::{
    DekCache, DekManager, Instrumented, KeyMaterial, KeyRing, Keyset, Kms, KmsError, LocalKms,
    Resilient, SystemClock,
};
use crate::observe::Metrics;
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
    /// Every metric of this process (KMS calls and DEK caches are counted here).
    pub metrics: Arc<Metrics>,
    /// Plans are built once per schema (keyed by its JSON text).
    encryptors: PlanCache<Encryptor>,
    decryptors: PlanCache<Decryptor>,
}

/// Most schemas whose plans are kept; past that the cache starts over (schemas are
/// few in practice, so this only bounds memory against a flood of schema ids).
const PLAN_CACHE_LIMIT: usize = 10_000;

#[derive(Debug)]
struct PlanCache<T>(Mutex<HashMap<String, Arc<T>>>);

impl<T> Default for PlanCache<T> {
    fn default() -> Self {
        PlanCache(Mutex::new(HashMap::new()))
    }
}

impl<T> PlanCache<T> {
    fn get_or_build<E>(
        &self,
        schema: &serde_json::Value,
        build: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let key = schema.to_string();
        if let Some(t) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(t.clone());
        }
        let t = Arc::new(build()?);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= PLAN_CACHE_LIMIT {
            map.clear();
        }
        map.insert(key, t.clone());
        Ok(t)
    }
}

/// Opens one KEK of the configured provider: an AWS key id, alias or ARN, or a
/// local KEK file.
pub async fn open_kek(config: &Config, kek: &str) -> Result<Arc<dyn Kms>, KmsError> {
    match config.kms.provider {
        KmsProvider::Local => Ok(Arc::new(LocalKms::open(std::path::Path::new(kek))?)),
        KmsProvider::Aws => {
            let client = aws::client(&config.kms.aws_settings()).await?;
            Ok(Arc::new(AwsKms::new(client, kek)))
        }
    }
}

/// Opens the configured KMS as a key ring: the default KEK, each route's own KEK
/// for its data keys, and the unwrap-only `decrypt_keks`.
pub async fn open_kms(config: &Config) -> Result<Arc<dyn Kms>, KmsError> {
    let aws_client = match config.kms.provider {
        KmsProvider::Aws => Some(aws::client(&config.kms.aws_settings()).await?),
        KmsProvider::Local => None,
    };
    let open = |kek: &str| -> Result<Arc<dyn Kms>, KmsError> {
        match &aws_client {
            Some(c) => Ok(Arc::new(AwsKms::new(c.clone(), kek))),
            None => Ok(Arc::new(
                LocalKms::open(std::path::Path::new(kek))
                    .map_err(|e| KmsError::Config(format!("{e} (named by kek = \"{kek}\")")))?,
            )),
        }
    };
    let default: Arc<dyn Kms> = match (&aws_client, &config.kms.key_id) {
        (Some(c), Some(id)) => Arc::new(AwsKms::new(c.clone(), id.clone())),
        (Some(_), None) => return Err(KmsError::Config("kms.key_id is not set".into())),
        (None, _) => Arc::new(LocalKms::open(&config.kms.kek_file)?),
    };
    let mut ring = KeyRing::new(default);
    // Opened once per KEK however many routes share it.
    let mut opened: HashMap<&str, Arc<dyn Kms>> = HashMap::new();
    for r in &config.routes {
        if let Some(kek) = r.kek.as_deref() {
            let k = match opened.get(kek) {
                Some(k) => k.clone(),
                None => {
                    let k = open(kek)?;
                    opened.insert(kek, k.clone());
                    k
                }
            };
            ring = ring.scope(r.dek_scope(), k);
        }
    }
    for kek in &config.kms.decrypt_keks {
        ring = ring.member(open(kek)?);
    }
    Ok(Arc::new(ring))
}

impl Engine {
    /// Opens the KMS and unwraps the keyset.
    pub async fn start(config: Config) -> Result<Self, EngineError> {
        let kms = open_kms(&config).await?;
        Self::with_kms(config, kms).await
    }

    /// As [`start`](Self::start) with a given KMS (tests, other providers).
    pub async fn with_kms(config: Config, kms: Arc<dyn Kms>) -> Result<Self, EngineError> {
        let metrics = Arc::new(Metrics::new());
        // Every attempt is counted (instrumented inside), retries happen outside.
        let kms: Arc<dyn Kms> = Arc::new(Instrumented::new(kms, metrics.clone()));
        let kms: Arc<dyn Kms> = Arc::new(Resilient::new(kms, config.kms.retry_policy()));
        let keyset = Keyset::load(&config.keyset.file)?;
        let keys = KeyMaterial::unwrap(
            &keyset,
            &config.keyset.file,
            kms.as_ref(),
            &config.index_settings(),
        )
        .await?;
        let settings = config.dek_settings();
        let deks = DekManager::new(kms.clone(), Arc::new(SystemClock::default()), settings);
        let dek_cache = DekCache::new(kms.clone(), settings);
        metrics.watch_dek_stats("encrypt", deks.stats.clone());
        metrics.watch_dek_stats("decrypt", dek_cache.stats.clone());
        Ok(Engine {
            deks,
            dek_cache,
            metrics,
            keys: Arc::new(keys),
            kms,
            config,
            encryptors: PlanCache::default(),
            decryptors: PlanCache::default(),
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

    /// The encryptor for a writer schema, built on first use and cached.
    pub fn encryptor(
        &self,
        schema: &serde_json::Value,
        label: &str,
    ) -> Result<Arc<Encryptor>, EngineError> {
        self.encryptors.get_or_build(schema, || {
            let plan = self.encrypt_plan(schema, label)?;
            Ok(Encryptor::new(plan, &self.keys)?)
        })
    }

    /// The decryptor for an encrypted schema, built on first use and cached.
    pub fn decryptor(
        &self,
        schema: &serde_json::Value,
        label: &str,
    ) -> Result<Arc<Decryptor>, EngineError> {
        self.decryptors.get_or_build(schema, || {
            let plan = Arc::new(DecryptPlan::build_with_depth(
                schema,
                label,
                self.config.schema.max_depth,
            )?);
            Ok(Decryptor::new(plan, self.keys.clone()))
        })
    }
}
