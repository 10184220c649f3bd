//! The key ring: every KEK this process may use, as one [`Kms`]. New data keys are
//! wrapped by the KEK of their scope (a route or tenant that names its own KEK, read
//! from the `fieldcrypt:scope` of the encryption context) or by the default KEK;
//! unwrapping goes to whichever KEK the wrapped key names, so data of every tenant,
//! and data wrapped before a KEK change, stays readable.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::kms::{DataKey, EncryptionContext, Kms, KmsError, WrappedKey};

/// The context key naming a data key's scope (see [`super::dek`]).
pub const SCOPE_KEY: &str = "fieldcrypt:scope";

/// A default KEK, per-scope KEKs, and KEKs kept for unwrapping only.
#[derive(Debug)]
pub struct KeyRing {
    default: Arc<dyn Kms>,
    by_scope: HashMap<String, Arc<dyn Kms>>,
    /// Every member, default first, for unwrapping.
    members: Vec<Arc<dyn Kms>>,
}

impl KeyRing {
    pub fn new(default: Arc<dyn Kms>) -> Self {
        KeyRing {
            members: vec![default.clone()],
            default,
            by_scope: HashMap::new(),
        }
    }

    /// Data keys of `scope` are wrapped by `kms`.
    pub fn scope(mut self, scope: impl Into<String>, kms: Arc<dyn Kms>) -> Self {
        self.by_scope.insert(scope.into(), kms.clone());
        self.member(kms)
    }

    /// `kms` may unwrap, but wraps nothing new.
    pub fn member(mut self, kms: Arc<dyn Kms>) -> Self {
        if !self.members.iter().any(|m| m.kek_id() == kms.kek_id()) {
            self.members.push(kms);
        }
        self
    }

    fn for_context(&self, ctx: &EncryptionContext) -> &Arc<dyn Kms> {
        ctx.get(SCOPE_KEY)
            .and_then(|s| self.by_scope.get(s))
            .unwrap_or(&self.default)
    }

    fn owner(&self, kek: &str) -> Result<&Arc<dyn Kms>, KmsError> {
        // An exact match first (a local KEK), then a provider that takes any key
        // of its kind (AWS decides by the key named and by IAM).
        self.members
            .iter()
            .find(|m| m.kek_id() == kek)
            .or_else(|| self.members.iter().find(|m| m.owns(kek)))
            .ok_or_else(|| KmsError::WrongKek {
                expected: self
                    .members
                    .iter()
                    .map(|m| m.kek_id().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                found: kek.to_string(),
            })
    }
}

#[async_trait]
impl Kms for KeyRing {
    fn kek_id(&self) -> &str {
        self.default.kek_id()
    }

    fn owns(&self, kek: &str) -> bool {
        self.owner(kek).is_ok()
    }

    async fn generate_data_key(
        &self,
        len: usize,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        self.for_context(ctx).generate_data_key(len, ctx).await
    }

    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        self.owner(&wrapped.kek)?
            .decrypt_data_key(wrapped, ctx)
            .await
    }

    async fn encrypt_data_key(
        &self,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        self.for_context(ctx).encrypt_data_key(plaintext, ctx).await
    }

    async fn re_encrypt(
        &self,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
        dest: &str,
    ) -> Result<Option<WrappedKey>, KmsError> {
        self.owner(&wrapped.kek)?
            .re_encrypt(wrapped, ctx, dest)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::LocalKms;

    fn ctx(scope: &str) -> EncryptionContext {
        [(SCOPE_KEY.to_string(), scope.to_string())].into()
    }

    #[tokio::test]
    async fn wraps_by_scope_and_unwraps_by_the_kek_named() {
        let a: Arc<dyn Kms> = Arc::new(LocalKms::from_bytes(&[1; 32]).unwrap());
        let t: Arc<dyn Kms> = Arc::new(LocalKms::from_bytes(&[2; 32]).unwrap());
        let old: Arc<dyn Kms> = Arc::new(LocalKms::from_bytes(&[3; 32]).unwrap());
        let ring = KeyRing::new(a.clone())
            .scope("tenant:t", t.clone())
            .member(old.clone());

        let dk = ring.generate_data_key(32, &ctx("tenant:t")).await.unwrap();
        assert_eq!(
            dk.wrapped.kek,
            t.kek_id(),
            "the tenant's KEK wraps its keys"
        );
        let dk2 = ring.generate_data_key(32, &ctx("route:x")).await.unwrap();
        assert_eq!(dk2.wrapped.kek, a.kek_id(), "others get the default");
        // Unwrapping needs no scope lookup: the wrapped key names its KEK.
        let back = ring
            .decrypt_data_key(&dk.wrapped, &ctx("tenant:t"))
            .await
            .unwrap();
        assert_eq!(*back, *dk.plaintext);
        // A key wrapped by an unwrap-only member.
        let w = old.encrypt_data_key(&[9; 32], &ctx("s")).await.unwrap();
        assert_eq!(
            *ring.decrypt_data_key(&w, &ctx("s")).await.unwrap(),
            [9; 32]
        );
        // One the ring does not hold is named in the error.
        let stranger = LocalKms::from_bytes(&[4; 32]).unwrap();
        let w = stranger
            .encrypt_data_key(&[9; 32], &ctx("s"))
            .await
            .unwrap();
        let e = ring.decrypt_data_key(&w, &ctx("s")).await.unwrap_err();
        assert!(
            matches!(&e, KmsError::WrongKek { found, .. } if found == stranger.kek_id()),
            "{e}"
        );
        // Moving a tenant's wrapped key to another scope fails to unwrap.
        assert_eq!(
            ring.decrypt_data_key(&dk.wrapped, &ctx("tenant:u"))
                .await
                .unwrap_err(),
            KmsError::InvalidCiphertext
        );
    }
}
