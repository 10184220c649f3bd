//! The DEK Registry of Confluent Schema Registry (`/dek-registry/v1`): KEKs and
//! the wrapped DEKs of Confluent's client-side field level encryption.
//!
//! What it hides: the request shapes Confluent's clients send (notes §4), the
//! `405` fallback to the older DEK create route, the `409` of a key that already
//! exists (read back and returned, as the clients do: whoever created it first
//! wins), and the caches. KEKs and numbered DEK versions are cached for the life
//! of the process; "latest" only for [`LATEST_TTL`]. A `404` is "no such key"
//! (`Ok(None)`), everything else a [`RegistryError`]. Nothing here logs a key:
//! the `keyMaterial` the server fills in for shared KEKs is plaintext, kept in
//! [`Zeroizing`] and redacted from `Debug`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use zeroize::Zeroizing;

use super::{encode_segment, RegistryError, SchemaRegistry};

/// The DEK algorithms Confluent defines (its `DekFormat`); the server is
/// case-sensitive.
pub const DEK_ALGORITHMS: [&str; 3] = ["AES128_GCM", "AES256_GCM", "AES256_SIV"];

/// How long a "latest" DEK is reused before it is asked for again. A numbered
/// version never changes, but "latest" moves when any producer rotates (a new
/// version after `encrypt.dek.expiry.days`); cached forever, this process would
/// keep encrypting with the old DEK and never see the rotation. A minute bounds
/// that to one request per minute per DEK, and [`SchemaRegistry::create_dek`]
/// drops the entry at once when this process creates a version.
pub const LATEST_TTL: Duration = Duration::from_secs(60);

const KEKS: &str = "/dek-registry/v1/keks";

/// A key encryption key as the registry stores it: a name for a key in a KMS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Kek {
    /// The KEK's name (the rule's `encrypt.kek.name`).
    pub name: String,
    /// `aws-kms`, `azure-kms`, `gcp-kms`, `hcvault`, `local-kms`, ...
    pub kms_type: String,
    /// The key in that KMS (an ARN for AWS).
    pub kms_key_id: String,
    /// KMS-specific settings.
    #[serde(default)]
    pub kms_props: BTreeMap<String, String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
    /// The registry holds the KMS credentials and generates the DEKs
    /// (which then come with `keyMaterial`).
    #[serde(default)]
    pub shared: bool,
    /// When it was stored, in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// Soft-deleted.
    #[serde(default)]
    pub deleted: bool,
}

/// A data encryption key as the registry stores it: one per (KEK, subject,
/// algorithm, version), wrapped by the KEK.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dek {
    /// The KEK that wraps it.
    pub kek_name: String,
    /// The subject it encrypts for (`<topic>-value` under TopicNameStrategy).
    pub subject: String,
    /// 1, 2, ... (a new one per rotation).
    pub version: i32,
    /// One of [`DEK_ALGORITHMS`].
    pub algorithm: String,
    /// The wrapped key, base64 (for Confluent: a wrapped Tink key proto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_key_material: Option<String>,
    /// The plaintext key, base64, which the server fills in for shared KEKs.
    /// Secret: redacted from `Debug`, zeroed on drop.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "secret_string"
    )]
    pub key_material: Option<Zeroizing<String>>,
    /// When it was stored, in ms since the epoch (rotation compares it with
    /// the expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// Soft-deleted.
    #[serde(default)]
    pub deleted: bool,
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dek")
            .field("kek_name", &self.kek_name)
            .field("subject", &self.subject)
            .field("version", &self.version)
            .field("algorithm", &self.algorithm)
            .field("encrypted_key_material", &self.encrypted_key_material)
            .field(
                "key_material",
                &self.key_material.as_ref().map(|_| "<redacted>"),
            )
            .field("ts", &self.ts)
            .field("deleted", &self.deleted)
            .finish()
    }
}

/// `Option<Zeroizing<String>>` as an optional JSON string (zeroize has no serde).
mod secret_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(
        v: &Option<Zeroizing<String>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(k) => s.serialize_some(k.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Zeroizing<String>>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Zeroizing::new))
    }
}

/// A KEK to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKek {
    pub name: String,
    pub kms_type: String,
    pub kms_key_id: String,
    /// Let the registry generate and unwrap DEKs (it must hold KMS credentials).
    pub shared: bool,
}

/// A DEK version to create under a KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDek {
    pub subject: String,
    /// 1 for the first; `latest.version + 1` to rotate.
    pub version: i32,
    /// One of [`DEK_ALGORITHMS`].
    pub algorithm: String,
    /// The wrapped key, base64; `None` under a shared KEK (the server
    /// generates it).
    pub encrypted_key_material: Option<String>,
}

/// Which DEK version to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DekVersion {
    /// The highest version (sent as `-1`, as Confluent's clients do).
    Latest,
    /// That version (1 or more).
    Number(i32),
}

impl DekVersion {
    /// The path segment; a number below 1 is refused (`-1` would silently
    /// mean "latest" to the server, and be cached as if it were a version).
    fn segment(self, what: &str) -> Result<String, RegistryError> {
        match self {
            DekVersion::Latest => Ok("-1".into()),
            DekVersion::Number(n) if n >= 1 => Ok(n.to_string()),
            DekVersion::Number(n) => Err(RegistryError::Refused {
                what: what.to_string(),
                message: format!(
                    "DEK version {n}: versions start at 1 (use DekVersion::Latest for the latest)"
                ),
            }),
        }
    }
}

/// (KEK, subject, algorithm, `deleted` asked for). A DEK read with
/// `deleted=true` may be a deleted one, so it is not reused for `false`.
type DekKey = (String, String, &'static str, bool);

/// The DEK Registry's caches, held by [`SchemaRegistry`].
pub(in crate::registry) struct DekCaches {
    /// Name → KEK (read with `deleted=false`). Kept for good: a KEK's KMS
    /// type and key id cannot be changed (Confluent's update touches only
    /// `kmsProps`, `doc` and `shared`), and the clients cache it for good too.
    keks: Cache<String, Kek>,
    /// Numbered versions, which never change: kept for good.
    versions: Cache<(DekKey, i32), Dek>,
    /// "Latest", for [`LATEST_TTL`].
    latest: Cache<DekKey, Dek>,
}

impl DekCaches {
    pub(in crate::registry) fn new() -> Self {
        DekCaches {
            keks: Cache::builder().max_capacity(10_000).build(),
            versions: Cache::builder().max_capacity(10_000).build(),
            latest: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(LATEST_TTL)
                .build(),
        }
    }

    async fn forget_latest(&self, kek: &str, subject: &str, algorithm: &'static str) {
        for deleted in [false, true] {
            self.latest
                .invalidate(&(kek.to_string(), subject.to_string(), algorithm, deleted))
                .await;
        }
    }
}

/// The canonical spelling of a known DEK algorithm.
fn known_algorithm(algorithm: &str) -> Option<&'static str> {
    DEK_ALGORITHMS.iter().copied().find(|a| *a == algorithm)
}

fn check_algorithm(algorithm: &str, what: &str) -> Result<&'static str, RegistryError> {
    // Checked here because the server answers a GET with an unknown algorithm
    // 404, which would read as "no such DEK".
    known_algorithm(algorithm).ok_or_else(|| RegistryError::Refused {
        what: what.to_string(),
        message: format!(
            "unknown DEK algorithm {algorithm:?} (expected one of {})",
            DEK_ALGORITHMS.join(", ")
        ),
    })
}

/// A KMS type as the server stores it: any `aws…`, `azure…`, `gcp…` (any case)
/// becomes `aws-kms`, `azure-kms`, `gcp-kms`; others are kept.
fn normalize_kms_type(kms_type: &str) -> String {
    let lower = kms_type.to_ascii_lowercase();
    for prefix in ["aws", "azure", "gcp"] {
        if lower.starts_with(prefix) {
            return format!("{prefix}-kms");
        }
    }
    kms_type.to_string()
}

/// Why an existing KEK is not the one asked for, if it is not.
fn kek_mismatch(existing: &Kek, asked: &NewKek) -> Option<String> {
    let (have, want) = (
        normalize_kms_type(&existing.kms_type),
        normalize_kms_type(&asked.kms_type),
    );
    if have == want && existing.kms_key_id == asked.kms_key_id {
        return None;
    }
    Some(format!(
        "KEK {} already exists with kmsType {have} and kmsKeyId {}, not the kmsType {want} and kmsKeyId {} asked for; use another KEK name or the existing key",
        existing.name, existing.kms_key_id, asked.kms_key_id
    ))
}

/// The body of `POST /keks`, as the Python client sends it.
fn kek_body(new: &NewKek) -> Json {
    serde_json::json!({
        "name": new.name,
        "kmsType": new.kms_type,
        "kmsKeyId": new.kms_key_id,
        "shared": new.shared,
    })
}

/// The body of a DEK create (`encryptedKeyMaterial` left out when `None`).
fn dek_body(new: &NewDek, algorithm: &str) -> Json {
    let mut body = serde_json::json!({
        "subject": new.subject,
        "version": new.version,
        "algorithm": algorithm,
    });
    if let Some(m) = &new.encrypted_key_material {
        body["encryptedKeyMaterial"] = Json::String(m.clone());
    }
    body
}

fn kek_path(kek: &str) -> String {
    format!("{KEKS}/{}", encode_segment(kek))
}

fn dek_path(kek: &str, subject: &str) -> String {
    format!(
        "{KEKS}/{}/deks/{}",
        encode_segment(kek),
        encode_segment(subject)
    )
}

fn parse<T: serde::de::DeserializeOwned>(body: Json, what: &str) -> Result<T, RegistryError> {
    // serde's message names the field and type, never the value.
    serde_json::from_value(body).map_err(|e| RegistryError::Invalid {
        what: what.to_string(),
        msg: format!("not a DEK Registry entity: {e}"),
    })
}

/// A DEK answer must be about what was asked: the KEK, the subject, the version
/// (`version_ok`) and the algorithm. Another subject's DEK (a registry bug, or a
/// registry answering for someone else) is never used, and never cached.
fn check_dek_answer(
    dek: &Dek,
    kek: &str,
    subject: &str,
    version_ok: bool,
    algorithm: &str,
    what: &str,
) -> Result<(), RegistryError> {
    if !version_ok || dek.algorithm != algorithm || dek.subject != subject || dek.kek_name != kek {
        return Err(RegistryError::Invalid {
            what: what.to_string(),
            msg: format!(
                "answered with the DEK of KEK {}, subject {}, version {}, algorithm {}",
                dek.kek_name, dek.subject, dek.version, dek.algorithm
            ),
        });
    }
    Ok(())
}

/// A cache lookup whose `404` means "none" (errors, `404` included, are never cached).
fn found<T>(r: Result<T, Arc<RegistryError>>) -> Result<Option<T>, RegistryError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) => match &*e {
            RegistryError::NotFound { .. } => Ok(None),
            e => Err(e.clone()),
        },
    }
}

impl SchemaRegistry {
    /// The KEK `name` (not a deleted one), or `None`; cached for good once found.
    pub async fn kek(&self, name: &str) -> Result<Option<Kek>, RegistryError> {
        let fetch = async {
            let what = format!("KEK {name}");
            let path = format!("{}?deleted=false", kek_path(name));
            let body = self
                .call("get_kek", &what, reqwest::Method::GET, &path, None)
                .await?;
            let kek = parse::<Kek>(body, &what)?;
            // An answer about another KEK must never stand for this one.
            if kek.name != name {
                return Err(RegistryError::Invalid {
                    what,
                    msg: format!("answered with KEK {}", kek.name),
                });
            }
            Ok(kek)
        };
        found(self.dek.keks.try_get_with(name.to_string(), fetch).await)
    }

    /// Creates a KEK; if it exists already (`409`), the existing one, provided
    /// it names the same KMS type and key (else [`RegistryError::Refused`]).
    pub async fn create_kek(&self, new: &NewKek) -> Result<Kek, RegistryError> {
        let what = format!("creating KEK {}", new.name);
        let ans = self
            .call(
                "create_kek",
                &what,
                reqwest::Method::POST,
                KEKS,
                Some(&kek_body(new)),
            )
            .await;
        match ans {
            Ok(body) => {
                let kek = parse::<Kek>(body, &what)?;
                self.dek.keks.insert(kek.name.clone(), kek.clone()).await;
                Ok(kek)
            }
            Err(RegistryError::Rejected { status: 409, .. }) => {
                let existing =
                    self.kek(&new.name)
                        .await?
                        .ok_or_else(|| RegistryError::Invalid {
                            what: what.clone(),
                            msg: "the KEK exists (409) but reading it back found none".into(),
                        })?;
                match kek_mismatch(&existing, new) {
                    None => Ok(existing),
                    Some(message) => Err(RegistryError::Refused { what, message }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The DEK of `subject` under `kek` for `algorithm` at `version`, or `None`
    /// (also when the KEK does not exist). `deleted`: also return a
    /// soft-deleted DEK (Confluent's consumers ask `true`, producers `false`).
    /// Numbered versions are cached for good, [`DekVersion::Latest`] for
    /// [`LATEST_TTL`]; a miss is not cached.
    pub async fn dek(
        &self,
        kek: &str,
        subject: &str,
        version: DekVersion,
        algorithm: &str,
        deleted: bool,
    ) -> Result<Option<Dek>, RegistryError> {
        let what = format!("DEK of subject {subject} under KEK {kek}");
        let algorithm = check_algorithm(algorithm, &what)?;
        let segment = version.segment(&what)?;
        let what = format!("{what}, version {segment}, {algorithm}");
        let fetch = async {
            let path = format!(
                "{}/versions/{segment}?algorithm={algorithm}&deleted={deleted}",
                dek_path(kek, subject)
            );
            let body = self
                .call("get_dek", &what, reqwest::Method::GET, &path, None)
                .await?;
            let dek = parse::<Dek>(body, &what)?;
            // A wrong answer must not be cached under this version for good.
            let version_ok = match version {
                DekVersion::Number(n) => dek.version == n,
                DekVersion::Latest => dek.version >= 1,
            };
            check_dek_answer(&dek, kek, subject, version_ok, algorithm, &what)?;
            Ok(dek)
        };
        let key = (kek.to_string(), subject.to_string(), algorithm, deleted);
        found(match version {
            DekVersion::Latest => self.dek.latest.try_get_with(key, fetch).await,
            DekVersion::Number(n) => self.dek.versions.try_get_with((key, n), fetch).await,
        })
    }

    /// Creates a DEK version under `kek`. A server without
    /// `POST /keks/{kek}/deks/{subject}` answers `405`, and the older
    /// `POST /keks/{kek}/deks` is used, as Confluent's clients do. If that
    /// version exists already (`409`: another writer got there first) the
    /// existing one is returned: use *its* key material, not the one sent.
    pub async fn create_dek(&self, kek: &str, new: &NewDek) -> Result<Dek, RegistryError> {
        let what = format!(
            "creating DEK version {} of subject {} under KEK {kek}",
            new.version, new.subject
        );
        let algorithm = check_algorithm(&new.algorithm, &what)?;
        if new.version < 1 {
            return Err(RegistryError::Refused {
                what,
                message: "DEK versions start at 1".into(),
            });
        }
        let body = dek_body(new, algorithm);
        let post = |path: String| {
            let (what, body) = (&what, &body);
            async move {
                self.call("create_dek", what, reqwest::Method::POST, &path, Some(body))
                    .await
            }
        };
        let ans = match post(dek_path(kek, &new.subject)).await {
            Err(RegistryError::Rejected { status: 405, .. }) => {
                post(format!("{}/deks", kek_path(kek))).await
            }
            r => r,
        };
        // Either way a version now exists that "latest" may not show yet.
        self.dek.forget_latest(kek, &new.subject, algorithm).await;
        match ans {
            Ok(body) => {
                let dek = parse::<Dek>(body, &what)?;
                check_dek_answer(
                    &dek,
                    kek,
                    &new.subject,
                    dek.version == new.version,
                    algorithm,
                    &what,
                )?;
                let key = (kek.to_string(), new.subject.clone(), algorithm, false);
                self.dek
                    .versions
                    .insert((key, dek.version), dek.clone())
                    .await;
                Ok(dek)
            }
            Err(RegistryError::Rejected { status: 409, .. }) => self
                .dek(
                    kek,
                    &new.subject,
                    DekVersion::Number(new.version),
                    algorithm,
                    false,
                )
                .await?
                .ok_or_else(|| RegistryError::Invalid {
                    what,
                    msg: "the DEK exists (409) but reading it back found none".into(),
                }),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_read_the_servers_json() {
        let kek: Kek = serde_json::from_value(serde_json::json!({
            "name": "kek1", "kmsType": "local-kms", "kmsKeyId": "mykey",
            "kmsProps": {"a": "b"}, "shared": false, "ts": 1700000000000i64
        }))
        .unwrap();
        assert_eq!(kek.kms_props.get("a").map(String::as_str), Some("b"));
        assert_eq!(
            (kek.doc, kek.ts, kek.deleted),
            (None, Some(1_700_000_000_000), false)
        );

        let dek: Dek = serde_json::from_value(serde_json::json!({
            "kekName": "kek1", "subject": "t-value", "version": 1,
            "algorithm": "AES256_GCM", "encryptedKeyMaterial": "AAAA", "ts": 5,
            "deleted": true, "someFutureField": 1
        }))
        .unwrap();
        assert_eq!(dek.encrypted_key_material.as_deref(), Some("AAAA"));
        assert!(dek.key_material.is_none() && dek.deleted);
        let back = serde_json::to_value(&dek).unwrap();
        assert!(back.get("keyMaterial").is_none());
        assert_eq!(back["kekName"], "kek1");
    }

    #[test]
    fn dek_debug_redacts_the_plaintext_key() {
        let dek: Dek = serde_json::from_value(serde_json::json!({
            "kekName": "k", "subject": "s", "version": 2, "algorithm": "AES256_SIV",
            "encryptedKeyMaterial": "d3JhcHBlZA==", "keyMaterial": "c2VjcmV0LWtleQ=="
        }))
        .unwrap();
        assert_eq!(
            dek.key_material.as_deref().map(String::as_str),
            Some("c2VjcmV0LWtleQ==")
        );
        let shown = format!("{dek:?} {dek:#?}");
        assert!(!shown.contains("c2VjcmV0LWtleQ"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("d3JhcHBlZA=="));
        assert_eq!(
            serde_json::to_value(&dek).unwrap()["keyMaterial"],
            "c2VjcmV0LWtleQ=="
        );
    }

    #[test]
    fn versions_and_algorithms_are_checked_before_any_request() {
        assert_eq!(DekVersion::Latest.segment("t").unwrap(), "-1");
        assert_eq!(DekVersion::Number(7).segment("t").unwrap(), "7");
        assert!(DekVersion::Number(0).segment("t").is_err());
        assert!(DekVersion::Number(-1).segment("t").is_err());
        for a in DEK_ALGORITHMS {
            assert_eq!(known_algorithm(a), Some(a));
        }
        assert_eq!(known_algorithm("aes256_gcm"), None);
        let e = check_algorithm("AES512", "x").unwrap_err();
        assert!(matches!(e, RegistryError::Refused { .. }) && e.is_infrastructure());
        assert!(e.to_string().contains("AES256_GCM"), "{e}");
    }

    #[test]
    fn kek_conflicts_compare_the_stored_kms_type() {
        assert_eq!(normalize_kms_type("AWS"), "aws-kms");
        assert_eq!(normalize_kms_type("gcp-kms"), "gcp-kms");
        assert_eq!(normalize_kms_type("local-kms"), "local-kms");
        let existing = Kek {
            name: "k".into(),
            kms_type: "aws-kms".into(),
            kms_key_id: "arn:aws:kms:eu-west-1:1:key/a".into(),
            kms_props: BTreeMap::new(),
            doc: None,
            shared: false,
            ts: Some(1),
            deleted: false,
        };
        let mut asked = NewKek {
            name: "k".into(),
            kms_type: "aws".into(),
            kms_key_id: existing.kms_key_id.clone(),
            shared: false,
        };
        assert_eq!(kek_mismatch(&existing, &asked), None);
        asked.kms_key_id = "arn:aws:kms:eu-west-1:1:key/b".into();
        let m = kek_mismatch(&existing, &asked).unwrap();
        assert!(m.contains("key/a") && m.contains("key/b"), "{m}");
        asked.kms_key_id = existing.kms_key_id.clone();
        asked.kms_type = "local-kms".into();
        assert!(kek_mismatch(&existing, &asked).is_some());
    }

    #[test]
    fn request_bodies_and_paths_match_confluents_clients() {
        let new = NewKek {
            name: "kek1".into(),
            kms_type: "local-kms".into(),
            kms_key_id: "mykey".into(),
            shared: false,
        };
        assert_eq!(
            kek_body(&new),
            serde_json::json!({"name":"kek1","kmsType":"local-kms","kmsKeyId":"mykey","shared":false})
        );
        let mut dek = NewDek {
            subject: "t-value".into(),
            version: 1,
            algorithm: "AES256_GCM".into(),
            encrypted_key_material: Some("AAAA".into()),
        };
        assert_eq!(
            dek_body(&dek, "AES256_GCM"),
            serde_json::json!({"subject":"t-value","version":1,"algorithm":"AES256_GCM","encryptedKeyMaterial":"AAAA"})
        );
        dek.encrypted_key_material = None;
        assert!(dek_body(&dek, "AES256_GCM")
            .get("encryptedKeyMaterial")
            .is_none());
        assert_eq!(
            dek_path("kek1", "a/b c-value"),
            "/dek-registry/v1/keks/kek1/deks/a%2Fb%20c-value"
        );
        assert_eq!(kek_path("k?x"), "/dek-registry/v1/keks/k%3Fx");
    }
}
