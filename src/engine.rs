//! The engine: config, KMS, unwrapped keyset and DEK caches put together once at
//! start-up, and the per-schema encryptors and decryptors built from them. It is
//! the one entry point for encryption — file mode, the pipeline, the bench and the
//! tests all call [`Engine::encrypt`] — so DEK selection, the retry when a DEK runs
//! out of uses mid-record, and the encoded `fieldcrypt.dek` header live here once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::avro::binary::Cursor;
use crate::config::Config;
use crate::crypto::cipher::RandomizedKey;
use crate::keys::keyset::KeysetError;
use crate::keys::{
    Dek, DekCache, DekManager, DekSettings, Instrumented, KeyMaterial, Keyset, Kms, KmsError,
    Resilient, SystemClock, WrappedDek,
};
use crate::observe::Metrics;
use crate::schema::plan::{DecryptPlan, EncryptPlan};
use crate::schema::policy::MetadataTags;
use crate::schema::SchemaError;
use crate::transform::{Counts, Decryptor, Encryptor, TransformError, TransformErrorKind};

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
    config: Config,
    kms: Arc<dyn Kms>,
    keys: Arc<KeyMaterial>,
    /// Encrypt-side DEKs.
    deks: DekManager,
    /// Decrypt-side DEKs.
    dek_cache: DekCache,
    /// Every metric of this process (KMS calls and DEK caches are counted here).
    metrics: Arc<Metrics>,
    /// Plans are built once per schema (keyed by its JSON text).
    encryptors: PlanCache<Encryptor>,
    decryptors: PlanCache<Decryptor>,
}

/// One datum encrypted: what was done, and the DEK its randomized fields used
/// (whose wrapped form must travel with the data), if any.
#[derive(Debug)]
pub struct Encrypted {
    pub counts: Counts,
    pub dek: Option<Arc<Dek>>,
}

/// Why a datum was not encrypted.
#[derive(Debug, Error)]
pub enum EncryptFailure {
    /// The KMS failed: nothing is wrong with the record.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The record does not match its schema, or cannot be encrypted.
    #[error(transparent)]
    Record(TransformError),
    /// The record has more randomized fields than one DEK may encrypt.
    #[error("the record needs more randomized encryptions than dek.max_uses ({max_uses}) allows for one data key; raise dek.max_uses")]
    TooManyFields { max_uses: u64 },
}

impl EncryptFailure {
    /// The dead-letter code of a record-level failure (`None`: infrastructure).
    pub fn record_code(&self) -> Option<crate::codes::Code> {
        match self {
            EncryptFailure::Kms(_) => None,
            EncryptFailure::Record(e) => Some(e.code()),
            EncryptFailure::TooManyFields { .. } => Some(crate::codes::Code::DekExhausted),
        }
    }
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
        key: String,
        build: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
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

/// Opens one KEK as the config names them (`local:FILE`, `aws:KEY`, or unprefixed
/// for the `[kms]` provider's kind).
pub async fn open_kek(config: &Config, kek: &str) -> Result<Arc<dyn Kms>, KmsError> {
    crate::keys::provider::open_kek(&config.kms, kek).await
}

/// A local KEK file that does not exist: `keys init` when nothing depends on a
/// KEK yet; otherwise which KEK the keyset needs back (a new one could never
/// unwrap it).
pub fn check_local_kek(config: &Config) -> Result<(), EngineError> {
    let Some(path) = config.kms.kek_file() else {
        return Ok(());
    };
    if path.exists() {
        return Ok(());
    }
    let keyset = Keyset::load(&config.keyset.file)?;
    let mut keks: Vec<&str> = keyset
        .keys
        .iter()
        .filter(|k| k.kek.starts_with("local:"))
        .map(|k| k.kek.as_str())
        .collect();
    keks.sort_unstable();
    keks.dedup();
    let msg = if keks.is_empty() {
        format!(
            "KEK file {} does not exist; create it with `{}`",
            path.display(),
            config.command("keys init", "")
        )
    } else {
        format!(
            "KEK file {} does not exist, and keyset {} holds keys wrapped by KEK {}: restore that \
             KEK file to {} (from your secret store or backup); `fieldcrypt keys init` would create \
             a new KEK that cannot unwrap them",
            path.display(),
            config.keyset.file.display(),
            keks.join(" and "),
            path.display()
        )
    };
    Err(EngineError::Kms(KmsError::Config(msg)))
}

/// Opens the configured KMS as a key ring: the default KEK, each route's own KEK
/// for its data keys, and the unwrap-only `decrypt_keks`.
pub async fn open_kms(config: &Config) -> Result<Arc<dyn Kms>, KmsError> {
    let scoped = config
        .routes
        .iter()
        .filter_map(|r| r.kek.as_deref().map(|k| (r.dek_scope(), k)));
    crate::keys::provider::open_ring(&config.kms, scoped).await
}

impl Engine {
    /// Opens the KMS and unwraps the keyset. A missing or wrong local KEK is
    /// explained against the keyset: which KEK its keys need, and the command
    /// (with this config's `--config`) when a new KEK is the right answer.
    pub async fn start(config: Config) -> Result<Self, EngineError> {
        check_local_kek(&config)?;
        let kms = open_kms(&config).await?;
        let kek = config.kms.kek_file().map(Path::to_path_buf);
        let keys_list = config.command("keys list", "");
        Self::with_kms(config, kms).await.map_err(|e| match e {
            EngineError::Keyset(KeysetError::Unwrap {
                source: KmsError::WrongKek { expected, found },
                ..
            }) => EngineError::Kms(KmsError::Config(format!(
                "the keyset's keys are wrapped by KEK {found}, but {} is KEK {expected}: point \
                 kms.kek_file at the KEK file that wrapped them (`{keys_list}` shows each \
                 key's KEK), or add that KEK to kms.decrypt_keks if the keyset was rewrapped",
                kek.map_or_else(
                    || "the configured KEK".to_string(),
                    |p| format!("kms.kek_file {}", p.display())
                ),
            ))),
            e => e,
        })
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
        .await?
        .with_commands(config.command("keys create", ""));
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

    /// The configuration the engine was started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The KMS (a key ring behind the instrumented and resilient layers).
    pub fn kms(&self) -> &Arc<dyn Kms> {
        &self.kms
    }

    /// DEK lifetime settings.
    pub fn dek_settings(&self) -> &DekSettings {
        self.deks.settings()
    }

    /// Encrypts one datum for DEK scope `scope` into `out`: the scope's current DEK
    /// (fetched from the KMS when there is none, or when it retired), again with a
    /// fresh one if it runs out of uses mid-record. On error `out` is unchanged.
    pub async fn encrypt(
        &self,
        enc: &Encryptor,
        scope: &str,
        datum: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Encrypted, EncryptFailure> {
        self.with_dek(enc, scope, |dek| enc.encrypt(datum, dek, out))
            .await
    }

    /// As [`encrypt`](Self::encrypt) for the datum at `cur` (records back to back,
    /// as in container-file blocks); advances `cur` past it.
    pub async fn encrypt_next(
        &self,
        enc: &Encryptor,
        scope: &str,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Encrypted, EncryptFailure> {
        self.with_dek(enc, scope, |dek| enc.encrypt_next(cur, dek, out))
            .await
    }

    /// Runs `f` with the scope's current DEK (none when the schema needs none),
    /// retrying with a fresh DEK when the current one runs out mid-record; a record
    /// that even a fresh DEK cannot take is refused rather than looped on.
    async fn with_dek(
        &self,
        enc: &Encryptor,
        scope: &str,
        mut f: impl FnMut(Option<&Dek>) -> Result<Counts, TransformError>,
    ) -> Result<Encrypted, EncryptFailure> {
        if !enc.needs_dek() {
            let counts = f(None).map_err(EncryptFailure::Record)?;
            return Ok(Encrypted { counts, dek: None });
        }
        loop {
            let dek = self.deks.current(scope).await?;
            let fresh = dek.uses() == 0;
            match f(Some(&dek)) {
                Ok(counts) => {
                    let dek = (counts.randomized > 0).then_some(dek);
                    return Ok(Encrypted { counts, dek });
                }
                Err(e) if e.kind == TransformErrorKind::DekExhausted => {
                    if fresh {
                        return Err(EncryptFailure::TooManyFields {
                            max_uses: self.deks.settings().max_uses,
                        });
                    }
                }
                Err(e) => return Err(EncryptFailure::Record(e)),
            }
        }
    }

    /// The same encryptor writing randomized fields in ciphertext `version` (for
    /// comparing versions; the product writes `crypto.write_version`).
    pub fn encryptor_writing(
        &self,
        enc: &Encryptor,
        version: crate::crypto::format::Version,
    ) -> Result<Encryptor, EngineError> {
        Ok(Encryptor::new(enc.plan().clone(), &self.keys)?.writing(version))
    }

    /// The `fieldcrypt.dek` header value for a DEK, encoded once per DEK.
    pub fn dek_header(
        &self,
        dek: &Dek,
    ) -> Result<Arc<[u8]>, crate::kafka::headers::DekHeaderError> {
        dek.encoded(crate::kafka::headers::encode_dek)
    }

    /// The decrypt-side key of a wrapped DEK: unwrapped through the KMS once, then
    /// cached, bound to its scope, KEK and blob.
    pub async fn unwrap_dek(&self, w: &WrappedDek) -> Result<Arc<RandomizedKey>, KmsError> {
        self.dek_cache.get(w).await
    }

    /// The encrypt plan for a writer schema (`label` names it in errors).
    pub fn encrypt_plan(
        &self,
        schema: &serde_json::Value,
        label: &str,
    ) -> Result<Arc<EncryptPlan>, SchemaError> {
        self.encrypt_plan_tagged(schema, &[], label)
    }

    /// The plan for a registered schema whose `metadata.tags` give fields tags.
    pub fn encrypt_plan_tagged(
        &self,
        schema: &serde_json::Value,
        metadata: &MetadataTags,
        label: &str,
    ) -> Result<Arc<EncryptPlan>, SchemaError> {
        EncryptPlan::build_tagged(schema, metadata, label, &self.config.plan_config()).map(Arc::new)
    }

    /// The encryptor for a writer schema, built on first use and cached.
    pub fn encryptor(
        &self,
        schema: &serde_json::Value,
        label: &str,
    ) -> Result<Arc<Encryptor>, EngineError> {
        self.encryptor_tagged(schema, &[], label)
    }

    /// The encryptor for a registered writer schema with its `metadata.tags`.
    pub fn encryptor_tagged(
        &self,
        schema: &serde_json::Value,
        metadata: &MetadataTags,
        label: &str,
    ) -> Result<Arc<Encryptor>, EngineError> {
        let key = if metadata.is_empty() {
            schema.to_string()
        } else {
            format!("{schema}\u{0}{metadata:?}")
        };
        self.encryptors.get_or_build(key, || {
            let plan = self.encrypt_plan_tagged(schema, metadata, label)?;
            Ok(Encryptor::new(plan, &self.keys)?.writing(self.config.crypto.write_version()))
        })
    }

    /// The decryptor for an encrypted schema, built on first use and cached.
    pub fn decryptor(
        &self,
        schema: &serde_json::Value,
        label: &str,
    ) -> Result<Arc<Decryptor>, EngineError> {
        self.decryptors.get_or_build(schema.to_string(), || {
            let plan = Arc::new(DecryptPlan::build_with_depth(
                schema,
                label,
                self.config.schema.max_depth,
            )?);
            Ok(Decryptor::new(plan, self.keys.clone()).accepting(self.config.crypto.accepted()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::LocalKms;
    use serde_json::json;

    async fn engine(max_uses: u64) -> (Engine, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.dek.max_uses = max_uses;
        cfg.keyset.file = dir.path().join("keyset.json");
        Keyset::default().save(&cfg.keyset.file).unwrap();
        let kms: Arc<dyn Kms> = Arc::new(LocalKms::from_bytes(&[9; 32]).unwrap());
        (Engine::with_kms(cfg, kms).await.unwrap(), dir)
    }

    fn schema(randomized: usize) -> serde_json::Value {
        let fields: Vec<_> = (0..randomized)
            .map(|i| json!({"name": format!("f{i}"), "type": "string", "sensitive": true}))
            .collect();
        json!({"type": "record", "name": "R", "fields": fields})
    }

    fn datum(fields: usize) -> Vec<u8> {
        let mut d = Vec::new();
        for _ in 0..fields {
            crate::avro::binary::write_bytes(&mut d, b"value");
        }
        d
    }

    #[tokio::test]
    async fn a_dek_that_runs_out_mid_record_is_replaced_and_the_record_redone() {
        let (e, _dir) = engine(3).await;
        let enc = e.encryptor(&schema(2), "r").unwrap();
        let mut out = Vec::new();
        let a = e.encrypt(&enc, "s", &datum(2), &mut out).await.unwrap();
        let first = out.clone();
        out.clear();
        // One use left: the record needs two, so it is redone with a fresh DEK.
        let b = e.encrypt(&enc, "s", &datum(2), &mut out).await.unwrap();
        let (a, b) = (a.dek.unwrap(), b.dek.unwrap());
        assert_ne!(a.id(), b.id(), "a new DEK");
        assert_eq!(b.uses(), 2, "the record was redone whole with it");
        assert_eq!(
            out.len(),
            first.len(),
            "one copy of the output, not a partial one"
        );
        let h = e.dek_header(&b).unwrap();
        assert!(
            Arc::ptr_eq(&h, &e.dek_header(&b).unwrap()),
            "encoded once per DEK"
        );
        // And it decrypts.
        let dec = e.decryptor(&enc.plan().output_json, "o").unwrap();
        let mut deks = crate::transform::decrypt::DekSet::new();
        deks.insert(*b.id(), e.unwrap_dek(b.wrapped()).await.unwrap());
        let mut back = Vec::new();
        dec.decrypt(&out, &deks, &mut back).unwrap();
        assert_eq!(back, datum(2));
    }

    #[tokio::test]
    async fn a_record_no_dek_can_take_is_refused_not_looped_on() {
        let (e, _dir) = engine(3).await;
        let enc = e.encryptor(&schema(4), "r").unwrap();
        let mut out = Vec::new();
        let err = e.encrypt(&enc, "s", &datum(4), &mut out).await.unwrap_err();
        assert!(
            matches!(err, EncryptFailure::TooManyFields { max_uses: 3 }),
            "{err}"
        );
        assert_eq!(err.record_code(), Some(crate::codes::Code::DekExhausted));
        assert!(out.is_empty());
        // A schema with nothing randomized needs no DEK at all.
        let none = e.encryptor(&json!({"type": "string"}), "s").unwrap();
        let d = e.encrypt(&none, "s", b"\x02a", &mut out).await.unwrap();
        assert!(d.dek.is_none());
    }
}
