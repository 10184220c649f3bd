//! Property tests: random schemas (every Avro type, nested in records, unions,
//! arrays and maps, with random sensitive fields in both modes and blind indexes)
//! and random values for them. apache-avro, an independent implementation, encodes
//! the input, must decode our encrypted output with the derived schema, and the
//! decrypted bytes must equal the input exactly.

mod common;

use std::collections::HashMap;

use apache_avro::types::Value;
use apache_avro::Schema;
use fieldcrypt::avro::binary::{walk, write_bytes, write_long, Cursor, Discard};
use fieldcrypt::config::Config;
use fieldcrypt::schema::model::{Node, SchemaTree};
use fieldcrypt::schema::plan::restore_original;
use proptest::prelude::*;
use serde_json::{json, Value as Json};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sens {
    No,
    Randomized,
    Deterministic,
    Indexed,
}

#[derive(Debug, Clone)]
enum T {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    Date,
    TimestampMillis,
    Uuid,
    Fixed(usize),
    Enum(usize),
    Array(Box<T>),
    Map(Box<T>),
    Union(Vec<T>),
    Record(Vec<(T, Sens)>),
}

impl T {
    fn indexable(&self) -> bool {
        match self {
            T::Boolean
            | T::Int
            | T::Long
            | T::Float
            | T::Double
            | T::Bytes
            | T::Str
            | T::Fixed(_)
            | T::Enum(_) => true,
            T::Union(bs) => {
                bs.len() == 2
                    && matches!(bs[0], T::Null)
                    && bs[1].indexable()
                    && !matches!(bs[1], T::Union(_))
            }
            _ => false,
        }
    }
}

fn leaf() -> impl Strategy<Value = T> {
    prop_oneof![
        Just(T::Boolean),
        Just(T::Int),
        Just(T::Long),
        Just(T::Float),
        Just(T::Double),
        Just(T::Bytes),
        Just(T::Str),
        Just(T::Date),
        Just(T::TimestampMillis),
        Just(T::Uuid),
        (1usize..6).prop_map(T::Fixed),
        (1usize..4).prop_map(T::Enum),
    ]
}

fn sens() -> impl Strategy<Value = Sens> {
    prop_oneof![3 => Just(Sens::No), 2 => Just(Sens::Randomized), 1 => Just(Sens::Deterministic), 1 => Just(Sens::Indexed)]
}

fn schema_type() -> impl Strategy<Value = T> {
    leaf().prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| T::Array(Box::new(t))),
            inner.clone().prop_map(|t| T::Map(Box::new(t))),
            // Unions: null plus one other type, or a few distinct primitives.
            inner
                .clone()
                .prop_filter("no nested unions", |t| !matches!(t, T::Union(_)))
                .prop_map(|t| T::Union(vec![T::Null, t])),
            Just(T::Union(vec![T::Int, T::Str, T::Null])),
            Just(T::Union(vec![T::Str, T::Bytes])),
            prop::collection::vec((inner, sens()), 1..5).prop_map(T::Record),
        ]
    })
}

fn root() -> impl Strategy<Value = T> {
    prop::collection::vec((schema_type(), sens()), 1..6).prop_map(T::Record)
}

/// JSON schema for a type; `inside` is true within an encrypted field, where blind
/// indexes are not allowed (the plan rejects them, tested elsewhere).
fn to_json(t: &T, n: &mut usize, inside: bool) -> Json {
    *n += 1;
    let id = *n;
    match t {
        T::Null => json!("null"),
        T::Boolean => json!("boolean"),
        T::Int => json!("int"),
        T::Long => json!("long"),
        T::Float => json!("float"),
        T::Double => json!("double"),
        T::Bytes => json!("bytes"),
        T::Str => json!("string"),
        T::Date => json!({"type": "int", "logicalType": "date"}),
        T::TimestampMillis => json!({"type": "long", "logicalType": "timestamp-millis"}),
        T::Uuid => json!({"type": "string", "logicalType": "uuid"}),
        T::Fixed(s) => json!({"type": "fixed", "name": format!("F{id}"), "size": s}),
        T::Enum(k) => {
            json!({"type": "enum", "name": format!("E{id}"), "symbols": (0..*k).map(|i| format!("S{i}")).collect::<Vec<_>>()})
        }
        T::Array(i) => json!({"type": "array", "items": to_json(i, n, inside)}),
        T::Map(i) => json!({"type": "map", "values": to_json(i, n, inside)}),
        T::Union(bs) => Json::Array(bs.iter().map(|b| to_json(b, n, inside)).collect()),
        T::Record(fields) => {
            let fs: Vec<Json> = fields
                .iter()
                .enumerate()
                .map(|(i, (ft, s))| {
                    let encrypted = *s != Sens::No;
                    let mut f = json!({"name": format!("f{i}"), "type": to_json(ft, n, inside || encrypted), "doc": "d", "x-custom": [1, {"k": true}]});
                    let s = match s {
                        Sens::Indexed if inside || !ft.indexable() => Sens::Randomized,
                        other => *other,
                    };
                    let attr = match s {
                        Sens::No => None,
                        Sens::Randomized => Some(json!(true)),
                        Sens::Deterministic => Some(json!({"mode": "deterministic"})),
                        Sens::Indexed => Some(json!({"blind_index": "idx"})),
                    };
                    if let Some(a) = attr {
                        f["sensitive"] = a;
                    }
                    f
                })
                .collect();
            json!({"type": "record", "name": format!("R{id}"), "namespace": "prop", "fields": fs})
        }
    }
}

fn value(t: &T) -> BoxedStrategy<Value> {
    match t {
        T::Null => Just(Value::Null).boxed(),
        T::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
        T::Int => any::<i32>().prop_map(Value::Int).boxed(),
        T::Long => any::<i64>().prop_map(Value::Long).boxed(),
        T::Float => any::<f32>().prop_map(Value::Float).boxed(),
        T::Double => any::<f64>().prop_map(Value::Double).boxed(),
        T::Bytes => prop::collection::vec(any::<u8>(), 0..24)
            .prop_map(Value::Bytes)
            .boxed(),
        T::Str => ".{0,16}".prop_map(Value::String).boxed(),
        T::Date => any::<i32>().prop_map(Value::Date).boxed(),
        T::TimestampMillis => any::<i64>().prop_map(Value::TimestampMillis).boxed(),
        T::Uuid => any::<u128>()
            .prop_map(|u| Value::Uuid(apache_avro::Uuid::from_u128(u)))
            .boxed(),
        T::Fixed(s) => prop::collection::vec(any::<u8>(), *s)
            .prop_map(|b| Value::Fixed(b.len(), b))
            .boxed(),
        T::Enum(k) => (0..*k as u32)
            .prop_map(|i| Value::Enum(i, format!("S{i}")))
            .boxed(),
        T::Array(i) => prop::collection::vec(value(i), 0..4)
            .prop_map(Value::Array)
            .boxed(),
        T::Map(i) => prop::collection::hash_map(".{0,6}", value(i), 0..4)
            .prop_map(|m| Value::Map(m.into_iter().collect::<HashMap<_, _>>()))
            .boxed(),
        T::Union(bs) => {
            let branches: Vec<BoxedStrategy<Value>> = bs
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    value(b)
                        .prop_map(move |v| Value::Union(i as u32, Box::new(v)))
                        .boxed()
                })
                .collect();
            prop::strategy::Union::new(branches).boxed()
        }
        T::Record(fields) => {
            let parts: Vec<BoxedStrategy<(String, Value)>> = fields
                .iter()
                .enumerate()
                .map(|(i, (ft, _))| value(ft).prop_map(move |v| (format!("f{i}"), v)).boxed())
                .collect();
            parts.prop_map(Value::Record).boxed()
        }
    }
}

fn case() -> impl Strategy<Value = (Json, Vec<Value>)> {
    root().prop_flat_map(|t| {
        let json = to_json(&t, &mut 0, false);
        (Just(json), prop::collection::vec(value(&t), 1..4))
    })
}

/// Re-encodes a canonical datum the way streaming writers may: every array and map
/// item in its own block with a negative count and a byte size.
fn reblock(tree: &SchemaTree, node: usize, cur: &mut Cursor<'_>, out: &mut Vec<u8>) {
    match tree.node(node) {
        Node::Array(item) | Node::Map(item) => {
            let is_map = matches!(tree.node(node), Node::Map(_));
            loop {
                let n = cur.read_block_count(0).unwrap();
                if n == 0 {
                    write_long(out, 0);
                    return;
                }
                for _ in 0..n {
                    let mut one = Vec::new();
                    if is_map {
                        write_bytes(&mut one, cur.read_str().unwrap().as_bytes());
                    }
                    reblock(tree, *item, cur, &mut one);
                    write_long(out, -1);
                    write_long(out, one.len() as i64);
                    out.extend_from_slice(&one);
                }
            }
        }
        Node::Union(bs) => {
            let i = cur.read_branch(bs.len()).unwrap();
            write_long(out, i as i64);
            reblock(tree, bs[i], cur, out);
        }
        Node::Record(r) => {
            for f in r.fields.clone() {
                reblock(tree, f.node, cur, out);
            }
        }
        _ => {
            let start = cur.position();
            walk(tree, node, cur, &mut Discard, 0).unwrap();
            out.extend_from_slice(cur.since(start));
        }
    }
}

fn writer(schema: &Schema) -> apache_avro::writer::datum::GenericDatumWriter<'_> {
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
}

fn fixture() -> &'static common::Fixture {
    static F: std::sync::OnceLock<common::Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let mut cfg = Config::default();
        // A small usage limit makes DEK rotation happen inside the property run.
        cfg.dek.max_uses = 500;
        common::Fixture::new(cfg, &["default"], &["idx"])
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn encrypt_then_decrypt_restores_every_byte((schema_json, values) in case()) {
        let f = fixture();
        let schema = Schema::parse(&schema_json).expect("generated schemas are valid");
        let enc = f.engine.encryptor(&schema_json, "prop").expect("plan builds");
        let out_schema = Schema::parse(&enc.plan().output_json).expect("output schema parses");
        prop_assert_eq!(restore_original(&enc.plan().output_json).unwrap(), schema_json.clone());
        let dec = f.engine.decryptor(&enc.plan().output_json, "prop").expect("decrypt plan builds");
        prop_assert_eq!(&dec.plan().original_json, &schema_json);
        for v in values {
            let datum = writer(&schema).write_value_to_vec(v).expect("generated values encode");
            let (encrypted, deks) = f.encrypt(&enc, &datum).expect("encrypts");
            // An independent decoder accepts our output under the derived schema.
            apache_avro::reader::datum::GenericDatumReader::builder(&out_schema).build().unwrap()
                .read_value(&mut encrypted.as_slice())
                .expect("apache-avro decodes the encrypted datum with the output schema");
            let mut back = Vec::new();
            dec.decrypt(&encrypted, &deks, &mut back).expect("decrypts");
            prop_assert_eq!(&back, &datum);

            // The same values written with one block per item (as streaming writers
            // may) decrypt to the same values: canonically re-encoded, the same bytes.
            let tree = &enc.plan().tree;
            let mut blocked = Vec::new();
            reblock(tree, tree.root, &mut Cursor::new(&datum), &mut blocked);
            let (encrypted, deks) = f.encrypt(&enc, &blocked).expect("encrypts blocked input");
            let mut back = Vec::new();
            dec.decrypt(&encrypted, &deks, &mut back).expect("decrypts");
            let mut canonical = Vec::new();
            walk(tree, tree.root, &mut Cursor::new(&back), &mut canonical, 0).expect("valid");
            prop_assert_eq!(&canonical, &datum);
        }
    }

    /// Recursive schemas: a tree of nodes whose sensitive label sits at every level.
    #[test]
    fn recursive_schemas_round_trip(depths in prop::collection::vec(0usize..4, 1..6), label in ".{0,8}") {
        let f = fixture();
        let json = json!({"type": "record", "name": "Node", "namespace": "rec", "fields": [
            {"name": "label", "type": "string", "sensitive": {"mode": "deterministic", "blind_index": "idx"}},
            {"name": "secret", "type": ["null", "bytes"], "sensitive": true},
            {"name": "children", "type": {"type": "array", "items": "Node"}},
            {"name": "next", "type": ["null", "Node"]}]});
        fn build(depth: usize, label: &str) -> Value {
            let kids = if depth == 0 { vec![] } else { (0..depth).map(|d| build(d, label)).collect() };
            Value::Record(vec![
                ("label".into(), Value::String(format!("{label}{depth}"))),
                ("secret".into(), if depth % 2 == 0 { Value::Union(0, Box::new(Value::Null)) } else { Value::Union(1, Box::new(Value::Bytes(vec![depth as u8; depth]))) }),
                ("children".into(), Value::Array(kids)),
                ("next".into(), if depth == 0 { Value::Union(0, Box::new(Value::Null)) } else { Value::Union(1, Box::new(build(depth - 1, label))) }),
            ])
        }
        let schema = Schema::parse(&json).unwrap();
        let enc = f.engine.encryptor(&json, "rec").unwrap();
        let dec = f.engine.decryptor(&enc.plan().output_json, "rec").unwrap();
        for d in depths {
            let datum = writer(&schema).write_value_to_vec(build(d, &label)).unwrap();
            let (encrypted, deks) = f.encrypt(&enc, &datum).unwrap();
            let mut back = Vec::new();
            dec.decrypt(&encrypted, &deks, &mut back).unwrap();
            prop_assert_eq!(back, datum);
        }
    }
}
