//! Raw routes (no registry): values, and keys with `key_format = "avro"`, are
//! Avro written with the schema files the route names. Their plans are built
//! and checked once, at start-up (and by `fieldcrypt validate`), and refused with
//! the config key to fix: a schema that would send everything in clear, a
//! decrypting route given the plain schema, a `require` the schema misses.

use std::path::Path;

use super::avro::Plan;
use super::codec::ValueCodec;
use crate::config::{invalid, shell_word, Config, ConfigError, PipelineMode};
use crate::engine::Engine;
use crate::kafka::route::{KeyFormat, RouteConfig};
use crate::schema::{parse_schema_with, References};

/// A raw route's plans from its schema files (value, and key for
/// `key_format = "avro"`), checked as start-up checks them.
pub(super) fn plans(
    engine: &Engine,
    config: &Config,
    refs: &References,
    i: usize,
    r: &RouteConfig,
) -> Result<(Plan, Option<Plan>), ConfigError> {
    let mode = config.pipeline.mode;
    let load = |key: &str, path: &Path, is_key: bool| {
        let key = format!("routes[{i}].{key}");
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(&key, format!("cannot read {}: {e}", path.display())))?;
        let json = parse_schema_with(&text, refs)
            .map_err(|e| invalid(&key, format!("{}: {e}", path.display())))?;
        let label = path.display().to_string();
        Plan::for_schema(engine, mode, &json, &[], &label, is_key)
            .map_err(|refused| invalid(&key, refused.message))
    };
    let Some(path) = &r.value_schema else {
        return Err(invalid(
            format!("routes[{i}].value_schema"),
            "required without [schema_registry] (the writer schema of the raw Avro values)",
        ));
    };
    let value = load("value_schema", path, false)?;
    check_value(config, i, r, &value, path)?;
    let key =
        match (&r.key_format, &r.key_schema) {
            (KeyFormat::Avro, Some(p)) => Some(load("key_schema", p, true)?),
            (KeyFormat::Avro, None) => return Err(invalid(
                format!("routes[{i}].key_schema"),
                "key_format = \"avro\" without [schema_registry] needs the raw keys' writer schema",
            )),
            (KeyFormat::Passthrough, _) => None,
        };
    if let (PipelineMode::Encrypt, Plan::Encrypt(enc)) = (mode, &value) {
        super::policy::check_required(i, &r.require, enc.plan())?;
    }
    Ok((value, key))
}

/// What a raw route does, checked as `run` would check it at start-up
/// (`fieldcrypt validate`): a line describing its plan, or why it is refused.
pub fn check_raw_route(engine: &Engine, i: usize) -> Result<String, ConfigError> {
    let cfg = engine.config();
    let r = cfg
        .routes
        .get(i)
        .ok_or_else(|| invalid(format!("routes[{i}]"), "no such route"))?;
    let refs = cfg
        .schema
        .references()
        .map_err(|e| invalid("schema.reference_files", e.to_string()))?;
    let (value, key) = plans(engine, cfg, &refs, i, r)?;
    let mut line = if value.is_passthrough() {
        "passes records through unencrypted (allow_unencrypted = true)".to_string()
    } else {
        value.describe()
    };
    if let Some(k) = key {
        line.push_str(&format!("; keys: {}", k.describe()));
    }
    Ok(line)
}

/// A raw route's value schema, checked at start-up: encrypting, it must encrypt
/// something; decrypting, it must be an encrypted schema (the output of `fieldcrypt
/// plan --output-schema`), not the plain one — unless the route allows
/// unencrypted records.
fn check_value(
    cfg: &Config,
    i: usize,
    r: &RouteConfig,
    plan: &Plan,
    path: &Path,
) -> Result<(), ConfigError> {
    if r.allow_unencrypted || !plan.is_passthrough() {
        return Ok(());
    }
    let key = format!("routes[{i}].value_schema");
    let file = shell_word(&path.to_string_lossy());
    match plan {
        Plan::Encrypt(enc) => Err(invalid(key, format!(
            "{}: {}, so every record would go to the target in clear. \
             Mark the sensitive fields (\"sensitive\": true), map their confluent:tags under [tags.NAME], \
             or select them with [[rules]] (check the output of `{}`); if this route really carries \
             nothing sensitive, set allow_unencrypted = true on it",
            path.display(),
            crate::schema::policy::why_nothing_selected(
                &enc.plan().tree,
                &cfg.plan_config().selection
            ),
            cfg.command("plan", &file),
        ))),
        Plan::Decrypt(_) => {
            let out = shell_word(&path.with_extension("encrypted.avsc").to_string_lossy());
            Err(invalid(key, format!(
                "{}: nothing in this schema is encrypted, so it is not what an \
                 encrypting fieldcrypt writes; a decrypting route takes the encrypted (output) schema, \
                 which `{}` writes from the plain one (or set allow_unencrypted = true on the route \
                 if its records are not encrypted)",
                path.display(),
                cfg.command("plan", &format!("{file} --output-schema {out}")),
            )))
        }
    }
}
