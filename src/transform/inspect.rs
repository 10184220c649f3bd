//! Checking, without keys, that an encrypted datum really is encrypted: every field
//! its schema marks encrypted must hold a well-formed fieldcrypt ciphertext (or the
//! null of a nullable field), and the rest of the datum must match the schema. Used
//! by the load generator's verifier, which sees the output but holds no keys.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::decrypt::{encrypted_record, EncryptedFields};
use super::{run, RecordHandler, TransformError, TransformErrorKind};
use crate::avro::binary::Cursor;
use crate::crypto::format::Header;
use crate::schema::model::{NodeId, SchemaTree};
use crate::schema::plan::{DecryptAction, DecryptField, DecryptPlan};

/// Inspects datums of one encrypted schema. Built once per schema.
#[derive(Debug)]
pub struct Inspector {
    plan: Arc<DecryptPlan>,
}

/// What one datum held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inspection {
    /// Encrypted fields holding a ciphertext.
    pub ciphertexts: u64,
    /// Encrypted nullable fields holding null.
    pub nulls: u64,
}

/// The walk's state: the counts, and who is told of each ciphertext.
pub struct Visit<'a> {
    counts: Inspection,
    each: &'a mut dyn FnMut(&DecryptField, Header, &[u8]),
}

impl Inspector {
    pub fn new(plan: Arc<DecryptPlan>) -> Self {
        Inspector { plan }
    }

    /// The encrypted fields of the schema, as `record.field` contexts.
    pub fn encrypted_fields(&self) -> BTreeSet<String> {
        self.plan
            .actions
            .iter()
            .flatten()
            .filter_map(|a| match a {
                DecryptAction::Decrypt(f) => Some(f.context.clone()),
                _ => None,
            })
            .collect()
    }

    /// Checks one datum. An error names the field that is not a ciphertext, or
    /// where the datum stops matching its schema; it never contains field values.
    pub fn inspect(&self, datum: &[u8]) -> Result<Inspection, TransformError> {
        self.visit(datum, &mut |_, _, _| {})
    }

    /// As [`inspect`](Self::inspect), telling `each` of every ciphertext: its
    /// field, its parsed header and its bytes (the benchmark sizes its
    /// primitives by them).
    pub fn visit(
        &self,
        datum: &[u8],
        each: &mut dyn FnMut(&DecryptField, Header, &[u8]),
    ) -> Result<Inspection, TransformError> {
        let mut st = Visit {
            counts: Inspection::default(),
            each,
        };
        let mut scratch = Vec::with_capacity(datum.len());
        run(self, datum, &mut scratch, &mut st)?;
        Ok(st.counts)
    }

    fn field(
        &self,
        f: &DecryptField,
        cur: &mut Cursor<'_>,
        st: &mut Visit<'_>,
    ) -> Result<(), TransformError> {
        if let Some((enc_null, _)) = f.nullable {
            if cur.read_branch(2)? == enc_null {
                st.counts.nulls += 1;
                return Ok(());
            }
        }
        let ct = cur.read_bytes()?;
        // The version, algorithm and minimum length; only a key could check more.
        let header =
            Header::parse(ct).map_err(|e| TransformError::new(TransformErrorKind::Crypto(e)))?;
        st.counts.ciphertexts += 1;
        (st.each)(f, header, ct);
        Ok(())
    }
}

impl<'a> RecordHandler<Visit<'a>> for Inspector {
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
        st: &mut Visit<'a>,
        depth: usize,
    ) -> Result<(), TransformError> {
        encrypted_record(self, node, cur, out, st, depth)
    }
}

impl<'a> EncryptedFields<Visit<'a>> for Inspector {
    fn plan(&self) -> &DecryptPlan {
        &self.plan
    }

    fn encrypted(
        &self,
        f: &DecryptField,
        cur: &mut Cursor<'_>,
        _: &mut Vec<u8>,
        st: &mut Visit<'a>,
        _: usize,
    ) -> Result<(), TransformError> {
        self.field(f, cur, st)
    }
}
