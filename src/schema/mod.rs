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
/// accept is what other Avro implementations accept.
pub fn parse_schema_json(text: &str) -> Result<serde_json::Value, SchemaError> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| SchemaError::Json(e.to_string()))?;
    apache_avro::Schema::parse(&json).map_err(|e| SchemaError::invalid("", e.to_string()))?;
    Ok(json)
}
