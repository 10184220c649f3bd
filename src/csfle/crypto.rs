//! Confluent CSFLE field ciphertexts and DEKs, byte for byte as Confluent's serdes
//! (through Tink) write and read them. Pure: bytes and keys in, bytes out.
//!
//! ```text
//! field ciphertext = [0x00 || u32be(dek_version)]        only when the rule sets
//!                                                        encrypt.dek.expiry.days > 0
//!                    || AES128_GCM / AES256_GCM: IV(12) || AES-GCM(key, IV, pt, aad = "") || tag(16)
//!                    || AES256_SIV: SIV(16) || AES-CTR(pt), RFC 5297 with ONE empty AD component
//! string field     = standard padded base64 of the field ciphertext
//! bytes field      = the field ciphertext
//! DEK              = serialized Tink key proto: AesGcmKey {1: version = 0, 3: key_value}
//!                    or AesSivKey {1: version = 0, 2: key_value} (64 bytes, MAC key first)
//! ```
//!
//! Hides the Tink key protos, the ciphers built once per DEK, and the raw key
//! (zeroized on drop). Errors say which check failed, never what a key or a
//! plaintext held. Pinned by `tests/golden/csfle_vectors.json` (tests in
//! `super::local_kms`) and the upstream vectors below.

use std::fmt;
use std::str::FromStr;

use crate::crypto::accel::Gcm256;
use crate::crypto::siv::{Siv, SivPrefix};
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes128Gcm;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore;
use thiserror::Error;
use zeroize::Zeroizing;

/// Byte 0 of the DEK-version prefix (Confluent's `_MAGIC_BYTE_V0`).
pub const VERSION_MAGIC: u8 = 0x00;
/// Length of the DEK-version prefix: the magic byte and a big-endian u32.
pub const VERSION_PREFIX_LEN: usize = 5;
/// AES-GCM nonce length (Tink's raw AES-GCM output starts with it).
pub const GCM_IV_LEN: usize = 12;
/// AES-GCM tag length.
pub const GCM_TAG_LEN: usize = 16;
/// AES-SIV synthetic IV length.
pub const SIV_LEN: usize = 16;

/// The single, empty associated-data component every CSFLE AES-SIV call uses
/// (Tink's `encrypt_deterministically(pt, b"")`). Zero components give another SIV.
const SIV_HEADERS: [&[u8]; 1] = [b""];

/// Why a CSFLE ciphertext, DEK or KEK could not be produced or opened. No variant
/// carries key bytes or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CsfleError {
    /// A DEK algorithm name Confluent does not define.
    #[error("unknown DEK algorithm {0:?} (expected AES128_GCM, AES256_GCM or AES256_SIV)")]
    UnknownAlgorithm(String),
    /// The DEK bytes are not a serialized Tink key proto for the algorithm.
    #[error("not a Tink {algorithm} key proto: {reason}")]
    KeyProto {
        /// The algorithm the DEK was declared with.
        algorithm: &'static str,
        /// What was wrong (a field, a length or a version; never key bytes).
        reason: String,
    },
    /// Input shorter than its fixed layout.
    #[error("{what} is {len} bytes, shorter than the minimum {min}")]
    TooShort {
        /// What was being read.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The least length it can have.
        min: usize,
    },
    /// A DEK-version prefix was expected but byte 0 is not 0x00.
    #[error("DEK-version prefix must start with 0x00, found 0x{0:02x}")]
    VersionPrefix(u8),
    /// The field ciphertext failed its tag/SIV check.
    #[error(
        "field ciphertext failed authentication (tampered, wrong DEK, or a DEK-version \
         prefix expected where there is none or the reverse)"
    )]
    Authentication,
    /// The local-kms wrapped DEK failed its tag check.
    #[error("wrapped DEK failed authentication (wrong local-kms secret, or tampered)")]
    Unwrap,
    /// A string field is not standard padded base64 (details withheld: the text
    /// may be a plaintext that was never encrypted).
    #[error("field text is not standard padded base64 ({len} bytes)")]
    Base64 {
        /// Length of the text.
        len: usize,
    },
    /// The cipher refused to encrypt (AES-GCM: plaintext over 64 GiB).
    #[error("cannot encrypt: {0}")]
    Encrypt(&'static str),
    /// The operating system's random number generator failed.
    #[error("the OS random number generator failed")]
    Rng,
}

/// A DEK algorithm, as named in the rule's `encrypt.dek.algorithm` and the DEK
/// Registry's `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// AES-128-GCM, randomized.
    Aes128Gcm,
    /// AES-256-GCM, randomized (Confluent's default).
    #[default]
    Aes256Gcm,
    /// AES-256-SIV (512-bit key), deterministic.
    Aes256Siv,
}

impl Algorithm {
    /// Confluent's name: `AES128_GCM`, `AES256_GCM` or `AES256_SIV`.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Aes128Gcm => "AES128_GCM",
            Algorithm::Aes256Gcm => "AES256_GCM",
            Algorithm::Aes256Siv => "AES256_SIV",
        }
    }

    /// Raw key length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            Algorithm::Aes128Gcm => 16,
            Algorithm::Aes256Gcm => 32,
            Algorithm::Aes256Siv => 64,
        }
    }

    /// Whether equal plaintexts give equal ciphertexts under one DEK.
    pub const fn is_deterministic(self) -> bool {
        matches!(self, Algorithm::Aes256Siv)
    }

    /// Bytes a field ciphertext adds to its plaintext, without the version prefix.
    pub const fn overhead(self) -> usize {
        match self {
            Algorithm::Aes128Gcm | Algorithm::Aes256Gcm => GCM_IV_LEN + GCM_TAG_LEN,
            Algorithm::Aes256Siv => SIV_LEN,
        }
    }

    /// Protobuf field number of `key_value` in the Tink key proto.
    const fn key_field(self) -> u64 {
        match self {
            Algorithm::Aes128Gcm | Algorithm::Aes256Gcm => 3,
            Algorithm::Aes256Siv => 2,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = CsfleError;

    /// Exact, case-sensitive names, as Confluent's clients compare them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "AES128_GCM" => Ok(Algorithm::Aes128Gcm),
            "AES256_GCM" => Ok(Algorithm::Aes256Gcm),
            "AES256_SIV" => Ok(Algorithm::Aes256Siv),
            other => Err(CsfleError::UnknownAlgorithm(other.to_owned())),
        }
    }
}

/// The cipher of a DEK, key schedule expanded once.
// One per DEK, so the variants' sizes (round keys, all of them) do not matter,
// and boxing would add an indirection per field.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    Gcm128(Aes128Gcm),
    Gcm256(Gcm256),
    /// With S2V's prefix for the one empty AD component, computed once.
    Siv(Siv, SivPrefix),
}

/// A CSFLE data encryption key: its algorithm, the raw key (zeroized on drop, kept
/// only to serialize the proto again) and its cipher.
pub struct Dek {
    algorithm: Algorithm,
    key: Zeroizing<Vec<u8>>,
    cipher: Cipher,
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dek")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Dek {
    /// A fresh random DEK from the operating system's RNG.
    pub fn generate(algorithm: Algorithm) -> Result<Dek, CsfleError> {
        let mut key = Zeroizing::new(vec![0u8; algorithm.key_len()]);
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut key)
            .map_err(|_| CsfleError::Rng)?;
        Dek::from_key(algorithm, key)
    }

    /// Parses a serialized Tink key proto (what a KMS wraps and the DEK Registry's
    /// `keyMaterial` holds). Version must be 0 (absent or explicit); `key_value`
    /// must appear once, with the algorithm's length. Unknown fields are skipped as
    /// protobuf does; groups, bad wire types and truncation are refused.
    pub fn from_proto(algorithm: Algorithm, proto: &[u8]) -> Result<Dek, CsfleError> {
        let bad = |reason: String| CsfleError::KeyProto {
            algorithm: algorithm.name(),
            reason,
        };
        let unreadable = |e: ProtoError| bad(e.to_string());
        let mut r = ProtoReader { buf: proto, pos: 0 };
        let mut key: Option<&[u8]> = None;
        while !r.done() {
            let tag = r.varint().map_err(unreadable)?;
            let (field, wire) = (tag >> 3, tag & 7);
            if field == 0 {
                return Err(bad("field number 0".into()));
            }
            match (field, wire) {
                (1, 0) => {
                    let version = r.varint().map_err(unreadable)?;
                    if version != 0 {
                        return Err(bad(format!(
                            "key version {version} is not supported (only 0)"
                        )));
                    }
                }
                (f, 2) if f == algorithm.key_field() => {
                    let value = r.length_delimited().map_err(unreadable)?;
                    if key.is_some() {
                        return Err(bad("key_value appears more than once".into()));
                    }
                    if value.len() != algorithm.key_len() {
                        return Err(bad(format!(
                            "key_value is {} bytes, {} needs {}",
                            value.len(),
                            algorithm.name(),
                            algorithm.key_len()
                        )));
                    }
                    key = Some(value);
                }
                (1, w) => return Err(bad(format!("version has wire type {w}, not varint"))),
                (f, w) if f == algorithm.key_field() => {
                    return Err(bad(format!(
                        "key_value has wire type {w}, not length-delimited"
                    )))
                }
                (_, _) => r.skip(wire).map_err(unreadable)?,
            }
        }
        let key = key.ok_or_else(|| bad("no key_value".into()))?;
        Dek::from_key(algorithm, Zeroizing::new(key.to_vec()))
    }

    fn from_key(algorithm: Algorithm, key: Zeroizing<Vec<u8>>) -> Result<Dek, CsfleError> {
        let wrong = || CsfleError::KeyProto {
            algorithm: algorithm.name(),
            reason: "wrong key length".into(),
        };
        let cipher = match algorithm {
            Algorithm::Aes128Gcm => {
                Cipher::Gcm128(Aes128Gcm::new_from_slice(&key).map_err(|_| wrong())?)
            }
            Algorithm::Aes256Gcm => Cipher::Gcm256(Gcm256::new(&key).ok_or_else(wrong)?),
            // Key split as RFC 5297: first half CMAC (S2V) key, second half CTR key.
            Algorithm::Aes256Siv => {
                let siv = Siv::new(&key).ok_or_else(wrong)?;
                let prefix = siv.prefix(&SIV_HEADERS);
                Cipher::Siv(siv, prefix)
            }
        };
        Ok(Dek {
            algorithm,
            key,
            cipher,
        })
    }

    /// The DEK's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The serialized Tink key proto, exactly as Tink writes it (version 0 omitted):
    /// `1a 20 || key32`, `1a 10 || key16` or `12 40 || key64`.
    pub fn to_proto(&self) -> Zeroizing<Vec<u8>> {
        let mut proto = Zeroizing::new(Vec::with_capacity(2 + self.key.len()));
        // Tag byte = field << 3 | wire type 2; key lengths (16, 32, 64) fit one varint byte.
        proto.push(((self.algorithm.key_field() << 3) | 2) as u8);
        proto.push(self.key.len() as u8);
        proto.extend_from_slice(&self.key);
        proto
    }

    /// Appends the field ciphertext of `plaintext` to `out`: the DEK-version prefix
    /// when `version` is given, then Tink's raw output (GCM with a fresh random IV).
    /// On error `out` is left as it was.
    pub fn encrypt(
        &self,
        plaintext: &[u8],
        version: Option<u32>,
        out: &mut Vec<u8>,
    ) -> Result<(), CsfleError> {
        let mut iv = [0u8; GCM_IV_LEN];
        if !self.algorithm.is_deterministic() {
            rand::rng().fill_bytes(&mut iv);
        }
        self.encrypt_with_iv(&iv, plaintext, version, out)
    }

    /// As [`encrypt`](Self::encrypt) with a chosen GCM IV (AES-SIV ignores it: it is
    /// deterministic). For golden vectors only: reusing an IV under one key
    /// destroys GCM's security.
    pub(crate) fn encrypt_with_iv(
        &self,
        iv: &[u8; GCM_IV_LEN],
        plaintext: &[u8],
        version: Option<u32>,
        out: &mut Vec<u8>,
    ) -> Result<(), CsfleError> {
        let start = out.len();
        out.reserve(VERSION_PREFIX_LEN + self.algorithm.overhead() + plaintext.len());
        if let Some(v) = version {
            out.push(VERSION_MAGIC);
            out.extend_from_slice(&v.to_be_bytes());
        }
        let sealed = match &self.cipher {
            Cipher::Gcm128(c) => gcm_seal(iv, plaintext, out, |buf| {
                c.encrypt_in_place_detached(GenericArray::from_slice(iv), b"", buf)
                    .map(Into::into)
                    .map_err(drop)
            }),
            Cipher::Gcm256(c) => {
                gcm_seal(iv, plaintext, out, |buf| c.seal(iv, &[], buf).map_err(drop))
            }
            Cipher::Siv(c, prefix) => {
                let siv_at = out.len();
                out.extend_from_slice(&[0u8; SIV_LEN]);
                out.extend_from_slice(plaintext);
                let tag = c.seal_after(prefix, &mut out[siv_at + SIV_LEN..]);
                out[siv_at..siv_at + SIV_LEN].copy_from_slice(&tag);
                Ok(())
            }
        };
        if sealed.is_err() {
            out.truncate(start);
        }
        sealed
    }

    /// Opens a field ciphertext. With `has_version_prefix` (the rule sets
    /// `encrypt.dek.expiry.days > 0`) the first 5 bytes must be `0x00 || u32be`
    /// and are skipped (read them with [`version_of`] to pick the DEK). Confluent's
    /// format does not authenticate the version: it only selects a DEK, which then
    /// has to open the rest.
    pub fn decrypt(
        &self,
        ciphertext: &[u8],
        has_version_prefix: bool,
    ) -> Result<Zeroizing<Vec<u8>>, CsfleError> {
        let body = if has_version_prefix {
            version_of(ciphertext)?;
            &ciphertext[VERSION_PREFIX_LEN..]
        } else {
            ciphertext
        };
        let min = self.algorithm.overhead();
        if body.len() < min {
            return Err(CsfleError::TooShort {
                what: "field ciphertext (after any version prefix)",
                len: body.len(),
                min,
            });
        }
        match &self.cipher {
            Cipher::Gcm128(c) => gcm_open(body, |iv, buf, tag| {
                c.decrypt_in_place_detached(
                    GenericArray::from_slice(iv),
                    b"",
                    buf,
                    GenericArray::from_slice(tag),
                )
                .map_err(drop)
            }),
            Cipher::Gcm256(c) => {
                gcm_open(body, |iv, buf, tag| c.open(iv, &[], buf, tag).map_err(drop))
            }
            Cipher::Siv(c, prefix) => {
                let (siv_tag, ct) = body.split_at(SIV_LEN);
                let mut pt = Zeroizing::new(ct.to_vec());
                c.open_after(prefix, &mut pt, siv_tag)
                    .map_err(|_| CsfleError::Authentication)?;
                Ok(pt)
            }
        }
    }
}

/// Appends `IV || AES-GCM(pt, aad = "") || tag` to `out`, `seal` encrypting in
/// place and returning the tag (left grown on error; the caller truncates).
fn gcm_seal(
    iv: &[u8; GCM_IV_LEN],
    plaintext: &[u8],
    out: &mut Vec<u8>,
    seal: impl FnOnce(&mut [u8]) -> Result<[u8; GCM_TAG_LEN], ()>,
) -> Result<(), CsfleError> {
    out.extend_from_slice(iv);
    let body = out.len();
    out.extend_from_slice(plaintext);
    let tag = seal(&mut out[body..])
        .map_err(|_| CsfleError::Encrypt("plaintext too long for AES-GCM"))?;
    out.extend_from_slice(&tag);
    Ok(())
}

/// Opens `IV || ct || tag` (the caller checked the length) with `open`, which
/// checks the tag before decrypting in place; the buffer is zeroized when dropped
/// on failure anyway.
fn gcm_open(
    body: &[u8],
    open: impl FnOnce(&[u8; GCM_IV_LEN], &mut [u8], &[u8; GCM_TAG_LEN]) -> Result<(), ()>,
) -> Result<Zeroizing<Vec<u8>>, CsfleError> {
    let (iv, rest) = body.split_at(GCM_IV_LEN);
    let (ct, tag) = rest.split_at(rest.len() - GCM_TAG_LEN);
    let mut pt = Zeroizing::new(ct.to_vec());
    // Lengths are exact by the splits above.
    let iv = iv.try_into().expect("split at the IV length");
    let tag = tag.try_into().expect("split at the tag length");
    open(iv, &mut pt, tag).map_err(|_| CsfleError::Authentication)?;
    Ok(pt)
}

/// The DEK version in a prefixed field ciphertext (`0x00 || u32be(version) || …`).
/// Strict where Confluent's Python client is not: byte 0 must be 0x00.
pub fn version_of(ciphertext: &[u8]) -> Result<u32, CsfleError> {
    match ciphertext {
        [VERSION_MAGIC, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [magic, _, _, _, _, ..] => Err(CsfleError::VersionPrefix(*magic)),
        short => Err(CsfleError::TooShort {
            what: "DEK-version prefix",
            len: short.len(),
            min: VERSION_PREFIX_LEN,
        }),
    }
}

/// A string field's text: standard base64 alphabet, padded.
pub fn encode_text(ciphertext: &[u8]) -> String {
    STANDARD.encode(ciphertext)
}

/// Decodes a string field's text: standard alphabet, canonical padding, no
/// whitespace, no non-zero trailing bits.
pub fn decode_text(text: &str) -> Result<Vec<u8>, CsfleError> {
    STANDARD
        .decode(text)
        .map_err(|_| CsfleError::Base64 { len: text.len() })
}

/// Why a protobuf message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ProtoError {
    #[error("truncated varint")]
    TruncatedVarint,
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("field of {n} bytes with only {left} left")]
    Short { n: u64, left: usize },
    #[error("unsupported wire type {0}")]
    WireType(u64),
}

/// Just enough protobuf to read a Tink key proto.
struct ProtoReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ProtoReader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(ProtoError::TruncatedVarint);
            };
            self.pos += 1;
            // The 10th byte may only carry the top bit of a u64.
            if i == 9 && b > 1 {
                return Err(ProtoError::VarintOverflow);
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtoError::VarintTooLong)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], ProtoError> {
        let left = self.buf.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= left => {
                let s = &self.buf[self.pos..self.pos + n];
                self.pos += n;
                Ok(s)
            }
            _ => Err(ProtoError::Short { n, left }),
        }
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = self.varint()?;
        self.take(n)
    }

    /// Skips the value of an unknown field.
    fn skip(&mut self, wire: u64) -> Result<(), ProtoError> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.length_delimited().map(drop),
            5 => self.take(4).map(drop),
            w => Err(ProtoError::WireType(w)),
        }
    }
}

#[cfg(test)]
mod tests;
