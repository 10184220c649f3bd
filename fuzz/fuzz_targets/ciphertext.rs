//! Field ciphertexts from untrusted records: header parsing and opening with fixed
//! TEST-ONLY keys (AES-256-GCM and AES-SIV) must return errors, never panic, and
//! leave the output untouched on failure. What opens must seal back to the same
//! bytes (same nonce for GCM; SIV is deterministic).
//!
//! Input: one byte picking the field context (`fieldcrypt_fuzz::CONTEXTS`), then
//! the ciphertext. Assertion messages never contain input bytes.

#![no_main]

use std::sync::OnceLock;

use fieldcrypt::crypto::cipher::{DeterministicKey, RandomizedKey};
use fieldcrypt::crypto::format::{associated_data, Algorithm, Header, Version, GCM_NONCE_LEN};
use fieldcrypt::crypto::CryptoError;
use fieldcrypt_fuzz::{gcm_key, siv_key, CONTEXTS, GCM_KEY_ID, SIV_KEY_ID};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static (RandomizedKey, DeterministicKey) {
    static K: OnceLock<(RandomizedKey, DeterministicKey)> = OnceLock::new();
    K.get_or_init(|| (gcm_key(), siv_key()))
}

const PREFIX: &[u8] = b"kept";

fuzz_target!(|data: &[u8]| {
    let Some((&sel, ct)) = data.split_first() else {
        return;
    };
    let context = CONTEXTS[usize::from(sel) % CONTEXTS.len()];
    let (gcm, siv) = keys();

    let header = Header::parse(ct);
    match &header {
        Ok(h) => {
            assert!(ct.len() >= h.algorithm.overhead_in(h.version), "parsed a ciphertext shorter than its overhead");
            assert!(h.to_bytes()[..] == ct[..h.byte_len()], "header does not re-encode to its bytes");
            assert_eq!(Version::from_byte(ct[0]), Some(h.version));
            let mut ad = Vec::new();
            let a = associated_data(&ct[..h.byte_len()], context, &mut ad);
            assert_eq!(a.len(), h.byte_len() + context.len());
        }
        Err(e) => assert!(matches!(e, CryptoError::Malformed(_)), "header error of the wrong kind: {e}"),
    }

    // AES-256-GCM.
    let mut out = PREFIX.to_vec();
    match gcm.open_into(context, ct, &mut out) {
        Ok(()) => {
            let h = header.as_ref().expect("opened a ciphertext whose header does not parse");
            assert_eq!(h.algorithm, Algorithm::Aes256Gcm);
            assert!(h.key.matches(&GCM_KEY_ID));
            let pt = &out[PREFIX.len()..];
            assert_eq!(pt.len() + Algorithm::Aes256Gcm.overhead_in(h.version), ct.len(), "GCM plaintext length");
            let nonce: [u8; GCM_NONCE_LEN] = ct[h.byte_len()..h.byte_len() + GCM_NONCE_LEN].try_into().unwrap();
            let mut again = Vec::new();
            gcm.seal_with_nonce_in(h.version, &nonce, context, pt, &mut again).expect("GCM reseal");
            assert!(again == ct, "GCM plaintext does not seal back to the same ciphertext");
        }
        Err(e) => {
            assert!(out == PREFIX, "failed GCM open changed the output");
            if let Err(he) = &header {
                assert_eq!(&e, he, "GCM open and header parsing disagree");
            }
        }
    }

    // AES-SIV.
    let mut out = PREFIX.to_vec();
    match siv.open_into(context, ct, &mut out) {
        Ok(()) => {
            let h = header.as_ref().expect("opened a ciphertext whose header does not parse");
            assert_eq!(h.algorithm, Algorithm::Aes256Siv);
            assert!(h.key.matches(&SIV_KEY_ID) && h.version == Version::V1);
            let pt = &out[PREFIX.len()..];
            assert_eq!(pt.len() + Algorithm::Aes256Siv.overhead(), ct.len(), "SIV plaintext length");
            let mut again = Vec::new();
            siv.seal_into(context, pt, &mut again).expect("SIV reseal");
            assert!(again == ct, "SIV plaintext does not seal back to the same ciphertext");
        }
        Err(e) => {
            assert!(out == PREFIX, "failed SIV open changed the output");
            if let Err(he) = &header {
                assert_eq!(&e, he, "SIV open and header parsing disagree");
            }
        }
    }
});
