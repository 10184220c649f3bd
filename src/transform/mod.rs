//! The record transform: Avro binary datum in, Avro binary datum out, driven by a
//! plan from [`crate::schema::plan`] and keys from [`crate::keys`]. No I/O, no KMS
//! calls: the caller hands in the DEK (encrypt) or the unwrapped DEKs (decrypt), so
//! the same code serves files, Kafka and benchmarks.
//!
//! Records are walked as bytes, never decoded into values: untouched parts are
//! validated and copied, sensitive fields are replaced by their ciphertext. The
//! plaintext of a field is the Avro binary encoding of its value.

pub mod decrypt;
pub mod encrypt;
pub mod inspect;

use std::fmt;

use crate::avro::binary::{walk, write_long, Cursor, DecodeError, Discard};
use crate::crypto::CryptoError;
use crate::schema::model::{Node, NodeId, SchemaTree};

pub use decrypt::Decryptor;
pub use encrypt::Encryptor;

/// Why one record could not be transformed. Never contains field values or keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformErrorKind {
    /// The input does not match its schema.
    Decode(DecodeError),
    /// The DEK reached its usage limit mid-record: get a fresh one and retry.
    DekExhausted,
    /// A field ciphertext failed to open.
    Crypto(CryptoError),
    /// A decrypted value does not match the field's original schema.
    Plaintext(DecodeError),
}

/// A transform error with the field path where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformError {
    pub kind: TransformErrorKind,
    pub path: String,
}

impl TransformError {
    pub(crate) fn new(kind: TransformErrorKind) -> Self {
        TransformError {
            kind,
            path: String::new(),
        }
    }

    pub(crate) fn within(mut self, step: &str) -> Self {
        if let TransformErrorKind::Decode(d) = self.kind {
            return TransformError {
                kind: TransformErrorKind::Decode(d.within(step)),
                path: String::new(),
            };
        }
        self.path = if self.path.is_empty() {
            step.to_string()
        } else if self.path.starts_with(['[', '{']) {
            format!("{step}{}", self.path)
        } else {
            format!("{step}.{}", self.path)
        };
        self
    }

    /// The field path, if any.
    pub fn field_path(&self) -> &str {
        match &self.kind {
            TransformErrorKind::Decode(d) => &d.path,
            _ => &self.path,
        }
    }

    /// The stable code for metrics and dead-letter headers.
    pub fn code(&self) -> crate::codes::Code {
        use crate::codes::Code;
        match &self.kind {
            TransformErrorKind::Decode(DecodeError {
                kind: crate::avro::binary::DecodeErrorKind::TooDeep(_),
                ..
            }) => Code::TooDeep,
            TransformErrorKind::Decode(_) => Code::SchemaMismatch,
            TransformErrorKind::DekExhausted => Code::DekExhausted,
            TransformErrorKind::Crypto(CryptoError::Authentication) => Code::AuthenticationFailed,
            TransformErrorKind::Crypto(CryptoError::UnknownKey(_)) => Code::UnknownKey,
            TransformErrorKind::Crypto(_) => Code::MalformedCiphertext,
            TransformErrorKind::Plaintext(_) => Code::PlaintextMismatch,
        }
    }
}

impl fmt::Display for TransformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TransformErrorKind::Decode(
                d @ DecodeError {
                    kind: crate::avro::binary::DecodeErrorKind::TooDeep(_),
                    ..
                },
            ) => write!(f, "record exceeds the nesting depth limit: {d}"),
            TransformErrorKind::Decode(d) => write!(f, "record does not match its schema: {d}"),
            TransformErrorKind::DekExhausted => f.write_str("data key reached its usage limit"),
            TransformErrorKind::Crypto(c) => write!(f, "field {}: {c}", self.path),
            TransformErrorKind::Plaintext(d) => write!(
                f,
                "field {}: decrypted value does not match the field's original schema ({d})",
                self.path
            ),
        }
    }
}

impl std::error::Error for TransformError {}

impl From<DecodeError> for TransformError {
    fn from(d: DecodeError) -> Self {
        TransformError::new(TransformErrorKind::Decode(d))
    }
}

/// Per-record counts, for metrics and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub randomized: u64,
    pub deterministic: u64,
    pub indexes: u64,
    pub nulls: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.randomized += o.randomized;
        self.deterministic += o.deterministic;
        self.indexes += o.indexes;
        self.nulls += o.nulls;
    }
}

/// The part of a walker that differs between encrypt and decrypt: what to do with
/// the fields of a record that has something to transform.
pub(crate) trait RecordHandler<S> {
    fn tree(&self) -> &SchemaTree;
    fn dirty(&self, node: NodeId) -> bool;
    fn record(
        &self,
        node: NodeId,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
        st: &mut S,
        depth: usize,
    ) -> Result<(), TransformError>;
}

/// Validates and copies one value unchanged.
pub(crate) fn copy_value(
    tree: &SchemaTree,
    node: NodeId,
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), TransformError> {
    let start = cur.position();
    walk(tree, node, cur, &mut Discard, depth)?;
    out.extend_from_slice(cur.since(start));
    Ok(())
}

/// Refuses a value nested deeper than the tree's limit (every path that handles a
/// value itself, rather than through the byte walker, must check).
pub(crate) fn check_depth(
    tree: &SchemaTree,
    depth: usize,
    cur: &Cursor<'_>,
) -> Result<(), TransformError> {
    if depth > tree.max_depth {
        return Err(DecodeError::new(
            crate::avro::binary::DecodeErrorKind::TooDeep(tree.max_depth),
            cur.position(),
        )
        .into());
    }
    Ok(())
}

/// Walks one value: copies what has nothing to transform, descends through unions,
/// arrays and maps, and hands records to the handler.
pub(crate) fn value<S, H: RecordHandler<S>>(
    h: &H,
    node: NodeId,
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    st: &mut S,
    depth: usize,
) -> Result<(), TransformError> {
    if !h.dirty(node) {
        return copy_value(h.tree(), node, cur, out, depth);
    }
    check_depth(h.tree(), depth, cur)?;
    match h.tree().node(node) {
        Node::Record(_) => h.record(node, cur, out, st, depth),
        Node::Union(bs) => {
            let i = cur.read_branch(bs.len())?;
            write_long(out, i as i64);
            value(h, bs[i], cur, out, st, depth)
        }
        Node::Array(item) => {
            let min = h.tree().min_size(*item);
            let mut index = 0usize;
            loop {
                let n = cur.read_block_count(min)?;
                write_long(out, n as i64);
                if n == 0 {
                    return Ok(());
                }
                crate::avro::binary::check_item_total(min, index + n, cur.position())?;
                for _ in 0..n {
                    value(h, *item, cur, out, st, depth + 1)
                        .map_err(|e| e.within(&format!("[{index}]")))?;
                    index += 1;
                }
            }
        }
        Node::Map(v) => {
            let min = 1 + h.tree().min_size(*v);
            let mut index = 0usize;
            loop {
                let n = cur.read_block_count(min)?;
                write_long(out, n as i64);
                if n == 0 {
                    return Ok(());
                }
                for _ in 0..n {
                    let key = cur.read_str()?;
                    crate::avro::binary::write_bytes(out, key.as_bytes());
                    // Map keys are data (maybe sensitive): paths name the entry's position.
                    value(h, *v, cur, out, st, depth + 1)
                        .map_err(|e| e.within(&format!("{{#{index}}}")))?;
                    index += 1;
                }
            }
        }
        _ => copy_value(h.tree(), node, cur, out, depth),
    }
}

/// Transforms the next datum at `cur`; on error `out` and `cur` are restored to
/// where they were, so the caller can retry (for example with a fresh DEK).
pub(crate) fn run_one<S, H: RecordHandler<S>>(
    h: &H,
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    st: &mut S,
) -> Result<(), TransformError> {
    let start = out.len();
    let saved = cur.clone();
    let r = value(h, h.tree().root, cur, out, st, 0);
    if r.is_err() {
        out.truncate(start);
        *cur = saved;
    }
    r
}

/// Transforms a whole datum, checking nothing is left over.
pub(crate) fn run<S, H: RecordHandler<S>>(
    h: &H,
    datum: &[u8],
    out: &mut Vec<u8>,
    st: &mut S,
) -> Result<(), TransformError> {
    let start = out.len();
    let mut cur = Cursor::new(datum);
    run_one(h, &mut cur, out, st)?;
    if cur.remaining() != 0 {
        out.truncate(start);
        return Err(DecodeError::new(
            crate::avro::binary::DecodeErrorKind::TrailingBytes(cur.remaining()),
            cur.position(),
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::crypto::cipher::DeterministicKey;
    use crate::keys::keyset::KeyMaterial;
    use crate::schema::plan::{DecryptPlan, EncryptPlan, PlanConfig};
    use crate::schema::policy::SelectionConfig;

    fn cfg(max_depth: usize) -> PlanConfig {
        PlanConfig {
            selection: SelectionConfig {
                default_deterministic_domain: "default".into(),
                ..Default::default()
            },
            blind_index_suffix: "_bidx".into(),
            text_only_domains: HashSet::new(),
            max_depth,
        }
    }

    fn keys() -> Arc<KeyMaterial> {
        let k = Arc::new(DeterministicKey::new([3; 16], &[7; 64]).unwrap());
        Arc::new(KeyMaterial::from_keys(vec![("default".into(), k)], vec![]))
    }

    /// A linked list whose every node holds a deterministic field, `n` nodes long.
    fn list(n: usize) -> (serde_json::Value, Vec<u8>) {
        let schema = json!({"type": "record", "name": "Node", "fields": [
            {"name": "v", "type": "long", "sensitive": {"mode": "deterministic"}},
            {"name": "next", "type": ["null", "Node"]}]});
        let mut datum = Vec::new();
        for i in 0..n {
            crate::avro::binary::write_long(&mut datum, i as i64);
            crate::avro::binary::write_long(&mut datum, if i + 1 < n { 1 } else { 0 });
        }
        (schema, datum)
    }

    fn round_trip(n: usize, max_depth: usize) -> Result<(), TransformError> {
        let (schema, datum) = list(n);
        let plan = Arc::new(EncryptPlan::build(&schema, "list", &cfg(max_depth)).unwrap());
        let enc = Encryptor::new(plan.clone(), &keys()).unwrap();
        let mut out = Vec::new();
        enc.encrypt(&datum, None, &mut out)?;
        let dplan = DecryptPlan::build_with_depth(&plan.output_json, "out", max_depth).unwrap();
        let dec = Decryptor::new(Arc::new(dplan), keys());
        let mut back = Vec::new();
        dec.decrypt(&out, &Default::default(), &mut back)?;
        assert_eq!(back, datum);
        Ok(())
    }

    #[test]
    fn depth_counts_records_not_union_branches() {
        // 129 nodes: the last node's fields are 129 levels down, well inside 256
        // (a union branch adds no level, so a list node is one level).
        round_trip(129, 256).unwrap();
        round_trip(256, 256).unwrap();
        let e = round_trip(257, 256).unwrap_err();
        assert_eq!(e.code(), crate::codes::Code::TooDeep);
        let msg = e.to_string();
        assert!(
            msg.contains("nesting depth limit")
                && msg.contains("256")
                && msg.contains("schema.max_depth"),
            "{msg}"
        );
        round_trip(600, 1000).unwrap();
    }

    #[test]
    fn the_deepest_configurable_nesting_fits_a_worker_thread_stack() {
        // tokio's worker threads have 2 MiB stacks; the ceiling must fit in them.
        let n = crate::config::MAX_DEPTH_CEILING;
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || round_trip(n, n).unwrap())
            .unwrap()
            .join()
            .unwrap();
    }

    /// Found by fuzzing: a null in a nullable encrypted field past the depth limit
    /// was accepted by the encrypt and decrypt walkers while validation refused it.
    #[test]
    fn nulls_of_encrypted_fields_count_against_the_depth_limit() {
        // R0 { next: R1 { ... next: Leaf { secret: ["null", "string"] } } }
        let mut t = json!({"type": "record", "name": "Leaf", "fields": [
            {"name": "secret", "type": ["null", "string"], "default": null,
             "sensitive": {"mode": "deterministic"}}]});
        let levels = 4;
        for i in (0..levels).rev() {
            t = json!({"type": "record", "name": format!("R{i}"), "fields": [
                {"name": "next", "type": t}]});
        }
        let datum = [0u8]; // the null branch, at depth `levels + 1`
        let build = |max| {
            let p = Arc::new(EncryptPlan::build(&t, "deep", &cfg(max)).unwrap());
            let enc = Encryptor::new(p.clone(), &keys()).unwrap();
            let d = DecryptPlan::build_with_depth(&p.output_json, "out", max).unwrap();
            (enc, Decryptor::new(Arc::new(d), keys()))
        };
        let (enc, dec) = build(levels);
        let mut out = Vec::new();
        assert_eq!(
            enc.encrypt(&datum, None, &mut out).unwrap_err().code(),
            crate::codes::Code::TooDeep
        );
        let mut back = Vec::new();
        let e = dec
            .decrypt(&datum, &Default::default(), &mut back)
            .unwrap_err();
        assert_eq!(e.code(), crate::codes::Code::TooDeep);
        let (enc, dec) = build(levels + 1);
        enc.encrypt(&datum, None, &mut out).unwrap();
        dec.decrypt(&out, &Default::default(), &mut back).unwrap();
        assert_eq!(back, datum);
    }
}

#[cfg(test)]
mod walker_tests;
