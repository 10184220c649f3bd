//! The field ciphertext layouts (docs/ENCRYPTION.md, "Field ciphertext"). Readers
//! accept every version here ([`Version::ALL`], narrowed by `crypto.read_versions`);
//! writers write the one configured (`crypto.write_version`), so a new version
//! rolls out readers first, then writers.
//!
//! ```text
//! version 1 (both algorithms)             version 2 (AES-256-GCM only)
//! offset size field                       offset size field
//! 0      1    version = 0x01              0      1    version = 0x02
//! 1      1    algorithm (1 GCM, 2 SIV)    1      1    algorithm = 0x01 (GCM)
//! 2      16   key id                      2      8    key id, first 8 bytes
//! 18     12   GCM nonce | 16 SIV IV       10     12   GCM nonce
//! ..     n    ciphertext                  22     n    ciphertext
//! end-16 16   GCM tag (SIV: the IV)       end-16 16   GCM tag
//! ```
//!
//! Associated data: version 1, the 18 header bytes then the field context
//! (`<record full name>.<field name>`, UTF-8); version 2, the 10 header bytes, the
//! full 16-byte key id of the key that opens it, then the field context. Either
//! way the version, algorithm, whole key id and field are authenticated, and a
//! ciphertext moved elsewhere fails to open. Version 2 saves 8 bytes per
//! randomized field; deterministic (SIV) fields keep version 1 under every writer
//! version, so equal values give equal bytes across a rollout.

use super::CryptoError;

/// Length of a key id.
pub const KEY_ID_LEN: usize = 16;
/// The bytes of a key id a version 2 header carries.
pub const KEY_PREFIX_LEN: usize = 8;
/// Version + algorithm + key id: the longest header (version 1).
pub const HEADER_LEN: usize = 2 + KEY_ID_LEN;
pub const GCM_NONCE_LEN: usize = 12;
pub const GCM_TAG_LEN: usize = 16;
pub const SIV_IV_LEN: usize = 16;

/// A key id: 16 bytes, random when the key is created.
pub type KeyId = [u8; KEY_ID_LEN];

/// A field ciphertext format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1 = 1,
    V2 = 2,
}

impl Version {
    /// Every version this build reads.
    pub const ALL: [Version; 2] = [Version::V1, Version::V2];
    /// What writers write by default: the newest version every supported reader
    /// understands. Releases before version 2 existed read only version 1, so the
    /// default stays 1 until they are out of support.
    pub const DEFAULT_WRITE: Version = Version::V1;

    pub fn from_byte(b: u8) -> Option<Version> {
        Version::ALL.into_iter().find(|v| *v as u8 == b)
    }

    pub fn number(self) -> u8 {
        self as u8
    }

    /// The header length of `algorithm` in this version; `None`: the version has
    /// no layout for it.
    pub const fn header_len(self, algorithm: Algorithm) -> Option<usize> {
        match (self, algorithm) {
            (Version::V1, _) => Some(HEADER_LEN),
            (Version::V2, Algorithm::Aes256Gcm) => Some(2 + KEY_PREFIX_LEN),
            (Version::V2, Algorithm::Aes256Siv) => None,
        }
    }

    /// The version a writer configured for `self` uses for `algorithm`: itself,
    /// or version 1 where it defines no layout (SIV under version 2).
    pub const fn for_algorithm(self, algorithm: Algorithm) -> Version {
        match self.header_len(algorithm) {
            Some(_) => self,
            None => Version::V1,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.number())
    }
}

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

    /// Bytes a version 1 ciphertext adds to its plaintext.
    pub const fn overhead(self) -> usize {
        self.overhead_in(Version::V1)
    }

    /// Bytes a ciphertext of `version` adds to its plaintext (for a version with no
    /// layout for this algorithm, version 1's, which the writer then uses).
    pub const fn overhead_in(self, version: Version) -> usize {
        let header = match version.for_algorithm(self).header_len(self) {
            Some(n) => n,
            None => HEADER_LEN,
        };
        match self {
            Algorithm::Aes256Gcm => header + GCM_NONCE_LEN + GCM_TAG_LEN,
            Algorithm::Aes256Siv => header + SIV_IV_LEN,
        }
    }
}

/// Which key a header names: the whole id (version 1) or its first 8 bytes
/// (version 2; the whole id is then in the associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRef {
    Id(KeyId),
    Prefix([u8; KEY_PREFIX_LEN]),
}

impl KeyRef {
    /// Could the key `id` be the one named?
    pub fn matches(&self, id: &KeyId) -> bool {
        match self {
            KeyRef::Id(k) => k == id,
            KeyRef::Prefix(p) => id[..KEY_PREFIX_LEN] == p[..],
        }
    }

    /// The bytes named, in hex (for "key not available" messages).
    pub fn hex(&self) -> String {
        match self {
            KeyRef::Id(k) => hex::encode(k),
            KeyRef::Prefix(p) => format!("{}…", hex::encode(p)),
        }
    }
}

/// The parsed fixed part of a field ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub algorithm: Algorithm,
    pub key: KeyRef,
}

/// A header's bytes (at most [`HEADER_LEN`]).
#[derive(Debug, Clone, Copy)]
pub struct HeaderBytes {
    buf: [u8; HEADER_LEN],
    len: usize,
}

impl std::ops::Deref for HeaderBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Header {
    /// The header of a ciphertext that `version` writes for `algorithm` under key
    /// `id` (version 1 for SIV whatever the version, see [`Version::for_algorithm`]).
    pub fn new(version: Version, algorithm: Algorithm, id: &KeyId) -> Header {
        let version = version.for_algorithm(algorithm);
        let key = match version {
            Version::V1 => KeyRef::Id(*id),
            Version::V2 => {
                let mut p = [0u8; KEY_PREFIX_LEN];
                p.copy_from_slice(&id[..KEY_PREFIX_LEN]);
                KeyRef::Prefix(p)
            }
        };
        Header {
            version,
            algorithm,
            key,
        }
    }

    /// Its length in bytes.
    pub fn byte_len(&self) -> usize {
        match self.key {
            KeyRef::Id(_) => HEADER_LEN,
            KeyRef::Prefix(_) => 2 + KEY_PREFIX_LEN,
        }
    }

    /// The header bytes.
    pub fn to_bytes(&self) -> HeaderBytes {
        let mut buf = [0u8; HEADER_LEN];
        buf[0] = self.version.number();
        buf[1] = self.algorithm as u8;
        match &self.key {
            KeyRef::Id(k) => buf[2..].copy_from_slice(k),
            KeyRef::Prefix(p) => buf[2..2 + KEY_PREFIX_LEN].copy_from_slice(p),
        }
        HeaderBytes {
            buf,
            len: self.byte_len(),
        }
    }

    /// The associated data's parts before the field context: the header bytes,
    /// then (version 2) the whole key id of the key that opens it.
    pub fn ad_parts<'a>(header: &'a [u8], version: Version, id: &'a KeyId) -> [&'a [u8]; 2] {
        match version {
            Version::V1 => [header, &[]],
            Version::V2 => [header, id],
        }
    }

    /// Parses and checks the header and the minimum length of a ciphertext of
    /// any version this build knows. The errors name no byte values or lengths:
    /// when a plaintext sits where a ciphertext belongs, its bytes are what is
    /// being parsed.
    pub fn parse(ct: &[u8]) -> Result<Header, CryptoError> {
        let malformed = |what: &str| CryptoError::Malformed(what.to_string());
        if ct.len() < 2 {
            return Err(malformed("too short for a ciphertext header"));
        }
        let version =
            Version::from_byte(ct[0]).ok_or_else(|| malformed("unknown format version"))?;
        let algorithm =
            Algorithm::from_byte(ct[1]).ok_or_else(|| malformed("unknown algorithm"))?;
        let Some(header_len) = version.header_len(algorithm) else {
            return Err(malformed("no such algorithm in this format version"));
        };
        if ct.len() < header_len {
            return Err(malformed("too short for a ciphertext header"));
        }
        if ct.len() < algorithm.overhead_in(version) {
            return Err(malformed("too short for its algorithm"));
        }
        let key = match version {
            Version::V1 => {
                let mut id = [0u8; KEY_ID_LEN];
                id.copy_from_slice(&ct[2..HEADER_LEN]);
                KeyRef::Id(id)
            }
            Version::V2 => {
                let mut p = [0u8; KEY_PREFIX_LEN];
                p.copy_from_slice(&ct[2..2 + KEY_PREFIX_LEN]);
                KeyRef::Prefix(p)
            }
        };
        Ok(Header {
            version,
            algorithm,
            key,
        })
    }
}

/// The versions a reader accepts (`crypto.read_versions`; default every version
/// this build knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted(u8);

impl Default for Accepted {
    fn default() -> Self {
        Accepted::of(&Version::ALL)
    }
}

impl Accepted {
    pub fn of(versions: &[Version]) -> Accepted {
        Accepted(versions.iter().fold(0, |m, v| m | 1 << v.number()))
    }

    pub fn contains(self, v: Version) -> bool {
        self.0 & (1 << v.number()) != 0
    }

    /// `Err` for a header of a version this reader does not accept.
    pub fn check(self, h: &Header) -> Result<(), CryptoError> {
        if self.contains(h.version) {
            Ok(())
        } else {
            Err(CryptoError::VersionRefused(h.version.number()))
        }
    }
}

/// Builds the associated data for a header and field context into `buf`.
pub fn associated_data<'a>(header: &[u8], context: &str, buf: &'a mut Vec<u8>) -> &'a [u8] {
    buf.clear();
    buf.extend_from_slice(header);
    buf.extend_from_slice(context.as_bytes());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: KeyId = [0xab; KEY_ID_LEN];

    #[test]
    fn headers_round_trip_in_every_version() {
        for v in Version::ALL {
            for a in [Algorithm::Aes256Gcm, Algorithm::Aes256Siv] {
                let h = Header::new(v, a, &ID);
                assert_eq!(h.version, v.for_algorithm(a));
                let bytes = h.to_bytes();
                let mut ct = bytes.to_vec();
                ct.resize(a.overhead_in(v), 0);
                assert_eq!(Header::parse(&ct).unwrap(), h, "{v} {a:?}");
                assert!(h.key.matches(&ID));
                assert_eq!(ct.len(), a.overhead_in(h.version));
            }
        }
        // Version 2 is 8 bytes shorter for GCM, and SIV stays version 1.
        assert_eq!(
            Algorithm::Aes256Gcm.overhead() - Algorithm::Aes256Gcm.overhead_in(Version::V2),
            8
        );
        assert_eq!(
            Algorithm::Aes256Siv.overhead_in(Version::V2),
            Algorithm::Aes256Siv.overhead()
        );
        assert_eq!(
            Header::new(Version::V2, Algorithm::Aes256Siv, &ID).version,
            Version::V1
        );
    }

    #[test]
    fn unknown_versions_algorithms_and_short_input_are_malformed() {
        let m = |ct: &[u8]| matches!(Header::parse(ct), Err(CryptoError::Malformed(_)));
        assert!(m(&[]));
        assert!(m(&[1]));
        assert!(m(&[
            3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ]));
        assert!(m(&[1, 9]));
        // Version 2 defines no SIV layout.
        assert!(m(&[
            2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ]));
        let short = [2u8, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(m(&short));
    }

    #[test]
    fn a_reader_refuses_versions_it_does_not_accept() {
        let v1_only = Accepted::of(&[Version::V1]);
        let h2 = Header::new(Version::V2, Algorithm::Aes256Gcm, &ID);
        assert_eq!(v1_only.check(&h2), Err(CryptoError::VersionRefused(2)));
        assert!(v1_only
            .check(&Header::new(Version::V1, Algorithm::Aes256Gcm, &ID))
            .is_ok());
        assert!(Accepted::default().check(&h2).is_ok());
        let e = CryptoError::VersionRefused(2).to_string();
        assert!(e.contains("crypto.read_versions"), "{e}");
    }

    #[test]
    fn a_prefix_matches_only_ids_that_start_with_it() {
        let k = Header::new(Version::V2, Algorithm::Aes256Gcm, &ID).key;
        let mut other = ID;
        other[0] ^= 1;
        assert!(!k.matches(&other));
        let mut tail = ID;
        tail[15] ^= 1;
        assert!(
            k.matches(&tail),
            "only 8 bytes are stored; the AD binds the rest"
        );
    }
}
