//! Field selection: decides which fields are sensitive and how, from four sources —
//! the field's `"sensitive"` attribute, its `"confluent:tags"` mapped through config,
//! the registry's `metadata.tags` patterns (tags a registered schema gives fields
//! without touching them), and config rules naming a record and a field path (for
//! generated schemas such as Debezium's). Conflicts and rules that match nothing are
//! errors, never guesses; so is an attribute that looks like a misspelled marking
//! (`"sensitve"`, `"Sensitive"`), which would otherwise leave its field in clear.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::model::{Node, NodeId, SchemaTree};
use super::SchemaError;

/// How a field's value is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// AES-256-GCM with a fresh random nonce: equal values give unrelated ciphertexts.
    Randomized,
    /// AES-SIV: equal values in the same field give equal ciphertexts.
    Deterministic,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Randomized => "randomized",
            Mode::Deterministic => "deterministic",
        })
    }
}

/// A policy as written in a schema attribute, a tag mapping or a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// `randomized` (default) or `deterministic`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Deterministic key domain (default: `schema.default_deterministic_domain`).
    #[serde(default)]
    pub domain: Option<String>,
    /// Adds an HMAC blind-index field in this index domain.
    #[serde(default)]
    pub blind_index: Option<String>,
}

/// A config rule: encrypt these fields of this record wherever the record is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Full name of the record the paths start from
    /// (e.g. `dbserver1.inventory.customers.Value`).
    pub record: String,
    /// Field paths relative to that record; dots descend into nested records
    /// (through unions, arrays and maps), e.g. `address.street`.
    pub fields: Vec<String>,
    /// `randomized` (default) or `deterministic`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Deterministic key domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// Adds an HMAC blind-index field in this index domain.
    #[serde(default)]
    pub blind_index: Option<String>,
}

impl Rule {
    /// The policy this rule applies.
    pub fn policy(&self) -> PolicySpec {
        PolicySpec {
            mode: self.mode,
            domain: self.domain.clone(),
            blind_index: self.blind_index.clone(),
        }
    }
}

/// What to do about a rule whose record does not occur in a schema.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// A start-up error: most often a typo in the record name.
    #[default]
    Error,
    /// Ignore it: the config is shared by schemas that do not all contain it.
    Ignore,
}

/// The selection settings from config.
#[derive(Debug, Clone, Default)]
pub struct SelectionConfig {
    /// Confluent tag → policy.
    pub tags: BTreeMap<String, PolicySpec>,
    pub rules: Vec<Rule>,
    pub unmatched_rules: Unmatched,
    pub default_deterministic_domain: String,
}

/// A resolved field policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPolicy {
    pub mode: Mode,
    /// Key domain for deterministic mode.
    pub domain: Option<String>,
    /// Blind-index domain, if an index field is added.
    pub blind_index: Option<String>,
}

/// Where a policy came from, for plan tables and conflict messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Attribute,
    /// A marking on the field's type object (`{"type": "string", "sensitive": true}`),
    /// or on the named type it uses (its full name).
    TypeAttribute(Option<String>),
    Tag(String),
    /// A tag the registry's `metadata.tags` gives the field (by a pattern).
    MetadataTag(String),
    Rule(usize),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Attribute => f.write_str("schema attribute"),
            Source::TypeAttribute(None) => f.write_str("attribute on the type"),
            Source::TypeAttribute(Some(t)) => write!(f, "attribute on type {t}"),
            Source::Tag(t) => write!(f, "tag {t}"),
            Source::MetadataTag(t) => write!(f, "tag {t} (from the schema's metadata.tags)"),
            Source::Rule(i) => write!(f, "rule #{}", i + 1),
        }
    }
}

/// A field chosen for encryption.
#[derive(Debug, Clone)]
pub struct Selected {
    pub policy: FieldPolicy,
    pub source: Source,
}

/// Policies keyed by (record node, field index).
pub type Selection = HashMap<(NodeId, usize), Selected>;

fn resolve(spec: &PolicySpec, cfg: &SelectionConfig) -> FieldPolicy {
    let mode = spec.mode.unwrap_or(Mode::Randomized);
    FieldPolicy {
        mode,
        domain: match mode {
            Mode::Deterministic => Some(
                spec.domain
                    .clone()
                    .unwrap_or_else(|| cfg.default_deterministic_domain.clone()),
            ),
            Mode::Randomized => None,
        },
        blind_index: spec.blind_index.clone(),
    }
}

/// What is wrong with one marking, before the caller places it at a schema path.
#[derive(Debug, thiserror::Error)]
enum MarkingError {
    #[error(
        "\"sensitive\" must be true, false or {{\"mode\": \"randomized\"|\"deterministic\", \
         \"domain\": ..., \"blind_index\": ...}}: {0}"
    )]
    Attribute(serde_json::Error),
    #[error("\"sensitive\" must be true, false or an object, found {0}")]
    AttributeType(Json),
    #[error("\"confluent:tags\" must be an array of strings")]
    Tags,
    #[error("no field \"{step}\" here (fields: {fields}); fix the path")]
    NoField { step: String, fields: String },
    #[error("\"{step}\" is not a record, so it has no field \"{next}\"")]
    NotRecord { step: String, next: String },
    #[error("empty field path")]
    EmptyPath,
}

/// Reads a field's `"sensitive"` attribute.
fn attribute_policy(v: &Json) -> Result<Option<PolicySpec>, MarkingError> {
    match v {
        Json::Bool(true) => Ok(Some(PolicySpec::default())),
        Json::Bool(false) | Json::Null => Ok(None),
        Json::Object(_) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(MarkingError::Attribute),
        other => Err(MarkingError::AttributeType(other.clone())),
    }
}

/// Tags that a registered schema's `metadata.tags` gives fields: (Confluent
/// wildcard pattern over `namespace.Record.field`, tags).
pub type MetadataTags = [(String, Vec<String>)];

/// Picks the sensitive fields of `tree`, with `metadata` the tags its registry
/// metadata gives fields (empty for schema files). `schema` names it in errors.
pub fn select(
    tree: &SchemaTree,
    schema: &str,
    cfg: &SelectionConfig,
    metadata: &MetadataTags,
) -> Result<Selection, SchemaError> {
    let mut s = Selector {
        tree,
        schema,
        cfg,
        metadata,
        sel: Selection::new(),
    };
    s.misspelled_markings()?;
    s.field_markings()?;
    s.named_type_markings()?;
    s.config_rules()?;
    Ok(s.sel)
}

/// What [`select`] has chosen so far, and what it reads.
struct Selector<'a> {
    tree: &'a SchemaTree,
    schema: &'a str,
    cfg: &'a SelectionConfig,
    metadata: &'a MetadataTags,
    sel: Selection,
}

impl Selector<'_> {
    fn perr(&self, path: String, msg: String) -> SchemaError {
        SchemaError::Policy {
            schema: self.schema.to_string(),
            path,
            msg,
        }
    }

    /// Selects field `key` with `policy`; a second, different policy for the same
    /// field is a conflict the user must resolve.
    fn put(
        &mut self,
        key: (NodeId, usize),
        policy: FieldPolicy,
        source: Source,
        path: String,
    ) -> Result<(), SchemaError> {
        if let Some(prev) = self.sel.get(&key) {
            if prev.policy != policy {
                return Err(self.perr(
                    path,
                    format!(
                        "conflicting policies: {} says {}, {} says {}; make them agree or remove one",
                        prev.source,
                        describe(&prev.policy),
                        source,
                        describe(&policy)
                    ),
                ));
            }
            return Ok(());
        }
        self.sel.insert(key, Selected { policy, source });
        Ok(())
    }

    /// Attributes that look like a misspelled marking, on field objects, their
    /// type objects and named types: an error naming the field and the spelling.
    fn misspelled_markings(&self) -> Result<(), SchemaError> {
        let tree = self.tree;
        for node in &tree.nodes {
            let Node::Record(r) = node else { continue };
            for f in &r.fields {
                let path = format!("{}.{}", r.fullname, f.name);
                let mut objects = vec![&f.json];
                if let Some(ty) = f.json.get("type") {
                    type_objects(ty, &mut objects);
                }
                for o in objects {
                    if let Some(m) = misspelled(o) {
                        return Err(self.perr(path, m));
                    }
                }
            }
        }
        let mut named: Vec<(&String, &serde_json::Map<String, Json>)> = tree
            .named_attrs
            .iter()
            .filter_map(|(id, a)| {
                let name = match tree.node(*id) {
                    Node::Record(r) => &r.fullname,
                    Node::Enum { name, .. } | Node::Fixed { name, .. } => name,
                    _ => return None,
                };
                Some((name, a))
            })
            .collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        for (name, attrs) in named {
            if let Some(m) = misspelled(attrs) {
                return Err(self.perr(format!("type {name}"), m));
            }
        }
        Ok(())
    }

    /// `"sensitive"` and `"confluent:tags"` on field objects and on their
    /// unnamed type objects.
    fn field_markings(&mut self) -> Result<(), SchemaError> {
        let (tree, cfg) = (self.tree, self.cfg);
        for (id, node) in tree.nodes.iter().enumerate() {
            let Node::Record(r) = node else { continue };
            for (i, f) in r.fields.iter().enumerate() {
                let path = format!("{}.{}", r.fullname, f.name);
                if f.json.contains_key("fieldcrypt") {
                    return Err(self.perr(
                        path,
                        "the schema is already encrypted by fieldcrypt (the field carries a \
                         \"fieldcrypt\" attribute); decrypt it first"
                            .into(),
                    ));
                }
                if let Some(v) = f.json.get("sensitive") {
                    if let Some(spec) =
                        attribute_policy(v).map_err(|m| self.perr(path.clone(), m.to_string()))?
                    {
                        if spec.domain.is_some() && spec.mode != Some(Mode::Deterministic) {
                            return Err(self.perr(
                                path,
                                "\"domain\" names a deterministic key but the mode is not \"deterministic\"; \
                                 add \"mode\": \"deterministic\" or remove the domain"
                                    .into(),
                            ));
                        }
                        self.put(
                            (id, i),
                            resolve(&spec, cfg),
                            Source::Attribute,
                            path.clone(),
                        )?;
                    }
                }
                if let Some(tags) = f.json.get("confluent:tags") {
                    let tags = tags.as_array().ok_or_else(|| {
                        self.perr(
                            path.clone(),
                            "\"confluent:tags\" must be an array of strings".into(),
                        )
                    })?;
                    for t in tags {
                        let t = t.as_str().ok_or_else(|| {
                            self.perr(
                                path.clone(),
                                "\"confluent:tags\" must be an array of strings".into(),
                            )
                        })?;
                        if let Some(spec) = cfg.tags.get(t) {
                            self.put(
                                (id, i),
                                resolve(spec, cfg),
                                Source::Tag(t.into()),
                                path.clone(),
                            )?;
                        }
                    }
                }
                for t in metadata_tags_of(self.metadata, &path) {
                    if let Some(spec) = cfg.tags.get(t) {
                        self.put(
                            (id, i),
                            resolve(spec, cfg),
                            Source::MetadataTag(t.into()),
                            path.clone(),
                        )?;
                    }
                }
                // Markings on the field's own (unnamed) type objects, where Kafka Connect
                // and Debezium put their parameters: they mean the field.
                if let Some(ty) = f.json.get("type") {
                    let mut found = Vec::new();
                    anonymous_markings(ty, &mut found);
                    for m in found {
                        for (spec, source) in marking_policies(m, cfg, None)
                            .map_err(|e| self.perr(path.clone(), e.to_string()))?
                        {
                            self.put((id, i), resolve(&spec, cfg), source, path.clone())?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Markings on named types.
    fn named_type_markings(&mut self) -> Result<(), SchemaError> {
        let (tree, cfg) = (self.tree, self.cfg);
        // Markings on named types mean the one field that uses the type; a type used
        // by several fields (or the top-level record) is ambiguous and refused.
        for (name, marks) in named_markings(tree) {
            let Some(&node) = tree.names.get(&name) else {
                continue;
            };
            let users = fields_using(tree, node);
            let names: Vec<String> = users
                .iter()
                .map(|&(r, i)| {
                    let rec = tree
                        .record(r)
                        .map(|x| x.fullname.clone())
                        .unwrap_or_default();
                    let f = tree
                        .record(r)
                        .map(|x| x.fields[i].name.clone())
                        .unwrap_or_default();
                    format!("{rec}.{f}")
                })
                .collect();
            if node == tree.root || users.len() != 1 {
                let msg = if node == tree.root {
                    "the marking is on the schema's top-level type, which no field holds; mark its \
                     fields instead (\"sensitive\" on each field object)"
                        .to_string()
                } else if users.is_empty() {
                    "the marked type is not the type of any field, so the marking would protect \
                     nothing; move it to the fields that need it"
                        .to_string()
                } else {
                    format!(
                        "the marking on named type {name} is ambiguous: the type is used by {} fields \
                         ({}), and each would be encrypted whole; put the marking on each field object \
                         that should be encrypted instead, and remove it from the type",
                        names.len(),
                        names.join(", ")
                    )
                };
                return Err(self.perr(name.clone(), msg));
            }
            for m in marks {
                for (spec, source) in marking_policies(&m, cfg, Some(&name))
                    .map_err(|e| self.perr(names[0].clone(), e.to_string()))?
                {
                    self.put(users[0], resolve(&spec, cfg), source, names[0].clone())?;
                }
            }
        }
        Ok(())
    }

    /// The config's `[[rules]]`.
    fn config_rules(&mut self) -> Result<(), SchemaError> {
        let (tree, cfg, schema) = (self.tree, self.cfg, self.schema);
        for (ri, rule) in cfg.rules.iter().enumerate() {
            let Some(&start) = tree.names.get(&rule.record) else {
                if cfg.unmatched_rules == Unmatched::Error {
                    let records = record_names(tree);
                    return Err(SchemaError::Other {
                        schema: schema.into(),
                        msg: format!(
                            "rule #{} names record \"{}\", which this schema does not contain \
                             (records here: {}); fix the name, or set schema.unmatched_rules = \"ignore\" \
                             if the config serves several schemas",
                            ri + 1,
                            rule.record,
                            records.join(", ")
                        ),
                    });
                }
                continue;
            };
            for fpath in &rule.fields {
                let keys = resolve_path(tree, start, fpath).map_err(|m| {
                    self.perr(
                        format!("{}.{}", rule.record, fpath),
                        format!("rule #{}: {m}", ri + 1),
                    )
                })?;
                for key in keys {
                    self.put(
                        key,
                        resolve(&rule.policy(), cfg),
                        Source::Rule(ri),
                        format!("{}.{}", rule.record, fpath),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Policies from one type object's `"sensitive"` and `"confluent:tags"`.
fn marking_policies(
    m: &serde_json::Map<String, Json>,
    cfg: &SelectionConfig,
    named: Option<&str>,
) -> Result<Vec<(PolicySpec, Source)>, MarkingError> {
    let mut out = Vec::new();
    let source = Source::TypeAttribute(named.map(str::to_string));
    if let Some(v) = m.get("sensitive") {
        if let Some(spec) = attribute_policy(v)? {
            out.push((spec, source.clone()));
        }
    }
    if let Some(tags) = m.get("confluent:tags") {
        let tags = tags.as_array().ok_or(MarkingError::Tags)?;
        for t in tags {
            let t = t.as_str().ok_or(MarkingError::Tags)?;
            if let Some(spec) = cfg.tags.get(t) {
                out.push((spec.clone(), Source::Tag(t.into())));
            }
        }
    }
    Ok(out)
}

/// Fields carrying `confluent:tags` tag `tag` wherever selection honours a tag: on
/// the field, on its type object, a union branch, array items or map values, or on
/// a named type the field's type reaches; as `record.field`, sorted.
pub(crate) fn fields_tagged(tree: &SchemaTree, tag: &str, metadata: &MetadataTags) -> Vec<String> {
    let has = |m: &serde_json::Map<String, Json>| {
        m.get("confluent:tags")
            .and_then(Json::as_array)
            .is_some_and(|a| a.iter().any(|t| t.as_str() == Some(tag)))
    };
    let mut out = std::collections::BTreeSet::new();
    for n in &tree.nodes {
        let Node::Record(r) = n else { continue };
        for f in &r.fields {
            let mut marks = Vec::new();
            if let Some(ty) = f.json.get("type") {
                anonymous_markings(ty, &mut marks);
            }
            let full = format!("{}.{}", r.fullname, f.name);
            if has(&f.json)
                || marks.into_iter().any(has)
                || metadata_tags_of(metadata, &full).contains(&tag)
            {
                out.insert(full);
            }
        }
    }
    for (id, attrs) in &tree.named_attrs {
        if has(attrs) {
            for (rid, i) in fields_using(tree, *id) {
                if let Some(r) = tree.record(rid) {
                    out.insert(format!("{}.{}", r.fullname, r.fields[i].name));
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The full names of the schema's records, sorted (for messages).
fn record_names(tree: &SchemaTree) -> Vec<&str> {
    let mut records: Vec<&str> = tree
        .nodes
        .iter()
        .filter_map(|n| match n {
            Node::Record(r) => Some(r.fullname.as_str()),
            _ => None,
        })
        .collect();
    records.sort_unstable();
    records
}

/// Why a schema selects nothing, for the error that refuses it: the rules that
/// name records the schema does not have (the usual typo), and its records.
pub fn why_nothing_selected(tree: &SchemaTree, cfg: &SelectionConfig) -> String {
    let records = record_names(tree);
    let unmatched: Vec<String> = cfg
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| !tree.names.contains_key(&r.record))
        .map(|(i, r)| format!("rule #{} names record \"{}\"", i + 1, r.record))
        .collect();
    let mut msg = String::from(
        "no field is marked sensitive, tagged with a [tags] entry or selected by a rule",
    );
    if !unmatched.is_empty() {
        msg.push_str(&format!(
            "; {}, which this schema does not contain",
            unmatched.join(", ")
        ));
    }
    msg.push_str(&format!(" (records here: {})", records.join(", ")));
    msg
}

/// The tags `metadata` patterns give the field `full` (`namespace.Record.field`).
fn metadata_tags_of<'a>(metadata: &'a MetadataTags, full: &str) -> Vec<&'a str> {
    metadata
        .iter()
        .filter(|(p, _)| crate::csfle::rules::wildcard_match(p, full))
        .flat_map(|(_, t)| t.iter().map(String::as_str))
        .collect()
}

/// The marking attributes, spelled as fieldcrypt reads them.
const MARKINGS: [&str; 2] = ["sensitive", "confluent:tags"];

/// An attribute of `o` that is not a marking but looks like a misspelled one
/// (another case, or at most two edits away): the message saying so.
fn misspelled(o: &serde_json::Map<String, Json>) -> Option<String> {
    o.keys().find_map(|k| {
        if MARKINGS.contains(&k.as_str()) {
            return None;
        }
        let lower = k.to_ascii_lowercase();
        MARKINGS
            .iter()
            .find(|m| edit_distance(&lower, m) <= 2)
            .map(|m| {
                format!(
                    "attribute \"{k}\" looks like a misspelling of \"{m}\", which fieldcrypt would not \
                     read, so the field would go out in clear; write \"{m}\" (exactly, in lower case)"
                )
            })
    })
}

/// Edit distance with adjacent transpositions (optimal string alignment), on
/// bytes; attribute names are short, so the table is small.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > 2 {
        return 3;
    }
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * w + j] = if i == 0 {
                j
            } else if j == 0 {
                i
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut v = (d[(i - 1) * w + j] + 1)
                    .min(d[i * w + j - 1] + 1)
                    .min(d[(i - 1) * w + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    v = v.min(d[(i - 2) * w + j - 2] + 1);
                }
                v
            };
        }
    }
    d[a.len() * w + b.len()]
}

/// Every object in a field's type that is not a named definition (those are
/// checked by their own attributes): the type itself, union branches, array
/// items, map values.
fn type_objects<'a>(ty: &'a Json, out: &mut Vec<&'a serde_json::Map<String, Json>>) {
    match ty {
        Json::Array(branches) => branches.iter().for_each(|b| type_objects(b, out)),
        Json::Object(o) => {
            let t = o.get("type");
            if matches!(
                t.and_then(Json::as_str),
                Some("record" | "error" | "enum" | "fixed")
            ) {
                return;
            }
            out.push(o);
            for inner in [o.get("items"), o.get("values")].into_iter().flatten() {
                type_objects(inner, out);
            }
            if let Some(inner @ (Json::Object(_) | Json::Array(_))) = t {
                type_objects(inner, out);
            }
        }
        _ => {}
    }
}

fn is_marked(m: &serde_json::Map<String, Json>) -> bool {
    m.contains_key("sensitive") || m.contains_key("confluent:tags")
}

/// Marked type objects in a field's type that are not named definitions: the
/// type itself, union branches, array items, map values.
fn anonymous_markings<'a>(ty: &'a Json, out: &mut Vec<&'a serde_json::Map<String, Json>>) {
    match ty {
        Json::Array(branches) => branches.iter().for_each(|b| anonymous_markings(b, out)),
        Json::Object(o) => {
            let t = o.get("type");
            if matches!(
                t.and_then(Json::as_str),
                Some("record" | "error" | "enum" | "fixed")
            ) {
                return; // named: handled by `named_markings`
            }
            if is_marked(o) {
                out.push(o);
            }
            match t {
                Some(Json::String(k)) if k == "array" => {
                    if let Some(i) = o.get("items") {
                        anonymous_markings(i, out)
                    }
                }
                Some(Json::String(k)) if k == "map" => {
                    if let Some(v) = o.get("values") {
                        anonymous_markings(v, out)
                    }
                }
                Some(inner @ (Json::Object(_) | Json::Array(_))) => anonymous_markings(inner, out),
                _ => {}
            }
        }
        _ => {}
    }
}

/// Named types whose definition carries a marking, with the marked attributes.
fn named_markings(tree: &SchemaTree) -> Vec<(String, Vec<serde_json::Map<String, Json>>)> {
    let mut out: Vec<(String, Vec<serde_json::Map<String, Json>>)> = tree
        .named_attrs
        .iter()
        .filter(|(_, a)| is_marked(a))
        .filter_map(|(id, a)| {
            let name = match tree.node(*id) {
                Node::Record(r) => r.fullname.clone(),
                Node::Enum { name, .. } | Node::Fixed { name, .. } => name.clone(),
                _ => return None,
            };
            let mut m = a.clone();
            m.retain(|k, _| k == "sensitive" || k == "confluent:tags");
            Some((name, vec![m]))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every (record, field index) whose type is `node` or reaches it through unions,
/// arrays and maps (not through other records' fields).
fn fields_using(tree: &SchemaTree, node: NodeId) -> Vec<(NodeId, usize)> {
    fn reaches(t: &SchemaTree, id: NodeId, target: NodeId, seen: &mut Vec<NodeId>) -> bool {
        if id == target {
            return true;
        }
        if seen.contains(&id) {
            return false;
        }
        seen.push(id);
        match t.node(id) {
            Node::Union(bs) => bs.iter().any(|b| reaches(t, *b, target, seen)),
            Node::Array(i) | Node::Map(i) => reaches(t, *i, target, seen),
            _ => false,
        }
    }
    let mut out = Vec::new();
    for (rid, n) in tree.nodes.iter().enumerate() {
        if let Node::Record(r) = n {
            for (i, f) in r.fields.iter().enumerate() {
                if reaches(tree, f.node, node, &mut Vec::new()) {
                    out.push((rid, i));
                }
            }
        }
    }
    out
}

fn describe(p: &FieldPolicy) -> String {
    let mut s = p.mode.to_string();
    if let Some(d) = &p.domain {
        s.push_str(&format!(" (domain {d})"));
    }
    if let Some(b) = &p.blind_index {
        s.push_str(&format!(" + blind index {b}"));
    }
    s
}

/// Records reachable from a node without passing through a record field.
fn records_under(tree: &SchemaTree, id: NodeId, out: &mut Vec<NodeId>) {
    match tree.node(id) {
        Node::Record(_) if !out.contains(&id) => out.push(id),
        Node::Union(bs) => bs.iter().for_each(|b| records_under(tree, *b, out)),
        Node::Array(i) | Node::Map(i) => records_under(tree, *i, out),
        _ => {}
    }
}

/// Resolves `a.b.c` from a record to every (record node, field index) it can reach:
/// where a step passes through a union of several records, each record that has the
/// next field is followed, so no branch is silently left unencrypted.
fn resolve_path(
    tree: &SchemaTree,
    start: NodeId,
    path: &str,
) -> Result<Vec<(NodeId, usize)>, MarkingError> {
    let steps: Vec<&str> = path.split('.').collect();
    let mut candidates = vec![start];
    for (n, step) in steps.iter().enumerate() {
        let hits: Vec<(NodeId, usize)> = candidates
            .iter()
            .filter_map(|&rid| {
                let r = tree.record(rid)?;
                r.fields
                    .iter()
                    .position(|f| f.name == *step)
                    .map(|i| (rid, i))
            })
            .collect();
        if hits.is_empty() {
            let names: Vec<String> = candidates
                .iter()
                .filter_map(|c| tree.record(*c))
                .flat_map(|r| r.fields.iter().map(|f| f.name.clone()))
                .collect();
            return Err(MarkingError::NoField {
                step: step.to_string(),
                fields: names.join(", "),
            });
        }
        if n + 1 == steps.len() {
            return Ok(hits);
        }
        candidates.clear();
        for (rid, i) in hits {
            if let Some(r) = tree.record(rid) {
                records_under(tree, r.fields[i].node, &mut candidates);
            }
        }
        if candidates.is_empty() {
            return Err(MarkingError::NotRecord {
                step: step.to_string(),
                next: steps[n + 1].to_string(),
            });
        }
    }
    Err(MarkingError::EmptyPath)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> SelectionConfig {
        SelectionConfig {
            default_deterministic_domain: "default".into(),
            ..Default::default()
        }
    }

    fn names(tree: &SchemaTree, sel: &Selection) -> Vec<String> {
        let mut v: Vec<String> = sel
            .keys()
            .map(|(r, i)| {
                let r = tree.record(*r).unwrap();
                format!("{}.{}", r.fullname, r.fields[*i].name)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn attributes_tags_and_rules_select_fields() {
        let s = json!({"type": "record", "name": "Env", "namespace": "db", "fields": [
            {"name": "before", "type": ["null", {"type": "record", "name": "Row", "fields": [
                {"name": "id", "type": "long"},
                {"name": "email", "type": "string"},
                {"name": "ssn", "type": "string", "sensitive": true},
                {"name": "phone", "type": ["null", "string"], "confluent:tags": ["PII", "OTHER"]},
                {"name": "addr", "type": {"type": "record", "name": "Addr", "fields": [
                    {"name": "street", "type": "string"}]}}
            ]}]},
            {"name": "after", "type": ["null", "Row"]},
            {"name": "op", "type": "string"}
        ]});
        let tree = SchemaTree::compile(&s).unwrap();
        let mut c = cfg();
        c.tags.insert("PII".into(), PolicySpec::default());
        c.rules.push(Rule {
            record: "db.Row".into(),
            fields: vec!["email".into(), "addr.street".into()],
            mode: Some(Mode::Deterministic),
            domain: None,
            blind_index: None,
        });
        let sel = select(&tree, "test", &c, &[]).unwrap();
        assert_eq!(
            names(&tree, &sel),
            vec![
                "db.Addr.street",
                "db.Row.email",
                "db.Row.phone",
                "db.Row.ssn"
            ]
        );
        let email = sel.values().find(|s| s.source == Source::Rule(0)).unwrap();
        assert_eq!(email.policy.domain.as_deref(), Some("default"));
    }

    #[test]
    fn a_rule_through_a_union_covers_every_branch_with_the_field() {
        let s = json!({"type": "record", "name": "Evt", "fields": [
            {"name": "payload", "type": [
                {"type": "record", "name": "A", "fields": [{"name": "email", "type": "string"}]},
                {"type": "record", "name": "B", "fields": [{"name": "email", "type": "string"}]},
                {"type": "record", "name": "C", "fields": [{"name": "other", "type": "string"}]}]}]});
        let tree = SchemaTree::compile(&s).unwrap();
        let mut c = cfg();
        c.rules.push(Rule {
            record: "Evt".into(),
            fields: vec!["payload.email".into()],
            mode: None,
            domain: None,
            blind_index: None,
        });
        assert_eq!(
            names(&tree, &select(&tree, "t", &c, &[]).unwrap()),
            vec!["A.email", "B.email"]
        );
    }

    #[test]
    fn conflicts_unknown_modes_and_bad_rules_are_errors() {
        let s = json!({"type": "record", "name": "R", "fields": [
            {"name": "a", "type": "string", "sensitive": {"mode": "deterministic"}, "confluent:tags": ["PII"]},
        ]});
        let tree = SchemaTree::compile(&s).unwrap();
        let mut c = cfg();
        c.tags.insert("PII".into(), PolicySpec::default());
        let e = select(&tree, "s.avsc", &c, &[]).unwrap_err().to_string();
        assert!(
            e.contains("conflicting") && e.contains("R.a") && e.contains("tag PII"),
            "{e}"
        );

        let s = json!({"type": "record", "name": "R", "fields": [
            {"name": "a", "type": "string", "sensitive": {"mode": "scrambled"}}]});
        let tree = SchemaTree::compile(&s).unwrap();
        let e = select(&tree, "s.avsc", &cfg(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("scrambled") && e.contains("R.a"), "{e}");

        let tree = SchemaTree::compile(&json!({"type": "record", "name": "R", "fields": [
            {"name": "a", "type": "string"}]}))
        .unwrap();
        let mut c = cfg();
        c.rules.push(Rule {
            record: "Nope".into(),
            fields: vec!["a".into()],
            mode: None,
            domain: None,
            blind_index: None,
        });
        let e = select(&tree, "s.avsc", &c, &[]).unwrap_err().to_string();
        assert!(e.contains("Nope") && e.contains("records here: R"), "{e}");
        c.unmatched_rules = Unmatched::Ignore;
        assert!(select(&tree, "s.avsc", &c, &[]).unwrap().is_empty());

        c.rules[0].record = "R".into();
        c.rules[0].fields = vec!["b".into()];
        let e = select(&tree, "s.avsc", &c, &[]).unwrap_err().to_string();
        assert!(
            e.contains("no field \"b\"") && e.contains("fields: a"),
            "{e}"
        );
    }

    #[test]
    fn markings_on_type_objects_mean_their_field() {
        let s = json!({"type": "record", "name": "R", "fields": [
            {"name": "email", "type": {"type": "string", "sensitive": true, "connect.parameters": {}}},
            {"name": "phone", "type": ["null", {"type": "string", "confluent:tags": ["PII"]}]},
            {"name": "tags", "type": {"type": "array", "items": {"type": "string", "sensitive": {"mode": "deterministic"}}}},
            {"name": "card", "type": {"type": "record", "name": "Card", "sensitive": true, "fields": [
                {"name": "number", "type": "string"}]}},
            {"name": "plain", "type": "string"}
        ]});
        let tree = SchemaTree::compile(&s).unwrap();
        let mut c = cfg();
        c.tags.insert("PII".into(), PolicySpec::default());
        let sel = select(&tree, "t", &c, &[]).unwrap();
        assert_eq!(
            names(&tree, &sel),
            vec!["R.card", "R.email", "R.phone", "R.tags"]
        );
        let tags = sel
            .values()
            .find(|x| x.policy.mode == Mode::Deterministic)
            .unwrap();
        assert_eq!(tags.source, Source::TypeAttribute(None));
        assert!(sel
            .values()
            .any(|x| x.source == Source::TypeAttribute(Some("Card".into()))));
    }

    #[test]
    fn a_marking_on_a_shared_or_top_level_type_is_refused_with_the_fields_named() {
        let s = json!({"type": "record", "name": "R", "fields": [
            {"name": "home", "type": {"type": "record", "name": "Addr", "sensitive": true, "fields": [
                {"name": "street", "type": "string"}]}},
            {"name": "work", "type": ["null", "Addr"]}
        ]});
        let tree = SchemaTree::compile(&s).unwrap();
        let e = select(&tree, "t.avsc", &cfg(), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ambiguous") && e.contains("R.home") && e.contains("R.work"),
            "{e}"
        );
        let s = json!({"type": "record", "name": "R", "sensitive": true, "fields": [
            {"name": "a", "type": "string"}]});
        let tree = SchemaTree::compile(&s).unwrap();
        let e = select(&tree, "t.avsc", &cfg(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("top-level"), "{e}");
    }
}
