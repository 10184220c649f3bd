//! The DEKs of Confluent's format: read from the DEK Registry (created there when
//! an encrypting route needs one and it is missing), unwrapped by the KEK's KMS
//! (`local-kms` from a secret in the environment, `aws-kms` through AWS KMS with
//! no encryption context, as Confluent's clients wrap them), and cached: one
//! registry fetch and one unwrap per (KEK, subject, algorithm, version).

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use zeroize::Zeroizing;

use super::crypto::{Algorithm, Dek};
use super::rules::EncryptRule;
use crate::keys::driver::Clients;
use crate::keys::{EncryptionContext, Kms, KmsConfig, KmsError, Provider, WrappedKey};
use crate::registry::dek::{DekVersion, NewDek, NewKek};
use crate::registry::{Registry, RegistryError};

pub use super::local_kms::LOCAL_SECRET_ENV;

/// Why a DEK of Confluent's format is not available. None of these is about one
/// record: the pipeline waits (unavailable) or stops (the rest).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CsfleKeyError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("KMS for KEK {kek}: {source}")]
    Kms { kek: String, source: KmsError },
    #[error("KEK {0} is not in the DEK Registry and schema_registry.auto_register is false: create it first")]
    NoKek(String),
    #[error("DEK for KEK {kek}, subject {subject}, version {version} ({algorithm}) is not in the DEK Registry")]
    NoDek {
        kek: String,
        subject: String,
        version: u32,
        algorithm: &'static str,
    },
    #[error(
        "KEK {kek} is of KMS type {kms_type}, which fieldcrypt does not speak ({})",
        Provider::confluent_types()
    )]
    UnsupportedKms { kek: String, kms_type: String },
    #[error("KEK {kek} in the DEK Registry names KMS {found}, but the rule says {expected}: refusing to wrap or unwrap data keys with a KEK the rule does not name (fix the rule's encrypt.kms.type / encrypt.kms.key.id, or the KEK)")]
    KekMismatch {
        kek: String,
        expected: String,
        found: String,
    },
    #[error("DEK for KEK {kek}, subject {subject}, version {version}: {msg}")]
    BadDek {
        kek: String,
        subject: String,
        version: u32,
        msg: String,
    },
}

impl CsfleKeyError {
    /// Worth waiting for (the registry or the KMS is unreachable)?
    pub fn is_transient(&self) -> bool {
        match self {
            CsfleKeyError::Registry(e) => matches!(e, RegistryError::Unavailable { .. }),
            CsfleKeyError::Kms { source, .. } => source.is_retriable(),
            _ => false,
        }
    }
}

/// A KEK from the DEK Registry must be the one the rule names: its KMS type and
/// key, where the rule sets them (as Confluent's clients check). Otherwise whoever
/// created the KEK name first would choose the key that wraps every new DEK.
fn check_kek(rule: &EncryptRule, kek: &crate::registry::dek::Kek) -> Result<(), CsfleKeyError> {
    let type_ok = rule
        .kms_type
        .as_ref()
        .is_none_or(|t| t.eq_ignore_ascii_case(&kek.kms_type));
    let key_ok = rule
        .kms_key_id
        .as_ref()
        .is_none_or(|k| *k == kek.kms_key_id);
    if type_ok && key_ok {
        return Ok(());
    }
    Err(CsfleKeyError::KekMismatch {
        kek: rule.kek_name.clone(),
        expected: format!(
            "{} {}",
            rule.kms_type.as_deref().unwrap_or("(any type)"),
            rule.kms_key_id.as_deref().unwrap_or("(any key)")
        ),
        found: format!("{} {}", kek.kms_type, kek.kms_key_id),
    })
}

type DekKey = (String, String, &'static str, u32);

/// DEKs by (KEK, subject, algorithm, version), and the latest version per
/// (KEK, subject, algorithm) for routes whose DEKs expire.
pub struct CsfleKeys {
    registry: Arc<dyn Registry>,
    /// What the KMS drivers open KEKs with (clients built on first use).
    clients: Clients,
    /// Each (KMS type, key id) opened once through its driver.
    opened: Cache<(&'static str, String), Arc<dyn Kms>>,
    auto_register: bool,
    deks: Cache<DekKey, Arc<Dek>>,
    latest: Cache<(String, String, &'static str), (u32, i64)>,
}

impl std::fmt::Debug for CsfleKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsfleKeys")
            .field("opened_keks", &self.opened.entry_count())
            .field("cached_deks", &self.deks.entry_count())
            .finish()
    }
}

impl CsfleKeys {
    /// `kms`: the `[kms]` config, whose provider settings the drivers use (AWS
    /// KMS's region and endpoint when the provider is AWS); the `local-kms` secret
    /// is read from the environment when a `local-kms` KEK is first used.
    pub fn new(
        registry: Arc<dyn Registry>,
        kms: &KmsConfig,
        auto_register: bool,
        capacity: u64,
    ) -> Self {
        CsfleKeys {
            registry,
            clients: Clients::new(kms),
            opened: Cache::builder().max_capacity(1_000).build(),
            auto_register,
            deks: Cache::builder().max_capacity(capacity).build(),
            // Short: another writer may rotate the subject's DEK.
            latest: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    /// The DEK a rule encrypts with for `subject`, and the version to write in
    /// the prefix (`None` when the rule writes none). Missing KEK and DEK are
    /// created (with `auto_register`); with expiry, a DEK older than the rule's
    /// days is followed by a new version.
    pub async fn write_key(
        &self,
        rule: &EncryptRule,
        subject: &str,
    ) -> Result<(Arc<Dek>, Option<u32>), CsfleKeyError> {
        let alg = rule.algorithm;
        if !rule.versioned() {
            let dek = match self.read_key(rule, subject, 1).await {
                Ok(d) => d,
                Err(CsfleKeyError::NoDek { .. }) => self.create(rule, subject, 1).await?,
                Err(e) => return Err(e),
            };
            return Ok((dek, None));
        }
        let lkey = (rule.kek_name.clone(), subject.to_string(), alg.name());
        let (version, ts) = match self.latest.get(&lkey).await {
            Some(v) => v,
            None => {
                let d = self
                    .registry
                    .dek(
                        &rule.kek_name,
                        subject,
                        DekVersion::Latest,
                        alg.name(),
                        false,
                    )
                    .await?;
                let v = match d {
                    Some(d) => (d.version as u32, d.ts.unwrap_or(0)),
                    None => {
                        self.create(rule, subject, 1).await?;
                        (1, now_ms())
                    }
                };
                self.latest.insert(lkey.clone(), v).await;
                v
            }
        };
        let age_days = (now_ms() - ts) as f64 / 86_400_000.0;
        let version = if age_days > f64::from(rule.expiry_days) {
            // As Confluent's clients: a new version when the latest is too old;
            // if another writer made it first, theirs is read back.
            let next = version + 1;
            self.create(rule, subject, next).await?;
            self.latest.insert(lkey, (next, now_ms())).await;
            next
        } else {
            version
        };
        Ok((self.read_key(rule, subject, version).await?, Some(version)))
    }

    /// The DEK of `version` for `subject` under the rule's KEK, unwrapped.
    pub async fn read_key(
        &self,
        rule: &EncryptRule,
        subject: &str,
        version: u32,
    ) -> Result<Arc<Dek>, CsfleKeyError> {
        let alg = rule.algorithm;
        let key: DekKey = (
            rule.kek_name.clone(),
            subject.to_string(),
            alg.name(),
            version,
        );
        self.deks
            .try_get_with(key, self.fetch(rule, subject, version, alg))
            .await
            .map_err(|e: Arc<CsfleKeyError>| (*e).clone())
    }

    async fn fetch(
        &self,
        rule: &EncryptRule,
        subject: &str,
        version: u32,
        alg: Algorithm,
    ) -> Result<Arc<Dek>, CsfleKeyError> {
        let bad = |msg: String| CsfleKeyError::BadDek {
            kek: rule.kek_name.clone(),
            subject: subject.to_string(),
            version,
            msg,
        };
        let dek = self
            .registry
            .dek(
                &rule.kek_name,
                subject,
                DekVersion::Number(version as i32),
                alg.name(),
                true,
            )
            .await?
            .ok_or_else(|| CsfleKeyError::NoDek {
                kek: rule.kek_name.clone(),
                subject: subject.to_string(),
                version,
                algorithm: alg.name(),
            })?;
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let kek = self
            .registry
            .kek(&rule.kek_name)
            .await?
            .ok_or_else(|| CsfleKeyError::NoKek(rule.kek_name.clone()))?;
        check_kek(rule, &kek)?;
        let proto = match (&dek.key_material, &dek.encrypted_key_material) {
            // A shared KEK: the registry hands out the key itself. Only then:
            // key material for a KEK that is not shared is a key of the
            // registry's choosing, never of the KMS's.
            (Some(k), _) if kek.shared => Zeroizing::new(
                b64.decode(k.as_bytes())
                    .map_err(|e| bad(format!("keyMaterial is not base64: {e}")))?,
            ),
            (Some(_), _) => return Err(bad(
                "the DEK Registry handed out plaintext key material for a KEK that is not shared"
                    .into(),
            )),
            (None, Some(w)) => {
                let blob = b64
                    .decode(w)
                    .map_err(|e| bad(format!("encryptedKeyMaterial is not base64: {e}")))?;
                self.unwrap(&rule.kek_name, &kek.kms_type, &kek.kms_key_id, &blob)
                    .await?
            }
            (None, None) => return Err(bad("it has no key material".into())),
        };
        Dek::from_proto(alg, &proto)
            .map(Arc::new)
            .map_err(|e| bad(e.to_string()))
    }

    /// Creates the KEK (if missing) and DEK `version` for `subject`, then reads it
    /// back (another writer may have created it first).
    async fn create(
        &self,
        rule: &EncryptRule,
        subject: &str,
        version: u32,
    ) -> Result<Arc<Dek>, CsfleKeyError> {
        if !self.auto_register {
            return Err(CsfleKeyError::NoDek {
                kek: rule.kek_name.clone(),
                subject: subject.to_string(),
                version,
                algorithm: rule.algorithm.name(),
            });
        }
        let kek = match self.registry.kek(&rule.kek_name).await? {
            Some(k) => k,
            None => {
                let (Some(kms_type), Some(kms_key_id)) = (&rule.kms_type, &rule.kms_key_id) else {
                    return Err(CsfleKeyError::NoKek(rule.kek_name.clone()));
                };
                self.registry
                    .create_kek(&NewKek {
                        name: rule.kek_name.clone(),
                        kms_type: kms_type.clone(),
                        kms_key_id: kms_key_id.clone(),
                        shared: false,
                    })
                    .await?
            }
        };
        check_kek(rule, &kek)?;
        let fresh = Dek::generate(rule.algorithm).map_err(|e| CsfleKeyError::BadDek {
            kek: rule.kek_name.clone(),
            subject: subject.to_string(),
            version,
            msg: e.to_string(),
        })?;
        let wrapped = self
            .wrap(
                &rule.kek_name,
                &kek.kms_type,
                &kek.kms_key_id,
                &fresh.to_proto(),
            )
            .await?;
        use base64::Engine as _;
        self.registry
            .create_dek(
                &rule.kek_name,
                &NewDek {
                    subject: subject.to_string(),
                    version: version as i32,
                    algorithm: rule.algorithm.name().to_string(),
                    encrypted_key_material: Some(
                        base64::engine::general_purpose::STANDARD.encode(wrapped),
                    ),
                },
            )
            .await?;
        tracing::info!(kek = %rule.kek_name, subject, version, algorithm = rule.algorithm.name(), "created a DEK in the DEK Registry");
        self.read_key(rule, subject, version).await
    }

    async fn wrap(
        &self,
        kek: &str,
        kms_type: &str,
        kms_key_id: &str,
        proto: &[u8],
    ) -> Result<Vec<u8>, CsfleKeyError> {
        let kms_err = |source| CsfleKeyError::Kms {
            kek: kek.into(),
            source,
        };
        self.kms(kek, kms_type, kms_key_id)
            .await?
            .encrypt_data_key(proto, &EncryptionContext::new())
            .await
            .map(|w| w.blob)
            .map_err(kms_err)
    }

    async fn unwrap(
        &self,
        kek: &str,
        kms_type: &str,
        kms_key_id: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CsfleKeyError> {
        let kms = self.kms(kek, kms_type, kms_key_id).await?;
        kms.decrypt_data_key(
            &WrappedKey {
                kek: kms_key_id.to_string(),
                blob: blob.to_vec(),
            },
            &EncryptionContext::new(),
        )
        .await
        .map_err(|source| CsfleKeyError::Kms {
            kek: kek.into(),
            source,
        })
    }

    /// The KEK `kek` of Confluent type `kms_type`, opened by its driver once.
    async fn kms(
        &self,
        kek: &str,
        kms_type: &str,
        kms_key_id: &str,
    ) -> Result<Arc<dyn Kms>, CsfleKeyError> {
        let Some(p) = Provider::of_confluent_type(kms_type) else {
            return Err(CsfleKeyError::UnsupportedKms {
                kek: kek.into(),
                kms_type: kms_type.into(),
            });
        };
        let key = (p.name(), kms_key_id.to_string());
        self.opened
            .try_get_with(key, p.driver().open_confluent(kms_key_id, &self.clients))
            .await
            .map_err(|e: Arc<KmsError>| CsfleKeyError::Kms {
                kek: kek.into(),
                source: (*e).clone(),
            })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
