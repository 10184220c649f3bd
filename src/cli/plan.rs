//! `fieldcrypt plan`: which fields a schema's records get encrypted and how, the
//! keys they need, and the derived output schema.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use fieldcrypt::keys::keyset::Purpose;
use fieldcrypt::keys::Keyset;

use super::{load_config, log, read_schema_with, references};

/// `fieldcrypt plan`: what a schema's records become, and the keys they need.
pub(super) fn plan(
    config: Option<&Path>,
    schema: &Path,
    schema_paths: &[PathBuf],
    output_schema: Option<&Path>,
) -> Result<()> {
    let cfg = load_config(config)?;
    let json = read_schema_with(schema, &references(&cfg, schema_paths)?)?;
    let plan = fieldcrypt::schema::plan::EncryptPlan::build(
        &json,
        &schema.display().to_string(),
        &cfg.plan_config(),
    )?;
    print!("{}", plan.table());
    if plan.is_passthrough() {
        log::line(
            tracing::Level::WARN,
            &format!(
                "warning: nothing in {} is encrypted: {}; encrypt-file and run refuse such a schema unless told to allow it",
                schema.display(),
                fieldcrypt::schema::policy::why_nothing_selected(&plan.tree, &cfg.plan_config().selection)
            ),
        );
    }
    let det = sorted(plan.deterministic_domains());
    let idx = sorted(plan.index_domains());
    if !det.is_empty() || !idx.is_empty() {
        println!(
            "\nkeys needed: deterministic [{}], blind-index [{}]",
            det.join(", "),
            idx.join(", ")
        );
        // Which of them the keyset lacks, each with the command that creates it.
        let ks = Keyset::load(&cfg.keyset.file)?;
        let missing: Vec<String> = det
            .iter()
            .map(|d| (Purpose::Deterministic, d))
            .chain(idx.iter().map(|d| (Purpose::BlindIndex, d)))
            .filter(|(p, d)| ks.active(*p, d).is_none())
            .map(|(p, d)| {
                cfg.command(
                    "keys create",
                    &format!(
                        "--purpose {p} --domain {}",
                        fieldcrypt::config::shell_word(d)
                    ),
                )
            })
            .collect();
        if missing.is_empty() {
            println!("keyset {}: has them all", cfg.keyset.file.display());
        } else {
            println!(
                "keyset {} lacks {} of them; create them with:",
                cfg.keyset.file.display(),
                missing.len()
            );
            for c in missing {
                println!("  {c}");
            }
        }
    }
    if let Some(out) = output_schema {
        let text = serde_json::to_string_pretty(&plan.output_json)? + "\n";
        std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
        println!("output schema written to {}", out.display());
    }
    Ok(())
}

pub(super) fn sorted(s: std::collections::HashSet<String>) -> Vec<String> {
    let mut v: Vec<String> = s.into_iter().collect();
    v.sort();
    v
}
