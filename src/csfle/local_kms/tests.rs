//! The local-kms KEK and wrap, and the whole chain (secret → KEK → wrapped DEK →
//! DEK proto → field ciphertext → text) against what Confluent's Python client
//! (Tink) wrote: `tests/golden/csfle_vectors.json` and the upstream vectors.

use serde_json::Value;

use super::*;
use crate::csfle::crypto::{decode_text, encode_text, version_of, Algorithm, Dek};

const GOLDEN: &str = include_str!("../../../tests/golden/csfle_vectors.json");

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn b64(s: &str) -> Vec<u8> {
    decode_text(s).unwrap()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

fn iv12(hex_iv: &str) -> [u8; 12] {
    h(hex_iv).try_into().unwrap()
}

/// Avro's zigzag varint of a non-negative length.
fn avro_len(n: usize, out: &mut Vec<u8>) {
    let mut z = (n as u64) << 1;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[test]
fn kek_derivation_matches_hkdf() {
    assert_eq!(
        hex::encode(kek_from_secret("mysecret")),
        "1ae4d97ac1e81594bfd1993c1a75ee36"
    );
    // RFC 5869 A.3 (no salt, no info), first 16 bytes of its OKM.
    assert_eq!(
        hex::encode(kek_from_secret(&"\x0b".repeat(22))),
        "8da4e775a563c18f715f802a063c5a31"
    );
    // Python hmac/hashlib, the same construction: UTF-8 of the secret is the IKM.
    assert_eq!(
        hex::encode(kek_from_secret("")),
        "eb70f01dede9afafa449eee1b1286504"
    );
    assert_eq!(
        hex::encode(kek_from_secret("pässwörd")),
        "85e22d638beb2805b33774d7e3150269"
    );
}

#[test]
fn golden_vectors_from_the_python_client() {
    let g: Value = serde_json::from_str(GOLDEN).unwrap();
    let secret = s(&g["local_kms"], "secret");
    let kek16 = kek_from_secret(secret);
    assert_eq!(hex::encode(*kek16), s(&g["local_kms"], "kek16_hex"));
    let kek = LocalKek::new(&kek16);

    let deks = g["deks"].as_object().unwrap();
    assert_eq!(deks.len(), 2);
    for (name, d) in deks {
        let alg: Algorithm = name.parse().unwrap();
        let proto = h(s(d, "tink_key_proto_hex"));
        assert_eq!(&proto[2..], h(s(d, "raw_key_hex")).as_slice(), "{name}");
        // Tink's own wrap (random IV) unwraps; the fixed-IV wrap is reproduced.
        let unwrapped = kek.unwrap(&b64(s(d, "wrapped_by_tink_b64"))).unwrap();
        assert_eq!(unwrapped.as_slice(), proto.as_slice(), "{name}");
        let fixed = &d["wrapped_fixed_iv"];
        let ekm = b64(s(fixed, "encrypted_key_material_b64"));
        assert_eq!(kek.unwrap(&ekm).unwrap().as_slice(), proto.as_slice());
        let rewrapped = kek.wrap_with_iv(&iv12(s(fixed, "iv_hex")), &proto).unwrap();
        assert_eq!(rewrapped, ekm, "{name}");
        let dek = Dek::from_proto(alg, &unwrapped).unwrap();
        assert_eq!(dek.to_proto().as_slice(), proto.as_slice(), "{name}");
    }

    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    let mut fields_checked = 0;
    for case in cases {
        let name = s(case, "name");
        let alg: Algorithm = s(case, "algorithm").parse().unwrap();
        let prefixed = case["dek_version_prefix"].as_bool().unwrap();
        let version = u32::try_from(case["dek_version"].as_u64().unwrap()).unwrap();
        let schema_id = u32::try_from(case["schema_id"].as_u64().unwrap()).unwrap();
        let proto = kek
            .unwrap(&b64(s(case, "dek_encrypted_key_material_b64")))
            .unwrap();
        assert_eq!(
            hex::encode(&proto),
            s(&deks[alg.name()], "tink_key_proto_hex"),
            "{name}"
        );
        let dek = Dek::from_proto(alg, &proto).unwrap();
        assert_eq!(dek.to_proto(), proto, "{name}");
        let iv = case.get("nonce_hex").map(|n| iv12(n.as_str().unwrap()));
        assert_eq!(iv.is_none(), alg.is_deterministic(), "{name}");

        let records = case["records"].as_array().unwrap();
        assert_eq!(records.len(), 3);
        for record in records {
            let mut value = vec![0u8];
            value.extend_from_slice(&schema_id.to_be_bytes());
            for field in ["s", "b"] {
                let f = &record["fields"][field];
                let pt = h(s(f, "plaintext_hex"));
                let ct = h(s(f, "ciphertext_hex"));
                assert_eq!(dek.decrypt(&ct, prefixed).unwrap().as_slice(), pt, "{name}");
                if prefixed {
                    assert_eq!(version_of(&ct), Ok(version), "{name}");
                }
                let mut again = Vec::new();
                dek.encrypt_with_iv(
                    &iv.unwrap_or_default(),
                    &pt,
                    prefixed.then_some(version),
                    &mut again,
                )
                .unwrap();
                assert_eq!(hex::encode(&again), hex::encode(&ct), "{name} {field}");
                let on_wire = match s(f, "type") {
                    "string" => {
                        let text = s(f, "encrypted_text");
                        assert_eq!(decode_text(text).unwrap(), ct, "{name}");
                        assert_eq!(encode_text(&ct), text, "{name}");
                        assert_eq!(
                            String::from_utf8(pt.clone()).unwrap(),
                            record["plaintext"]["s"].as_str().unwrap()
                        );
                        text.as_bytes().to_vec()
                    }
                    "bytes" => {
                        assert_eq!(pt, b64(s(&record["plaintext"]["b"], "$bytes")));
                        ct
                    }
                    other => panic!("field type {other}"),
                };
                avro_len(on_wire.len(), &mut value);
                value.extend_from_slice(&on_wire);
                fields_checked += 1;
            }
            // The record is Confluent-framed Avro of exactly these two field values.
            assert_eq!(hex::encode(value), s(record, "kafka_value_hex"), "{name}");
        }
    }
    assert_eq!(fields_checked, 24);
}

#[test]
fn upstream_vectors_through_the_whole_chain() {
    // confluent-kafka-python test_avro_serdes.py *_f1_preserialized (notes §7.1):
    // secret "mysecret", schema id 1, record {"f1": "hello world"}.
    let kek = LocalKek::from_secret("mysecret");
    let cases = [
        (
            Algorithm::Aes256Gcm,
            "07V2ndh02DA73p+dTybwZFm7DKQSZN1tEwQh+FoX1DZLk4Yj2LLu4omYjp/84tAg3BYlkfGSz+zZacJHIE4=",
            "1a2041e5234c24a6a4f85b1d8237e99a12df8722f0c21837556acd0ec7adde5869cf",
            "0000000001687a67792f6a464e4d562f6546696c6148724d796542676461567a7252307564\
             47656f74573863412f4a616c37756b722b4d2f797a",
            None,
        ),
        (
            Algorithm::Aes256Siv,
            "YSx3DTlAHrmpoDChquJMifmPntBzxgRVdMzgYL82rgWBKn7aUSnG+WIu9ozBNS3y2vXd++mBtK07\
             w4/W/G6w0da39X9hfOVZsGnkSvry/QRht84V8yz3dqKxGMOK5A==",
            "12409b971301e8ef5f0d9ce82e8cb28ef8fb14fa74944f4e5a958f598389958e1e392b76c3e2\
             13b4a726c8437e3f0ee4a137bde3f4b8990e07aa8a050c8e7115498f",
            "0000000001484436597478726c426e6b545757394e3656626b3349496e6a57483831786d59\
             68336b3464",
            None,
        ),
        (
            Algorithm::Aes256Gcm,
            "W/v6hOQYq1idVAcs1pPWz9UUONMVZW4IrglTnG88TsWjeCjxmtRQ4VaNe/I5dCfm2zyY9Cu0nqdvqImtUk4=",
            "1a2008d571545a5c3517771440b4a8fe1fd2283b4a2272e12e867c9b6761ee0e9666",
            "000000000178414141414141473448493662316e585058714c79473863494933354e485173\
             6571715543642b49654c65465641654e705353336678506e4a3332413d",
            Some(1),
        ),
    ];
    for (alg, ekm, proto, value, version) in cases {
        let wrapped = b64(ekm);
        assert_eq!(wrapped.len(), 12 + 2 + alg.key_len() + 16);
        let unwrapped = kek.unwrap(&wrapped).unwrap();
        assert_eq!(hex::encode(&unwrapped), proto);
        let dek = Dek::from_proto(alg, &unwrapped).unwrap();
        let value = h(value);
        assert_eq!(value[..5], [0, 0, 0, 0, 1]);
        // One Avro string: zigzag length (one byte here), then the base64 text.
        let text = std::str::from_utf8(&value[6..]).unwrap();
        assert_eq!(usize::from(value[5] >> 1), text.len());
        let ct = decode_text(text).unwrap();
        if let Some(v) = version {
            assert_eq!(version_of(&ct), Ok(v));
        }
        let pt = dek.decrypt(&ct, version.is_some()).unwrap();
        assert_eq!(pt.as_slice(), b"hello world");
    }
}

#[test]
fn wrap_round_trips_and_is_randomized() {
    let kek = LocalKek::from_secret("mysecret");
    for alg in [
        Algorithm::Aes128Gcm,
        Algorithm::Aes256Gcm,
        Algorithm::Aes256Siv,
    ] {
        let dek = Dek::generate(alg).unwrap();
        let proto = dek.to_proto();
        let (a, b) = (kek.wrap(&proto).unwrap(), kek.wrap(&proto).unwrap());
        // 46, 62 and 94 bytes, as the notes give for Tink's wraps.
        assert_eq!(a.len(), 12 + proto.len() + 16);
        assert_ne!(a, b);
        assert_eq!(kek.unwrap(&a).unwrap(), proto);
        assert_eq!(kek.unwrap(&b).unwrap(), proto);
    }
}

#[test]
fn bad_wraps_are_refused_without_panicking() {
    let kek = LocalKek::from_secret("mysecret");
    let g: Value = serde_json::from_str(GOLDEN).unwrap();
    let ekm = b64(s(&g["deks"]["AES256_GCM"], "wrapped_by_tink_b64"));
    assert!(kek.unwrap(&ekm).is_ok());
    assert_eq!(
        LocalKek::from_secret("othersecret").unwrap(&ekm),
        Err(CsfleError::Unwrap)
    );
    for i in 0..ekm.len() * 8 {
        let mut bad = ekm.clone();
        bad[i / 8] ^= 1 << (i % 8);
        assert_eq!(kek.unwrap(&bad), Err(CsfleError::Unwrap), "bit {i}");
    }
    for n in 0..ekm.len() {
        let r = kek.unwrap(&ekm[..n]);
        if n < 28 {
            assert!(matches!(r, Err(CsfleError::TooShort { .. })), "{n}");
        } else {
            assert_eq!(r, Err(CsfleError::Unwrap), "{n}");
        }
    }
}

#[test]
fn debug_never_shows_the_kek() {
    assert_eq!(
        format!("{:?}", LocalKek::from_secret("mysecret")),
        "LocalKek(..)"
    );
}
