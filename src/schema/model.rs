//! The Avro schema as fieldcrypt walks it: a JSON schema compiled into an arena of
//! nodes with named types resolved, so recursive schemas and shared record types are
//! one node each. Hides Avro's naming rules (fullnames, namespaces, references).
//!
//! We compile from the JSON text rather than from `apache_avro::Schema` because the
//! output schema must keep every attribute of the input exactly (docs, defaults,
//! logical types, custom attributes) and JSON is the only lossless form.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value as Json};

use super::SchemaError;

/// Index of a node in [`SchemaTree::nodes`].
pub type NodeId = usize;

/// One Avro type, as far as the binary encoding is concerned. Logical types are
/// annotations on their underlying type and do not change the encoding.
#[derive(Debug, Clone)]
pub enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    /// A `fixed` of this many bytes.
    Fixed {
        name: String,
        size: usize,
    },
    /// An `enum` with these symbols.
    Enum {
        name: String,
        symbols: Vec<String>,
    },
    Array(NodeId),
    Map(NodeId),
    Union(Vec<NodeId>),
    Record(RecordDef),
    /// Placeholder while a record's fields are being compiled (self references).
    Pending,
}

/// A named record type and its fields, in declaration order.
#[derive(Debug, Clone)]
pub struct RecordDef {
    /// The record's full name (`namespace.name`).
    pub fullname: String,
    pub fields: Vec<FieldDef>,
}

/// One field of a record.
#[derive(Debug, Clone)]
pub struct FieldDef {
    pub name: String,
    pub node: NodeId,
    /// The field's JSON object as written, attributes included.
    pub json: Map<String, Json>,
}

/// A compiled schema: nodes plus the root.
#[derive(Debug, Clone)]
pub struct SchemaTree {
    pub nodes: Vec<Node>,
    pub root: NodeId,
    /// Named types by full name.
    pub names: HashMap<String, NodeId>,
    /// `logicalType` of nodes that declare one.
    pub logical: HashMap<NodeId, String>,
    /// Attributes of named-type definitions beyond Avro's own (`sensitive`,
    /// `confluent:tags`, `connect.*`, ...), by node.
    pub named_attrs: HashMap<NodeId, Map<String, Json>>,
    /// Per node: a lower bound on its encoded size (see [`SchemaTree::min_size`]).
    min_sizes: Vec<usize>,
    /// Deepest nesting of values the walkers follow in a datum of this schema
    /// (records, arrays and maps inside one another; a union adds no level).
    pub max_depth: usize,
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

impl SchemaTree {
    /// Compiles a schema from its JSON form.
    pub fn compile(json: &Json) -> Result<Self, SchemaError> {
        let mut b = Builder {
            nodes: Vec::new(),
            names: HashMap::new(),
            logical: HashMap::new(),
            named_attrs: HashMap::new(),
        };
        let root = b.node(json, "", "")?;
        let mut tree = SchemaTree {
            nodes: b.nodes,
            root,
            names: b.names,
            logical: b.logical,
            named_attrs: b.named_attrs,
            min_sizes: Vec::new(),
            max_depth: crate::avro::binary::MAX_DEPTH,
        };
        tree.min_sizes = tree.compute_min_sizes();
        Ok(tree)
    }

    /// The node behind an id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// The record behind an id, if it is one.
    pub fn record(&self, id: NodeId) -> Option<&RecordDef> {
        match &self.nodes[id] {
            Node::Record(r) => Some(r),
            _ => None,
        }
    }

    /// A short human name for a node's type, for tables and error messages.
    pub fn type_name(&self, id: NodeId) -> String {
        match &self.nodes[id] {
            Node::Null => "null".into(),
            Node::Boolean => "boolean".into(),
            Node::Int => "int".into(),
            Node::Long => "long".into(),
            Node::Float => "float".into(),
            Node::Double => "double".into(),
            Node::Bytes => "bytes".into(),
            Node::String => "string".into(),
            Node::Fixed { name, size } => format!("fixed {name}[{size}]"),
            Node::Enum { name, .. } => format!("enum {name}"),
            Node::Array(i) => format!("array<{}>", self.type_name(*i)),
            Node::Map(v) => format!("map<{}>", self.type_name(*v)),
            Node::Union(bs) => {
                let parts: Vec<String> = bs.iter().map(|b| self.type_name(*b)).collect();
                format!("[{}]", parts.join(", "))
            }
            Node::Record(r) => format!("record {}", r.fullname),
            Node::Pending => "?".into(),
        }
    }

    /// For a union containing `null`: the index of the null branch.
    pub fn null_branch(&self, id: NodeId) -> Option<usize> {
        match &self.nodes[id] {
            Node::Union(bs) => bs.iter().position(|b| matches!(self.nodes[*b], Node::Null)),
            _ => None,
        }
    }

    /// Is `v` a valid default value (Avro's JSON form) for this node? Unions accept
    /// a value of any branch, as apache-avro and fastavro do.
    pub fn default_is_valid(&self, id: NodeId, v: &Json) -> bool {
        match (&self.nodes[id], v) {
            (Node::Null, Json::Null) | (Node::Boolean, Json::Bool(_)) => true,
            (Node::Int, Json::Number(n)) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
            (Node::Long, Json::Number(n)) => n.as_i64().is_some(),
            (Node::Float | Node::Double, Json::Number(_)) => true,
            (Node::Float | Node::Double, Json::String(s)) => {
                matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity")
            }
            (Node::Bytes | Node::String, Json::String(_)) => true,
            (Node::Fixed { size, .. }, Json::String(s)) => s.chars().count() == *size,
            (Node::Enum { symbols, .. }, Json::String(s)) => symbols.contains(s),
            (Node::Array(i), Json::Array(items)) => {
                items.iter().all(|x| self.default_is_valid(*i, x))
            }
            (Node::Map(val), Json::Object(m)) => m.values().all(|x| self.default_is_valid(*val, x)),
            (Node::Record(r), Json::Object(m)) => r.fields.iter().all(|f| match m.get(&f.name) {
                Some(x) => self.default_is_valid(f.node, x),
                None => f.json.contains_key("default"),
            }),
            (Node::Union(bs), _) => bs.iter().any(|b| self.default_is_valid(*b, v)),
            _ => false,
        }
    }

    /// A lower bound on the bytes a value of this node encodes to; used to bound
    /// block counts so that hostile input cannot make us loop or allocate.
    pub fn min_size(&self, id: NodeId) -> usize {
        self.min_sizes[id]
    }

    /// Computed once per tree, memoised; a type on a cycle counts 0 inside itself
    /// (still a lower bound), so recursive and deeply shared schemas stay linear.
    fn compute_min_sizes(&self) -> Vec<usize> {
        const UNSEEN: usize = usize::MAX;
        const IN_PROGRESS: usize = usize::MAX - 1;
        let mut memo = vec![UNSEEN; self.nodes.len()];
        fn go(t: &SchemaTree, id: NodeId, memo: &mut [usize]) -> usize {
            match memo[id] {
                IN_PROGRESS => return 0,
                UNSEEN => {}
                v => return v,
            }
            memo[id] = IN_PROGRESS;
            let v = match &t.nodes[id] {
                Node::Null | Node::Pending => 0,
                Node::Boolean | Node::Int | Node::Long | Node::Bytes | Node::String => 1,
                Node::Enum { .. } | Node::Array(_) | Node::Map(_) | Node::Union(_) => 1,
                Node::Float => 4,
                Node::Double => 8,
                Node::Fixed { size, .. } => *size,
                Node::Record(r) => r
                    .fields
                    .iter()
                    .fold(0usize, |acc, f| acc.saturating_add(go(t, f.node, memo))),
            };
            memo[id] = v;
            v
        }
        for id in 0..self.nodes.len() {
            go(self, id, &mut memo);
        }
        memo
    }
}

/// Splits a full name into (namespace, name).
pub fn split_fullname(fullname: &str) -> (&str, &str) {
    match fullname.rfind('.') {
        Some(i) => (&fullname[..i], &fullname[i + 1..]),
        None => ("", fullname),
    }
}

/// The full name a named-type definition gets under the Avro naming rules.
pub fn definition_fullname(obj: &Map<String, Json>, enclosing_ns: &str) -> Option<String> {
    let name = obj.get("name")?.as_str()?;
    if name.contains('.') {
        return Some(name.to_string());
    }
    let ns = match obj.get("namespace").and_then(Json::as_str) {
        Some(ns) => ns,
        None => enclosing_ns,
    };
    Some(if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}.{name}")
    })
}

struct Builder {
    nodes: Vec<Node>,
    names: HashMap<String, NodeId>,
    logical: HashMap<NodeId, String>,
    named_attrs: HashMap<NodeId, Map<String, Json>>,
}

/// Keys Avro itself gives meaning to in a named-type definition.
const AVRO_KEYS: [&str; 9] = [
    "type",
    "name",
    "namespace",
    "fields",
    "symbols",
    "size",
    "doc",
    "aliases",
    "default",
];

impl Builder {
    fn push(&mut self, n: Node) -> NodeId {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn primitive(name: &str) -> Option<Node> {
        Some(match name {
            "null" => Node::Null,
            "boolean" => Node::Boolean,
            "int" => Node::Int,
            "long" => Node::Long,
            "float" => Node::Float,
            "double" => Node::Double,
            "bytes" => Node::Bytes,
            "string" => Node::String,
            _ => return None,
        })
    }

    fn reference(&mut self, name: &str, ns: &str, at: &str) -> Result<NodeId, SchemaError> {
        if let Some(p) = Self::primitive(name) {
            return Ok(self.push(p));
        }
        // A name with a dot is a full name; one without is looked up in the
        // enclosing namespace, then (as Java's Avro does) in the null namespace.
        let candidates = if name.contains('.') || ns.is_empty() {
            vec![name.to_string()]
        } else {
            vec![format!("{ns}.{name}"), name.to_string()]
        };
        for c in &candidates {
            if let Some(id) = self.names.get(c) {
                return Ok(*id);
            }
        }
        Err(SchemaError::invalid(
            at,
            format!("unknown type name \"{name}\" (named types must be defined before use)"),
        ))
    }

    fn define(&mut self, fullname: String, node: Node, at: &str) -> Result<NodeId, SchemaError> {
        if self.names.contains_key(&fullname) {
            return Err(SchemaError::invalid(
                at,
                format!("named type \"{fullname}\" is defined twice"),
            ));
        }
        let id = self.push(node);
        self.names.insert(fullname, id);
        Ok(id)
    }

    fn node(&mut self, json: &Json, ns: &str, at: &str) -> Result<NodeId, SchemaError> {
        match json {
            Json::String(name) => self.reference(name, ns, at),
            Json::Array(branches) => {
                let mut ids = Vec::with_capacity(branches.len());
                for (i, b) in branches.iter().enumerate() {
                    if b.is_array() {
                        return Err(SchemaError::invalid(at, "a union may not contain a union"));
                    }
                    ids.push(self.node(b, ns, &format!("{at}<branch {i}>"))?);
                }
                Ok(self.push(Node::Union(ids)))
            }
            Json::Object(obj) => self.complex(obj, ns, at),
            other => Err(SchemaError::invalid(
                at,
                format!("expected a type name, union or type object, found {other}"),
            )),
        }
    }

    fn complex(
        &mut self,
        obj: &Map<String, Json>,
        ns: &str,
        at: &str,
    ) -> Result<NodeId, SchemaError> {
        let id = self.complex_inner(obj, ns, at)?;
        if matches!(
            obj.get("type").and_then(Json::as_str),
            Some("record" | "error" | "enum" | "fixed")
        ) {
            let extra: Map<String, Json> = obj
                .iter()
                .filter(|(k, _)| !AVRO_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !extra.is_empty() {
                self.named_attrs.insert(id, extra);
            }
        }
        if let Some(l) = obj.get("logicalType").and_then(Json::as_str) {
            self.logical.insert(id, l.to_string());
        }
        Ok(id)
    }

    fn complex_inner(
        &mut self,
        obj: &Map<String, Json>,
        ns: &str,
        at: &str,
    ) -> Result<NodeId, SchemaError> {
        let ty = obj
            .get("type")
            .ok_or_else(|| SchemaError::invalid(at, "type object has no \"type\""))?;
        let ty = match ty {
            Json::String(s) => s.as_str(),
            // {"type": {...}} or {"type": [...]}: a wrapped type.
            other => return self.node(other, ns, at),
        };
        if PRIMITIVES.contains(&ty) {
            return Ok(self.push(Self::primitive(ty).unwrap_or(Node::Null)));
        }
        match ty {
            "record" | "error" => {
                let fullname = definition_fullname(obj, ns)
                    .ok_or_else(|| SchemaError::invalid(at, "record has no \"name\""))?;
                let id = self.define(fullname.clone(), Node::Pending, at)?;
                let (inner_ns, _) = split_fullname(&fullname);
                let inner_ns = inner_ns.to_string();
                let fields_json = obj.get("fields").and_then(Json::as_array).ok_or_else(|| {
                    SchemaError::invalid(at, format!("record {fullname} has no \"fields\" array"))
                })?;
                let mut fields = Vec::with_capacity(fields_json.len());
                // Names seen so far: a set, so a schema with many fields (a
                // registry schema is attacker-controlled) costs linear time.
                let mut names: HashSet<&str> = HashSet::with_capacity(fields_json.len());
                for f in fields_json {
                    let fobj = f.as_object().ok_or_else(|| {
                        SchemaError::invalid(
                            at,
                            format!("record {fullname}: a field is not an object"),
                        )
                    })?;
                    let name = fobj.get("name").and_then(Json::as_str).ok_or_else(|| {
                        SchemaError::invalid(at, format!("record {fullname}: a field has no name"))
                    })?;
                    if !names.insert(name) {
                        return Err(SchemaError::invalid(
                            at,
                            format!("record {fullname}: field \"{name}\" appears twice"),
                        ));
                    }
                    let fty = fobj.get("type").ok_or_else(|| {
                        SchemaError::invalid(
                            at,
                            format!("record {fullname}: field {name} has no type"),
                        )
                    })?;
                    let node = self.node(fty, &inner_ns, &format!("{fullname}.{name}"))?;
                    fields.push(FieldDef {
                        name: name.to_string(),
                        node,
                        json: fobj.clone(),
                    });
                }
                self.nodes[id] = Node::Record(RecordDef { fullname, fields });
                Ok(id)
            }
            "enum" => {
                let fullname = definition_fullname(obj, ns)
                    .ok_or_else(|| SchemaError::invalid(at, "enum has no \"name\""))?;
                let symbols = obj
                    .get("symbols")
                    .and_then(Json::as_array)
                    .ok_or_else(|| {
                        SchemaError::invalid(at, format!("enum {fullname} has no symbols"))
                    })?
                    .iter()
                    .map(|s| s.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        SchemaError::invalid(
                            at,
                            format!("enum {fullname}: symbols must be strings"),
                        )
                    })?;
                let node = Node::Enum {
                    name: fullname.clone(),
                    symbols,
                };
                self.define(fullname, node, at)
            }
            "fixed" => {
                let fullname = definition_fullname(obj, ns)
                    .ok_or_else(|| SchemaError::invalid(at, "fixed has no \"name\""))?;
                let size = obj.get("size").and_then(Json::as_u64).ok_or_else(|| {
                    SchemaError::invalid(at, format!("fixed {fullname} has no size"))
                })?;
                let node = Node::Fixed {
                    name: fullname.clone(),
                    size: size as usize,
                };
                self.define(fullname, node, at)
            }
            "array" => {
                let items = obj
                    .get("items")
                    .ok_or_else(|| SchemaError::invalid(at, "array has no \"items\""))?;
                let item = self.node(items, ns, &format!("{at}[]"))?;
                Ok(self.push(Node::Array(item)))
            }
            "map" => {
                let values = obj
                    .get("values")
                    .ok_or_else(|| SchemaError::invalid(at, "map has no \"values\""))?;
                let v = self.node(values, ns, &format!("{at}{{}}"))?;
                Ok(self.push(Node::Map(v)))
            }
            other => self.reference(other, ns, at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolves_namespaces_and_recursion() {
        let s = json!({
            "type": "record", "name": "List", "namespace": "a.b",
            "fields": [
                {"name": "value", "type": "long"},
                {"name": "next", "type": ["null", "List"]},
                {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["X", "Y"]}},
                {"name": "kind2", "type": "a.b.Kind"},
                {"name": "h", "type": {"type": "fixed", "name": "c.H", "size": 4}},
                {"name": "h2", "type": "c.H"}
            ]
        });
        let t = SchemaTree::compile(&s).unwrap();
        let r = t.record(t.root).unwrap();
        assert_eq!(r.fullname, "a.b.List");
        let Node::Union(bs) = t.node(r.fields[1].node) else {
            panic!("not a union")
        };
        assert_eq!(
            bs[1], t.root,
            "recursive reference resolves to the record itself"
        );
        assert_eq!(r.fields[2].node, r.fields[3].node);
        assert_eq!(r.fields[4].node, r.fields[5].node);
        assert!(t.names.contains_key("c.H"));
        assert_eq!(t.null_branch(r.fields[1].node), Some(0));
    }

    #[test]
    fn min_size_is_linear_on_deeply_shared_types() {
        // R0{a: R1, b: R1}, R1{a: R2, b: R2}, ...: 2^70 paths, 71 records.
        let mut t =
            json!({"type": "record", "name": "R70", "fields": [{"name": "x", "type": "long"}]});
        for i in (0..70).rev() {
            t = json!({"type": "record", "name": format!("R{i}"), "fields": [
                {"name": "a", "type": t}, {"name": "b", "type": format!("R{}", i + 1)}]});
        }
        let tree = SchemaTree::compile(&t).unwrap();
        assert_eq!(
            tree.min_size(tree.root),
            usize::MAX,
            "saturates instead of overflowing"
        );
        let rec = json!({"type": "record", "name": "L", "fields": [{"name": "next", "type": ["null", "L"]}]});
        let tree = SchemaTree::compile(&rec).unwrap();
        assert_eq!(tree.min_size(tree.root), 1);
    }

    #[test]
    fn unknown_names_are_errors_with_location() {
        let s = json!({"type": "record", "name": "R", "fields": [{"name": "x", "type": "Nope"}]});
        let e = SchemaTree::compile(&s).unwrap_err().to_string();
        assert!(e.contains("Nope") && e.contains("R.x"), "{e}");
    }
}
