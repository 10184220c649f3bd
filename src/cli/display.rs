//! `fieldcrypt cat`: records of a container file as JSON lines, read with
//! apache-avro (an implementation independent of our byte walker).

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use apache_avro::types::Value;
use base64::Engine as _;
use serde_json::{json, Map, Value as Json};

/// Prints up to `limit` records of `path` as JSON lines.
pub fn cat(path: &Path, limit: Option<usize>) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = apache_avro::Reader::new(std::io::BufReader::new(f))
        .with_context(|| format!("{} is not a readable Avro container file", path.display()))?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for (i, v) in reader.enumerate() {
        if limit.is_some_and(|l| i >= l) {
            break;
        }
        let v = v.with_context(|| format!("{}: record {i}", path.display()))?;
        writeln!(out, "{}", to_json(&v))?;
    }
    out.flush()?;
    Ok(())
}

fn b64(b: &[u8]) -> Json {
    Json::String(format!(
        "b64:{}",
        base64::engine::general_purpose::STANDARD.encode(b)
    ))
}

/// Converts an Avro value to JSON for display: bytes and fixed as `b64:...`.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => json!(b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => json!(i),
        Value::Long(l)
        | Value::TimeMicros(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::TimestampNanos(l)
        | Value::LocalTimestampMillis(l)
        | Value::LocalTimestampMicros(l)
        | Value::LocalTimestampNanos(l) => json!(l),
        Value::Float(f) => json!(f),
        Value::Double(d) => json!(d),
        Value::Bytes(b) | Value::Fixed(_, b) => b64(b),
        Value::String(s) | Value::Enum(_, s) => json!(s),
        Value::Uuid(u) => json!(u.to_string()),
        Value::Union(_, inner) => to_json(inner),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Json::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), to_json(&m[k])))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        other => json!(format!("{other:?}")),
    }
}
