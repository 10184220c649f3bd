//! One Kafka record through the transform: its value (and, for `key_format =
//! "avro"` routes, its key) encrypted or decrypted by the schema's plan, DEK headers
//! added (or read and removed), everything else — other headers, timestamp,
//! tombstones — preserved. Values are raw Avro with the route's schema file, or
//! Confluent-framed with writer schemas from the Schema Registry and the output
//! schema registered under the target subject once per schema id. A record that
//! cannot be transformed becomes a dead letter; it is never produced to the target
//! with a sensitive field in plaintext.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rdkafka::message::{Header, Message, OwnedHeaders};
use serde_json::Value as Json;
use thiserror::Error;

use crate::config::{Config, PipelineMode};
use crate::engine::{EncryptFailure, Engine};
use crate::kafka::headers;
use crate::kafka::route::{AcceptScopes, KeyFormat};
use crate::kafka::wire;
use crate::keys::KmsError;
use crate::registry::{RegistryError, SchemaRegistry, SubjectStrategy};
use crate::schema::parse_schema_with;
use crate::schema::plan::{EncryptPlan, Floor};
use crate::transform::decrypt::DekSet;
use crate::transform::{Counts, Decryptor, Encryptor};

/// What to send for one input record.
pub enum Outcome {
    /// To the route's target topic.
    Produce {
        /// The new key; `None` keeps the input key as it is.
        key: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
        headers: OwnedHeaders,
        counts: Counts,
    },
    /// To the route's dead-letter topic, with this error.
    DeadLetter { code: &'static str, message: String },
}

/// A failure that is not the record's fault: the pipeline stops (fail closed)
/// without storing the record's offset, so it is read again after a restart.
#[derive(Debug, Error)]
pub enum Fatal {
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Registry(RegistryError),
}

impl Fatal {
    /// An outage that waiting can end (the KMS or registry unreachable or
    /// throttling), rather than a refusal or misconfiguration.
    pub fn is_transient(&self) -> bool {
        match self {
            Fatal::Kms(e) => e.is_retriable(),
            Fatal::Registry(e) => matches!(e, RegistryError::Unavailable { .. }),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Fatal::Kms(e) if e.is_retriable() => "kms_unavailable",
            Fatal::Kms(_) => "kms_refused",
            Fatal::Registry(e) => e.code(),
        }
    }
}

#[derive(Clone)]
enum Codec {
    Encrypt(Arc<Encryptor>),
    Decrypt(Arc<Decryptor>),
}

/// A codec for one registry schema id, and the id of its output schema.
struct Framed {
    codec: Codec,
    out_id: u32,
}

/// (schema id → target topic → codec, or why the schema is refused), for keys or
/// values of one route.
type FramedCache = Mutex<HashMap<u32, HashMap<String, Result<Arc<Framed>, Dead>>>>;

struct RouteCodecs {
    /// DEK scope, bound into each DEK's encryption context: one per route, stable
    /// across instances and restarts.
    scope: String,
    /// Fields that must be encrypted (`require`).
    require: Vec<String>,
    /// Accept writer schemas that encrypt less than earlier versions.
    allow_downgrade: bool,
    /// Decrypting: the DEK scopes this route's records may name.
    accepts: AcceptScopes,
    raw_value: Option<Codec>,
    key_format: KeyFormat,
    raw_key: Option<Codec>,
    framed_values: FramedCache,
    framed_keys: FramedCache,
}

/// Per-route transforms, built at start-up (raw) or per schema id (registry).
pub struct Transformer {
    engine: Arc<Engine>,
    registry: Option<Arc<SchemaRegistry>>,
    mode: PipelineMode,
    auto_register: bool,
    strategy: SubjectStrategy,
    routes: Vec<RouteCodecs>,
}

/// A record-level failure: dead-letter code and message.
type Dead = (&'static str, String);

/// Adds a route's `require` entries to a floor: field contexts as they are, and
/// for `tag:NAME` every field of the schema that carries the tag.
fn add_required(require: &[String], plan: &EncryptPlan, floor: &mut Floor) {
    for r in require {
        match r.strip_prefix("tag:") {
            Some(tag) => {
                for ctx in plan.tagged(tag) {
                    floor.entry(ctx).or_insert(None);
                }
            }
            None => {
                floor.entry(r.clone()).or_insert(None);
            }
        }
    }
}

impl Transformer {
    /// Builds each route's plans from its schema files; with a registry, plans are
    /// built as schema ids appear.
    pub fn new(
        engine: Arc<Engine>,
        config: &Config,
        registry: Option<Arc<SchemaRegistry>>,
    ) -> Result<Self, String> {
        let mode = config.pipeline.mode;
        let refs = config
            .schema
            .references()
            .map_err(|e| format!("schema.reference_files: {e}"))?;
        let mut routes = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let load = |key: &str, path: &std::path::Path, is_key: bool| {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("routes[{i}].{key}: cannot read {}: {e}", path.display())
                })?;
                let json = parse_schema_with(&text, &refs)
                    .map_err(|e| format!("routes[{i}].{key} {}: {e}", path.display()))?;
                codec_for(&engine, mode, &json, &path.display().to_string(), is_key)
                    .map_err(|(_, m)| format!("routes[{i}].{key}: {m}"))
            };
            let (raw_value, raw_key) = if registry.is_some() {
                (None, None)
            } else {
                let v = match &r.value_schema {
                    Some(p) => Some(load("value_schema", p, false)?),
                    None => {
                        return Err(format!(
                        "routes[{i}].value_schema: required without [schema_registry] (the writer schema of the raw Avro values)"
                    ))
                    }
                };
                let k = match (&r.key_format, &r.key_schema) {
                    (KeyFormat::Avro, Some(p)) => Some(load("key_schema", p, true)?),
                    (KeyFormat::Avro, None) => {
                        return Err(format!(
                            "routes[{i}].key_schema: key_format = \"avro\" without [schema_registry] needs the raw keys' writer schema"
                        ))
                    }
                    (KeyFormat::Passthrough, _) => None,
                };
                (v, k)
            };
            if let (PipelineMode::Encrypt, Some(Codec::Encrypt(enc))) = (mode, &raw_value) {
                check_required(i, &r.require, enc.plan())?;
            }
            routes.push(RouteCodecs {
                scope: r.dek_scope(),
                require: r.require.clone(),
                allow_downgrade: r.allow_downgrade,
                accepts: AcceptScopes::for_route(r),
                raw_value,
                key_format: r.key_format,
                raw_key,
                framed_values: Mutex::default(),
                framed_keys: Mutex::default(),
            });
        }
        Ok(Transformer {
            engine,
            registry,
            mode,
            auto_register: config.schema_registry.auto_register,
            strategy: config.schema_registry.subject_strategy,
            routes,
        })
    }

    /// Encrypting or decrypting.
    pub fn mode(&self) -> PipelineMode {
        self.mode
    }

    /// The `operation` label of the field counters: `encrypt` or `decrypt`.
    pub fn operation(&self) -> &'static str {
        match self.mode {
            PipelineMode::Encrypt => "encrypt",
            PipelineMode::Decrypt => "decrypt",
        }
    }

    /// Transforms one record of route `route` bound for `target`. `Err` means an
    /// infrastructure failure (KMS, registry): nothing about this record is wrong.
    pub async fn transform<M: Message>(
        &self,
        msg: &M,
        route: usize,
        target: &str,
    ) -> Result<Outcome, Fatal> {
        let Some(rc) = self.routes.get(route) else {
            return Ok(dead(("no_route", "no transform for this route".into())));
        };
        let hdrs = match headers::read(msg.headers()) {
            Ok(h) => h,
            Err(e) => return Ok(dead(("bad_header", e.to_string()))),
        };
        let key = match self.transform_key(msg, rc, target).await? {
            Ok(k) => k,
            Err(d) => return Ok(dead(d)),
        };
        let Some(value) = msg.payload() else {
            // Tombstones stay tombstones: deletes must reach compacted topics.
            return Ok(Outcome::Produce {
                key,
                payload: None,
                headers: self.copy_headers(&hdrs),
                counts: Counts::default(),
            });
        };
        let (codec, datum, mut out) = match self
            .resolve(
                rc,
                rc.raw_value.as_ref(),
                &rc.framed_values,
                value,
                msg.topic(),
                target,
                false,
            )
            .await?
        {
            Ok(r) => r,
            Err(d) => return Ok(dead(d)),
        };
        let mut headers = self.copy_headers(&hdrs);
        let counts = match &codec {
            Codec::Encrypt(enc) => {
                match self
                    .encrypt_value(enc, rc, datum, &mut out, &mut headers)
                    .await?
                {
                    Ok(c) => c,
                    Err(d) => return Ok(dead(d)),
                }
            }
            Codec::Decrypt(dec) => {
                let deks = match self.dek_set(&hdrs, rc, msg.topic()).await? {
                    Ok(d) => d,
                    Err(d) => return Ok(dead(d)),
                };
                match dec.decrypt(datum, &deks, &mut out) {
                    Ok(c) => c,
                    Err(e) => return Ok(dead((e.code(), format!("value: {e}")))),
                }
            }
        };
        Ok(Outcome::Produce {
            key,
            payload: Some(out),
            headers,
            counts,
        })
    }

    /// The output key: `Ok(None)` keeps the input key.
    async fn transform_key<M: Message>(
        &self,
        msg: &M,
        rc: &RouteCodecs,
        target: &str,
    ) -> Result<Result<Option<Vec<u8>>, Dead>, Fatal> {
        if rc.key_format == KeyFormat::Passthrough {
            return Ok(Ok(None));
        }
        let Some(key) = msg.key() else {
            return Ok(Ok(None));
        };
        let (codec, datum, mut out) = match self
            .resolve(
                rc,
                rc.raw_key.as_ref(),
                &rc.framed_keys,
                key,
                msg.topic(),
                target,
                true,
            )
            .await?
        {
            Ok(r) => r,
            Err(d) => return Ok(Err(d)),
        };
        // Key plans never need a DEK (checked when the codec was built).
        let r = match codec {
            Codec::Encrypt(enc) => enc.encrypt(datum, None, &mut out),
            Codec::Decrypt(dec) => dec.decrypt(datum, &DekSet::new(), &mut out),
        };
        Ok(match r {
            Ok(_) => Ok(Some(out)),
            Err(e) => Err((e.code(), format!("key: {e}"))),
        })
    }

    /// The codec for a key or value, its datum, and the output buffer started with
    /// the output schema's Confluent header: the route's raw codec, or the one for
    /// the registry schema named by the input's header.
    #[allow(clippy::too_many_arguments)]
    async fn resolve<'a>(
        &self,
        rc: &RouteCodecs,
        raw: Option<&Codec>,
        cache: &FramedCache,
        bytes: &'a [u8],
        source: &str,
        target: &str,
        is_key: bool,
    ) -> Result<Result<(Codec, &'a [u8], Vec<u8>), Dead>, Fatal> {
        let mut out = Vec::with_capacity(bytes.len() * 2 + 64);
        if let Some(c) = raw {
            return Ok(Ok((c.clone(), bytes, out)));
        }
        let (id, datum) = match wire::parse(bytes) {
            Ok(x) => x,
            Err(e) => {
                let (code, part) = if is_key {
                    ("bad_key_framing", "key")
                } else {
                    ("bad_framing", "value")
                };
                return Ok(Err((code, format!("{part}: {e}"))));
            }
        };
        let framed = match self.framed(rc, cache, id, source, target, is_key).await? {
            Ok(f) => f,
            Err(d) => return Ok(Err(d)),
        };
        wire::frame_header(framed.out_id, &mut out);
        Ok(Ok((framed.codec.clone(), datum, out)))
    }

    async fn encrypt_value(
        &self,
        enc: &Encryptor,
        rc: &RouteCodecs,
        datum: &[u8],
        out: &mut Vec<u8>,
        headers: &mut OwnedHeaders,
    ) -> Result<Result<Counts, Dead>, Fatal> {
        let done = match self.engine.encrypt(enc, &rc.scope, datum, out).await {
            Ok(d) => d,
            Err(EncryptFailure::Kms(e)) => return Err(e.into()),
            Err(e) => {
                let code = e.record_code().unwrap_or("record");
                return Ok(Err((code, format!("value: {e}"))));
            }
        };
        if let Some(dek) = &done.dek {
            let v = self
                .engine
                .dek_header(dek)
                .map_err(|e| KmsError::Config(e.to_string()))?;
            *headers = std::mem::replace(headers, OwnedHeaders::new()).insert(Header {
                key: headers::DEK,
                value: Some(&*v),
            });
        }
        Ok(Ok(done.counts))
    }

    /// The DEKs named by the record's `fieldcrypt.dek` headers, unwrapped. A header
    /// whose scope this route does not accept is refused before any KMS call.
    async fn dek_set(
        &self,
        hdrs: &[(&str, Option<&[u8]>)],
        rc: &RouteCodecs,
        topic: &str,
    ) -> Result<Result<DekSet, Dead>, Fatal> {
        let mut deks = DekSet::new();
        for (_, v) in hdrs.iter().filter(|(k, _)| *k == headers::DEK) {
            let w = match v.map(headers::decode_dek) {
                Some(Ok(w)) => w,
                Some(Err(e)) => return Ok(Err(("bad_dek_header", e.to_string()))),
                None => {
                    return Ok(Err((
                        "bad_dek_header",
                        "empty fieldcrypt.dek header".into(),
                    )))
                }
            };
            if !rc.accepts.accepts(&w.scope, topic) {
                return Ok(Err((
                    "dek_scope_refused",
                    format!(
                        "a fieldcrypt.dek header names scope \"{}\", which this route does not accept ({}); set the route's accept_scopes if the data comes from another route",
                        w.scope,
                        rc.accepts.describe(topic)
                    ),
                )));
            }
            match self.engine.unwrap_dek(&w).await {
                Ok(k) => {
                    deks.insert(w.id, k);
                }
                Err(e) if e.is_retriable() => return Err(e.into()),
                Err(KmsError::BindingMismatch) => {
                    return Ok(Err((
                        "dek_binding_mismatch",
                        KmsError::BindingMismatch.to_string(),
                    )))
                }
                Err(e) => return Ok(Err(("dek_unwrap_failed", e.to_string()))),
            }
        }
        Ok(Ok(deks))
    }

    /// The record's headers for the output: everything but fieldcrypt's own
    /// namespace (the output gets its own DEK headers, or none after decryption);
    /// headers dropped from that namespace are counted.
    fn copy_headers(&self, hdrs: &[(&str, Option<&[u8]>)]) -> OwnedHeaders {
        let mut out = OwnedHeaders::new_with_capacity(hdrs.len() + 1);
        let mut dropped = 0u64;
        for (k, v) in hdrs {
            if headers::is_reserved(k) {
                // fieldcrypt.dek headers are ours to read, not to pass on.
                if *k != headers::DEK {
                    dropped += 1;
                }
                continue;
            }
            out = out.insert(Header { key: k, value: *v });
        }
        if dropped > 0 {
            self.engine
                .metrics()
                .reserved_headers_dropped
                .inc_by(dropped);
        }
        out
    }

    /// The codec for registry schema `id` on its way to `target`, built (and the
    /// output schema registered) on first sight.
    async fn framed(
        &self,
        rc: &RouteCodecs,
        cache: &FramedCache,
        id: u32,
        source: &str,
        target: &str,
        is_key: bool,
    ) -> Result<Result<Arc<Framed>, Dead>, Fatal> {
        if let Some(f) = cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .and_then(|m| m.get(target))
        {
            return Ok(f.clone());
        }
        let Some(reg) = &self.registry else {
            return Ok(Err(("no_registry", "no schema registry configured".into())));
        };
        let part = if is_key { "key" } else { "value" };
        let registry_err = |e: RegistryError| -> Result<Result<Arc<Framed>, Dead>, Fatal> {
            if e.is_infrastructure() {
                Err(Fatal::Registry(e))
            } else {
                Ok(Err((e.code(), format!("{part}: {e}"))))
            }
        };
        let schema = match reg.schema_by_id(id).await {
            Ok(s) => s,
            Err(e) => return registry_err(e),
        };
        let label = format!("schema id {id} ({part})");
        let codec = match codec_for(&self.engine, self.mode, &schema.json, &label, is_key) {
            Ok(c) => c,
            Err(d) => return Ok(Err(d)),
        };
        if let Codec::Encrypt(enc) = &codec {
            let subject = self.strategy.subject(source, is_key, &schema.json);
            let below = match self.below_floor(rc, reg, &subject, enc, is_key).await {
                Ok(b) => b,
                Err(e) => return registry_err(e),
            };
            if !below.is_empty() {
                let d: Dead = (
                    "policy_downgrade",
                    format!(
                        "{label} leaves in clear what the route requires or an earlier version of subject {subject} encrypts: {} (set the route's allow_downgrade = true if this is deliberate)",
                        below.join(", ")
                    ),
                );
                tracing::error!(schema_id = id, subject, fields = %below.join(", "), "writer schema refused: it would encrypt less than its subject's earlier versions (policy_downgrade); its records go to the dead-letter topic");
                // Refused once per schema id: ids never change.
                cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(id)
                    .or_default()
                    .insert(target.to_string(), Err(d.clone()));
                return Ok(Err(d));
            }
        }
        let out_json: &Json = match &codec {
            Codec::Encrypt(e) => &e.plan().output_json,
            Codec::Decrypt(d) => &d.plan().original_json,
        };
        let subject = self.strategy.subject(target, is_key, out_json);
        let out_id = match reg.id_for(&subject, out_json, self.auto_register).await {
            Ok(i) => i,
            Err(e) => return registry_err(e),
        };
        tracing::info!(
            schema_id = id,
            output_schema_id = out_id,
            subject,
            part,
            "new schema: plan built and output schema registered"
        );
        let f = Arc::new(Framed { codec, out_id });
        cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .insert(target.to_string(), Ok(f.clone()));
        Ok(Ok(f))
    }

    /// The fields the writer schema `enc` leaves in clear that the route's
    /// `require` names or an earlier version of `subject` encrypts (its floor is
    /// the union of what every registered version encrypts).
    async fn below_floor(
        &self,
        rc: &RouteCodecs,
        reg: &SchemaRegistry,
        subject: &str,
        enc: &Encryptor,
        is_key: bool,
    ) -> Result<Vec<String>, RegistryError> {
        let plan = enc.plan();
        let mut floor = Floor::new();
        if !rc.allow_downgrade {
            for v in reg.subject_versions(subject).await? {
                let json = match reg.subject_schema(subject, v).await {
                    Ok(j) => j,
                    Err(RegistryError::NotFound { .. }) => continue, // deleted meanwhile
                    Err(e) => return Err(e),
                };
                let label = format!("subject {subject} version {v}");
                // A version we cannot plan (say, a conflicting marking) sets no floor.
                if let Ok(p) = self.engine.encrypt_plan(&json, &label) {
                    floor.extend(p.floor());
                }
            }
        }
        if !is_key {
            add_required(&rc.require, plan, &mut floor);
        }
        Ok(plan.below(&floor))
    }
}

/// A raw route's schema must encrypt what the route requires; a required field
/// path the schema does not have is a typo, refused too.
fn check_required(i: usize, require: &[String], plan: &EncryptPlan) -> Result<(), String> {
    for r in require.iter().filter(|r| !r.starts_with("tag:")) {
        let has = r
            .rsplit_once('.')
            .and_then(|(rec, f)| {
                let id = plan.tree.names.get(rec)?;
                plan.tree.record(*id)?.fields.iter().find(|x| x.name == f)
            })
            .is_some();
        if !has {
            return Err(format!(
                "routes[{i}].require: {r} is not a field of the route's value_schema (write it as <record full name>.<field>)"
            ));
        }
    }
    let mut floor = Floor::new();
    add_required(require, plan, &mut floor);
    let below = plan.below(&floor);
    if below.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "routes[{i}].require: the route's value_schema leaves in clear {}; mark them sensitive (or with a rule)",
            below.join(", ")
        ))
    }
}

/// Builds the encryptor or decryptor for a schema. Keys must not need a DEK: a
/// randomized key field would break partitioning and compaction.
fn codec_for(
    engine: &Engine,
    mode: PipelineMode,
    json: &Json,
    label: &str,
    is_key: bool,
) -> Result<Codec, Dead> {
    match mode {
        PipelineMode::Encrypt => {
            let enc = engine
                .encryptor(json, label)
                .map_err(|e| ("policy_error", e.to_string()))?;
            if is_key && enc.needs_dek() {
                let fields: Vec<String> = enc
                    .plan()
                    .rows
                    .iter()
                    .filter(|r| r.mode == crate::schema::policy::Mode::Randomized)
                    .map(|r| r.path.clone())
                    .collect();
                return Err((
                    "randomized_key_field",
                    format!(
                        "key schema {label}: field(s) {} are randomized; record keys may only be encrypted deterministically (equal keys must stay equal for partitioning and compaction): use \"sensitive\": {{\"mode\": \"deterministic\"}}",
                        fields.join(", ")
                    ),
                ));
            }
            Ok(Codec::Encrypt(enc))
        }
        PipelineMode::Decrypt => engine
            .decryptor(json, label)
            .map(Codec::Decrypt)
            .map_err(|e| ("policy_error", e.to_string())),
    }
}

fn dead((code, message): Dead) -> Outcome {
    Outcome::DeadLetter { code, message }
}

/// The original headers plus the error and source-position headers. Of the
/// original headers in fieldcrypt's namespace only `fieldcrypt.dek` is kept (the
/// dead letter's payload may need it to be decrypted), so a forged error header
/// can never stand before the real one; headers that cannot be read are left out
/// and the dead letter says so.
pub fn dead_letter_headers<M: Message>(msg: &M, code: &str, message: &str) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    match headers::read(msg.headers()) {
        Ok(hs) => {
            for (k, v) in hs {
                if headers::is_reserved(k) && k != headers::DEK {
                    continue;
                }
                out = out.insert(Header { key: k, value: v });
            }
        }
        Err(e) => {
            out = out.insert(Header {
                key: headers::ERROR_HEADERS,
                value: Some(format!("original headers left out: {e}").as_bytes()),
            });
        }
    }
    let partition = msg.partition().to_string();
    let offset = msg.offset().to_string();
    for (k, v) in [
        (headers::ERROR_CODE, code),
        (headers::ERROR_MESSAGE, message),
        (headers::SOURCE_TOPIC, msg.topic()),
        (headers::SOURCE_PARTITION, partition.as_str()),
        (headers::SOURCE_OFFSET, offset.as_str()),
    ] {
        out = out.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    out
}
