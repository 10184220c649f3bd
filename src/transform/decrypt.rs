//! Decrypting records: field ciphertexts are opened with the key they name (a DEK
//! handed in by the caller, or a deterministic keyset key), checked against the
//! field's original schema, and spliced back; blind-index fields are dropped. The
//! result is a datum of the original schema with exactly the original values; its
//! bytes equal the input's whenever the writer used Avro's canonical layout (minimal
//! varints, one block per array or map), as mainstream writers do.

use std::collections::HashMap;
use std::sync::Arc;

use super::{
    copy_value, run, run_one, value, Counts, RecordHandler, TransformError, TransformErrorKind,
};
use crate::avro::binary::{walk, write_long, Cursor, Discard};
use crate::crypto::cipher::RandomizedKey;
use crate::crypto::format::{Accepted, Algorithm, Header, KeyId, KeyRef};
use crate::crypto::CryptoError;
use crate::keys::keyset::KeyMaterial;
use crate::schema::model::{NodeId, SchemaTree};
use crate::schema::plan::{DecryptAction, DecryptField, DecryptPlan};

/// Unwrapped DEKs available to one decrypt call, by key id.
pub type DekSet = HashMap<KeyId, Arc<RandomizedKey>>;

/// The DEK a header names: by its id (version 1), or the one whose id starts
/// with the header's 8 bytes (version 2; the cipher then authenticates the whole
/// id, so a second DEK sharing those bytes could only fail to open, never open).
fn find_dek<'a>(deks: &'a DekSet, key: &KeyRef) -> Option<&'a Arc<RandomizedKey>> {
    match key {
        KeyRef::Id(id) => deks.get(id),
        KeyRef::Prefix(_) => deks.iter().find(|(id, _)| key.matches(id)).map(|(_, k)| k),
    }
}

/// Decrypts records of one encrypted schema. Built once per schema, shared by threads.
#[derive(Debug)]
pub struct Decryptor {
    plan: Arc<DecryptPlan>,
    keys: Arc<KeyMaterial>,
    /// The ciphertext format versions this reader opens (`crypto.read_versions`).
    accepted: Accepted,
}

/// Per-call state.
pub struct DecState<'a> {
    deks: &'a DekSet,
    counts: Counts,
}

impl Decryptor {
    pub fn new(plan: Arc<DecryptPlan>, keys: Arc<KeyMaterial>) -> Self {
        Decryptor {
            plan,
            keys,
            accepted: Accepted::default(),
        }
    }

    /// This decryptor, opening only ciphertexts of the `accepted` versions.
    pub fn accepting(mut self, accepted: Accepted) -> Self {
        self.accepted = accepted;
        self
    }

    pub fn plan(&self) -> &Arc<DecryptPlan> {
        &self.plan
    }

    /// Appends the original datum for encrypted `datum` to `out`. On error `out` is
    /// unchanged.
    pub fn decrypt(
        &self,
        datum: &[u8],
        deks: &DekSet,
        out: &mut Vec<u8>,
    ) -> Result<Counts, TransformError> {
        let mut st = DecState {
            deks,
            counts: Counts::default(),
        };
        run(self, datum, out, &mut st)?;
        Ok(st.counts)
    }

    /// As [`decrypt`](Self::decrypt) for the datum at `cur`; advances `cur` past it.
    pub fn decrypt_next(
        &self,
        cur: &mut Cursor<'_>,
        deks: &DekSet,
        out: &mut Vec<u8>,
    ) -> Result<Counts, TransformError> {
        let mut st = DecState {
            deks,
            counts: Counts::default(),
        };
        run_one(self, cur, out, &mut st)?;
        Ok(st.counts)
    }

    fn field(
        &self,
        f: &DecryptField,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
        st: &mut DecState<'_>,
        depth: usize,
    ) -> Result<(), TransformError> {
        if let Some((enc_null, orig_null)) = f.nullable {
            if cur.read_branch(2)? == enc_null {
                write_long(out, orig_null as i64);
                st.counts.nulls += 1;
                return Ok(());
            }
        }
        let ct = cur.read_bytes()?;
        let crypto = |e: CryptoError| TransformError::new(TransformErrorKind::Crypto(e));
        let header = Header::parse(ct).map_err(crypto)?;
        self.accepted.check(&header).map_err(crypto)?;
        let start = out.len();
        match header.algorithm {
            Algorithm::Aes256Gcm => {
                let key = find_dek(st.deks, &header.key)
                    .ok_or_else(|| crypto(CryptoError::UnknownKey(header.key.hex())))?;
                key.open_into(&f.context, ct, out).map_err(crypto)?;
                st.counts.randomized += 1;
            }
            Algorithm::Aes256Siv => {
                let KeyRef::Id(id) = &header.key else {
                    // Parsing admits SIV only in version 1, which names whole ids.
                    return Err(crypto(CryptoError::UnknownKey(header.key.hex())));
                };
                let key = self
                    .keys
                    .deterministic_by_id(id)
                    .ok_or_else(|| crypto(CryptoError::UnknownKey(header.key.hex())))?;
                key.open_into(&f.context, ct, out).map_err(crypto)?;
                st.counts.deterministic += 1;
            }
        }
        // Authenticated, so this only fails if the writer encrypted garbage; check
        // anyway so that what we emit always matches the restored schema.
        let mut pc = Cursor::new(&out[start..]);
        // The restored value sits where the ciphertext was: same depth budget.
        let ok = walk(
            &self.plan.original_tree,
            f.node,
            &mut pc,
            &mut Discard,
            depth,
        )
        .map_err(|d| TransformError::new(TransformErrorKind::Plaintext(d)))
        .and_then(|_| {
            if pc.remaining() == 0 {
                Ok(())
            } else {
                Err(TransformError::new(TransformErrorKind::Plaintext(
                    crate::avro::binary::DecodeError::new(
                        crate::avro::binary::DecodeErrorKind::TrailingBytes(pc.remaining()),
                        pc.position(),
                    ),
                )))
            }
        });
        if ok.is_err() {
            out.truncate(start);
        }
        ok
    }
}

impl<'a> RecordHandler<DecState<'a>> for Decryptor {
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
        st: &mut DecState<'a>,
        depth: usize,
    ) -> Result<(), TransformError> {
        encrypted_record(self, node, cur, out, st, depth)
    }
}

impl<'a> EncryptedFields<DecState<'a>> for Decryptor {
    fn plan(&self) -> &DecryptPlan {
        &self.plan
    }

    fn encrypted(
        &self,
        f: &DecryptField,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
        st: &mut DecState<'a>,
        depth: usize,
    ) -> Result<(), TransformError> {
        self.field(f, cur, out, st, depth)
    }
}

/// A walker over an encrypted schema's records: what it does with each
/// encrypted field (decrypt it, or only look at its header).
pub(crate) trait EncryptedFields<S>: RecordHandler<S> {
    fn plan(&self) -> &DecryptPlan;

    fn encrypted(
        &self,
        f: &DecryptField,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
        st: &mut S,
        depth: usize,
    ) -> Result<(), TransformError>;
}

/// Walks one record of an encrypted schema: copies plain fields (descending where
/// something below is encrypted), skips blind-index fields, and hands each encrypted
/// field to `field`. Shared by decryption and keyless inspection.
pub(crate) fn encrypted_record<S, H: EncryptedFields<S>>(
    h: &H,
    node: NodeId,
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    st: &mut S,
    depth: usize,
) -> Result<(), TransformError> {
    let plan = h.plan();
    let Some(r) = plan.tree.record(node) else {
        return Ok(());
    };
    for (f, act) in r.fields.iter().zip(&plan.actions[node]) {
        let res = match act {
            DecryptAction::Copy => copy_value(&plan.tree, f.node, cur, out, depth + 1),
            DecryptAction::Recurse => value(h, f.node, cur, out, st, depth + 1),
            DecryptAction::Decrypt(df) => super::check_depth(&plan.tree, depth + 1, cur)
                .and_then(|_| h.encrypted(df, cur, out, st, depth + 1)),
            DecryptAction::Drop => walk(&plan.tree, f.node, cur, &mut Discard, depth + 1)
                .map(|_| ())
                .map_err(TransformError::from),
        };
        res.map_err(|e| e.within(&f.name))?;
    }
    Ok(())
}
