//! Random records that conform to a schema, with realistic values for common field
//! names (e-mails, names, phones, addresses) and a bounded number of distinct people
//! so deterministic ciphertexts and blind indexes see repeats. Used by the demo,
//! the benchmark and tests; seeded, so runs are reproducible.

use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::avro::binary::{write_bytes, write_long};
use crate::avro::container::{write_header, BlockWriter, ContainerError};
use crate::schema::model::{Node, NodeId, SchemaTree};

const FIRST: [&str; 16] = [
    "Ann", "Bob", "Chen", "Dara", "Elif", "Femi", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena",
    "Mia", "Noor", "Omar", "Pia",
];
const LAST: [&str; 12] = [
    "Smith", "Garcia", "Okafor", "Novak", "Tanaka", "Muller", "Rossi", "Khan", "Silva", "Berg",
    "Haddad", "Kim",
];
const CITIES: [&str; 8] = [
    "Lisbon", "Austin", "Osaka", "Lagos", "Berlin", "Lima", "Pune", "Oslo",
];
const STREETS: [&str; 6] = [
    "Main St",
    "Oak Ave",
    "Harbour Rd",
    "Elm St",
    "Mill Ln",
    "High St",
];

/// Generates datums of one schema.
pub struct Generator<'a> {
    tree: &'a SchemaTree,
    rng: StdRng,
    seq: i64,
    people: u64,
    person: u64,
}

impl<'a> Generator<'a> {
    /// `people` bounds the distinct identities behind name/e-mail/phone values.
    pub fn new(tree: &'a SchemaTree, seed: u64, people: u64) -> Self {
        Generator {
            tree,
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
            people: people.max(1),
            person: 0,
        }
    }

    /// Appends one datum of the root type.
    pub fn next(&mut self, out: &mut Vec<u8>) {
        self.seq += 1;
        self.person = self.rng.random_range(0..self.people);
        self.value(self.tree.root, "", out, 0);
    }

    fn text(&mut self, field: &str) -> String {
        let p = self.person;
        let first = FIRST[(p % 16) as usize];
        let last = LAST[((p / 16) % 12) as usize];
        let f = field.to_ascii_lowercase();
        if f.contains("email") {
            format!(
                "{}.{}{}@example.com",
                first.to_lowercase(),
                last.to_lowercase(),
                p
            )
        } else if f.contains("first") {
            first.to_string()
        } else if f.contains("last") || f.contains("surname") {
            last.to_string()
        } else if f.contains("name") {
            format!("{first} {last}")
        } else if f.contains("phone") {
            format!("+1-555-{:04}-{:04}", p % 10_000, (p * 7919) % 10_000)
        } else if f.contains("ssn") {
            format!(
                "{:03}-{:02}-{:04}",
                100 + p % 800,
                p % 100,
                (p * 31) % 10_000
            )
        } else if f.contains("street") || f.contains("address") {
            format!("{} {}", 1 + p % 999, STREETS[(p % 6) as usize])
        } else if f.contains("city") {
            CITIES[(p % 8) as usize].to_string()
        } else if f.contains("postal") || f.contains("zip") {
            format!("{:05}", (p * 37) % 100_000)
        } else if f.contains("country") {
            ["US", "DE", "JP", "NG", "BR", "IN"][(p % 6) as usize].to_string()
        } else if f.contains("account") {
            format!("ACC-{:08}", p)
        } else if f == "op" {
            ["c", "u", "d"][self.rng.random_range(0..3)].to_string()
        } else {
            let n = self.rng.random_range(3..12);
            (0..n)
                .map(|_| (b'a' + self.rng.random_range(0..26u8)) as char)
                .collect()
        }
    }

    fn value(&mut self, id: NodeId, field: &str, out: &mut Vec<u8>, depth: usize) {
        let logical = self.tree.logical.get(&id).map(String::as_str);
        match self.tree.node(id) {
            Node::Null | Node::Pending => {}
            Node::Boolean => out.push(self.rng.random_range(0..2)),
            Node::Int => {
                let v: i64 = match logical {
                    Some("date") => 19_000 + self.rng.random_range(0..2_000),
                    Some("time-millis") => self.rng.random_range(0..86_400_000),
                    _ => self.rng.random_range(-1_000..1_000_000),
                };
                write_long(out, v)
            }
            Node::Long => {
                let v = match logical {
                    Some(l) if l.starts_with("timestamp") || l.starts_with("local-timestamp") => {
                        let ms = 1_790_000_000_000 + self.rng.random_range(0..10_000_000_000i64);
                        if l.ends_with("micros") {
                            ms * 1000
                        } else {
                            ms
                        }
                    }
                    Some("time-micros") => self.rng.random_range(0..86_400_000_000),
                    _ if field == "id" => self.seq,
                    _ => self.rng.random_range(0..10_000_000),
                };
                write_long(out, v)
            }
            Node::Float => {
                out.extend_from_slice(&(self.rng.random::<f32>() * 1000.0).to_le_bytes())
            }
            Node::Double => out.extend_from_slice(&(self.rng.random::<f64>() * 1e6).to_le_bytes()),
            Node::Bytes => {
                let n = self.rng.random_range(1..16);
                let mut b = vec![0u8; n];
                self.rng.fill_bytes(&mut b);
                write_bytes(out, &b)
            }
            Node::String => {
                let s = if logical == Some("uuid") {
                    let mut b = [0u8; 16];
                    self.rng.fill_bytes(&mut b);
                    let h = hex::encode(b);
                    format!(
                        "{}-{}-{}-{}-{}",
                        &h[..8],
                        &h[8..12],
                        &h[12..16],
                        &h[16..20],
                        &h[20..]
                    )
                } else {
                    self.text(field)
                };
                write_bytes(out, s.as_bytes())
            }
            Node::Fixed { size, .. } => {
                let mut b = vec![0u8; *size];
                self.rng.fill_bytes(&mut b);
                out.extend_from_slice(&b)
            }
            Node::Enum { symbols, .. } => {
                write_long(out, self.rng.random_range(0..symbols.len()) as i64)
            }
            Node::Union(bs) => {
                let null = self.tree.null_branch(id);
                let i = match null {
                    Some(n) if depth > 4 || self.rng.random_range(0..10) < 2 => n,
                    _ => loop {
                        let i = self.rng.random_range(0..bs.len());
                        if Some(i) != null || bs.len() == 1 {
                            break i;
                        }
                    },
                };
                write_long(out, i as i64);
                self.value(bs[i], field, out, depth + 1)
            }
            Node::Array(item) => {
                let n = if depth > 4 {
                    0
                } else {
                    self.rng.random_range(0..4)
                };
                if n > 0 {
                    write_long(out, n);
                    for _ in 0..n {
                        self.value(*item, field, out, depth + 1);
                    }
                }
                write_long(out, 0)
            }
            Node::Map(v) => {
                let n = if depth > 4 {
                    0
                } else {
                    self.rng.random_range(0..4)
                };
                if n > 0 {
                    write_long(out, n);
                    for k in 0..n {
                        write_bytes(out, format!("k{k}").as_bytes());
                        self.value(*v, field, out, depth + 1);
                    }
                }
                write_long(out, 0)
            }
            Node::Record(r) => {
                let fields: Vec<(String, NodeId)> =
                    r.fields.iter().map(|f| (f.name.clone(), f.node)).collect();
                for (name, node) in fields {
                    self.value(node, &name, out, depth + 1);
                }
            }
        }
    }
}

/// Writes `count` random records of `schema_json` to an Avro container file.
pub fn write_file(
    schema_json: &serde_json::Value,
    tree: &SchemaTree,
    count: u64,
    seed: u64,
    codec: apache_avro::Codec,
    codec_name: &str,
    path: &Path,
) -> Result<(), ContainerError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    let mut sync = [0u8; 16];
    rand::rng().fill_bytes(&mut sync);
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        let meta = vec![
            (
                "avro.schema".to_string(),
                schema_json.to_string().into_bytes(),
            ),
            ("avro.codec".to_string(), codec_name.as_bytes().to_vec()),
        ];
        write_header(&mut w, &meta, &sync)?;
        let mut bw = BlockWriter::new(w, codec, sync);
        let mut g = Generator::new(tree, seed, (count / 4).max(1));
        let mut left = count;
        while left > 0 {
            let n = left.min(4096);
            let mut block = Vec::with_capacity(n as usize * 128);
            for _ in 0..n {
                g.next(&mut block);
            }
            bw.write_block(n, block)?;
            left -= n;
        }
        bw.into_inner().flush()?;
    }
    tmp.persist(path).map_err(|e| ContainerError::Io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_decode_with_apache_avro() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/customer.avsc"
        ))
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let tree = SchemaTree::compile(&json).unwrap();
        let schema = apache_avro::Schema::parse(&json).unwrap();
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap();
        let mut g = Generator::new(&tree, 1, 10);
        for _ in 0..200 {
            let mut d = Vec::new();
            g.next(&mut d);
            crate::avro::binary::validate(&tree, &d).unwrap();
            let v = reader.read_value(&mut d.as_slice()).unwrap();
            assert!(matches!(v, apache_avro::types::Value::Record(_)));
        }
    }
}
