//! Confluent's `local-kms` (for tests and demos, as in Confluent's serdes): the KEK
//! is derived from a shared secret, and a DEK proto is wrapped with Tink's raw
//! AES-128-GCM.
//!
//! ```text
//! KEK16             = HKDF-SHA256(ikm = utf8(secret), salt = none, info = "", L = 16)
//! encryptedKeyMaterial = IV(12) || AES-128-GCM(KEK16, IV, dek_proto, aad = "") || tag(16)
//! ```
//!
//! The secret comes from the rule's `secret` config (or `LOCAL_SECRET`); the
//! `kmsKeyId` plays no part. Hides the derived key (zeroized on drop).

use std::fmt;

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes128Gcm;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::crypto::{CsfleError, GCM_IV_LEN, GCM_TAG_LEN};
use crate::keys::{EncryptionContext, Kms, KmsError, WrappedKey};

/// Derives the local-kms KEK from its secret: RFC 5869 HKDF-SHA256 with no salt
/// (32 zero bytes), empty info, 16 bytes out, i.e. `PRK = HMAC(0^32, secret)`,
/// `KEK = HMAC(PRK, 0x01)[..16]`.
pub fn kek_from_secret(secret: &str) -> Zeroizing<[u8; 16]> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut extract =
        <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).expect("HMAC accepts any key length");
    extract.update(secret.as_bytes());
    let mut prk = extract.finalize().into_bytes();
    let mut expand =
        <Hmac<Sha256> as Mac>::new_from_slice(&prk).expect("HMAC accepts any key length");
    prk.as_mut_slice().zeroize();
    expand.update(&[0x01]);
    let mut okm = expand.finalize().into_bytes();
    let mut kek = Zeroizing::new([0u8; 16]);
    kek.copy_from_slice(&okm[..16]);
    okm.as_mut_slice().zeroize();
    kek
}

/// A local-kms KEK, its AES-128-GCM key schedule built once.
pub struct LocalKek {
    cipher: Aes128Gcm,
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalKek(..)")
    }
}

impl LocalKek {
    /// The KEK a Confluent client with this `secret` uses.
    pub fn from_secret(secret: &str) -> LocalKek {
        LocalKek::new(&kek_from_secret(secret))
    }

    /// A KEK from its 16 derived bytes.
    pub fn new(kek: &[u8; 16]) -> LocalKek {
        LocalKek {
            cipher: Aes128Gcm::new(GenericArray::from_slice(kek)),
        }
    }

    /// Wraps a serialized DEK proto (see [`super::crypto::Dek::to_proto`]) with a
    /// fresh random IV: the `encryptedKeyMaterial` bytes (base64 them for JSON).
    pub fn wrap(&self, dek_proto: &[u8]) -> Result<Vec<u8>, CsfleError> {
        let mut iv = [0u8; GCM_IV_LEN];
        rand::rng().fill_bytes(&mut iv);
        self.wrap_with_iv(&iv, dek_proto)
    }

    /// As [`wrap`](Self::wrap) with a chosen IV. For golden vectors only: reusing
    /// an IV under one KEK destroys GCM's security.
    pub(crate) fn wrap_with_iv(
        &self,
        iv: &[u8; GCM_IV_LEN],
        dek_proto: &[u8],
    ) -> Result<Vec<u8>, CsfleError> {
        let mut out = Vec::with_capacity(GCM_IV_LEN + dek_proto.len() + GCM_TAG_LEN);
        out.extend_from_slice(iv);
        out.extend_from_slice(dek_proto);
        match self.cipher.encrypt_in_place_detached(
            GenericArray::from_slice(iv),
            b"",
            &mut out[GCM_IV_LEN..],
        ) {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(out)
            }
            Err(_) => {
                // Never hand back (or leave behind) the clear proto.
                out.zeroize();
                Err(CsfleError::Encrypt("DEK proto too long for AES-GCM"))
            }
        }
    }

    /// Unwraps `encryptedKeyMaterial` bytes to the serialized DEK proto (parse it
    /// with [`super::crypto::Dek::from_proto`]).
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CsfleError> {
        let min = GCM_IV_LEN + GCM_TAG_LEN;
        if wrapped.len() < min {
            return Err(CsfleError::TooShort {
                what: "wrapped DEK",
                len: wrapped.len(),
                min,
            });
        }
        let (iv, rest) = wrapped.split_at(GCM_IV_LEN);
        let (ct, tag) = rest.split_at(rest.len() - GCM_TAG_LEN);
        let mut proto = Zeroizing::new(ct.to_vec());
        self.cipher
            .decrypt_in_place_detached(
                GenericArray::from_slice(iv),
                b"",
                &mut proto,
                GenericArray::from_slice(tag),
            )
            .map_err(|_| CsfleError::Unwrap)?;
        Ok(proto)
    }
}

/// The environment variables holding the `local-kms` secret, in order (the
/// second is the one Confluent's clients read).
pub const LOCAL_SECRET_ENV: [&str; 2] = ["FIELDCRYPT_LOCAL_KMS_SECRET", "LOCAL_SECRET"];

/// Confluent's `local-kms` as a [`Kms`] (the local driver's Confluent side):
/// wraps and unwraps DEK protos with the secret's KEK. It binds no encryption
/// context, as Confluent's clients bind none, so a non-empty one is refused
/// rather than silently ignored.
pub struct ConfluentLocalKms {
    kek: LocalKek,
}

impl fmt::Debug for ConfluentLocalKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfluentLocalKms(..)")
    }
}

impl ConfluentLocalKms {
    pub fn new(kek: LocalKek) -> Self {
        ConfluentLocalKms { kek }
    }

    /// The KEK of the secret in [`LOCAL_SECRET_ENV`].
    pub fn from_env() -> Result<Self, KmsError> {
        LOCAL_SECRET_ENV
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .map(|s| ConfluentLocalKms::new(LocalKek::from_secret(&Zeroizing::new(s))))
            .ok_or_else(|| {
                KmsError::Config(
                    "local-kms needs its secret: put it in FIELDCRYPT_LOCAL_KMS_SECRET (or LOCAL_SECRET)"
                        .into(),
                )
            })
    }

    fn no_context(ctx: &EncryptionContext) -> Result<(), KmsError> {
        if ctx.is_empty() {
            Ok(())
        } else {
            Err(KmsError::Config(
                "Confluent's local-kms binds no encryption context".into(),
            ))
        }
    }
}

#[async_trait::async_trait]
impl Kms for ConfluentLocalKms {
    fn kek_id(&self) -> &str {
        "local-kms"
    }

    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        Self::no_context(ctx)?;
        self.kek
            .unwrap(&wrapped.blob)
            .map_err(|_| KmsError::InvalidCiphertext)
    }

    async fn encrypt_data_key(
        &self,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        Self::no_context(ctx)?;
        let blob = self
            .kek
            .wrap(plaintext)
            .map_err(|_| KmsError::Config("local-kms could not wrap the DEK".into()))?;
        Ok(WrappedKey {
            kek: self.kek_id().to_string(),
            blob,
        })
    }
}

#[cfg(test)]
mod tests;
