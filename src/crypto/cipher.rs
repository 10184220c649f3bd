//! The two field ciphers, each built once per key and shared across threads:
//! randomized AES-256-GCM (random 96-bit nonce from the thread-local CSPRNG, no
//! syscall per nonce) and deterministic AES-256-SIV. Both append a complete field
//! ciphertext (see [`super::format`]) to an output buffer without allocating.

use std::cell::RefCell;

use rand::RngCore;

use super::accel::Gcm256;
use super::format::{
    associated_data, Algorithm, Header, KeyId, Version, GCM_NONCE_LEN, GCM_TAG_LEN, HEADER_LEN,
    SIV_IV_LEN,
};
use super::siv::{Siv, SivPrefix};
use super::CryptoError;

thread_local! {
    static AD: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(128));
}

/// A randomized-mode key: AES-256-GCM with its key schedule expanded once.
/// The schedule is zeroized when the key is dropped.
pub struct RandomizedKey {
    id: KeyId,
    cipher: Gcm256,
}

impl std::fmt::Debug for RandomizedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RandomizedKey({})", hex::encode(self.id))
    }
}

impl RandomizedKey {
    /// Builds the cipher from 32 key bytes.
    pub fn new(id: KeyId, key: &[u8]) -> Result<Self, CryptoError> {
        let cipher = Gcm256::new(key).ok_or(CryptoError::KeyLength("AES-256-GCM"))?;
        Ok(RandomizedKey { id, cipher })
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// Appends the version 1 ciphertext of `plaintext` for field `context` to
    /// `out`. On error `out` is left as it was (never with the plaintext in it).
    pub fn seal_into(
        &self,
        context: &str,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        self.seal_in(Version::V1, context, plaintext, out)
    }

    /// As [`seal_into`](Self::seal_into) in format `version`.
    pub fn seal_in(
        &self,
        version: Version,
        context: &str,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let mut nonce = [0u8; GCM_NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        self.seal_with_nonce_in(version, &nonce, context, plaintext, out)
    }

    /// As [`seal_in`](Self::seal_in) with a caller-chosen nonce. Only for golden
    /// vectors and the fuzzer: reusing a nonce under one key destroys GCM's
    /// security.
    #[doc(hidden)]
    pub fn seal_with_nonce_in(
        &self,
        version: Version,
        nonce: &[u8; GCM_NONCE_LEN],
        context: &str,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let h = Header::new(version, Algorithm::Aes256Gcm, &self.id);
        let header = h.to_bytes();
        out.reserve(plaintext.len() + Algorithm::Aes256Gcm.overhead_in(version));
        let start = out.len();
        out.extend_from_slice(&header);
        out.extend_from_slice(nonce);
        let body = out.len();
        out.extend_from_slice(plaintext);
        // The associated data (format::associated_data) in parts, not copied.
        // GCM only refuses plaintexts over 64 GiB; fail closed all the same.
        let [hd, id] = Header::ad_parts(&header, h.version, &self.id);
        let tag = self
            .cipher
            .seal(nonce, &[hd, id, context.as_bytes()], &mut out[body..]);
        match tag {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(CryptoError::Malformed(
                    "plaintext too long for AES-GCM".into(),
                ))
            }
        }
    }

    /// Appends the plaintext of `ct` (for field `context`) to `out`. On failure
    /// `out` is left as it was.
    pub fn open_into(
        &self,
        context: &str,
        ct: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let header = Header::parse(ct)?;
        if header.algorithm != Algorithm::Aes256Gcm {
            return Err(CryptoError::Malformed(
                "not an AES-256-GCM ciphertext".into(),
            ));
        }
        if !header.key.matches(&self.id) {
            return Err(CryptoError::UnknownKey(header.key.hex()));
        }
        let hl = header.byte_len();
        let nonce: &[u8; GCM_NONCE_LEN] = ct[hl..hl + GCM_NONCE_LEN]
            .try_into()
            .expect("Header::parse checked the length");
        let body = &ct[hl + GCM_NONCE_LEN..ct.len() - GCM_TAG_LEN];
        let tag: &[u8; GCM_TAG_LEN] = ct[ct.len() - GCM_TAG_LEN..]
            .try_into()
            .expect("Header::parse checked the length");
        let start = out.len();
        out.extend_from_slice(body);
        let [hd, id] = Header::ad_parts(&ct[..hl], header.version, &self.id);
        let ad: [&[u8]; 3] = [hd, id, context.as_bytes()];
        let ok = self.cipher.open(nonce, &ad, &mut out[start..], tag).is_ok();
        if !ok {
            out.truncate(start);
            return Err(CryptoError::Authentication);
        }
        Ok(())
    }
}

/// A deterministic-mode key: AES-256-SIV (512-bit key), both key schedules
/// expanded once ([`super::siv`]); shared by threads without a lock.
pub struct DeterministicKey {
    id: KeyId,
    siv: Siv,
}

impl std::fmt::Debug for DeterministicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeterministicKey({})", hex::encode(self.id))
    }
}

impl DeterministicKey {
    /// Builds the cipher from 64 key bytes (MAC key, then encryption key).
    pub fn new(id: KeyId, key: &[u8]) -> Result<Self, CryptoError> {
        let siv = Siv::new(key).ok_or(CryptoError::KeyLength("AES-256-SIV"))?;
        Ok(DeterministicKey { id, siv })
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// Appends the deterministic ciphertext of `plaintext` for `context` to `out`.
    /// On error `out` is left as it was.
    pub fn seal_into(
        &self,
        context: &str,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        self.seal_field(&self.field_prefix(context), plaintext, out)
    }

    /// The part of every seal for field `context` that depends only on this key
    /// and the field (S2V over the associated data): built once per field by the
    /// encryptor, then given to [`seal_field`](Self::seal_field).
    pub fn field_prefix(&self, context: &str) -> SivPrefix {
        let header = self.header();
        AD.with(|ad| {
            let mut ad = ad.borrow_mut();
            let ad = associated_data(&header, context, &mut ad);
            self.siv.prefix(&[ad])
        })
    }

    /// As [`seal_into`](Self::seal_into) for the field whose
    /// [`field_prefix`](Self::field_prefix) is `prefix` (from this key).
    pub fn seal_field(
        &self,
        prefix: &SivPrefix,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let header = self.header();
        out.reserve(plaintext.len() + Algorithm::Aes256Siv.overhead());
        out.extend_from_slice(&header);
        let iv_at = out.len();
        out.extend_from_slice(&[0u8; SIV_IV_LEN]);
        let body = out.len();
        out.extend_from_slice(plaintext);
        let iv = self.siv.seal_after(prefix, &mut out[body..]);
        out[iv_at..body].copy_from_slice(&iv);
        Ok(())
    }

    /// Always version 1: SIV has no other layout, so equal values give equal
    /// bytes whatever version a writer is configured for.
    fn header(&self) -> super::format::HeaderBytes {
        Header::new(Version::V1, Algorithm::Aes256Siv, &self.id).to_bytes()
    }

    /// Appends the plaintext of `ct` to `out`; on failure `out` is unchanged.
    pub fn open_into(
        &self,
        context: &str,
        ct: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let header = Header::parse(ct)?;
        if header.algorithm != Algorithm::Aes256Siv {
            return Err(CryptoError::Malformed(
                "not an AES-256-SIV ciphertext".into(),
            ));
        }
        if !header.key.matches(&self.id) {
            return Err(CryptoError::UnknownKey(header.key.hex()));
        }
        // Parsing refuses SIV in any version but 1: the header is HEADER_LEN long.
        let iv = &ct[HEADER_LEN..HEADER_LEN + SIV_IV_LEN];
        let start = out.len();
        out.extend_from_slice(&ct[HEADER_LEN + SIV_IV_LEN..]);
        let ok = AD.with(|ad| {
            let mut ad = ad.borrow_mut();
            let ad = associated_data(&ct[..HEADER_LEN], context, &mut ad);
            self.siv.open(&[ad], &mut out[start..], iv).is_ok()
        });
        if !ok {
            out.truncate(start);
            return Err(CryptoError::Authentication);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcm() -> RandomizedKey {
        RandomizedKey::new([7u8; 16], &[1u8; 32]).unwrap()
    }

    fn siv() -> DeterministicKey {
        DeterministicKey::new([9u8; 16], &[2u8; 64]).unwrap()
    }

    #[test]
    fn gcm_round_trips_and_binds_the_context() {
        let k = gcm();
        let mut ct = Vec::new();
        k.seal_into("R.a", b"hello", &mut ct).unwrap();
        assert_eq!(ct.len(), 5 + Algorithm::Aes256Gcm.overhead());
        let mut pt = b"prefix".to_vec();
        k.open_into("R.a", &ct, &mut pt).unwrap();
        assert_eq!(pt, b"prefixhello");
        let mut pt = Vec::new();
        assert_eq!(
            k.open_into("R.b", &ct, &mut pt),
            Err(CryptoError::Authentication)
        );
        assert!(pt.is_empty());
        let mut other = Vec::new();
        k.seal_into("R.a", b"hello", &mut other).unwrap();
        assert_ne!(ct, other, "randomized mode never repeats a ciphertext");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let k = gcm();
        let d = siv();
        for key in 0..3 {
            let mut ct = Vec::new();
            match key {
                0 => k.seal_into("R.a", b"abc", &mut ct).unwrap(),
                1 => d.seal_into("R.a", b"abc", &mut ct).unwrap(),
                _ => k.seal_in(Version::V2, "R.a", b"abc", &mut ct).unwrap(),
            }
            for i in 0..ct.len() * 8 {
                let mut bad = ct.clone();
                bad[i / 8] ^= 1 << (i % 8);
                let r = if key == 1 {
                    d.open_into("R.a", &bad, &mut Vec::new())
                } else {
                    k.open_into("R.a", &bad, &mut Vec::new())
                };
                assert!(r.is_err(), "bit {i} flip went unnoticed");
            }
        }
    }

    #[test]
    fn siv_is_deterministic_per_context() {
        let d = siv();
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        d.seal_into("R.a", b"x@y.z", &mut a).unwrap();
        let mut p = Vec::new();
        d.seal_field(&d.field_prefix("R.a"), b"x@y.z", &mut p)
            .unwrap();
        assert_eq!(a, p, "a precomputed field prefix gives the same bytes");
        d.seal_into("R.a", b"x@y.z", &mut b).unwrap();
        d.seal_into("R.b", b"x@y.z", &mut c).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut pt = Vec::new();
        d.open_into("R.a", &a, &mut pt).unwrap();
        assert_eq!(pt, b"x@y.z");
        assert_eq!(
            d.open_into("R.b", &a, &mut Vec::new()),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn wrong_key_id_is_named() {
        let mut ct = Vec::new();
        gcm().seal_into("R.a", b"", &mut ct).unwrap();
        let other = RandomizedKey::new([8u8; 16], &[1u8; 32]).unwrap();
        assert!(matches!(
            other.open_into("R.a", &ct, &mut Vec::new()),
            Err(CryptoError::UnknownKey(_))
        ));
        assert!(matches!(
            gcm().open_into("R.a", &ct[..20], &mut Vec::new()),
            Err(CryptoError::Malformed(_))
        ));
    }

    #[test]
    fn version_2_is_8_bytes_shorter_and_binds_the_whole_key_id() {
        let k = gcm();
        let mut ct = Vec::new();
        k.seal_in(Version::V2, "R.a", b"hello", &mut ct).unwrap();
        assert_eq!(ct.len(), 5 + Algorithm::Aes256Gcm.overhead() - 8);
        assert_eq!((ct[0], ct[1]), (2, 1));
        let mut pt = Vec::new();
        k.open_into("R.a", &ct, &mut pt).unwrap();
        assert_eq!(pt, b"hello");
        // The same key bytes under an id that shares the stored 8 bytes: the
        // header matches, the associated data (the whole id) does not.
        let mut twin_id = [7u8; 16];
        twin_id[15] = 8;
        let twin = RandomizedKey::new(twin_id, &[1u8; 32]).unwrap();
        assert_eq!(
            twin.open_into("R.a", &ct, &mut Vec::new()),
            Err(CryptoError::Authentication)
        );
        // SIV has no version 2 layout: a "version 2" SIV header is malformed.
        let mut s = Vec::new();
        siv().seal_into("R.a", b"x", &mut s).unwrap();
        s[0] = 2;
        assert!(matches!(
            siv().open_into("R.a", &s, &mut Vec::new()),
            Err(CryptoError::Malformed(_))
        ));
    }

    /// A reader of version 1 only, written from docs/ENCRYPTION.md with the
    /// `aes-gcm` crate (not this module): what a release from before version 2
    /// does with a GCM field ciphertext.
    fn v1_only_reader(
        key: &[u8; 32],
        key_id: &[u8; 16],
        context: &str,
        ct: &[u8],
    ) -> Result<Vec<u8>, &'static str> {
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        if ct.len() < 46 || ct[0] != 1 {
            return Err("unknown format version");
        }
        if ct[1] != 1 || &ct[2..18] != key_id {
            return Err("not this key");
        }
        let mut aad = ct[..18].to_vec();
        aad.extend_from_slice(context.as_bytes());
        aes_gcm::Aes256Gcm::new_from_slice(key)
            .unwrap()
            .decrypt(
                aes_gcm::Nonce::from_slice(&ct[18..30]),
                Payload {
                    msg: &ct[30..],
                    aad: &aad,
                },
            )
            .map_err(|_| "authentication")
    }

    #[test]
    fn a_v1_only_reader_reads_a_writer_configured_for_v1_and_refuses_v2() {
        let k = gcm();
        let mut v1 = Vec::new();
        k.seal_in(Version::V1, "R.a", b"hello", &mut v1).unwrap();
        assert_eq!(
            v1_only_reader(&[1u8; 32], &[7u8; 16], "R.a", &v1).unwrap(),
            b"hello"
        );
        let mut v2 = Vec::new();
        k.seal_in(Version::V2, "R.a", b"hello", &mut v2).unwrap();
        assert_eq!(
            v1_only_reader(&[1u8; 32], &[7u8; 16], "R.a", &v2),
            Err("unknown format version")
        );
    }
}
