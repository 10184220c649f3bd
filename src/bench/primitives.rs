//! The primitives micro-benchmark: each cryptographic primitive the encrypt
//! transform calls (AES-256-GCM seal, AES-256-SIV seal, HMAC-SHA256, a 96-bit
//! nonce from the thread-local CSPRNG) timed on its own, at the field sizes and
//! associated-data lengths a schema's records really have, on the AES path this
//! process runs ([`crate::crypto::accel::path`]). Their sum per record is the
//! floor under the transform's crypto cost; `fieldcrypt bench` prints the ratio.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::crypto::accel::{self, Gcm256};
use crate::crypto::format::{Algorithm, HEADER_LEN};
use crate::crypto::siv::Siv;

/// A primitive called by the encrypt transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Primitive {
    /// Randomized mode: AES-256-GCM over the field's Avro bytes.
    GcmSeal,
    /// Deterministic mode: AES-256-SIV over the canonical bytes.
    SivSeal,
    /// A blind index: HMAC-SHA256 of the value.
    Hmac,
    /// A GCM nonce: 12 bytes from the thread-local CSPRNG.
    Nonce,
}

impl Primitive {
    fn name(self) -> &'static str {
        match self {
            Primitive::GcmSeal => "AES-256-GCM seal",
            Primitive::SivSeal => "AES-256-SIV seal",
            Primitive::Hmac => "HMAC-SHA256",
            Primitive::Nonce => "nonce (12 B, CSPRNG)",
        }
    }
}

/// One call of a primitive: which, over how many bytes, with how much
/// associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    pub primitive: Primitive,
    pub len: usize,
    pub ad_len: usize,
}

impl Call {
    /// The calls the encrypt transform made for one ciphertext of field
    /// `context` (header parsed, `ct` the whole field ciphertext), `indexed` when
    /// the field also gets a blind index.
    pub fn for_ciphertext(
        algorithm: Algorithm,
        ct_len: usize,
        context: &str,
        indexed: bool,
    ) -> Vec<Call> {
        let len = ct_len.saturating_sub(algorithm.overhead());
        let ad_len = HEADER_LEN + context.len();
        let mut calls = Vec::with_capacity(3);
        match algorithm {
            Algorithm::Aes256Gcm => {
                calls.push(Call {
                    primitive: Primitive::Nonce,
                    len: 12,
                    ad_len: 0,
                });
                calls.push(Call {
                    primitive: Primitive::GcmSeal,
                    len,
                    ad_len,
                });
            }
            Algorithm::Aes256Siv => calls.push(Call {
                primitive: Primitive::SivSeal,
                len,
                ad_len,
            }),
        }
        if indexed {
            // The index hashes the value, which the field's Avro bytes hold
            // (a string's or bytes' length prefix aside): the same HMAC blocks.
            calls.push(Call {
                primitive: Primitive::Hmac,
                len,
                ad_len: 0,
            });
        }
        calls
    }
}

/// One measured row: a call, its time, and how often a record makes it.
#[derive(Debug, Clone)]
pub struct Row {
    pub call: Call,
    pub ns: f64,
    pub per_record: f64,
}

/// The measured primitives of one schema's records.
#[derive(Debug, Clone)]
pub struct Primitives {
    pub path: accel::Path,
    pub rows: Vec<Row>,
}

impl Primitives {
    /// The primitives' time per record: the floor under the crypto cost.
    pub fn sum_ns(&self) -> f64 {
        self.rows.iter().map(|r| r.ns * r.per_record).sum()
    }

    /// The table `fieldcrypt bench` prints: one row per primitive, its calls'
    /// sizes as ranges and its time per call weighted by how often each size
    /// occurs (the sum is over every size measured).
    pub fn table(&self) -> String {
        let mut s = format!(
            "primitives on the {} path, at this schema's field sizes (best of the rounds):\n\n\
             {:<22} {:>9} {:>9} {:>9} {:>11} {:>10}\n",
            self.path.describe(),
            "primitive",
            "bytes",
            "AD bytes",
            "ns/call",
            "per record",
            "ns/record"
        );
        for g in self.grouped() {
            s.push_str(&format!(
                "{:<22} {:>9} {:>9} {:>9.1} {:>11.2} {:>10.1}\n",
                g.primitive.name(),
                range(g.len),
                range(g.ad_len),
                g.ns_per_record / g.per_record,
                g.per_record,
                g.ns_per_record
            ));
        }
        s.push_str(&format!(
            "{:<22} {:>9} {:>9} {:>9} {:>11} {:>10.1}\n",
            "sum",
            "",
            "",
            "",
            "",
            self.sum_ns()
        ));
        s
    }

    /// The rows summed per primitive.
    pub fn grouped(&self) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        for r in &self.rows {
            let g = match groups.iter_mut().find(|g| g.primitive == r.call.primitive) {
                Some(g) => g,
                None => {
                    groups.push(Group {
                        primitive: r.call.primitive,
                        len: (r.call.len, r.call.len),
                        ad_len: (r.call.ad_len, r.call.ad_len),
                        per_record: 0.0,
                        ns_per_record: 0.0,
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            g.len = (g.len.0.min(r.call.len), g.len.1.max(r.call.len));
            g.ad_len = (g.ad_len.0.min(r.call.ad_len), g.ad_len.1.max(r.call.ad_len));
            g.per_record += r.per_record;
            g.ns_per_record += r.ns * r.per_record;
        }
        groups
    }
}

/// One primitive's calls in a record, all sizes together.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub primitive: Primitive,
    /// Smallest and largest input.
    pub len: (usize, usize),
    pub ad_len: (usize, usize),
    pub per_record: f64,
    pub ns_per_record: f64,
}

fn range((lo, hi): (usize, usize)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// Times each distinct call in `calls` (with how many times per record it
/// occurs), `rounds` rounds of at least `min_time` each, keeping the best.
pub fn measure(calls: &BTreeMap<Call, f64>, rounds: usize, min_time: Duration) -> Primitives {
    let mut key = [0u8; 64];
    rand::rng().fill_bytes(&mut key);
    let gcm = Gcm256::new(&key[..32]).expect("32-byte key");
    let siv = Siv::new(&key).expect("64-byte key");
    let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key[..32]).expect("any length");
    let mut rows = Vec::new();
    for (&call, &per_record) in calls {
        let mut buf = vec![0x5au8; call.len];
        let ad = vec![0xa5u8; call.ad_len];
        // The transform computes S2V over a field's associated data once per
        // field and key (`DeterministicKey::field_prefix`): not per seal.
        let prefix = siv.prefix(&[&ad]);
        let nonce = [7u8; 12];
        let mut one = || match call.primitive {
            Primitive::GcmSeal => {
                black_box(
                    gcm.seal(&nonce, &[black_box(&ad)], black_box(&mut buf))
                        .ok(),
                );
            }
            Primitive::SivSeal => {
                black_box(siv.seal_after(black_box(&prefix), black_box(&mut buf)));
            }
            Primitive::Hmac => {
                let mut m = mac.clone();
                m.update(black_box(&buf));
                black_box(m.finalize().into_bytes());
            }
            Primitive::Nonce => {
                let mut n = [0u8; 12];
                rand::rng().fill_bytes(&mut n);
                black_box(n);
            }
        };
        let mut best = f64::MAX;
        // Each call's rounds are short: a schema has dozens of distinct calls.
        for _ in 0..rounds.max(1) {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < min_time {
                for _ in 0..1000 {
                    one();
                }
                n += 1000;
            }
            best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
        }
        rows.push(Row {
            call,
            ns: best,
            per_record,
        });
    }
    Primitives {
        path: accel::path(),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ciphertext_tells_which_primitives_made_it() {
        let gcm = Call::for_ciphertext(Algorithm::Aes256Gcm, 46 + 20, "R.f", false);
        assert_eq!(
            gcm,
            vec![
                Call {
                    primitive: Primitive::Nonce,
                    len: 12,
                    ad_len: 0
                },
                Call {
                    primitive: Primitive::GcmSeal,
                    len: 20,
                    ad_len: HEADER_LEN + 3
                },
            ]
        );
        let siv = Call::for_ciphertext(Algorithm::Aes256Siv, 34 + 7, "R.email", true);
        assert_eq!(
            siv,
            vec![
                Call {
                    primitive: Primitive::SivSeal,
                    len: 7,
                    ad_len: HEADER_LEN + 7
                },
                Call {
                    primitive: Primitive::Hmac,
                    len: 7,
                    ad_len: 0
                },
            ]
        );
    }

    #[test]
    fn rows_group_per_primitive_and_keep_the_sum() {
        let row = |primitive, len, ns, per_record| Row {
            call: Call {
                primitive,
                len,
                ad_len: 40,
            },
            ns,
            per_record,
        };
        let p = Primitives {
            path: accel::Path::Portable,
            rows: vec![
                row(Primitive::GcmSeal, 10, 60.0, 1.0),
                row(Primitive::GcmSeal, 20, 90.0, 3.0),
                row(Primitive::Hmac, 20, 100.0, 0.5),
            ],
        };
        let g = p.grouped();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].len, (10, 20));
        assert_eq!(g[0].per_record, 4.0);
        assert_eq!(g[0].ns_per_record, 330.0);
        assert_eq!(p.sum_ns(), 380.0);
        let t = p.table();
        assert!(t.contains("AES-256-GCM seal"), "{t}");
        assert!(t.contains("10-20"), "{t}");
        assert!(t.contains("82.5"), "weighted ns per call: {t}");
        assert!(t.contains("380.0"), "{t}");
    }
}
