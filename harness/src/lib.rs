//! The harness shared by the integration tests and `cargo xtask` (benchmarks, the
//! local load test): real components on free 127.0.0.1 ports, each killed when its
//! handle drops — the tansu broker and the test Schema Registry ([`broker`]), moto's
//! KMS emulator and a fault-injecting proxy ([`kms`]) — plus keys on disk, Kafka
//! client helpers, an engine with a throwaway KEK ([`Fixture`]), and the
//! scale-out churn run of several `fieldcrypt run` replicas ([`churn`]), and the
//! binary run from a test, deaf to the caller's FIELDCRYPT_* ([`cli`]).

pub mod broker;
pub mod churn;
pub mod cli;
pub mod kms;

use std::sync::Arc;

use fieldcrypt::config::Config;
use fieldcrypt::engine::EncryptFailure;
use fieldcrypt::engine::Engine;
use fieldcrypt::keys::keyset::Purpose;
use fieldcrypt::keys::{Keyset, Kms, LocalKms};
use fieldcrypt::transform::decrypt::DekSet;
use fieldcrypt::transform::Encryptor;
use rand::RngCore;

/// Writes a keyset with a deterministic and a blind-index key per named domain.
pub async fn write_keyset(
    kms: &dyn Kms,
    path: &std::path::Path,
    deterministic: &[&str],
    index: &[&str],
) {
    let mut ks = Keyset::default();
    for d in deterministic {
        ks.create(kms, Purpose::Deterministic, d).await.unwrap();
    }
    for d in index {
        ks.create(kms, Purpose::BlindIndex, d).await.unwrap();
    }
    ks.save(path).unwrap();
}

pub struct Fixture {
    pub engine: Engine,
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(mut cfg: Config, deterministic: &[&str], index: &[&str]) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut kek = [0u8; 32];
        rand::rng().fill_bytes(&mut kek);
        let kms: Arc<dyn Kms> = Arc::new(LocalKms::from_bytes(&kek).unwrap());
        cfg.keyset.file = dir.path().join("keyset.json");
        let engine = rt.block_on(async {
            write_keyset(kms.as_ref(), &cfg.keyset.file, deterministic, index).await;
            Engine::with_kms(cfg, kms).await.unwrap()
        });
        Fixture { engine, rt, dir }
    }

    /// Encrypts one datum through the engine (which rotates the DEK if it runs
    /// out); returns the output and the DEKs needed to decrypt it.
    pub fn encrypt(
        &self,
        enc: &Encryptor,
        datum: &[u8],
    ) -> Result<(Vec<u8>, DekSet), fieldcrypt::transform::TransformError> {
        self.rt.block_on(async {
            let mut deks = DekSet::new();
            let mut out = Vec::new();
            match self.engine.encrypt(enc, "test", datum, &mut out).await {
                Ok(done) => {
                    if let Some(dek) = done.dek {
                        deks.insert(
                            *dek.id(),
                            self.engine.unwrap_dek(dek.wrapped()).await.unwrap(),
                        );
                    }
                    Ok((out, deks))
                }
                Err(EncryptFailure::Record(e)) => Err(e),
                Err(e) => panic!("encrypting failed: {e}"),
            }
        })
    }
}
