//! Which fields of a writer schema Confluent's `ENCRYPT` rules select, decided
//! once per schema: a record field is selected by a rule when the rule has no tags
//! or shares one with the field (tags from the field object's `confluent:tags` and
//! from `metadata.tags` patterns over `namespace.Record.field`; tags on a type
//! object are not the field's, as in Confluent's clients). The selected field's
//! string and bytes values are encrypted, through unions, arrays and maps; records
//! inside it are walked with their own fields' tags. A selected field that can hold
//! anything else (int, enum, fixed, ...) is refused here, naming the field, rather
//! than failing on the first such value.

use std::collections::BTreeSet;

use serde_json::Value as Json;

use super::rules::{encrypt_rules, metadata_tags, wildcard_match, ContractError, EncryptRule};
use crate::schema::model::{Node, NodeId, SchemaTree};

/// The rules of one schema and the fields each encrypts.
#[derive(Debug)]
pub struct CsflePlan {
    pub tree: SchemaTree,
    pub rules: Vec<EncryptRule>,
    /// Per node: for records, per field, the index of the rule encrypting it.
    pub(crate) fields: Vec<Vec<Option<usize>>>,
    /// Per node: does anything below it change?
    pub(crate) dirty: Vec<bool>,
    /// `namespace.Record.field` of each selected field, with its rule, sorted.
    pub selected: Vec<(String, usize)>,
    /// Per node: for records, per field, the blind index written right after it
    /// (encrypting only; see [`CsflePlan::with_indexes`]).
    pub(crate) indexes: Vec<Vec<Option<crate::transform::encrypt::FieldIndex>>>,
}

impl CsflePlan {
    /// The plan for `schema` under `rule_set` and `metadata` (as the registry
    /// returns them); `label` names the schema in errors.
    pub fn build(
        schema: &Json,
        rule_set: Option<&Json>,
        metadata: Option<&Json>,
        label: &str,
        max_depth: usize,
    ) -> Result<Self, ContractError> {
        let err = |m: &dyn std::fmt::Display| ContractError(format!("{label}: {m}"));
        let mut tree = SchemaTree::compile(schema).map_err(|e| err(&e))?;
        tree.max_depth = max_depth;
        let rules = encrypt_rules(rule_set, metadata).map_err(|e| err(&e))?;
        let patterns = metadata_tags(metadata).map_err(|e| err(&e))?;
        let mut fields: Vec<Vec<Option<usize>>> = vec![Vec::new(); tree.nodes.len()];
        let mut selected = Vec::new();
        for (id, n) in tree.nodes.iter().enumerate() {
            let Node::Record(r) = n else { continue };
            for f in &r.fields {
                let full = format!("{}.{}", r.fullname, f.name);
                let mut tags: BTreeSet<String> = f
                    .json
                    .get("confluent:tags")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect();
                for (p, t) in &patterns {
                    if wildcard_match(p, &full) {
                        tags.extend(t.iter().cloned());
                    }
                }
                let by: Vec<usize> = (0..rules.len())
                    .filter(|&i| rules[i].selects(&tags))
                    .collect();
                let rule = match by.as_slice() {
                    [] => None,
                    [one] => Some(*one),
                    [a, b, ..] => {
                        return Err(err(&format!(
                            "field {full} is selected by two ENCRYPT rules ({:?} and {:?}); fieldcrypt encrypts a field under one rule",
                            rules[*a].name, rules[*b].name
                        )))
                    }
                };
                // A field holding only records encrypts nothing itself: the records'
                // own fields carry their own tags.
                let rule = rule.filter(|_| !only_records(&tree, f.node, &mut Vec::new()));
                if let Some(ri) = rule {
                    if let Some(bad) = unsupported_leaf(&tree, f.node, &mut Vec::new()) {
                        return Err(err(&format!(
                            "field {full} is selected by ENCRYPT rule {:?} but can hold {bad}; Confluent's format encrypts only string and bytes values",
                            rules[ri].name
                        )));
                    }
                    selected.push((full, ri));
                }
                fields[id].push(rule);
            }
        }
        selected.sort();
        let dirty = crate::schema::plan::compute_dirty(&tree, |id, i| {
            fields[id].get(i).copied().flatten().is_some()
        });
        let indexes = vec![Vec::new(); tree.nodes.len()];
        Ok(CsflePlan {
            tree,
            rules,
            fields,
            dirty,
            selected,
            indexes,
        })
    }

    /// Adds the blind indexes fieldcrypt's policy puts on selected string and
    /// bytes fields (`enc` is fieldcrypt's encryptor of the same schema), and
    /// returns `schema` with each index field inserted right after its field, as
    /// fieldcrypt's own output schema has it. Confluent's clients read them as the
    /// plain `bytes` fields they are.
    pub(crate) fn with_indexes(
        &mut self,
        enc: &crate::transform::Encryptor,
        schema: &Json,
    ) -> Result<Json, ContractError> {
        let mut index_fields = std::collections::HashMap::new();
        let mut out = enc.plan().output_json.clone();
        crate::schema::plan::rewrite_records(&mut out, "", &mut |record, fields| {
            for f in fields.iter() {
                if let Some(src) = f
                    .get("fieldcrypt")
                    .and_then(|a| a.get("blind_index_of"))
                    .and_then(Json::as_str)
                {
                    index_fields.insert((record.to_string(), src.to_string()), f.clone());
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        for (id, n) in self.tree.nodes.iter().enumerate() {
            let Node::Record(r) = n else { continue };
            self.indexes[id] = r
                .fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    self.fields[id][i]
                        .and_then(|_| enc.index_of(&r.fullname, &f.name))
                        .filter(|_| {
                            index_fields.contains_key(&(r.fullname.clone(), f.name.clone()))
                        })
                })
                .collect();
        }
        let mut with = schema.clone();
        crate::schema::plan::rewrite_records(&mut with, "", &mut |record, fields| {
            let mut i = 0;
            while i < fields.len() {
                let name = fields[i].get("name").and_then(Json::as_str).unwrap_or("");
                if let Some(ix) = index_fields.get(&(record.to_string(), name.to_string())) {
                    fields.insert(i + 1, ix.clone());
                    i += 1;
                }
                i += 1;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        Ok(with)
    }

    /// Does this schema encrypt anything?
    pub fn is_passthrough(&self) -> bool {
        !self.dirty[self.tree.root]
    }
}

/// Is every value of this type, outside records, a null (nothing to encrypt)?
fn only_records(tree: &SchemaTree, id: NodeId, seen: &mut Vec<NodeId>) -> bool {
    if seen.contains(&id) {
        return true;
    }
    seen.push(id);
    match tree.node(id) {
        Node::Record(_) | Node::Null => true,
        Node::Union(bs) => bs.iter().all(|b| only_records(tree, *b, seen)),
        Node::Array(i) | Node::Map(i) => only_records(tree, *i, seen),
        _ => false,
    }
}

/// The first type a selected field can hold that Confluent's format cannot
/// encrypt (records are walked with their own tags, so they are fine).
fn unsupported_leaf(tree: &SchemaTree, id: NodeId, seen: &mut Vec<NodeId>) -> Option<String> {
    if seen.contains(&id) {
        return None;
    }
    seen.push(id);
    match tree.node(id) {
        Node::String | Node::Bytes | Node::Null | Node::Record(_) => None,
        Node::Union(bs) => bs.iter().find_map(|b| unsupported_leaf(tree, *b, seen)),
        Node::Array(i) | Node::Map(i) => unsupported_leaf(tree, *i, seen),
        Node::Enum { name, .. } => Some(format!("the enum {name}")),
        Node::Fixed { name, .. } => Some(format!("the fixed {name}")),
        other => Some(format!("{other:?} values").to_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rule(tags: &[&str]) -> Json {
        json!({"domainRules": [{"name": "pii", "type": "ENCRYPT", "kind": "TRANSFORM",
            "mode": "WRITEREAD", "tags": tags, "params": {"encrypt.kek.name": "k"}}]})
    }

    fn schema() -> Json {
        json!({"type": "record", "name": "Payment", "namespace": "com.acme", "fields": [
            {"name": "id", "type": "int"},
            {"name": "ssn", "type": "string", "confluent:tags": ["PII"]},
            {"name": "note", "type": ["null", "string"], "default": null, "confluent:tags": ["PII"]},
            {"name": "card", "type": "bytes"},
            {"name": "typed", "type": {"type": "string", "confluent:tags": ["PII"]}},
            {"name": "phones", "type": {"type": "array", "items": "string"}, "confluent:tags": ["PII"]},
            {"name": "home", "type": {"type": "record", "name": "Addr", "fields": [
                {"name": "street", "type": "string", "confluent:tags": ["PII"]},
                {"name": "city", "type": "string"}]}, "confluent:tags": ["PII"]}]})
    }

    #[test]
    fn field_tags_and_metadata_patterns_select_fields() {
        let md = json!({"tags": {"**.card": ["PII"]}});
        let p = CsflePlan::build(&schema(), Some(&rule(&["PII"])), Some(&md), "t", 64).unwrap();
        let names: Vec<&str> = p.selected.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "com.acme.Addr.street",
                "com.acme.Payment.card",
                "com.acme.Payment.note",
                "com.acme.Payment.phones",
                "com.acme.Payment.ssn"
            ],
            "a tag on the type object (typed) is not the field's; a record field (home) encrypts through its own fields"
        );
        assert!(!p.is_passthrough());
    }

    #[test]
    fn unsupported_types_and_double_selection_are_refused_at_plan_time() {
        let s = json!({"type": "record", "name": "R", "fields": [
            {"name": "n", "type": ["null", "string", "int"], "confluent:tags": ["PII"]}]});
        let e = CsflePlan::build(&s, Some(&rule(&["PII"])), None, "t", 64)
            .unwrap_err()
            .0;
        assert!(e.contains("R.n") && e.contains("int"), "{e}");
        let e = CsflePlan::build(&schema(), Some(&rule(&[])), None, "t", 64)
            .unwrap_err()
            .0;
        assert!(
            e.contains("Payment.id"),
            "a rule without tags selects every leaf: {e}"
        );
        let two = json!({"domainRules": [
            {"name": "a", "type": "ENCRYPT", "kind": "TRANSFORM", "mode": "WRITEREAD",
             "tags": ["PII"], "params": {"encrypt.kek.name": "k"}},
            {"name": "b", "type": "ENCRYPT", "kind": "TRANSFORM", "mode": "WRITEREAD",
             "tags": ["PII"], "params": {"encrypt.kek.name": "k2"}}]});
        let e = CsflePlan::build(&schema(), Some(&two), None, "t", 64)
            .unwrap_err()
            .0;
        assert!(e.contains("two ENCRYPT rules"), "{e}");
    }

    #[test]
    fn no_rules_is_a_passthrough() {
        let p = CsflePlan::build(&schema(), None, None, "t", 64).unwrap();
        assert!(p.is_passthrough() && p.selected.is_empty());
    }
}
