//! The local KMS: a 256-bit KEK in a file (the embedded default for development,
//! tests and single-host use). Data keys are wrapped with AES-256-GCM under the KEK
//! with the encryption context as associated data. The KEK is identified by a
//! fingerprint (an HMAC of a fixed label), never by its bytes.
//!
//! Wrapped blob: `0x01 || fingerprint(8) || nonce(12) || ciphertext || tag(16)`.

use super::provider::SettingError;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::kms::{EncryptionContext, Kms, KmsError, WrappedKey};

const BLOB_VERSION: u8 = 1;
const FP_LEN: usize = 8;
const AD_LABEL: &[u8] = b"fieldcrypt-local-kms/v1\0";

/// `[kms]` with `provider = "local"` (the default).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// The KEK file (created by `fieldcrypt keys init`, mode 0600).
    pub kek_file: PathBuf,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            kek_file: PathBuf::from(".fieldcrypt/kek.key"),
        }
    }
}

impl LocalConfig {
    pub(super) fn kek_ref(&self) -> Result<super::provider::KekRef, SettingError> {
        if self.kek_file.as_os_str().is_empty() {
            return Err(SettingError {
                key: "kek_file",
                msg: "must name a file",
            });
        }
        Ok(super::provider::KekRef {
            provider: PROVIDER,
            name: self.kek_file.to_string_lossy().into_owned(),
        })
    }
}

/// The local provider's entry in the driver table: KEK files for fieldcrypt's
/// format (`local:PATH`; wrapped keys name `local:<fingerprint>`), and Confluent's
/// `local-kms` (a KEK derived from the secret in `FIELDCRYPT_LOCAL_KMS_SECRET` or
/// `LOCAL_SECRET`, as Confluent's clients derive it).
pub struct LocalDriver;

/// The local provider.
pub const PROVIDER: super::driver::Provider = super::driver::Provider::new(&LocalDriver);

#[async_trait]
impl super::driver::KmsDriver for LocalDriver {
    fn name(&self) -> &'static str {
        "local"
    }

    fn confluent_type(&self) -> Option<&'static str> {
        Some("local-kms")
    }

    fn claims_wrapped(&self, kek_id: &str) -> bool {
        kek_id.starts_with("local:")
    }

    fn names_a_file(&self) -> bool {
        true
    }

    async fn open(
        &self,
        name: &str,
        _clients: &super::driver::Clients,
    ) -> Result<std::sync::Arc<dyn Kms>, KmsError> {
        Ok(std::sync::Arc::new(
            LocalKms::open(Path::new(name))
                .map_err(|e| KmsError::Config(format!("{e} (KEK local:{name})")))?,
        ))
    }

    async fn open_confluent(
        &self,
        _kms_key_id: &str,
        _clients: &super::driver::Clients,
    ) -> Result<std::sync::Arc<dyn Kms>, KmsError> {
        // Confluent's local-kms ignores the key id: the secret is the key.
        crate::csfle::local_kms::ConfluentLocalKms::from_env()
            .map(|k| std::sync::Arc::new(k) as std::sync::Arc<dyn Kms>)
    }
}

/// A KMS backed by a KEK file.
pub struct LocalKms {
    cipher: Aes256Gcm,
    fingerprint: [u8; FP_LEN],
    id: String,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalKms({})", self.id)
    }
}

impl LocalKms {
    /// Creates a new KEK file (32 random bytes, mode 0600 whatever the umask, in a
    /// directory created 0700 if it does not exist). Refuses to overwrite, and
    /// refuses an existing symlink at the path.
    pub fn init(path: &Path) -> Result<PathBuf, KmsError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KmsError::Config(format!(
                    "KEK file {} already exists; refusing to overwrite it (data wrapped by it would \
                     become unreadable). Delete it yourself if that is really what you want",
                    path.display()
                ))
            } else {
                KmsError::Config(format!("cannot create KEK file {}: {e}", path.display()))
            }
        })?;
        // The umask may have taken bits away from 0600 (never added any): make it
        // exactly owner read/write.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(|e| {
                    KmsError::Config(format!("cannot chmod KEK file {}: {e}", path.display()))
                })?;
        }
        let mut kek = Zeroizing::new([0u8; 32]);
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, kek.as_mut())
            .map_err(|e| KmsError::Config(format!("the OS random number generator failed: {e}")))?;
        f.write_all(kek.as_ref())
            .and_then(|_| f.sync_all())
            .map_err(|e| {
                KmsError::Config(format!("cannot write KEK file {}: {e}", path.display()))
            })?;
        Ok(path.to_path_buf())
    }

    /// Opens an existing KEK file. A file that group or others may read is refused
    /// (before it is read) — but for a Kubernetes Secret volume, where the kubelet
    /// makes a `defaultMode: 0400` file `0440` with the pod's `fsGroup` (the only
    /// way a non-root container can read it): there group read is accepted when
    /// the group is this process's own. Symlinks are followed (Kubernetes mounts
    /// secrets as symlinks through `..data`); the file they lead to is checked.
    pub fn open(path: &Path) -> Result<Self, KmsError> {
        let not_readable = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                KmsError::Config(format!("KEK file {} does not exist", path.display()))
            } else {
                KmsError::Config(format!("cannot read KEK file {}: {e}", path.display()))
            }
        };
        // Checked on the open file, so what is checked is what is read.
        let mut f = fs::File::open(path).map_err(not_readable)?;
        check_private(path, &f.metadata().map_err(not_readable)?, &own_groups())?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(32));
        std::io::Read::by_ref(&mut f)
            .take(1024)
            .read_to_end(&mut bytes)
            .map_err(not_readable)?;
        if bytes.len() != 32 {
            return Err(KmsError::Config(format!(
                "KEK file {} holds {} bytes; a KEK is exactly 32 bytes",
                path.display(),
                bytes.len()
            )));
        }
        Self::from_bytes(&bytes)
    }

    /// Builds a local KMS from KEK bytes (tests and tools).
    pub fn from_bytes(kek: &[u8]) -> Result<Self, KmsError> {
        let cipher = Aes256Gcm::new_from_slice(kek)
            .map_err(|_| KmsError::Config("a local KEK is exactly 32 bytes".into()))?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(kek)
            .map_err(|_| KmsError::Config("a local KEK is exactly 32 bytes".into()))?;
        mac.update(b"fieldcrypt local KEK fingerprint v1");
        let mut fingerprint = [0u8; FP_LEN];
        fingerprint.copy_from_slice(&mac.finalize().into_bytes()[..FP_LEN]);
        Ok(LocalKms {
            cipher,
            fingerprint,
            id: format!("local:{}", hex::encode(fingerprint)),
        })
    }

    fn aad(ctx: &EncryptionContext) -> Vec<u8> {
        let mut ad = AD_LABEL.to_vec();
        for (k, v) in ctx {
            ad.extend_from_slice(&(k.len() as u32).to_be_bytes());
            ad.extend_from_slice(k.as_bytes());
            ad.extend_from_slice(&(v.len() as u32).to_be_bytes());
            ad.extend_from_slice(v.as_bytes());
        }
        ad
    }
}

/// Creates `dir` (and missing parents) as 0700 whatever the umask; an existing
/// directory is left as it is.
fn create_private_dir(dir: &Path) -> Result<(), KmsError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(|e| KmsError::Config(format!("cannot create directory {}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
            KmsError::Config(format!("cannot chmod directory {}: {e}", dir.display()))
        })?;
    }
    Ok(())
}

/// This process's effective group and supplementary groups.
fn own_groups() -> Vec<u32> {
    let mut g: Vec<u32> = rustix::process::getgroups()
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    g.push(rustix::process::getegid().as_raw());
    g
}

/// Is `path` a file of a Kubernetes Secret (or ConfigMap, projected) volume? The
/// kubelet writes them atomically as `NAME -> ..data/NAME`, `..data -> ..<timestamp>`.
fn in_kubernetes_volume(path: &Path) -> bool {
    let Ok(target) = std::fs::read_link(path) else {
        return false;
    };
    target
        .components()
        .next()
        .is_some_and(|c| c.as_os_str() == "..data")
        && path.parent().is_some_and(|d| d.join("..data").is_symlink())
}

/// Refuses a KEK file that anyone but its owner may read or write, but for the
/// read-only group access of a Kubernetes Secret volume (see [`LocalKms::open`]).
fn check_private(path: &Path, m: &fs::Metadata, groups: &[u32]) -> Result<(), KmsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = m.permissions().mode() & 0o777;
        // Kubernetes: read-only for the pod's own group (fsGroup), nobody else.
        let k8s_group_read = mode & 0o077 == 0o040
            && mode & 0o200 == 0
            && groups.contains(&m.gid())
            && in_kubernetes_volume(path);
        if mode & 0o077 != 0 && !k8s_group_read {
            return Err(KmsError::Config(format!(
                "KEK file {} is accessible to group or others (mode {mode:03o}); refusing to use \
                 it. Make it private with: chmod 600 {} (on Kubernetes: mount its Secret with \
                 defaultMode: 0400 and the pod's fsGroup, which the kubelet turns into 0440 for \
                 that group only)",
                path.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl Kms for LocalKms {
    fn kek_id(&self) -> &str {
        &self.id
    }

    async fn encrypt_data_key(
        &self,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ad = Self::aad(ctx);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &ad,
                },
            )
            .map_err(|_| KmsError::Config("local KMS could not wrap a key".into()))?;
        let mut blob = Vec::with_capacity(1 + FP_LEN + 12 + ct.len());
        blob.push(BLOB_VERSION);
        blob.extend_from_slice(&self.fingerprint);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Ok(WrappedKey {
            kek: self.id.clone(),
            blob,
        })
    }

    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let b = &wrapped.blob;
        if b.len() < 1 + FP_LEN + 12 + 16 || b[0] != BLOB_VERSION {
            return Err(KmsError::InvalidCiphertext);
        }
        if b[1..1 + FP_LEN] != self.fingerprint {
            return Err(KmsError::WrongKek {
                expected: self.id.clone(),
                found: format!("local:{}", hex::encode(&b[1..1 + FP_LEN])),
            });
        }
        let ad = Self::aad(ctx);
        let pt = self
            .cipher
            .decrypt(
                Nonce::from_slice(&b[1 + FP_LEN..1 + FP_LEN + 12]),
                Payload {
                    msg: &b[1 + FP_LEN + 12..],
                    aad: &ad,
                },
            )
            .map_err(|_| KmsError::InvalidCiphertext)?;
        Ok(Zeroizing::new(pt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Kubernetes Secret volume as the kubelet writes it: `kek.key -> ..data/kek.key`,
    /// `..data -> ..<timestamp>`, the file `0440` owned by the pod's fsGroup (from
    /// `defaultMode: 0400`). Accepted there when the group is ours; the same file
    /// read directly, or world-readable, or group-writable, is refused.
    #[cfg(unix)]
    #[test]
    fn a_kubernetes_secret_volume_with_default_mode_0400_is_accepted() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let stamp = d.join("..2026_12_07_10_00_00.123456789");
        std::fs::create_dir(&stamp).unwrap();
        let real = stamp.join("kek.key");
        std::fs::write(&real, [7u8; 32]).unwrap();
        symlink("..2026_12_07_10_00_00.123456789", d.join("..data")).unwrap();
        symlink("..data/kek.key", d.join("kek.key")).unwrap();
        let chmod =
            |m| std::fs::set_permissions(&real, std::fs::Permissions::from_mode(m)).unwrap();
        chmod(0o440);
        LocalKms::open(&d.join("kek.key")).expect("the kubelet's 0440 for our own group");
        let e = LocalKms::open(&real).unwrap_err().to_string();
        assert!(
            e.contains("accessible to group"),
            "outside the volume's links: {e}"
        );
        for bad in [0o444, 0o460, 0o640] {
            chmod(bad);
            let e = LocalKms::open(&d.join("kek.key")).unwrap_err().to_string();
            assert!(
                e.contains("accessible to group") && e.contains("fsGroup"),
                "{bad:o}: {e}"
            );
        }
        chmod(0o400);
        LocalKms::open(&d.join("kek.key")).expect("0400 is private anywhere");
        // Group read by a group that is not ours is refused even in the volume.
        chmod(0o440);
        let m = std::fs::metadata(&real).unwrap();
        assert!(check_private(&d.join("kek.key"), &m, &[]).is_err());
    }

    fn ctx(p: &str) -> EncryptionContext {
        [("fieldcrypt:purpose".to_string(), p.to_string())].into()
    }

    #[tokio::test]
    async fn wraps_and_unwraps_within_context_only() {
        let kms = LocalKms::from_bytes(&[5u8; 32]).unwrap();
        let dk = kms.generate_data_key(32, &ctx("dek")).await.unwrap();
        assert_eq!(dk.plaintext.len(), 32);
        let back = kms
            .decrypt_data_key(&dk.wrapped, &ctx("dek"))
            .await
            .unwrap();
        assert_eq!(*back, *dk.plaintext);
        assert_eq!(
            kms.decrypt_data_key(&dk.wrapped, &ctx("deterministic"))
                .await
                .unwrap_err(),
            KmsError::InvalidCiphertext
        );
        let other = LocalKms::from_bytes(&[6u8; 32]).unwrap();
        let e = other
            .decrypt_data_key(&dk.wrapped, &ctx("dek"))
            .await
            .unwrap_err();
        assert!(matches!(e, KmsError::WrongKek { .. }), "{e}");
        assert!(!e.to_string().contains("0505"), "no key bytes in errors");
    }

    #[test]
    fn init_refuses_to_overwrite_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/kek.key");
        LocalKms::init(&p).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let e = LocalKms::init(&p).unwrap_err().to_string();
        assert!(e.contains("refusing to overwrite"), "{e}");
        LocalKms::open(&p).unwrap();
        let e = LocalKms::open(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(dir.path().join("short"), b"abc").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let short = dir.path().join("short");
            std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let e = LocalKms::open(&dir.path().join("short"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 bytes"), "{e}");
    }
}
