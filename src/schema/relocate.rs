//! Named types defined where the output schema needs them. Two things leave a
//! schema with a name that is used but no longer (or not yet) defined:
//!
//! - a named type first defined inside a field that is encrypted as a whole (the
//!   output turns that field into `bytes`, so the definition goes with it) and
//!   used again elsewhere — generated schemas (Java, Debezium, Avro C++) always
//!   define a type at its first use;
//! - a Confluent schema reference: the type is defined in another subject's schema.
//!
//! [`relocate`] moves each such definition to the first use outside the encrypted
//! fields, in the order Avro parsers read a schema, so every name is defined before
//! it is used again, and reports which fields it changed so the original can be
//! restored exactly. Hides Avro's namespace rules for moved definitions: a moved
//! definition keeps its full name whatever the namespace around its new place.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value as Json};

use super::model::{definition_fullname, split_fullname};

/// A named-type definition available for moving: its JSON and the namespace it
/// was written in (which its unqualified inner names resolve against).
#[derive(Debug, Clone)]
pub struct Definition {
    pub json: Json,
    pub enclosing_ns: String,
}

/// Every named-type definition in `json` (nested ones included), by full name.
pub fn definitions(json: &Json, ns: &str, out: &mut HashMap<String, Definition>) {
    walk_defs(json, ns, &mut |fullname, obj, enclosing| {
        out.entry(fullname.to_string())
            .or_insert_with(|| Definition {
                json: Json::Object(obj.clone()),
                enclosing_ns: enclosing.to_string(),
            });
    });
}

/// Called with each definition's full name, JSON object and enclosing namespace.
type DefFn<'a> = dyn FnMut(&str, &Map<String, Json>, &str) + 'a;

fn walk_defs(json: &Json, ns: &str, f: &mut DefFn<'_>) {
    match json {
        Json::Array(branches) => branches.iter().for_each(|b| walk_defs(b, ns, f)),
        Json::Object(obj) => match obj.get("type") {
            Some(Json::String(t)) if is_named(t) => {
                let Some(fullname) = definition_fullname(obj, ns) else {
                    return;
                };
                f(&fullname, obj, ns);
                let inner = split_fullname(&fullname).0.to_string();
                if let Some(Json::Array(fields)) = obj.get("fields") {
                    for field in fields {
                        if let Some(t) = field.get("type") {
                            walk_defs(t, &inner, f);
                        }
                    }
                }
            }
            Some(Json::String(t)) if t == "array" => {
                if let Some(i) = obj.get("items") {
                    walk_defs(i, ns, f)
                }
            }
            Some(Json::String(t)) if t == "map" => {
                if let Some(v) = obj.get("values") {
                    walk_defs(v, ns, f)
                }
            }
            Some(t @ (Json::Object(_) | Json::Array(_))) => walk_defs(t, ns, f),
            _ => {}
        },
        _ => {}
    }
}

fn is_named(t: &str) -> bool {
    matches!(t, "record" | "error" | "enum" | "fixed")
}

/// What [`relocate`] changed: per record full name and field name, the fields
/// whose `type` now holds a moved definition, with their original `type`.
pub type Changed = HashMap<(String, String), Json>;

/// The result of [`relocate`].
#[derive(Debug, Default)]
pub struct Relocated {
    /// Fields whose type changed.
    pub changed: Changed,
    /// A definition was moved to a place outside any record field (a top-level
    /// union's branch), where no field can record what was there before.
    pub outside_fields: bool,
}

/// Moves definitions to their first use outside the `encrypted` fields (by record
/// full name and field name): every reference to a name in `available` that is
/// not defined by then becomes the definition itself. Nested definitions that are
/// already defined at the new place become references.
pub fn relocate(
    json: &mut Json,
    available: &HashMap<String, Definition>,
    encrypted: &HashSet<(String, String)>,
) -> Relocated {
    let mut r = Relocator {
        available,
        encrypted,
        defined: HashSet::new(),
        out: Relocated::default(),
    };
    r.walk(json, "", None);
    r.out
}

struct Relocator<'a> {
    available: &'a HashMap<String, Definition>,
    encrypted: &'a HashSet<(String, String)>,
    defined: HashSet<String>,
    out: Relocated,
}

impl Relocator<'_> {
    /// Resolves a reference the way our model does: a dotted name is full; an
    /// unqualified one is tried in the enclosing namespace, then the null one.
    fn resolve(&self, name: &str, ns: &str) -> Option<String> {
        let candidates = if name.contains('.') || ns.is_empty() {
            vec![name.to_string()]
        } else {
            vec![format!("{ns}.{name}"), name.to_string()]
        };
        candidates
            .iter()
            .find(|c| self.defined.contains(*c))
            .or_else(|| candidates.iter().find(|c| self.available.contains_key(*c)))
            .cloned()
    }

    /// `field`: the (record, field) whose type this is, to report a change.
    fn walk(&mut self, json: &mut Json, ns: &str, field: Option<&(String, String)>) {
        match json {
            Json::String(name) => {
                let Some(full) = self.resolve(name, ns) else {
                    return;
                };
                if self.defined.contains(&full) {
                    return;
                }
                let Some(def) = self.available.get(&full) else {
                    return;
                };
                if field.is_none() {
                    self.out.outside_fields = true;
                }
                let mut moved = def.json.clone();
                pin_namespace(&mut moved, &def.enclosing_ns);
                *json = moved;
                self.walk(json, ns, field)
            }
            Json::Array(branches) => {
                for b in branches {
                    self.walk(b, ns, field);
                }
            }
            Json::Object(obj) => {
                let ty = obj.get("type").cloned();
                match ty {
                    Some(Json::String(t)) if is_named(&t) => {
                        let Some(full) = definition_fullname(obj, ns) else {
                            return;
                        };
                        if self.defined.contains(&full) {
                            // A moved definition's nested type that is defined by now.
                            *json = Json::String(full);
                            return;
                        }
                        self.defined.insert(full.clone());
                        if t == "record" || t == "error" {
                            let inner = split_fullname(&full).0.to_string();
                            if let Some(Json::Array(fields)) = obj.get_mut("fields") {
                                for f in fields.iter_mut() {
                                    let name = f
                                        .get("name")
                                        .and_then(Json::as_str)
                                        .unwrap_or_default()
                                        .to_string();
                                    let key = (full.clone(), name);
                                    if self.encrypted.contains(&key) {
                                        continue;
                                    }
                                    if let Some(t) = f.get_mut("type") {
                                        let before = t.clone();
                                        self.walk(t, &inner, Some(&key));
                                        if *t != before {
                                            self.out.changed.entry(key).or_insert(before);
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Some(Json::String(t)) if t == "array" => {
                        if let Some(i) = obj.get_mut("items") {
                            self.walk(i, ns, field)
                        }
                    }
                    Some(Json::String(t)) if t == "map" => {
                        if let Some(v) = obj.get_mut("values") {
                            self.walk(v, ns, field)
                        }
                    }
                    Some(Json::Object(_) | Json::Array(_)) => {
                        if let Some(t) = obj.get_mut("type") {
                            self.walk(t, ns, field)
                        }
                    }
                    Some(Json::String(t)) => {
                        // {"type": "Name"}: a reference in object form.
                        let mut s = Json::String(t);
                        self.walk(&mut s, ns, field);
                        if !s.is_string() {
                            *json = s;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// Makes a definition's full name independent of where it is placed: an
/// unqualified name gets its namespace written out (`""` for the null namespace).
fn pin_namespace(def: &mut Json, enclosing_ns: &str) {
    let Json::Object(obj) = def else { return };
    let Some(name) = obj.get("name").and_then(Json::as_str) else {
        return;
    };
    if name.contains('.') || obj.contains_key("namespace") {
        return;
    }
    obj.insert("namespace".into(), Json::String(enclosing_ns.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encrypted(pairs: &[(&str, &str)]) -> HashSet<(String, String)> {
        pairs
            .iter()
            .map(|(r, f)| (r.to_string(), f.to_string()))
            .collect()
    }

    fn available_inside(json: &Json, fields: &[(&str, &str)]) -> HashMap<String, Definition> {
        // The definitions inside the named fields' types (as the plan collects them).
        let mut out = HashMap::new();
        fn go(j: &Json, ns: &str, fields: &[(&str, &str)], out: &mut HashMap<String, Definition>) {
            walk_defs(j, ns, &mut |full, obj, _| {
                let inner = split_fullname(full).0.to_string();
                if let Some(Json::Array(fs)) = obj.get("fields") {
                    for f in fs {
                        let name = f["name"].as_str().unwrap();
                        if fields.contains(&(full, name)) {
                            definitions(&f["type"], &inner, out);
                        }
                    }
                }
            });
        }
        go(json, "", fields, &mut out);
        out
    }

    #[test]
    fn a_type_defined_in_an_encrypted_field_moves_to_its_next_use() {
        let mut s = json!({"type": "record", "name": "Env", "namespace": "db", "fields": [
            {"name": "before", "type": ["null", {"type": "record", "name": "Row", "fields": [
                {"name": "id", "type": "long"},
                {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A"]}}]}]},
            {"name": "after", "type": ["null", "Row"]},
            {"name": "k", "type": "Kind"}
        ]});
        let enc = encrypted(&[("db.Env", "before")]);
        let avail = available_inside(&s, &[("db.Env", "before")]);
        assert!(avail.contains_key("db.Row") && avail.contains_key("db.Kind"));
        let changed = relocate(&mut s, &avail, &enc).changed;
        assert_eq!(s["fields"][1]["type"][1]["name"], "Row");
        assert_eq!(s["fields"][1]["type"][1]["namespace"], "db");
        // Kind came along inside Row, so the later use stays a reference.
        assert_eq!(s["fields"][2]["type"], "Kind");
        assert_eq!(changed.len(), 1);
        assert_eq!(
            changed[&("db.Env".into(), "after".into())],
            json!(["null", "Row"]),
            "the field's whole original type"
        );
        // The encrypted field keeps its definition (it is replaced by bytes later).
        assert_eq!(s["fields"][0]["type"][1]["type"], "record");
    }

    #[test]
    fn a_nested_type_used_first_is_moved_alone_and_later_pruned() {
        let mut s = json!({"type": "record", "name": "R", "fields": [
            {"name": "secret", "type": {"type": "record", "name": "A", "fields": [
                {"name": "b", "type": {"type": "fixed", "name": "B", "size": 2}}]}},
            {"name": "b2", "type": "B"},
            {"name": "a2", "type": "A"}
        ]});
        let enc = encrypted(&[("R", "secret")]);
        let avail = available_inside(&s, &[("R", "secret")]);
        let changed = relocate(&mut s, &avail, &enc).changed;
        assert_eq!(s["fields"][1]["type"]["type"], "fixed");
        assert_eq!(s["fields"][2]["type"]["fields"][0]["type"], "B");
        // b2 and a2, and A.b inside the moved A (its definition became a reference).
        assert_eq!(changed.len(), 3);
        assert_eq!(changed[&("A".into(), "b".into())]["type"], "fixed");
    }
}
