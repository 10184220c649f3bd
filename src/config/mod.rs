//! The TOML configuration (`config/fieldcrypt.toml` is the documented example).
//! Every section and key has a default, so no file at all is a valid config (the
//! embedded defaults); unknown keys are errors; [`Config::validate`] rejects every
//! invalid combination at start-up with a message naming the key and the fix.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::crypto::blind_index::Normalize;
use crate::keys::dek::{DekSettings, DEFAULT_MAX_USES, MAX_USES_CEILING};
use crate::keys::keyset::IndexSettings;
use crate::schema::plan::PlanConfig;
use crate::schema::policy::{PolicySpec, Rule, SelectionConfig, Unmatched};

pub mod env;
mod paths;

/// A config that cannot be used, naming the key at fault.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("config key {key}: {msg}")]
    Invalid { key: String, msg: String },
    #[error("config file {path}: {source}")]
    Env {
        path: PathBuf,
        source: env::EnvError,
    },
}

impl ConfigError {
    /// The config key a refused value sits at.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// A refused config value: its key and what is wrong.
pub(crate) fn invalid(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        msg: msg.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the key-encryption key lives.
    pub kms: KmsConfig,
    /// The keyset file of deterministic and blind-index keys.
    pub keyset: KeysetConfig,
    /// Lifetime of randomized-mode data keys.
    pub dek: DekConfig,
    /// How output schemas are derived.
    pub schema: SchemaConfig,
    /// Blind-index length and per-domain normalisation.
    pub blind_index: BlindIndexConfig,
    /// Confluent tag (from a field's `confluent:tags`) → policy.
    pub tags: BTreeMap<String, PolicySpec>,
    /// Fields selected by record full name and field path.
    pub rules: Vec<Rule>,
    /// Kafka connection (for `fieldcrypt run`).
    pub kafka: KafkaConfig,
    /// Stream-processing behaviour (for `fieldcrypt run`).
    pub pipeline: PipelineConfig,
    /// Source topics and where their records go (for `fieldcrypt run`).
    pub routes: Vec<crate::kafka::route::RouteConfig>,
    /// Confluent Schema Registry (for `fieldcrypt run`); none by default.
    pub schema_registry: SchemaRegistryConfig,
    /// The `/metrics` and `/health` listener (for `fieldcrypt run`).
    pub metrics: MetricsConfig,
    /// Field ciphertext format versions written and read.
    pub crypto: CryptoConfig,
    /// The file this config was read from (`None`: the embedded defaults), so
    /// that the commands a message suggests carry the same `--config`.
    #[serde(skip)]
    pub origin: Option<PathBuf>,
}

/// `[kafka]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap servers (default `127.0.0.1:9092`).
    pub bootstrap_servers: String,
    /// Consumer group (default `fieldcrypt`).
    pub group_id: String,
    /// Client id (default `fieldcrypt`).
    pub client_id: String,
    /// librdkafka properties passed to the consumer and producer as they are
    /// (`security.protocol`, `sasl.*`, `ssl.*`, ...).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "fieldcrypt".into(),
            client_id: "fieldcrypt".into(),
            properties: BTreeMap::new(),
        }
    }
}

pub use crate::keys::provider::{KmsConfig, ProviderConfig};
pub use crate::observe::server::MetricsConfig;
pub use crate::pipeline::config::{
    DeadLetterPayload, Delivery, OnError, PipelineConfig, PipelineMode,
};
pub use crate::registry::SchemaRegistryConfig;

/// `[keyset]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysetConfig {
    /// Keyset file (wrapped keys only; safe to commit).
    pub file: PathBuf,
}

impl Default for KeysetConfig {
    fn default() -> Self {
        KeysetConfig {
            file: PathBuf::from(".fieldcrypt/keyset.json"),
        }
    }
}

/// `[dek]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DekConfig {
    /// Seconds a data key is used before it is retired (default 900).
    pub ttl_seconds: u64,
    /// Field encryptions per data key before it is retired (default 2^24; at most 2^32).
    pub max_uses: u64,
    /// Most data keys cached at once (default 10000).
    pub cache_capacity: u64,
}

impl Default for DekConfig {
    fn default() -> Self {
        DekConfig {
            ttl_seconds: 900,
            max_uses: DEFAULT_MAX_USES,
            cache_capacity: 10_000,
        }
    }
}

/// `[crypto]`: the field ciphertext format versions (docs/ENCRYPTION.md). A new
/// version rolls out readers first (every instance that decrypts runs a release
/// that reads it), then writers (`write_version`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoConfig {
    /// The version randomized fields are written in (default 1, the newest
    /// every supported release reads; 2 saves 8 bytes per field). Deterministic
    /// fields are version 1 whatever this says, so they stay comparable.
    pub write_version: u8,
    /// The versions decrypting opens (default every version this release
    /// knows); a ciphertext of another is a dead letter (`malformed_ciphertext`).
    pub read_versions: Vec<u8>,
}

impl Default for CryptoConfig {
    fn default() -> Self {
        CryptoConfig {
            write_version: crate::crypto::format::Version::DEFAULT_WRITE.number(),
            read_versions: crate::crypto::format::Version::ALL
                .iter()
                .map(|v| v.number())
                .collect(),
        }
    }
}

impl CryptoConfig {
    fn known() -> String {
        crate::crypto::format::Version::ALL
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The version writers write (validated at start-up).
    pub fn write_version(&self) -> crate::crypto::format::Version {
        crate::crypto::format::Version::from_byte(self.write_version)
            .unwrap_or(crate::crypto::format::Version::DEFAULT_WRITE)
    }

    /// The versions readers open (validated at start-up).
    pub fn accepted(&self) -> crate::crypto::format::Accepted {
        let v: Vec<_> = self
            .read_versions
            .iter()
            .filter_map(|b| crate::crypto::format::Version::from_byte(*b))
            .collect();
        crate::crypto::format::Accepted::of(&v)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        use crate::crypto::format::Version;
        if Version::from_byte(self.write_version).is_none() {
            return Err(invalid(
                "crypto.write_version",
                format!(
                    "{} is not a format version this release writes ({})",
                    self.write_version,
                    Self::known()
                ),
            ));
        }
        if self.read_versions.is_empty() {
            return Err(invalid(
                "crypto.read_versions",
                format!("must name at least one version ({})", Self::known()),
            ));
        }
        if let Some(v) = self
            .read_versions
            .iter()
            .find(|v| Version::from_byte(**v).is_none())
        {
            return Err(invalid(
                "crypto.read_versions",
                format!(
                    "{v} is not a format version this release reads ({})",
                    Self::known()
                ),
            ));
        }
        if !self.read_versions.contains(&self.write_version) {
            return Err(invalid("crypto.write_version", format!(
                    "{} is not in crypto.read_versions {:?}: this instance could not read what it writes; add it there",
                    self.write_version, self.read_versions
                )));
        }
        Ok(())
    }
}

/// `[schema]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaConfig {
    /// Suffix naming a blind-index field after its source field (default `_bidx`).
    pub blind_index_suffix: String,
    /// Key domain for deterministic fields that name none (default `default`).
    pub default_deterministic_domain: String,
    /// `error` (default) or `ignore`: a rule whose record is not in the schema.
    pub unmatched_rules: Unmatched,
    /// Schema files (`.avsc`) that define named types other schemas use without
    /// defining them (Confluent schema references, in file mode and for routes'
    /// raw schemas); each such type is defined at its first use.
    pub reference_files: Vec<PathBuf>,
    /// Deepest nesting of values followed in a record (records, arrays and maps
    /// inside one another; a union adds no level), default 256, at most 1,000.
    /// Deeper records are dead letters with code `too_deep`.
    pub max_depth: usize,
    /// Most fields (over all records) a registry schema may have, default
    /// 10,000: a bigger one is refused (`policy_error`) before it is planned,
    /// so a schema registered by anyone cannot cost an instance seconds of CPU.
    pub max_fields: usize,
}

/// Default of `schema.max_fields`.
pub const DEFAULT_MAX_FIELDS: usize = 10_000;

/// Default of `schema.max_depth`.
pub const DEFAULT_MAX_DEPTH: usize = 256;
/// Ceiling of `schema.max_depth`: twice this still fits a 2 MiB worker-thread
/// stack (tested), so hostile nesting can never overflow one.
pub const MAX_DEPTH_CEILING: usize = 1_000;

impl Default for SchemaConfig {
    fn default() -> Self {
        SchemaConfig {
            blind_index_suffix: "_bidx".into(),
            default_deterministic_domain: "default".into(),
            unmatched_rules: Unmatched::Error,
            reference_files: Vec::new(),
            max_depth: DEFAULT_MAX_DEPTH,
            max_fields: DEFAULT_MAX_FIELDS,
        }
    }
}

impl SchemaConfig {
    /// The named types of `reference_files`.
    pub fn references(&self) -> Result<crate::schema::References, crate::schema::SchemaError> {
        crate::schema::References::from_files(&self.reference_files)
    }
}

/// `[blind_index]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlindIndexConfig {
    /// Bytes of HMAC-SHA256 kept per index value, 8 to 32 (default 16).
    pub length: usize,
    /// Per-domain settings.
    pub domains: BTreeMap<String, DomainConfig>,
}

impl Default for BlindIndexConfig {
    fn default() -> Self {
        BlindIndexConfig {
            length: 16,
            domains: BTreeMap::new(),
        }
    }
}

/// `[blind_index.domains.NAME]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainConfig {
    /// Text normalisation before hashing, in order: `trim`, `lowercase`,
    /// `remove_whitespace`, `digits_only`. Only string fields may use such a domain.
    pub normalize: Vec<Normalize>,
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Config {
    /// Reads a config file, or the embedded defaults when `path` is `None`.
    /// `${VAR}` and `${VAR:-default}` in string values come from the environment
    /// ([`env`]); relative paths resolve against the file's directory.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, &env::process_env)
    }

    /// [`Config::load`] with another environment (tests).
    pub fn load_with_env(
        path: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let Some(p) = path else {
            let cfg = Config::default();
            cfg.validate()?;
            return Ok(cfg);
        };
        let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
            path: p.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text, p, lookup)?;
        cfg.origin = Some(p.to_path_buf());
        if let Some(dir) = p.parent() {
            cfg.resolve_paths(dir);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses the text of `path`, substituting the environment into its strings.
    fn parse(
        text: &str,
        path: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |msg: String| ConfigError::Parse {
            path: path.to_path_buf(),
            msg,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        let substituted =
            env::substitute_table(&mut table, lookup).map_err(|source| ConfigError::Env {
                path: path.to_path_buf(),
                source,
            })?;
        if !substituted {
            // Straight from the text: errors then point at a line and column.
            return toml::from_str(text).map_err(|e| parse_err(e.to_string()));
        }
        Config::deserialize(toml::Value::Table(table)).map_err(|e| parse_err(e.to_string()))
    }

    /// A `fieldcrypt` command line to suggest in a message, with this config's
    /// `--config` when it came from a file: `command("keys init", "")` gives
    /// `fieldcrypt keys init --config deploy/encrypt.toml`.
    pub fn command(&self, subcommand: &str, flags: &str) -> String {
        let mut c = format!("fieldcrypt {subcommand}");
        if let Some(p) = &self.origin {
            c.push_str(" --config ");
            c.push_str(&shell_word(&p.to_string_lossy()));
        }
        if !flags.is_empty() {
            c.push(' ');
            c.push_str(flags);
        }
        c
    }

    /// A `format = "confluent"` route: its rule is complete and usable, and what
    /// Confluent's format needs is there (a registry, encrypt mode, keys untouched).
    fn check_confluent_route(
        &self,
        i: usize,
        r: &crate::kafka::route::RouteConfig,
    ) -> Result<(), ConfigError> {
        use crate::kafka::route::Format;
        let key = |k: &str| format!("routes[{i}].{k}");
        let Some(c) = &r.confluent else {
            if r.format == Format::Confluent {
                return Err(invalid(
                    key("confluent"),
                    "format = \"confluent\" needs a [routes.confluent] table: tags, kek_name, kms_type, kms_key_id",
                ));
            }
            return Ok(());
        };
        if r.format != Format::Confluent {
            return Err(invalid(
                key("confluent"),
                "only a route with format = \"confluent\" takes an ENCRYPT rule",
            ));
        }
        if self.pipeline.mode == PipelineMode::Decrypt {
            return Err(invalid(
                key("format"),
                "decrypting routes read both formats (Confluent's from the writer schema's rule set); format = \"confluent\" is for encrypting routes",
            ));
        }
        if self.schema_registry.url.is_none() {
            return Err(invalid(
                key("format"),
                "Confluent's format lives in the Schema Registry (the rule on the schema, DEKs in its DEK Registry): set schema_registry.url",
            ));
        }
        if r.key_format != crate::kafka::route::KeyFormat::Passthrough {
            return Err(invalid(
                key("key_format"),
                "format = \"confluent\" encrypts values; keep key_format = \"passthrough\"",
            ));
        }
        if c.tags.is_empty() || c.tags.iter().any(String::is_empty) {
            return Err(invalid(
                key("confluent.tags"),
                "name the confluent:tags whose fields are encrypted (a rule without tags would encrypt every field, and fail on the first number)",
            ));
        }
        let name_ok = |n: &str| {
            n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                && n.len() <= 64
        };
        if !name_ok(&c.kek_name) {
            return Err(invalid(
                key("confluent.kek_name"),
                "a letter or '_', then letters, digits, '_' or '-' (at most 64), as the DEK Registry requires",
            ));
        }
        let Some(kms) = crate::keys::Provider::of_confluent_type(&c.kms_type) else {
            return Err(invalid(
                key("confluent.kms_type"),
                format!(
                    "\"{}\": fieldcrypt speaks {}",
                    c.kms_type,
                    crate::keys::Provider::confluent_types()
                ),
            ));
        };
        if let Err(hint) = kms.driver().check_confluent_key_id(&c.kms_key_id) {
            return Err(invalid(key("confluent.kms_key_id"), hint.0));
        }
        if c.kms_key_id.is_empty() {
            return Err(invalid(key("confluent.kms_key_id"), "must not be empty"));
        }
        c.algorithm
            .parse::<crate::csfle::crypto::Algorithm>()
            .map_err(|e| invalid(key("confluent.algorithm"), e.to_string()))?;
        Ok(())
    }

    /// Checks values and combinations serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.metrics.validate()?;
        self.kms.validate()?;
        self.pipeline.validate()?;
        self.schema_registry.validate()?;
        self.crypto.validate()?;
        if !(1..=1_000_000).contains(&self.schema.max_fields) {
            return Err(invalid(
                "schema.max_fields",
                format!("must be from 1 to 1000000 (default {DEFAULT_MAX_FIELDS})"),
            ));
        }
        if !(1..=MAX_DEPTH_CEILING).contains(&self.schema.max_depth) {
            return Err(invalid(
                "schema.max_depth",
                format!("must be from 1 to {MAX_DEPTH_CEILING} (default {DEFAULT_MAX_DEPTH})"),
            ));
        }
        self.check_keys()?;
        self.check_schema_settings()?;
        self.check_kafka()?;
        self.check_routes()?;
        self.check_rules()
    }

    /// Data keys: one KEK per DEK scope, KEK references that resolve, the keyset file, DEK limits.
    fn check_keys(&self) -> Result<(), ConfigError> {
        let mut scope_keks: HashMap<String, (usize, Option<&str>)> = HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let scope = r.dek_scope();
            if let Some((j, kek)) = scope_keks.get(&scope) {
                if *kek != r.kek.as_deref() {
                    return Err(ConfigError::Invalid {
                        key: format!("routes[{i}].kek"),
                        msg: format!(
                            "routes[{j}] shares this route's data-key scope \"{scope}\" but names another KEK; give them the same kek, or different tenants"
                        ),
                    });
                }
            }
            scope_keks.insert(scope, (i, r.kek.as_deref()));
            if let Some(kek) = r.kek.as_deref() {
                self.kms.kek_ref(kek).map_err(|m| ConfigError::Invalid {
                    key: format!("routes[{i}].kek"),
                    msg: format!(
                        "{m}: name a KEK as local:FILE, aws:KEY (key id, alias/NAME or ARN), or unprefixed for the [kms] provider's kind"
                    ),
                })?;
            }
        }
        if self.keyset.file.as_os_str().is_empty() {
            return Err(invalid("keyset.file", "must name a file"));
        }
        if self.dek.ttl_seconds == 0 || self.dek.ttl_seconds > 7 * 86_400 {
            return Err(invalid(
                "dek.ttl_seconds",
                format!(
                    "{} is out of range; use 1 to 604800 (7 days)",
                    self.dek.ttl_seconds
                ),
            ));
        }
        if self.dek.max_uses == 0 || self.dek.max_uses > MAX_USES_CEILING {
            return Err(invalid(
                "dek.max_uses",
                format!(
                    "{} is out of range; use 1 to 2^32 ({MAX_USES_CEILING}): random 96-bit GCM \
                     nonces are only safe for 2^32 messages per key",
                    self.dek.max_uses
                ),
            ));
        }
        if self.dek.cache_capacity == 0 {
            return Err(invalid("dek.cache_capacity", "must be at least 1"));
        }
        Ok(())
    }

    /// Schema rewriting: the blind-index suffix, domain names, index length, tag policies.
    fn check_schema_settings(&self) -> Result<(), ConfigError> {
        let suffix = &self.schema.blind_index_suffix;
        if suffix.is_empty()
            || !suffix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(invalid(
                "schema.blind_index_suffix",
                format!("\"{suffix}\" must be non-empty letters, digits or '_' (it becomes part of an Avro field name)"),
            ));
        }
        if !valid_domain(&self.schema.default_deterministic_domain) {
            return Err(invalid(
                "schema.default_deterministic_domain",
                "must be non-empty letters, digits, '-', '_' or '.'",
            ));
        }
        if !(8..=32).contains(&self.blind_index.length) {
            return Err(invalid(
                "blind_index.length",
                format!(
                    "{} is out of range; use 8 to 32 bytes",
                    self.blind_index.length
                ),
            ));
        }
        for d in self.blind_index.domains.keys() {
            if !valid_domain(d) {
                return Err(invalid(
                    format!("blind_index.domains.{d}"),
                    "domain names use letters, digits, '-', '_' or '.'",
                ));
            }
        }
        for (tag, p) in &self.tags {
            check_policy(&format!("tags.{tag}"), p)?;
        }
        Ok(())
    }

    /// Kafka: the group, the properties fieldcrypt manages itself, exactly-once's needs.
    fn check_kafka(&self) -> Result<(), ConfigError> {
        if self.kafka.group_id.is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        for k in [
            "enable.auto.offset.store",
            "enable.auto.commit",
            "group.id",
            "bootstrap.servers",
            "client.id",
            "transactional.id",
            "isolation.level",
            "enable.idempotence",
        ] {
            if self.kafka.properties.contains_key(k) {
                return Err(invalid(
                    format!("kafka.properties.\"{k}\""),
                    "is managed by fieldcrypt; use the [kafka] keys (offsets are stored only after delivery)",
                ));
            }
        }
        Ok(())
    }

    /// Routes: their patterns, formats, modes and where their schemas come from.
    fn check_routes(&self) -> Result<(), ConfigError> {
        crate::kafka::route::Router::new(&self.routes)
            .map_err(|e| invalid("routes", e.to_string()))?;
        for (i, r) in self.routes.iter().enumerate() {
            self.check_confluent_route(i, r)?;
            let decrypting = self.pipeline.mode == PipelineMode::Decrypt;
            if r.accept_scopes.is_some() && !decrypting {
                return Err(invalid(
                    format!("routes[{i}].accept_scopes"),
                    "only decrypting routes read DEK headers; remove it or set pipeline.mode = \"decrypt\"",
                ));
            }
            if decrypting && (!r.require.is_empty() || r.allow_downgrade) {
                return Err(invalid(
                    format!("routes[{i}].require"),
                    "require and allow_downgrade shape what is encrypted; a decrypting route has neither",
                ));
            }
            let registry = self.schema_registry.url.is_some();
            if !registry && r.value_schema.is_none() {
                return Err(invalid(
                    format!("routes[{i}].value_schema"),
                    "required without [schema_registry]: the writer schema file of the raw Avro values",
                ));
            }
            if r.key_format == crate::kafka::route::KeyFormat::Avro
                && !registry
                && r.key_schema.is_none()
            {
                return Err(invalid(
                    format!("routes[{i}].key_schema"),
                    "key_format = \"avro\" without [schema_registry] needs the writer schema file of the raw Avro keys",
                ));
            }
        }
        Ok(())
    }

    /// Config rules: a record, field paths and a valid policy each.
    fn check_rules(&self) -> Result<(), ConfigError> {
        for (i, r) in self.rules.iter().enumerate() {
            let key = format!("rules[{i}]");
            if r.record.is_empty() {
                return Err(invalid(
                    format!("{key}.record"),
                    "must name a record (its full name)",
                ));
            }
            if r.fields.is_empty()
                || r.fields
                    .iter()
                    .any(|f| f.is_empty() || f.split('.').any(str::is_empty))
            {
                return Err(invalid(
                    format!("{key}.fields"),
                    "must list field paths such as \"email\" or \"address.street\"",
                ));
            }
            check_policy(&key, &r.policy())?;
        }
        Ok(())
    }

    /// DEK settings.
    pub fn dek_settings(&self) -> DekSettings {
        DekSettings {
            ttl: Duration::from_secs(self.dek.ttl_seconds),
            max_uses: self.dek.max_uses,
            capacity: self.dek.cache_capacity,
        }
    }

    /// Blind-index settings.
    pub fn index_settings(&self) -> IndexSettings {
        IndexSettings {
            length: self.blind_index.length,
            normalize: self
                .blind_index
                .domains
                .iter()
                .map(|(k, v)| (k.clone(), v.normalize.clone()))
                .collect::<HashMap<_, _>>(),
        }
    }

    /// Plan settings.
    pub fn plan_config(&self) -> PlanConfig {
        PlanConfig {
            selection: SelectionConfig {
                tags: self.tags.clone(),
                rules: self.rules.clone(),
                unmatched_rules: self.schema.unmatched_rules,
                default_deterministic_domain: self.schema.default_deterministic_domain.clone(),
            },
            blind_index_suffix: self.schema.blind_index_suffix.clone(),
            max_depth: self.schema.max_depth,
            text_only_domains: self
                .blind_index
                .domains
                .iter()
                .filter(|(_, d)| !d.normalize.is_empty())
                .map(|(k, _)| k.clone())
                .collect::<HashSet<_>>(),
        }
    }
}

/// `s` as one shell word: as it is when it is plain, else single-quoted.
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn check_policy(key: &str, p: &PolicySpec) -> Result<(), ConfigError> {
    if let Some(d) = &p.domain {
        if !valid_domain(d) {
            return Err(invalid(
                format!("{key}.domain"),
                "domain names use letters, digits, '-', '_' or '.'",
            ));
        }
        if p.mode != Some(crate::schema::policy::Mode::Deterministic) {
            return Err(invalid(
                format!("{key}.domain"),
                "a key domain only applies to mode = \"deterministic\"; add the mode or remove the domain",
            ));
        }
    }
    if let Some(b) = &p.blind_index {
        if !valid_domain(b) {
            return Err(invalid(
                format!("{key}.blind_index"),
                "domain names use letters, digits, '-', '_' or '.'",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        let c = Config::parse(s, Path::new("t.toml"), &|_| None)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/fieldcrypt.toml"
        ))
        .unwrap();
        let c = parse(&text).unwrap();
        assert!(!c.rules.is_empty() && !c.tags.is_empty());
    }

    #[test]
    fn pipeline_combinations_are_checked() {
        let route = "[[routes]]\nsource = \"a\"\ntarget = \"b\"\n";
        let e = parse(route).unwrap_err().to_string();
        assert!(
            e.contains("routes[0].value_schema") && e.contains("schema_registry"),
            "{e}"
        );
        let with_registry = format!("[schema_registry]\nurl = \"http://r:8081\"\n{route}");
        parse(&with_registry).unwrap();
        let e = parse(&format!(
            "{route}value_schema = \"s.avsc\"\nkey_format = \"avro\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("routes[0].key_schema"), "{e}");
        // Exactly-once commits on revoke, so incremental rebalancing is fine.
        parse(
            "[pipeline]\ndelivery = \"exactly-once\"\n[kafka.properties]\n\"partition.assignment.strategy\" = \"cooperative-sticky\"\n",
        )
        .unwrap();
        let e = parse("[kafka.properties]\n\"transactional.id\" = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("managed by fieldcrypt"), "{e}");
        let e = parse("[pipeline]\ndelivery = \"twice\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("delivery") || e.contains("twice"), "{e}");
    }

    #[test]
    fn empty_config_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.dek.max_uses, 1 << 24);
        assert_eq!(c.schema.blind_index_suffix, "_bidx");
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (text, key) in [
            ("[dek]\nmax_uses = 0", "dek.max_uses"),
            ("[dek]\nmax_uses = 5000000000", "dek.max_uses"),
            ("[dek]\nttl_seconds = 0", "dek.ttl_seconds"),
            ("[blind_index]\nlength = 4", "blind_index.length"),
            (
                "[schema]\nblind_index_suffix = \"-x\"",
                "schema.blind_index_suffix",
            ),
            ("[[rules]]\nrecord = \"R\"\nfields = []", "rules[0].fields"),
            ("[tags.PII]\ndomain = \"d\"", "tags.PII.domain"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = parse("[kms]\nkek_fil = \"x\"").unwrap_err().to_string();
        assert!(e.contains("kek_fil"), "{e}");
        let e = parse("[tags.PII]\nmode = \"scrambled\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("scrambled"), "{e}");
    }
}
