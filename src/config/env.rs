//! Environment substitution in config strings: `${VAR}` is the variable's value,
//! `${VAR:-default}` the default when it is unset or empty, `$$` a literal `$`.
//! `${topic}` is left as it is: it is the route templates' own placeholder.
//!
//! Substitution happens inside TOML string values only, after the file is parsed,
//! so a value can never change the file's structure (a quote or newline in a
//! variable stays part of its string). An unset variable without a default is an
//! error naming the variable and the key it is in, never an empty string.

use thiserror::Error;

/// Placeholders the config itself fills in later, not the environment.
const TEMPLATE_PLACEHOLDERS: &[&str] = &["topic"];

/// A substitution that cannot be made.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("config key {key}: environment variable {var} is not set (write ${{{var}:-default}} for a default)")]
    Unset { key: String, var: String },
    #[error("config key {key}: \"{text}\" is not a valid substitution: write ${{VAR}} or ${{VAR:-default}} (VAR: letters, digits, '_'), or $$ for a literal $")]
    Syntax { key: String, text: String },
}

/// Substitutes every string in `table` (recursively), naming keys in errors.
/// Returns whether anything was substituted.
pub fn substitute_table(
    table: &mut toml::Table,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<bool, EnvError> {
    let mut changed = false;
    for (k, v) in table.iter_mut() {
        changed |= substitute_value(v, k, lookup)?;
    }
    Ok(changed)
}

fn substitute_value(
    v: &mut toml::Value,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<bool, EnvError> {
    match v {
        toml::Value::String(s) => match substitute(s, key, lookup)? {
            Some(new) => {
                *s = new;
                Ok(true)
            }
            None => Ok(false),
        },
        toml::Value::Array(items) => {
            let mut changed = false;
            for (i, item) in items.iter_mut().enumerate() {
                changed |= substitute_value(item, &format!("{key}[{i}]"), lookup)?;
            }
            Ok(changed)
        }
        toml::Value::Table(t) => {
            let mut changed = false;
            for (k, item) in t.iter_mut() {
                changed |= substitute_value(item, &format!("{key}.{k}"), lookup)?;
            }
            Ok(changed)
        }
        _ => Ok(false),
    }
}

/// One string: `Some(new)` when it held a substitution or `$$`, `None` when it
/// is unchanged.
pub fn substitute(
    s: &str,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, EnvError> {
    if !s.contains('$') {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            changed = true;
            rest = r;
            continue;
        }
        let Some(body_start) = after.strip_prefix('{') else {
            // A lone `$` is kept: "$5" or a regex anchor `foo$`.
            out.push('$');
            rest = after;
            continue;
        };
        let syntax = || EnvError::Syntax {
            key: key.to_string(),
            text: format!("${{{}", body_start.chars().take(40).collect::<String>()),
        };
        let end = body_start.find('}').ok_or_else(syntax)?;
        let body = &body_start[..end];
        rest = &body_start[end + 1..];
        let (var, default) = match body.split_once(":-") {
            Some((v, d)) => (v, Some(d)),
            None => (body, None),
        };
        if var.is_empty()
            || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || var.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(syntax());
        }
        if default.is_none() && TEMPLATE_PLACEHOLDERS.contains(&var) {
            out.push_str("${");
            out.push_str(var);
            out.push('}');
            continue;
        }
        changed = true;
        match (lookup(var).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(EnvError::Unset {
                    key: key.to_string(),
                    var: var.to_string(),
                })
            }
        }
    }
    out.push_str(rest);
    Ok(changed.then_some(out))
}

/// The process environment as a lookup.
pub fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(var: &str) -> Option<String> {
        match var {
            "POD_NAME" => Some("fieldcrypt-7d9f-x2".into()),
            "QUOTE" => Some("a\"b\nc".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn sub(s: &str) -> Result<Option<String>, EnvError> {
        substitute(s, "k", &env)
    }

    #[test]
    fn variables_defaults_and_escapes() {
        assert_eq!(sub("plain").unwrap(), None);
        assert_eq!(
            sub("tx-${POD_NAME}").unwrap().as_deref(),
            Some("tx-fieldcrypt-7d9f-x2")
        );
        assert_eq!(
            sub("${REGION:-eu-west-1}").unwrap().as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(sub("${EMPTY:-d}").unwrap().as_deref(), Some("d"));
        assert_eq!(
            sub("${POD_NAME:-d}").unwrap().as_deref(),
            Some("fieldcrypt-7d9f-x2")
        );
        assert_eq!(sub("cost $$5").unwrap().as_deref(), Some("cost $5"));
        assert_eq!(
            sub("$${NOT_A_VAR}").unwrap().as_deref(),
            Some("${NOT_A_VAR}")
        );
        assert_eq!(sub("^cdc\\..*$").unwrap(), None, "a regex anchor stays");
        // A value is data: quotes and newlines stay inside the string.
        assert_eq!(sub("${QUOTE}").unwrap().as_deref(), Some("a\"b\nc"));
    }

    #[test]
    fn the_route_template_placeholder_is_not_the_environment() {
        assert_eq!(sub("secure.${topic}").unwrap(), None);
        assert_eq!(
            sub("${POD_NAME}.${topic}").unwrap().as_deref(),
            Some("fieldcrypt-7d9f-x2.${topic}")
        );
    }

    #[test]
    fn unset_variables_and_bad_syntax_are_errors_naming_the_key() {
        let e = substitute("${NOPE}", "kafka.bootstrap_servers", &env).unwrap_err();
        assert_eq!(
            e,
            EnvError::Unset {
                key: "kafka.bootstrap_servers".into(),
                var: "NOPE".into()
            }
        );
        assert!(e.to_string().contains("${NOPE:-default}"), "{e}");
        for bad in ["${", "${}", "${A B}", "${1X}", "x${OPEN"] {
            let e = sub(bad).unwrap_err();
            assert!(matches!(e, EnvError::Syntax { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn tables_and_arrays_are_walked_with_their_key_paths() {
        let mut t: toml::Table = toml::from_str(
            "[pipeline]\ntransactional_id = \"eos-${POD_NAME}\"\nworkers = 2\n[kms]\ndecrypt_keks = [\"ok\", \"${MISSING}\"]\n",
        )
        .unwrap();
        let e = substitute_table(&mut t, &env).unwrap_err();
        assert!(e.to_string().contains("kms.decrypt_keks[1]"), "{e}");
        let mut t: toml::Table =
            toml::from_str("[pipeline]\ntransactional_id = \"eos-${POD_NAME}\"\n").unwrap();
        assert!(substitute_table(&mut t, &env).unwrap());
        assert_eq!(
            t["pipeline"]["transactional_id"].as_str(),
            Some("eos-fieldcrypt-7d9f-x2")
        );
    }
}
