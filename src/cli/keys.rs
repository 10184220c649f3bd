//! `fieldcrypt keys`: the local KEK file and the keyset (create, list, rotate,
//! rewrap). Key material is never printed.

use anyhow::{bail, Result};

use fieldcrypt::engine::{open_kek, open_kms};
use fieldcrypt::keys::keyset::Purpose;
use fieldcrypt::keys::{Keyset, Kms, LocalKms};

use super::args::KeysCommand;
use super::{load_config, log};

pub(super) async fn keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Init { config } => {
            let cfg = load_config(config.as_deref())?;
            let Some(kek_file) = cfg.kms.kek_file() else {
                bail!(
                    "kms.provider is \"{}\": the KEK lives in that KMS and is never a file; \
                     create a symmetric key there (aws kms create-key) and set kms.key_id",
                    cfg.kms.provider.kind().name()
                );
            };
            let p = LocalKms::init(kek_file)?;
            let kms = LocalKms::open(&p)?;
            println!(
                "created KEK file {} ({}); keep it secret, never commit it",
                p.display(),
                kms.kek_id()
            );
            // A keyset wrapped by another KEK stays unreadable with this one: say
            // so, and how to move it under the new KEK (rewrap needs the old one).
            let ks = Keyset::load(&cfg.keyset.file)?;
            let mut others: Vec<&str> = ks
                .keys
                .iter()
                .map(|k| k.kek.as_str())
                .filter(|k| *k != kms.kek_id())
                .collect();
            others.sort_unstable();
            others.dedup();
            if !others.is_empty() {
                log::line(
                    tracing::Level::WARN,
                    &format!(
                        "warning: keyset {} holds keys wrapped by KEK {}, which this new KEK cannot unwrap. \
                         If that KEK is lost, restore it from where you keep it instead; to move the keyset \
                         under the new KEK, run keys rewrap --to-kek {} with a config whose kms.kek_file is the old KEK",
                        cfg.keyset.file.display(),
                        others.join(" and "),
                        fieldcrypt::config::shell_word(&format!("local:{}", p.display()))
                    ),
                );
            }
            Ok(())
        }
        KeysCommand::Create {
            config,
            purpose,
            domain,
        } => {
            let cfg = load_config(config.as_deref())?;
            fieldcrypt::engine::check_local_kek(&cfg)?;
            let kms = open_kms(&cfg).await?;
            let mut ks = Keyset::load(&cfg.keyset.file)?;
            let e = ks.create(kms.as_ref(), purpose, &domain).await?;
            ks.save(&cfg.keyset.file)?;
            println!(
                "created {} key for domain {} (version {}, id {}) in {}",
                e.purpose,
                e.domain,
                e.version,
                e.id,
                cfg.keyset.file.display()
            );
            Ok(())
        }
        KeysCommand::Rotate {
            config,
            domain,
            purpose,
        } => {
            let cfg = load_config(config.as_deref())?;
            let mut ks = Keyset::load(&cfg.keyset.file)?;
            let has = |p: Purpose| ks.active(p, &domain).is_some();
            let wanted: Vec<Purpose> = match purpose {
                Some(p) => vec![p],
                None => vec![Purpose::Deterministic, Purpose::BlindIndex],
            };
            if !wanted.iter().any(|p| has(*p)) {
                let create: Vec<String> = wanted
                    .iter()
                    .map(|p| {
                        format!(
                            "`{}`",
                            cfg.command(
                                "keys create",
                                &format!(
                                    "--purpose {p} --domain {}",
                                    fieldcrypt::config::shell_word(&domain)
                                )
                            )
                        )
                    })
                    .collect();
                bail!(
                    "keyset {} has no {} key for domain \"{domain}\" to rotate; create one with {}",
                    cfg.keyset.file.display(),
                    purpose.map_or("deterministic or blind-index".to_string(), |p| p
                        .to_string()),
                    create.join(" or ")
                );
            }
            fieldcrypt::engine::check_local_kek(&cfg)?;
            let kms = open_kms(&cfg).await?;
            let added = ks.rotate(kms.as_ref(), &domain, purpose).await?;
            ks.save(&cfg.keyset.file)?;
            for e in &added {
                println!(
                    "rotated {} key of domain {}: version {} (id {}) is active; older versions stay for decryption",
                    e.purpose, e.domain, e.version, e.id
                );
            }
            println!(
                "deploy {} to every instance; see docs/KEYS.md for what rotation means for blind-index lookups",
                cfg.keyset.file.display()
            );
            Ok(())
        }
        KeysCommand::Rewrap { config, to_kek } => {
            let cfg = load_config(config.as_deref())?;
            fieldcrypt::engine::check_local_kek(&cfg)?;
            let from = open_kms(&cfg).await?;
            let to = open_kek(&cfg, &to_kek).await?;
            let mut ks = Keyset::load(&cfg.keyset.file)?;
            if ks.keys.is_empty() {
                bail!("keyset {} has no keys to rewrap", cfg.keyset.file.display());
            }
            let moved = ks.rewrap(from.as_ref(), to.as_ref()).await?;
            ks.save(&cfg.keyset.file)?;
            for m in &moved {
                println!(
                    "{} {} v{} ({}): {} -> {}{}",
                    m.purpose,
                    m.domain,
                    m.version,
                    m.id,
                    m.from,
                    m.to,
                    if m.in_kms { " (ReEncrypt)" } else { "" }
                );
            }
            println!(
                "rewrapped {} keys in {}. Point the config's KEK at {to_kek} for new data keys, and \
                 keep the old KEK usable for decryption while data wrapped by it remains (docs/KEYS.md)",
                moved.len(),
                cfg.keyset.file.display()
            );
            Ok(())
        }
        KeysCommand::List { config } => {
            let cfg = load_config(config.as_deref())?;
            let ks = Keyset::load(&cfg.keyset.file)?;
            if ks.keys.is_empty() {
                println!("keyset {} has no keys", cfg.keyset.file.display());
                return Ok(());
            }
            println!(
                "{:<14} {:<16} {:>7}  {:<8} {:<32}  {:<20}  KEK",
                "PURPOSE", "DOMAIN", "VERSION", "STATE", "ID", "CREATED"
            );
            let mut keys = ks.keys.clone();
            keys.sort_by(|a, b| {
                (a.purpose.to_string(), &a.domain, a.version).cmp(&(
                    b.purpose.to_string(),
                    &b.domain,
                    b.version,
                ))
            });
            for k in &keys {
                let active = ks
                    .active(k.purpose, &k.domain)
                    .map(|a| a.id == k.id)
                    .unwrap_or(false);
                println!(
                    "{:<14} {:<16} {:>7}  {:<8} {:<32}  {:<20}  {}",
                    k.purpose.to_string(),
                    k.domain,
                    k.version,
                    if active { "active" } else { "decrypt" },
                    k.id,
                    k.created_at,
                    k.kek
                );
            }
            Ok(())
        }
    }
}
