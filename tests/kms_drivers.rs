//! The KMS driver conformance suite: every driver in `keys::driver::DRIVERS` runs
//! the same checks against a real key store (KEK files for `local`, moto's KMS
//! emulator for `aws`), for fieldcrypt's format and, where the driver speaks it,
//! Confluent's:
//!
//! - wrap/unwrap round trips (generated and given keys), no plaintext in a blob;
//! - the wrapped key names its KEK in an id this driver, and no other, claims;
//! - another KEK's wrapped key, a forged KEK id and a tampered blob are refused,
//!   as refusals (not retried as outages);
//! - the encryption context is bound: unwrapping under another one fails;
//! - an unreachable KMS is an outage (`is_retriable`), not a refusal;
//! - nothing logged at TRACE (through the product's filter, which holds the KMS
//!   SDK's request dumps at info) carries a key id or key bytes.
//!
//! A driver without a fixture here fails the suite: adding a provider means adding
//! its fixture (and its emulator).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::kms::Moto;
use fieldcrypt::keys::aws::AwsConfig;
use fieldcrypt::keys::driver::{Clients, DRIVERS};
use fieldcrypt::keys::{EncryptionContext, Kms, KmsConfig, KmsError, LocalKms, Provider};

/// What one driver's checks need.
struct Fixture {
    /// Keeps the key store alive (moto's process, the KEK directory).
    _store: Box<dyn std::any::Any>,
    /// The `[kms]` config the drivers' clients are built from.
    config: KmsConfig,
    /// Two KEKs, by the provider's own names for them.
    kek_a: String,
    kek_b: String,
    /// A Confluent KEK's `kmsKeyId`, when the driver speaks Confluent's format.
    confluent_key: Option<String>,
    /// A config and KEK whose KMS cannot be reached; `None` for a KMS with no
    /// network (a local file).
    outage: Option<(KmsConfig, String)>,
    /// Strings no log line may carry (key ids, ARNs, file names).
    secret_ids: Vec<String>,
}

fn fixture(p: Provider) -> Fixture {
    match p.name() {
        "local" => {
            let dir = tempfile::tempdir().unwrap();
            let a = dir.path().join("kek-a.key");
            let b = dir.path().join("kek-b.key");
            LocalKms::init(&a).unwrap();
            LocalKms::init(&b).unwrap();
            // Confluent's local-kms takes its KEK from this secret.
            std::env::set_var("FIELDCRYPT_LOCAL_KMS_SECRET", "kms-drivers-conformance");
            Fixture {
                config: KmsConfig::local(&a),
                kek_a: a.display().to_string(),
                kek_b: b.display().to_string(),
                confluent_key: Some("unused-by-local-kms".into()),
                outage: None,
                secret_ids: vec!["kek-a.key".into(), "kek-b.key".into()],
                _store: Box::new(dir),
            }
        }
        "aws" => {
            let moto = Moto::start();
            let a = moto.create_key(Some("alias/conformance-a"));
            let b = moto.create_key(None);
            let settings = moto.settings();
            let config = KmsConfig::aws(AwsConfig {
                key_id: Some(a.clone()),
                region: settings.region.clone(),
                endpoint_url: settings.endpoint_url.clone(),
            });
            // A port nothing listens on: every call is refused at connect.
            let closed = common::broker::free_port();
            let dead = KmsConfig::aws(AwsConfig {
                key_id: Some(a.clone()),
                region: settings.region.clone(),
                endpoint_url: Some(format!("http://127.0.0.1:{closed}")),
            });
            let key_uuid = |arn: &str| arn.rsplit('/').next().unwrap().to_string();
            Fixture {
                config,
                kek_a: "alias/conformance-a".into(),
                kek_b: b.clone(),
                confluent_key: Some(b.clone()),
                outage: Some((dead, a.clone())),
                secret_ids: vec![key_uuid(&a), key_uuid(&b), "conformance-a".into()],
                _store: Box::new(moto),
            }
        }
        other => {
            panic!("KMS driver {other} has no conformance fixture: add one to tests/kms_drivers.rs")
        }
    }
}

fn ctx(scope: &str) -> EncryptionContext {
    [
        ("fieldcrypt:purpose".to_string(), "dek".to_string()),
        ("fieldcrypt:scope".to_string(), scope.to_string()),
    ]
    .into_iter()
    .collect()
}

/// A writer into a shared buffer, for the log capture.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn is_refusal(e: &KmsError) -> bool {
    !e.is_retriable()
        && matches!(
            e,
            KmsError::InvalidCiphertext | KmsError::WrongKek { .. } | KmsError::AccessDenied(_)
        )
}

async fn conform(p: Provider, f: &Fixture, logs: &Captured) {
    let name = p.name();
    let driver = p.driver();
    let clients = Clients::new(&f.config);
    let a: Arc<dyn Kms> = driver.open(&f.kek_a, &clients).await.unwrap();
    let b: Arc<dyn Kms> = driver.open(&f.kek_b, &clients).await.unwrap();
    let c = ctx("route:x");

    // Round trips.
    let dk = a.generate_data_key(32, &c).await.unwrap();
    assert_eq!(dk.plaintext.len(), 32, "{name}");
    assert!(
        !dk.wrapped.blob.windows(32).any(|w| w == &dk.plaintext[..]),
        "{name}: the blob carries the key in clear"
    );
    assert_eq!(
        *a.decrypt_data_key(&dk.wrapped, &c).await.unwrap(),
        *dk.plaintext,
        "{name}"
    );
    let given = [7u8; 32];
    let w = b.encrypt_data_key(&given, &c).await.unwrap();
    assert_eq!(*b.decrypt_data_key(&w, &c).await.unwrap(), given, "{name}");

    // The wrapped key's KEK id belongs to this driver, and to it alone.
    assert_eq!(Provider::of_wrapped(&dk.wrapped.kek), Some(p), "{name}");
    let claimants = DRIVERS
        .iter()
        .filter(|d| d.claims_wrapped(&dk.wrapped.kek))
        .count();
    assert_eq!(claimants, 1, "{name}: {} drivers claim its ids", claimants);
    assert!(
        a.owns(&dk.wrapped.kek) && !b.owns(&dk.wrapped.kek),
        "{name}"
    );

    // Another KEK's key, a forged KEK id, a tampered blob: refused, not retried.
    let e = b.decrypt_data_key(&dk.wrapped, &c).await.unwrap_err();
    assert!(is_refusal(&e), "{name}: another KEK's key: {e:?}");
    let mut forged = dk.wrapped.clone();
    forged.kek = b.kek_id().to_string();
    let e = b.decrypt_data_key(&forged, &c).await.unwrap_err();
    assert!(is_refusal(&e), "{name}: forged KEK id: {e:?}");
    let mut tampered = dk.wrapped.clone();
    let n = tampered.blob.len();
    tampered.blob[n - 1] ^= 1;
    let e = a.decrypt_data_key(&tampered, &c).await.unwrap_err();
    assert!(is_refusal(&e), "{name}: tampered blob: {e:?}");

    // The context is bound.
    for wrong in [ctx("route:y"), EncryptionContext::new()] {
        let e = a.decrypt_data_key(&dk.wrapped, &wrong).await.unwrap_err();
        assert_eq!(e, KmsError::InvalidCiphertext, "{name}: {wrong:?}");
    }

    // An outage is transient.
    if let Some((dead, kek)) = &f.outage {
        let down = driver.open(kek, &Clients::new(dead)).await.unwrap();
        let Err(e) = down.generate_data_key(32, &c).await else {
            panic!("{name}: an unreachable KMS generated a key");
        };
        assert!(e.is_retriable(), "{name}: an unreachable KMS gave {e:?}");
        let e = down.decrypt_data_key(&dk.wrapped, &c).await.unwrap_err();
        assert!(e.is_retriable(), "{name}: an unreachable KMS gave {e:?}");
    }

    // Confluent's side: no encryption context, the same refusals.
    if let (Some(t), Some(key)) = (driver.confluent_type(), &f.confluent_key) {
        assert_eq!(Provider::of_confluent_type(t), Some(p), "{name}");
        let k = driver.open_confluent(key, &clients).await.unwrap();
        let none = EncryptionContext::new();
        let proto = b"a DEK proto, 44 bytes long, in the test....";
        let w = k.encrypt_data_key(proto, &none).await.unwrap();
        assert!(!w.blob.windows(proto.len()).any(|x| x == proto), "{name}");
        assert_eq!(
            &*k.decrypt_data_key(&w, &none).await.unwrap(),
            proto,
            "{name}"
        );
        let mut tampered = w.clone();
        let last = tampered.blob.len() - 1;
        tampered.blob[last] ^= 1;
        let e = k.decrypt_data_key(&tampered, &none).await.unwrap_err();
        assert!(is_refusal(&e), "{name} ({t}): tampered blob: {e:?}");
    }

    // Nothing logged names a key or carries key bytes.
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    for id in &f.secret_ids {
        assert!(
            !text.contains(id.as_str()),
            "{name}: a log line names {id}:\n{text}"
        );
    }
    let hex: String = dk.plaintext.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!text.contains(&hex), "{name}: a log line carries key bytes");
}

#[test]
fn every_driver_conforms() {
    for p in Provider::all() {
        let f = fixture(p);
        let logs = Captured::default();
        let sink = logs.clone();
        // TRACE through the product's own filter, which holds the KMS clients'
        // request dumps at info (`--log trace` does the same).
        let filter =
            tracing_subscriber::EnvFilter::new(fieldcrypt::keys::driver::cap_client_logs("trace"));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(conform(p, &f, &logs));
        eprintln!("{}: conforms", p.name());
    }
}

#[test]
fn unknown_kms_types_and_ids_are_nobodys() {
    assert!(Provider::of_confluent_type("hcvault").is_none());
    assert!(Provider::of_wrapped("vault:transit/k").is_none());
    assert!(Provider::of_wrapped("gcp-kms://projects/p").is_none());
    assert!(Provider::named("azure").is_none());
}
