//! The core transform benchmark behind `fieldcrypt bench`: records/s on one core for
//! encrypt and decrypt of generated records, next to a plain apache-avro decode +
//! encode round trip of the same records (cached reader/writer, default
//! validation) and fieldcrypt's own validate-and-copy walk, all measured in the same
//! run. Each figure is the best of several rounds, to damp scheduler noise.
//! [`primitives`] times the cryptographic primitives alone at the same records'
//! field sizes, so the report can say how close the transform is to them.

pub mod primitives;

use std::collections::BTreeMap;

use std::hint::black_box;
use std::time::{Duration, Instant};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::avro::binary::validate;
use crate::engine::Engine;
use crate::sample::Generator;
use crate::transform::decrypt::DekSet;
use futures_util::FutureExt;

/// The DEK scope of the benchmark's records.
const BENCH_SCOPE: &str = "bench";

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Measure {
    pub name: &'static str,
    /// Best rate over the rounds.
    pub records_per_sec: f64,
    /// Median over rounds of this rate / the baseline's rate in the same round.
    pub median_ratio: f64,
}

/// The benchmark's result.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub records: usize,
    pub avg_datum_bytes: f64,
    pub avg_encrypted_bytes: f64,
    pub baseline: Measure,
    pub walk: Measure,
    pub encrypt: Measure,
    pub decrypt: Measure,
    /// The same fields in Confluent's CSFLE format (AES256_GCM), when every one of
    /// them is a string or bytes (the only types that format encrypts).
    pub confluent: Option<(Measure, Measure)>,
    /// The primitives alone, at these records' field sizes.
    pub primitives: primitives::Primitives,
    /// Bytes per record on the wire, each format.
    pub wire: Wire,
}

/// Average bytes per record as a Kafka record carries them: the value (the Avro
/// datum; a registry route adds the same 5-byte framing to every format) and
/// the headers (name + value + the two varint lengths of each).
#[derive(Debug, Clone, Copy, Default)]
pub struct Wire {
    pub plain: f64,
    /// The field ciphertext version the engine writes (`crypto.write_version`).
    pub ours_version: u8,
    pub ours_value: f64,
    /// The value in the other field ciphertext version than the engine writes:
    /// (version, bytes).
    pub ours_other_version: Option<(u8, f64)>,
    /// The `fieldcrypt.dek` header with the wrapped DEK (local KEK here; AWS
    /// KMS wraps into a larger blob, about 180 bytes more).
    pub ours_headers: f64,
    /// Confluent's format: no header, the DEK lives in the DEK Registry.
    pub confluent_value: Option<f64>,
}

impl Wire {
    fn table(&self) -> String {
        let mut s = format!(
            "bytes on the wire per record (value + headers):\n\n{:<34} {:>8} {:>8} {:>8} {:>8}\n",
            "format", "value", "headers", "total", "vs plain"
        );
        let mut row = |name: &str, value: f64, headers: f64| {
            s.push_str(&format!(
                "{:<34} {:>8.0} {:>8.0} {:>8.0} {:>7.2}x\n",
                name,
                value,
                headers,
                value + headers,
                (value + headers) / self.plain
            ))
        };
        row("plain", self.plain, 0.0);
        row(
            &format!("fieldcrypt (ciphertext v{})", self.ours_version),
            self.ours_value,
            self.ours_headers,
        );
        if let Some((v, bytes)) = self.ours_other_version {
            row(
                &format!("fieldcrypt (ciphertext v{v})"),
                bytes,
                self.ours_headers,
            );
        }
        if let Some(v) = self.confluent_value {
            row("Confluent CSFLE (AES256_GCM)", v, 0.0);
        }
        s
    }
}

impl BenchReport {
    /// The report as a table with ratios against the apache-avro round trip.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} records, {:.0} bytes each plain, {:.0} encrypted; 1 thread; best rate of the rounds, \
             median per-round ratio\n\n",
            self.records, self.avg_datum_bytes, self.avg_encrypted_bytes
        );
        s.push_str(&format!(
            "{:<46} {:>14} {:>10} {:>12}\n",
            "operation", "records/s", "ns/record", "vs baseline"
        ));
        let mut all = vec![&self.baseline, &self.walk, &self.encrypt, &self.decrypt];
        if let Some((e, d)) = &self.confluent {
            all.extend([e, d]);
        }
        for m in all {
            s.push_str(&format!(
                "{:<46} {:>14.0} {:>10.0} {:>11.2}x\n",
                m.name,
                m.records_per_sec,
                1e9 / m.records_per_sec,
                m.median_ratio
            ));
        }
        s.push('\n');
        s.push_str(&self.wire.table());
        s.push('\n');
        s.push_str(&self.primitives.table());
        s.push_str(&format!(
            "\nencrypt/baseline ratio: {:.2}   decrypt/baseline ratio: {:.2}\n\
             crypto cost over validate+copy: {:.0} ns/record = {:.2}x the primitives' {:.0} ns\n",
            self.encrypt.median_ratio,
            self.decrypt.median_ratio,
            self.crypto_ns(),
            self.crypto_ns() / self.primitives.sum_ns(),
            self.primitives.sum_ns(),
        ));
        s
    }

    /// The encrypt transform's time over fieldcrypt's own validate-and-copy walk:
    /// what the cryptography costs a record, framing and lookups included.
    pub fn crypto_ns(&self) -> f64 {
        1e9 / self.encrypt.records_per_sec - 1e9 / self.walk.records_per_sec
    }
}

/// Records/s of `f` (which processes a batch and returns its size) over `min_time`.
fn rate(min_time: Duration, f: &mut dyn FnMut() -> usize) -> f64 {
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < min_time {
        n += f();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Runs the measurements interleaved, round after round, so that a noisy neighbour
/// slows all of them alike; returns each one's best rate and the median per-round
/// ratio of each to the first.
fn interleaved(
    rounds: usize,
    min_time: Duration,
    fs: &mut [&mut dyn FnMut() -> usize],
) -> (Vec<f64>, Vec<f64>) {
    let mut best = vec![0f64; fs.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); fs.len()];
    for _ in 0..rounds {
        let rates: Vec<f64> = fs.iter_mut().map(|f| rate(min_time, *f)).collect();
        for (i, r) in rates.iter().enumerate() {
            best[i] = best[i].max(*r);
            ratios[i].push(r / rates[0]);
        }
    }
    let medians = ratios
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    (best, medians)
}

/// Runs the benchmark on `records` generated records of `schema_json`.
pub async fn run(
    engine: &Engine,
    schema_json: &serde_json::Value,
    records: usize,
    rounds: usize,
    min_time: Duration,
) -> anyhow::Result<BenchReport> {
    let enc = engine.encryptor(schema_json, "bench schema")?;
    let tree = &enc.plan().tree;
    let mut g = Generator::new(tree, 42, (records as u64 / 4).max(1));
    let data: Vec<Vec<u8>> = (0..records)
        .map(|_| {
            let mut d = Vec::new();
            g.next(&mut d);
            d
        })
        .collect();
    let avg_datum_bytes = data.iter().map(Vec::len).sum::<usize>() as f64 / records as f64;

    // Encrypt everything once up front, through the engine as the product does:
    // the decrypt measurement needs ciphertexts and their DEKs.
    let mut deks = DekSet::new();
    let mut encrypted = Vec::with_capacity(records);
    let mut header_bytes = 0usize;
    for d in &data {
        let mut o = Vec::new();
        let done = engine
            .encrypt(&enc, BENCH_SCOPE, d, &mut o)
            .await
            .map_err(|e| anyhow::anyhow!("encrypting a generated record failed: {e}"))?;
        if let Some(dek) = done.dek {
            let value = engine.dek_header(&dek)?;
            let name = crate::kafka::headers::DEK;
            header_bytes +=
                name.len() + value.len() + varint_len(name.len()) + varint_len(value.len());
            if !deks.contains_key(dek.id()) {
                deks.insert(*dek.id(), engine.unwrap_dek(dek.wrapped()).await?);
            }
        }
        encrypted.push(o);
    }
    let avg_encrypted_bytes = encrypted.iter().map(Vec::len).sum::<usize>() as f64 / records as f64;
    // The same records in the other ciphertext version, for the bytes table.
    use crate::crypto::format::Version;
    let version = engine.config().crypto.write_version();
    let other = if version == Version::V1 {
        Version::V2
    } else {
        Version::V1
    };
    let enc_other = engine.encryptor_writing(&enc, other)?;
    let mut other_bytes = 0usize;
    for d in &data {
        let mut o = Vec::new();
        engine
            .encrypt(&enc_other, BENCH_SCOPE, d, &mut o)
            .await
            .map_err(|e| anyhow::anyhow!("encrypting a generated record failed: {e}"))?;
        other_bytes += o.len();
    }
    // The primitive calls those records needed, read off their ciphertexts.
    let dec = engine.decryptor(&enc.plan().output_json, "bench output schema")?;
    let inspector = crate::transform::inspect::Inspector::new(dec.plan().clone());
    let mut calls: BTreeMap<primitives::Call, f64> = BTreeMap::new();
    for e in &encrypted {
        inspector.visit(e, &mut |field, header, ct| {
            let (record, name) = field.context.rsplit_once('.').unwrap_or(("", ""));
            let indexed = enc.index_of(record, name).is_some();
            for call in primitives::Call::for_ciphertext(
                header.algorithm,
                ct.len(),
                &field.context,
                indexed,
            ) {
                *calls.entry(call).or_default() += 1.0 / records as f64;
            }
        })?;
    }
    let primitives = primitives::measure(&calls, rounds, min_time / 10);
    let schema = Schema::parse(schema_json)?;
    let reader = GenericDatumReader::builder(&schema).build()?;
    let writer = GenericDatumWriter::builder(&schema).build()?;
    let mut out = Vec::with_capacity(4096);
    let mut baseline = || {
        for d in &data {
            out.clear();
            let v = reader
                .read_value(&mut d.as_slice())
                .expect("generated records decode");
            writer
                .write_value_ref(&mut out, &v)
                .expect("decoded records encode");
            black_box(&out);
        }
        data.len()
    };
    let mut out2 = Vec::with_capacity(4096);
    let mut walk = || {
        for d in &data {
            out2.clear();
            validate(tree, d).expect("generated records are valid");
            out2.extend_from_slice(d);
            black_box(&out2);
        }
        data.len()
    };
    let mut out3 = Vec::with_capacity(4096);
    let mut encrypt = || {
        for d in &data {
            out3.clear();
            // The DEK is cached, so the engine answers without waiting.
            engine
                .encrypt(&enc, BENCH_SCOPE, d, &mut out3)
                .now_or_never()
                .expect("the current DEK is cached")
                .expect("generated records encrypt");
            black_box(&out3);
        }
        data.len()
    };
    let mut out4 = Vec::with_capacity(4096);
    let mut decrypt = || {
        for e in &encrypted {
            out4.clear();
            dec.decrypt(e, &deks, &mut out4)
                .expect("our own ciphertexts decrypt");
            black_box(&out4);
        }
        encrypted.len()
    };
    // Confluent's format over the same fields: a rule on tag PII, the tag put on
    // each field fieldcrypt encrypts through metadata.tags.
    let csfle = confluent_codec(enc.plan().floor().into_keys(), schema_json, tree.max_depth);
    let csfle_dek = std::sync::Arc::new(crate::csfle::crypto::Dek::generate(
        crate::csfle::crypto::Algorithm::Aes256Gcm,
    )?);
    let wk = [(csfle_dek.clone(), None)];
    let mut rk = crate::csfle::transform::ReadKeys::new();
    rk.insert((0, 1), csfle_dek);
    let csfle_encrypted: Vec<Vec<u8>> = match &csfle {
        Some(c) => data
            .iter()
            .map(|d| {
                let mut o = Vec::new();
                c.encrypt(d, &wk, &mut o).map(|_| o)
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let mut out5 = Vec::with_capacity(4096);
    let mut cf_encrypt = || match &csfle {
        Some(c) => {
            for d in &data {
                out5.clear();
                c.encrypt(d, &wk, &mut out5)
                    .expect("generated records encrypt");
                black_box(&out5);
            }
            data.len()
        }
        None => 0,
    };
    let mut out6 = Vec::with_capacity(4096);
    let mut cf_decrypt = || match &csfle {
        Some(c) => {
            for e in &csfle_encrypted {
                out6.clear();
                c.decrypt(e, &rk, &mut out6)
                    .expect("our own ciphertexts decrypt");
                black_box(&out6);
            }
            csfle_encrypted.len()
        }
        None => 0,
    };
    let (best, ratios) = interleaved(
        rounds,
        min_time,
        &mut [
            &mut baseline,
            &mut walk,
            &mut encrypt,
            &mut decrypt,
            &mut cf_encrypt,
            &mut cf_decrypt,
        ],
    );
    let m = |name, i: usize| Measure {
        name,
        records_per_sec: best[i],
        median_ratio: ratios[i],
    };

    Ok(BenchReport {
        records,
        avg_datum_bytes,
        avg_encrypted_bytes,
        baseline: m("apache-avro decode+encode (baseline)", 0),
        walk: m("fieldcrypt validate+copy (no crypto)", 1),
        encrypt: m("fieldcrypt encrypt", 2),
        decrypt: m("fieldcrypt decrypt", 3),
        confluent: csfle.is_some().then(|| {
            (
                m("Confluent CSFLE format encrypt (AES256_GCM)", 4),
                m("Confluent CSFLE format decrypt", 5),
            )
        }),
        primitives,
        wire: Wire {
            plain: avg_datum_bytes,
            ours_version: version.number(),
            ours_value: avg_encrypted_bytes,
            ours_other_version: Some((other.number(), other_bytes as f64 / records as f64)),
            ours_headers: header_bytes as f64 / records as f64,
            confluent_value: csfle.as_ref().map(|_| {
                csfle_encrypted.iter().map(Vec::len).sum::<usize>() as f64 / records as f64
            }),
        },
    })
}

/// Bytes of a Kafka varint (zigzag) holding `n`.
fn varint_len(n: usize) -> usize {
    let mut z = (n as u64) << 1;
    let mut len = 1;
    while z >= 0x80 {
        z >>= 7;
        len += 1;
    }
    len
}

/// A codec of Confluent's format encrypting the fields `contexts` (as
/// `namespace.Record.field`), or `None` when one of them is not a string or
/// bytes field.
fn confluent_codec(
    contexts: impl Iterator<Item = String>,
    schema: &serde_json::Value,
    max_depth: usize,
) -> Option<crate::csfle::transform::CsfleCodec> {
    let tags: serde_json::Map<String, serde_json::Value> =
        contexts.map(|c| (c, serde_json::json!(["PII"]))).collect();
    let rules = serde_json::json!({"domainRules": [{"name": "bench", "type": "ENCRYPT",
        "kind": "TRANSFORM", "mode": "WRITEREAD", "tags": ["PII"],
        "params": {"encrypt.kek.name": "bench"}}]});
    let metadata = serde_json::json!({ "tags": tags });
    let plan = crate::csfle::plan::CsflePlan::build(
        schema,
        Some(&rules),
        Some(&metadata),
        "bench",
        max_depth,
    )
    .ok()?;
    Some(crate::csfle::transform::CsfleCodec::new(
        std::sync::Arc::new(plan),
    ))
}
