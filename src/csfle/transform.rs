//! One record in Confluent's format: the fields a [`CsflePlan`] selects have their
//! string values replaced by the base64 of their ciphertext and their bytes values
//! by the ciphertext itself (encrypt), or back (decrypt); everything else is
//! validated and copied. The walk is the same byte walker as fieldcrypt's own
//! format ([`crate::transform`]); only what happens at a selected value differs.
//! Plaintext is the raw UTF-8 text or bytes (not Avro-encoded), as Confluent's
//! executors encrypt it.

use std::collections::HashMap;
use std::sync::Arc;

use super::crypto::{decode_text, encode_text, version_of, Dek};
use super::plan::CsflePlan;
use crate::avro::binary::{write_bytes, write_long, Cursor, DecodeError, DecodeErrorKind};
use crate::crypto::CryptoError;
use crate::schema::model::{Node, NodeId, SchemaTree};
use crate::transform::{
    check_depth, value, Counts, RecordHandler, TransformError, TransformErrorKind,
};

/// The DEK each rule encrypts with, and its version (`None`: the rule writes no
/// version prefix).
pub type WriteKeys = [(Arc<Dek>, Option<u32>)];

/// Unwrapped DEKs by (rule index, DEK version); rules without expiry use version 1.
pub type ReadKeys = HashMap<(usize, u32), Arc<Dek>>;

enum Keys<'a> {
    Write(&'a WriteKeys),
    Read {
        keys: &'a ReadKeys,
        /// The first (rule, version) a ciphertext needed and `keys` lacked.
        missing: Option<(usize, u32)>,
    },
}

struct State<'a> {
    keys: Keys<'a>,
    counts: Counts,
    scratch: Vec<u8>,
}

/// Encrypts and decrypts records of one writer schema in Confluent's format.
#[derive(Debug)]
pub struct CsfleCodec {
    plan: Arc<CsflePlan>,
}

impl CsfleCodec {
    pub fn new(plan: Arc<CsflePlan>) -> Self {
        CsfleCodec { plan }
    }

    pub fn plan(&self) -> &Arc<CsflePlan> {
        &self.plan
    }

    /// Appends the encrypted datum to `out` (unchanged on error); `keys` has one
    /// entry per rule of the plan.
    pub fn encrypt(
        &self,
        datum: &[u8],
        keys: &WriteKeys,
        out: &mut Vec<u8>,
    ) -> Result<Counts, TransformError> {
        assert_eq!(keys.len(), self.plan.rules.len(), "one DEK per rule");
        let mut st = State {
            keys: Keys::Write(keys),
            counts: Counts::default(),
            scratch: Vec::new(),
        };
        crate::transform::run(self, datum, out, &mut st)?;
        Ok(st.counts)
    }

    /// Appends the decrypted datum to `out` (unchanged on error). A ciphertext
    /// whose DEK is not in `keys` fails with `Err(Missing(rule, version))`: fetch
    /// it and call again.
    pub fn decrypt(
        &self,
        datum: &[u8],
        keys: &ReadKeys,
        out: &mut Vec<u8>,
    ) -> Result<Counts, DecryptFailure> {
        let mut st = State {
            keys: Keys::Read {
                keys,
                missing: None,
            },
            counts: Counts::default(),
            scratch: Vec::new(),
        };
        let r = crate::transform::run(self, datum, out, &mut st);
        match (r, st.keys) {
            (Ok(()), _) => Ok(st.counts),
            (
                Err(_),
                Keys::Read {
                    missing: Some(m), ..
                },
            ) => Err(DecryptFailure::Missing(m.0, m.1)),
            (Err(e), _) => Err(DecryptFailure::Record(e)),
        }
    }

    /// A selected field's value: through unions, arrays and maps to its strings and
    /// bytes; records inside are walked with their own fields' rules.
    fn selected(
        &self,
        rule: usize,
        node: NodeId,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
        st: &mut State<'_>,
        depth: usize,
    ) -> Result<(), TransformError> {
        check_depth(&self.plan.tree, depth, cur)?;
        let tree = &self.plan.tree;
        match tree.node(node) {
            Node::Null => Ok(()),
            Node::String | Node::Bytes => {
                let text = matches!(tree.node(node), Node::String);
                let at = cur.position();
                let v = if text {
                    cur.read_str()?.as_bytes()
                } else {
                    cur.read_bytes()?
                };
                self.leaf(rule, text, v, at, out, st)
            }
            Node::Record(_) => value(self, node, cur, out, st, depth),
            Node::Union(bs) => {
                let i = cur.read_branch(bs.len())?;
                write_long(out, i as i64);
                self.selected(rule, bs[i], cur, out, st, depth)
            }
            Node::Array(item) | Node::Map(item) => {
                let is_map = matches!(tree.node(node), Node::Map(_));
                let min = tree.min_size(*item) + usize::from(is_map);
                let mut index = 0usize;
                loop {
                    let n = cur.read_block_count(min)?;
                    write_long(out, n as i64);
                    if n == 0 {
                        return Ok(());
                    }
                    crate::avro::binary::check_item_total(min, index + n, cur.position())?;
                    for _ in 0..n {
                        if is_map {
                            let key = cur.read_str()?;
                            write_bytes(out, key.as_bytes());
                        }
                        self.selected(rule, *item, cur, out, st, depth + 1)
                            .map_err(|e| {
                                e.within(&if is_map {
                                    format!("{{#{index}}}")
                                } else {
                                    format!("[{index}]")
                                })
                            })?;
                        index += 1;
                    }
                }
            }
            // Refused when the plan was built.
            // The plan refuses selected fields of other types; never panic on data.
            _ => Err(malformed("a type Confluent's format cannot encrypt")),
        }
    }

    fn leaf(
        &self,
        rule: usize,
        text: bool,
        v: &[u8],
        at: usize,
        out: &mut Vec<u8>,
        st: &mut State<'_>,
    ) -> Result<(), TransformError> {
        let r = &self.plan.rules[rule];
        let deterministic = r.algorithm.is_deterministic();
        match &mut st.keys {
            Keys::Write(keys) => {
                let (dek, version) = &keys[rule];
                st.scratch.clear();
                dek.encrypt(v, *version, &mut st.scratch)
                    .map_err(|e| malformed(&e.to_string()))?;
                if text {
                    write_bytes(out, encode_text(&st.scratch).as_bytes());
                } else {
                    write_bytes(out, &st.scratch);
                }
            }
            Keys::Read { keys, missing } => {
                let decoded;
                let ct = if text {
                    let s = std::str::from_utf8(v).map_err(|_| malformed("not text"))?;
                    decoded = decode_text(s).map_err(|e| malformed(&e.to_string()))?;
                    &decoded[..]
                } else {
                    v
                };
                let version = if r.versioned() {
                    version_of(ct).map_err(|e| malformed(&e.to_string()))?
                } else {
                    1
                };
                let Some(dek) = keys.get(&(rule, version)) else {
                    *missing = Some((rule, version));
                    return Err(TransformError::new(TransformErrorKind::Crypto(
                        CryptoError::UnknownKey(format!(
                            "DEK version {version} of KEK {}",
                            r.kek_name
                        )),
                    )));
                };
                let plain = dek.decrypt(ct, r.versioned()).map_err(|_| {
                    TransformError::new(TransformErrorKind::Crypto(CryptoError::Authentication))
                })?;
                if text && std::str::from_utf8(&plain).is_err() {
                    return Err(TransformError::new(TransformErrorKind::Plaintext(
                        DecodeError::new(DecodeErrorKind::BadUtf8, at),
                    )));
                }
                write_bytes(out, &plain);
            }
        }
        if deterministic {
            st.counts.deterministic += 1;
        } else {
            st.counts.randomized += 1;
        }
        Ok(())
    }
}

fn malformed(why: &str) -> TransformError {
    TransformError::new(TransformErrorKind::Crypto(CryptoError::Malformed(format!(
        "not a Confluent field ciphertext: {why}"
    ))))
}

/// Why a record did not decrypt.
#[derive(Debug)]
pub enum DecryptFailure {
    /// This rule's DEK of this version is needed: fetch it and try again.
    Missing(usize, u32),
    /// The record is at fault.
    Record(TransformError),
}

impl RecordHandler<State<'_>> for CsfleCodec {
    fn tree(&self) -> &SchemaTree {
        &self.plan.tree
    }

    fn dirty(&self, node: NodeId) -> bool {
        self.plan.dirty[node]
    }

    fn record(
        &self,
        node: NodeId,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
        st: &mut State<'_>,
        depth: usize,
    ) -> Result<(), TransformError> {
        let Node::Record(r) = self.plan.tree.node(node) else {
            return value(self, node, cur, out, st, depth);
        };
        for (i, f) in r.fields.iter().enumerate() {
            let start = cur.position();
            let res = match self.plan.fields[node][i] {
                Some(rule) => self.selected(rule, f.node, cur, out, st, depth + 1),
                None => value(self, f.node, cur, out, st, depth + 1),
            };
            res.map_err(|e| e.within(&f.name))?;
            let index = self
                .plan
                .indexes
                .get(node)
                .and_then(|v| v.get(i))
                .and_then(Option::as_ref);
            if let (Some(ix), Keys::Write(_)) = (index, &st.keys) {
                // From the plaintext value just read: [branch,] string or bytes.
                let mut vc = Cursor::new(cur.since(start));
                if ix.nullable {
                    let branches = match self.plan.tree.node(f.node) {
                        Node::Union(bs) => bs.len(),
                        _ => 0,
                    };
                    let b = vc.read_branch(branches)?;
                    if self.plan.tree.null_branch(f.node) == Some(b) {
                        write_long(out, 0);
                        continue;
                    }
                    write_long(out, 1);
                }
                write_long(out, ix.key.length() as i64);
                if ix.text {
                    ix.key.index_text(vc.read_str()?, out);
                } else {
                    ix.key.index_bytes(vc.read_bytes()?, out);
                }
                st.counts.indexes += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value as Json};

    use super::*;
    use crate::csfle::crypto::Algorithm;

    fn vectors() -> Json {
        serde_json::from_str(include_str!("../../tests/golden/csfle_vectors.json")).unwrap()
    }

    fn codec(case: &Json, schema: &Json) -> CsfleCodec {
        let params: Json = case["rule_params"].clone();
        let rule_set = json!({"domainRules": [{"name": "pii", "type": "ENCRYPT",
            "kind": "TRANSFORM", "mode": "WRITEREAD", "tags": ["PII"], "params": params}]});
        let plan = CsflePlan::build(schema, Some(&rule_set), None, "vectors", 64).unwrap();
        CsfleCodec::new(Arc::new(plan))
    }

    fn dek(v: &Json, alg: &str) -> Arc<Dek> {
        let proto = hex::decode(v["deks"][alg]["tink_key_proto_hex"].as_str().unwrap()).unwrap();
        Arc::new(Dek::from_proto(alg.parse::<Algorithm>().unwrap(), &proto).unwrap())
    }

    #[test]
    fn records_match_confluents_python_client_byte_for_byte() {
        let v = vectors();
        let schema = v["schema"].clone();
        let mut checked = 0;
        for case in v["cases"].as_array().unwrap() {
            let alg = case["algorithm"].as_str().unwrap();
            let prefixed = case["dek_version_prefix"].as_bool().unwrap();
            let c = codec(case, &schema);
            assert_eq!(c.plan().rules[0].versioned(), prefixed, "{}", case["name"]);
            let k = dek(&v, alg);
            let version = case["dek_version"].as_u64().unwrap() as u32;
            for r in case["records"].as_array().unwrap() {
                let value = hex::decode(r["kafka_value_hex"].as_str().unwrap()).unwrap();
                let encrypted = &value[5..];
                // Decrypt what the Python client wrote.
                let mut keys = ReadKeys::new();
                let mut plain = Vec::new();
                match c.decrypt(encrypted, &keys, &mut plain) {
                    Err(DecryptFailure::Missing(0, v)) => assert_eq!(v, version),
                    other => panic!("expected a missing DEK, got {other:?}"),
                }
                keys.insert((0, version), k.clone());
                let counts = c.decrypt(encrypted, &keys, &mut plain).unwrap();
                assert_eq!(counts.randomized + counts.deterministic, 2);
                let mut want = Vec::new();
                for f in ["s", "b"] {
                    let p = hex::decode(r["fields"][f]["plaintext_hex"].as_str().unwrap()).unwrap();
                    crate::avro::binary::write_bytes(&mut want, &p);
                }
                assert_eq!(plain, want, "{}", case["name"]);
                // Encrypt it again: SIV is deterministic, so byte-identical.
                let mut again = Vec::new();
                let wk = [(k.clone(), prefixed.then_some(version))];
                c.encrypt(&want, &wk, &mut again).unwrap();
                if Algorithm::Aes256Siv.name() == alg {
                    assert_eq!(again, encrypted, "{}", case["name"]);
                } else {
                    assert_ne!(again, encrypted, "GCM takes a fresh IV");
                    let mut back = Vec::new();
                    c.decrypt(&again, &keys, &mut back).unwrap();
                    assert_eq!(back, want);
                }
                checked += 1;
            }
        }
        assert!(checked >= 8, "{checked} records checked");
    }

    #[test]
    fn nested_unions_arrays_and_maps_round_trip_and_untagged_fields_stay() {
        let schema = json!({"type": "record", "name": "R", "fields": [
            {"name": "id", "type": "long"},
            {"name": "note", "type": ["null", "string"], "confluent:tags": ["PII"]},
            {"name": "tags", "type": {"type": "array", "items": "string"}, "confluent:tags": ["PII"]},
            {"name": "m", "type": {"type": "map", "values": "bytes"}, "confluent:tags": ["PII"]},
            {"name": "city", "type": "string"}]});
        let rule_set = json!({"domainRules": [{"name": "pii", "type": "ENCRYPT",
            "kind": "TRANSFORM", "mode": "WRITEREAD", "tags": ["PII"],
            "params": {"encrypt.kek.name": "k", "encrypt.dek.expiry.days": "3"}}]});
        let c = CsfleCodec::new(Arc::new(
            CsflePlan::build(&schema, Some(&rule_set), None, "t", 64).unwrap(),
        ));
        let mut d = Vec::new();
        write_long(&mut d, 7);
        write_long(&mut d, 1);
        write_bytes(&mut d, b"secret note");
        write_long(&mut d, 2);
        write_bytes(&mut d, b"a");
        write_bytes(&mut d, b"bb");
        write_long(&mut d, 0);
        write_long(&mut d, 1);
        write_bytes(&mut d, b"key");
        write_bytes(&mut d, &[1, 2, 3]);
        write_long(&mut d, 0);
        write_bytes(&mut d, b"Lagos");
        let k = Arc::new(Dek::generate(Algorithm::Aes256Gcm).unwrap());
        let mut enc = Vec::new();
        let n = c.encrypt(&d, &[(k.clone(), Some(4))], &mut enc).unwrap();
        assert_eq!(n.randomized, 4);
        assert!(!enc.windows(11).any(|w| w == b"secret note"));
        assert!(
            enc.windows(5).any(|w| w == b"Lagos"),
            "untagged fields are copied"
        );
        let mut keys = ReadKeys::new();
        keys.insert((0, 4), k);
        let mut back = Vec::new();
        c.decrypt(&enc, &keys, &mut back).unwrap();
        assert_eq!(back, d);
        // A flipped byte in a ciphertext is an error, and out is left as it was.
        let mut bad = enc.clone();
        let at = enc.len() - 8;
        bad[at] ^= 1;
        let mut out = vec![9];
        assert!(c.decrypt(&bad, &keys, &mut out).is_err());
        assert_eq!(out, [9]);
    }
}
