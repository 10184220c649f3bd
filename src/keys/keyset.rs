//! The keyset file: long-lived deterministic and blind-index keys, each wrapped by
//! the KEK, versioned per domain. It holds no plaintext key, so it is safe to commit
//! and must be identical on every instance (so equal plaintexts give equal
//! ciphertexts and indexes everywhere). [`KeyMaterial`] is its unwrapped, in-memory
//! form, built once at start-up.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::kms::{EncryptionContext, Kms, KmsError, WrappedKey};
use crate::crypto::blind_index::{BlindIndexKey, Normalize};
use crate::crypto::cipher::DeterministicKey;
use crate::crypto::format::KeyId;

const FORMAT: &str = "fieldcrypt-keyset";
const VERSION: u32 = 1;

/// What a keyset key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// AES-SIV key (64 bytes) for deterministic encryption.
    Deterministic,
    /// HMAC-SHA256 key (32 bytes) for blind indexes.
    BlindIndex,
}

impl Purpose {
    fn key_len(self) -> usize {
        match self {
            Purpose::Deterministic => 64,
            Purpose::BlindIndex => 32,
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Purpose::Deterministic => "deterministic",
            Purpose::BlindIndex => "blind-index",
        })
    }
}

/// One wrapped key in the keyset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysetEntry {
    /// Key id (32 hex digits), as written into every ciphertext it makes.
    pub id: String,
    pub purpose: Purpose,
    pub domain: String,
    /// Version within (purpose, domain); the highest is active.
    pub version: u32,
    /// When it was created (RFC 3339 UTC).
    pub created_at: String,
    /// The KEK that wrapped it.
    pub kek: String,
    /// The wrapped key, base64.
    pub wrapped: String,
}

impl KeysetEntry {
    fn context(&self) -> EncryptionContext {
        [
            ("fieldcrypt:purpose".to_string(), self.purpose.to_string()),
            ("fieldcrypt:domain".to_string(), self.domain.clone()),
            ("fieldcrypt:key-id".to_string(), self.id.clone()),
            ("fieldcrypt:version".to_string(), self.version.to_string()),
        ]
        .into()
    }

    fn key_id(&self) -> Result<KeyId, KeysetError> {
        let bad = || KeysetError::KeyId(self.id.clone());
        hex::decode(&self.id)
            .map_err(|_| bad())?
            .try_into()
            .map_err(|_| bad())
    }
}

/// The keyset file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keyset {
    pub format: String,
    pub version: u32,
    pub keys: Vec<KeysetEntry>,
}

impl Default for Keyset {
    fn default() -> Self {
        Keyset {
            format: FORMAT.into(),
            version: VERSION,
            keys: Vec::new(),
        }
    }
}

/// Keyset file problems.
#[derive(Debug, thiserror::Error)]
pub enum KeysetError {
    #[error("keyset file {path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{0}")]
    Missing(String),
    #[error("key id \"{0}\" is not 16 bytes in hex")]
    KeyId(String),
    #[error("keyset key {id} ({purpose} domain {domain}): {source}")]
    Unwrap {
        id: String,
        purpose: Purpose,
        domain: String,
        source: KmsError,
    },
    #[error(transparent)]
    Kms(#[from] KmsError),
}

impl Keyset {
    /// Loads a keyset; a missing file is an empty keyset (randomized-only setups
    /// need none).
    pub fn load(path: &Path) -> Result<Self, KeysetError> {
        let err = |msg: String| KeysetError::File {
            path: path.to_path_buf(),
            msg,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Keyset::default()),
            Err(e) => return Err(err(format!("cannot read: {e}"))),
        };
        let ks: Keyset =
            serde_json::from_str(&text).map_err(|e| err(format!("not a valid keyset: {e}")))?;
        if ks.format != FORMAT {
            return Err(err(format!(
                "format is \"{}\", expected \"{FORMAT}\"",
                ks.format
            )));
        }
        if ks.version != VERSION {
            return Err(err(format!(
                "keyset version {} is not supported (this fieldcrypt reads version {VERSION})",
                ks.version
            )));
        }
        let mut seen = HashMap::new();
        let mut ids = HashMap::new();
        for k in &ks.keys {
            k.key_id().map_err(|e| err(e.to_string()))?;
            if let Some(prev) = seen.insert((k.purpose, k.domain.clone(), k.version), &k.id) {
                return Err(err(format!(
                    "{} domain {} version {} appears twice (keys {prev} and {})",
                    k.purpose, k.domain, k.version, k.id
                )));
            }
            // Ciphertexts name their key by id: one id, one key.
            if let Some((p, d, v)) = ids.insert(&k.id, (k.purpose, &k.domain, k.version)) {
                return Err(err(format!(
                    "key id {} appears twice ({p} domain {d} version {v}, and {} domain {} version {}); the file was edited by hand or tampered with",
                    k.id, k.purpose, k.domain, k.version
                )));
            }
        }
        Ok(ks)
    }

    /// Writes the keyset atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<(), KeysetError> {
        let err = |msg: String| KeysetError::File {
            path: path.to_path_buf(),
            msg,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create its directory: {e}")))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(|e| err(format!("cannot write: {e}")))?;
        serde_json::to_writer_pretty(&mut tmp, self)
            .map_err(|e| err(format!("cannot write: {e}")))?;
        use std::io::Write;
        tmp.write_all(b"\n")
            .map_err(|e| err(format!("cannot write: {e}")))?;
        tmp.persist(path)
            .map_err(|e| err(format!("cannot replace: {e}")))?;
        Ok(())
    }

    /// The active (highest version) entry for a purpose and domain.
    pub fn active(&self, purpose: Purpose, domain: &str) -> Option<&KeysetEntry> {
        self.keys
            .iter()
            .filter(|k| k.purpose == purpose && k.domain == domain)
            .max_by_key(|k| k.version)
    }

    /// Creates a new key (version 1, or the next version if the domain exists) from
    /// the KMS and adds it. Returns the new entry.
    pub async fn create(
        &mut self,
        kms: &dyn Kms,
        purpose: Purpose,
        domain: &str,
    ) -> Result<KeysetEntry, KeysetError> {
        if domain.is_empty()
            || !domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(KeysetError::Missing(format!(
                "domain \"{domain}\" must be non-empty and use only letters, digits, '-', '_' and '.'"
            )));
        }
        let version = self.active(purpose, domain).map_or(1, |k| k.version + 1);
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let mut entry = KeysetEntry {
            id: hex::encode(id),
            purpose,
            domain: domain.to_string(),
            version,
            created_at: super::rfc3339(std::time::SystemTime::now()),
            kek: kms.kek_id().to_string(),
            wrapped: String::new(),
        };
        let dk = kms
            .generate_data_key(purpose.key_len(), &entry.context())
            .await?;
        entry.kek = dk.wrapped.kek.clone();
        entry.wrapped = base64::engine::general_purpose::STANDARD.encode(&dk.wrapped.blob);
        self.keys.push(entry.clone());
        Ok(entry)
    }
}

/// One keyset key moved onto a new KEK by [`Keyset::rewrap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrapped {
    pub id: String,
    pub purpose: Purpose,
    pub domain: String,
    pub version: u32,
    pub from: String,
    pub to: String,
    /// Re-encrypted inside the KMS (the key never reached this process).
    pub in_kms: bool,
}

impl Keyset {
    /// Adds a new active version of the domain's keys: of `purpose`, or of every
    /// purpose the domain has. Older versions stay for decryption.
    pub async fn rotate(
        &mut self,
        kms: &dyn Kms,
        domain: &str,
        purpose: Option<Purpose>,
    ) -> Result<Vec<KeysetEntry>, KeysetError> {
        let purposes: Vec<Purpose> = [Purpose::Deterministic, Purpose::BlindIndex]
            .into_iter()
            .filter(|p| purpose.is_none_or(|q| q == *p))
            .filter(|p| self.active(*p, domain).is_some())
            .collect();
        if purposes.is_empty() {
            let what = purpose.map_or("key".to_string(), |p| format!("{p} key"));
            return Err(KeysetError::Missing(format!(
                "domain \"{domain}\" has no {what} to rotate; create one with `fieldcrypt keys create --purpose deterministic --domain {domain}` or `fieldcrypt keys create --purpose blind-index --domain {domain}`"
            )));
        }
        let mut added = Vec::new();
        for p in purposes {
            added.push(self.create(kms, p, domain).await?);
        }
        Ok(added)
    }

    /// Re-encrypts every wrapped key under the KEK of `to`, through `from` (which
    /// must hold the current KEKs). Inside the KMS where it can (AWS ReEncrypt),
    /// else unwrapped in memory, wrapped again, and unwrapped once through `to` to
    /// prove it. The keyset changes only if every key moved. Data is not touched: ciphertexts name keys by id, not by KEK.
    pub async fn rewrap(
        &mut self,
        from: &dyn Kms,
        to: &dyn Kms,
    ) -> Result<Vec<Rewrapped>, KeysetError> {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut keys = self.keys.clone();
        let mut done = Vec::new();
        for e in keys.iter_mut() {
            let fail = |source: KmsError| KeysetError::Unwrap {
                id: e.id.clone(),
                purpose: e.purpose,
                domain: e.domain.clone(),
                source,
            };
            let ctx = e.context();
            let old = WrappedKey {
                kek: e.kek.clone(),
                blob: b64
                    .decode(&e.wrapped)
                    .map_err(|_| fail(KmsError::InvalidCiphertext))?,
            };
            let (new, in_kms) = match from.re_encrypt(&old, &ctx, to.kek_id()).await {
                Ok(Some(w)) => (w, true),
                Ok(None) => {
                    let pt = from.decrypt_data_key(&old, &ctx).await.map_err(fail)?;
                    let w = to.encrypt_data_key(&pt, &ctx).await.map_err(fail)?;
                    // Wrapped here: prove the new KEK gives the same key back.
                    // (ReEncrypt is checked by KMS itself; unwrapping its result here
                    // would bring the key into this process, which it exists to avoid.)
                    let back = to.decrypt_data_key(&w, &ctx).await.map_err(fail)?;
                    if back != pt {
                        return Err(fail(KmsError::InvalidCiphertext));
                    }
                    (w, false)
                }
                Err(err) => return Err(fail(err)),
            };
            done.push(Rewrapped {
                id: e.id.clone(),
                purpose: e.purpose,
                domain: e.domain.clone(),
                version: e.version,
                from: e.kek.clone(),
                to: new.kek.clone(),
                in_kms,
            });
            e.kek = new.kek;
            e.wrapped = b64.encode(&new.blob);
        }
        self.keys = keys;
        Ok(done)
    }
}

/// Per-domain blind-index settings.
#[derive(Debug, Clone)]
pub struct IndexSettings {
    /// Bytes of HMAC kept.
    pub length: usize,
    pub normalize: HashMap<String, Vec<Normalize>>,
}

/// Unwrapped keyset keys, ready for the ciphers.
#[derive(Debug, Default)]
pub struct KeyMaterial {
    deterministic: HashMap<String, Arc<DeterministicKey>>,
    deterministic_by_id: HashMap<KeyId, Arc<DeterministicKey>>,
    blind: HashMap<String, Arc<BlindIndexKey>>,
    keyset_path: PathBuf,
    /// `fieldcrypt keys create [--config FILE]`, for messages.
    keys_create: String,
}

impl KeyMaterial {
    /// Unwraps every key in the keyset through the KMS.
    pub async fn unwrap(
        keyset: &Keyset,
        keyset_path: &Path,
        kms: &dyn Kms,
        index: &IndexSettings,
    ) -> Result<Self, KeysetError> {
        let mut m = KeyMaterial {
            keyset_path: keyset_path.to_path_buf(),
            ..Default::default()
        };
        for e in &keyset.keys {
            let fail = |source: KmsError| KeysetError::Unwrap {
                id: e.id.clone(),
                purpose: e.purpose,
                domain: e.domain.clone(),
                source,
            };
            let blob = base64::engine::general_purpose::STANDARD
                .decode(&e.wrapped)
                .map_err(|_| fail(KmsError::InvalidCiphertext))?;
            let wrapped = WrappedKey {
                kek: e.kek.clone(),
                blob,
            };
            let pt = kms
                .decrypt_data_key(&wrapped, &e.context())
                .await
                .map_err(fail)?;
            let id = e.key_id()?;
            let bad = |_| fail(KmsError::InvalidCiphertext);
            let active = keyset
                .active(e.purpose, &e.domain)
                .map(|a| a.id == e.id)
                .unwrap_or(false);
            match e.purpose {
                Purpose::Deterministic => {
                    let k = Arc::new(DeterministicKey::new(id, &pt).map_err(bad)?);
                    m.deterministic_by_id.insert(id, k.clone());
                    if active {
                        m.deterministic.insert(e.domain.clone(), k);
                    }
                }
                Purpose::BlindIndex => {
                    if active {
                        let norm = index.normalize.get(&e.domain).cloned().unwrap_or_default();
                        let k = BlindIndexKey::new(id, &pt, index.length, norm).map_err(bad)?;
                        m.blind.insert(e.domain.clone(), Arc::new(k));
                    }
                }
            }
        }
        Ok(m)
    }

    /// Key material from keys already in memory (golden vectors and tools that
    /// derive keys themselves); production code unwraps a keyset instead.
    #[doc(hidden)]
    pub fn from_keys(
        deterministic: Vec<(String, Arc<DeterministicKey>)>,
        blind: Vec<(String, Arc<BlindIndexKey>)>,
    ) -> Self {
        let mut m = KeyMaterial::default();
        for (domain, k) in deterministic {
            m.deterministic_by_id.insert(*k.id(), k.clone());
            m.deterministic.insert(domain, k);
        }
        m.blind = blind.into_iter().collect();
        m
    }

    /// Sets the `keys create` command line that messages about missing keys
    /// suggest (with the config's `--config`).
    pub fn with_commands(mut self, keys_create: String) -> Self {
        self.keys_create = keys_create;
        self
    }

    /// Every key of `deterministic` and `index` domains the keyset lacks, in
    /// one error (one command per key), so a user fixes them in one go.
    pub fn check_available<'a>(
        &self,
        deterministic: impl IntoIterator<Item = &'a String>,
        index: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), KeysetError> {
        let mut missing: Vec<(Purpose, &str)> = deterministic
            .into_iter()
            .filter(|d| !self.deterministic.contains_key(*d))
            .map(|d| (Purpose::Deterministic, d.as_str()))
            .chain(
                index
                    .into_iter()
                    .filter(|d| !self.blind.contains_key(*d))
                    .map(|d| (Purpose::BlindIndex, d.as_str())),
            )
            .collect();
        missing.sort_by(|a, b| (a.0.to_string(), a.1).cmp(&(b.0.to_string(), b.1)));
        match missing.as_slice() {
            [] => Ok(()),
            [(p, d)] => Err(self.missing(*p, d)),
            many => {
                let create = if self.keys_create.is_empty() {
                    "fieldcrypt keys create"
                } else {
                    &self.keys_create
                };
                let cmds: Vec<String> = many
                    .iter()
                    .map(|(p, d)| {
                        format!(
                            "`{create} --purpose {p} --domain {}`",
                            crate::config::shell_word(d)
                        )
                    })
                    .collect();
                Err(KeysetError::Missing(format!(
                    "keyset {} lacks {} keys the schema needs; create them with {}",
                    self.keyset_path.display(),
                    many.len(),
                    cmds.join(", ")
                )))
            }
        }
    }

    fn missing(&self, purpose: Purpose, domain: &str) -> KeysetError {
        let create = if self.keys_create.is_empty() {
            "fieldcrypt keys create"
        } else {
            &self.keys_create
        };
        KeysetError::Missing(format!(
            "no {purpose} key for domain \"{domain}\" in keyset {}; create one with \
             `{create} --purpose {purpose} --domain {}`",
            self.keyset_path.display(),
            crate::config::shell_word(domain)
        ))
    }

    /// The active deterministic key of a domain.
    pub fn deterministic(&self, domain: &str) -> Result<Arc<DeterministicKey>, KeysetError> {
        self.deterministic
            .get(domain)
            .cloned()
            .ok_or_else(|| self.missing(Purpose::Deterministic, domain))
    }

    /// Any version of a deterministic key, by id (decryption).
    pub fn deterministic_by_id(&self, id: &KeyId) -> Option<&Arc<DeterministicKey>> {
        self.deterministic_by_id.get(id)
    }

    /// The active blind-index key of a domain.
    pub fn blind_index(&self, domain: &str) -> Result<Arc<BlindIndexKey>, KeysetError> {
        self.blind
            .get(domain)
            .cloned()
            .ok_or_else(|| self.missing(Purpose::BlindIndex, domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::LocalKms;

    /// Every way of editing a keyset by hand is refused at load or unwrap, naming
    /// the key: each wrapped key is bound to its id, purpose, domain and version.
    #[tokio::test]
    async fn a_tampered_keyset_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyset.json");
        let kms = LocalKms::from_bytes(&[4; 32]).unwrap();
        let mut ks = Keyset::default();
        ks.create(&kms, Purpose::Deterministic, "pii")
            .await
            .unwrap();
        ks.create(&kms, Purpose::Deterministic, "pii")
            .await
            .unwrap();
        ks.create(&kms, Purpose::BlindIndex, "email").await.unwrap();
        let idx = IndexSettings {
            length: 16,
            normalize: HashMap::new(),
        };
        let unwrap_err = |ks: Keyset| {
            let path = path.clone();
            let kms = &kms;
            let idx = &idx;
            async move {
                ks.save(&path).unwrap();
                match Keyset::load(&path) {
                    Err(e) => e.to_string(),
                    Ok(loaded) => KeyMaterial::unwrap(&loaded, &path, kms, idx)
                        .await
                        .map(|_| ())
                        .unwrap_err()
                        .to_string(),
                }
            }
        };
        let mut swapped = ks.clone();
        let w0 = swapped.keys[0].wrapped.clone();
        swapped.keys[0].wrapped = swapped.keys[2].wrapped.clone();
        swapped.keys[2].wrapped = w0;
        let e = unwrap_err(swapped).await;
        assert!(
            e.contains(&ks.keys[0].id) && e.contains("failed to unwrap"),
            "{e}"
        );
        for edit in [
            |k: &mut KeysetEntry| k.domain = "other".into(),
            |k: &mut KeysetEntry| k.version = 9,
            |k: &mut KeysetEntry| k.purpose = Purpose::BlindIndex,
            |k: &mut KeysetEntry| k.id = "00".repeat(16),
        ] {
            let mut t = ks.clone();
            edit(&mut t.keys[1]);
            let e = unwrap_err(t).await;
            assert!(e.contains("failed to unwrap") || e.contains("twice"), "{e}");
        }
        let mut dup = ks.clone();
        dup.keys[2].id = dup.keys[0].id.clone();
        let e = unwrap_err(dup).await;
        assert!(e.contains("appears twice"), "{e}");
        // Another KEK named: the key ring (as engines open it) has no such KEK.
        // (The local blob carries its KEK's fingerprint too, so a bare local KMS
        // would unwrap with the right KEK whatever the file says.)
        let mut other_kek = ks.clone();
        other_kek.keys[0].kek = format!("local:{}", "ab".repeat(8));
        other_kek.save(&path).unwrap();
        let ring = crate::keys::KeyRing::new(Arc::new(LocalKms::from_bytes(&[4; 32]).unwrap()));
        let e = KeyMaterial::unwrap(&Keyset::load(&path).unwrap(), &path, &ring, &idx)
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to KEK"), "{e}");
    }

    #[tokio::test]
    async fn create_save_load_unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyset.json");
        let kms = LocalKms::from_bytes(&[4; 32]).unwrap();
        let mut ks = Keyset::load(&path).unwrap();
        ks.create(&kms, Purpose::Deterministic, "default")
            .await
            .unwrap();
        let v2 = ks
            .create(&kms, Purpose::Deterministic, "default")
            .await
            .unwrap();
        ks.create(&kms, Purpose::BlindIndex, "email").await.unwrap();
        assert_eq!(v2.version, 2);
        ks.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let loaded = Keyset::load(&path).unwrap();
        assert_eq!(loaded, ks);
        let idx = IndexSettings {
            length: 16,
            normalize: HashMap::new(),
        };
        let m = KeyMaterial::unwrap(&loaded, &path, &kms, &idx)
            .await
            .unwrap();
        assert_eq!(hex::encode(m.deterministic("default").unwrap().id()), v2.id);
        assert_eq!(
            m.deterministic_by_id.len(),
            2,
            "old versions stay for decryption"
        );
        let e = m.blind_index("phone").unwrap_err().to_string();
        assert!(e.contains("--purpose blind-index --domain phone"), "{e}");
        // The file names keys and KEKs but holds no unwrapped key material.
        assert!(text.contains("\"wrapped\""));

        let wrong = LocalKms::from_bytes(&[9; 32]).unwrap();
        let e = KeyMaterial::unwrap(&loaded, &path, &wrong, &idx)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to KEK"), "{e}");
    }

    #[tokio::test]
    async fn rotate_adds_versions_and_rewrap_moves_every_key() {
        let old = LocalKms::from_bytes(&[4; 32]).unwrap();
        let new = LocalKms::from_bytes(&[5; 32]).unwrap();
        let mut ks = Keyset::default();
        ks.create(&old, Purpose::Deterministic, "pii")
            .await
            .unwrap();
        ks.create(&old, Purpose::BlindIndex, "pii").await.unwrap();
        ks.create(&old, Purpose::BlindIndex, "email").await.unwrap();
        let e = ks.rotate(&old, "nope", None).await.unwrap_err().to_string();
        assert!(
            e.contains("no key to rotate") && e.contains("keys create"),
            "{e}"
        );
        let added = ks.rotate(&old, "pii", None).await.unwrap();
        assert_eq!(added.len(), 2, "both purposes of the domain rotate");
        assert!(added.iter().all(|k| k.version == 2));
        let added = ks
            .rotate(&old, "email", Some(Purpose::BlindIndex))
            .await
            .unwrap();
        assert_eq!(added[0].version, 2);
        let idx = IndexSettings {
            length: 16,
            normalize: HashMap::new(),
        };
        let path = Path::new("keyset.json");
        let before = KeyMaterial::unwrap(&ks, path, &old, &idx).await.unwrap();

        let snapshot = ks.clone();
        let moved = ks.rewrap(&old, &new).await.unwrap();
        assert_eq!(moved.len(), 6);
        assert!(moved.iter().all(|m| !m.in_kms && m.to == new.kek_id()));
        assert!(ks.keys.iter().all(|k| k.kek == new.kek_id()));
        // Same keys (ids, versions), now only under the new KEK.
        let after = KeyMaterial::unwrap(&ks, path, &new, &idx).await.unwrap();
        let det = |m: &KeyMaterial| m.deterministic("pii").unwrap().id().to_vec();
        assert_eq!(det(&before), det(&after));
        assert_eq!(after.deterministic_by_id.len(), 2);
        assert!(KeyMaterial::unwrap(&ks, path, &old, &idx).await.is_err());

        // A rewrap that cannot unwrap changes nothing.
        let mut again = snapshot.clone();
        let stranger = LocalKms::from_bytes(&[6; 32]).unwrap();
        assert!(again.rewrap(&stranger, &new).await.is_err());
        assert_eq!(again, snapshot);
    }
}
