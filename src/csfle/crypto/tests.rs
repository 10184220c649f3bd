//! Field ciphertexts, DEK protos and base64 of `super`. The golden file and the
//! upstream vectors' whole chain (KEK → wrapped DEK → field) are in
//! `csfle::local_kms`'s tests.

use super::*;

/// Hex, spaces allowed between fields.
fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

fn proto(alg: Algorithm, key: &[u8]) -> Vec<u8> {
    let mut p = vec![((alg.key_field() << 3) | 2) as u8, key.len() as u8];
    p.extend_from_slice(key);
    p
}

fn dek(alg: Algorithm) -> Dek {
    let key: Vec<u8> = (0..alg.key_len() as u8).collect();
    Dek::from_proto(alg, &proto(alg, &key)).unwrap()
}

const ALL: [Algorithm; 3] = [
    Algorithm::Aes128Gcm,
    Algorithm::Aes256Gcm,
    Algorithm::Aes256Siv,
];

#[test]
fn algorithm_names_round_trip_and_unknown_names_are_refused() {
    for alg in ALL {
        assert_eq!(alg.name().parse::<Algorithm>(), Ok(alg));
        assert_eq!(alg.to_string(), alg.name());
    }
    assert_eq!(Algorithm::default(), Algorithm::Aes256Gcm);
    assert_eq!(Algorithm::Aes256Gcm.name(), "AES256_GCM");
    for bad in [
        "aes256_gcm",
        "AES256_GCM_RAW",
        "AES128_SIV",
        " AES256_GCM",
        "",
    ] {
        let err = bad.parse::<Algorithm>().unwrap_err();
        assert_eq!(err, CsfleError::UnknownAlgorithm(bad.to_owned()));
        assert!(err.to_string().contains("AES256_SIV"), "{err}");
    }
    assert!(Algorithm::Aes256Siv.is_deterministic());
    assert!(!Algorithm::Aes128Gcm.is_deterministic());
}

#[test]
fn protos_parse_and_serialize_as_tink_does() {
    let gcm256 = h("1a20000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
    let gcm128 = h("1a10000102030405060708090a0b0c0d0e0f");
    let mut siv = h("1240");
    siv.extend(0..64u8);
    for (alg, p) in [
        (Algorithm::Aes256Gcm, &gcm256),
        (Algorithm::Aes128Gcm, &gcm128),
        (Algorithm::Aes256Siv, &siv),
    ] {
        let d = Dek::from_proto(alg, p).unwrap();
        assert_eq!(d.algorithm(), alg);
        assert_eq!(d.to_proto().as_slice(), p.as_slice(), "{alg}");
        // An explicit version 0, or unknown fields of every wire type, are accepted
        // (Tink accepts them too) and dropped on reserialization.
        let mut extra = h("0800");
        extra.extend_from_slice(p);
        extra.extend(h("2005 2d01020304 290102030405060708 3203616263"));
        let d = Dek::from_proto(alg, &extra).unwrap();
        assert_eq!(d.to_proto().as_slice(), p.as_slice(), "{alg}");
    }
}

#[test]
fn bad_protos_are_refused_with_the_reason() {
    let key32: Vec<u8> = (0..32).collect();
    let refused = |alg: Algorithm, p: &[u8], why: &str| match Dek::from_proto(alg, p) {
        Err(CsfleError::KeyProto { algorithm, reason }) => {
            assert_eq!(algorithm, alg.name());
            assert!(reason.contains(why), "{}: {reason:?}", hex::encode(p));
        }
        other => panic!("{} accepted: {other:?}", hex::encode(p)),
    };
    let g = Algorithm::Aes256Gcm;
    let mut v1 = h("0801");
    v1.extend(proto(g, &key32));
    refused(g, &v1, "version 1");
    refused(g, &proto(g, &key32[..31]), "31 bytes");
    // A 16-byte key is AES128_GCM, not AES256_GCM: the declared algorithm rules.
    refused(g, &proto(g, &key32[..16]), "16 bytes");
    refused(Algorithm::Aes128Gcm, &proto(g, &key32), "32 bytes");
    refused(
        Algorithm::Aes256Siv,
        &proto(Algorithm::Aes256Siv, &key32),
        "32 bytes",
    );
    let mut twice = proto(g, &key32);
    twice.extend(proto(g, &key32));
    refused(g, &twice, "more than once");
    refused(g, b"", "no key_value");
    refused(g, &h("0800"), "no key_value");
    // A GCM-shaped proto (field 3) is not an AES-SIV key, and the reverse.
    refused(Algorithm::Aes256Siv, &proto(g, &key32), "no key_value");
    let mut siv_shaped = h("1220");
    siv_shaped.extend(&key32);
    refused(g, &siv_shaped, "no key_value");
    refused(g, &h("0a00"), "wire type 2");
    refused(g, &h("1d00000000"), "wire type 5");
    refused(g, &h("00"), "field number 0");
    refused(g, &h("1b"), "wire type 3"); // a group
    refused(g, &h("2e"), "wire type 6");
    refused(g, &h("1affffffffffffffffff01"), "bytes with only");
    refused(g, &h("08ffffffffffffffffff02"), "overflows");
    refused(g, &h("08ffffffffffffffffffff01"), "overflows");
    // Every truncation fails cleanly, never panics.
    let full = proto(g, &key32);
    for n in 0..full.len() {
        assert!(Dek::from_proto(g, &full[..n]).is_err(), "{n}");
    }
}

#[test]
fn upstream_field_ciphertexts_decrypt() {
    // confluent-kafka-python test_avro_serdes.py (notes §7.1): the DEK protos as
    // unwrapped from their EKMs, and the f1 field text of each Kafka value.
    let cases = [
        (
            Algorithm::Aes256Gcm,
            "1a2041e5234c24a6a4f85b1d8237e99a12df8722f0c21837556acd0ec7adde5869cf",
            "zgy/jFNMV/eFilaHrMyeBgdaVzrR0udGeotW8cA/Jal7ukr+M/yz",
            None,
        ),
        (
            Algorithm::Aes256Siv,
            "12409b971301e8ef5f0d9ce82e8cb28ef8fb14fa74944f4e5a958f598389958e1e392b76c3e2\
             13b4a726c8437e3f0ee4a137bde3f4b8990e07aa8a050c8e7115498f",
            "D6YtxrlBnkTWW9N6Vbk3IInjWH81xmYh3k4d",
            None,
        ),
        (
            Algorithm::Aes256Gcm,
            "1a2008d571545a5c3517771440b4a8fe1fd2283b4a2272e12e867c9b6761ee0e9666",
            "AAAAAAG4HI6b1nXPXqLyG8cII35NHQseqqUCd+IeLeFVAeNpSS3fxPnJ32A=",
            Some(1),
        ),
    ];
    for (alg, p, text, version) in cases {
        let d = Dek::from_proto(alg, &h(p)).unwrap();
        assert_eq!(hex::encode(d.to_proto()), p);
        let ct = decode_text(text).unwrap();
        assert_eq!(encode_text(&ct), text);
        let pt = d.decrypt(&ct, version.is_some()).unwrap();
        assert_eq!(pt.as_slice(), b"hello world", "{text}");
        if let Some(v) = version {
            assert_eq!(version_of(&ct), Ok(v));
        }
        if alg.is_deterministic() {
            let mut again = Vec::new();
            d.encrypt(b"hello world", version, &mut again).unwrap();
            assert_eq!(encode_text(&again), text);
        }
    }
}

#[test]
fn aes128_gcm_matches_an_independent_implementation() {
    // Python `cryptography` AESGCM (key 00..0f, IV a0..ab, aad b""), decrypted by
    // Tink 1.16.1's AesGcmKey primitive built from the proto below.
    let d = Dek::from_proto(
        Algorithm::Aes128Gcm,
        &h("1a10000102030405060708090a0b0c0d0e0f"),
    )
    .unwrap();
    let iv: [u8; 12] = h("a0a1a2a3a4a5a6a7a8a9aaab").try_into().unwrap();
    let want = "a0a1a2a3a4a5a6a7a8a9aaabc2e354d711a94465f814d1f33c9f410ec47de7ea09dad95279d8e1";
    let mut ct = Vec::new();
    d.encrypt_with_iv(&iv, b"hello world", None, &mut ct)
        .unwrap();
    assert_eq!(hex::encode(&ct), want);
    assert_eq!(
        encode_text(&ct),
        "oKGio6SlpqeoqaqrwuNU1xGpRGX4FNHzPJ9BDsR95+oJ2tlSedjh"
    );
    assert_eq!(
        d.decrypt(&h(want), false).unwrap().as_slice(),
        b"hello world"
    );
}

#[test]
fn round_trips_with_and_without_prefix_appending_to_out() {
    for alg in ALL {
        let d = dek(alg);
        for pt in [&b""[..], b"x", b"hello world", &[0xffu8; 1000][..]] {
            for version in [None, Some(0), Some(1), Some(u32::MAX)] {
                let mut out = b"kept".to_vec();
                d.encrypt(pt, version, &mut out).unwrap();
                assert_eq!(&out[..4], b"kept");
                let ct = &out[4..];
                let prefix = if version.is_some() {
                    VERSION_PREFIX_LEN
                } else {
                    0
                };
                assert_eq!(ct.len(), prefix + alg.overhead() + pt.len(), "{alg}");
                if let Some(v) = version {
                    assert_eq!(version_of(ct), Ok(v));
                    assert_eq!(&ct[..5], [&[0u8][..], &v.to_be_bytes()].concat());
                }
                assert_eq!(d.decrypt(ct, version.is_some()).unwrap().as_slice(), pt);
                // The wrong prefix setting never yields a plaintext.
                assert!(
                    d.decrypt(ct, version.is_none()).is_err(),
                    "{alg} {version:?}"
                );
            }
        }
    }
}

#[test]
fn gcm_is_randomized_and_siv_deterministic() {
    for alg in ALL {
        let d = dek(alg);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        d.encrypt(b"same", None, &mut a).unwrap();
        d.encrypt(b"same", None, &mut b).unwrap();
        assert_eq!(a == b, alg.is_deterministic(), "{alg}");
    }
}

#[test]
fn generated_deks_are_fresh_and_serialize() {
    for alg in ALL {
        let (a, b) = (Dek::generate(alg).unwrap(), Dek::generate(alg).unwrap());
        assert_eq!(a.to_proto().len(), 2 + alg.key_len());
        assert_ne!(a.to_proto(), b.to_proto());
        let again = Dek::from_proto(alg, &a.to_proto()).unwrap();
        let mut ct = Vec::new();
        a.encrypt(b"pt", Some(3), &mut ct).unwrap();
        assert_eq!(again.decrypt(&ct, true).unwrap().as_slice(), b"pt");
        assert!(b.decrypt(&ct, true).is_err());
    }
}

#[test]
fn every_flipped_bit_is_detected() {
    for alg in ALL {
        let d = dek(alg);
        let mut ct = Vec::new();
        d.encrypt(b"abc", Some(7), &mut ct).unwrap();
        for i in 0..ct.len() * 8 {
            let mut bad = ct.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let r = d.decrypt(&bad, true);
            match i / 8 {
                0 => assert_eq!(r, Err(CsfleError::VersionPrefix(1 << (i % 8)))),
                // Confluent's format does not authenticate the version: a flip there
                // only changes which DEK version the reader fetches (and that DEK
                // then fails). `decrypt` itself skips it.
                1..=4 => {
                    assert_ne!(version_of(&bad), Ok(7));
                    assert_eq!(r.unwrap().as_slice(), b"abc");
                }
                _ => assert_eq!(r, Err(CsfleError::Authentication), "{alg} bit {i}"),
            }
        }
        // Without a prefix every bit is authenticated.
        let mut ct = Vec::new();
        d.encrypt(b"abc", None, &mut ct).unwrap();
        for i in 0..ct.len() * 8 {
            let mut bad = ct.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(d.decrypt(&bad, false), Err(CsfleError::Authentication));
        }
    }
}

#[test]
fn a_wrong_prefix_byte_is_refused() {
    let d = dek(Algorithm::Aes256Gcm);
    let mut ct = Vec::new();
    d.encrypt(b"abc", Some(1), &mut ct).unwrap();
    for b in 1..=255u8 {
        ct[0] = b;
        assert_eq!(d.decrypt(&ct, true), Err(CsfleError::VersionPrefix(b)));
        assert_eq!(version_of(&ct), Err(CsfleError::VersionPrefix(b)));
    }
}

#[test]
fn truncated_inputs_fail_without_panicking() {
    for alg in ALL {
        let d = dek(alg);
        for version in [None, Some(2)] {
            let mut ct = Vec::new();
            d.encrypt(b"hello", version, &mut ct).unwrap();
            for n in 0..ct.len() {
                let r = d.decrypt(&ct[..n], version.is_some());
                assert!(r.is_err(), "{alg} {version:?} {n}");
                let min = if version.is_some() { 5 } else { 0 } + alg.overhead();
                if n < min {
                    assert!(matches!(r, Err(CsfleError::TooShort { .. })), "{r:?}");
                }
            }
        }
    }
    assert!(matches!(
        version_of(&[0, 0, 0, 1]),
        Err(CsfleError::TooShort { len: 4, min: 5, .. })
    ));
    assert_eq!(version_of(&[0, 0, 0, 1, 2]), Ok(258));
}

#[test]
fn base64_is_strict_standard_padded() {
    assert_eq!(encode_text(&[0xfb, 0xff]), "+/8=");
    assert_eq!(decode_text("+/8="), Ok(vec![0xfb, 0xff]));
    assert_eq!(decode_text(""), Ok(vec![]));
    for bad in [
        "+/8",    // missing padding
        "-_8=",   // URL-safe alphabet
        "+/8==",  // too much padding
        "+/9=",   // non-zero trailing bits (non-canonical)
        " +/8=",  // whitespace
        "+/8=\n", // newline
        "hello world",
    ] {
        let err = decode_text(bad).unwrap_err();
        assert_eq!(err, CsfleError::Base64 { len: bad.len() }, "{bad:?}");
        // The text may be a plaintext that was never encrypted: never echoed.
        assert!(!err.to_string().contains(bad.trim()), "{err}");
    }
}

#[test]
fn debug_and_errors_never_show_key_bytes() {
    let key: Vec<u8> = (0xc0..0xe0).collect();
    let d = Dek::from_proto(Algorithm::Aes256Gcm, &proto(Algorithm::Aes256Gcm, &key)).unwrap();
    let dbg = format!("{d:?}");
    assert_eq!(dbg, "Dek { algorithm: Aes256Gcm, .. }");
    let e = Dek::from_proto(
        Algorithm::Aes256Gcm,
        &proto(Algorithm::Aes256Gcm, &key[..31]),
    )
    .unwrap_err()
    .to_string();
    assert!(!e.contains("c0c1") && !e.contains("192"), "{e}");
}

#[test]
fn deks_are_shareable_across_threads() {
    fn check<T: Send + Sync>() {}
    check::<Dek>();
}
