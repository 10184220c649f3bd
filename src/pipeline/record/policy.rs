//! The route's policy floor, for both formats: what a writer schema must encrypt
//! (the route's `require`, and everything an earlier version of its subject
//! encrypted, by markings, tags, rules or ENCRYPT rules), and which fields a
//! plan leaves below it. A schema below its floor is a downgrade, refused.

use std::collections::BTreeSet;

use serde_json::Value as Json;

use super::codec::SchemaCx;
use super::failure::{Refused, Step};
use crate::codes::Code;
use crate::config::ConfigError;
use crate::csfle::plan::CsflePlan;
use crate::kafka::route::Requirement;
use crate::registry::{RegistryError, SubjectVersion};
use crate::schema::plan::{EncryptPlan, Floor};
use crate::schema::policy::MetadataTags;
use crate::transform::Encryptor;

/// Every registered version of `subject` with its label (`subject S version
/// N`); a version deleted meanwhile is skipped.
async fn versions(
    cx: &SchemaCx<'_>,
    subject: &str,
) -> Result<Vec<(String, SubjectVersion)>, RegistryError> {
    let mut out = Vec::new();
    for v in cx.registry.subject_versions(subject).await? {
        match cx.registry.subject_schema(subject, v).await {
            Ok(x) => out.push((format!("subject {subject} version {v}"), x)),
            Err(RegistryError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The fields the writer schema's plan `enc` leaves in clear that the route's
/// `require` names or an earlier version of `subject` encrypts (its floor is the
/// union of what every registered version encrypts).
pub(super) async fn below_floor(
    cx: &SchemaCx<'_>,
    subject: &str,
    enc: &Encryptor,
    is_key: bool,
) -> Result<Vec<String>, RegistryError> {
    let plan = enc.plan();
    let mut floor = Floor::new();
    if !cx.route.allow_downgrade {
        let max_depth = cx.engine.config().schema.max_depth;
        for (label, version) in versions(cx, subject).await? {
            let md = version.metadata.as_ref();
            let tags = crate::csfle::rules::metadata_tags(md).unwrap_or_default();
            // A version we cannot plan (say, a conflicting marking) sets no floor.
            if let Ok(p) = cx.engine.encrypt_plan_tagged(&version.json, &tags, &label) {
                floor.extend(p.floor());
            }
            // What that version's own ENCRYPT rules protected stays protected.
            if is_key || version.rule_set.is_none() {
                continue;
            }
            let rules = version.rule_set.as_ref();
            if let Ok(p) = CsflePlan::build(&version.json, rules, md, &label, max_depth) {
                for (n, _) in p.selected {
                    floor.entry(n).or_insert(None);
                }
            }
        }
    }
    if !is_key {
        add_required(&cx.route.require, plan, &mut floor);
    }
    Ok(plan.below(&floor))
}

/// Fields a disabled `ENCRYPT` rule of the writer schema would select that
/// fieldcrypt's plan leaves in clear: the writer meant them protected (it
/// tagged them) but sends them in clear, so they must not pass on in clear.
pub(super) fn disabled_rule_fields(cx: &SchemaCx<'_>, enc: &Encryptor) -> Vec<String> {
    let schema = cx.schema;
    let Some(rules) = crate::csfle::rules::disabled_rules_enabled(schema.rule_set.as_ref()) else {
        return Vec::new();
    };
    let max_depth = cx.engine.config().schema.max_depth;
    let md = schema.metadata.as_ref();
    let Ok(p) = CsflePlan::build(&schema.json, Some(&rules), md, cx.label, max_depth) else {
        return Vec::new();
    };
    let floor = enc.plan().floor();
    p.selected
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !floor.contains_key(n))
        .map(|n| format!("{n} (tagged for a disabled ENCRYPT rule)"))
        .collect()
}

/// A `format = "confluent"` route's floor: what the route's `rules` (or
/// fieldcrypt's own policy) encrypt in any earlier version of the source
/// `subject` must be selected by `plan` too, or the schema is a downgrade.
/// `None`: it holds.
pub(super) async fn csfle_below_floor(
    cx: &SchemaCx<'_>,
    subject: &str,
    plan: &CsflePlan,
    rules: &Json,
) -> Step<Option<Refused>> {
    if cx.route.allow_downgrade {
        return Ok(None);
    }
    let max_depth = cx.engine.config().schema.max_depth;
    let mut floor = BTreeSet::new();
    for (label, version) in versions(cx, subject).await? {
        let md = version.metadata.as_ref();
        // What the route's rule selects in that version, and what fieldcrypt's
        // own policy encrypts there; a version we cannot plan sets no floor.
        if let Ok(p) = CsflePlan::build(&version.json, Some(rules), md, &label, max_depth) {
            floor.extend(p.selected.into_iter().map(|(n, _)| n));
        }
        let tags = crate::csfle::rules::metadata_tags(md).unwrap_or_default();
        if let Ok(p) = cx.engine.encrypt_plan_tagged(&version.json, &tags, &label) {
            floor.extend(p.floor().into_keys());
        }
    }
    let has = |ctx: &str| {
        ctx.rsplit_once('.').is_some_and(|(rec, f)| {
            plan.tree
                .names
                .get(rec)
                .and_then(|id| plan.tree.record(*id))
                .is_some_and(|r| r.fields.iter().any(|x| x.name == f))
        })
    };
    let below: Vec<String> = floor
        .into_iter()
        .filter(|ctx| has(ctx) && !plan.selected.iter().any(|(n, _)| n == ctx))
        .collect();
    if below.is_empty() {
        return Ok(None);
    }
    tracing::error!(subject, fields = %below.join(", "), "writer schema refused: it would encrypt less than its subject's earlier versions (policy_downgrade); its records go to the dead-letter topic");
    Ok(Some(Refused::new(
        Code::PolicyDowngrade,
        format!(
            "the writer schema leaves in clear what an earlier version of subject {subject} encrypts: {} (tag the fields with one of the route's confluent.tags, or set the route's allow_downgrade = true if this is deliberate)",
            below.join(", ")
        ),
    )))
}

/// The first of a route's `require` entries that a Confluent-format plan leaves
/// in clear (field contexts, and `tag:NAME` for every field carrying the tag).
pub(super) fn required_in_clear(
    require: &[Requirement],
    plan: &CsflePlan,
    metadata: &MetadataTags,
) -> Option<String> {
    let encrypted = |ctx: &str| plan.selected.iter().any(|(n, _)| n == ctx);
    for r in require {
        match r {
            Requirement::Tag(tag) => {
                for ctx in crate::schema::policy::fields_tagged(&plan.tree, tag, metadata) {
                    if !encrypted(&ctx) {
                        return Some(format!("{ctx} (tag {tag})"));
                    }
                }
            }
            Requirement::Field(f) if !encrypted(f) => return Some(f.clone()),
            Requirement::Field(_) => {}
        }
    }
    None
}

/// Adds a route's `require` entries to a floor: field contexts as they are, and
/// for `tag:NAME` every field of the schema that carries the tag.
fn add_required(require: &[Requirement], plan: &EncryptPlan, floor: &mut Floor) {
    for r in require {
        match r {
            Requirement::Tag(tag) => {
                for ctx in plan.tagged(tag) {
                    floor.entry(ctx).or_insert(None);
                }
            }
            Requirement::Field(f) => {
                floor.entry(f.clone()).or_insert(None);
            }
        }
    }
}

/// A raw route's schema must encrypt what the route requires; a required field
/// path the schema does not have is a typo, refused too.
pub(super) fn check_required(
    i: usize,
    require: &[Requirement],
    plan: &EncryptPlan,
) -> Result<(), ConfigError> {
    let key = format!("routes[{i}].require");
    for r in require.iter().filter_map(|r| match r {
        Requirement::Field(f) => Some(f),
        Requirement::Tag(_) => None,
    }) {
        let has = r
            .rsplit_once('.')
            .and_then(|(rec, f)| {
                let id = plan.tree.names.get(rec)?;
                plan.tree.record(*id)?.fields.iter().find(|x| x.name == f)
            })
            .is_some();
        if !has {
            return Err(crate::config::invalid(key, format!(
                "{r} is not a field of the route's value_schema (write it as <record full name>.<field>)"
            )));
        }
    }
    let mut floor = Floor::new();
    add_required(require, plan, &mut floor);
    let below = plan.below(&floor);
    if below.is_empty() {
        return Ok(());
    }
    Err(crate::config::invalid(
        key,
        format!(
            "the route's value_schema leaves in clear {}; mark them sensitive (or with a rule)",
            below.join(", ")
        ),
    ))
}
