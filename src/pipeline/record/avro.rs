//! fieldcrypt's own format, Avro: a [`Plan`] encrypts a value by the schema's
//! markings (adding the `fieldcrypt.dek` header naming its DEK) or decrypts one
//! with the DEKs its headers name. Raw routes use it for values and keys; with a
//! registry, [`FieldcryptAvro`] builds it for any Avro writer schema that
//! Confluent's format does not claim, holding the route's policy floor.

use std::sync::Arc;

use async_trait::async_trait;
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::Value as Json;

use super::codec::{not_encrypted, Built, Claim, RecordCx, SchemaCx, ValueCodec, ValueFormat};
use super::failure::{record, Failure, Fatal, Refused, Step};
use super::policy;
use crate::codes::Code;
use crate::config::PipelineMode;
use crate::engine::{EncryptFailure, Engine};
use crate::kafka::headers;
use crate::keys::KmsError;
use crate::registry::AVRO;
use crate::schema::policy::{MetadataTags, Mode};
use crate::transform::decrypt::DekSet;
use crate::transform::{Counts, Decryptor, Encryptor};

/// fieldcrypt's plan for one schema.
#[derive(Clone)]
pub(super) enum Plan {
    Encrypt(Arc<Encryptor>),
    Decrypt(Arc<Decryptor>),
}

impl Plan {
    /// The encryptor or decryptor for a schema. Keys must not need a DEK: a
    /// randomized key field would break partitioning and compaction.
    pub(super) fn for_schema(
        engine: &Engine,
        mode: PipelineMode,
        json: &Json,
        metadata: &MetadataTags,
        label: &str,
        is_key: bool,
    ) -> Result<Plan, Refused> {
        let policy = |e: &dyn std::fmt::Display| Refused::new(Code::PolicyError, e.to_string());
        let enc = match mode {
            PipelineMode::Decrypt => {
                return engine
                    .decryptor(json, label)
                    .map(Plan::Decrypt)
                    .map_err(|e| policy(&e))
            }
            PipelineMode::Encrypt => engine
                .encryptor_tagged(json, metadata, label)
                .map_err(|e| policy(&e))?,
        };
        if is_key && enc.needs_dek() {
            let fields: Vec<String> = enc
                .plan()
                .rows
                .iter()
                .filter(|r| r.mode == Mode::Randomized)
                .map(|r| r.path.clone())
                .collect();
            return Err(Refused::new(
                Code::RandomizedKeyField,
                format!(
                    "key schema {label}: field(s) {} are randomized; record keys may only be encrypted deterministically (equal keys must stay equal for partitioning and compaction): use \"sensitive\": {{\"mode\": \"deterministic\"}}",
                    fields.join(", ")
                ),
            ));
        }
        Ok(Plan::Encrypt(enc))
    }

    /// The schema the output is written with.
    pub(super) fn output_json(&self) -> &Json {
        match self {
            Plan::Encrypt(e) => &e.plan().output_json,
            Plan::Decrypt(d) => &d.plan().original_json,
        }
    }

    /// A record key's output (key plans never need a DEK: checked when built).
    pub(super) fn apply_key(&self, datum: &[u8], out: &mut Vec<u8>) -> Step<()> {
        let r = match self {
            Plan::Encrypt(enc) => enc.encrypt(datum, None, out),
            Plan::Decrypt(dec) => dec.decrypt(datum, &DekSet::new(), out),
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) => record(e.code(), format!("key: {e}")),
        }
    }

    /// What the plan does, in one line (`fieldcrypt validate`).
    pub(super) fn describe(&self) -> String {
        match self {
            Plan::Encrypt(e) => {
                let (mut rnd, mut det, mut idx) = (0, 0, 0);
                for row in &e.plan().rows {
                    match row.mode {
                        Mode::Randomized => rnd += 1,
                        Mode::Deterministic => det += 1,
                    }
                    idx += usize::from(row.index_field.is_some());
                }
                format!(
                    "encrypts {rnd} randomized and {det} deterministic field(s), {idx} blind index(es)"
                )
            }
            Plan::Decrypt(d) => format!(
                "decrypts {} field(s)",
                d.plan()
                    .actions
                    .iter()
                    .flatten()
                    .filter(|a| matches!(a, crate::schema::plan::DecryptAction::Decrypt(..)))
                    .count()
            ),
        }
    }
}

#[async_trait]
impl ValueCodec for Plan {
    async fn apply(
        &self,
        cx: &RecordCx<'_>,
        datum: &[u8],
        out: &mut Vec<u8>,
        headers: &mut Option<OwnedHeaders>,
    ) -> Step<Counts> {
        match self {
            Plan::Encrypt(enc) => encrypt(cx, enc, datum, out, headers).await,
            Plan::Decrypt(dec) => {
                let deks = dek_set(cx).await?;
                dec.decrypt(datum, &deks, out)
                    .or_else(|e| record(e.code(), format!("value: {e}")))
            }
        }
    }

    fn is_passthrough(&self) -> bool {
        match self {
            Plan::Encrypt(e) => e.plan().is_passthrough(),
            Plan::Decrypt(d) => d.plan().is_passthrough(),
        }
    }

    fn nothing_refused(&self, engine: &Engine, label: &str) -> Refused {
        let Plan::Encrypt(enc) = self else {
            return not_encrypted(label);
        };
        Refused::new(
            Code::NothingToEncrypt,
            format!(
                "{label}: {}; its records would go out in clear. Mark the sensitive fields, or set allow_unencrypted = true on the route if this schema holds nothing sensitive",
                crate::schema::policy::why_nothing_selected(
                    &enc.plan().tree,
                    &engine.config().plan_config().selection
                )
            ),
        )
    }
}

/// Encrypts a value under the route's current DEK and names the DEK in a
/// `fieldcrypt.dek` header.
async fn encrypt(
    cx: &RecordCx<'_>,
    enc: &Encryptor,
    datum: &[u8],
    out: &mut Vec<u8>,
    headers: &mut Option<OwnedHeaders>,
) -> Step<Counts> {
    let done = match cx.engine.encrypt(enc, &cx.route.scope, datum, out).await {
        Ok(d) => d,
        Err(EncryptFailure::Kms(e)) => return Err(e.into()),
        Err(e) => {
            let code = e.record_code().unwrap_or(Code::SchemaMismatch);
            return record(code, format!("value: {e}"));
        }
    };
    if let Some(dek) = &done.dek {
        let v = cx
            .engine
            .dek_header(dek)
            .map_err(|e| Failure::Infra(Fatal::DekHeader(e)))?;
        *headers = Some(headers.take().unwrap_or_default().insert(Header {
            key: headers::DEK,
            value: Some(&*v),
        }));
    }
    Ok(done.counts)
}

/// The DEKs named by the record's `fieldcrypt.dek` headers, unwrapped. A header
/// whose scope this route does not accept is refused before any KMS call.
async fn dek_set(cx: &RecordCx<'_>) -> Step<DekSet> {
    let mut deks = DekSet::new();
    for (_, v) in cx.headers.iter().filter(|(k, _)| *k == headers::DEK) {
        let w = match v.map(headers::decode_dek) {
            Some(Ok(w)) => w,
            Some(Err(e)) => return record(Code::BadDekHeader, e.to_string()),
            None => return record(Code::BadDekHeader, "empty fieldcrypt.dek header"),
        };
        let accepts = &cx.route.accepts;
        if !accepts.accepts(&w.scope, cx.source) {
            return record(
                Code::DekScopeRefused,
                format!(
                    "a fieldcrypt.dek header names scope \"{}\", which this route does not accept ({}); set the route's accept_scopes if the data comes from another route",
                    w.scope,
                    accepts.describe(cx.source)
                ),
            );
        }
        match cx.engine.unwrap_dek(&w).await {
            Ok(k) => {
                deks.insert(w.id, k);
            }
            Err(e) if e.is_retriable() => return Err(e.into()),
            Err(KmsError::BindingMismatch) => {
                return record(
                    Code::DekBindingMismatch,
                    KmsError::BindingMismatch.to_string(),
                )
            }
            Err(e) => return record(Code::DekUnwrapFailed, e.to_string()),
        }
    }
    Ok(deks)
}

/// fieldcrypt's format with a registry: every Avro writer schema Confluent's
/// format leaves.
pub(super) struct FieldcryptAvro;

#[async_trait]
impl ValueFormat for FieldcryptAvro {
    fn name(&self) -> &'static str {
        "fieldcrypt"
    }

    async fn build(&self, cx: &SchemaCx<'_>) -> Step<Claim> {
        if cx.schema.schema_type != AVRO {
            return Ok(None);
        }
        Ok(Some(build(cx, false).await?.map(|plan| Built {
            schema_type: AVRO,
            out_json: plan.output_json().clone(),
            codec: Arc::new(plan),
            out_rules: None,
            keep_metadata: false,
        })))
    }
}

/// fieldcrypt's plan for a registry schema (value or key), refused for good when
/// it would encrypt less than the route requires or the subject's earlier
/// versions encrypt. A value plan with nothing to do on a route that does not
/// allow that is refused by the caller, so no floor is checked for it.
pub(super) async fn build(cx: &SchemaCx<'_>, is_key: bool) -> Step<Result<Plan, Refused>> {
    let label = cx.label;
    let tags = match crate::csfle::rules::metadata_tags(cx.schema.metadata.as_ref()) {
        Ok(t) => t,
        Err(m) => return Ok(Err(Refused::policy(label, m))),
    };
    let plan = match Plan::for_schema(cx.engine, cx.mode, &cx.schema.json, &tags, label, is_key) {
        Ok(p) => p,
        Err(r) => return Ok(Err(r)),
    };
    let Plan::Encrypt(enc) = &plan else {
        return Ok(Ok(plan));
    };
    if !is_key && !cx.route.allow_unencrypted && plan.is_passthrough() {
        return Ok(Ok(plan));
    }
    let subject = cx.strategy.subject(cx.source, is_key, &cx.schema.json);
    let mut below = policy::below_floor(cx, &subject, enc, is_key).await?;
    if !is_key && !cx.route.allow_downgrade {
        below.extend(policy::disabled_rule_fields(cx, enc));
    }
    if below.is_empty() {
        return Ok(Ok(plan));
    }
    tracing::error!(schema_id = cx.schema.id, subject, fields = %below.join(", "), "writer schema refused: it would encrypt less than its subject's earlier versions (policy_downgrade); its records go to the dead-letter topic");
    Ok(Err(Refused::new(
        Code::PolicyDowngrade,
        format!(
            "{label} leaves in clear what the route requires or an earlier version of subject {subject} encrypts: {} (set the route's allow_downgrade = true if this is deliberate)",
            below.join(", ")
        ),
    )))
}
