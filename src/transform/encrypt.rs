//! Encrypting records: each sensitive field's Avro bytes become a field ciphertext
//! (randomized under the caller's DEK, or deterministic under the domain key), and
//! blind indexes are computed from the value and written right after it.

use std::cell::RefCell;
use std::sync::Arc;

use super::{
    copy_value, run, run_one, value, Counts, RecordHandler, TransformError, TransformErrorKind,
};
use crate::avro::binary::{walk, write_long, Cursor, Discard};
use crate::crypto::blind_index::BlindIndexKey;
use crate::crypto::cipher::DeterministicKey;
use crate::crypto::format::{Algorithm, Version};
use crate::crypto::siv::SivPrefix;
use crate::keys::keyset::{KeyMaterial, KeysetError};
use crate::keys::Dek;
use crate::schema::model::{NodeId, SchemaTree};
use crate::schema::plan::{EncryptField, EncryptPlan, FieldAction, IndexInput};
use crate::schema::policy::Mode;

thread_local! {
    static CANONICAL: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
}

enum Act {
    Copy,
    Recurse,
    Encrypt(Box<Enc>),
}

struct Enc {
    field: Arc<EncryptField>,
    /// The deterministic key, with its S2V prefix for this field's context.
    det: Option<(Arc<DeterministicKey>, SivPrefix)>,
    index: Option<Arc<BlindIndexKey>>,
}

/// Encrypts records of one writer schema. Built once per schema, shared by threads.
pub struct Encryptor {
    plan: Arc<EncryptPlan>,
    acts: Vec<Vec<Act>>,
    /// Randomized fields in the schema, each counted once: the DEK uses a record
    /// claims in one go at its first randomized field (a field inside an array
    /// or map claims more as it repeats; a null or a branch not taken leaves a
    /// use unspent, which only retires the DEK a little early).
    randomized: u64,
    /// The field ciphertext format version randomized fields are written in
    /// (`crypto.write_version`; SIV fields are always version 1).
    version: Version,
}

/// The blind index of one encrypted field: its key, whether its value is text,
/// and whether the field is nullable (its index then is `["null", "bytes"]`).
#[derive(Clone)]
pub(crate) struct FieldIndex {
    pub key: Arc<BlindIndexKey>,
    pub text: bool,
    pub nullable: bool,
}

impl std::fmt::Debug for FieldIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldIndex")
            .field("text", &self.text)
            .field("nullable", &self.nullable)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// The blind index this plan adds after field `field` of record `record`
    /// (a full name), for string and bytes values only.
    pub(crate) fn index_of(&self, record: &str, field: &str) -> Option<FieldIndex> {
        let tree = &self.plan.tree;
        let &rid = tree.names.get(record)?;
        let i = tree
            .record(rid)?
            .fields
            .iter()
            .position(|f| f.name == field)?;
        let Act::Encrypt(e) = self.acts.get(rid)?.get(i)? else {
            return None;
        };
        let spec = e.field.index.as_ref()?;
        let text = match spec.input {
            IndexInput::String => true,
            IndexInput::Bytes => false,
            _ => return None,
        };
        Some(FieldIndex {
            key: e.index.clone()?,
            text,
            nullable: e.field.nullable.is_some(),
        })
    }
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("plan", &self.plan.rows.len())
            .finish()
    }
}

/// Per-call state: the DEK, the uses of it claimed and not yet spent, and what
/// was done.
pub struct EncState<'a> {
    dek: Option<&'a Dek>,
    claimed: u64,
    counts: Counts,
}

impl Encryptor {
    /// Resolves the plan's key domains; a missing keyset key is an error that says
    /// how to create it.
    pub fn new(plan: Arc<EncryptPlan>, keys: &KeyMaterial) -> Result<Self, KeysetError> {
        keys.check_available(&plan.deterministic_domains(), &plan.index_domains())?;
        let mut acts = Vec::with_capacity(plan.actions.len());
        for per_node in &plan.actions {
            let mut v = Vec::with_capacity(per_node.len());
            for a in per_node {
                v.push(match a {
                    FieldAction::Copy => Act::Copy,
                    FieldAction::Recurse => Act::Recurse,
                    FieldAction::Encrypt(f) => Act::Encrypt(Box::new(Enc {
                        det: match (&f.mode, &f.domain) {
                            (Mode::Deterministic, Some(d)) => {
                                let k = keys.deterministic(d)?;
                                let prefix = k.field_prefix(&f.context);
                                Some((k, prefix))
                            }
                            _ => None,
                        },
                        index: match &f.index {
                            Some(ix) => Some(keys.blind_index(&ix.domain)?),
                            None => None,
                        },
                        field: f.clone(),
                    })),
                });
            }
            acts.push(v);
        }
        let randomized = acts
            .iter()
            .flatten()
            .filter(|a| matches!(a, Act::Encrypt(e) if e.det.is_none()))
            .count() as u64;
        Ok(Encryptor {
            plan,
            acts,
            randomized,
            version: Version::DEFAULT_WRITE,
        })
    }

    /// This encryptor, writing randomized fields in format `version`.
    pub fn writing(mut self, version: Version) -> Self {
        self.version = version;
        self
    }

    pub fn plan(&self) -> &Arc<EncryptPlan> {
        &self.plan
    }

    /// Does this schema need a DEK at all (any randomized field)?
    pub fn needs_dek(&self) -> bool {
        self.acts
            .iter()
            .flatten()
            .any(|a| matches!(a, Act::Encrypt(e) if e.det.is_none()))
    }

    /// Appends the encrypted form of `datum` to `out`. `dek` is required when the
    /// schema has randomized fields. On error `out` is unchanged; on
    /// [`TransformErrorKind::DekExhausted`] retry with a fresh DEK.
    pub fn encrypt(
        &self,
        datum: &[u8],
        dek: Option<&Dek>,
        out: &mut Vec<u8>,
    ) -> Result<Counts, TransformError> {
        let mut st = EncState {
            dek,
            claimed: 0,
            counts: Counts::default(),
        };
        run(self, datum, out, &mut st)?;
        Ok(st.counts)
    }

    /// As [`encrypt`](Self::encrypt) for the datum at `cur` (records packed back to
    /// back, as in container-file blocks); advances `cur` past it.
    pub fn encrypt_next(
        &self,
        cur: &mut Cursor<'_>,
        dek: Option<&Dek>,
        out: &mut Vec<u8>,
    ) -> Result<Counts, TransformError> {
        let mut st = EncState {
            dek,
            claimed: 0,
            counts: Counts::default(),
        };
        run_one(self, cur, out, &mut st)?;
        Ok(st.counts)
    }

    fn field(
        &self,
        e: &Enc,
        node: NodeId,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
        st: &mut EncState<'_>,
        depth: usize,
    ) -> Result<(), TransformError> {
        let tree = &self.plan.tree;
        super::check_depth(tree, depth, cur)?;
        let f = &e.field;
        if let Some(n) = f.nullable {
            let mut peek = cur.clone();
            let branches = match tree.node(node) {
                crate::schema::model::Node::Union(bs) => bs.len(),
                _ => 0,
            };
            if peek.read_branch(branches)? == n.null_branch {
                *cur = peek;
                write_long(out, n.out_null as i64);
                if f.index.is_some() {
                    write_long(out, 0);
                }
                st.counts.nulls += 1;
                return Ok(());
            }
            write_long(out, n.out_bytes as i64);
        }
        let start = cur.position();
        match &e.det {
            None => {
                walk(tree, node, cur, &mut Discard, depth)?;
                let pt = cur.since(start);
                let dek = st
                    .dek
                    .ok_or_else(|| TransformError::new(TransformErrorKind::DekExhausted))?;
                if st.claimed == 0 {
                    // The record's first randomized field claims them all; a
                    // repeated one past them claims one more.
                    let n = if st.counts.randomized == 0 {
                        self.randomized.max(1)
                    } else {
                        1
                    };
                    if !dek.try_use_n(n) {
                        return Err(TransformError::new(TransformErrorKind::DekExhausted));
                    }
                    st.claimed = n;
                }
                st.claimed -= 1;
                write_long(
                    out,
                    (pt.len() + Algorithm::Aes256Gcm.overhead_in(self.version)) as i64,
                );
                let start = out.len();
                dek.key()
                    .seal_in(self.version, &f.context, pt, out)
                    .map_err(|e| {
                        out.truncate(start);
                        TransformError::new(TransformErrorKind::Crypto(e))
                    })?;
                st.counts.randomized += 1;
            }
            Some((k, prefix)) => {
                // Deterministic: equal values must give equal bytes, so encrypt the
                // canonical encoding, not whatever block layout the writer chose.
                CANONICAL.with(|c| -> Result<(), TransformError> {
                    let mut c = c.borrow_mut();
                    c.clear();
                    walk(tree, node, cur, &mut *c, depth)?;
                    write_long(out, (c.len() + Algorithm::Aes256Siv.overhead()) as i64);
                    k.seal_field(prefix, &c, out)
                        .map_err(|e| TransformError::new(TransformErrorKind::Crypto(e)))
                })?;
                st.counts.deterministic += 1;
            }
        }
        if let (Some(spec), Some(key)) = (&f.index, &e.index) {
            let mut vc = Cursor::new(cur.since(start));
            if f.nullable.is_some() {
                vc.read_long()?;
                write_long(out, 1);
            }
            write_long(out, key.length() as i64);
            index_value(spec.input, &spec.symbols, &mut vc, key, out)?;
            st.counts.indexes += 1;
        }
        Ok(())
    }
}

fn index_value(
    input: IndexInput,
    symbols: &[String],
    vc: &mut Cursor<'_>,
    key: &BlindIndexKey,
    out: &mut Vec<u8>,
) -> Result<(), TransformError> {
    match input {
        IndexInput::String => key.index_text(vc.read_str()?, out),
        IndexInput::Bytes => key.index_bytes(vc.read_bytes()?, out),
        IndexInput::Fixed(n) => key.index_bytes(vc.read_exact(n)?, out),
        IndexInput::Int | IndexInput::Long => key.index_bytes(&vc.read_long()?.to_be_bytes(), out),
        IndexInput::Float => key.index_bytes(vc.read_exact(4)?, out),
        IndexInput::Double => key.index_bytes(vc.read_exact(8)?, out),
        IndexInput::Boolean => key.index_bytes(vc.read_exact(1)?, out),
        IndexInput::Enum => {
            let i = vc.read_long()?;
            let sym = symbols
                .get(i as usize)
                .map(String::as_bytes)
                .unwrap_or_default();
            key.index_bytes(sym, out)
        }
    }
    Ok(())
}

impl<'a> RecordHandler<EncState<'a>> for Encryptor {
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
        st: &mut EncState<'a>,
        depth: usize,
    ) -> Result<(), TransformError> {
        let Some(r) = self.plan.tree.record(node) else {
            return Ok(());
        };
        for (f, act) in r.fields.iter().zip(&self.acts[node]) {
            let res = match act {
                Act::Copy => copy_value(&self.plan.tree, f.node, cur, out, depth + 1),
                Act::Recurse => value(self, f.node, cur, out, st, depth + 1),
                Act::Encrypt(e) => self.field(e, f.node, cur, out, st, depth + 1),
            };
            res.map_err(|e| e.within(&f.name))?;
        }
        Ok(())
    }
}
