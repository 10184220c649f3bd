//! Topic routing: which source topics a pipeline reads, and for each record's source
//! topic, which target and dead-letter topics it goes to. Sources are topic names, or
//! regexes when they start with `^` (librdkafka's subscription convention); targets
//! are templates where `${topic}` stands for the source topic.

use std::path::PathBuf;

use regex::Regex;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `[[routes]]` in the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Source topic, or a regex when it starts with `^` (e.g. `^cdc\..*`).
    pub source: String,
    /// Target topic template, e.g. `secure.${topic}`.
    pub target: String,
    /// Dead-letter topic template (default `dlq.${topic}`).
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Writer schema file for raw Avro values, when no Schema Registry is used.
    #[serde(default)]
    pub value_schema: Option<PathBuf>,
    /// Record keys: `passthrough` (default, untouched) or `avro` (sensitive fields
    /// encrypted, deterministically only).
    #[serde(default)]
    pub key_format: KeyFormat,
    /// Writer schema file for raw Avro keys (`key_format = "avro"` without a
    /// Schema Registry).
    #[serde(default)]
    pub key_schema: Option<PathBuf>,
    /// The KEK that wraps this route's data keys (aws: key id, alias or ARN; local:
    /// a KEK file), isolating its data from other routes'. Default: `[kms]`'s.
    #[serde(default)]
    pub kek: Option<String>,
    /// Tenant name: its data keys are scoped (and bound by encryption context) to
    /// the tenant rather than to the route.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Decrypting: the DEK scopes accepted in `fieldcrypt.dek` headers
    /// (`route:<target template>`, `tenant:<name>`). Default: the tenant's when
    /// `tenant` is set, otherwise any `route:` scope whose target template yields
    /// the record's topic (what an encrypting route writing to it uses).
    #[serde(default)]
    pub accept_scopes: Option<Vec<String>>,
    /// Encrypting: fields that must be encrypted whatever a writer schema says —
    /// `<record full name>.<field>` (e.g. `com.acme.Customer.ssn`) or `tag:NAME`
    /// (every field carrying that `confluent:tags` tag). A schema that leaves one
    /// in clear is refused (`policy_downgrade`); raw schemas are checked at start-up.
    #[serde(default)]
    pub require: Vec<Requirement>,
    /// Encrypting with a registry: accept a writer schema that encrypts less than
    /// earlier versions of its subject (a deliberate downgrade). Default false:
    /// the encryption policy of a subject only grows.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Let records whose schema encrypts nothing through (encrypting) or records
    /// with nothing encrypted in them (decrypting). Default false: such a schema
    /// is refused — at start-up for a `value_schema`, as dead letters
    /// (`nothing_to_encrypt`, `not_encrypted`) for a registry schema — because it
    /// is most often a mistake (a misspelled rule or marking). Set it on a regex
    /// route over tables of which only some hold sensitive fields; what passes
    /// this way is counted in `fieldcrypt_unencrypted_records_total`.
    #[serde(default)]
    pub allow_unencrypted: bool,
    /// The ciphertext format this route writes: `fieldcrypt` (default) or
    /// `confluent` (Confluent's client-side field level encryption, which any
    /// Confluent deserializer with its field-encryption executor decrypts; needs
    /// a Schema Registry with its DEK Registry). Decrypting routes read both.
    #[serde(default)]
    pub format: Format,
    /// `format = "confluent"`: the ENCRYPT rule put on the output schema.
    #[serde(default)]
    pub confluent: Option<ConfluentRule>,
}

/// Ciphertext format of a route's output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Fieldcrypt,
    Confluent,
}

/// `[routes.confluent]`: the ENCRYPT rule of a `format = "confluent"` route, as
/// Confluent's clients read it from the output schema's rule set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfluentRule {
    /// Fields carrying one of these `confluent:tags` (on the field, or through the
    /// writer schema's `metadata.tags`) are encrypted. At least one.
    pub tags: Vec<String>,
    /// The KEK's name in the DEK Registry (`encrypt.kek.name`).
    pub kek_name: String,
    /// `local-kms` or `aws-kms` (`encrypt.kms.type`).
    pub kms_type: String,
    /// The KMS key (`encrypt.kms.key.id`): for `aws-kms` a key ARN; for
    /// `local-kms` any name (the key comes from the secret in the environment).
    pub kms_key_id: String,
    /// `AES256_GCM` (default, randomized), `AES128_GCM` or `AES256_SIV`
    /// (deterministic).
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Over 0: a new DEK version after this many days, and a version prefix on
    /// every ciphertext (`encrypt.dek.expiry.days`). Default 0.
    #[serde(default)]
    pub dek_expiry_days: u32,
    /// The rule's name on the schema (default `fieldcrypt`).
    #[serde(default = "default_rule_name")]
    pub rule_name: String,
}

fn default_algorithm() -> String {
    "AES256_GCM".into()
}

fn default_rule_name() -> String {
    "fieldcrypt".into()
}

impl ConfluentRule {
    /// The rule set registered with the output schema.
    pub fn rule_set(&self) -> serde_json::Value {
        let mut params = serde_json::json!({
            "encrypt.kek.name": self.kek_name,
            "encrypt.kms.type": self.kms_type,
            "encrypt.kms.key.id": self.kms_key_id,
            "encrypt.dek.algorithm": self.algorithm,
        });
        if self.dek_expiry_days > 0 {
            params["encrypt.dek.expiry.days"] = self.dek_expiry_days.to_string().into();
        }
        serde_json::json!({"domainRules": [{
            "name": self.rule_name,
            "kind": "TRANSFORM",
            "mode": "WRITEREAD",
            "type": "ENCRYPT",
            "tags": self.tags,
            "params": params,
        }]})
    }
}

/// Which DEK scopes a decrypting route accepts in `fieldcrypt.dek` headers.
/// Checked before any KMS call, so a header copied from another tenant's or
/// route's record (or forged with another scope) is refused outright.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptScopes {
    /// Exactly these scopes (as the encrypting side names them, e.g.
    /// `route:secure.${topic}`).
    Listed(Vec<String>),
    /// Only this tenant's.
    Tenant(String),
    /// `route:<template>` where the template yields the record's topic.
    RouteOfTopic,
}

impl AcceptScopes {
    /// The route's setting, or its default.
    pub fn for_route(r: &RouteConfig) -> Self {
        match (&r.accept_scopes, &r.tenant) {
            (Some(l), _) => AcceptScopes::Listed(l.clone()),
            (None, Some(t)) => AcceptScopes::Tenant(format!("tenant:{t}")),
            (None, None) => AcceptScopes::RouteOfTopic,
        }
    }

    /// May a DEK of `scope` decrypt a record of `topic`?
    pub fn accepts(&self, scope: &str, topic: &str) -> bool {
        match self {
            AcceptScopes::Tenant(t) => scope == t,
            AcceptScopes::RouteOfTopic => scope
                .strip_prefix("route:")
                .is_some_and(|t| template_yields(t, topic)),
            AcceptScopes::Listed(l) => l.iter().any(|a| a == scope),
        }
    }

    /// What is accepted, for error messages.
    pub fn describe(&self, topic: &str) -> String {
        match self {
            AcceptScopes::Tenant(t) => format!("it accepts {t}"),
            AcceptScopes::RouteOfTopic => {
                format!("it accepts route scopes whose target yields topic {topic}")
            }
            AcceptScopes::Listed(l) => format!("accept_scopes = {l:?}"),
        }
    }
}

/// Could target template `t` produce topic `topic` (some source topic put for
/// each `${topic}`)?
pub fn template_yields(t: &str, topic: &str) -> bool {
    let parts: Vec<&str> = t.split("${topic}").collect();
    if parts.len() == 1 {
        return t == topic;
    }
    // Greedy match of the literal parts in order, each `${topic}` at least one byte.
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !topic.starts_with(first) || !topic.ends_with(last) || topic.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &topic[first.len()..topic.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.get(1..).and_then(|r| r.find(mid)) {
            Some(i) => rest = &rest[1 + i + mid.len()..],
            None => return false,
        }
    }
    !rest.is_empty()
}

impl RouteConfig {
    /// The scope of this route's data keys: bound into each one's encryption
    /// context, and the key of its KEK in the key ring.
    pub fn dek_scope(&self) -> String {
        match &self.tenant {
            Some(t) => format!("tenant:{t}"),
            None => format!("route:{}", self.target),
        }
    }
}

/// How a route treats record keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    /// Keys are copied as they are.
    #[default]
    Passthrough,
    /// Keys are Avro (Confluent-framed with a registry, raw otherwise); their
    /// sensitive fields are encrypted deterministically, so equal keys stay equal
    /// and partitioning and compaction keep working.
    Avro,
}

/// A route problem, naming the route.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RouteError {
    #[error("routes[{index}].{key}: {msg}")]
    Invalid {
        index: usize,
        key: &'static str,
        msg: String,
    },
    #[error("topic {0} matches no route")]
    NoRoute(String),
    #[error("route for topic {topic} would write to {target}, which is itself a source: records would loop")]
    Loop { topic: String, target: String },
}

enum Source {
    Exact(String),
    Pattern(Regex),
}

struct Route {
    source: Source,
    target: String,
    dead_letter: String,
}

/// Where one source topic's records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub route: usize,
    pub target: String,
    pub dead_letter: String,
}

/// Compiled routes.
pub struct Router {
    routes: Vec<Route>,
}

/// Kafka's legal topic names: 1 to 249 of `[a-zA-Z0-9._-]`.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn check_template(index: usize, key: &'static str, t: &str) -> Result<(), RouteError> {
    let sample = t.replace("${topic}", "x");
    if !valid_topic(&sample) || sample.contains('$') {
        return Err(RouteError::Invalid {
            index,
            key,
            msg: format!(
                "\"{t}\" is not a topic name or template (letters, digits, '.', '_', '-', and ${{topic}})"
            ),
        });
    }
    Ok(())
}

impl Router {
    /// Compiles and checks the routes.
    pub fn new(configs: &[RouteConfig]) -> Result<Self, RouteError> {
        let mut routes = Vec::with_capacity(configs.len());
        for (index, c) in configs.iter().enumerate() {
            let source = if c.source.starts_with('^') {
                Source::Pattern(Regex::new(&c.source).map_err(|e| RouteError::Invalid {
                    index,
                    key: "source",
                    msg: format!("invalid regex: {e}"),
                })?)
            } else if valid_topic(&c.source) {
                Source::Exact(c.source.clone())
            } else {
                return Err(RouteError::Invalid {
                    index,
                    key: "source",
                    msg: format!(
                        "\"{}\" is not a topic name (or a regex starting with ^)",
                        c.source
                    ),
                });
            };
            check_template(index, "target", &c.target)?;
            let dead_letter = c
                .dead_letter
                .clone()
                .unwrap_or_else(|| "dlq.${topic}".into());
            check_template(index, "dead_letter", &dead_letter)?;
            if c.target == dead_letter {
                return Err(RouteError::Invalid {
                    index,
                    key: "dead_letter",
                    msg: "must differ from target".into(),
                });
            }
            routes.push(Route {
                source,
                target: c.target.clone(),
                dead_letter,
            });
        }
        let router = Router { routes };
        // Literal sources can be checked now; pattern sources are checked per topic.
        for c in configs {
            if !c.source.starts_with('^') {
                router.route(&c.source)?;
            }
        }
        Ok(router)
    }

    /// Subscription list for the consumer (topics and `^` regexes).
    pub fn subscriptions(&self) -> Vec<String> {
        self.routes
            .iter()
            .map(|r| match &r.source {
                Source::Exact(t) => t.clone(),
                Source::Pattern(p) => p.as_str().to_string(),
            })
            .collect()
    }

    fn is_source(&self, topic: &str) -> bool {
        self.routes.iter().any(|r| match &r.source {
            Source::Exact(t) => t == topic,
            Source::Pattern(p) => p.is_match(topic),
        })
    }

    /// The destination of records from `topic`: the first route that matches.
    pub fn route(&self, topic: &str) -> Result<Destination, RouteError> {
        for (i, r) in self.routes.iter().enumerate() {
            let hit = match &r.source {
                Source::Exact(t) => t == topic,
                Source::Pattern(p) => p.is_match(topic),
            };
            if hit {
                let target = r.target.replace("${topic}", topic);
                let dead_letter = r.dead_letter.replace("${topic}", topic);
                for t in [&target, &dead_letter] {
                    if self.is_source(t) {
                        return Err(RouteError::Loop {
                            topic: topic.into(),
                            target: t.clone(),
                        });
                    }
                }
                return Ok(Destination {
                    route: i,
                    target,
                    dead_letter,
                });
            }
        }
        Err(RouteError::NoRoute(topic.into()))
    }
}

/// One `require` entry of a route, parsed once when the config is read: a field
/// (`<record full name>.<field>`) or every field carrying a tag (`tag:NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Requirement {
    /// A field context: `com.acme.Customer.ssn`.
    Field(String),
    /// Every field carrying this `confluent:tags` tag.
    Tag(String),
}

/// A `require` entry that is neither a field context nor `tag:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    #[error("\"{0}\" names no tag: write tag:NAME")]
    NoTag(String),
    #[error("\"{0}\" is neither <record full name>.<field> nor tag:NAME")]
    NotAField(String),
}

impl std::str::FromStr for Requirement {
    type Err = RequirementError;

    fn from_str(s: &str) -> Result<Self, RequirementError> {
        match s.strip_prefix("tag:") {
            Some("") => Err(RequirementError::NoTag(s.to_string())),
            Some(tag) => Ok(Requirement::Tag(tag.to_string())),
            None if s
                .rsplit_once('.')
                .is_some_and(|(r, f)| !r.is_empty() && !f.is_empty()) =>
            {
                Ok(Requirement::Field(s.to_string()))
            }
            None => Err(RequirementError::NotAField(s.to_string())),
        }
    }
}

impl TryFrom<String> for Requirement {
    type Error = RequirementError;
    fn try_from(s: String) -> Result<Self, RequirementError> {
        s.parse()
    }
}

impl From<Requirement> for String {
    fn from(r: Requirement) -> String {
        r.to_string()
    }
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requirement::Field(c) => f.write_str(c),
            Requirement::Tag(t) => write!(f, "tag:{t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(source: &str, target: &str) -> RouteConfig {
        RouteConfig {
            source: source.into(),
            target: target.into(),
            ..Default::default()
        }
    }

    #[test]
    fn literal_and_pattern_routes_render_templates() {
        let r = Router::new(&[
            rc("customers", "secure.customers"),
            rc(r"^cdc\..*", "secure.${topic}"),
        ])
        .unwrap();
        assert_eq!(r.subscriptions(), vec!["customers", r"^cdc\..*"]);
        let d = r.route("cdc.orders").unwrap();
        assert_eq!(
            (d.route, d.target.as_str(), d.dead_letter.as_str()),
            (1, "secure.cdc.orders", "dlq.cdc.orders")
        );
        assert_eq!(r.route("customers").unwrap().target, "secure.customers");
        assert_eq!(r.route("other"), Err(RouteError::NoRoute("other".into())));
    }

    #[test]
    fn loops_and_bad_names_are_refused() {
        assert!(matches!(
            Router::new(&[rc("a", "a")]),
            Err(RouteError::Loop { .. })
        ));
        let r = Router::new(&[rc(r"^cdc\..*", "cdc.enc.${topic}")]).unwrap();
        assert!(matches!(r.route("cdc.x"), Err(RouteError::Loop { .. })));
        let e = Router::new(&[rc("a b", "t")]).err().unwrap().to_string();
        assert!(e.contains("routes[0].source"), "{e}");
        let e = Router::new(&[rc("a", "t/${x}")]).err().unwrap().to_string();
        assert!(e.contains("routes[0].target"), "{e}");
        let e = Router::new(&[rc("^(", "t")]).err().unwrap().to_string();
        assert!(e.contains("invalid regex"), "{e}");
    }

    #[test]
    fn require_entries_are_fields_or_tags_and_nothing_else() {
        use super::Requirement;
        assert_eq!(
            "com.acme.Customer.ssn".parse(),
            Ok(Requirement::Field("com.acme.Customer.ssn".into()))
        );
        assert_eq!("tag:PII".parse(), Ok(Requirement::Tag("PII".into())));
        for bad in ["ssn", "tag:", ".ssn", "Customer."] {
            let e = bad.parse::<Requirement>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(Requirement::Tag("PII".into()).to_string(), "tag:PII");
    }
}
