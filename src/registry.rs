//! Schema Registry client (the Confluent REST API subset fieldcrypt needs): writer
//! schemas fetched by id and cached for the life of the process (ids are immutable),
//! output schemas registered (or looked up) under a subject and cached, basic auth
//! and TLS. Transient failures (connection errors, timeouts, 5xx, 429) are retried
//! with exponential backoff; the registry's own answers (unknown id, invalid or
//! incompatible schema, bad credentials) are returned at once. Credentials never
//! appear in errors, logs or `Debug` output.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::observe::Metrics;

pub mod dek;

/// `[schema_registry]`: with a `url`, values (and Avro keys) are Confluent-framed
/// and their schemas come from the registry; without, values are raw Avro with the
/// writer schema from each route's `value_schema` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// Base URL, e.g. `http://127.0.0.1:8081` (none: raw Avro).
    pub url: Option<String>,
    /// Basic-auth user.
    pub username: Option<String>,
    /// Basic-auth password; prefer the `FIELDCRYPT_SCHEMA_REGISTRY_PASSWORD`
    /// environment variable, which is read when this is absent.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// PEM CA bundle to trust (TLS).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mutual TLS), with `key_file` (PKCS#8 PEM).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Per-request timeout (default 10).
    pub timeout_seconds: u64,
    /// Retries of a failed request (connection error, timeout, 5xx, 429) with
    /// exponential backoff before the pipeline stops (default 5).
    pub retries: u32,
    /// Register output schemas under the target subject (default true); false:
    /// look them up and fail clearly if they are not registered.
    pub auto_register: bool,
    /// Subject naming for output schemas: `topic` (default), `record`, `topic-record`.
    pub subject_strategy: SubjectStrategy,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        SchemaRegistryConfig {
            url: None,
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout_seconds: 10,
            retries: 5,
            auto_register: true,
            subject_strategy: Default::default(),
        }
    }
}

impl SchemaRegistryConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if self.timeout_seconds == 0 {
            return Err(crate::config::invalid(
                "schema_registry.timeout_seconds",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A registry failure, classified for the caller.
#[derive(Debug, Clone, Error)]
pub enum RegistryError {
    /// The schema id or subject does not exist (a record-level problem).
    #[error("schema registry has no {what}")]
    NotFound { what: String },
    /// The registry refused the request (invalid or incompatible schema, ...).
    #[error("schema registry rejected {what}: HTTP {status}, error {code}: {message}")]
    Rejected {
        what: String,
        status: u16,
        code: i64,
        message: String,
    },
    /// Bad or missing credentials (a configuration problem).
    #[error("schema registry refused the credentials for {what} (HTTP {status}); check schema_registry.username and the password")]
    Unauthorized { what: String, status: u16 },
    /// The registry could not be reached or kept failing: retry later.
    #[error("schema registry unavailable for {what}: {msg}")]
    Unavailable { what: String, msg: String },
    /// The registry (or a proxy in front of it) answered something unusable: an
    /// infrastructure problem, not the record's.
    #[error("schema registry returned an unusable answer for {what}: {msg}")]
    Invalid { what: String, msg: String },
    #[error("schema_registry: {0}")]
    Config(String),
    /// A DEK Registry key that cannot be used as asked (a KEK already registered
    /// with another KMS key, a DEK algorithm Confluent does not define): the
    /// data contract or the KMS settings must change; retrying cannot help.
    #[error("DEK registry: refused {what}: {message}")]
    Refused { what: String, message: String },
    /// An answer larger than [`MAX_ANSWER_BYTES`]: for a schema, a schema too big
    /// to take (the record's problem: dead-lettered, the stream goes on).
    #[error("schema registry's answer for {what} is larger than {} MiB; refusing a schema that big", limit >> 20)]
    TooLarge { what: String, limit: usize },
}

impl RegistryError {
    /// A failure of the registry rather than of the record: the pipeline must stop
    /// (or wait) instead of dead-lettering.
    pub fn is_infrastructure(&self) -> bool {
        matches!(
            self,
            RegistryError::Unavailable { .. }
                | RegistryError::Unauthorized { .. }
                | RegistryError::Invalid { .. }
                | RegistryError::Config(_)
                | RegistryError::Refused { .. }
        )
    }

    /// The error code for metrics and dead-letter headers.
    pub fn code(&self) -> crate::codes::Code {
        use crate::codes::Code;
        match self {
            RegistryError::NotFound { .. } => Code::UnknownSchemaId,
            RegistryError::Rejected { .. } => Code::SchemaRejected,
            RegistryError::Unauthorized { .. } => Code::RegistryUnauthorized,
            RegistryError::Unavailable { .. } => Code::RegistryUnavailable,
            RegistryError::Invalid { .. } => Code::RegistryInvalidAnswer,
            RegistryError::Config(_) | RegistryError::Refused { .. } => Code::RegistryConfig,
            RegistryError::TooLarge { .. } => Code::PolicyError,
        }
    }
}

/// The registry's name for Avro schemas (`schemaType`, the default).
pub const AVRO: &str = "AVRO";

/// A schema as the registry stores it: text and parsed JSON.
#[derive(Debug)]
pub struct RegisteredSchema {
    pub id: u32,
    /// `AVRO`, `JSON`, `PROTOBUF`, ... (the registry's `schemaType`). Which value
    /// format takes the schema is the pipeline's choice, not the client's.
    pub schema_type: String,
    /// The schema, standing alone: for Avro, the named types of its references
    /// (and theirs) are defined at their first use in it. A schema whose text is
    /// not JSON (Protobuf) is its text as a JSON string.
    pub json: Json,
    /// The schema's references, as registered (`[{name, subject, version}]`).
    pub references: Vec<SchemaReference>,
    /// Confluent data-contract `ruleSet`, if the schema has one.
    pub rule_set: Option<Json>,
    /// Confluent data-contract `metadata`, if the schema has one.
    pub metadata: Option<Json>,
}

/// One Confluent schema reference: the type `name` is defined by the schema
/// registered as `subject` version `version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
pub struct SchemaReference {
    pub name: String,
    pub subject: String,
    pub version: i64,
}

/// A subject's version as fetched (references not yet resolved).
#[derive(Debug)]
struct VersionBody {
    schema_type: String,
    json: Json,
    references: Vec<SchemaReference>,
    rule_set: Option<Json>,
    metadata: Option<Json>,
}

/// One registered version of a subject, standing alone (references resolved).
#[derive(Debug, Clone)]
pub struct SubjectVersion {
    /// The registry's `schemaType` (see [`RegisteredSchema::schema_type`]).
    pub schema_type: String,
    pub json: Json,
    /// Confluent data-contract `ruleSet`, if the version has one.
    pub rule_set: Option<Json>,
    /// Confluent data-contract `metadata`, if the version has one.
    pub metadata: Option<Json>,
}

/// Largest registry answer read (16 MiB): Confluent's registry stores schemas in
/// a Kafka topic whose records are about 1 MiB at most.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Most schema references followed for one schema (all levels): a bound against
/// a registry with reference cycles or absurd fan-out.
const MAX_REFERENCES: usize = 1_000;

/// What fieldcrypt asks of a Schema Registry: writer schemas by id, a subject's
/// versions (for policy floors), output-schema ids, and the DEK Registry's KEKs
/// and DEKs (Confluent's format). [`SchemaRegistry`] answers over HTTP; the
/// transform's unit tests answer from memory, so the registry and CSFLE paths are
/// tested without a server.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// The writer schema with this id.
    async fn schema_by_id(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError>;
    /// The versions registered under `subject` (none if the subject is unknown).
    async fn subject_versions(&self, subject: &str) -> Result<Vec<i64>, RegistryError>;
    /// A subject's version as one self-contained schema.
    async fn subject_schema(
        &self,
        subject: &str,
        version: i64,
    ) -> Result<SubjectVersion, RegistryError>;
    /// The id of an output schema under `subject`, registered first when
    /// `register` is true.
    async fn output_id(
        &self,
        subject: &str,
        out: &OutputSchema<'_>,
        register: bool,
    ) -> Result<u32, RegistryError>;
    /// The KEK named `name` (`None`: there is none).
    async fn kek(&self, name: &str) -> Result<Option<dek::Kek>, RegistryError>;
    /// Creates a KEK (or reads back the one another writer created).
    async fn create_kek(&self, new: &dek::NewKek) -> Result<dek::Kek, RegistryError>;
    /// A DEK of `subject` under `kek` (`None`: there is none).
    async fn dek(
        &self,
        kek: &str,
        subject: &str,
        version: dek::DekVersion,
        algorithm: &str,
        deleted: bool,
    ) -> Result<Option<dek::Dek>, RegistryError>;
    /// Creates a DEK (or reads back the one another writer created).
    async fn create_dek(&self, kek: &str, new: &dek::NewDek) -> Result<dek::Dek, RegistryError>;
}

#[async_trait::async_trait]
impl Registry for SchemaRegistry {
    async fn schema_by_id(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError> {
        SchemaRegistry::schema_by_id(self, id).await
    }
    async fn subject_versions(&self, subject: &str) -> Result<Vec<i64>, RegistryError> {
        SchemaRegistry::subject_versions(self, subject).await
    }
    async fn subject_schema(
        &self,
        subject: &str,
        version: i64,
    ) -> Result<SubjectVersion, RegistryError> {
        SchemaRegistry::subject_schema(self, subject, version).await
    }
    async fn output_id(
        &self,
        subject: &str,
        out: &OutputSchema<'_>,
        register: bool,
    ) -> Result<u32, RegistryError> {
        SchemaRegistry::output_id(self, subject, out, register).await
    }
    async fn kek(&self, name: &str) -> Result<Option<dek::Kek>, RegistryError> {
        SchemaRegistry::kek(self, name).await
    }
    async fn create_kek(&self, new: &dek::NewKek) -> Result<dek::Kek, RegistryError> {
        SchemaRegistry::create_kek(self, new).await
    }
    async fn dek(
        &self,
        kek: &str,
        subject: &str,
        version: dek::DekVersion,
        algorithm: &str,
        deleted: bool,
    ) -> Result<Option<dek::Dek>, RegistryError> {
        SchemaRegistry::dek(self, kek, subject, version, algorithm, deleted).await
    }
    async fn create_dek(&self, kek: &str, new: &dek::NewDek) -> Result<dek::Dek, RegistryError> {
        SchemaRegistry::create_dek(self, kek, new).await
    }
}

/// The client. Cheap to share (`Arc`).
pub struct SchemaRegistry {
    http: reqwest::Client,
    base: String,
    username: Option<String>,
    password: Option<Zeroizing<String>>,
    retries: u32,
    by_id: Cache<u32, Arc<RegisteredSchema>>,
    /// (subject, version) → schema, for references (versions never change).
    by_version: Cache<(String, i64), Arc<VersionBody>>,
    /// (subject, schema text, ruleSet, metadata) → id.
    ids: Cache<IdKey, u32>,
    /// KEKs and DEKs of the DEK Registry ([`dek`]).
    dek: dek::DekCaches,
    metrics: Arc<Metrics>,
}

/// What a schema id is looked up by: subject, schema text and the compact JSON
/// of its ruleSet and metadata (the registry gives the same text with other
/// rules another id).
type IdKey = (String, &'static str, String, Option<String>, Option<String>);

/// An output schema to register (or look up) under a subject: its type, text,
/// and the data-contract rule set and metadata that are part of its identity.
#[derive(Debug, Clone, Copy)]
pub struct OutputSchema<'a> {
    pub schema_type: &'static str,
    pub json: &'a Json,
    pub rule_set: Option<&'a Json>,
    pub metadata: Option<&'a Json>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("base", &self.base)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The environment variable read for the password when the config has none.
pub const PASSWORD_ENV: &str = "FIELDCRYPT_SCHEMA_REGISTRY_PASSWORD";

impl SchemaRegistry {
    /// Builds the client from `[schema_registry]` (which must have a `url`).
    pub fn new(cfg: &SchemaRegistryConfig, metrics: Arc<Metrics>) -> Result<Self, RegistryError> {
        let url = cfg
            .url
            .as_deref()
            .ok_or_else(|| RegistryError::Config("url is not set".into()))?;
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(RegistryError::Config(format!(
                "url must start with http:// or https:// (got {base:?})"
            )));
        }
        if base.contains('@') {
            return Err(RegistryError::Config(
                "url must not carry credentials; use schema_registry.username and the password settings".into(),
            ));
        }
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_seconds))
            .connect_timeout(Duration::from_secs(cfg.timeout_seconds.min(10)))
            .user_agent(concat!("fieldcrypt/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                RegistryError::Config(format!("ca_file: cannot read {}: {e}", ca.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                RegistryError::Config(format!(
                    "ca_file {}: not a PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            b = b.add_root_certificate(cert);
        }
        match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => {
                let read = |p: &std::path::Path, key: &str| {
                    std::fs::read(p).map_err(|e| {
                        RegistryError::Config(format!("{key}: cannot read {}: {e}", p.display()))
                    })
                };
                let cert = read(c, "cert_file")?;
                let key = Zeroizing::new(read(k, "key_file")?);
                let id = reqwest::Identity::from_pkcs8_pem(&cert, &key).map_err(|e| {
                    RegistryError::Config(format!(
                        "cert_file/key_file: not a PEM certificate and PKCS#8 key: {e}"
                    ))
                })?;
                b = b.identity(id);
            }
            (None, None) => {}
            _ => {
                return Err(RegistryError::Config(
                    "cert_file and key_file go together (client TLS certificate)".into(),
                ))
            }
        }
        let http = b
            .build()
            .map_err(|e| RegistryError::Config(format!("cannot build the HTTP client: {e}")))?;
        let password = cfg
            .password
            .clone()
            .or_else(|| std::env::var(PASSWORD_ENV).ok())
            .map(Zeroizing::new);
        if cfg.username.is_some() && password.is_none() {
            return Err(RegistryError::Config(format!(
                "username is set but no password: set schema_registry.password or {PASSWORD_ENV}"
            )));
        }
        Ok(SchemaRegistry {
            http,
            base,
            username: cfg.username.clone(),
            password,
            retries: cfg.retries,
            by_id: Cache::builder().max_capacity(10_000).build(),
            by_version: Cache::builder().max_capacity(10_000).build(),
            ids: Cache::builder().max_capacity(10_000).build(),
            dek: dek::DekCaches::new(),
            metrics,
        })
    }

    /// The writer schema with this id (cached for good: ids never change).
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError> {
        self.by_id
            .try_get_with(id, async move {
                let what = format!("schema id {id}");
                let body = self
                    .call(
                        "get_schema",
                        &what,
                        reqwest::Method::GET,
                        &format!("/schemas/ids/{id}"),
                        None,
                    )
                    .await?;
                let (schema_type, json, references) = parse_schema_body(&body, &what)?;
                let json = match schema_type.as_str() {
                    AVRO => self.resolve_references(json, &references, &what).await?,
                    // Another format resolves its references its own way.
                    _ => json,
                };
                Ok(Arc::new(RegisteredSchema {
                    id,
                    schema_type,
                    json,
                    references,
                    rule_set: body.get("ruleSet").filter(|v| !v.is_null()).cloned(),
                    metadata: body.get("metadata").filter(|v| !v.is_null()).cloned(),
                }))
            })
            .await
            .map_err(|e: Arc<RegistryError>| (*e).clone())
    }

    /// A subject's version (`-1`: the latest), references not resolved; cached
    /// for good when the version is explicit.
    async fn version(
        &self,
        subject: &str,
        version: i64,
    ) -> Result<Arc<VersionBody>, RegistryError> {
        let fetch = async {
            let what = format!("subject {subject} version {version}");
            let v = if version < 0 {
                "latest".to_string()
            } else {
                version.to_string()
            };
            let body = self
                .call(
                    "get_version",
                    &what,
                    reqwest::Method::GET,
                    &format!("/subjects/{}/versions/{v}", encode_segment(subject)),
                    None,
                )
                .await?;
            let (schema_type, json, references) = parse_schema_body(&body, &what)?;
            Ok(Arc::new(VersionBody {
                schema_type,
                json,
                references,
                rule_set: body.get("ruleSet").filter(|v| !v.is_null()).cloned(),
                metadata: body.get("metadata").filter(|v| !v.is_null()).cloned(),
            }))
        };
        if version < 0 {
            return fetch.await;
        }
        self.by_version
            .try_get_with((subject.to_string(), version), fetch)
            .await
            .map_err(|e: Arc<RegistryError>| (*e).clone())
    }

    /// The versions registered under `subject` (none if the subject is unknown).
    pub async fn subject_versions(&self, subject: &str) -> Result<Vec<i64>, RegistryError> {
        let what = format!("versions of subject {subject}");
        match self
            .call(
                "get_versions",
                &what,
                reqwest::Method::GET,
                &format!("/subjects/{}/versions", encode_segment(subject)),
                None,
            )
            .await
        {
            Ok(Json::Array(v)) => Ok(v.iter().filter_map(Json::as_i64).collect()),
            Ok(_) => Err(RegistryError::Invalid {
                what,
                msg: "not a list of versions".into(),
            }),
            Err(RegistryError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// A subject's version as one self-contained schema (references resolved),
    /// with its rule set and metadata.
    pub async fn subject_schema(
        &self,
        subject: &str,
        version: i64,
    ) -> Result<SubjectVersion, RegistryError> {
        let body = self.version(subject, version).await?;
        let what = format!("subject {subject} version {version}");
        let json = match body.schema_type.as_str() {
            AVRO => {
                self.resolve_references(body.json.clone(), &body.references, &what)
                    .await?
            }
            _ => body.json.clone(),
        };
        Ok(SubjectVersion {
            schema_type: body.schema_type.clone(),
            json,
            rule_set: body.rule_set.clone(),
            metadata: body.metadata.clone(),
        })
    }

    /// The schema with its references' named types defined in it: each referenced
    /// subject/version is fetched once (cached), breadth first, to any depth.
    async fn resolve_references(
        &self,
        json: Json,
        references: &[SchemaReference],
        what: &str,
    ) -> Result<Json, RegistryError> {
        if references.is_empty() {
            return Ok(json);
        }
        let mut refs = crate::schema::References::default();
        let mut queue: std::collections::VecDeque<SchemaReference> =
            references.iter().cloned().collect();
        let mut seen = std::collections::HashSet::new();
        while let Some(r) = queue.pop_front() {
            if !seen.insert((r.subject.clone(), r.version)) {
                continue;
            }
            if seen.len() > MAX_REFERENCES {
                return Err(RegistryError::Invalid {
                    what: what.to_string(),
                    msg: format!("more than {MAX_REFERENCES} schema references"),
                });
            }
            let body = match self.version(&r.subject, r.version).await {
                Err(RegistryError::NotFound { .. }) => {
                    return Err(RegistryError::NotFound {
                        what: format!(
                            "subject {} version {} (referenced as {} by {what})",
                            r.subject, r.version, r.name
                        ),
                    })
                }
                b => b?,
            };
            refs.add(&body.json);
            queue.extend(body.references.iter().cloned());
        }
        refs.inline(json).map_err(|e| RegistryError::Rejected {
            what: what.to_string(),
            status: 200,
            code: 0,
            message: format!("its references do not resolve: {e}"),
        })
    }

    /// Registers `schema` under `subject` (or finds it there when `register` is
    /// false) and returns its id.
    pub async fn id_for(
        &self,
        subject: &str,
        schema: &Json,
        register: bool,
    ) -> Result<u32, RegistryError> {
        self.id_for_with(subject, schema, None, None, register)
            .await
    }

    /// [`id_for`](Self::id_for) with a Confluent data-contract `ruleSet` (e.g. a
    /// CSFLE ENCRYPT rule) and `metadata` registered alongside the schema. The
    /// registry makes them part of the schema's identity: the same text with
    /// other rules is another id. Without them the registry gives the schema
    /// the subject's latest version's (Confluent's inheritance), so a plain
    /// `id_for` under a subject with rules answers the id *with* those rules.
    pub async fn id_for_with(
        &self,
        subject: &str,
        schema: &Json,
        rule_set: Option<&Json>,
        metadata: Option<&Json>,
        register: bool,
    ) -> Result<u32, RegistryError> {
        let out = OutputSchema {
            schema_type: AVRO,
            json: schema,
            rule_set,
            metadata,
        };
        self.output_id(subject, &out, register).await
    }

    /// [`id_for_with`](Self::id_for_with) for a schema of any type.
    pub async fn output_id(
        &self,
        subject: &str,
        out: &OutputSchema<'_>,
        register: bool,
    ) -> Result<u32, RegistryError> {
        let text = match out.json {
            Json::String(t) if out.schema_type != AVRO => t.clone(),
            j => j.to_string(),
        };
        let key = (
            subject.to_string(),
            out.schema_type,
            text.clone(),
            out.rule_set.map(Json::to_string),
            out.metadata.map(Json::to_string),
        );
        self.ids
            .try_get_with(key, async move {
                let enc = encode_segment(subject);
                let mut body =
                    serde_json::json!({ "schema": text, "schemaType": out.schema_type });
                if let Some(r) = out.rule_set {
                    body["ruleSet"] = r.clone();
                }
                if let Some(m) = out.metadata {
                    body["metadata"] = m.clone();
                }
                let (op, path, what) = if register {
                    (
                        "register",
                        format!("/subjects/{enc}/versions"),
                        format!("registering the schema under subject {subject}"),
                    )
                } else {
                    (
                        "lookup",
                        format!("/subjects/{enc}"),
                        format!("subject {subject} with this schema (auto_register is off: register it first)"),
                    )
                };
                let ans = match self
                    .call(op, &what, reqwest::Method::POST, &path, Some(&body))
                    .await
                {
                    Err(RegistryError::NotFound { .. }) => {
                        return Err(RegistryError::Rejected {
                            what,
                            status: 404,
                            code: 40403,
                            message: "the output schema is not registered under this subject and schema_registry.auto_register is false".into(),
                        })
                    }
                    r => r?,
                };
                ans.get("id")
                    .and_then(Json::as_u64)
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| RegistryError::Invalid {
                        what,
                        msg: "no numeric \"id\" in the answer".into(),
                    })
            })
            .await
            .map_err(|e: Arc<RegistryError>| (*e).clone())
    }

    async fn call(
        &self,
        op: &str,
        what: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Json>,
    ) -> Result<Json, RegistryError> {
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            let r = self.call_once(what, method.clone(), path, body).await;
            let outcome = match &r {
                Ok(_) => "ok",
                Err(RegistryError::NotFound { .. }) => "not_found",
                Err(RegistryError::Unavailable { .. }) => "unavailable",
                Err(_) => "error",
            };
            self.metrics
                .registry_requests
                .with_label_values(&[op, outcome])
                .inc();
            match r {
                Err(RegistryError::Unavailable { ref msg, .. }) if attempt < self.retries => {
                    attempt += 1;
                    tracing::warn!(what, error = %msg, attempt, "schema registry call failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                r => return r,
            }
        }
    }

    async fn call_once(
        &self,
        what: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Json>,
    ) -> Result<Json, RegistryError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("accept", CONTENT_TYPE);
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            req = req.basic_auth(u, Some(p.as_str()));
        }
        if let Some(b) = body {
            req = req.header("content-type", CONTENT_TYPE).body(b.to_string());
        }
        let unavailable = |msg: String| RegistryError::Unavailable {
            what: what.to_string(),
            msg,
        };
        let mut resp = req.send().await.map_err(|e| unavailable(describe(&e)))?;
        let status = resp.status();
        // Read at most MAX_ANSWER_BYTES: a registry (or whatever answers in its
        // place) must not make this process hold an answer of any size.
        let too_large = || RegistryError::TooLarge {
            what: what.to_string(),
            limit: MAX_ANSWER_BYTES,
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unavailable(describe(&e)))? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
                what: what.to_string(),
                msg: format!("not JSON: {e}"),
            });
        }
        let err: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
        let code = err.as_ref().and_then(|e| e.error_code).unwrap_or(0);
        let message = err
            .and_then(|e| e.message)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
        let s = status.as_u16();
        Err(match s {
            401 | 403 => RegistryError::Unauthorized {
                what: what.to_string(),
                status: s,
            },
            404 => RegistryError::NotFound {
                what: what.to_string(),
            },
            408 | 429 | 500..=599 => unavailable(format!("HTTP {s}, error {code}: {message}")),
            _ => RegistryError::Rejected {
                what: what.to_string(),
                status: s,
                code,
                message,
            },
        })
    }
}

/// A `/schemas/ids/{id}` or `/subjects/{s}/versions/{v}` answer's type (`AVRO`
/// when absent), schema and references. Avro and
/// JSON Schema texts must be JSON; another type's text that is not JSON is kept
/// as a JSON string.
fn parse_schema_body(
    body: &Json,
    what: &str,
) -> Result<(String, Json, Vec<SchemaReference>), RegistryError> {
    let text = body
        .get("schema")
        .and_then(Json::as_str)
        .ok_or_else(|| RegistryError::Invalid {
            what: what.to_string(),
            msg: "no \"schema\" string in the answer".into(),
        })?;
    let schema_type = body
        .get("schemaType")
        .and_then(Json::as_str)
        .unwrap_or(AVRO)
        .to_string();
    let json = match serde_json::from_str(text) {
        Ok(j) => j,
        Err(_) if !matches!(schema_type.as_str(), AVRO | "JSON") => Json::String(text.into()),
        Err(e) => {
            return Err(RegistryError::Invalid {
                what: what.to_string(),
                msg: format!("schema is not JSON: {e}"),
            })
        }
    };
    let references = match body.get("references") {
        None | Some(Json::Null) => Vec::new(),
        Some(r) => serde_json::from_value(r.clone()).map_err(|e| RegistryError::Invalid {
            what: what.to_string(),
            msg: format!("\"references\" is not a list of {{name, subject, version}}: {e}"),
        })?,
    };
    Ok((schema_type, json, references))
}

/// A transport error without the URL (which is ours) repeated, with its cause.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Percent-encodes a subject for a URL path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Subject naming, as Confluent's serializers do it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectStrategy {
    /// `<topic>-value` / `<topic>-key` (TopicNameStrategy, the default).
    #[default]
    Topic,
    /// The record's full name (RecordNameStrategy).
    Record,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy).
    TopicRecord,
}

impl SubjectStrategy {
    /// The subject for `schema` written to `topic`.
    pub fn subject(self, topic: &str, is_key: bool, schema: &Json) -> String {
        let record = || record_fullname(schema).unwrap_or_else(|| "unnamed".into());
        match self {
            SubjectStrategy::Topic => {
                format!("{topic}-{}", if is_key { "key" } else { "value" })
            }
            SubjectStrategy::Record => record(),
            SubjectStrategy::TopicRecord => format!("{topic}-{}", record()),
        }
    }
}

/// The full name of a named top-level schema.
fn record_fullname(schema: &Json) -> Option<String> {
    let name = schema.get("name")?.as_str()?;
    if name.contains('.') {
        return Some(name.to_string());
    }
    match schema.get("namespace").and_then(Json::as_str) {
        Some(ns) if !ns.is_empty() => Some(format!("{ns}.{name}")),
        _ => Some(name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_confluent_strategies() {
        let s = serde_json::json!({"type":"record","name":"C","namespace":"a.b","fields":[]});
        assert_eq!(SubjectStrategy::Topic.subject("t", false, &s), "t-value");
        assert_eq!(SubjectStrategy::Topic.subject("t", true, &s), "t-key");
        assert_eq!(SubjectStrategy::Record.subject("t", false, &s), "a.b.C");
        assert_eq!(
            SubjectStrategy::TopicRecord.subject("t", false, &s),
            "t-a.b.C"
        );
        assert_eq!(encode_segment("a/b c.d-value"), "a%2Fb%20c.d-value");
    }

    #[test]
    fn credentials_stay_out_of_urls_and_debug() {
        let cfg = SchemaRegistryConfig {
            url: Some("http://u:secret@localhost:8081".into()),
            ..Default::default()
        };
        let e = SchemaRegistry::new(&cfg, Arc::new(Metrics::new())).unwrap_err();
        assert!(!e.to_string().contains("secret"));
        let cfg = SchemaRegistryConfig {
            url: Some("http://localhost:8081".into()),
            username: Some("u".into()),
            password: Some("hunter2".into()),
            ..Default::default()
        };
        let r = SchemaRegistry::new(&cfg, Arc::new(Metrics::new())).unwrap();
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
