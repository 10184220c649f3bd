//! Random records that conform to a schema, with realistic values for common field
//! names (e-mails, names, phones, addresses) and a bounded number of distinct people
//! so deterministic ciphertexts and blind indexes see repeats; and coherent
//! Debezium-style change events (inserts, updates whose `before` is the previous
//! `after`, deletes) for envelope schemas. Used by the demo, the benchmark, the load
//! generator and tests; seeded, so runs are reproducible.

use std::io::Write;
use std::path::Path;

use std::collections::HashMap;

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
const WORDS: [&str; 16] = [
    "customer", "called", "about", "the", "invoice", "and", "asked", "for", "a", "refund", "of",
    "order", "shipped", "late", "to", "their",
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
    /// While set, an `id` field of int or long type takes this value.
    ident: Option<i64>,
    /// Server, database and table named by a Debezium envelope's namespace
    /// (`dbserver1.inventory.customers`), for its `source` block.
    debezium: Option<[String; 3]>,
    /// The Debezium source block being written, with its connector name.
    in_source: Option<String>,
}

/// A schema no record can be generated for (nor exist): `field` (or "the schema")
/// has a type on every value's path that has no values, an empty union.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} has an empty union type ([]): no value can be written for it")]
pub struct Ungeneratable {
    pub field: String,
}

/// Why no record of this schema can be generated (nor exist). Names the field.
pub fn check(tree: &SchemaTree) -> Result<(), Ungeneratable> {
    fn go(
        t: &SchemaTree,
        id: NodeId,
        path: &str,
        seen: &mut Vec<NodeId>,
    ) -> Result<(), Ungeneratable> {
        match t.node(id) {
            Node::Union(bs) if bs.is_empty() => Err(Ungeneratable {
                field: if path.is_empty() { "the schema" } else { path }.to_string(),
            }),
            Node::Record(r) => {
                if seen.contains(&id) {
                    return Ok(());
                }
                seen.push(id);
                for f in &r.fields {
                    let p = if path.is_empty() {
                        f.name.clone()
                    } else {
                        format!("{path}.{}", f.name)
                    };
                    go(t, f.node, &p, seen)?;
                }
                Ok(())
            }
            // Arrays and maps can be empty, and a union needs only one usable branch.
            _ => Ok(()),
        }
    }
    go(tree, tree.root, "", &mut Vec::new())
}

/// Server, database and table from a Debezium envelope's full name
/// (`<server>.<database>.<table>.Envelope`).
fn debezium_names(tree: &SchemaTree) -> Option<[String; 3]> {
    let r = tree.record(tree.root)?;
    let ns = r.fullname.strip_suffix(".Envelope")?;
    let parts: Vec<&str> = ns.split('.').collect();
    (parts.len() >= 3).then(|| {
        let n = parts.len();
        [
            parts[..n - 2].join("."),
            parts[n - 2].into(),
            parts[n - 1].into(),
        ]
    })
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
            ident: None,
            debezium: debezium_names(tree),
            in_source: None,
        }
    }

    /// A Debezium source block's text field, as the connector would write it.
    fn source_text(&mut self, connector: &str, field: &str) -> Option<String> {
        let [server, db, table] = self.debezium.clone()?;
        Some(match field {
            "version" => "2.7.3.Final".into(),
            "connector" => connector.into(),
            "name" => server,
            "db" => db,
            "table" => table,
            "snapshot" => "false".into(),
            "file" => "mysql-bin.000003".into(),
            "gtid" | "sequence" | "query" => return None,
            _ => return None,
        })
    }

    /// Appends one datum of the root type.
    pub fn next(&mut self, out: &mut Vec<u8>) {
        self.seq += 1;
        self.person = self.rng.random_range(0..self.people);
        self.value(self.tree.root, "", out, 0);
    }

    /// Appends one datum of the root type describing `person`: its names, e-mail
    /// and phone are that person's, and an `id` field holds `person`.
    pub fn next_for(&mut self, person: u64, out: &mut Vec<u8>) {
        self.seq += 1;
        self.person = person;
        self.ident = Some(person as i64);
        self.value(self.tree.root, "", out, 0);
        self.ident = None;
    }

    /// Appends a value of `node` for `person` whose other fields come from `rng`
    /// (so the same person and rng seed give the same bytes).
    fn row_with(&mut self, node: NodeId, person: u64, rng: StdRng, out: &mut Vec<u8>) {
        let saved = std::mem::replace(&mut self.rng, rng);
        self.person = person;
        self.ident = Some(person as i64);
        self.value(node, "", out, 0);
        self.ident = None;
        self.rng = saved;
    }

    fn text(&mut self, field: &str) -> String {
        if let Some(connector) = self.in_source.clone() {
            if let Some(t) = self.source_text(&connector, field) {
                return t;
            }
        }
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
        } else if ["note", "description", "comment", "remark"]
            .iter()
            .any(|w| f.contains(w))
        {
            // Free text: a few sentences, as support notes and descriptions are.
            let n = self.rng.random_range(16..32);
            (0..n)
                .map(|_| WORDS[self.rng.random_range(0..WORDS.len())])
                .collect::<Vec<_>>()
                .join(" ")
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
                    _ => match self.ident {
                        Some(i) if field == "id" => i % i64::from(i32::MAX),
                        _ => self.rng.random_range(-1_000..1_000_000),
                    },
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
                    _ if field == "id" => self.ident.unwrap_or(self.seq),
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
            // `check` refuses schemas with an empty union; never panic on one.
            Node::Union(bs) if bs.is_empty() => {}
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
                let connector = r
                    .fullname
                    .strip_prefix("io.debezium.connector.")
                    .and_then(|c| c.strip_suffix(".Source"))
                    .map(str::to_string);
                let outer = match connector {
                    Some(c) => self.in_source.replace(c),
                    None => self.in_source.clone(),
                };
                for (name, node) in fields {
                    self.value(node, &name, out, depth + 1);
                }
                self.in_source = outer;
            }
        }
    }
}

/// Where a Debezium-style change-event envelope keeps its parts: a root record with
/// `before` and `after` of the same nullable row record, and a string `op`.
#[derive(Debug, Clone, Copy)]
pub struct Envelope {
    /// The row record type.
    row: NodeId,
    /// The non-null branch of the `before`/`after` unions, and their null branch.
    row_branch: usize,
    null_branch: usize,
}

impl Envelope {
    /// The envelope layout of `tree`, if it is one.
    pub fn detect(tree: &SchemaTree) -> Option<Envelope> {
        let root = tree.record(tree.root)?;
        let field = |name: &str| root.fields.iter().find(|f| f.name == name).map(|f| f.node);
        let (before, after, op) = (field("before")?, field("after")?, field("op")?);
        if !matches!(tree.node(op), Node::String) {
            return None;
        }
        // (row record, its branch, the null branch) of a [null, record] union.
        let nullable_row = |id: NodeId| {
            let Node::Union(bs) = tree.node(id) else {
                return None;
            };
            let null = tree.null_branch(id)?;
            if bs.len() != 2 {
                return None;
            }
            let row = bs[1 - null];
            tree.record(row).map(|_| (row, 1 - null, null))
        };
        let (row, row_branch, null_branch) = nullable_row(after)?;
        if nullable_row(before) != Some((row, row_branch, null_branch)) {
            return None;
        }
        Some(Envelope {
            row,
            row_branch,
            null_branch,
        })
    }
}

/// What a change event did to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    /// Debezium's `op` code.
    pub fn code(self) -> &'static str {
        match self {
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }
}

/// Coherent change events for an envelope schema: a row is inserted before it is
/// updated or deleted, an update's `before` is the row's previous `after`, and a
/// deleted row can be inserted again. Rows are keyed `0..keys`; a row's names and
/// e-mail depend on its key only, so they repeat across its events.
pub struct ChangeEvents<'a> {
    gen: Generator<'a>,
    env: Envelope,
    keys: u64,
    seed: u64,
    /// Live rows: key → version of the current `after`.
    live: HashMap<u64, u64>,
    /// Percent of events on a live row that delete it (the rest update it).
    delete_percent: u32,
}

impl<'a> ChangeEvents<'a> {
    pub fn new(tree: &'a SchemaTree, env: Envelope, seed: u64, keys: u64) -> Self {
        ChangeEvents {
            gen: Generator::new(tree, seed, keys),
            env,
            keys: keys.max(1),
            seed,
            live: HashMap::new(),
            delete_percent: 10,
        }
    }

    /// Appends the next event's datum to `out`; returns its row key and operation.
    /// After a delete the caller emits the tombstone (same key, null value).
    pub fn next(&mut self, out: &mut Vec<u8>) -> (u64, Op) {
        let key = self.gen.rng.random_range(0..self.keys);
        let (op, before, after) = match self.live.get(&key).copied() {
            None => (Op::Insert, None, Some(0)),
            Some(v) if self.gen.rng.random_range(0..100) < self.delete_percent => {
                (Op::Delete, Some(v), None)
            }
            Some(v) => (Op::Update, Some(v), Some(v + 1)),
        };
        match after {
            Some(v) => self.live.insert(key, v),
            None => self.live.remove(&key),
        };
        let tree = self.gen.tree;
        let Some(root) = tree.record(tree.root) else {
            return (key, op);
        };
        for f in &root.fields {
            match f.name.as_str() {
                "before" => self.image(key, before, out),
                "after" => self.image(key, after, out),
                "op" => write_bytes(out, op.code().as_bytes()),
                "ts_ms" => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0);
                    match (tree.node(f.node), tree.null_branch(f.node)) {
                        (Node::Long, _) => write_long(out, now),
                        (Node::Union(bs), Some(n))
                            if bs.len() == 2 && matches!(tree.node(bs[1 - n]), Node::Long) =>
                        {
                            write_long(out, (1 - n) as i64);
                            write_long(out, now)
                        }
                        _ => self.gen.value(f.node, &f.name, out, 1),
                    }
                }
                _ => self.gen.value(f.node, &f.name, out, 1),
            }
        }
        (key, op)
    }

    /// The row image of `key` at `version` (or null), always the same bytes for the
    /// same (seed, key, version).
    fn image(&mut self, key: u64, version: Option<u64>, out: &mut Vec<u8>) {
        match version {
            None => write_long(out, self.env.null_branch as i64),
            Some(v) => {
                write_long(out, self.env.row_branch as i64);
                let mix = self
                    .seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(key.wrapping_mul(0xBF58_476D_1CE4_E5B9))
                    .wrapping_add(v);
                self.gen
                    .row_with(self.env.row, key, StdRng::seed_from_u64(mix), out);
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

    #[test]
    fn change_events_are_coherent_per_row() {
        use apache_avro::types::Value;
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/customer_cdc.avsc"
        ))
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let tree = SchemaTree::compile(&json).unwrap();
        let env = Envelope::detect(&tree).expect("customer_cdc is an envelope");
        let schema = apache_avro::Schema::parse(&json).unwrap();
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap();
        let field = |v: &Value, name: &str| match v {
            Value::Record(fs) => fs.iter().find(|(n, _)| n == name).unwrap().1.clone(),
            _ => panic!("not a record"),
        };
        let mut events = ChangeEvents::new(&tree, env, 7, 20);
        let mut rows: HashMap<u64, Value> = HashMap::new();
        let mut ops = [0usize; 3];
        for _ in 0..600 {
            let mut d = Vec::new();
            let (key, op) = events.next(&mut d);
            crate::avro::binary::validate(&tree, &d).unwrap();
            let v = reader.read_value(&mut d.as_slice()).unwrap();
            assert_eq!(field(&v, "op"), Value::String(op.code().into()));
            let (before, after) = (field(&v, "before"), field(&v, "after"));
            let prev = rows.get(&key).cloned();
            match op {
                Op::Insert => {
                    ops[0] += 1;
                    assert!(prev.is_none(), "insert of a live row {key}");
                    assert_eq!(before, Value::Union(0, Box::new(Value::Null)));
                }
                Op::Update | Op::Delete => {
                    ops[if op == Op::Update { 1 } else { 2 }] += 1;
                    assert_eq!(Some(before), prev, "before of key {key} is its last after");
                }
            }
            match &after {
                Value::Union(_, b) if **b != Value::Null => {
                    assert_eq!(field(b, "id"), Value::Int(key as i32));
                    rows.insert(key, after.clone());
                }
                _ => {
                    assert_eq!(op, Op::Delete);
                    rows.remove(&key);
                }
            }
        }
        assert!(
            ops.iter().all(|&n| n > 10),
            "inserts, updates, deletes: {ops:?}"
        );
        let plain = SchemaTree::compile(
            &serde_json::from_str::<serde_json::Value>(
                &std::fs::read_to_string(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/schemas/customer.avsc"
                ))
                .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(Envelope::detect(&plain).is_none());
    }
}
