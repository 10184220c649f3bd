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
//! [`OwnedMessage`](rdkafka::message::OwnedMessage), and with a registry held in
//! memory behind [`Registry`].
//!
//! This file is the composition — resolve (route, key, the value's codec) →
//! [`ValueCodec::apply`](codec::ValueCodec) → outcome. Around it: `codec` (the
//! seam: value codecs and the formats that build them), `avro` and `confluent`
//! (the two formats), `framed` (codecs per registry schema id), `policy` (the
//! route's floor), `raw` (raw routes' plans, checked at start-up), `failure`
//! (dead letter or [`Fatal`]).

use std::sync::{Arc, Mutex};

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use serde_json::Value as Json;

use crate::codes::Code;
use crate::config::{Config, ConfigError, PipelineMode};
use crate::csfle::keys::CsfleKeys;
use crate::engine::Engine;
use crate::kafka::headers::{self, HeaderRef};
use crate::kafka::route::{AcceptScopes, KeyFormat, Requirement};
use crate::registry::{Registry, SubjectStrategy};
use crate::transform::Counts;

mod avro;
mod codec;
mod confluent;
mod failure;
mod framed;
mod policy;
mod raw;

use avro::Plan;
use codec::{RecordCx, ValueCodec};
pub use failure::Fatal;
use failure::{framing_hint, record, Failure, Step};
use framed::FramedCache;
pub use raw::check_raw_route;

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

/// One route's settings and codecs, as the transform uses them.
struct Route {
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
    /// Raw routes: the value codec from the route's schema file.
    raw_value: Option<Arc<dyn ValueCodec>>,
    key_format: KeyFormat,
    /// Raw routes with `key_format = "avro"`: the key plan.
    raw_key: Option<Plan>,
    framed_values: FramedCache<Arc<dyn ValueCodec>>,
    framed_keys: FramedCache<Plan>,
    /// `format = "confluent"`: the ENCRYPT rule set put on output schemas.
    confluent: Option<Arc<Json>>,
}

/// Per-route transforms, built at start-up (raw) or per schema id (registry).
pub struct Transformer {
    engine: Arc<Engine>,
    registry: Option<Arc<dyn Registry>>,
    mode: PipelineMode,
    auto_register: bool,
    strategy: SubjectStrategy,
    routes: Vec<Route>,
    /// DEKs of Confluent's format (with a registry).
    csfle: Option<Arc<CsfleKeys>>,
}

impl Transformer {
    /// Builds each route's plans from its schema files; with a registry, plans are
    /// built as schema ids appear.
    pub fn new(
        engine: Arc<Engine>,
        config: &Config,
        registry: Option<Arc<dyn Registry>>,
    ) -> Result<Self, ConfigError> {
        let refs = config
            .schema
            .references()
            .map_err(|e| crate::config::invalid("schema.reference_files", e.to_string()))?;
        let mut routes = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let (raw_value, raw_key) = match registry {
                Some(_) => (None, None),
                None => {
                    let (v, k) = raw::plans(&engine, config, &refs, i, r)?;
                    (Some(Arc::new(v) as Arc<dyn ValueCodec>), k)
                }
            };
            routes.push(Route {
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
            mode: config.pipeline.mode,
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

    /// resolve (the route, the codec for the value's schema) → codec → outcome.
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
        let (codec, datum) = match &rc.raw_value {
            Some(c) => (c.clone(), value),
            None => {
                self.framed_value(rc, value, msg.topic(), target, out)
                    .await?
            }
        };
        let cx = RecordCx {
            engine: &self.engine,
            csfle: self.csfle.as_deref(),
            route: rc,
            source: msg.topic(),
            headers: &hdrs,
        };
        let counts = codec
            .apply(&cx, datum, out, &mut headers)
            .await
            .map_err(|f| framing_hint(f, rc.raw_value.is_some(), value))?;
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
        rc: &Route,
        target: &str,
    ) -> Step<Option<Vec<u8>>> {
        if rc.key_format == KeyFormat::Passthrough {
            return Ok(None);
        }
        let Some(key) = msg.key() else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(key.len() + 64);
        let (plan, datum) = match &rc.raw_key {
            Some(p) => (p.clone(), key),
            None => {
                self.framed_key(rc, key, msg.topic(), target, &mut out)
                    .await?
            }
        };
        plan.apply_key(datum, &mut out)?;
        Ok(Some(out))
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
