//! The KMS interface: generate a data key (plaintext + wrapped under the KEK), unwrap
//! one, wrap given bytes, and re-wrap under another KEK. Every call carries an
//! encryption context that the KMS binds to the wrapped key, so a wrapped key used
//! out of its context fails to unwrap.

use std::collections::BTreeMap;

use async_trait::async_trait;
use thiserror::Error;
use zeroize::Zeroizing;

/// Key/value pairs bound to a wrapped key (AWS KMS "EncryptionContext").
pub type EncryptionContext = BTreeMap<String, String>;

/// A data key wrapped by a KEK; safe to store and transmit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Which KEK wrapped it (`local:<fingerprint>`, an AWS key ARN, ...).
    pub kek: String,
    pub blob: Vec<u8>,
}

/// A fresh data key.
pub struct DataKey {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub wrapped: WrappedKey,
}

/// KMS failures, classified so callers know whether to retry.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum KmsError {
    /// The KMS could not be reached or is throttling: retry later.
    #[error("KMS unavailable: {0}")]
    Unavailable(String),
    /// The KMS refused the request for this caller or key (including a disabled
    /// or deleted key: a crypto-shredded tenant).
    #[error("KMS denied access: {0}")]
    AccessDenied(String),
    /// The wrapped key names a KEK this KMS does not have.
    #[error("wrapped key belongs to KEK {found}, but this process uses {expected}; point the config at the KEK that wrapped it (kms.decrypt_keks keeps a KEK for unwrapping only)")]
    WrongKek { expected: String, found: String },
    /// The wrapped key is corrupt or its encryption context does not match.
    #[error("wrapped key failed to unwrap: it is corrupt, or was wrapped for another purpose, domain or key id")]
    InvalidCiphertext,
    /// The KMS is misconfigured (missing KEK file, bad key id, ...).
    #[error("{0}")]
    Config(String),
    /// A wrapped DEK arrived with the id of one already unwrapped but a different
    /// scope, KEK or blob: a forged or altered header, refused without a KMS call.
    #[error("the fieldcrypt.dek header's key id was seen before with a different scope, KEK or wrapped key: a forged or altered header")]
    BindingMismatch,
}

impl KmsError {
    /// Worth retrying with backoff?
    pub fn is_retriable(&self) -> bool {
        matches!(self, KmsError::Unavailable(_))
    }
}

/// A key management service holding one KEK.
#[async_trait]
pub trait Kms: Send + Sync + std::fmt::Debug {
    /// Identifies the KEK, as recorded in [`WrappedKey::kek`].
    fn kek_id(&self) -> &str;

    /// Generates `len` random key bytes and wraps them under the KEK. The
    /// default draws them from the thread-local CSPRNG and wraps them with
    /// [`encrypt_data_key`](Self::encrypt_data_key); a KMS that generates keys
    /// itself (AWS GenerateDataKey) overrides it.
    async fn generate_data_key(
        &self,
        len: usize,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let mut plaintext = Zeroizing::new(vec![0u8; len]);
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut plaintext);
        let wrapped = self.encrypt_data_key(&plaintext, ctx).await?;
        Ok(DataKey { plaintext, wrapped })
    }

    /// Unwraps a data key; the context must equal the one it was generated with.
    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError>;

    /// Wraps given key bytes under the KEK (rewrapping onto this KEK).
    async fn encrypt_data_key(
        &self,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError>;

    /// Can this KMS unwrap keys that [`WrappedKey::kek`] says `kek` wrapped?
    fn owns(&self, kek: &str) -> bool {
        kek == self.kek_id()
    }

    /// Re-wraps a key under the KEK `dest` inside the KMS, so its plaintext never
    /// reaches this process (AWS ReEncrypt). `None`: this KMS cannot, and the
    /// caller unwraps and wraps instead.
    async fn re_encrypt(
        &self,
        _wrapped: &WrappedKey,
        _ctx: &EncryptionContext,
        _dest: &str,
    ) -> Result<Option<WrappedKey>, KmsError> {
        Ok(None)
    }
}
