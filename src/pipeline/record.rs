//! The transform step: one consumed Kafka record in, one [`Outcome`] out. Its value
//! (and, for `key_format = "avro"` routes, its key) is encrypted or decrypted by the
//! schema's plan, DEK headers are added (or read and removed), and everything else
//! — other headers, timestamp, tombstones — is kept. Values are raw Avro with the
//! route's schema file, or Confluent-framed with writer schemas from the Schema
//! Registry and the output schema registered under the target subject once per
//! schema id. A record that cannot be transformed is an [`Outcome::DeadLetter`];
//! it is never produced to the target with a sensitive field in plaintext. A
//! failure of the KMS or registry is a [`Fatal`], kept apart: nothing is wrong with
//! the record. No broker is involved, so unit tests call it with an
//! [`OwnedMessage`](rdkafka::message::OwnedMessage).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use serde_json::Value as Json;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codes::Code;
use crate::config::{Config, PipelineMode};
use crate::csfle::keys::{CsfleKeyError, CsfleKeys};
use crate::csfle::plan::CsflePlan;
use crate::csfle::transform::{CsfleCodec, DecryptFailure, ReadKeys};
use crate::engine::{EncryptFailure, Engine};
use crate::kafka::headers::{self, HeaderRef};
use crate::kafka::route::{AcceptScopes, KeyFormat, Requirement};
use crate::kafka::wire;
use crate::keys::KmsError;
use crate::registry::{RegistryError, SchemaRegistry, SubjectStrategy};
use crate::schema::parse_schema_with;
use crate::schema::plan::{EncryptPlan, Floor};
use crate::transform::decrypt::DekSet;
use crate::transform::{Counts, Decryptor, Encryptor};

/// What to send for one input record.
#[derive(Debug)]
pub enum Outcome {
    /// To the route's target topic.
    Produce {
        /// The new key; `None` keeps the input key as it is.
        key: Option<Vec<u8>>,
        /// The value is the caller's buffer (`false`: a tombstone stays one).
        payload: bool,
        /// The headers to send (`None`: no headers at all).
        headers: Option<OwnedHeaders>,
        counts: Counts,
        /// The schema has nothing to encrypt (or, decrypting, nothing encrypted)
        /// and the route lets such records through (`allow_unencrypted`).
        unencrypted: bool,
    },
    /// To the route's dead-letter topic, with this error.
    DeadLetter { code: Code, message: String },
}

/// A failure that is not the record's fault: the record is held through an
/// outage, or the pipeline stops (fail closed) without storing its offset.
#[derive(Debug, Error)]
pub enum Fatal {
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Registry(RegistryError),
    /// A DEK of Confluent's format could not be had (DEK Registry or KMS).
    #[error(transparent)]
    Csfle(CsfleKeyError),
    /// The current DEK's `fieldcrypt.dek` header cannot be written (its scope or
    /// KEK id does not fit): every record under it would fail alike.
    #[error("the fieldcrypt.dek header of the current DEK cannot be encoded: {}; shorten the route's scope (tenant) or KEK id", .0.reason())]
    DekHeader(crate::kafka::headers::DekHeaderError),
}

impl Fatal {
    /// An outage that waiting can end (the KMS or registry unreachable or
    /// throttling), rather than a refusal or misconfiguration.
    pub fn is_transient(&self) -> bool {
        match self {
            Fatal::Kms(e) => e.is_retriable(),
            Fatal::Registry(e) => matches!(e, RegistryError::Unavailable { .. }),
            Fatal::Csfle(e) => e.is_transient(),
            Fatal::DekHeader(_) => false,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Fatal::Kms(e) if e.is_retriable() => Code::KmsUnavailable,
            Fatal::Kms(_) => Code::KmsRefused,
            Fatal::Registry(e) => e.code(),
            Fatal::Csfle(CsfleKeyError::Registry(e)) => e.code(),
            Fatal::Csfle(e) if e.is_transient() => Code::KmsUnavailable,
            Fatal::Csfle(_) => Code::KmsRefused,
            Fatal::DekHeader(_) => Code::Setup,
        }
    }
}

/// Why a step of the transform stopped: the record's fault (a dead letter) or
/// the infrastructure's.
enum Failure {
    Record(Code, String),
    Infra(Fatal),
}

impl From<Fatal> for Failure {
    fn from(f: Fatal) -> Self {
        Failure::Infra(f)
    }
}

impl From<KmsError> for Failure {
    fn from(e: KmsError) -> Self {
        Failure::Infra(Fatal::Kms(e))
    }
}

impl From<CsfleKeyError> for Failure {
    fn from(e: CsfleKeyError) -> Self {
        Failure::Infra(Fatal::Csfle(e))
    }
}

impl From<RegistryError> for Failure {
    /// The registry's own answers are about the record; its outages are not.
    fn from(e: RegistryError) -> Self {
        if e.is_infrastructure() {
            Failure::Infra(Fatal::Registry(e))
        } else {
            Failure::Record(e.code(), e.to_string())
        }
    }
}

type Step<T> = Result<T, Failure>;

fn record<T>(code: Code, msg: impl Into<String>) -> Step<T> {
    Err(Failure::Record(code, msg.into()))
}

#[derive(Clone)]
enum Codec {
    Encrypt(Arc<Encryptor>),
    Decrypt(Arc<Decryptor>),
    /// Confluent's format, encrypting: the codec and the subject its DEKs belong
    /// to (the target's, as the consumers there will look them up).
    CsfleEncrypt(Arc<CsfleCodec>, Arc<str>),
    /// Confluent's format, decrypting: the codec, the subject its DEKs belong to
    /// (the source's) and the DEKs unwrapped so far.
    CsfleDecrypt(Arc<CsfleCodec>, Arc<str>, Arc<std::sync::RwLock<ReadKeys>>),
    /// Re-keying Confluent's format into fieldcrypt's: decrypt as
    /// [`Codec::CsfleDecrypt`], then encrypt with fieldcrypt's plan.
    CsfleToFieldcrypt(
        Arc<CsfleCodec>,
        Arc<str>,
        Arc<std::sync::RwLock<ReadKeys>>,
        Arc<Encryptor>,
    ),
    /// Re-keying fieldcrypt's format into Confluent's: decrypt with the DEK
    /// headers, then encrypt as [`Codec::CsfleEncrypt`].
    FieldcryptToCsfle(Arc<Decryptor>, Arc<CsfleCodec>, Arc<str>),
}

impl Codec {
    /// Nothing to do for a value: an encrypting plan that encrypts nothing, a
    /// decrypting plan with nothing encrypted (Confluent's codecs always have
    /// something: they exist only for schemas with ENCRYPT rules that select).
    fn is_passthrough(&self) -> bool {
        match self {
            Codec::Encrypt(e) => e.plan().is_passthrough(),
            Codec::Decrypt(d) => d.plan().is_passthrough(),
            Codec::CsfleEncrypt(c, _) => c.plan().is_passthrough(),
            Codec::CsfleDecrypt(..)
            | Codec::CsfleToFieldcrypt(..)
            | Codec::FieldcryptToCsfle(..) => false,
        }
    }
}

/// Adds a hint to a raw route's dead letter when the value looks Confluent-framed
/// (magic byte 0 and a schema id): the topic's producers use a Schema Registry and
/// the config has none.
fn framing_hint(f: Failure, raw: bool, value: &[u8]) -> Failure {
    match f {
        Failure::Record(code @ (Code::SchemaMismatch | Code::TooDeep), msg)
            if raw && value.len() >= 5 && value[0] == 0 =>
        {
            let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
            Failure::Record(
                code,
                format!(
                    "{msg}; the value starts like a Confluent-framed record (magic byte 0, schema id {id}): \
                     if the topic's producers use a Schema Registry, set [schema_registry] url in the config \
                     instead of the route's value_schema"
                ),
            )
        }
        f => f,
    }
}

/// A codec for one registry schema id, and the id of its output schema.
struct Framed {
    codec: Codec,
    out_id: u32,
}

/// A schema id refused for good (ids never change): code and message.
type Refused = (Code, String);

/// A Confluent-format codec for a writer schema, with the rule set and the schema
/// its output is registered with.
type CsfleChoice = (Codec, Option<Arc<Json>>, Json);

/// A writer schema refused by policy, named by its label.
fn policy_error(label: &str, m: impl std::fmt::Display) -> Refused {
    (Code::PolicyError, format!("{label}: {m}"))
}

/// (schema id → target topic → codec, or why the schema is refused), for keys or
/// values of one route.
type FramedCache = Mutex<HashMap<u32, HashMap<String, Result<Arc<Framed>, Refused>>>>;

struct RouteCodecs {
    /// DEK scope, bound into each DEK's encryption context: one per route, stable
    /// across instances and restarts.
    scope: String,
    /// Fields that must be encrypted (`require`).
    require: Vec<Requirement>,
    /// Accept writer schemas that encrypt less than earlier versions.
    allow_downgrade: bool,
    /// Let schemas with nothing to encrypt (or nothing encrypted) through.
    allow_unencrypted: bool,
    /// Decrypting: the DEK scopes this route's records may name.
    accepts: AcceptScopes,
    raw_value: Option<Codec>,
    key_format: KeyFormat,
    raw_key: Option<Codec>,
    framed_values: FramedCache,
    framed_keys: FramedCache,
    /// `format = "confluent"`: the ENCRYPT rule set put on output schemas.
    confluent: Option<Arc<Json>>,
}

/// Per-route transforms, built at start-up (raw) or per schema id (registry).
pub struct Transformer {
    engine: Arc<Engine>,
    registry: Option<Arc<SchemaRegistry>>,
    mode: PipelineMode,
    auto_register: bool,
    strategy: SubjectStrategy,
    routes: Vec<RouteCodecs>,
    /// DEKs of Confluent's format (with a registry).
    csfle: Option<Arc<CsfleKeys>>,
}

/// Most schema ids remembered per route (keys or values); past it the cache
/// starts afresh, so records naming ever new ids cannot grow memory without bound.
const FRAMED_CACHE_LIMIT: usize = 10_000;

/// Keeps what schema id `id` on its way to `target` became (ids never change).
fn remember(cache: &FramedCache, id: u32, target: &str, f: Result<Arc<Framed>, Refused>) {
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= FRAMED_CACHE_LIMIT && !c.contains_key(&id) {
        c.clear();
    }
    c.entry(id).or_default().insert(target.to_string(), f);
}

/// Refuses schema id `id` for `target` for good: later records of it are dead
/// letters at once.
fn refuse_for_good<T>(cache: &FramedCache, id: u32, target: &str, refused: Refused) -> Step<T> {
    remember(cache, id, target, Err(refused.clone()));
    record(refused.0, refused.1)
}

/// The first of a route's `require` entries that a Confluent-format plan leaves
/// in clear (field contexts, and `tag:NAME` for every field carrying the tag).
fn required_in_clear(
    require: &[Requirement],
    plan: &CsflePlan,
    metadata: &crate::schema::policy::MetadataTags,
) -> Option<String> {
    let encrypted = |ctx: &str| plan.selected.iter().any(|(n, _)| n == ctx);
    for r in require {
        match r {
            Requirement::Tag(tag) => {
                for ctx in crate::schema::policy::fields_tagged(&plan.tree, tag, metadata) {
                    if !encrypted(&ctx) {
                        return Some(format!("{ctx} (tag {tag})"));
                    }
                }
            }
            Requirement::Field(f) if !encrypted(f) => return Some(f.clone()),
            Requirement::Field(_) => {}
        }
    }
    None
}

/// Adds a route's `require` entries to a floor: field contexts as they are, and
/// for `tag:NAME` every field of the schema that carries the tag.
fn add_required(require: &[Requirement], plan: &EncryptPlan, floor: &mut Floor) {
    for r in require {
        match r {
            Requirement::Tag(tag) => {
                for ctx in plan.tagged(tag) {
                    floor.entry(ctx).or_insert(None);
                }
            }
            Requirement::Field(f) => {
                floor.entry(f.clone()).or_insert(None);
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
            let (raw_value, raw_key) = if registry.is_some() {
                (None, None)
            } else {
                raw_codecs(&engine, config, &refs, i, r)?
            };
            routes.push(RouteCodecs {
                scope: r.dek_scope(),
                require: r.require.clone(),
                allow_downgrade: r.allow_downgrade,
                allow_unencrypted: r.allow_unencrypted,
                accepts: AcceptScopes::for_route(r),
                raw_value,
                key_format: r.key_format,
                raw_key,
                framed_values: Mutex::default(),
                framed_keys: Mutex::default(),
                confluent: r.confluent.as_ref().map(|c| Arc::new(c.rule_set())),
            });
        }
        let csfle = registry.as_ref().map(|reg| {
            Arc::new(CsfleKeys::new(
                reg.clone(),
                &config.kms,
                config.schema_registry.auto_register,
                config.dek.cache_capacity,
            ))
        });
        Ok(Transformer {
            engine,
            registry,
            mode,
            auto_register: config.schema_registry.auto_register,
            strategy: config.schema_registry.subject_strategy,
            routes,
            csfle,
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

    /// Transforms one record of route `route` bound for `target`, its value into
    /// `value` (cleared first; reused across records). `Err` means an
    /// infrastructure failure (KMS, registry): nothing about this record is wrong.
    pub async fn transform<M: Message>(
        &self,
        msg: &M,
        route: usize,
        target: &str,
        value: &mut Vec<u8>,
    ) -> Result<Outcome, Fatal> {
        value.clear();
        match self.step(msg, route, target, value).await {
            Ok(o) => Ok(o),
            Err(Failure::Record(code, message)) => Ok(Outcome::DeadLetter { code, message }),
            Err(Failure::Infra(f)) => Err(f),
        }
    }

    async fn step<M: Message>(
        &self,
        msg: &M,
        route: usize,
        target: &str,
        out: &mut Vec<u8>,
    ) -> Step<Outcome> {
        let Some(rc) = self.routes.get(route) else {
            return record(Code::NoRoute, "no transform for this route");
        };
        let hdrs = match headers::read(msg.headers()) {
            Ok(h) => h,
            Err(e) => return record(Code::BadHeader, e.to_string()),
        };
        let key = self.transform_key(msg, rc, target).await?;
        let mut headers = self.copy_headers(&hdrs);
        let Some(value) = msg.payload() else {
            // Tombstones stay tombstones: deletes must reach compacted topics.
            return Ok(Outcome::Produce {
                key,
                payload: false,
                headers,
                counts: Counts::default(),
                unencrypted: false,
            });
        };
        let (codec, datum) = self
            .resolve(
                rc,
                rc.raw_value.as_ref(),
                &rc.framed_values,
                value,
                msg.topic(),
                target,
                false,
                out,
            )
            .await?;
        let raw = rc.raw_value.is_some();
        let counts = match &codec {
            Codec::Encrypt(enc) => self
                .encrypt_value(enc, rc, datum, out, &mut headers)
                .await
                .map_err(|f| framing_hint(f, raw, value))?,
            Codec::Decrypt(dec) => {
                let deks = self.dek_set(&hdrs, rc, msg.topic()).await?;
                dec.decrypt(datum, &deks, out).or_else(|e| {
                    record(e.code(), format!("value: {e}")).map_err(|f| framing_hint(f, raw, value))
                })?
            }
            Codec::CsfleEncrypt(codec, subject) => {
                self.csfle_encrypt(codec, subject, datum, out).await?
            }
            Codec::CsfleDecrypt(codec, subject, keys) => {
                self.csfle_decrypt(codec, subject, keys, datum, out).await?
            }
            Codec::CsfleToFieldcrypt(codec, subject, keys, enc) => {
                let mut plain = Zeroizing::new(Vec::with_capacity(datum.len()));
                self.csfle_decrypt(codec, subject, keys, datum, &mut plain)
                    .await?;
                self.encrypt_value(enc, rc, &plain, out, &mut headers)
                    .await?
            }
            Codec::FieldcryptToCsfle(dec, codec, subject) => {
                let deks = self.dek_set(&hdrs, rc, msg.topic()).await?;
                let mut plain = Zeroizing::new(Vec::with_capacity(datum.len()));
                dec.decrypt(datum, &deks, &mut plain)
                    .or_else(|e| record(e.code(), format!("value: {e}")))?;
                self.csfle_encrypt(codec, subject, &plain, out).await?
            }
        };
        Ok(Outcome::Produce {
            key,
            payload: true,
            headers,
            counts,
            unencrypted: codec.is_passthrough(),
        })
    }

    /// The output key: `None` keeps the input key.
    async fn transform_key<M: Message>(
        &self,
        msg: &M,
        rc: &RouteCodecs,
        target: &str,
    ) -> Step<Option<Vec<u8>>> {
        if rc.key_format == KeyFormat::Passthrough {
            return Ok(None);
        }
        let Some(key) = msg.key() else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(key.len() + 64);
        let (codec, datum) = self
            .resolve(
                rc,
                rc.raw_key.as_ref(),
                &rc.framed_keys,
                key,
                msg.topic(),
                target,
                true,
                &mut out,
            )
            .await?;
        // Key plans never need a DEK (checked when the codec was built).
        let r = match codec {
            Codec::Encrypt(enc) => enc.encrypt(datum, None, &mut out),
            Codec::Decrypt(dec) => dec.decrypt(datum, &DekSet::new(), &mut out),
            // Keys are never in Confluent's format (refused by the config).
            Codec::CsfleEncrypt(..)
            | Codec::CsfleDecrypt(..)
            | Codec::CsfleToFieldcrypt(..)
            | Codec::FieldcryptToCsfle(..) => {
                return record(
                    Code::PolicyError,
                    "key: Confluent's format encrypts values only",
                )
            }
        };
        match r {
            Ok(_) => Ok(Some(out)),
            Err(e) => record(e.code(), format!("key: {e}")),
        }
    }

    /// The codec for a key or value and its datum; `out` gets the output schema's
    /// Confluent header. The route's raw codec, or the one for the registry schema
    /// named by the input's header.
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
        out: &mut Vec<u8>,
    ) -> Step<(Codec, &'a [u8])> {
        if let Some(c) = raw {
            return Ok((c.clone(), bytes));
        }
        let (id, datum) = match wire::parse(bytes) {
            Ok(x) => x,
            Err(e) => {
                let (code, part) = if is_key {
                    (Code::BadKeyFraming, "key")
                } else {
                    (Code::BadFraming, "value")
                };
                return record(code, format!("{part}: {e}"));
            }
        };
        let framed = self.framed(rc, cache, id, source, target, is_key).await?;
        wire::frame_header(framed.out_id, out);
        Ok((framed.codec.clone(), datum))
    }

    /// Encrypts a value in Confluent's format with each rule's current DEK for
    /// `subject` (created in the DEK Registry when missing).
    async fn csfle_encrypt(
        &self,
        codec: &CsfleCodec,
        subject: &str,
        datum: &[u8],
        out: &mut Vec<u8>,
    ) -> Step<Counts> {
        let Some(keys) = &self.csfle else {
            return record(
                Code::NoRegistry,
                "Confluent's format needs a schema registry",
            );
        };
        let mut wk = Vec::with_capacity(codec.plan().rules.len());
        for rule in &codec.plan().rules {
            wk.push(keys.write_key(rule, subject).await?);
        }
        codec
            .encrypt(datum, &wk, out)
            .or_else(|e| record(e.code(), format!("value: {e}")))
    }

    /// Decrypts a value written in Confluent's format, fetching each DEK version
    /// it names once (a bounded number per record).
    async fn csfle_decrypt(
        &self,
        codec: &CsfleCodec,
        subject: &str,
        cache: &std::sync::RwLock<ReadKeys>,
        datum: &[u8],
        out: &mut Vec<u8>,
    ) -> Step<Counts> {
        let Some(keys) = &self.csfle else {
            return record(
                Code::NoRegistry,
                "Confluent's format needs a schema registry",
            );
        };
        let start = out.len();
        for _ in 0..16 {
            let r = {
                let held = cache.read().unwrap_or_else(|p| p.into_inner());
                codec.decrypt(datum, &held, out)
            };
            let (rule, version) = match r {
                Ok(c) => return Ok(c),
                Err(DecryptFailure::Record(e)) => return record(e.code(), format!("value: {e}")),
                Err(DecryptFailure::Missing(rule, version)) => (rule, version),
            };
            out.truncate(start);
            let dek = match keys
                .read_key(&codec.plan().rules[rule], subject, version)
                .await
            {
                Ok(d) => d,
                // A version the registry never had: a forged or corrupt prefix.
                Err(e @ CsfleKeyError::NoDek { .. }) => {
                    return record(Code::UnknownKey, format!("value: {e}"))
                }
                Err(e) => return Err(e.into()),
            };
            let mut held = cache.write().unwrap_or_else(|p| p.into_inner());
            if held.len() >= 1024 {
                held.clear();
            }
            held.insert((rule, version), dek);
        }
        record(
            Code::UnknownKey,
            "value: names more DEK versions than one record may",
        )
    }

    async fn encrypt_value(
        &self,
        enc: &Encryptor,
        rc: &RouteCodecs,
        datum: &[u8],
        out: &mut Vec<u8>,
        headers: &mut Option<OwnedHeaders>,
    ) -> Step<Counts> {
        let done = match self.engine.encrypt(enc, &rc.scope, datum, out).await {
            Ok(d) => d,
            Err(EncryptFailure::Kms(e)) => return Err(e.into()),
            Err(e) => {
                let code = e.record_code().unwrap_or(Code::SchemaMismatch);
                return record(code, format!("value: {e}"));
            }
        };
        if let Some(dek) = &done.dek {
            let v = self
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
    async fn dek_set(&self, hdrs: &[HeaderRef<'_>], rc: &RouteCodecs, topic: &str) -> Step<DekSet> {
        let mut deks = DekSet::new();
        for (_, v) in hdrs.iter().filter(|(k, _)| *k == headers::DEK) {
            let w = match v.map(headers::decode_dek) {
                Some(Ok(w)) => w,
                Some(Err(e)) => return record(Code::BadDekHeader, e.to_string()),
                None => return record(Code::BadDekHeader, "empty fieldcrypt.dek header"),
            };
            if !rc.accepts.accepts(&w.scope, topic) {
                return record(
                    Code::DekScopeRefused,
                    format!(
                        "a fieldcrypt.dek header names scope \"{}\", which this route does not accept ({}); set the route's accept_scopes if the data comes from another route",
                        w.scope,
                        rc.accepts.describe(topic)
                    ),
                );
            }
            match self.engine.unwrap_dek(&w).await {
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

    /// The record's headers for the output: everything but fieldcrypt's own
    /// namespace (the output gets its own DEK headers, or none after decryption);
    /// headers dropped from that namespace are counted. `None` when nothing is left.
    fn copy_headers(&self, hdrs: &[HeaderRef<'_>]) -> Option<OwnedHeaders> {
        if hdrs.is_empty() {
            return None;
        }
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
        (out.count() > 0).then_some(out)
    }

    /// Why a registry schema with nothing to encrypt (or nothing encrypted) is
    /// refused, and the code.
    fn nothing_refused(&self, codec: &Codec, label: &str) -> Refused {
        match codec {
            Codec::Encrypt(enc) => (
                Code::NothingToEncrypt,
                format!(
                    "{label}: {}; its records would go out in clear. Mark the sensitive fields, or set allow_unencrypted = true on the route if this schema holds nothing sensitive",
                    crate::schema::policy::why_nothing_selected(
                        &enc.plan().tree,
                        &self.engine.config().plan_config().selection
                    )
                ),
            ),
            Codec::CsfleEncrypt(..) => (
                Code::NothingToEncrypt,
                format!(
                    "{label}: the route's Confluent rule selects no field (no field carries one of its confluent.tags); its records would go out in clear. Tag the sensitive fields, or set allow_unencrypted = true on the route"
                ),
            ),
            _ => (
                Code::NotEncrypted,
                format!(
                    "{label}: nothing in this schema is encrypted (no field carries a fieldcrypt attribute and it has no ENCRYPT rule), so there is nothing to decrypt: is the route reading the right topic? Set allow_unencrypted = true on the route to pass such records through"
                ),
            ),
        }
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
    ) -> Step<Arc<Framed>> {
        if let Some(f) = cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .and_then(|m| m.get(target))
        {
            return f.clone().or_else(|(c, m)| record(c, m));
        }
        let Some(reg) = &self.registry else {
            return record(Code::NoRegistry, "no schema registry configured");
        };
        let part = if is_key { "key" } else { "value" };
        let schema = match reg.schema_by_id(id).await {
            Ok(s) => s,
            // Too big is for good (ids never change): not fetched again per record.
            Err(e @ RegistryError::TooLarge { .. }) => {
                return refuse_for_good(cache, id, target, (e.code(), format!("{part}: {e}")))
            }
            Err(e) => {
                return Err(match Failure::from(e) {
                    Failure::Record(c, m) => Failure::Record(c, format!("{part}: {m}")),
                    f => f,
                })
            }
        };
        let label = format!("schema id {id} ({part})");
        let max_fields = self.engine.config().schema.max_fields;
        let fields = crate::schema::field_count(&schema.json);
        if fields > max_fields {
            return refuse_for_good(
                cache,
                id,
                target,
                policy_error(
                    &label,
                    format!("it has {fields} fields, more than schema.max_fields = {max_fields}; raise it if the schema is meant to be that big"),
                ),
            );
        }
        if let Some(f) = self
            .framed_csfle(rc, cache, &schema, id, &label, source, target, is_key)
            .await?
        {
            return Ok(f);
        }
        let tags = crate::csfle::rules::metadata_tags(schema.metadata.as_ref())
            .map_err(|m| Failure::Record(Code::PolicyError, format!("{label}: {m}")));
        let codec = match tags.and_then(|tags| {
            codec_for(&self.engine, self.mode, &schema.json, &tags, &label, is_key)
                .map_err(|(c, m)| Failure::Record(c, m))
        }) {
            Ok(c) => c,
            Err(Failure::Record(c, m)) => return refuse_for_good(cache, id, target, (c, m)),
            Err(f) => return Err(f),
        };
        if !is_key && !rc.allow_unencrypted && codec.is_passthrough() {
            let refused = self.nothing_refused(&codec, &label);
            tracing::error!(schema_id = id, code = %refused.0, "writer schema refused: {}", refused.1);
            return refuse_for_good(cache, id, target, refused);
        }
        if let Codec::Encrypt(enc) = &codec {
            let subject = self.strategy.subject(source, is_key, &schema.json);
            let mut below = self.below_floor(rc, reg, &subject, enc, is_key).await?;
            if !is_key && !rc.allow_downgrade {
                below.extend(self.disabled_rule_fields(&schema, enc, &label));
            }
            if !below.is_empty() {
                let refused: Refused = (
                    Code::PolicyDowngrade,
                    format!(
                        "{label} leaves in clear what the route requires or an earlier version of subject {subject} encrypts: {} (set the route's allow_downgrade = true if this is deliberate)",
                        below.join(", ")
                    ),
                );
                tracing::error!(schema_id = id, subject, fields = %below.join(", "), "writer schema refused: it would encrypt less than its subject's earlier versions (policy_downgrade); its records go to the dead-letter topic");
                // Refused once per schema id: ids never change.
                return refuse_for_good(cache, id, target, refused);
            }
        }
        let out_json: &Json = match &codec {
            Codec::Encrypt(e) => &e.plan().output_json,
            Codec::Decrypt(d) => &d.plan().original_json,
            _ => &schema.json,
        };
        let subject = self.strategy.subject(target, is_key, out_json);
        let out_id = reg
            .id_for(&subject, out_json, self.auto_register)
            .await
            .map_err(|e| match Failure::from(e) {
                Failure::Record(c, m) => Failure::Record(c, format!("{part}: {m}")),
                f => f,
            })?;
        tracing::info!(
            schema_id = id,
            output_schema_id = out_id,
            subject,
            part,
            "new schema: plan built and output schema registered"
        );
        let f = Arc::new(Framed { codec, out_id });
        remember(cache, id, target, Ok(f.clone()));
        Ok(f)
    }

    /// The codec for a value schema in Confluent's format, if it is one: encrypting
    /// on a `format = "confluent"` route (the output schema carries the route's
    /// rule set), or decrypting a writer schema whose rule set has ENCRYPT rules
    /// (the output schema is the writer's without them). `None`: fieldcrypt's own.
    #[allow(clippy::too_many_arguments)]
    async fn framed_csfle(
        &self,
        rc: &RouteCodecs,
        cache: &FramedCache,
        schema: &crate::registry::RegisteredSchema,
        id: u32,
        label: &str,
        source: &str,
        target: &str,
        is_key: bool,
    ) -> Step<Option<Arc<Framed>>> {
        let Some(reg) = &self.registry else {
            return Ok(None);
        };
        let md = schema.metadata.as_ref();
        let writer_rules = match crate::csfle::rules::encrypt_rules(schema.rule_set.as_ref(), md) {
            Ok(r) => !r.is_empty(),
            Err(m) if !is_key && self.mode == PipelineMode::Decrypt => {
                return refuse_for_good(cache, id, target, policy_error(label, m));
            }
            Err(_) => false,
        };
        let chosen = match (self.mode, &rc.confluent) {
            (PipelineMode::Encrypt, Some(rules)) if !is_key => {
                match self.csfle_out(rc, schema, label, target, rules, writer_rules) {
                    Ok(c) => {
                        let subject = self.strategy.subject(source, false, &schema.json);
                        match self.csfle_below_floor(rc, reg, &subject, &c, rules).await? {
                            Some(refused) => Err(refused),
                            None => Ok(c),
                        }
                    }
                    Err(r) => Err(r),
                }
            }
            (PipelineMode::Encrypt, None) if !is_key && writer_rules => {
                self.csfle_rekey_in(rc, reg, schema, label, source).await?
            }
            (PipelineMode::Decrypt, _) if !is_key && writer_rules => {
                self.csfle_decrypt_in(schema, label, source)
            }
            _ => return Ok(None),
        };
        let (codec, out_rules, out_json) = match chosen {
            Ok(c) => c,
            Err(refused) => return refuse_for_good(cache, id, target, refused),
        };
        let subject = self.strategy.subject(target, is_key, &out_json);
        let out_id = reg
            .id_for_with(
                &subject,
                &out_json,
                out_rules.as_deref(),
                md,
                self.auto_register,
            )
            .await?;
        tracing::info!(
            schema_id = id,
            output_schema_id = out_id,
            subject,
            format = "confluent",
            "new schema: plan built and output schema registered"
        );
        let f = Arc::new(Framed { codec, out_id });
        remember(cache, id, target, Ok(f.clone()));
        Ok(Some(f))
    }

    /// The writer schema's own ENCRYPT rules as a plan (Confluent's format in).
    fn writer_plan(
        &self,
        schema: &crate::registry::RegisteredSchema,
        label: &str,
    ) -> Result<CsflePlan, Refused> {
        CsflePlan::build(
            &schema.json,
            schema.rule_set.as_ref(),
            schema.metadata.as_ref(),
            label,
            self.engine.config().schema.max_depth,
        )
        .map_err(|m| policy_error(label, m))
    }

    /// Encrypting into Confluent's format with the route's `rules`: plaintext in,
    /// or fieldcrypt's own format in (decrypted first: re-keying). Refused when
    /// fieldcrypt's policy or the route's `require` wants a field the rules leave
    /// in clear.
    fn csfle_out(
        &self,
        rc: &RouteCodecs,
        schema: &crate::registry::RegisteredSchema,
        label: &str,
        target: &str,
        rules: &Arc<Json>,
        writer_rules: bool,
    ) -> Result<CsfleChoice, Refused> {
        let from = if !writer_rules && crate::schema::plan::is_encrypted_schema(&schema.json) {
            let dec = self
                .engine
                .decryptor(&schema.json, label)
                .map_err(|e| policy_error(label, e.to_string()))?;
            Some(dec)
        } else {
            None
        };
        let base = from
            .as_ref()
            .map_or_else(|| schema.json.clone(), |d| d.plan().original_json.clone());
        let max_depth = self.engine.config().schema.max_depth;
        let md = schema.metadata.as_ref();
        let mut plan = CsflePlan::build(&base, Some(rules), md, label, max_depth)
            .map_err(|m| policy_error(label, m))?;
        let tags = crate::csfle::rules::metadata_tags(md).map_err(|m| policy_error(label, m))?;
        // What fieldcrypt's own policy (markings, tags, rules) would encrypt must
        // be encrypted here too, or it would go out in clear.
        let ours = self
            .engine
            .encrypt_plan_tagged(&base, &tags, label)
            .map_err(|e| policy_error(label, e.to_string()))?;
        let unselected: Vec<String> = ours
            .floor()
            .into_keys()
            .filter(|ctx| !plan.selected.iter().any(|(n, _)| n == ctx))
            .collect();
        if !unselected.is_empty() {
            return Err(policy_error(label, format!(
                "fieldcrypt's policy encrypts {} but the route's Confluent rule does not select it (tag the field with one of the rule's tags): it would go out in clear",
                unselected.join(", ")
            )));
        }
        if let Some(missing) = required_in_clear(&rc.require, &plan, &tags) {
            return Err((
                Code::PolicyDowngrade,
                format!("{label} leaves in clear what the route requires: {missing}"),
            ));
        }
        // Blind indexes fieldcrypt's policy puts on these fields are written as
        // extra bytes fields, which Confluent's clients read as they are.
        let out = self
            .engine
            .encryptor_tagged(&base, &tags, label)
            .map_err(|e| e.to_string())
            .and_then(|enc| plan.with_indexes(&enc, &base))
            .map_err(|m| policy_error(label, m))?;
        let subject: Arc<str> = self.strategy.subject(target, false, &base).into();
        let csfle = Arc::new(CsfleCodec::new(Arc::new(plan)));
        let codec = match from {
            Some(dec) => Codec::FieldcryptToCsfle(dec, csfle, subject),
            None => Codec::CsfleEncrypt(csfle, subject),
        };
        Ok((codec, Some(rules.clone()), out))
    }

    /// Confluent's format in, fieldcrypt's out (re-keying): every field the ENCRYPT
    /// rules protect must be one fieldcrypt encrypts too, and the route's floor
    /// holds as on fieldcrypt's own encrypting path.
    async fn csfle_rekey_in(
        &self,
        rc: &RouteCodecs,
        reg: &SchemaRegistry,
        schema: &crate::registry::RegisteredSchema,
        label: &str,
        source: &str,
    ) -> Step<Result<CsfleChoice, Refused>> {
        let plan = match self.writer_plan(schema, label) {
            Ok(p) => p,
            Err(r) => return Ok(Err(r)),
        };
        let tags = match crate::csfle::rules::metadata_tags(schema.metadata.as_ref()) {
            Ok(t) => t,
            Err(m) => return Ok(Err(policy_error(label, m))),
        };
        let enc = match self.engine.encryptor_tagged(&schema.json, &tags, label) {
            Ok(e) => e,
            Err(e) => return Ok(Err(policy_error(label, e.to_string()))),
        };
        let floor = enc.plan().floor();
        let exposed: Vec<&str> = plan
            .selected
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !floor.contains_key(*n))
            .collect();
        if !exposed.is_empty() {
            return Ok(Err(policy_error(label, format!(
                "re-keying from Confluent's format would leave {} in clear: fieldcrypt's policy does not encrypt it (map its tag in [tags], or mark it sensitive)",
                exposed.join(", ")
            ))));
        }
        let subject = self.strategy.subject(source, false, &schema.json);
        let below = self.below_floor(rc, reg, &subject, &enc, false).await?;
        if !below.is_empty() {
            return Ok(Err((
                Code::PolicyDowngrade,
                format!(
                    "{label} leaves in clear what the route requires or an earlier version of subject {subject} encrypts: {}",
                    below.join(", ")
                ),
            )));
        }
        let out = enc.plan().output_json.clone();
        let csfle = Arc::new(CsfleCodec::new(Arc::new(plan)));
        let codec = Codec::CsfleToFieldcrypt(csfle, subject.into(), Arc::default(), enc);
        Ok(Ok((codec, None, out)))
    }

    /// Decrypting Confluent's format: the writer's rules say what to decrypt; the
    /// output schema is the writer's (Confluent's format keeps field types).
    fn csfle_decrypt_in(
        &self,
        schema: &crate::registry::RegisteredSchema,
        label: &str,
        source: &str,
    ) -> Result<CsfleChoice, Refused> {
        let plan = self.writer_plan(schema, label)?;
        let subject = self.strategy.subject(source, false, &schema.json);
        let csfle = Arc::new(CsfleCodec::new(Arc::new(plan)));
        let codec = Codec::CsfleDecrypt(csfle, subject.into(), Arc::default());
        Ok((codec, None, schema.json.clone()))
    }

    /// Fields a disabled `ENCRYPT` rule of the writer schema would select that
    /// fieldcrypt's plan leaves in clear: the writer meant them protected (it
    /// tagged them) but sends them in clear, so they must not pass on in clear.
    fn disabled_rule_fields(
        &self,
        schema: &crate::registry::RegisteredSchema,
        enc: &Encryptor,
        label: &str,
    ) -> Vec<String> {
        let Some(rules) = crate::csfle::rules::disabled_rules_enabled(schema.rule_set.as_ref())
        else {
            return Vec::new();
        };
        let max_depth = self.engine.config().schema.max_depth;
        let Ok(p) = CsflePlan::build(
            &schema.json,
            Some(&rules),
            schema.metadata.as_ref(),
            label,
            max_depth,
        ) else {
            return Vec::new();
        };
        let floor = enc.plan().floor();
        p.selected
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !floor.contains_key(n))
            .map(|n| format!("{n} (tagged for a disabled ENCRYPT rule)"))
            .collect()
    }

    /// A `format = "confluent"` route's policy floor: what the route's rule (or
    /// fieldcrypt's own policy) encrypts in any earlier version of the source
    /// `subject` must be encrypted by the chosen plan too, or the schema is a
    /// downgrade. `None`: it holds.
    async fn csfle_below_floor(
        &self,
        rc: &RouteCodecs,
        reg: &SchemaRegistry,
        subject: &str,
        chosen: &CsfleChoice,
        rules: &Json,
    ) -> Step<Option<Refused>> {
        if rc.allow_downgrade {
            return Ok(None);
        }
        let plan = match &chosen.0 {
            Codec::CsfleEncrypt(c, _) | Codec::FieldcryptToCsfle(_, c, _) => c.plan(),
            _ => return Ok(None),
        };
        let max_depth = self.engine.config().schema.max_depth;
        let mut floor = std::collections::BTreeSet::new();
        for v in reg.subject_versions(subject).await? {
            let version = match reg.subject_schema(subject, v).await {
                Ok(x) => x,
                Err(RegistryError::NotFound { .. }) => continue, // deleted meanwhile
                Err(e) => return Err(e.into()),
            };
            let label = format!("subject {subject} version {v}");
            let md = version.metadata.as_ref();
            // What the route's rule selects in that version, and what fieldcrypt's
            // own policy encrypts there; a version we cannot plan sets no floor.
            if let Ok(p) = CsflePlan::build(&version.json, Some(rules), md, &label, max_depth) {
                floor.extend(p.selected.into_iter().map(|(n, _)| n));
            }
            let tags = crate::csfle::rules::metadata_tags(md).unwrap_or_default();
            if let Ok(p) = self
                .engine
                .encrypt_plan_tagged(&version.json, &tags, &label)
            {
                floor.extend(p.floor().into_keys());
            }
        }
        let has = |ctx: &str| {
            ctx.rsplit_once('.').is_some_and(|(rec, f)| {
                plan.tree
                    .names
                    .get(rec)
                    .and_then(|id| plan.tree.record(*id))
                    .is_some_and(|r| r.fields.iter().any(|x| x.name == f))
            })
        };
        let below: Vec<String> = floor
            .into_iter()
            .filter(|ctx| has(ctx) && !plan.selected.iter().any(|(n, _)| n == ctx))
            .collect();
        if below.is_empty() {
            return Ok(None);
        }
        tracing::error!(subject, fields = %below.join(", "), "writer schema refused: it would encrypt less than its subject's earlier versions (policy_downgrade); its records go to the dead-letter topic");
        Ok(Some((
            Code::PolicyDowngrade,
            format!(
                "the writer schema leaves in clear what an earlier version of subject {subject} encrypts: {} (tag the fields with one of the route's confluent.tags, or set the route's allow_downgrade = true if this is deliberate)",
                below.join(", ")
            ),
        )))
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
                let version = match reg.subject_schema(subject, v).await {
                    Ok(x) => x,
                    Err(RegistryError::NotFound { .. }) => continue, // deleted meanwhile
                    Err(e) => return Err(e),
                };
                let label = format!("subject {subject} version {v}");
                let tags = crate::csfle::rules::metadata_tags(version.metadata.as_ref())
                    .unwrap_or_default();
                // A version we cannot plan (say, a conflicting marking) sets no floor.
                if let Ok(p) = self
                    .engine
                    .encrypt_plan_tagged(&version.json, &tags, &label)
                {
                    floor.extend(p.floor());
                }
                // What that version's own ENCRYPT rules protected stays protected.
                if !is_key && version.rule_set.is_some() {
                    let max_depth = self.engine.config().schema.max_depth;
                    if let Ok(p) = CsflePlan::build(
                        &version.json,
                        version.rule_set.as_ref(),
                        version.metadata.as_ref(),
                        &label,
                        max_depth,
                    ) {
                        for (n, _) in p.selected {
                            floor.entry(n).or_insert(None);
                        }
                    }
                }
            }
        }
        if !is_key {
            add_required(&rc.require, plan, &mut floor);
        }
        Ok(plan.below(&floor))
    }
}

/// A raw route's codecs from its schema files (value, and key for
/// `key_format = "avro"`), checked as start-up checks them.
fn raw_codecs(
    engine: &Engine,
    config: &Config,
    refs: &crate::schema::References,
    i: usize,
    r: &crate::kafka::route::RouteConfig,
) -> Result<(Option<Codec>, Option<Codec>), String> {
    let mode = config.pipeline.mode;
    let load = |key: &str, path: &std::path::Path, is_key: bool| {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("routes[{i}].{key}: cannot read {}: {e}", path.display()))?;
        let json = parse_schema_with(&text, refs)
            .map_err(|e| format!("routes[{i}].{key} {}: {e}", path.display()))?;
        let label = path.display().to_string();
        let codec = codec_for(engine, mode, &json, &[], &label, is_key)
            .map_err(|(_, m)| format!("routes[{i}].{key}: {m}"))?;
        if !is_key {
            check_raw_value(config, i, r, &codec, path)?;
        }
        Ok::<_, String>(codec)
    };
    let v = match &r.value_schema {
        Some(p) => load("value_schema", p, false)?,
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
    if let (PipelineMode::Encrypt, Codec::Encrypt(enc)) = (mode, &v) {
        check_required(i, &r.require, enc.plan())?;
    }
    Ok((Some(v), k))
}

/// What a raw route does, checked as `run` would check it at start-up
/// (`fieldcrypt validate`): a line describing its plan, or why it is refused.
pub fn check_raw_route(engine: &Engine, i: usize) -> Result<String, String> {
    let cfg = engine.config();
    let r = cfg
        .routes
        .get(i)
        .ok_or_else(|| format!("routes[{i}]: no such route"))?;
    let refs = cfg
        .schema
        .references()
        .map_err(|e| format!("schema.reference_files: {e}"))?;
    let (value, key) = raw_codecs(engine, cfg, &refs, i, r)?;
    let describe = |c: &Codec| match c {
        Codec::Encrypt(e) => {
            let (mut rnd, mut det, mut idx) = (0, 0, 0);
            for row in &e.plan().rows {
                match row.mode {
                    crate::schema::policy::Mode::Randomized => rnd += 1,
                    crate::schema::policy::Mode::Deterministic => det += 1,
                }
                idx += usize::from(row.index_field.is_some());
            }
            format!(
                "encrypts {rnd} randomized and {det} deterministic field(s), {idx} blind index(es)"
            )
        }
        Codec::Decrypt(d) => format!(
            "decrypts {} field(s)",
            d.plan()
                .actions
                .iter()
                .flatten()
                .filter(|a| matches!(a, crate::schema::plan::DecryptAction::Decrypt(..)))
                .count()
        ),
        _ => "Confluent's format".to_string(),
    };
    let mut line = match value {
        Some(v) if v.is_passthrough() => {
            "passes records through unencrypted (allow_unencrypted = true)".to_string()
        }
        Some(v) => describe(&v),
        None => String::new(),
    };
    if let Some(k) = key {
        line.push_str(&format!("; keys: {}", describe(&k)));
    }
    Ok(line)
}

/// A raw route's value schema, checked at start-up: encrypting, it must encrypt
/// something; decrypting, it must be an encrypted schema (the output of `fieldcrypt
/// plan --output-schema`), not the plain one — unless the route allows
/// unencrypted records.
fn check_raw_value(
    cfg: &Config,
    i: usize,
    r: &crate::kafka::route::RouteConfig,
    codec: &Codec,
    path: &std::path::Path,
) -> Result<(), String> {
    if r.allow_unencrypted || !codec.is_passthrough() {
        return Ok(());
    }
    match codec {
        Codec::Encrypt(enc) => Err(format!(
            "routes[{i}].value_schema {}: {}, so every record would go to the target in clear. \
             Mark the sensitive fields (\"sensitive\": true), map their confluent:tags under [tags.NAME], \
             or select them with [[rules]] (check the output of `{}`); if this route really carries \
             nothing sensitive, set allow_unencrypted = true on it",
            path.display(),
            crate::schema::policy::why_nothing_selected(
                &enc.plan().tree,
                &cfg.plan_config().selection
            ),
            cfg.command("plan", &crate::config::shell_word(&path.to_string_lossy())),
        )),
        _ => {
            let out = path.with_extension("encrypted.avsc");
            Err(format!(
                "routes[{i}].value_schema {}: nothing in this schema is encrypted, so it is not what an \
                 encrypting fieldcrypt writes; a decrypting route takes the encrypted (output) schema, \
                 which `{}` writes from the plain one (or set allow_unencrypted = true on the route \
                 if its records are not encrypted)",
                path.display(),
                cfg.command(
                    "plan",
                    &format!(
                        "{} --output-schema {}",
                        crate::config::shell_word(&path.to_string_lossy()),
                        crate::config::shell_word(&out.to_string_lossy())
                    )
                ),
            ))
        }
    }
}

/// A raw route's schema must encrypt what the route requires; a required field
/// path the schema does not have is a typo, refused too.
fn check_required(i: usize, require: &[Requirement], plan: &EncryptPlan) -> Result<(), String> {
    for r in require.iter().filter_map(|r| match r {
        Requirement::Field(f) => Some(f),
        Requirement::Tag(_) => None,
    }) {
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
    metadata: &crate::schema::policy::MetadataTags,
    label: &str,
    is_key: bool,
) -> Result<Codec, Refused> {
    match mode {
        PipelineMode::Encrypt => {
            let enc = engine
                .encryptor_tagged(json, metadata, label)
                .map_err(|e| (Code::PolicyError, e.to_string()))?;
            if is_key && enc.needs_dek() {
                let fields: Vec<String> = enc
                    .plan()
                    .rows
                    .iter()
                    .filter(|r| r.mode == crate::schema::policy::Mode::Randomized)
                    .map(|r| r.path.clone())
                    .collect();
                return Err((
                    Code::RandomizedKeyField,
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
            .map_err(|e| (Code::PolicyError, e.to_string())),
    }
}

/// The original headers plus the error and source-position headers. Of the
/// original headers in fieldcrypt's namespace only `fieldcrypt.dek` is kept (the
/// dead letter's payload may need it to be decrypted), so a forged error header
/// can never stand before the real one; headers that cannot be read are left out
/// and the dead letter says so.
pub fn dead_letter_headers<M: Message>(msg: &M, code: Code, message: &str) -> OwnedHeaders {
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
        (headers::ERROR_CODE, code.as_str()),
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

#[cfg(test)]
mod tests;
