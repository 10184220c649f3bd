//! Plans as a whole: which action each field gets, the exact shape of the output
//! schema, errors that name the field, the original schema restored from an
//! output schema, and floors that catch a dropped marking. (The tests inline in
//! plan.rs cover defaults and relocated definitions.)

use serde_json::{json, Value as Json};

use super::*;
use crate::schema::policy::PolicySpec;

/// Not the default `_bidx`, so the tests see the configured suffix used.
const SUFFIX: &str = "_ix";

fn cfg() -> PlanConfig {
    PlanConfig {
        selection: SelectionConfig {
            default_deterministic_domain: "default".into(),
            ..Default::default()
        },
        blind_index_suffix: SUFFIX.into(),
        text_only_domains: HashSet::new(),
        max_depth: 64,
    }
}

fn build(s: &Json) -> EncryptPlan {
    EncryptPlan::build(s, "test.avsc", &cfg()).unwrap()
}

/// A policy error's (field path, message); the schema label must be in it.
fn policy_error(s: &Json, cfg: &PlanConfig) -> (String, String) {
    match EncryptPlan::build(s, "orders.avsc", cfg) {
        Err(SchemaError::Policy { schema, path, msg }) => {
            assert_eq!(schema, "orders.avsc");
            (path, msg)
        }
        Err(e) => panic!("not a policy error: {e}"),
        Ok(_) => panic!("planned a schema that should be refused: {s}"),
    }
}

fn action<'a>(p: &'a EncryptPlan, record: &str, field: &str) -> &'a FieldAction {
    let id = p.tree.names[record];
    let r = p.tree.record(id).unwrap();
    let i = r.fields.iter().position(|f| f.name == field).unwrap();
    &p.actions[id][i]
}

fn encrypted<'a>(p: &'a EncryptPlan, record: &str, field: &str) -> &'a EncryptField {
    match action(p, record, field) {
        FieldAction::Encrypt(f) => f,
        other => panic!("{record}.{field} is not encrypted: {other:?}"),
    }
}

fn is_copy(p: &EncryptPlan, record: &str, field: &str) -> bool {
    matches!(action(p, record, field), FieldAction::Copy)
}

fn is_recurse(p: &EncryptPlan, record: &str, field: &str) -> bool {
    matches!(action(p, record, field), FieldAction::Recurse)
}

/// A top-level output field by name.
fn out_field<'a>(p: &'a EncryptPlan, name: &str) -> &'a Json {
    p.output_json["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no output field {name}"))
}

fn out_names(p: &EncryptPlan) -> Vec<&str> {
    p.output_json["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect()
}

fn customer() -> Json {
    json!({"type": "record", "name": "Customer", "namespace": "crm", "fields": [
        {"name": "id", "type": "long"},
        {"name": "ssn", "type": "string", "sensitive": true},
        {"name": "email", "type": "string",
         "sensitive": {"mode": "deterministic", "blind_index": "email"}},
        {"name": "phone", "type": "string",
         "sensitive": {"mode": "deterministic", "domain": "phones"}},
        {"name": "note", "type": ["null", "string"], "default": null, "sensitive": true},
        {"name": "nick", "type": ["string", "null"], "sensitive": {"mode": "deterministic"}}
    ]})
}

#[test]
fn each_field_gets_the_mode_domain_index_and_nullability_its_marking_asks_for() {
    let p = build(&customer());
    assert!(!p.is_passthrough());
    assert!(is_copy(&p, "crm.Customer", "id"));

    let ssn = encrypted(&p, "crm.Customer", "ssn");
    assert_eq!(ssn.context, "crm.Customer.ssn");
    assert_eq!(ssn.mode, Mode::Randomized);
    assert_eq!(ssn.domain, None);
    assert!(ssn.index.is_none() && ssn.nullable.is_none());
    assert!(matches!(p.tree.node(ssn.node), Node::String));

    let email = encrypted(&p, "crm.Customer", "email");
    assert_eq!(email.mode, Mode::Deterministic);
    assert_eq!(email.domain.as_deref(), Some("default"));
    let ix = email.index.as_ref().unwrap();
    assert_eq!(
        (ix.domain.as_str(), ix.input),
        ("email", IndexInput::String)
    );

    let phone = encrypted(&p, "crm.Customer", "phone");
    assert_eq!(phone.domain.as_deref(), Some("phones"));

    // Null first stays first; null second stays second.
    assert_eq!(
        encrypted(&p, "crm.Customer", "note").nullable,
        Some(Nullable {
            null_branch: 0,
            out_null: 0,
            out_bytes: 1
        })
    );
    assert_eq!(
        encrypted(&p, "crm.Customer", "nick").nullable,
        Some(Nullable {
            null_branch: 1,
            out_null: 1,
            out_bytes: 0
        })
    );

    assert_eq!(
        p.deterministic_domains(),
        HashSet::from(["default".to_string(), "phones".to_string()])
    );
    assert_eq!(p.index_domains(), HashSet::from(["email".to_string()]));

    let paths: Vec<&str> = p.rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["ssn", "email", "phone", "note", "nick"]);
    let table = p.table();
    assert!(
        table.contains("email_ix (email)") && table.contains("deterministic (phones)"),
        "{table}"
    );
}

#[test]
fn the_output_schema_has_bytes_fields_carrying_the_original_and_index_fields_after_them() {
    let p = build(&customer());
    assert_eq!(
        out_names(&p),
        ["id", "ssn", "email", "email_ix", "phone", "note", "nick"]
    );
    assert_eq!(out_field(&p, "id"), &json!({"name": "id", "type": "long"}));
    assert_eq!(
        out_field(&p, "email_ix"),
        &json!({
            "name": "email_ix",
            "doc": "HMAC-SHA256 blind index of email (domain email)",
            "type": "bytes",
            "fieldcrypt": {"v": 1, "blind_index_of": "email", "domain": "email"}
        })
    );
    let note = out_field(&p, "note");
    assert_eq!(note["type"], json!(["null", "bytes"]));
    assert_eq!(note["default"], Json::Null);
    let nick = out_field(&p, "nick");
    assert_eq!(nick["type"], json!(["bytes", "null"]));
    assert!(nick.get("default").is_none());
    assert_eq!(nick[ATTR]["mode"], "deterministic");

    // The whole field, exactly: name, doc and aliases kept; the type bytes; a
    // non-null default dropped; every attribute only inside `field`.
    let original = json!({"name": "born", "type": {"type": "int", "logicalType": "date"},
        "doc": "birth date", "aliases": ["dob"], "default": 0, "sensitive": true,
        "x-owner": {"team": "crm"}});
    let s = json!({"type": "record", "name": "P", "fields": [original.clone()]});
    let p = build(&s);
    assert_eq!(
        p.output_json["fields"][0],
        json!({"name": "born", "doc": "birth date", "aliases": ["dob"], "type": "bytes",
               "fieldcrypt": {"v": 1, "mode": "randomized", "field": original}})
    );
    // The index of a nullable field is nullable too, null by default.
    let s = json!({"type": "record", "name": "P", "fields": [
        {"name": "mail", "type": ["null", "string"], "default": null,
         "sensitive": {"mode": "deterministic", "blind_index": "email"}}]});
    let p = build(&s);
    let ix = out_field(&p, "mail_ix");
    assert_eq!(ix["type"], json!(["null", "bytes"]));
    assert_eq!(ix["default"], Json::Null);
    assert_eq!(
        p.output_tree
            .record(p.output_tree.root)
            .unwrap()
            .fields
            .len(),
        2
    );
}

#[test]
fn blind_indexes_hash_by_the_value_type_enum_symbols_included() {
    let s = json!({"type": "record", "name": "R", "fields": [
        {"name": "tier", "type": {"type": "enum", "name": "Tier", "symbols": ["GOLD", "SILVER"]},
         "sensitive": {"mode": "deterministic", "blind_index": "i"}},
        {"name": "hash", "type": {"type": "fixed", "name": "H", "size": 4},
         "sensitive": {"blind_index": "i"}},
        {"name": "acct", "type": ["null", "long"], "default": null,
         "sensitive": {"blind_index": "i"}}
    ]});
    let p = build(&s);
    let ix = |f: &str| encrypted(&p, "R", f).index.clone().unwrap();
    assert_eq!(ix("tier").input, IndexInput::Enum);
    assert_eq!(ix("tier").symbols, ["GOLD", "SILVER"]);
    assert_eq!(ix("hash").input, IndexInput::Fixed(4));
    assert_eq!(ix("acct").input, IndexInput::Long);
    assert_eq!(
        out_names(&p),
        ["tier", "tier_ix", "hash", "hash_ix", "acct", "acct_ix"]
    );
}

#[test]
fn nested_records_are_walked_into_and_a_type_used_twice_is_encrypted_in_both_places() {
    let s = json!({"type": "record", "name": "Person", "namespace": "acme", "fields": [
        {"name": "name", "type": "string"},
        {"name": "home", "type": {"type": "record", "name": "Address", "fields": [
            {"name": "street", "type": "string", "sensitive": true},
            {"name": "zip", "type": "string"}]}},
        {"name": "work", "type": ["null", "Address"], "default": null},
        {"name": "pets", "type": {"type": "array", "items": "string"}}
    ]});
    let p = build(&s);
    assert!(is_copy(&p, "acme.Person", "name"));
    assert!(is_recurse(&p, "acme.Person", "home"));
    assert!(is_recurse(&p, "acme.Person", "work"));
    assert!(is_copy(&p, "acme.Person", "pets"));
    assert!(is_copy(&p, "acme.Address", "zip"));
    // One policy on the type, so one context wherever the record is used.
    assert_eq!(
        encrypted(&p, "acme.Address", "street").context,
        "acme.Address.street"
    );
    let paths: Vec<&str> = p.rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["home.street", "work.street"]);

    // Defined once (at its first use) and referenced at the second, unchanged.
    let home = out_field(&p, "home");
    assert_eq!(home["type"]["fields"][0]["type"], "bytes");
    assert_eq!(
        home["type"]["fields"][1],
        json!({"name": "zip", "type": "string"})
    );
    assert_eq!(
        out_field(&p, "work"),
        &json!({"name": "work", "type": ["null", "Address"], "default": null})
    );
    assert_eq!(p.output_tree.names.len(), 2);
    assert_eq!(out_field(&p, "pets"), &s["fields"][3]);
}

#[test]
fn arrays_and_maps_are_encrypted_whole_when_their_items_are_marked_and_walked_otherwise() {
    let s = json!({"type": "record", "name": "Order", "fields": [
        {"name": "cards", "type": {"type": "array", "items": {"type": "string", "sensitive": true}}},
        {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "Line",
            "fields": [
                {"name": "sku", "type": "string"},
                {"name": "price", "type": "double", "sensitive": {"mode": "deterministic"}}]}}},
        {"name": "attrs", "type": {"type": "map", "values": ["null", {"type": "record",
            "name": "Attr", "fields": [{"name": "secret", "type": "bytes", "sensitive": true}]}]}},
        {"name": "counts", "type": {"type": "map", "values": "long"}}
    ]});
    let p = build(&s);
    let cards = encrypted(&p, "Order", "cards");
    assert!(matches!(p.tree.node(cards.node), Node::Array(_)));
    assert_eq!(out_field(&p, "cards")["type"], "bytes");
    assert_eq!(out_field(&p, "cards")[ATTR]["field"], s["fields"][0]);
    assert!(is_recurse(&p, "Order", "lines"));
    assert_eq!(encrypted(&p, "Line", "price").mode, Mode::Deterministic);
    assert!(is_copy(&p, "Line", "sku"));
    assert!(is_recurse(&p, "Order", "attrs"));
    encrypted(&p, "Attr", "secret");
    assert!(is_copy(&p, "Order", "counts"));
    let rows: Vec<(&str, &str)> = p
        .rows
        .iter()
        .map(|r| (r.path.as_str(), r.type_name.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("cards", "array<string>"),
            ("lines[].price", "double"),
            ("attrs{}.secret", "bytes")
        ]
    );
    assert_eq!(rows.len(), p.floor().len());
}

#[test]
fn a_schema_with_nothing_sensitive_passes_through_unchanged() {
    // An unmapped tag marks nothing (docs/CONFIG.md: tags without an entry are ignored).
    let s = json!({"type": "record", "name": "R", "namespace": "n", "fields": [
        {"name": "a", "type": "string", "confluent:tags": ["UNMAPPED"]},
        {"name": "b", "type": {"type": "record", "name": "S", "fields": [
            {"name": "c", "type": ["null", "int"], "sensitive": false}]}}
    ]});
    let p = build(&s);
    assert!(p.is_passthrough());
    assert_eq!(p.output_json, s);
    assert!(p.rows.is_empty() && p.floor().is_empty());
    assert!(p
        .actions
        .iter()
        .flatten()
        .all(|a| matches!(a, FieldAction::Copy)));
    assert!(p.table().contains("no sensitive fields"));
    let d = DecryptPlan::build(&s, "plain").unwrap();
    assert!(d.is_passthrough());
    assert_eq!(d.original_json, s);
}

#[test]
fn refused_policies_name_the_schema_and_the_field() {
    let field =
        |f: Json| json!({"type": "record", "name": "O", "namespace": "shop", "fields": [f]});

    // Attribute and tag disagree.
    let mut c = cfg();
    c.selection.tags.insert(
        "PII".into(),
        PolicySpec {
            mode: Some(Mode::Deterministic),
            ..Default::default()
        },
    );
    let s = field(json!({"name": "email", "type": "string", "sensitive": true,
                         "confluent:tags": ["PII"]}));
    let (path, msg) = policy_error(&s, &c);
    assert_eq!(path, "shop.O.email");
    assert!(
        msg.contains("conflicting")
            && msg.contains("schema attribute says randomized")
            && msg.contains("tag PII says deterministic (domain default)"),
        "{msg}"
    );

    // A mode, or a key, that does not exist.
    for bad in [json!({"mode": "scrambled"}), json!({"blindindex": "x"})] {
        let s = field(json!({"name": "ssn", "type": "string", "sensitive": bad}));
        let (path, msg) = policy_error(&s, &cfg());
        assert_eq!(path, "shop.O.ssn");
        assert!(msg.contains("\"sensitive\" must be"), "{msg}");
    }

    // A deterministic domain on a randomized field.
    let s = field(json!({"name": "ssn", "type": "string", "sensitive": {"domain": "d"}}));
    assert_eq!(policy_error(&s, &cfg()).0, "shop.O.ssn");

    // A blind index of something that is not one value.
    let s = field(
        json!({"name": "addr", "type": {"type": "array", "items": "string"},
                         "sensitive": {"blind_index": "i"}}),
    );
    let (path, msg) = policy_error(&s, &cfg());
    assert_eq!(path, "shop.O.addr");
    assert!(msg.contains("array<string>"), "{msg}");

    // A normalising (text-only) index domain on a number.
    let mut c = cfg();
    c.text_only_domains.insert("names".into());
    let s = field(json!({"name": "age", "type": "int", "sensitive": {"blind_index": "names"}}));
    let (path, msg) = policy_error(&s, &c);
    assert_eq!(path, "shop.O.age");
    assert!(msg.contains("\"names\"") && msg.contains("int"), "{msg}");

    // The index field's name is taken.
    let s = json!({"type": "record", "name": "O", "fields": [
        {"name": "email", "type": "string", "sensitive": {"blind_index": "i"}},
        {"name": "email_ix", "type": "string"}]});
    let (path, msg) = policy_error(&s, &cfg());
    assert_eq!(path, "O.email");
    assert!(
        msg.contains("\"email_ix\"") && msg.contains("blind_index_suffix"),
        "{msg}"
    );

    // An index inside a field that is encrypted whole could never be written.
    let s = json!({"type": "record", "name": "O", "fields": [
        {"name": "card", "sensitive": true, "type": {"type": "record", "name": "Card", "fields": [
            {"name": "pan", "type": "string", "sensitive": {"blind_index": "i"}}]}}]});
    let (path, msg) = policy_error(&s, &cfg());
    assert_eq!(path, "Card.pan");
    assert!(msg.contains("inside a field that is encrypted"), "{msg}");

    // A marking on a named type that two fields use.
    let s = json!({"type": "record", "name": "O", "fields": [
        {"name": "a", "type": {"type": "record", "name": "Card", "sensitive": true,
                               "fields": [{"name": "n", "type": "string"}]}},
        {"name": "b", "type": "Card"}]});
    let (path, msg) = policy_error(&s, &cfg());
    assert_eq!(path, "Card");
    assert!(msg.contains("O.a") && msg.contains("O.b"), "{msg}");

    // An output schema fed back in: no double encryption.
    let out = build(&customer()).output_json;
    let (path, msg) = policy_error(&out, &cfg());
    assert_eq!(path, "crm.Customer.ssn");
    assert!(msg.contains("already encrypted"), "{msg}");
}

#[test]
fn the_configured_depth_limit_reaches_every_tree_the_walkers_use() {
    // Depth is a property of values (a recursive schema has no depth), so the plan
    // carries the limit and each record is checked against it (transform tests).
    let mut s = json!({"type": "record", "name": "Leaf", "fields": [
        {"name": "secret", "type": "string", "sensitive": true}]});
    for i in 0..5 {
        s = json!({"type": "record", "name": format!("L{i}"), "fields": [
            {"name": "next", "type": s}]});
    }
    let mut c = cfg();
    c.max_depth = 3;
    let p = EncryptPlan::build(&s, "deep", &c).unwrap();
    assert_eq!((p.tree.max_depth, p.output_tree.max_depth), (3, 3));
    let d = DecryptPlan::build_with_depth(&p.output_json, "deep", 3).unwrap();
    assert_eq!((d.tree.max_depth, d.original_tree.max_depth), (3, 3));
    let d = DecryptPlan::build(&p.output_json, "deep").unwrap();
    assert_eq!(d.tree.max_depth, crate::avro::binary::MAX_DEPTH);
}

#[test]
fn a_decrypt_plan_restores_the_original_schema_exactly_and_knows_each_field() {
    let s = json!({"type": "record", "name": "Customer", "namespace": "crm", "doc": "a customer",
        "x-owner": "crm-team", "fields": [
        {"name": "id", "type": "long", "doc": "key"},
        {"name": "email", "type": "string", "aliases": ["mail"], "confluent:tags": ["PII"],
         "sensitive": {"mode": "deterministic", "blind_index": "email"}},
        {"name": "note", "type": ["null", "string"], "default": null, "sensitive": true},
        {"name": "nick", "type": ["string", "null"], "default": "anon", "sensitive": true},
        {"name": "home", "type": {"type": "record", "name": "Address", "fields": [
            {"name": "street", "type": {"type": "string", "avro.java.string": "String"},
             "sensitive": true},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["H", "W"]},
             "default": "H"}]}},
        {"name": "others", "type": {"type": "array", "items": "Address"}, "default": []}
    ]});
    let p = build(&s);
    assert_eq!(restore_original(&p.output_json).unwrap(), s);
    let d = DecryptPlan::build(&p.output_json, "out").unwrap();
    assert_eq!(d.original_json, s);
    assert!(!d.is_passthrough());

    let act = |record: &str, field: &str| {
        let id = d.tree.names[record];
        let i = d
            .tree
            .record(id)
            .unwrap()
            .fields
            .iter()
            .position(|f| f.name == field);
        d.actions[id][i.unwrap()].clone()
    };
    let dec = |record: &str, field: &str| match act(record, field) {
        DecryptAction::Decrypt(f) => f,
        other => panic!("{record}.{field}: {other:?}"),
    };
    assert!(matches!(act("crm.Customer", "id"), DecryptAction::Copy));
    assert!(matches!(
        act("crm.Customer", "email_ix"),
        DecryptAction::Drop
    ));
    assert!(matches!(
        act("crm.Customer", "home"),
        DecryptAction::Recurse
    ));
    assert!(matches!(
        act("crm.Customer", "others"),
        DecryptAction::Recurse
    ));
    assert!(matches!(act("crm.Address", "kind"), DecryptAction::Copy));
    let email = dec("crm.Customer", "email");
    assert_eq!(
        (email.context.as_str(), email.nullable),
        ("crm.Customer.email", None)
    );
    assert!(matches!(d.original_tree.node(email.node), Node::String));
    assert_eq!(dec("crm.Customer", "note").nullable, Some((0, 0)));
    assert_eq!(dec("crm.Customer", "nick").nullable, Some((1, 1)));
    assert_eq!(dec("crm.Address", "street").context, "crm.Address.street");
}

#[test]
fn damaged_fieldcrypt_attributes_are_refused_when_restoring() {
    let with = |f: Json| json!({"type": "record", "name": "R", "fields": [f]});
    let orig = json!({"name": "a", "type": "string"});

    let s = with(json!({"name": "a", "type": "bytes",
                        "fieldcrypt": {"v": 2, "mode": "randomized", "field": orig}}));
    let e = restore_original(&s).unwrap_err().to_string();
    assert!(e.contains("version 2") && e.contains("upgrade"), "{e}");

    let s = with(json!({"name": "a", "type": "bytes", "fieldcrypt": {"v": 1}}));
    let e = restore_original(&s).unwrap_err().to_string();
    assert!(
        e.contains("field a") && e.contains("without the original"),
        "{e}"
    );

    // Only bytes (or nullable bytes) can hold a ciphertext.
    let s = with(json!({"name": "a", "type": "string",
                        "fieldcrypt": {"v": 1, "mode": "randomized", "field": orig}}));
    let e = DecryptPlan::build(&s, "out").unwrap_err().to_string();
    assert!(e.contains("R.a") && e.contains("not bytes"), "{e}");

    // What would be written must be a schema.
    let s = with(json!({"name": "a", "type": "bytes", "fieldcrypt": {"v": 1,
        "mode": "randomized", "field": {"name": "a", "type": "no-such-type"}}}));
    let e = DecryptPlan::build(&s, "out").unwrap_err().to_string();
    assert!(e.contains("restored original schema is invalid"), "{e}");

    // Nullable on one side only.
    let s = with(
        json!({"name": "a", "type": ["null", "bytes"], "fieldcrypt": {"v": 1,
        "mode": "randomized", "field": orig}}),
    );
    let e = DecryptPlan::build(&s, "out").unwrap_err().to_string();
    assert!(e.contains("R.a") && e.contains("nullability"), "{e}");
}

#[test]
fn floors_catch_a_marking_or_blind_index_that_a_later_schema_drops() {
    let v1 = build(&customer());
    let floor = v1.floor();
    assert_eq!(floor["crm.Customer.email"].as_deref(), Some("email"));
    assert_eq!(floor["crm.Customer.ssn"], None);
    assert_eq!(floor.len(), 5);
    assert!(v1.below(&floor).is_empty());

    let edit = |field: &str, sensitive: Option<Json>| {
        let mut s = customer();
        for f in s["fields"].as_array_mut().unwrap() {
            if f["name"] == field {
                let o = f.as_object_mut().unwrap();
                match &sensitive {
                    Some(v) => o.insert("sensitive".into(), v.clone()),
                    None => o.remove("sensitive"),
                };
            }
        }
        build(&s)
    };
    assert_eq!(edit("ssn", None).below(&floor), ["crm.Customer.ssn"]);
    assert_eq!(
        edit("email", Some(json!({"mode": "deterministic"}))).below(&floor),
        ["crm.Customer.email (its blind index in domain email)"]
    );
    // Still encrypted, in another mode: not a downgrade the floor tracks.
    assert!(edit("ssn", Some(json!({"mode": "deterministic"})))
        .below(&floor)
        .is_empty());
    // Several dropped at once, in context order.
    let mut s = customer();
    for f in s["fields"].as_array_mut().unwrap() {
        f.as_object_mut().unwrap().remove("sensitive");
    }
    assert_eq!(
        build(&s).below(&floor),
        [
            "crm.Customer.email",
            "crm.Customer.nick",
            "crm.Customer.note",
            "crm.Customer.phone",
            "crm.Customer.ssn"
        ]
    );
    // A floor entry for a record or field this schema does not have is no downgrade.
    let mut other = Floor::new();
    other.insert("crm.Gone.ssn".into(), None);
    other.insert("crm.Customer.gone".into(), None);
    assert!(v1.below(&other).is_empty());
}

#[test]
fn tagged_finds_tags_on_fields_and_on_their_types() {
    let s = json!({"type": "record", "name": "R", "namespace": "n", "fields": [
        {"name": "a", "type": "string", "confluent:tags": ["PII", "X"]},
        {"name": "b", "type": {"type": "string", "confluent:tags": ["PII"]}},
        {"name": "c", "type": "string", "confluent:tags": ["X"]},
        {"name": "d", "type": {"type": "record", "name": "S", "fields": [
            {"name": "e", "type": "int", "confluent:tags": ["PII"]}]}}
    ]});
    let p = build(&s);
    let mut pii = p.tagged("PII");
    pii.sort();
    assert_eq!(pii, ["n.R.a", "n.R.b", "n.S.e"]);
    assert!(p.tagged("NONE").is_empty());
}

#[test]
fn tagged_finds_a_tag_wherever_selection_honours_it() {
    // Kafka Connect puts a nullable field's tags on the non-null branch.
    let s = json!({"type": "record", "name": "R", "fields": [
        {"name": "phone", "type": ["null", {"type": "string", "confluent:tags": ["PII"]}],
         "default": null},
        {"name": "emails", "type": {"type": "array",
            "items": {"type": "string", "confluent:tags": ["PII"]}}}]});
    let mut c = cfg();
    c.selection.tags.insert("PII".into(), PolicySpec::default());
    let p = EncryptPlan::build(&s, "t", &c).unwrap();
    // Selection sees both tags...
    assert_eq!(p.floor().len(), 2);
    // ...so `require = ["tag:PII"]` must see them too.
    let mut pii = p.tagged("PII");
    pii.sort();
    assert_eq!(pii, ["R.emails", "R.phone"]);
}

#[test]
fn a_field_encrypted_inside_a_whole_encrypted_parent_is_not_below_the_floor() {
    let v1 = build(&json!({"type": "record", "name": "P", "fields": [
        {"name": "home", "type": {"type": "record", "name": "A", "fields": [
            {"name": "street", "type": "string", "sensitive": true}]}}]}));
    // Now the whole address is encrypted, street with it.
    let v2 = build(&json!({"type": "record", "name": "P", "fields": [
        {"name": "home", "sensitive": true, "type": {"type": "record", "name": "A", "fields": [
            {"name": "street", "type": "string"}]}}]}));
    assert!(v2.rows.iter().any(|r| r.path == "home"));
    assert_eq!(v2.below(&v1.floor()), Vec::<String>::new());
}
