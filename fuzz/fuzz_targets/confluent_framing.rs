//! Confluent Schema Registry framing of untrusted Kafka values: parsing must
//! return errors, never panic; what parses frames back to the same bytes.
//! Assertion messages never contain input bytes.

#![no_main]

use fieldcrypt::kafka::wire::{frame_header, parse, WireError, HEADER_LEN, MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok((id, datum)) => {
            assert_eq!(datum.len() + HEADER_LEN, data.len());
            let mut v = Vec::with_capacity(data.len());
            frame_header(id, &mut v);
            assert_eq!(v.len(), HEADER_LEN);
            v.extend_from_slice(datum);
            assert!(v == data, "framed value does not rebuild to the same bytes");
        }
        Err(e) => {
            match e {
                WireError::TooShort(n) => assert!(n == data.len() && n < HEADER_LEN),
                WireError::BadMagic => assert!(data.len() >= HEADER_LEN && data[0] != MAGIC),
            }
            let _ = e.to_string();
        }
    }
});
