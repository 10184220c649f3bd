//! The core transform benchmark behind `fieldcrypt bench`: records/s on one core for
//! encrypt and decrypt of generated records, next to a plain apache-avro decode +
//! encode round trip of the same records (cached reader/writer, default
//! validation) and fieldcrypt's own validate-and-copy walk, all measured in the same
//! run. Each figure is the best of several rounds, to damp scheduler noise.

use std::hint::black_box;
use std::time::{Duration, Instant};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::avro::binary::validate;
use crate::engine::Engine;
use crate::sample::Generator;
use crate::transform::decrypt::DekSet;
use crate::transform::TransformErrorKind;

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Measure {
    pub name: &'static str,
    pub records_per_sec: f64,
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
}

impl BenchReport {
    /// The report as a table with ratios against the apache-avro round trip.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} records, {:.0} bytes each plain, {:.0} encrypted; 1 thread, best of rounds\n\n",
            self.records, self.avg_datum_bytes, self.avg_encrypted_bytes
        );
        s.push_str(&format!("{:<46} {:>14} {:>10} {:>12}\n", "operation", "records/s", "ns/record", "vs baseline"));
        for m in [&self.baseline, &self.walk, &self.encrypt, &self.decrypt] {
            s.push_str(&format!(
                "{:<46} {:>14.0} {:>10.0} {:>11.2}x\n",
                m.name,
                m.records_per_sec,
                1e9 / m.records_per_sec,
                m.records_per_sec / self.baseline.records_per_sec
            ));
        }
        s.push_str(&format!(
            "\nencrypt/baseline ratio: {:.2}   decrypt/baseline ratio: {:.2}   encrypt cost over validate+copy: {:.0} ns/record\n",
            self.encrypt.records_per_sec / self.baseline.records_per_sec,
            self.decrypt.records_per_sec / self.baseline.records_per_sec,
            1e9 / self.encrypt.records_per_sec - 1e9 / self.walk.records_per_sec
        ));
        s
    }
}

fn best_of<F: FnMut() -> usize>(rounds: usize, min_time: Duration, mut f: F) -> f64 {
    let mut best = 0f64;
    for _ in 0..rounds {
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed() < min_time {
            n += f();
        }
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    best
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

    let schema = Schema::parse(schema_json)?;
    let reader = GenericDatumReader::builder(&schema).build()?;
    let writer = GenericDatumWriter::builder(&schema).build()?;
    let mut out = Vec::with_capacity(4096);
    let baseline = best_of(rounds, min_time, || {
        for d in &data {
            out.clear();
            let v = reader.read_value(&mut d.as_slice()).expect("generated records decode");
            writer.write_value_ref(&mut out, &v).expect("decoded records encode");
            black_box(&out);
        }
        data.len()
    });

    let walk = best_of(rounds, min_time, || {
        for d in &data {
            out.clear();
            validate(tree, d).expect("generated records are valid");
            out.extend_from_slice(d);
            black_box(&out);
        }
        data.len()
    });

    let mut dek = engine.deks.current("bench").await?;
    let mut deks = DekSet::new();
    let mut encrypted = Vec::with_capacity(records);
    for d in &data {
        let mut o = Vec::new();
        loop {
            match enc.encrypt(d, Some(&dek), &mut o) {
                Ok(_) => break,
                Err(e) if e.kind == TransformErrorKind::DekExhausted => dek = engine.deks.current("bench").await?,
                Err(e) => anyhow::bail!("encrypting a generated record failed: {e}"),
            }
        }
        deks.insert(*dek.id(), engine.dek_cache.get(dek.wrapped()).await?);
        encrypted.push(o);
    }
    let avg_encrypted_bytes = encrypted.iter().map(Vec::len).sum::<usize>() as f64 / records as f64;

    let mut failed = None;
    let encrypt = best_of(rounds, min_time, || {
        for d in &data {
            out.clear();
            if let Err(e) = enc.encrypt(d, Some(&dek), &mut out) {
                failed = Some(e);
                return data.len();
            }
            black_box(&out);
        }
        data.len()
    });
    if let Some(e) = failed {
        anyhow::bail!("encrypt failed during the benchmark ({e}); raise dek.max_uses for benchmarking");
    }

    let dec = engine.decryptor(&enc.plan().output_json, "bench output schema")?;
    let decrypt = best_of(rounds, min_time, || {
        for e in &encrypted {
            out.clear();
            dec.decrypt(e, &deks, &mut out).expect("our own ciphertexts decrypt");
            black_box(&out);
        }
        encrypted.len()
    });

    Ok(BenchReport {
        records,
        avg_datum_bytes,
        avg_encrypted_bytes,
        baseline: Measure {
            name: "apache-avro decode+encode (baseline)",
            records_per_sec: baseline,
        },
        walk: Measure {
            name: "fieldcrypt validate+copy (no crypto)",
            records_per_sec: walk,
        },
        encrypt: Measure {
            name: "fieldcrypt encrypt",
            records_per_sec: encrypt,
        },
        decrypt: Measure {
            name: "fieldcrypt decrypt",
            records_per_sec: decrypt,
        },
    })
}
