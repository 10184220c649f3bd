//! Schemas: which fields are sensitive and what the encrypted schema looks like.
//!
//! - [`model`] compiles Avro JSON into a walkable tree with names resolved.
//! - [`policy`] decides per field whether and how it is encrypted (schema attributes,
//!   Confluent tags mapped in config, config rules).
//! - [`plan`] turns a schema plus its policies into a cached transform plan and the
//!   derived output schema, and back (the original schema from an encrypted one).

pub mod model;
pub mod plan;
pub mod policy;
pub mod relocate;

use thiserror::Error;

/// A schema that cannot be compiled, or policies that cannot be applied to it.
/// The message names the schema location and, where there is one, the fix.
#[derive(Debug, Error)]
pub enum SchemaError {
    #[error("invalid Avro schema at {at}: {msg}")]
    Invalid { at: String, msg: String },
    #[error("schema is not valid JSON: {0}")]
    Json(String),
    #[error("{schema}: field {path}: {msg}")]
    Policy {
        schema: String,
        path: String,
        msg: String,
    },
    #[error("{schema}: {msg}")]
    Other { schema: String, msg: String },
}

impl SchemaError {
    pub(crate) fn invalid(at: &str, msg: impl Into<String>) -> Self {
        SchemaError::Invalid {
            at: if at.is_empty() {
                "<root>".into()
            } else {
                at.to_string()
            },
            msg: msg.into(),
        }
    }
}

/// Parses schema JSON text, checking it with apache-avro as well so that what we
/// accept is what other Avro implementations accept. A UTF-8 byte-order mark is
/// skipped; comments (which JSON does not allow) are named as the problem.
pub fn parse_schema_json(text: &str) -> Result<serde_json::Value, SchemaError> {
    parse_schema_with(text, &References::default())
}

/// The number of record fields in a schema's JSON (every record, nested and
/// referenced ones included), counted without building anything.
pub fn field_count(json: &serde_json::Value) -> usize {
    match json {
        serde_json::Value::Object(o) => {
            let own = o
                .get("fields")
                .and_then(serde_json::Value::as_array)
                .map_or(0, Vec::len);
            own + o.values().map(field_count).sum::<usize>()
        }
        serde_json::Value::Array(a) => a.iter().map(field_count).sum(),
        _ => 0,
    }
}

/// As [`parse_schema_json`], with named types the schema uses but does not define
/// taken from `refs`: each is defined at its first use, so the result stands alone.
pub fn parse_schema_with(text: &str, refs: &References) -> Result<serde_json::Value, SchemaError> {
    let json = parse_json(text)?;
    let json = refs.inline(json)?;
    check_with_apache_avro(&json)?;
    Ok(json)
}

/// JSON text to a value: a BOM skipped, syntax errors with their cause named.
fn parse_json(text: &str) -> Result<serde_json::Value, SchemaError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str(text).map_err(|e| json_error(text, &e))
}

/// Checks a schema with apache-avro (what other implementations accept).
pub(crate) fn check_with_apache_avro(json: &serde_json::Value) -> Result<(), SchemaError> {
    let compatible = avro_compatible(json);
    match apache_avro::Schema::parse(&compatible) {
        Ok(_) => return Ok(()),
        // apache-avro cannot check some valid defaults (a recursive type's default
        // that holds the type itself): check the structure without defaults, and
        // the defaults ourselves.
        Err(e) if e.to_string().contains("`default`") => {
            let mut bare = compatible.into_owned();
            strip_field_defaults(&mut bare);
            if apache_avro::Schema::parse(&bare).is_ok() {
                let tree = model::SchemaTree::compile(json)?;
                return check_defaults(&tree);
            }
        }
        Err(_) => {}
    }
    apache_avro::Schema::parse(&avro_compatible(json)).map_err(|e| {
        let msg = e.to_string();
        match msg.strip_prefix("Unknown primitive type: ") {
            Some(name) => SchemaError::invalid(
                "",
                format!(
                    "unknown type name \"{name}\": it is not defined before its use in this schema; \
                     if another schema defines it (a Confluent schema reference), pass that file \
                     with --schema-path or list it in schema.reference_files"
                ),
            ),
            None => SchemaError::invalid("", msg),
        }
    })?;
    Ok(())
}

fn strip_field_defaults(j: &mut serde_json::Value) {
    match j {
        serde_json::Value::Object(o) => {
            if let Some(serde_json::Value::Array(fields)) = o.get_mut("fields") {
                for f in fields.iter_mut() {
                    if let Some(fo) = f.as_object_mut() {
                        fo.remove("default");
                    }
                }
            }
            for (k, v) in o.iter_mut() {
                if k != "default" {
                    strip_field_defaults(v);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_field_defaults),
        _ => {}
    }
}

/// Every field default is a valid value of the field's type.
fn check_defaults(tree: &model::SchemaTree) -> Result<(), SchemaError> {
    for n in &tree.nodes {
        if let model::Node::Record(r) = n {
            for f in &r.fields {
                if let Some(d) = f.json.get("default") {
                    if !tree.default_is_valid(f.node, d) {
                        return Err(SchemaError::invalid(
                            &format!("{}.{}", r.fullname, f.name),
                            format!(
                                "the default is not a value of the field's type {}",
                                tree.type_name(f.node)
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Named types that schemas may use without defining them: the types of
/// Confluent schema references (registry mode) or of `schema.reference_files` and
/// `--schema-path` files (file mode).
#[derive(Debug, Clone, Default)]
pub struct References(std::collections::HashMap<String, relocate::Definition>);

impl References {
    /// Reads the named types of each schema file.
    pub fn from_files(paths: &[std::path::PathBuf]) -> Result<Self, SchemaError> {
        let mut refs = References::default();
        for p in paths {
            let text = std::fs::read_to_string(p).map_err(|e| SchemaError::Other {
                schema: p.display().to_string(),
                msg: format!("cannot read the referenced schema file: {e}"),
            })?;
            let json = parse_json(&text).map_err(|e| SchemaError::Other {
                schema: p.display().to_string(),
                msg: e.to_string(),
            })?;
            refs.add(&json);
        }
        Ok(refs)
    }

    /// Adds the named types a schema defines (a referenced schema).
    pub fn add(&mut self, json: &serde_json::Value) {
        relocate::definitions(json, "", &mut self.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The schema with each referenced type defined at its first use.
    pub fn inline(&self, mut json: serde_json::Value) -> Result<serde_json::Value, SchemaError> {
        if self.0.is_empty() {
            return Ok(json);
        }
        relocate::relocate(&mut json, &self.0, &Default::default());
        Ok(json)
    }
}

/// A JSON syntax error with its cause named where we can tell it.
fn json_error(text: &str, e: &serde_json::Error) -> SchemaError {
    let line = text.lines().nth(e.line().saturating_sub(1)).unwrap_or("");
    let at = line
        .char_indices()
        .nth(e.column().saturating_sub(1))
        .map_or("", |(i, _)| &line[i..]);
    let hint = if at.starts_with("//") || at.starts_with("/*") || at.starts_with('#') {
        " (a comment: JSON does not allow comments; remove it)"
    } else if text.trim().is_empty() {
        " (the file is empty)"
    } else {
        ""
    };
    SchemaError::Json(format!("{e}{hint}"))
}

/// The schema as apache-avro accepts it: Avro's `error` type (a record variant
/// used in protocols and Java-generated schemas) is spelled `record`. Used only to
/// hand schemas to apache-avro; the schema we write keeps `error`.
pub fn avro_compatible(json: &serde_json::Value) -> std::borrow::Cow<'_, serde_json::Value> {
    fn has_error(j: &serde_json::Value) -> bool {
        match j {
            serde_json::Value::Object(o) => {
                o.get("type").and_then(|t| t.as_str()) == Some("error")
                    || o.iter().any(|(k, v)| k != "default" && has_error(v))
            }
            serde_json::Value::Array(a) => a.iter().any(has_error),
            _ => false,
        }
    }
    fn fix(j: &mut serde_json::Value) {
        match j {
            serde_json::Value::Object(o) => {
                if o.get("type").and_then(|t| t.as_str()) == Some("error") {
                    o.insert("type".into(), "record".into());
                }
                for (k, v) in o.iter_mut() {
                    if k != "default" {
                        fix(v);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(fix),
            _ => {}
        }
    }
    if !has_error(json) {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut j = json.clone();
    fix(&mut j);
    std::borrow::Cow::Owned(j)
}
