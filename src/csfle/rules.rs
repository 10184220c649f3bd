//! The `ENCRYPT` rules of a schema's Confluent rule set, read as Confluent's
//! clients read them (`ruleSet.domainRules`, `params` falling back to
//! `metadata.properties`), and the field tags they select on: `confluent:tags` on
//! the field object and `metadata.tags` patterns over `namespace.Record.field`.

use std::collections::BTreeSet;

use serde_json::Value as Json;

use super::crypto::Algorithm;

/// One `ENCRYPT` domain rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptRule {
    pub name: String,
    /// Tags it encrypts (none: every string and bytes leaf, as Confluent does).
    pub tags: BTreeSet<String>,
    /// `encrypt.kek.name`: the KEK in the DEK Registry.
    pub kek_name: String,
    /// `encrypt.kms.type` (`local-kms`, `aws-kms`, ...), needed to create the KEK.
    pub kms_type: Option<String>,
    /// `encrypt.kms.key.id`, needed to create the KEK.
    pub kms_key_id: Option<String>,
    /// `encrypt.dek.algorithm` (default AES256_GCM).
    pub algorithm: Algorithm,
    /// `encrypt.dek.expiry.days`: over 0, DEKs rotate and every ciphertext carries
    /// its DEK version in a 5-byte prefix.
    pub expiry_days: u32,
}

impl EncryptRule {
    /// Does every ciphertext of this rule start with the DEK-version prefix?
    pub fn versioned(&self) -> bool {
        self.expiry_days > 0
    }

    /// Does a field with these tags belong to this rule?
    pub fn selects(&self, field_tags: &BTreeSet<String>) -> bool {
        self.tags.is_empty() || !self.tags.is_disjoint(field_tags)
    }
}

/// What fieldcrypt cannot follow in a schema's data contract (its `ruleSet` or
/// `metadata`): the message names the part and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ContractError(pub String);

impl From<String> for ContractError {
    fn from(m: String) -> Self {
        ContractError(m)
    }
}

impl From<&str> for ContractError {
    fn from(m: &str) -> Self {
        ContractError(m.into())
    }
}

/// The enabled `ENCRYPT` rules of a rule set, in order. A rule fieldcrypt cannot
/// honour exactly (another kind or mode, a parameter it does not understand) is an
/// error, never skipped: skipping would leave fields in clear or undecrypted.
pub fn encrypt_rules(
    rule_set: Option<&Json>,
    metadata: Option<&Json>,
) -> Result<Vec<EncryptRule>, ContractError> {
    let Some(rules) = rule_set.and_then(|r| r.get("domainRules")) else {
        return Ok(Vec::new());
    };
    let rules = rules
        .as_array()
        .ok_or("ruleSet.domainRules must be an array")?;
    let properties = metadata.and_then(|m| m.get("properties"));
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let at = |msg: String| ContractError(format!("ruleSet.domainRules[{i}]: {msg}"));
        let text = |k: &str| r.get(k).and_then(Json::as_str);
        if !text("type").is_some_and(|t| t.eq_ignore_ascii_case("ENCRYPT")) {
            continue;
        }
        if r.get("disabled").and_then(Json::as_bool) == Some(true) {
            continue;
        }
        let name = text("name").unwrap_or("").to_string();
        if text("kind").is_some_and(|k| !k.eq_ignore_ascii_case("TRANSFORM")) {
            return Err(at("an ENCRYPT rule must be of kind TRANSFORM".into()));
        }
        if !text("mode").is_some_and(|m| m.eq_ignore_ascii_case("WRITEREAD")) {
            return Err(at(format!(
                "ENCRYPT rule {name:?} has mode {:?}; fieldcrypt reads and writes only WRITEREAD rules",
                text("mode").unwrap_or("(none)")
            )));
        }
        let param = |k: &str| -> Option<String> {
            r.get("params")
                .and_then(|p| p.get(k))
                .or_else(|| properties.and_then(|p| p.get(k)))
                .and_then(Json::as_str)
                .map(str::to_string)
        };
        let kek_name = param("encrypt.kek.name")
            .filter(|k| !k.is_empty())
            .ok_or_else(|| at(format!("ENCRYPT rule {name:?} names no encrypt.kek.name")))?;
        let algorithm = match param("encrypt.dek.algorithm") {
            None => Algorithm::Aes256Gcm,
            Some(a) => a
                .parse()
                .map_err(|e| at(format!("encrypt.dek.algorithm: {e}")))?,
        };
        let expiry_days = match param("encrypt.dek.expiry.days") {
            None => 0,
            Some(d) => d.trim().parse::<u32>().map_err(|_| {
                at(format!(
                    "encrypt.dek.expiry.days must be a whole number of days, not {d:?}"
                ))
            })?,
        };
        let tags = match r.get("tags") {
            None | Some(Json::Null) => BTreeSet::new(),
            Some(Json::Array(a)) => a
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| at("tags must be strings".into()))?,
            Some(_) => return Err(at("tags must be an array".into())),
        };
        out.push(EncryptRule {
            name,
            tags,
            kek_name,
            kms_type: param("encrypt.kms.type"),
            kms_key_id: param("encrypt.kms.key.id"),
            algorithm,
            expiry_days,
        });
    }
    Ok(out)
}

/// The rule set's *disabled* `ENCRYPT` rules (those with tags), switched on: what
/// they would select is what the writer meant to protect but sends in clear.
/// `None` when there are none.
pub fn disabled_rules_enabled(rule_set: Option<&Json>) -> Option<Json> {
    let rules = rule_set?.get("domainRules")?.as_array()?;
    let disabled: Vec<Json> = rules
        .iter()
        .filter(|r| {
            r.get("type")
                .and_then(Json::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("ENCRYPT"))
                && r.get("disabled").and_then(Json::as_bool) == Some(true)
                && r.get("tags")
                    .and_then(Json::as_array)
                    .is_some_and(|t| !t.is_empty())
        })
        .map(|r| {
            let mut r = r.clone();
            if let Some(o) = r.as_object_mut() {
                o.remove("disabled");
            }
            r
        })
        .collect();
    (!disabled.is_empty()).then(|| serde_json::json!({ "domainRules": disabled }))
}

/// `metadata.tags`: field-name pattern → tags.
pub fn metadata_tags(metadata: Option<&Json>) -> Result<Vec<(String, Vec<String>)>, ContractError> {
    let Some(tags) = metadata.and_then(|m| m.get("tags")) else {
        return Ok(Vec::new());
    };
    let tags = tags.as_object().ok_or("metadata.tags must be an object")?;
    tags.iter()
        .map(|(pattern, t)| {
            let t = t
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| format!("metadata.tags.{pattern} must be an array of strings"))?;
            Ok((pattern.clone(), t))
        })
        .collect()
}

/// Confluent's wildcard match of a field's full name: `**` matches across dotted
/// segments, `*` within one, `?` one character other than a dot; the pattern must
/// cover the whole name.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    // Memoised over (pattern position, name position): a pattern from a registry
    // is attacker-controlled, and naive backtracking over several `**` is
    // exponential. Each state is decided once: O(|pattern| × |name|).
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let w = n.len() + 1;
    let mut memo: Vec<Option<bool>> = vec![None; (p.len() + 1) * w];
    fn go(p: &[u8], n: &[u8], i: usize, j: usize, w: usize, memo: &mut [Option<bool>]) -> bool {
        if let Some(r) = memo[i * w + j] {
            return r;
        }
        let r = match &p[i..] {
            [] => j == n.len(),
            [b'*', b'*', ..] => (j..=n.len()).any(|k| go(p, n, i + 2, k, w, memo)),
            [b'*', ..] => {
                let seg = n[j..]
                    .iter()
                    .position(|&c| c == b'.')
                    .map_or(n.len(), |x| j + x);
                (j..=seg).any(|k| go(p, n, i + 1, k, w, memo))
            }
            [b'?', ..] => {
                matches!(n.get(j), Some(&c) if c != b'.') && go(p, n, i + 1, j + 1, w, memo)
            }
            [c, ..] => n.get(j) == Some(c) && go(p, n, i + 1, j + 1, w, memo),
        };
        memo[i * w + j] = Some(r);
        r
    }
    go(p, n, 0, 0, w, &mut memo)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_hostile_pattern_is_decided_quickly() {
        // 30 `**` against a long name with no match: exponential if backtracked.
        let pattern = format!("{}x", "**.".repeat(30));
        let name = "a.".repeat(200) + "b";
        assert!(!wildcard_match(&pattern, &name));
        // And the memo does not change answers: 30 `**.` need 30 dots before b.
        assert!(wildcard_match(
            &format!("{}b", "**.".repeat(30)),
            &("a.".repeat(40) + "b")
        ));
        assert!(!wildcard_match(
            &format!("{}b", "**.".repeat(30)),
            &("a.".repeat(29) + "b")
        ));
    }

    #[test]
    fn wildcards_match_as_confluent_documents() {
        let n = "com.acme.Payment.card";
        assert!(wildcard_match("com.acme.Payment.card", n));
        assert!(wildcard_match("**.card", n));
        assert!(wildcard_match("com.acme.*.card", n));
        assert!(wildcard_match("com.acme.Payment.car?", n));
        assert!(
            !wildcard_match("Payment.card", n),
            "the whole name must match"
        );
        assert!(!wildcard_match("*.card", n), "* stays within one segment");
        assert!(
            !wildcard_match("com?acme.Payment.card", n),
            "? is not a dot"
        );
        assert!(wildcard_match("In.s", "In.s"));
        assert!(wildcard_match("**", n));
    }

    #[test]
    fn rules_read_params_with_metadata_fallback() {
        let rs = json!({"domainRules": [
            {"name": "migrate", "type": "JSONATA", "kind": "TRANSFORM", "mode": "UPGRADE"},
            {"name": "off", "type": "ENCRYPT", "kind": "TRANSFORM", "mode": "WRITEREAD",
             "disabled": true, "params": {"encrypt.kek.name": "x"}},
            {"name": "pii", "type": "ENCRYPT", "kind": "TRANSFORM", "mode": "WRITEREAD",
             "tags": ["PII"], "params": {"encrypt.kek.name": "kek1",
             "encrypt.dek.algorithm": "AES256_SIV"}}]});
        let md = json!({"properties": {"encrypt.dek.expiry.days": "7",
                                       "encrypt.kms.type": "local-kms"}});
        let r = encrypt_rules(Some(&rs), Some(&md)).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kek_name, "kek1");
        assert_eq!(r[0].algorithm, Algorithm::Aes256Siv);
        assert_eq!(r[0].expiry_days, 7);
        assert!(r[0].versioned());
        assert_eq!(r[0].kms_type.as_deref(), Some("local-kms"));
        assert!(r[0].selects(&["PII".to_string()].into()));
        assert!(!r[0].selects(&["OTHER".to_string()].into()));
    }

    #[test]
    fn rules_fieldcrypt_cannot_honour_are_errors() {
        let rule = |extra: serde_json::Value| {
            let mut r = json!({"name": "r", "type": "ENCRYPT", "kind": "TRANSFORM",
                "mode": "WRITEREAD", "params": {"encrypt.kek.name": "k"}});
            r.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            encrypt_rules(Some(&json!({"domainRules": [r]})), None)
        };
        assert!(rule(json!({})).is_ok());
        assert!(rule(json!({"mode": "WRITE"}))
            .unwrap_err()
            .0
            .contains("WRITEREAD"));
        assert!(rule(json!({"params": {}}))
            .unwrap_err()
            .0
            .contains("encrypt.kek.name"));
        assert!(
            rule(json!({"params": {"encrypt.kek.name": "k", "encrypt.dek.algorithm": "DES"}}))
                .unwrap_err()
                .0
                .contains("algorithm")
        );
        assert!(rule(
            json!({"params": {"encrypt.kek.name": "k", "encrypt.dek.expiry.days": "-1"}})
        )
        .unwrap_err()
        .0
        .contains("expiry"));
        assert!(encrypt_rules(None, None).unwrap().is_empty());
    }
}
