//! Confluent's client-side field-level encryption format (CSFLE), Avro values:
//! [`Encrypt`] writes it with each rule's current DEK from the DEK Registry,
//! [`Decrypt`] reads it with the DEK versions its ciphertexts name.
//! [`ConfluentAvro`] claims a writer schema on a `format = "confluent"` route
//! (encrypting: the output carries the route's rule set; re-keying when the
//! input is fieldcrypt's format) or a writer schema with ENCRYPT rules
//! (decrypting, or re-keying into fieldcrypt's format).

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use rdkafka::message::OwnedHeaders;
use serde_json::Value as Json;

use super::avro::Plan;
use super::codec::{Built, Claim, RecordCx, Rekey, SchemaCx, ValueCodec, ValueFormat};
use super::failure::{record, Refused, Step};
use super::policy;
use crate::codes::Code;
use crate::config::PipelineMode;
use crate::csfle::keys::{CsfleKeyError, CsfleKeys};
use crate::csfle::plan::CsflePlan;
use crate::csfle::rules::ContractError;
use crate::csfle::transform::{CsfleCodec, DecryptFailure, ReadKeys};
use crate::engine::Engine;
use crate::registry::AVRO;
use crate::transform::Counts;

/// Most DEK versions one record may name (each fetched at most once).
const MAX_DEK_VERSIONS_PER_RECORD: usize = 16;

/// Most unwrapped DEK versions a decrypting codec keeps; past it, it starts afresh.
const READ_KEYS_LIMIT: usize = 1024;

fn keys<'a>(cx: &RecordCx<'a>) -> Step<&'a CsfleKeys> {
    cx.csfle.map_or_else(
        || {
            record(
                Code::NoRegistry,
                "Confluent's format needs a schema registry",
            )
        },
        Ok,
    )
}

/// Encrypting into Confluent's format; DEKs belong to `subject` (the target's,
/// as the consumers there look them up).
pub(super) struct Encrypt {
    codec: CsfleCodec,
    subject: String,
}

#[async_trait]
impl ValueCodec for Encrypt {
    async fn apply(
        &self,
        cx: &RecordCx<'_>,
        datum: &[u8],
        out: &mut Vec<u8>,
        _headers: &mut Option<OwnedHeaders>,
    ) -> Step<Counts> {
        let keys = keys(cx)?;
        let rules = &self.codec.plan().rules;
        let mut wk = Vec::with_capacity(rules.len());
        for rule in rules {
            wk.push(keys.write_key(rule, &self.subject).await?);
        }
        self.codec
            .encrypt(datum, &wk, out)
            .or_else(|e| record(e.code(), format!("value: {e}")))
    }

    fn is_passthrough(&self) -> bool {
        self.codec.plan().is_passthrough()
    }

    fn nothing_refused(&self, _engine: &Engine, label: &str) -> Refused {
        Refused::new(
            Code::NothingToEncrypt,
            format!(
                "{label}: the route's Confluent rule selects no field (no field carries one of its confluent.tags); its records would go out in clear. Tag the sensitive fields, or set allow_unencrypted = true on the route"
            ),
        )
    }
}

/// Decrypting Confluent's format; DEKs belong to `subject` (the source's).
pub(super) struct Decrypt {
    codec: CsfleCodec,
    subject: String,
    /// The DEK versions unwrapped so far.
    held: RwLock<ReadKeys>,
}

#[async_trait]
impl ValueCodec for Decrypt {
    /// Fetches each DEK version the value names once (a bounded number per
    /// record), then decrypts.
    async fn apply(
        &self,
        cx: &RecordCx<'_>,
        datum: &[u8],
        out: &mut Vec<u8>,
        _headers: &mut Option<OwnedHeaders>,
    ) -> Step<Counts> {
        let keys = keys(cx)?;
        let start = out.len();
        for _ in 0..MAX_DEK_VERSIONS_PER_RECORD {
            let r = {
                let held = self.held.read().unwrap_or_else(|p| p.into_inner());
                self.codec.decrypt(datum, &held, out)
            };
            let (rule, version) = match r {
                Ok(c) => return Ok(c),
                Err(DecryptFailure::Record(e)) => return record(e.code(), format!("value: {e}")),
                Err(DecryptFailure::Missing(rule, version)) => (rule, version),
            };
            out.truncate(start);
            let rule_def = &self.codec.plan().rules[rule];
            let dek = match keys.read_key(rule_def, &self.subject, version).await {
                Ok(d) => d,
                // A version the registry never had: a forged or corrupt prefix.
                Err(e @ CsfleKeyError::NoDek { .. }) => {
                    return record(Code::UnknownKey, format!("value: {e}"))
                }
                Err(e) => return Err(e.into()),
            };
            let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
            if held.len() >= READ_KEYS_LIMIT {
                held.clear();
            }
            held.insert((rule, version), dek);
        }
        record(
            Code::UnknownKey,
            "value: names more DEK versions than one record may",
        )
    }

    fn is_passthrough(&self) -> bool {
        false
    }
}

/// Confluent's format, for the schemas it claims.
pub(super) struct ConfluentAvro;

#[async_trait]
impl ValueFormat for ConfluentAvro {
    fn name(&self) -> &'static str {
        "confluent"
    }

    async fn build(&self, cx: &SchemaCx<'_>) -> Step<Claim> {
        if cx.schema.schema_type != AVRO {
            return Ok(None);
        }
        let md = cx.schema.metadata.as_ref();
        let writer_rules = match crate::csfle::rules::encrypt_rules(cx.schema.rule_set.as_ref(), md)
        {
            Ok(r) => !r.is_empty(),
            Err(m) if cx.mode == PipelineMode::Decrypt => {
                return Ok(Some(Err(Refused::policy(cx.label, m))))
            }
            Err(_) => false,
        };
        let built = match (cx.mode, &cx.route.confluent) {
            (PipelineMode::Encrypt, Some(rules)) => encrypt_out(cx, rules, writer_rules).await?,
            (PipelineMode::Encrypt, None) if writer_rules => rekey_in(cx).await?,
            (PipelineMode::Decrypt, _) if writer_rules => decrypt_in(cx),
            _ => return Ok(None),
        };
        Ok(Some(built))
    }
}

/// The writer schema's own ENCRYPT rules as a plan (Confluent's format in).
fn writer_plan(cx: &SchemaCx<'_>) -> Result<CsflePlan, Refused> {
    let s = cx.schema;
    let max_depth = cx.engine.config().schema.max_depth;
    CsflePlan::build(
        &s.json,
        s.rule_set.as_ref(),
        s.metadata.as_ref(),
        cx.label,
        max_depth,
    )
    .map_err(|m| Refused::policy(cx.label, m))
}

/// Encrypting into Confluent's format with the route's `rules`, the floor held
/// against the source subject's earlier versions.
async fn encrypt_out(
    cx: &SchemaCx<'_>,
    rules: &Arc<Json>,
    writer_rules: bool,
) -> Step<Result<Built, Refused>> {
    let (built, plan) = match plan_out(cx, rules, writer_rules) {
        Ok(x) => x,
        Err(r) => return Ok(Err(r)),
    };
    let subject = cx.strategy.subject(cx.source, false, &cx.schema.json);
    Ok(
        match policy::csfle_below_floor(cx, &subject, &plan, rules).await? {
            Some(refused) => Err(refused),
            None => Ok(built),
        },
    )
}

/// The codec for the route's `rules`: plaintext in, or fieldcrypt's own format
/// in (decrypted first: re-keying). Refused when fieldcrypt's policy or the
/// route's `require` wants a field the rules leave in clear.
fn plan_out(
    cx: &SchemaCx<'_>,
    rules: &Arc<Json>,
    writer_rules: bool,
) -> Result<(Built, Arc<CsflePlan>), Refused> {
    let (label, schema) = (cx.label, cx.schema);
    let policy = |m: &dyn std::fmt::Display| Refused::policy(label, m);
    let from = if !writer_rules && crate::schema::plan::is_encrypted_schema(&schema.json) {
        Some(
            cx.engine
                .decryptor(&schema.json, label)
                .map_err(|e| policy(&e))?,
        )
    } else {
        None
    };
    let base = from
        .as_ref()
        .map_or_else(|| schema.json.clone(), |d| d.plan().original_json.clone());
    let max_depth = cx.engine.config().schema.max_depth;
    let md = schema.metadata.as_ref();
    let mut plan =
        CsflePlan::build(&base, Some(rules), md, label, max_depth).map_err(|m| policy(&m))?;
    let tags = crate::csfle::rules::metadata_tags(md).map_err(|m| policy(&m))?;
    check_covers(cx, &base, &plan, &tags)?;
    // Blind indexes fieldcrypt's policy puts on these fields are written as
    // extra bytes fields, which Confluent's clients read as they are.
    let out_json = cx
        .engine
        .encryptor_tagged(&base, &tags, label)
        .map_err(|e| ContractError(e.to_string()))
        .and_then(|enc| plan.with_indexes(&enc, &base))
        .map_err(|m| policy(&m))?;
    let plan = Arc::new(plan);
    let to: Arc<dyn ValueCodec> = Arc::new(Encrypt {
        codec: CsfleCodec::new(plan.clone()),
        subject: cx.strategy.subject(cx.target, false, &base),
    });
    let codec = match from {
        Some(dec) => Arc::new(Rekey {
            from: Arc::new(Plan::Decrypt(dec)),
            to,
        }),
        None => to,
    };
    let built = Built {
        schema_type: AVRO,
        codec,
        out_json,
        out_rules: Some(rules.clone()),
        keep_metadata: true,
    };
    Ok((built, plan))
}

/// The route's rule must select what fieldcrypt's own policy (markings, tags,
/// rules) would encrypt in `base`, and what the route requires, or it would go
/// out in clear.
fn check_covers(
    cx: &SchemaCx<'_>,
    base: &Json,
    plan: &CsflePlan,
    tags: &crate::schema::policy::MetadataTags,
) -> Result<(), Refused> {
    let label = cx.label;
    let ours = cx
        .engine
        .encrypt_plan_tagged(base, tags, label)
        .map_err(|e| Refused::policy(label, e))?;
    let unselected: Vec<String> = ours
        .floor()
        .into_keys()
        .filter(|ctx| !plan.selected.iter().any(|(n, _)| n == ctx))
        .collect();
    if !unselected.is_empty() {
        return Err(Refused::policy(label, format!(
            "fieldcrypt's policy encrypts {} but the route's Confluent rule does not select it (tag the field with one of the rule's tags): it would go out in clear",
            unselected.join(", ")
        )));
    }
    match policy::required_in_clear(&cx.route.require, plan, tags) {
        Some(missing) => Err(Refused::new(
            Code::PolicyDowngrade,
            format!("{label} leaves in clear what the route requires: {missing}"),
        )),
        None => Ok(()),
    }
}

/// Confluent's format in, fieldcrypt's out (re-keying): every field the ENCRYPT
/// rules protect must be one fieldcrypt encrypts too, and the route's floor
/// holds as on fieldcrypt's own encrypting path.
async fn rekey_in(cx: &SchemaCx<'_>) -> Step<Result<Built, Refused>> {
    let label = cx.label;
    let plan = match writer_plan(cx) {
        Ok(p) => p,
        Err(r) => return Ok(Err(r)),
    };
    let enc = match crate::csfle::rules::metadata_tags(cx.schema.metadata.as_ref())
        .map_err(|m| m.to_string())
        .and_then(|tags| {
            cx.engine
                .encryptor_tagged(&cx.schema.json, &tags, label)
                .map_err(|e| e.to_string())
        }) {
        Ok(e) => e,
        Err(m) => return Ok(Err(Refused::policy(label, m))),
    };
    let floor = enc.plan().floor();
    let exposed: Vec<&str> = plan
        .selected
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !floor.contains_key(*n))
        .collect();
    if !exposed.is_empty() {
        return Ok(Err(Refused::policy(label, format!(
            "re-keying from Confluent's format would leave {} in clear: fieldcrypt's policy does not encrypt it (map its tag in [tags], or mark it sensitive)",
            exposed.join(", ")
        ))));
    }
    let subject = cx.strategy.subject(cx.source, false, &cx.schema.json);
    let below = policy::below_floor(cx, &subject, &enc, false).await?;
    if !below.is_empty() {
        return Ok(Err(Refused::new(
            Code::PolicyDowngrade,
            format!(
                "{label} leaves in clear what the route requires or an earlier version of subject {subject} encrypts: {}",
                below.join(", ")
            ),
        )));
    }
    let out_json = enc.plan().output_json.clone();
    let from = Decrypt {
        codec: CsfleCodec::new(Arc::new(plan)),
        subject,
        held: RwLock::default(),
    };
    let codec = Arc::new(Rekey {
        from: Arc::new(from),
        to: Arc::new(Plan::Encrypt(enc)),
    });
    Ok(Ok(Built {
        schema_type: AVRO,
        codec,
        out_json,
        out_rules: None,
        keep_metadata: true,
    }))
}

/// Decrypting Confluent's format: the writer's rules say what to decrypt; the
/// output schema is the writer's (Confluent's format keeps field types).
fn decrypt_in(cx: &SchemaCx<'_>) -> Result<Built, Refused> {
    let plan = writer_plan(cx)?;
    let codec = Arc::new(Decrypt {
        codec: CsfleCodec::new(Arc::new(plan)),
        subject: cx.strategy.subject(cx.source, false, &cx.schema.json),
        held: RwLock::default(),
    });
    Ok(Built {
        schema_type: AVRO,
        codec,
        out_json: cx.schema.json.clone(),
        out_rules: None,
        keep_metadata: true,
    })
}
