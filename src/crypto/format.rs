//! The field ciphertext layout, version 1 (docs/ENCRYPTION.md, "Field ciphertext"):
//!
//! ```text
//! offset  size  field
//! 0       1     format version = 0x01
//! 1       1     algorithm: 0x01 AES-256-GCM, 0x02 AES-256-SIV (RFC 5297, CMAC)
//! 2       16    key id
//! 18      12    GCM nonce            | 16  SIV synthetic IV
//! ..      n     ciphertext            | n   ciphertext
//! end-16  16    GCM tag               |     (SIV: the IV is the tag)
//! ```
//!
//! Associated data = the 18 header bytes followed by the field context
//! (`<record full name>.<field name>`, UTF-8), so the version, algorithm, key id and
//! field are all authenticated and a ciphertext moved elsewhere fails to open.

use super::CryptoError;

/// Current format version.
pub const VERSION: u8 = 1;
/// Length of a key id.
pub const KEY_ID_LEN: usize = 16;
/// Version + algorithm + key id.
pub const HEADER_LEN: usize = 2 + KEY_ID_LEN;
pub const GCM_NONCE_LEN: usize = 12;
pub const GCM_TAG_LEN: usize = 16;
pub const SIV_IV_LEN: usize = 16;

/// A key id: 16 bytes, random when the key is created.
pub type KeyId = [u8; KEY_ID_LEN];

/// The cipher a field ciphertext was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Aes256Gcm = 1,
    Aes256Siv = 2,
}

impl Algorithm {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Algorithm::Aes256Gcm),
            2 => Some(Algorithm::Aes256Siv),
            _ => None,
        }
    }

    /// Bytes a ciphertext adds to its plaintext.
    pub const fn overhead(self) -> usize {
        match self {
            Algorithm::Aes256Gcm => HEADER_LEN + GCM_NONCE_LEN + GCM_TAG_LEN,
            Algorithm::Aes256Siv => HEADER_LEN + SIV_IV_LEN,
        }
    }
}

/// The parsed fixed part of a field ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub algorithm: Algorithm,
    pub key_id: KeyId,
}

impl Header {
    /// The header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = VERSION;
        h[1] = self.algorithm as u8;
        h[2..].copy_from_slice(&self.key_id);
        h
    }

    /// Parses and checks the header and the minimum length of a ciphertext. The
    /// errors name no byte values or lengths: when a plaintext sits where a
    /// ciphertext belongs, its bytes are what is being parsed.
    pub fn parse(ct: &[u8]) -> Result<Header, CryptoError> {
        let malformed = |what: &str| CryptoError::Malformed(what.to_string());
        if ct.len() < HEADER_LEN {
            return Err(malformed("too short for a ciphertext header"));
        }
        if ct[0] != VERSION {
            return Err(malformed("unknown format version"));
        }
        let algorithm =
            Algorithm::from_byte(ct[1]).ok_or_else(|| malformed("unknown algorithm"))?;
        if ct.len() < algorithm.overhead() {
            return Err(malformed("too short for its algorithm"));
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&ct[2..HEADER_LEN]);
        Ok(Header { algorithm, key_id })
    }
}

/// Builds the associated data for a header and field context into `buf`.
pub fn associated_data<'a>(header: &[u8], context: &str, buf: &'a mut Vec<u8>) -> &'a [u8] {
    buf.clear();
    buf.extend_from_slice(header);
    buf.extend_from_slice(context.as_bytes());
    buf
}
