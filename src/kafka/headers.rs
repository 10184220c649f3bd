//! Record headers written by fieldcrypt (docs/ENCRYPTION.md, "Kafka records"):
//!
//! - `fieldcrypt.dek`: one header per DEK used by the record's randomized fields, so
//!   any authorised consumer can decrypt with nothing but KMS access. Value:
//!   `0x01 ‖ key id (16) ‖ u16be len ‖ scope ‖ u16be len ‖ KEK id ‖ wrapped blob`.
//! - Dead letters carry `fieldcrypt.error.code`, `fieldcrypt.error.message`,
//!   `fieldcrypt.source.topic`, `fieldcrypt.source.partition` and
//!   `fieldcrypt.source.offset` (UTF-8 text).
//!
//! The `fieldcrypt.` header namespace is ours: incoming headers in it are dropped
//! (only `fieldcrypt.dek` is read, when decrypting), so a producer cannot forge an
//! error code or a marker. [`read`] is the one way records' headers are read: it
//! refuses names it cannot read exactly (not UTF-8, or holding a NUL byte that
//! librdkafka's C-string API would cut short) instead of passing them on altered.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use rdkafka::message::Headers;
use thiserror::Error;

use crate::crypto::format::KeyId;
use crate::keys::{WrappedDek, WrappedKey};

/// Header carrying one wrapped DEK.
pub const DEK: &str = "fieldcrypt.dek";
/// Dead-letter headers.
pub const ERROR_CODE: &str = "fieldcrypt.error.code";
pub const ERROR_MESSAGE: &str = "fieldcrypt.error.message";
pub const SOURCE_TOPIC: &str = "fieldcrypt.source.topic";
pub const SOURCE_PARTITION: &str = "fieldcrypt.source.partition";
pub const SOURCE_OFFSET: &str = "fieldcrypt.source.offset";

/// On a dead letter: why its original key and headers are missing.
pub const ERROR_HEADERS: &str = "fieldcrypt.error.headers";
/// On a dead letter: why its payload is missing.
pub const ERROR_PAYLOAD: &str = "fieldcrypt.error.payload";
/// The namespace of fieldcrypt's own headers.
pub const RESERVED_PREFIX: &str = "fieldcrypt.";

/// Is this header name in fieldcrypt's namespace?
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

const DEK_VERSION: u8 = 1;

/// A record whose headers cannot be read exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum UnreadableHeaders {
    #[error("a record header name is not UTF-8")]
    NotUtf8,
    #[error("record header {0}'s name contains a NUL byte")]
    NulInName(usize),
}

/// One header as read: its name and value (`None` for a null value).
pub type HeaderRef<'a> = (&'a str, Option<&'a [u8]>);

thread_local! {
    /// Set while [`read`] walks headers, so the panic hook stays quiet about the
    /// panic it expects from rdkafka on a non-UTF-8 name.
    static READING: Cell<bool> = const { Cell::new(false) };
}

/// The headers of a record as (name, value) pairs, in order.
///
/// rdkafka reads names as C strings and panics on non-UTF-8 ones; that panic is
/// caught here (and not printed) and becomes [`UnreadableHeaders::NotUtf8`]. A
/// name with a NUL byte would come back cut short: librdkafka keeps the value
/// right after the name and its terminator, so for a non-empty value the distance
/// between them tells the name's true length, and a mismatch is refused. (An empty
/// or null value leaves no such witness; such a name is taken as librdkafka gives it.)
pub fn read<H: Headers>(headers: Option<&H>) -> Result<Vec<HeaderRef<'_>>, UnreadableHeaders> {
    let Some(hs) = headers else {
        return Ok(Vec::new());
    };
    install_quiet_hook();
    READING.with(|r| r.set(true));
    let all = panic::catch_unwind(AssertUnwindSafe(|| {
        hs.iter().map(|h| (h.key, h.value)).collect::<Vec<_>>()
    }));
    READING.with(|r| r.set(false));
    let all = all.map_err(|_| UnreadableHeaders::NotUtf8)?;
    for (i, (k, v)) in all.iter().enumerate() {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            let gap = (v.as_ptr() as usize).wrapping_sub(k.as_ptr() as usize);
            if gap != k.len() + 1 {
                return Err(UnreadableHeaders::NulInName(i));
            }
        }
    }
    Ok(all)
}

fn install_quiet_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !READING.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// A `fieldcrypt.dek` header that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("fieldcrypt.dek header is damaged: {0}")]
pub struct DekHeaderError(&'static str);

impl DekHeaderError {
    /// What is wrong, without the "damaged" framing (for encoding failures).
    pub fn reason(&self) -> &'static str {
        self.0
    }
}

/// Encodes a wrapped DEK as a header value.
pub fn encode_dek(w: &WrappedDek) -> Result<Vec<u8>, DekHeaderError> {
    let mut v =
        Vec::with_capacity(1 + 16 + 4 + w.scope.len() + w.wrapped.kek.len() + w.wrapped.blob.len());
    v.push(DEK_VERSION);
    v.extend_from_slice(&w.id);
    for s in [w.scope.as_bytes(), w.wrapped.kek.as_bytes()] {
        let n = u16::try_from(s.len())
            .map_err(|_| DekHeaderError("scope or KEK id longer than 65535 bytes"))?;
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(s);
    }
    v.extend_from_slice(&w.wrapped.blob);
    Ok(v)
}

/// Decodes a `fieldcrypt.dek` header value.
pub fn decode_dek(v: &[u8]) -> Result<WrappedDek, DekHeaderError> {
    let err = DekHeaderError;
    let (&version, rest) = v.split_first().ok_or(err("empty"))?;
    if version != DEK_VERSION {
        return Err(err("unknown version"));
    }
    if rest.len() < 16 {
        return Err(err("too short"));
    }
    let (id, mut rest) = rest.split_at(16);
    let mut text = || -> Result<String, DekHeaderError> {
        if rest.len() < 2 {
            return Err(err("too short"));
        }
        let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        if rest.len() < 2 + n {
            return Err(err("too short"));
        }
        let s = std::str::from_utf8(&rest[2..2 + n]).map_err(|_| err("name is not UTF-8"))?;
        rest = &rest[2 + n..];
        Ok(s.to_string())
    };
    let scope = text()?;
    let kek = text()?;
    let id: KeyId = id.try_into().map_err(|_| err("bad key id"))?;
    Ok(WrappedDek {
        id,
        scope,
        wrapped: WrappedKey {
            kek,
            blob: rest.to_vec(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};

    #[test]
    fn headers_are_read_exactly_or_refused() {
        let hs = OwnedHeaders::new()
            .insert(Header {
                key: "trace",
                value: Some(&b"abc"[..]),
            })
            .insert(Header {
                key: "empty",
                value: Some(&b""[..]),
            })
            .insert(Header {
                key: "null",
                value: None::<&[u8]>,
            });
        let got = read(Some(&hs)).unwrap();
        assert_eq!(
            got,
            vec![
                ("trace", Some(&b"abc"[..])),
                ("empty", Some(&b""[..])),
                ("null", None)
            ]
        );
        // librdkafka keeps "a\0b" whole but hands it back as the C string "a".
        // This is also the canary of `read`'s layout assumption (a header's value
        // right after its name and NUL): if librdkafka stored them otherwise, the
        // ordinary headers above would be refused and this one let through.
        let hs = OwnedHeaders::new()
            .insert(Header {
                key: "ok",
                value: Some(&b"1"[..]),
            })
            .insert(Header {
                key: "fieldcrypt.dek\0x",
                value: Some(&b"v"[..]),
            });
        assert_eq!(read(Some(&hs)), Err(UnreadableHeaders::NulInName(1)));
        assert!(is_reserved("fieldcrypt.error.code") && !is_reserved("fieldcrypt"));
    }

    #[test]
    fn dek_headers_round_trip_and_reject_damage() {
        let w = WrappedDek {
            id: [7; 16],
            scope: "orders".into(),
            wrapped: WrappedKey {
                kek: "local:0011223344556677".into(),
                blob: vec![1, 2, 3, 4, 5],
            },
        };
        let v = encode_dek(&w).unwrap();
        assert_eq!(decode_dek(&v).unwrap(), w);
        for cut in 0..v.len() - 5 {
            assert!(decode_dek(&v[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = v.clone();
        bad[0] = 2;
        assert!(decode_dek(&bad).is_err());
    }
}
