//! Transform plans and derived schemas. For a writer schema and its policies this
//! computes, once, what the encrypt walker does at each record field and the output
//! schema it produces; for an encrypted schema it recovers the original schema
//! exactly and the decrypt walker's plan. Hides the schema-rewriting rules
//! (specified in docs/ENCRYPTION.md, "Output schema").

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::{json, Map, Value as Json};

use super::model::{split_fullname, Node, NodeId, SchemaTree};
use super::policy::{select, Mode, SelectionConfig, Source};
use super::SchemaError;

/// Attribute that carries fieldcrypt's bookkeeping in an output schema.
pub const ATTR: &str = "fieldcrypt";
/// Version of the output-schema attribute layout.
pub const ATTR_VERSION: u64 = 1;

/// Settings that shape plans, taken from config.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub selection: SelectionConfig,
    /// Appended to a field's name to name its blind-index field.
    pub blind_index_suffix: String,
    /// Blind-index domains that normalise text and so only apply to strings.
    pub text_only_domains: HashSet<String>,
    /// Deepest nesting of values the walkers follow (`schema.max_depth`).
    pub max_depth: usize,
}

/// What a blind index hashes, by the source field's (non-null) type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexInput {
    String,
    Bytes,
    Fixed(usize),
    Int,
    Long,
    Float,
    Double,
    Boolean,
    Enum,
}

/// Where null sits in a nullable encrypted field, in and out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nullable {
    /// Branch index of `null` in the original union.
    pub null_branch: usize,
    /// Branch indexes of `null` and `bytes` in the output union.
    pub out_null: usize,
    pub out_bytes: usize,
}

/// A blind-index field added after an encrypted field.
#[derive(Debug, Clone)]
pub struct IndexSpec {
    pub domain: String,
    pub input: IndexInput,
    /// Enum symbols, when `input` is `Enum`.
    pub symbols: Vec<String>,
}

/// One field the encrypt walker encrypts.
#[derive(Debug, Clone)]
pub struct EncryptField {
    /// `<record fullname>.<field name>`: bound into the associated data.
    pub context: String,
    pub mode: Mode,
    /// Deterministic key domain.
    pub domain: Option<String>,
    /// The field's original type.
    pub node: NodeId,
    pub nullable: Option<Nullable>,
    pub index: Option<IndexSpec>,
}

/// What the encrypt walker does with one record field.
#[derive(Debug, Clone)]
pub enum FieldAction {
    /// Nothing sensitive below: validate and copy the bytes.
    Copy,
    /// Something sensitive below: walk into it.
    Recurse,
    Encrypt(Arc<EncryptField>),
}

/// A row of the human-readable plan.
#[derive(Debug, Clone)]
pub struct PlanRow {
    pub path: String,
    pub type_name: String,
    pub mode: Mode,
    pub domain: Option<String>,
    pub index_field: Option<(String, String)>,
    pub source: Source,
}

/// Everything needed to encrypt records of one writer schema.
#[derive(Debug)]
pub struct EncryptPlan {
    pub tree: SchemaTree,
    /// Per node: for records, one action per field; empty otherwise.
    pub actions: Vec<Vec<FieldAction>>,
    /// Per node: does anything below it change?
    pub dirty: Vec<bool>,
    pub output_json: Json,
    pub output_tree: SchemaTree,
    pub rows: Vec<PlanRow>,
    /// The registry's `metadata.tags` patterns the plan was built with.
    pub metadata_tags: Vec<(String, Vec<String>)>,
}

impl EncryptPlan {
    /// Builds the plan for `json`; `label` names the schema in errors.
    pub fn build(json: &Json, label: &str, cfg: &PlanConfig) -> Result<Self, SchemaError> {
        Self::build_tagged(json, &[], label, cfg)
    }

    /// As [`build`](Self::build) for a registered schema whose `metadata.tags`
    /// give fields tags (`metadata`: pattern, tags).
    pub fn build_tagged(
        json: &Json,
        metadata: &super::policy::MetadataTags,
        label: &str,
        cfg: &PlanConfig,
    ) -> Result<Self, SchemaError> {
        let mut tree = SchemaTree::compile(json)?;
        tree.max_depth = cfg.max_depth;
        let selection = select(&tree, label, &cfg.selection, metadata)?;
        let perr = |path: &str, msg: String| SchemaError::Policy {
            schema: label.into(),
            path: path.into(),
            msg,
        };

        let mut actions: Vec<Vec<FieldAction>> = vec![Vec::new(); tree.nodes.len()];
        for (id, node) in tree.nodes.iter().enumerate() {
            let Node::Record(r) = node else { continue };
            // A set, so blind-index name checks stay linear in the field count.
            let field_names: HashSet<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
            for (i, f) in r.fields.iter().enumerate() {
                let path = format!("{}.{}", r.fullname, f.name);
                let Some(sel) = selection.get(&(id, i)) else {
                    actions[id].push(FieldAction::Copy);
                    continue;
                };
                let nullable = tree.null_branch(f.node).map(|null_branch| {
                    let (out_null, out_bytes) = if null_branch == 0 { (0, 1) } else { (1, 0) };
                    Nullable {
                        null_branch,
                        out_null,
                        out_bytes,
                    }
                });
                let index = match &sel.policy.blind_index {
                    None => None,
                    Some(domain) => {
                        let (input, symbols) = index_input(&tree, f.node).ok_or_else(|| {
                            perr(
                                &path,
                                format!(
                                    "a blind index needs a primitive, enum or fixed value (optionally \
                                     nullable), but the field is {}; remove blind_index or index a \
                                     primitive sub-field",
                                    tree.type_name(f.node)
                                ),
                            )
                        })?;
                        if cfg.text_only_domains.contains(domain) && input != IndexInput::String {
                            return Err(perr(
                                &path,
                                format!(
                                    "blind-index domain \"{domain}\" normalises text but the field is {}; \
                                     use a domain without normalize for it",
                                    tree.type_name(f.node)
                                ),
                            ));
                        }
                        let name = format!("{}{}", f.name, cfg.blind_index_suffix);
                        if field_names.contains(name.as_str()) {
                            return Err(perr(
                                &path,
                                format!(
                                    "the blind-index field name \"{name}\" is already a field of {}; \
                                     set schema.blind_index_suffix to something unused",
                                    r.fullname
                                ),
                            ));
                        }
                        Some(IndexSpec {
                            domain: domain.clone(),
                            input,
                            symbols,
                        })
                    }
                };
                actions[id].push(FieldAction::Encrypt(Arc::new(EncryptField {
                    context: path.clone(),
                    mode: sel.policy.mode,
                    domain: sel.policy.domain.clone(),
                    node: f.node,
                    nullable,
                    index,
                })));
            }
        }

        let dirty = compute_dirty(&tree, |id, i| {
            matches!(actions[id].get(i), Some(FieldAction::Encrypt(_)))
        });
        for (id, acts) in actions.iter_mut().enumerate() {
            if let Some(r) = tree.record(id) {
                for (i, a) in acts.iter_mut().enumerate() {
                    if matches!(a, FieldAction::Copy) && dirty[r.fields[i].node] {
                        *a = FieldAction::Recurse;
                    }
                }
            }
        }
        check_no_index_inside_encrypted(&tree, &actions, label)?;

        let output_json = derive_output(json, &tree, &actions, &dirty, cfg, label)?;
        let mut output_tree =
            SchemaTree::compile(&output_json).map_err(|e| SchemaError::Other {
                schema: label.into(),
                msg: format!(
                    "fieldcrypt derived an invalid output schema ({e}); please report this"
                ),
            })?;
        output_tree.max_depth = cfg.max_depth;
        super::check_with_apache_avro(&output_json).map_err(|e| SchemaError::Other {
            schema: label.into(),
            msg: format!(
                "fieldcrypt derived an output schema that apache-avro rejects ({e}); please report this"
            ),
        })?;

        let mut rows = Rows {
            tree: &tree,
            actions: &actions,
            selection: &selection,
            cfg,
            on_stack: Vec::new(),
            rows: Vec::new(),
        };
        rows.collect(tree.root, String::new());
        let rows = rows.rows;
        Ok(EncryptPlan {
            tree,
            actions,
            dirty,
            output_json,
            output_tree,
            rows,
            metadata_tags: metadata.to_vec(),
        })
    }

    /// Is anything in this schema encrypted?
    pub fn is_passthrough(&self) -> bool {
        !self.dirty[self.tree.root]
    }

    /// What this plan encrypts, as a floor later schemas must not go below.
    pub fn floor(&self) -> Floor {
        self.fields()
            .map(|f| {
                (
                    f.context.clone(),
                    f.index.as_ref().map(|i| i.domain.clone()),
                )
            })
            .collect()
    }

    /// The fields of `floor` that this schema has but would leave in clear (or
    /// without the blind index the floor has), each described for an error.
    pub fn below(&self, floor: &Floor) -> Vec<String> {
        let in_clear = self.records_in_clear();
        let mut out = Vec::new();
        for (ctx, index) in floor {
            let Some((record, field)) = ctx.rsplit_once('.') else {
                continue;
            };
            let Some(&rid) = self.tree.names.get(record) else {
                continue;
            };
            if !in_clear[rid] {
                // Only ever inside fields encrypted whole: its fields are too.
                continue;
            }
            let Some(r) = self.tree.record(rid) else {
                continue;
            };
            let Some(i) = r.fields.iter().position(|f| f.name == field) else {
                continue;
            };
            match &self.actions[rid][i] {
                FieldAction::Encrypt(ef) => {
                    if let (Some(d), None) = (index, &ef.index) {
                        out.push(format!("{ctx} (its blind index in domain {d})"));
                    }
                }
                _ => out.push(ctx.clone()),
            }
        }
        out
    }

    /// Per node: can a record of this type appear outside every encrypted field
    /// (reachable from the root through fields left in clear)?
    fn records_in_clear(&self) -> Vec<bool> {
        let mut seen = vec![false; self.tree.nodes.len()];
        let mut stack = vec![self.tree.root];
        while let Some(id) = stack.pop() {
            if std::mem::replace(&mut seen[id], true) {
                continue;
            }
            match self.tree.node(id) {
                Node::Record(r) => {
                    for (i, f) in r.fields.iter().enumerate() {
                        if !matches!(self.actions[id].get(i), Some(FieldAction::Encrypt(_))) {
                            stack.push(f.node);
                        }
                    }
                }
                Node::Union(bs) => stack.extend(bs.iter().copied()),
                Node::Array(i) | Node::Map(i) => stack.push(*i),
                _ => {}
            }
        }
        seen
    }

    /// Fields carrying `confluent:tags` tag `tag` wherever selection honours one
    /// (the field, its type, union branches, array items, map values, named
    /// types), by context.
    pub fn tagged(&self, tag: &str) -> Vec<String> {
        super::policy::fields_tagged(&self.tree, tag, &self.metadata_tags)
    }

    /// Deterministic key domains the plan uses.
    pub fn deterministic_domains(&self) -> HashSet<String> {
        self.fields().filter_map(|f| f.domain.clone()).collect()
    }

    /// Blind-index domains the plan uses.
    pub fn index_domains(&self) -> HashSet<String> {
        self.fields()
            .filter_map(|f| f.index.as_ref().map(|i| i.domain.clone()))
            .collect()
    }

    fn fields(&self) -> impl Iterator<Item = &EncryptField> {
        self.actions.iter().flatten().filter_map(|a| match a {
            FieldAction::Encrypt(f) => Some(f.as_ref()),
            _ => None,
        })
    }

    /// The plan as a text table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let header = ["FIELD", "TYPE", "MODE", "BLIND INDEX", "SOURCE"];
        let rows: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.path.clone(),
                    r.type_name.clone(),
                    match &r.domain {
                        Some(d) => format!("{} ({d})", r.mode),
                        None => r.mode.to_string(),
                    },
                    r.index_field
                        .as_ref()
                        .map(|(f, d)| format!("{f} ({d})"))
                        .unwrap_or_else(|| "-".into()),
                    r.source.to_string(),
                ]
            })
            .collect();
        let mut w = header.map(str::len);
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String; 5], out: &mut String| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let _ = write!(s, "{:<width$}  ", c, width = w[i]);
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(&header.map(String::from), &mut out);
        for r in &rows {
            line(r, &mut out);
        }
        if rows.is_empty() {
            out.push_str("(no sensitive fields: records pass through unchanged)\n");
        }
        out
    }
}

/// The fields some schema encrypts (by context `<record full name>.<field>`),
/// with the blind-index domain each had: the floor a subject's later schemas
/// must not go below.
pub type Floor = std::collections::BTreeMap<String, Option<String>>;

/// One encrypted field as the decrypt walker sees it.
#[derive(Debug, Clone)]
pub struct DecryptField {
    pub context: String,
    /// The field's original type, in the original tree.
    pub node: NodeId,
    /// For nullable fields: (null branch in the encrypted union, null branch in the
    /// original union).
    pub nullable: Option<(usize, usize)>,
}

/// What the decrypt walker does with one record field of the encrypted schema.
#[derive(Debug, Clone)]
pub enum DecryptAction {
    Copy,
    Recurse,
    Decrypt(Arc<DecryptField>),
    /// A blind-index field: not part of the original record.
    Drop,
}

/// Everything needed to decrypt records of one encrypted schema.
#[derive(Debug)]
pub struct DecryptPlan {
    /// The encrypted (writer) schema.
    pub tree: SchemaTree,
    pub actions: Vec<Vec<DecryptAction>>,
    pub dirty: Vec<bool>,
    /// The original schema, restored exactly.
    pub original_json: Json,
    pub original_tree: SchemaTree,
}

impl DecryptPlan {
    /// Builds the plan for an encrypted schema; `label` names it in errors.
    pub fn build(json: &Json, label: &str) -> Result<Self, SchemaError> {
        Self::build_with_depth(json, label, crate::avro::binary::MAX_DEPTH)
    }

    /// As [`build`](Self::build), following values nested up to `max_depth` levels.
    pub fn build_with_depth(
        json: &Json,
        label: &str,
        max_depth: usize,
    ) -> Result<Self, SchemaError> {
        let mut tree = SchemaTree::compile(json)?;
        tree.max_depth = max_depth;
        let original_json = restore_original(json)?;
        let err = |msg: String| SchemaError::Other {
            schema: label.into(),
            msg,
        };
        // The schema comes from the data (a file header, a registry): check that what
        // we will write is a valid schema before writing anything.
        super::check_with_apache_avro(&original_json)
            .map_err(|e| err(format!("the restored original schema is invalid: {e}")))?;
        let mut original_tree = SchemaTree::compile(&original_json)?;
        original_tree.max_depth = max_depth;
        let bytes_like = |id: NodeId| match tree.node(id) {
            Node::Bytes => true,
            Node::Union(bs) => {
                bs.len() == 2
                    && tree.null_branch(id).is_some()
                    && bs.iter().any(|b| matches!(tree.node(*b), Node::Bytes))
            }
            _ => false,
        };
        let mut actions: Vec<Vec<DecryptAction>> = vec![Vec::new(); tree.nodes.len()];
        for (id, node) in tree.nodes.iter().enumerate() {
            let Node::Record(r) = node else { continue };
            let orig = original_tree
                .names
                .get(&r.fullname)
                .and_then(|o| original_tree.record(*o));
            for f in &r.fields {
                let attr = f
                    .json
                    .get(ATTR)
                    .and_then(Json::as_object)
                    // A field kept as it was, with what the output changed about it.
                    .filter(|a| !a.contains_key("original"));
                if attr.is_some() && !bytes_like(f.node) {
                    return Err(err(format!(
                        "field {}.{} carries a fieldcrypt attribute but is not bytes or [null, bytes]",
                        r.fullname, f.name
                    )));
                }
                let action = match attr {
                    None => DecryptAction::Copy,
                    Some(a) if a.contains_key("blind_index_of") => DecryptAction::Drop,
                    Some(_) => {
                        let of = orig
                            .and_then(|o| o.fields.iter().find(|x| x.name == f.name))
                            .ok_or_else(|| {
                                err(format!(
                                    "encrypted field {}.{} has no original",
                                    r.fullname, f.name
                                ))
                            })?;
                        let enc_null = tree.null_branch(f.node);
                        let orig_null = original_tree.null_branch(of.node);
                        let nullable = match (enc_null, orig_null) {
                            (Some(e), Some(o)) => Some((e, o)),
                            (None, None) => None,
                            _ => {
                                return Err(err(format!(
                                "field {}.{}: encrypted and original types disagree on nullability",
                                r.fullname, f.name
                            )))
                            }
                        };
                        DecryptAction::Decrypt(Arc::new(DecryptField {
                            context: format!("{}.{}", r.fullname, f.name),
                            node: of.node,
                            nullable,
                        }))
                    }
                };
                actions[id].push(action);
            }
        }
        let dirty = compute_dirty(&tree, |id, i| {
            matches!(
                actions[id].get(i),
                Some(DecryptAction::Decrypt(_) | DecryptAction::Drop)
            )
        });
        for (id, acts) in actions.iter_mut().enumerate() {
            if let Some(r) = tree.record(id) {
                for (i, a) in acts.iter_mut().enumerate() {
                    if matches!(a, DecryptAction::Copy) && dirty[r.fields[i].node] {
                        *a = DecryptAction::Recurse;
                    }
                }
            }
        }
        Ok(DecryptPlan {
            tree,
            actions,
            dirty,
            original_json,
            original_tree,
        })
    }

    /// Does the schema carry any fieldcrypt fields?
    pub fn is_passthrough(&self) -> bool {
        !self.dirty[self.tree.root]
    }
}

/// Rebuilds the original schema from an encrypted one: encrypted fields get their
/// stored original back, blind-index fields go.
pub fn restore_original(json: &Json) -> Result<Json, SchemaError> {
    let mut out = json.clone();
    rewrite_records(&mut out, "", &mut |fullname, fields| {
        let old = std::mem::take(fields);
        for f in old {
            let attr = f.get(ATTR).and_then(Json::as_object);
            match attr {
                None => fields.push(f),
                Some(a) if a.contains_key("blind_index_of") => {}
                Some(a) if a.contains_key("original") => {
                    let original =
                        a.get("original").and_then(Json::as_object).ok_or_else(|| {
                            SchemaError::invalid(
                                fullname,
                                "a \"fieldcrypt\" attribute's \"original\" is not an object",
                            )
                        })?;
                    check_attr_version(fullname, a)?;
                    let mut obj = f.as_object().cloned().unwrap_or_default();
                    obj.remove(ATTR);
                    for (k, v) in original {
                        obj.insert(k.clone(), v.clone());
                    }
                    fields.push(Json::Object(obj));
                }
                Some(a) => {
                    let orig = a.get("field").filter(|v| v.is_object()).ok_or_else(|| {
                        SchemaError::invalid(
                            fullname,
                            format!(
                                "field {} has a \"{ATTR}\" attribute without the original field",
                                f.get("name").and_then(Json::as_str).unwrap_or("?")
                            ),
                        )
                    })?;
                    check_attr_version(fullname, a)?;
                    fields.push(orig.clone());
                }
            }
        }
        Ok(())
    })?;
    Ok(out)
}

fn check_attr_version(fullname: &str, a: &Map<String, Json>) -> Result<(), SchemaError> {
    let v = a.get("v").and_then(Json::as_u64).unwrap_or(0);
    if v != ATTR_VERSION {
        return Err(SchemaError::invalid(
            fullname,
            format!("unsupported fieldcrypt schema attribute version {v}; upgrade fieldcrypt"),
        ));
    }
    Ok(())
}

/// Does this schema carry fieldcrypt attributes (is it an encrypted schema)?
pub fn is_encrypted_schema(json: &Json) -> bool {
    let mut found = false;
    let mut probe = json.clone();
    let _ = rewrite_records(&mut probe, "", &mut |_, fields| {
        found |= fields.iter().any(|f| f.get(ATTR).is_some());
        Ok(())
    });
    found
}

/// The output schema: encrypted fields become `bytes` (keeping the original field
/// in the attribute), blind-index fields follow them, named types defined inside
/// encrypted fields are defined again at their next use, and defaults that hold
/// encrypted parts are rewritten without them. Every other field is kept as
/// written; a field this changes keeps what it changed in its attribute.
fn derive_output(
    json: &Json,
    tree: &SchemaTree,
    actions: &[Vec<FieldAction>],
    dirty: &[bool],
    cfg: &PlanConfig,
    label: &str,
) -> Result<Json, SchemaError> {
    let mut encrypted = HashSet::new();
    for (id, acts) in actions.iter().enumerate() {
        if let Some(r) = tree.record(id) {
            for (i, a) in acts.iter().enumerate() {
                if matches!(a, FieldAction::Encrypt(_)) {
                    encrypted.insert((r.fullname.clone(), r.fields[i].name.clone()));
                }
            }
        }
    }
    // Definitions that disappear with their encrypted field.
    let mut available = std::collections::HashMap::new();
    let mut probe = json.clone();
    rewrite_records(&mut probe, "", &mut |fullname, fields| {
        let inner = split_fullname(fullname).0;
        for f in fields.iter() {
            let name = f.get("name").and_then(Json::as_str).unwrap_or_default();
            if encrypted.contains(&(fullname.to_string(), name.to_string())) {
                if let Some(t) = f.get("type") {
                    super::relocate::definitions(t, inner, &mut available);
                }
            }
        }
        Ok(())
    })?;
    let mut output = json.clone();
    let relocated = super::relocate::relocate(&mut output, &available, &encrypted);
    if relocated.outside_fields {
        return Err(SchemaError::Other {
            schema: label.into(),
            msg: "a named type defined inside an encrypted field is used again as a branch of \
                  the top-level union, where its definition cannot be moved; define it in a \
                  field that is not encrypted"
                .into(),
        });
    }
    let moved = relocated.changed;
    rewrite_records(&mut output, "", &mut |fullname, fields| {
        let Some(&rid) = tree.names.get(fullname) else {
            return Ok(());
        };
        let Some(record) = tree.record(rid) else {
            return Ok(());
        };
        let old = std::mem::take(fields);
        for (i, f) in old.into_iter().enumerate() {
            let (Some(action), Some(def)) = (actions[rid].get(i), record.fields.get(i)) else {
                fields.push(f);
                continue;
            };
            match action {
                FieldAction::Encrypt(ef) => {
                    // The field as written (relocation never touches encrypted fields).
                    fields.push(encrypted_field_json(&def.json, ef));
                    if let Some(ix) = &ef.index {
                        let name = format!("{}{}", def.name, cfg.blind_index_suffix);
                        fields.push(index_field_json(&name, &def.json, ef, ix));
                    }
                }
                _ => {
                    let Json::Object(mut obj) = f else {
                        fields.push(f);
                        continue;
                    };
                    let mut original = Map::new();
                    if let Some(t) = moved.get(&(fullname.to_string(), def.name.clone())) {
                        original.insert("type".into(), t.clone());
                    }
                    if dirty[def.node] {
                        if let Some(d) = obj.get("default").cloned() {
                            let index_name = |n: &str| format!("{n}{}", cfg.blind_index_suffix);
                            match output_default(tree, actions, dirty, def.node, &d, &index_name) {
                                Some(nd) if nd == d => {}
                                Some(nd) => {
                                    obj.insert("default".into(), nd);
                                    original.insert("default".into(), d);
                                }
                                None => {
                                    obj.remove("default");
                                    original.insert("default".into(), d);
                                }
                            }
                        }
                    }
                    if !original.is_empty() {
                        obj.insert(
                            ATTR.into(),
                            json!({"v": ATTR_VERSION, "original": Json::Object(original)}),
                        );
                    }
                    fields.push(Json::Object(obj));
                }
            }
        }
        Ok(())
    })?;
    Ok(output)
}

/// Could a JSON default be a value of this node? (The shape only: enough to pick
/// the union branch a default belongs to.)
fn default_fits(tree: &SchemaTree, node: NodeId, v: &Json) -> bool {
    match (tree.node(node), v) {
        (Node::Null, Json::Null) | (Node::Boolean, Json::Bool(_)) => true,
        (Node::Int | Node::Long | Node::Float | Node::Double, Json::Number(_)) => true,
        (Node::Float | Node::Double, Json::String(s)) => {
            matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity")
        }
        (Node::Bytes | Node::String | Node::Fixed { .. } | Node::Enum { .. }, Json::String(_)) => {
            true
        }
        (Node::Array(_), Json::Array(_)) => true,
        (Node::Map(_) | Node::Record(_), Json::Object(_)) => true,
        (Node::Union(bs), _) => bs.iter().any(|b| default_fits(tree, *b, v)),
        _ => false,
    }
}

/// The output form of a default value of type `node`: encrypted parts become null
/// where their output type starts with null, blind indexes of nulls are null, all
/// else is kept. `None`: the value cannot be written without a ciphertext (or is
/// not a valid default), so the default is dropped.
fn output_default(
    tree: &SchemaTree,
    actions: &[Vec<FieldAction>],
    dirty: &[bool],
    node: NodeId,
    v: &Json,
    index_name: &dyn Fn(&str) -> String,
) -> Option<Json> {
    if !dirty[node] {
        return Some(v.clone());
    }
    match tree.node(node) {
        Node::Record(r) => {
            let obj = v.as_object()?;
            let mut out = Map::new();
            for (i, f) in r.fields.iter().enumerate() {
                let val = obj.get(&f.name).or_else(|| f.json.get("default"))?;
                match &actions[node][i] {
                    FieldAction::Encrypt(ef) => {
                        let null_first = ef.nullable.is_some_and(|n| n.out_null == 0);
                        if !(val.is_null() && null_first) {
                            return None;
                        }
                        out.insert(f.name.clone(), Json::Null);
                        if ef.index.is_some() {
                            out.insert(index_name(&f.name), Json::Null);
                        }
                    }
                    FieldAction::Recurse => {
                        let nv = output_default(tree, actions, dirty, f.node, val, index_name)?;
                        out.insert(f.name.clone(), nv);
                    }
                    FieldAction::Copy => {
                        out.insert(f.name.clone(), val.clone());
                    }
                }
            }
            Some(Json::Object(out))
        }
        Node::Union(bs) => {
            // The spec ties a union's default to its first branch; be lenient about
            // defaults written for another branch, as apache-avro is.
            let b = bs.iter().find(|b| default_fits(tree, **b, v))?;
            output_default(tree, actions, dirty, *b, v, index_name)
        }
        Node::Array(item) => v
            .as_array()?
            .iter()
            .map(|x| output_default(tree, actions, dirty, *item, x, index_name))
            .collect::<Option<Vec<_>>>()
            .map(Json::Array),
        Node::Map(val) => {
            let obj = v.as_object()?;
            let mut out = Map::new();
            for (k, x) in obj {
                out.insert(
                    k.clone(),
                    output_default(tree, actions, dirty, *val, x, index_name)?,
                );
            }
            Some(Json::Object(out))
        }
        _ => Some(v.clone()),
    }
}

fn encrypted_field_json(orig: &Map<String, Json>, f: &EncryptField) -> Json {
    let mut o = Map::new();
    for k in ["name", "doc", "aliases"] {
        if let Some(v) = orig.get(k) {
            o.insert(k.into(), v.clone());
        }
    }
    match f.nullable {
        Some(n) if n.out_null == 0 => {
            o.insert("type".into(), json!(["null", "bytes"]));
            if orig.get("default") == Some(&Json::Null) {
                o.insert("default".into(), Json::Null);
            }
        }
        Some(_) => {
            o.insert("type".into(), json!(["bytes", "null"]));
        }
        None => {
            o.insert("type".into(), json!("bytes"));
        }
    }
    let mut a = Map::new();
    a.insert("v".into(), json!(ATTR_VERSION));
    a.insert("mode".into(), json!(f.mode.to_string()));
    a.insert("field".into(), Json::Object(orig.clone()));
    o.insert(ATTR.into(), Json::Object(a));
    Json::Object(o)
}

fn index_field_json(
    name: &str,
    orig: &Map<String, Json>,
    f: &EncryptField,
    ix: &IndexSpec,
) -> Json {
    let source = orig.get("name").and_then(Json::as_str).unwrap_or("");
    let mut o = Map::new();
    o.insert("name".into(), json!(name));
    o.insert(
        "doc".into(),
        json!(format!(
            "HMAC-SHA256 blind index of {source} (domain {})",
            ix.domain
        )),
    );
    if f.nullable.is_some() {
        o.insert("type".into(), json!(["null", "bytes"]));
        o.insert("default".into(), Json::Null);
    } else {
        o.insert("type".into(), json!("bytes"));
    }
    o.insert(
        ATTR.into(),
        json!({"v": ATTR_VERSION, "blind_index_of": source, "domain": ix.domain}),
    );
    Json::Object(o)
}

type FieldsFn<'a> = dyn FnMut(&str, &mut Vec<Json>) -> Result<(), SchemaError> + 'a;

/// Walks a JSON schema in definition order, handing each record definition's
/// `fields` array (by record full name) to `f`, then descending into the field
/// types as `f` left them.
pub fn rewrite_records(json: &mut Json, ns: &str, f: &mut FieldsFn<'_>) -> Result<(), SchemaError> {
    match json {
        Json::Array(branches) => {
            for b in branches {
                rewrite_records(b, ns, f)?;
            }
        }
        Json::Object(obj) => {
            let ty = obj.get("type").cloned();
            match ty {
                Some(Json::String(t)) if t == "record" || t == "error" => {
                    let fullname = super::model::definition_fullname(obj, ns).unwrap_or_default();
                    let inner_ns = split_fullname(&fullname).0.to_string();
                    if let Some(Json::Array(fields)) = obj.get_mut("fields") {
                        f(&fullname, fields)?;
                        for field in fields.iter_mut() {
                            if let Some(t) = field.get_mut("type") {
                                rewrite_records(t, &inner_ns, f)?;
                            }
                        }
                    }
                }
                Some(Json::String(t)) if t == "array" => {
                    if let Some(items) = obj.get_mut("items") {
                        rewrite_records(items, ns, f)?;
                    }
                }
                Some(Json::String(t)) if t == "map" => {
                    if let Some(values) = obj.get_mut("values") {
                        rewrite_records(values, ns, f)?;
                    }
                }
                Some(Json::String(_)) | None => {}
                Some(_) => {
                    if let Some(t) = obj.get_mut("type") {
                        rewrite_records(t, ns, f)?;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Marks every node under which some record field is transformed.
pub(crate) fn compute_dirty(
    tree: &SchemaTree,
    transformed: impl Fn(NodeId, usize) -> bool,
) -> Vec<bool> {
    let mut dirty = vec![false; tree.nodes.len()];
    loop {
        let mut changed = false;
        for (id, node) in tree.nodes.iter().enumerate() {
            if dirty[id] {
                continue;
            }
            let d = match node {
                Node::Record(r) => r
                    .fields
                    .iter()
                    .enumerate()
                    .any(|(i, f)| transformed(id, i) || dirty[f.node]),
                Node::Union(bs) => bs.iter().any(|b| dirty[*b]),
                Node::Array(i) | Node::Map(i) => dirty[*i],
                _ => false,
            };
            if d {
                dirty[id] = true;
                changed = true;
            }
        }
        if !changed {
            return dirty;
        }
    }
}

fn index_input(tree: &SchemaTree, node: NodeId) -> Option<(IndexInput, Vec<String>)> {
    let value = match tree.node(node) {
        Node::Union(bs) if bs.len() == 2 && tree.null_branch(node).is_some() => {
            bs[1 - tree.null_branch(node)?]
        }
        Node::Union(_) => return None,
        _ => node,
    };
    Some(match tree.node(value) {
        Node::String => (IndexInput::String, vec![]),
        Node::Bytes => (IndexInput::Bytes, vec![]),
        Node::Fixed { size, .. } => (IndexInput::Fixed(*size), vec![]),
        Node::Int => (IndexInput::Int, vec![]),
        Node::Long => (IndexInput::Long, vec![]),
        Node::Float => (IndexInput::Float, vec![]),
        Node::Double => (IndexInput::Double, vec![]),
        Node::Boolean => (IndexInput::Boolean, vec![]),
        Node::Enum { symbols, .. } => (IndexInput::Enum, symbols.clone()),
        _ => return None,
    })
}

/// A blind index inside an encrypted field would be encrypted along with it and
/// never emitted: refuse rather than silently drop the index.
fn check_no_index_inside_encrypted(
    tree: &SchemaTree,
    actions: &[Vec<FieldAction>],
    label: &str,
) -> Result<(), SchemaError> {
    let mut seen = HashSet::new();
    let mut stack: Vec<(NodeId, bool)> = vec![(tree.root, false)];
    while let Some((id, inside)) = stack.pop() {
        if !seen.insert((id, inside)) {
            continue;
        }
        match tree.node(id) {
            Node::Record(r) => {
                for (i, f) in r.fields.iter().enumerate() {
                    let enc = match &actions[id][i] {
                        FieldAction::Encrypt(ef) => {
                            if inside && ef.index.is_some() {
                                return Err(SchemaError::Policy {
                                    schema: label.into(),
                                    path: format!("{}.{}", r.fullname, f.name),
                                    msg: "has a blind index but sits inside a field that is encrypted \
                                          as a whole, so the index could not be written; index the \
                                          outer field or stop encrypting it whole"
                                        .into(),
                                });
                            }
                            true
                        }
                        _ => false,
                    };
                    stack.push((f.node, inside || enc));
                }
            }
            Node::Union(bs) => bs.iter().for_each(|b| stack.push((*b, inside))),
            Node::Array(i) | Node::Map(i) => stack.push((*i, inside)),
            _ => {}
        }
    }
    Ok(())
}

/// The plan's rows (one per encrypted field, as `describe` shows them), collected
/// by walking the schema from the root.
struct Rows<'a> {
    tree: &'a SchemaTree,
    actions: &'a [Vec<FieldAction>],
    selection: &'a super::policy::Selection,
    cfg: &'a PlanConfig,
    /// Records on the path from the root: a recursive type is listed once.
    on_stack: Vec<NodeId>,
    rows: Vec<PlanRow>,
}

impl Rows<'_> {
    fn collect(&mut self, id: NodeId, path: String) {
        if self.on_stack.contains(&id) || self.rows.len() > 10_000 {
            return;
        }
        match self.tree.node(id) {
            Node::Record(r) => {
                self.on_stack.push(id);
                for (i, f) in r.fields.iter().enumerate() {
                    let p = if path.is_empty() {
                        f.name.clone()
                    } else {
                        format!("{path}.{}", f.name)
                    };
                    match &self.actions[id][i] {
                        FieldAction::Encrypt(ef) => self.rows.push(PlanRow {
                            path: p,
                            type_name: self.tree.type_name(f.node),
                            mode: ef.mode,
                            domain: ef.domain.clone(),
                            index_field: ef.index.as_ref().map(|ix| {
                                (
                                    format!("{}{}", f.name, self.cfg.blind_index_suffix),
                                    ix.domain.clone(),
                                )
                            }),
                            source: self
                                .selection
                                .get(&(id, i))
                                .map(|s| s.source.clone())
                                .unwrap_or(Source::Attribute),
                        }),
                        FieldAction::Recurse => self.collect(f.node, p),
                        FieldAction::Copy => {}
                    }
                }
                self.on_stack.pop();
            }
            Node::Union(bs) => {
                for b in bs {
                    self.collect(*b, path.clone());
                }
            }
            Node::Array(i) => self.collect(*i, format!("{path}[]")),
            Node::Map(v) => self.collect(*v, format!("{path}{{}}")),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> PlanConfig {
        PlanConfig {
            selection: SelectionConfig {
                default_deterministic_domain: "default".into(),
                ..Default::default()
            },
            blind_index_suffix: "_bidx".into(),
            text_only_domains: HashSet::new(),
            max_depth: 256,
        }
    }

    fn plan(s: &Json) -> EncryptPlan {
        EncryptPlan::build(s, "test", &cfg()).unwrap()
    }

    /// The output is valid (our model and apache-avro), and decrypting the schema
    /// gives back exactly the input.
    fn round_trips(s: &Json) -> EncryptPlan {
        let p = plan(s);
        let d = DecryptPlan::build(&p.output_json, "out").unwrap();
        assert_eq!(&d.original_json, s, "restore is exact");
        p
    }

    #[test]
    fn plans_say_what_is_encrypted_and_how() {
        let s = json!({"type": "record", "name": "R", "fields": [
            {"name": "id", "type": "long"},
            {"name": "email", "type": "string", "sensitive": {"mode": "deterministic", "blind_index": "email"}},
            {"name": "ssn", "type": ["null", "string"], "default": null, "sensitive": true}
        ]});
        let p = round_trips(&s);
        assert!(!p.is_passthrough());
        assert_eq!(p.rows.len(), 2);
        assert_eq!(p.rows[0].path, "email");
        assert_eq!(p.rows[0].mode, Mode::Deterministic);
        assert_eq!(p.rows[0].index_field.as_ref().unwrap().0, "email_bidx");
        let f = p.output_json["fields"].as_array().unwrap();
        let names: Vec<&str> = f.iter().map(|x| x["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["id", "email", "email_bidx", "ssn"]);
        assert_eq!(f[1]["type"], "bytes");
        assert_eq!(f[3]["type"], json!(["null", "bytes"]));
        assert_eq!(f[3]["default"], Json::Null);
        assert_eq!(
            p.deterministic_domains(),
            HashSet::from(["default".to_string()])
        );
        assert!(plan(&json!({"type": "record", "name": "P", "fields": [
            {"name": "a", "type": "string"}]}))
        .is_passthrough());
    }

    #[test]
    fn defaults_of_enclosing_fields_lose_their_encrypted_parts() {
        // A record default whose sensitive sub-field has a plaintext value: the
        // default goes (it cannot be written without a ciphertext) and comes back
        // on restore.
        let s = json!({"type": "record", "name": "R", "fields": [
            {"name": "sub", "type": {"type": "record", "name": "Sub", "fields": [
                {"name": "subField", "type": "string", "sensitive": true},
                {"name": "other", "type": "int"}]},
             "default": {"subField": "valueOfSubField", "other": 1}}
        ]});
        let p = round_trips(&s);
        let sub = &p.output_json["fields"][0];
        assert!(sub.get("default").is_none(), "{sub}");
        assert_eq!(
            sub[ATTR]["original"]["default"]["subField"],
            "valueOfSubField"
        );

        // Null-first nullable encrypted parts and their indexes become null.
        let s = json!({"type": "record", "name": "R", "fields": [
            {"name": "sub", "type": {"type": "record", "name": "Sub", "fields": [
                {"name": "email", "type": ["null", "string"], "default": null,
                 "sensitive": {"mode": "deterministic", "blind_index": "email"}},
                {"name": "n", "type": "int", "default": 3}]},
             "default": {"email": null}},
            {"name": "list", "type": {"type": "array", "items": "Sub"}, "default": [{"email": null, "n": 1}]},
            {"name": "opt", "type": ["null", "Sub"], "default": null}
        ]});
        let p = round_trips(&s);
        let f = &p.output_json["fields"];
        assert_eq!(
            f[0]["default"],
            json!({"email": null, "email_bidx": null, "n": 3})
        );
        assert_eq!(
            f[1]["default"],
            json!([{"email": null, "email_bidx": null, "n": 1}])
        );
        assert_eq!(f[2]["default"], Json::Null);
        assert!(
            f[2].get(ATTR).is_none(),
            "an unchanged default is not annotated"
        );
    }

    #[test]
    fn a_type_first_defined_inside_an_encrypted_field_is_defined_at_its_next_use() {
        // Debezium-style: encrypting only `before`, whose type defines Value.
        let s = json!({"type": "record", "name": "Envelope", "namespace": "db.t", "fields": [
            {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": [
                {"name": "id", "type": "int"},
                {"name": "ssn", "type": "string"}]}], "default": null, "sensitive": true},
            {"name": "after", "type": ["null", "Value"], "default": null},
            {"name": "op", "type": "string"}
        ]});
        let p = round_trips(&s);
        let after = &p.output_json["fields"][1];
        assert_eq!(after["type"][1]["type"], "record");
        assert_eq!(after["type"][1]["namespace"], "db.t");
        assert_eq!(after[ATTR]["original"]["type"], json!(["null", "Value"]));
        // The same records encrypt and the encrypted ones restore exactly.
        assert_eq!(p.output_tree.names.len(), 2);
    }

    #[test]
    fn moved_types_keep_the_null_namespace_and_error_types_are_records() {
        let s = json!({"type": "record", "name": "Outer", "fields": [
            {"name": "secret", "type": {"type": "error", "name": "Oops", "fields": [
                {"name": "msg", "type": "string"}]}, "sensitive": true},
            {"name": "again", "type": "Oops"}
        ]});
        let p = round_trips(&s);
        assert_eq!(p.output_json["fields"][1]["type"]["type"], "error");
        assert_eq!(p.output_json["fields"][1]["type"]["namespace"], "");
        assert!(p.output_tree.names.contains_key("Oops"));
    }
}

#[cfg(test)]
mod build_tests;
