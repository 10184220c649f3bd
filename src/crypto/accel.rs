//! Which AES implementation the field ciphers run on, chosen once per process:
//! the AES-NI/PCLMULQDQ/AVX2 kernels of `crypto::aesni` on x86-64 CPUs that have
//! those instructions, the portable RustCrypto crates (`aes-gcm`, `aes`) on every
//! other CPU. Both give the same bytes; the binary is built for baseline x86-64,
//! so it runs (portably) on a CPU without them, and `FIELDCRYPT_CRYPTO=portable`
//! forces the portable path (tests, or an operator ruling the fast path out).
//!
//! Hides the choice: [`Gcm256`] is AES-256-GCM either way, and
//! [`super::siv::Siv`] asks [`path`] the same question.

use std::sync::OnceLock;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

#[cfg(target_arch = "x86_64")]
use super::aesni;

/// The environment variable that forces a path: `portable` (or `auto`, the default).
pub const ENV: &str = "FIELDCRYPT_CRYPTO";

/// An AES implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// x86-64 AES-NI + PCLMULQDQ + AVX2, whole messages in one call.
    AesNi,
    /// The RustCrypto crates, for any CPU.
    Portable,
}

impl Path {
    /// What the start-up line prints.
    pub fn describe(self) -> &'static str {
        match self {
            Path::AesNi => "aes-ni+pclmulqdq+avx2",
            Path::Portable => "portable",
        }
    }

    /// The fastest path this CPU can run, ignoring the environment.
    pub fn best() -> Path {
        #[cfg(target_arch = "x86_64")]
        if aesni::Ni::detect().is_some() {
            return Path::AesNi;
        }
        Path::Portable
    }
}

/// Why the configured path could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ENV}={0:?} is not a crypto path (use auto or portable)")]
pub struct BadPath(pub String);

/// The path for a value of [`ENV`] (unset or empty: auto).
pub fn parse(value: Option<&str>) -> Result<Path, BadPath> {
    match value.map(str::trim) {
        None | Some("") | Some("auto") => Ok(Path::best()),
        Some("portable") => Ok(Path::Portable),
        Some(other) => Err(BadPath(other.to_string())),
    }
}

static PATH: OnceLock<Path> = OnceLock::new();

/// The process's path, decided on first use from the CPU and [`ENV`]. An
/// unknown value of [`ENV`] falls back to the portable path (never to a guess);
/// `fieldcrypt` checks the variable at start-up with [`parse`] and refuses it.
pub fn path() -> Path {
    *PATH.get_or_init(|| parse(std::env::var(ENV).ok().as_deref()).unwrap_or(Path::Portable))
}

/// AES-256-GCM with a 96-bit nonce and a 128-bit tag, key schedule built once.
#[derive(Clone)]
pub struct Gcm256(GcmImpl);

// One per key, held by reference in the hot path: the AES-NI variant stays
// inline (no pointer to chase per field), the portable one is boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum GcmImpl {
    #[cfg(target_arch = "x86_64")]
    Ni(aesni::Gcm),
    Portable(Box<Aes256Gcm>),
}

/// A GCM call refused: too long, or (opening) the tag did not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcmError;

impl Gcm256 {
    /// From 32 key bytes on the process's [`path`]; `None` for another length.
    pub fn new(key: &[u8]) -> Option<Gcm256> {
        Gcm256::on(path(), key)
    }

    /// On a given path (the portable one always exists; AES-NI falls back to it
    /// when this CPU lacks the instructions).
    pub fn on(path: Path, key: &[u8]) -> Option<Gcm256> {
        let key: &[u8; 32] = key.try_into().ok()?;
        #[cfg(target_arch = "x86_64")]
        if path == Path::AesNi {
            if let Some(ni) = aesni::Ni::detect() {
                return Some(Gcm256(GcmImpl::Ni(aesni::Gcm::new(ni, key))));
            }
        }
        let _ = path;
        Some(Gcm256(GcmImpl::Portable(Box::new(
            Aes256Gcm::new_from_slice(key).ok()?,
        ))))
    }

    /// The path this key runs on.
    pub fn path(&self) -> Path {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            GcmImpl::Ni(_) => Path::AesNi,
            GcmImpl::Portable(_) => Path::Portable,
        }
    }

    /// Encrypts `buf` in place and returns the tag. The associated data is the
    /// concatenation of the `ad` parts (no copy on the AES-NI path).
    pub fn seal(
        &self,
        nonce: &[u8; 12],
        ad: &[&[u8]],
        buf: &mut [u8],
    ) -> Result<[u8; 16], GcmError> {
        match &self.0 {
            #[cfg(target_arch = "x86_64")]
            GcmImpl::Ni(g) => g.seal(nonce, ad, buf).map_err(|_| GcmError),
            GcmImpl::Portable(g) => joined(ad, |ad| {
                g.encrypt_in_place_detached(Nonce::from_slice(nonce), ad, buf)
                    .map(Into::into)
                    .map_err(|_| GcmError)
            }),
        }
    }

    /// Checks the tag, then decrypts `buf` in place; on failure `buf` holds the
    /// ciphertext (no unauthenticated plaintext is released).
    pub fn open(
        &self,
        nonce: &[u8; 12],
        ad: &[&[u8]],
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), GcmError> {
        match &self.0 {
            #[cfg(target_arch = "x86_64")]
            GcmImpl::Ni(g) => g.open(nonce, ad, buf, tag).map_err(|_| GcmError),
            GcmImpl::Portable(g) => joined(ad, |ad| {
                g.decrypt_in_place_detached(Nonce::from_slice(nonce), ad, buf, Tag::from_slice(tag))
                    .map_err(|_| GcmError)
            }),
        }
    }
}

thread_local! {
    static JOINED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls `f` with the associated-data parts as one slice (the portable crate
/// takes it contiguous): borrowed when there is one part, else joined in a
/// per-thread buffer.
fn joined<T>(ad: &[&[u8]], f: impl FnOnce(&[u8]) -> T) -> T {
    match ad {
        [] => f(b""),
        [one] => f(one),
        parts => JOINED.with(|b| {
            let mut b = b.borrow_mut();
            b.clear();
            for p in parts {
                b.extend_from_slice(p);
            }
            f(&b)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    #[test]
    fn the_environment_chooses_auto_or_portable_and_nothing_else() {
        assert_eq!(parse(None), Ok(Path::best()));
        assert_eq!(parse(Some(" auto ")), Ok(Path::best()));
        assert_eq!(parse(Some("portable")), Ok(Path::Portable));
        let e = parse(Some("aesni")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "FIELDCRYPT_CRYPTO=\"aesni\" is not a crypto path (use auto or portable)"
        );
    }

    /// NIST's GCM test vectors for 256-bit keys (the "gcmEncryptExtIV256" set
    /// from the original GCM specification, test cases 13 to 16), on both paths.
    #[test]
    fn nist_vectors_on_both_paths() {
        struct V {
            key: &'static str,
            iv: &'static str,
            pt: &'static str,
            ad: &'static str,
            ct: &'static str,
            tag: &'static str,
        }
        let vs = [
            V {
                key: "0000000000000000000000000000000000000000000000000000000000000000",
                iv: "000000000000000000000000",
                pt: "",
                ad: "",
                ct: "",
                tag: "530f8afbc74536b9a963b4f1c4cb738b",
            },
            V {
                key: "0000000000000000000000000000000000000000000000000000000000000000",
                iv: "000000000000000000000000",
                pt: "00000000000000000000000000000000",
                ad: "",
                ct: "cea7403d4d606b6e074ec5d3baf39d18",
                tag: "d0d1c8a799996bf0265b98b5d48ab919",
            },
            V {
                key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
                iv: "cafebabefacedbaddecaf888",
                pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
                ad: "",
                ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
                tag: "b094dac5d93471bdec1a502270e3cc6c",
            },
            V {
                key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
                iv: "cafebabefacedbaddecaf888",
                pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
                ad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
                ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
                tag: "76fc6ece0f4e1768cddf8853bb2d551b",
            },
        ];
        let paths = [Path::Portable, Path::best()];
        for (i, v) in vs.iter().enumerate() {
            for p in paths {
                let g = Gcm256::on(p, &hex::decode(v.key).unwrap()).unwrap();
                let nonce: [u8; 12] = hex::decode(v.iv).unwrap().try_into().unwrap();
                let ad = hex::decode(v.ad).unwrap();
                let mut buf = hex::decode(v.pt).unwrap();
                let tag = g.seal(&nonce, &[&ad], &mut buf).unwrap();
                assert_eq!(hex::encode(&buf), v.ct, "vector {i} on {p:?}: ciphertext");
                assert_eq!(hex::encode(tag), v.tag, "vector {i} on {p:?}: tag");
                g.open(&nonce, &[&ad], &mut buf, &tag).unwrap();
                assert_eq!(hex::encode(&buf), v.pt, "vector {i} on {p:?}: opened");
            }
        }
    }

    /// The AES-NI path gives the portable path's bytes for random keys, nonces,
    /// associated data of 0 to 70 bytes and plaintexts of 0 to 300 bytes (every
    /// block boundary and the four-block CTR batches), and refuses every forgery
    /// the portable path refuses, leaving the buffer as it was.
    #[test]
    fn both_paths_give_the_same_bytes() {
        if Path::best() == Path::Portable {
            eprintln!("this CPU has no AES-NI path: nothing to compare");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x0067_636d);
        for round in 0..3000usize {
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            let mut nonce = [0u8; 12];
            rng.fill_bytes(&mut nonce);
            let mut ad = vec![0u8; rng.random_range(0..=70)];
            rng.fill_bytes(&mut ad);
            let mut pt = vec![0u8; round % 301];
            rng.fill_bytes(&mut pt);
            let fast = Gcm256::on(Path::AesNi, &key).unwrap();
            let slow = Gcm256::on(Path::Portable, &key).unwrap();
            assert_eq!(fast.path(), Path::AesNi);
            let (mut a, mut b) = (pt.clone(), pt.clone());
            // The AD in one piece on one path, split in two (or three) on the other.
            let cut = rng.random_range(0..=ad.len());
            let cut2 = rng.random_range(cut..=ad.len());
            let parts: [&[u8]; 3] = [&ad[..cut], &ad[cut..cut2], &ad[cut2..]];
            let ta = fast.seal(&nonce, &parts, &mut a).unwrap();
            let tb = slow.seal(&nonce, &[&ad], &mut b).unwrap();
            // The portable path joins the parts: the same tag again.
            let mut c = pt.clone();
            assert_eq!(
                slow.seal(&nonce, &parts, &mut c),
                Ok(tb),
                "round {round}: joined AD"
            );
            assert_eq!(a, b, "round {round}: ciphertext");
            assert_eq!(ta, tb, "round {round}: tag");
            let mut bad = ta;
            bad[round % 16] ^= 1 << (round % 8);
            let ct = a.clone();
            assert_eq!(fast.open(&nonce, &[&ad], &mut a, &bad), Err(GcmError));
            assert_eq!(a, ct, "round {round}: a refused open leaves the ciphertext");
            if !a.is_empty() {
                let at = round % a.len();
                a[at] ^= 0x80;
                assert_eq!(fast.open(&nonce, &[&ad], &mut a, &ta), Err(GcmError));
                a[at] ^= 0x80;
            }
            fast.open(&nonce, &parts, &mut a, &ta).unwrap();
            slow.open(&nonce, &[&ad], &mut b, &tb).unwrap();
            assert_eq!(b, pt);
            assert_eq!(a, pt, "round {round}: opened");
        }
    }
}
