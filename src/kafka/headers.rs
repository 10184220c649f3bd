//! Record headers written by fieldcrypt (docs/ENCRYPTION.md, "Kafka records"):
//!
//! - `fieldcrypt.dek`: one header per DEK used by the record's randomized fields, so
//!   any authorised consumer can decrypt with nothing but KMS access. Value:
//!   `0x01 ‖ key id (16) ‖ u16be len ‖ scope ‖ u16be len ‖ KEK id ‖ wrapped blob`.
//! - Dead letters carry `fieldcrypt.error.code`, `fieldcrypt.error.message`,
//!   `fieldcrypt.source.topic`, `fieldcrypt.source.partition` and
//!   `fieldcrypt.source.offset` (UTF-8 text).

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

const DEK_VERSION: u8 = 1;

/// A `fieldcrypt.dek` header that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("fieldcrypt.dek header is damaged: {0}")]
pub struct DekHeaderError(&'static str);

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
