//! Field cryptography: the versioned ciphertext layout, the randomized (AES-256-GCM)
//! and deterministic (AES-SIV) ciphers with their key schedules built once per key,
//! and HMAC blind indexes. Pure functions of bytes and keys: no I/O, no KMS.
//! AES runs on the x86-64 AES-NI kernels where the CPU has them, portably
//! elsewhere, chosen once per process ([`accel`]).
//!
//! Errors are deliberately uninformative about keys and plaintext: they say which
//! check failed (layout, unknown key id, authentication), never what was inside.

pub mod accel;
#[cfg(target_arch = "x86_64")]
mod aesni;
pub mod blind_index;
pub mod cipher;
pub mod format;
pub mod siv;

use thiserror::Error;

/// Why a field ciphertext could not be produced or opened.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The bytes are not a fieldcrypt field ciphertext (wrong version, algorithm or length).
    #[error("not a fieldcrypt field ciphertext: {0}")]
    Malformed(String),
    /// The ciphertext names a key this process does not have.
    #[error("ciphertext names key {0}, which is not available here")]
    UnknownKey(String),
    /// Authentication failed: tampered, truncated, moved to another field, or wrong key.
    #[error("ciphertext failed authentication (tampered, moved from another field, or wrong key)")]
    Authentication,
    /// A ciphertext of a known format version this reader is configured to refuse.
    #[error("ciphertext is in format version {0}, which this reader does not accept (crypto.read_versions); add it there, or have writers write a version readers accept (crypto.write_version)")]
    VersionRefused(u8),
    /// A key of the wrong length reached a cipher.
    #[error("key material has the wrong length for {0}")]
    KeyLength(&'static str),
}
