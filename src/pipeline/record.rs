//! One Kafka record through the transform: its value encrypted (or decrypted) by
//! the route's schema plan, DEK headers added (or read and removed), everything
//! else — key, other headers, timestamp, tombstones — preserved. A record that
//! cannot be transformed becomes a dead letter; it is never produced to the target
//! with a sensitive field in plaintext.

use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};

use crate::config::{Config, PipelineMode};
use crate::engine::Engine;
use crate::kafka::headers;
use crate::kafka::route::Router;
use crate::keys::KmsError;
use crate::schema::parse_schema_json;
use crate::transform::decrypt::DekSet;
use crate::transform::{Decryptor, Encryptor, TransformErrorKind};

/// What to send for one input record.
pub enum Outcome {
    /// To the route's target topic.
    Produce {
        payload: Option<Vec<u8>>,
        headers: OwnedHeaders,
    },
    /// To the route's dead-letter topic, with this error.
    DeadLetter { code: &'static str, message: String },
}

enum Codec {
    Encrypt { enc: Arc<Encryptor>, scope: String },
    Decrypt { dec: Arc<Decryptor> },
}

/// Per-route transforms, built at start-up.
pub struct Transformer {
    engine: Arc<Engine>,
    routes: Vec<Codec>,
}

impl Transformer {
    /// Builds each route's plan from its `value_schema` file.
    pub fn new(engine: Arc<Engine>, config: &Config, _router: &Router) -> Result<Self, String> {
        let mut routes = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let path = r.value_schema.as_ref().ok_or_else(|| {
                format!(
                    "routes[{i}].value_schema: required (the writer schema of the raw Avro values)"
                )
            })?;
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "routes[{i}].value_schema: cannot read {}: {e}",
                    path.display()
                )
            })?;
            let json = parse_schema_json(&text)
                .map_err(|e| format!("routes[{i}].value_schema {}: {e}", path.display()))?;
            let label = path.display().to_string();
            routes.push(match config.pipeline.mode {
                PipelineMode::Encrypt => Codec::Encrypt {
                    enc: engine.encryptor(&json, &label).map_err(|e| e.to_string())?,
                    // The scope is bound into each DEK's encryption context: one per
                    // route, stable across instances and restarts.
                    scope: format!("route:{}", r.target),
                },
                PipelineMode::Decrypt => Codec::Decrypt {
                    dec: engine.decryptor(&json, &label).map_err(|e| e.to_string())?,
                },
            });
        }
        Ok(Transformer { engine, routes })
    }

    /// Transforms one record of route `route`. `Err` means the KMS failed: the
    /// pipeline must not go on (nothing about this record is wrong).
    pub async fn transform(
        &self,
        msg: &BorrowedMessage<'_>,
        route: usize,
    ) -> Result<Outcome, KmsError> {
        let Some(codec) = self.routes.get(route) else {
            return Ok(dead("no_route", "no transform for this route".into()));
        };
        let Some(value) = msg.payload() else {
            // Tombstones stay tombstones: deletes must reach compacted topics.
            return Ok(Outcome::Produce {
                payload: None,
                headers: copy_headers(msg),
            });
        };
        match codec {
            Codec::Encrypt { enc, scope } => {
                let mut out = Vec::with_capacity(value.len() * 2 + 64);
                if !enc.needs_dek() {
                    return Ok(match enc.encrypt(value, None, &mut out) {
                        Ok(_) => Outcome::Produce {
                            payload: Some(out),
                            headers: copy_headers(msg),
                        },
                        Err(e) => dead(e.code(), e.to_string()),
                    });
                }
                loop {
                    let dek = self.engine.deks.current(scope).await?;
                    let fresh = dek.uses() == 0;
                    match enc.encrypt(value, Some(&dek), &mut out) {
                        Ok(c) => {
                            let mut h = copy_headers(msg);
                            if c.randomized > 0 {
                                let v = headers::encode_dek(dek.wrapped())
                                    .map_err(|e| KmsError::Config(e.to_string()))?;
                                h = h.insert(Header {
                                    key: headers::DEK,
                                    value: Some(&v),
                                });
                            }
                            return Ok(Outcome::Produce {
                                payload: Some(out),
                                headers: h,
                            });
                        }
                        Err(e) if e.kind == TransformErrorKind::DekExhausted && !fresh => continue,
                        Err(e) => return Ok(dead(e.code(), e.to_string())),
                    }
                }
            }
            Codec::Decrypt { dec } => {
                let mut deks = DekSet::new();
                if let Some(hs) = msg.headers() {
                    for h in hs.iter().filter(|h| h.key == headers::DEK) {
                        let w = match h.value.map(headers::decode_dek) {
                            Some(Ok(w)) => w,
                            Some(Err(e)) => return Ok(dead("bad_dek_header", e.to_string())),
                            None => {
                                return Ok(dead(
                                    "bad_dek_header",
                                    "empty fieldcrypt.dek header".into(),
                                ))
                            }
                        };
                        match self.engine.dek_cache.get(&w).await {
                            Ok(k) => {
                                deks.insert(w.id, k);
                            }
                            Err(e) if e.is_retriable() => return Err(e),
                            Err(e) => return Ok(dead("dek_unwrap_failed", e.to_string())),
                        }
                    }
                }
                let mut out = Vec::with_capacity(value.len());
                Ok(match dec.decrypt(value, &deks, &mut out) {
                    Ok(_) => Outcome::Produce {
                        payload: Some(out),
                        headers: copy_headers(msg),
                    },
                    Err(e) => dead(e.code(), e.to_string()),
                })
            }
        }
    }
}

fn dead(code: &'static str, message: String) -> Outcome {
    Outcome::DeadLetter { code, message }
}

/// The record's headers, minus fieldcrypt's own DEK headers (the output gets its
/// own, or none after decryption).
fn copy_headers(msg: &BorrowedMessage<'_>) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(hs) = msg.headers() {
        for h in hs.iter().filter(|h| h.key != headers::DEK) {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    out
}

/// The original headers plus the error and source-position headers.
pub fn dead_letter_headers(msg: &BorrowedMessage<'_>, code: &str, message: &str) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(hs) = msg.headers() {
        for h in hs.iter() {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
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
