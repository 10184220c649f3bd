//! Data encryption keys (DEKs) for randomized encryption.
//!
//! Encrypt side, [`DekManager`]: one current DEK per scope (route or tenant), fetched
//! from the KMS on first use and retired when it reaches its age limit (TTL) or its
//! usage limit, whichever comes first. Decrypt side, [`DekCache`]: unwrapped DEKs by
//! key id, so each wrapped key costs one KMS call however many records use it.
//!
//! A DEK is an `Arc` handle: eviction drops the cache's reference, and the cipher
//! (with its key schedule) is zeroized when the last in-flight user lets go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use rand::RngCore;

use super::clock::Clock;
use super::kms::{EncryptionContext, Kms, KmsError, WrappedKey};
use crate::crypto::cipher::RandomizedKey;
use crate::crypto::format::KeyId;

/// Random-nonce AES-GCM must stay far below 2^32 encryptions per key
/// (NIST SP 800-38D §8.3); the default is 2^24, a collision chance below 2^-48.
pub const DEFAULT_MAX_USES: u64 = 1 << 24;
/// Hard ceiling accepted for `dek.max_uses`.
pub const MAX_USES_CEILING: u64 = 1 << 32;

/// DEK lifetime settings.
#[derive(Debug, Clone, Copy)]
pub struct DekSettings {
    /// Age at which a DEK is retired.
    pub ttl: Duration,
    /// Field encryptions after which a DEK is retired.
    pub max_uses: u64,
    /// Most DEKs held per cache (scopes on the encrypt side, key ids on the decrypt side).
    pub capacity: u64,
}

impl Default for DekSettings {
    fn default() -> Self {
        DekSettings {
            ttl: Duration::from_secs(15 * 60),
            max_uses: DEFAULT_MAX_USES,
            capacity: 10_000,
        }
    }
}

/// A wrapped DEK as it travels with the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedDek {
    pub id: KeyId,
    /// The scope (route/tenant) it was generated for; part of its encryption context.
    pub scope: String,
    pub wrapped: WrappedKey,
}

impl WrappedDek {
    /// The encryption context the KMS binds to this DEK.
    pub fn context(&self) -> EncryptionContext {
        dek_context(&self.id, &self.scope)
    }
}

fn dek_context(id: &KeyId, scope: &str) -> EncryptionContext {
    [
        ("fieldcrypt:purpose".to_string(), "dek".to_string()),
        ("fieldcrypt:key-id".to_string(), hex::encode(id)),
        (super::ring::SCOPE_KEY.to_string(), scope.to_string()),
    ]
    .into()
}

/// A live DEK on the encrypt side.
#[derive(Debug)]
pub struct Dek {
    key: RandomizedKey,
    wrapped: WrappedDek,
    created: Duration,
    max_uses: u64,
    uses: AtomicU64,
    /// The wrapped DEK as it travels with the data (a record header), encoded once.
    encoded: std::sync::OnceLock<Arc<[u8]>>,
}

impl Dek {
    /// The wrapped DEK encoded by `encode`, computed on first use and kept with the
    /// DEK (so a busy scope encodes its header once, not once per record).
    pub fn encoded<E>(
        &self,
        encode: impl FnOnce(&WrappedDek) -> Result<Vec<u8>, E>,
    ) -> Result<Arc<[u8]>, E> {
        if let Some(v) = self.encoded.get() {
            return Ok(v.clone());
        }
        let v: Arc<[u8]> = encode(&self.wrapped)?.into();
        Ok(self.encoded.get_or_init(|| v).clone())
    }

    pub fn id(&self) -> &KeyId {
        self.key.id()
    }

    pub fn key(&self) -> &RandomizedKey {
        &self.key
    }

    pub fn wrapped(&self) -> &WrappedDek {
        &self.wrapped
    }

    /// Claims one encryption; false once the usage limit is reached (the caller then
    /// asks the manager for a fresh DEK). The limit is never exceeded.
    #[inline]
    pub fn try_use(&self) -> bool {
        self.try_use_n(1)
    }

    /// Claims `n` encryptions at once (one atomic operation for a record's
    /// fields); all or none: a refused claim leaves the key retired.
    pub fn try_use_n(&self, n: u64) -> bool {
        self.uses
            .fetch_add(n, Ordering::Relaxed)
            .checked_add(n)
            .is_some_and(|after| after <= self.max_uses)
    }

    /// Encryptions claimed so far (may exceed the limit by refused claims).
    pub fn uses(&self) -> u64 {
        self.uses.load(Ordering::Relaxed)
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct DekStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub retired_ttl: AtomicU64,
    pub retired_uses: AtomicU64,
}

/// Hands out the current DEK per scope, rotating on TTL and usage.
#[derive(Debug)]
pub struct DekManager {
    kms: Arc<dyn Kms>,
    clock: Arc<dyn Clock>,
    settings: DekSettings,
    current: Cache<String, Arc<Dek>>,
    /// The DEK last handed out per scope, read first: one read lock and one hash
    /// lookup per record instead of moka's bookkeeping (which costs more than the
    /// field encryption it serves). Entries are checked for retirement on every
    /// read, replaced when their DEK retires, and the map is cleared when it
    /// reaches `settings.capacity` scopes.
    hot: std::sync::RwLock<HashMap<Box<str>, Arc<Dek>, foldhash::fast::RandomState>>,
    pub stats: Arc<DekStats>,
}

impl DekManager {
    pub fn new(kms: Arc<dyn Kms>, clock: Arc<dyn Clock>, settings: DekSettings) -> Self {
        let current = Cache::builder()
            .max_capacity(settings.capacity)
            // Backstop for the real clock; retirement proper is checked against
            // the injected clock in `current`.
            .time_to_live(settings.ttl)
            .build();
        DekManager {
            kms,
            clock,
            settings,
            current,
            hot: Default::default(),
            stats: Arc::default(),
        }
    }

    pub fn settings(&self) -> &DekSettings {
        &self.settings
    }

    /// The DEK to use now for `scope`, generating one from the KMS if there is none
    /// or the current one is retired. Concurrent callers share one KMS call.
    pub async fn current(&self, scope: &str) -> Result<Arc<Dek>, KmsError> {
        let hot = self
            .hot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(scope)
            .cloned();
        if let Some(d) = hot {
            if self.usable(&d) {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(d);
            }
        }
        let d = self.current_slow(scope).await?;
        let mut hot = self.hot.write().unwrap_or_else(|p| p.into_inner());
        if hot.len() >= self.settings.capacity as usize && !hot.contains_key(scope) {
            hot.clear();
        }
        hot.insert(scope.into(), d.clone());
        Ok(d)
    }

    /// Neither too old nor used up?
    fn usable(&self, d: &Dek) -> bool {
        self.clock.now().saturating_sub(d.created) < self.settings.ttl
            && d.uses() < self.settings.max_uses
    }

    async fn current_slow(&self, scope: &str) -> Result<Arc<Dek>, KmsError> {
        for _ in 0..4 {
            if let Some(d) = self.current.get(scope).await {
                if self.clock.now().saturating_sub(d.created) >= self.settings.ttl {
                    self.stats.retired_ttl.fetch_add(1, Ordering::Relaxed);
                    self.current.invalidate(scope).await;
                } else if d.uses() >= self.settings.max_uses {
                    self.stats.retired_uses.fetch_add(1, Ordering::Relaxed);
                    self.current.invalidate(scope).await;
                } else {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(d);
                }
            }
            let fresh = self
                .current
                .try_get_with(scope.to_string(), self.generate(scope))
                .await
                .map_err(|e: Arc<KmsError>| (*e).clone())?;
            if fresh.uses() < self.settings.max_uses {
                return Ok(fresh);
            }
        }
        Err(KmsError::Unavailable(
            "could not obtain a fresh data key: every new key was used up at once".into(),
        ))
    }

    async fn generate(&self, scope: &str) -> Result<Arc<Dek>, KmsError> {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let dk = self
            .kms
            .generate_data_key(32, &dek_context(&id, scope))
            .await?;
        let key = RandomizedKey::new(id, &dk.plaintext)
            .map_err(|e| KmsError::Config(format!("KMS returned an unusable data key: {e}")))?;
        tracing::debug!(dek = %hex::encode(id), scope, "generated data key");
        Ok(Arc::new(Dek {
            key,
            wrapped: WrappedDek {
                id,
                scope: scope.to_string(),
                wrapped: dk.wrapped,
            },
            created: self.clock.now(),
            max_uses: self.settings.max_uses,
            uses: AtomicU64::new(0),
            encoded: std::sync::OnceLock::new(),
        }))
    }
}

/// Decrypt side: unwrapped DEKs by key id, each bound to everything its wrapped
/// form was bound to (scope, KEK, wrapped blob). A header that reuses a known id
/// with a different binding is refused: the KMS checked the first binding only.
#[derive(Debug)]
pub struct DekCache {
    kms: Arc<dyn Kms>,
    cache: Cache<KeyId, Arc<BoundKey>>,
    pub stats: Arc<DekStats>,
}

/// An unwrapped DEK and the digest of what unwrapping it was bound to.
#[derive(Debug)]
struct BoundKey {
    binding: [u8; 32],
    key: Arc<RandomizedKey>,
}

/// SHA-256 of the scope, KEK id and wrapped blob, each length-prefixed.
fn binding(w: &WrappedDek) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [
        w.scope.as_bytes(),
        w.wrapped.kek.as_bytes(),
        &w.wrapped.blob,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

impl DekCache {
    pub fn new(kms: Arc<dyn Kms>, settings: DekSettings) -> Self {
        DekCache {
            kms,
            cache: Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_idle(settings.ttl)
                .build(),
            stats: Arc::default(),
        }
    }

    /// The key for a wrapped DEK, unwrapping it through the KMS on first sight.
    pub async fn get(&self, w: &WrappedDek) -> Result<Arc<RandomizedKey>, KmsError> {
        let want = binding(w);
        let bound = match self.cache.get(&w.id).await {
            Some(b) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                b
            }
            None => self
                .cache
                .try_get_with(w.id, async {
                    self.stats.misses.fetch_add(1, Ordering::Relaxed);
                    let pt = self.kms.decrypt_data_key(&w.wrapped, &w.context()).await?;
                    let key = RandomizedKey::new(w.id, &pt)
                        .map(Arc::new)
                        .map_err(|_| KmsError::InvalidCiphertext)?;
                    Ok(Arc::new(BoundKey { binding: want, key }))
                })
                .await
                .map_err(|e: Arc<KmsError>| (*e).clone())?,
        };
        // Equal digests of public values: no need for a constant-time compare.
        if bound.binding != want {
            return Err(KmsError::BindingMismatch);
        }
        Ok(bound.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{LocalKms, ManualClock};

    fn manager(clock: Arc<ManualClock>, max_uses: u64) -> DekManager {
        let kms: Arc<dyn Kms> = Arc::new(LocalKms::from_bytes(&[1; 32]).unwrap());
        DekManager::new(
            kms,
            clock,
            DekSettings {
                ttl: Duration::from_secs(60),
                max_uses,
                capacity: 10,
            },
        )
    }

    #[tokio::test]
    async fn rotates_on_ttl_with_injected_clock() {
        let clock = Arc::new(ManualClock::default());
        let m = manager(clock.clone(), 1000);
        let a = m.current("s").await.unwrap();
        clock.advance(Duration::from_secs(59));
        let b = m.current("s").await.unwrap();
        assert_eq!(a.id(), b.id(), "still inside the TTL");
        clock.advance(Duration::from_secs(1));
        let c = m.current("s").await.unwrap();
        assert_ne!(a.id(), c.id(), "retired at the TTL");
        assert_eq!(m.stats.retired_ttl.load(Ordering::Relaxed), 1);
        assert_eq!(m.stats.misses.load(Ordering::Relaxed), 2);
        let other = m.current("t").await.unwrap();
        assert_ne!(other.id(), c.id(), "scopes never share a DEK");
    }

    #[tokio::test]
    async fn usage_limit_is_never_exceeded() {
        let clock = Arc::new(ManualClock::default());
        let m = manager(clock, 3);
        let a = m.current("s").await.unwrap();
        assert!(a.try_use() && a.try_use() && a.try_use());
        assert!(!a.try_use(), "fourth use refused");
        let b = m.current("s").await.unwrap();
        assert_ne!(a.id(), b.id());
        assert_eq!(m.stats.retired_uses.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_record_claims_its_fields_at_once_or_not_at_all() {
        let m = manager(Arc::new(ManualClock::default()), 5);
        let b = m.current("s").await.unwrap();
        assert!(b.try_use_n(3));
        assert!(!b.try_use_n(3), "a claim past the limit is refused whole");
        assert!(!b.try_use(), "and the key stays retired");
        let c = m.current("s").await.unwrap();
        assert_ne!(b.id(), c.id(), "the next record gets a fresh key");
    }

    #[tokio::test]
    async fn decrypt_cache_unwraps_once_and_checks_context() {
        let clock = Arc::new(ManualClock::default());
        let m = manager(clock, 10);
        let d = m.current("s").await.unwrap();
        let cache = DekCache::new(m.kms.clone(), DekSettings::default());
        let k1 = cache.get(d.wrapped()).await.unwrap();
        let k2 = cache.get(d.wrapped()).await.unwrap();
        assert!(Arc::ptr_eq(&k1, &k2));
        assert_eq!(cache.stats.misses.load(Ordering::Relaxed), 1);
        let mut moved = d.wrapped().clone();
        moved.scope = "other-tenant".into();
        moved.id = [0xee; 16];
        assert_eq!(
            cache.get(&moved).await.unwrap_err(),
            KmsError::InvalidCiphertext
        );
        // A known id with another scope, KEK or blob is refused from the cache,
        // without a KMS call.
        let misses = cache.stats.misses.load(Ordering::Relaxed);
        for forge in [
            |w: &mut WrappedDek| w.scope = "tenant:evil".into(),
            |w: &mut WrappedDek| w.wrapped.kek = "local:0000000000000000".into(),
            |w: &mut WrappedDek| w.wrapped.blob.push(0),
        ] {
            let mut f = d.wrapped().clone();
            forge(&mut f);
            assert_eq!(cache.get(&f).await.unwrap_err(), KmsError::BindingMismatch);
        }
        assert_eq!(cache.stats.misses.load(Ordering::Relaxed), misses);
        assert!(
            cache.get(d.wrapped()).await.is_ok(),
            "the genuine one still works"
        );
    }
}
