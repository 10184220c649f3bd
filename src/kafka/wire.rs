//! Confluent Schema Registry wire format: magic byte 0, a 4-byte big-endian schema
//! id, then the Avro binary datum.

use thiserror::Error;

/// The magic byte that starts every Confluent-framed value.
pub const MAGIC: u8 = 0;
/// Magic byte + schema id.
pub const HEADER_LEN: usize = 5;

/// Why a value is not Confluent-framed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("value is {0} bytes, shorter than the 5-byte Confluent header")]
    TooShort(usize),
    #[error("value does not start with the Confluent magic byte 0 (not Schema Registry framed)")]
    BadMagic,
}

/// Splits a framed value into its schema id and datum.
pub fn parse(value: &[u8]) -> Result<(u32, &[u8]), WireError> {
    if value.len() < HEADER_LEN {
        return Err(WireError::TooShort(value.len()));
    }
    if value[0] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
    Ok((id, &value[HEADER_LEN..]))
}

/// Appends the header for `schema_id`; the datum follows.
pub fn frame_header(schema_id: u32, out: &mut Vec<u8>) {
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_parses() {
        let mut v = Vec::new();
        frame_header(0x0102_0304, &mut v);
        v.extend_from_slice(b"datum");
        assert_eq!(v[..5], [0, 1, 2, 3, 4]);
        assert_eq!(parse(&v).unwrap(), (0x0102_0304, &b"datum"[..]));
        assert_eq!(parse(&v[..4]), Err(WireError::TooShort(4)));
        assert_eq!(parse(b"\x01\0\0\0\x01x"), Err(WireError::BadMagic));
        assert_eq!(parse(&[0, 0, 0, 0, 7]).unwrap(), (7, &b""[..]));
    }
}
