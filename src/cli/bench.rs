//! `fieldcrypt bench`: encrypt and decrypt throughput on one core against a plain
//! apache-avro round trip of the same records.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

use fieldcrypt::engine::Engine;
use fieldcrypt::keys::keyset::Purpose;
use fieldcrypt::keys::{Keyset, Kms, LocalKms};

use super::{load_config, log, read_schema};

pub(super) async fn bench(
    config: Option<&Path>,
    schema: &Path,
    records: usize,
    rounds: usize,
    seconds: f64,
) -> Result<()> {
    if records == 0 || rounds == 0 || seconds <= 0.0 {
        bail!("--records, --rounds and --seconds must be positive");
    }
    let mut cfg = load_config(config)?;
    let dir = tempfile::tempdir()?;
    let kek_file = dir.path().join("kek.key");
    cfg.kms = fieldcrypt::config::KmsConfig::local(&kek_file);
    cfg.keyset.file = dir.path().join("keyset.json");
    // One DEK for the whole run: rotation is a KMS round trip, not transform cost.
    cfg.dek.max_uses = fieldcrypt::keys::dek::MAX_USES_CEILING;
    LocalKms::init(&kek_file)?;
    let kms: Arc<dyn Kms> = Arc::new(LocalKms::open(&kek_file)?);
    let json = read_schema(schema)?;
    let plan = fieldcrypt::schema::plan::EncryptPlan::build(
        &json,
        &schema.display().to_string(),
        &cfg.plan_config(),
    )?;
    let mut ks = Keyset::default();
    for d in plan.deterministic_domains() {
        ks.create(kms.as_ref(), Purpose::Deterministic, &d).await?;
    }
    for d in plan.index_domains() {
        ks.create(kms.as_ref(), Purpose::BlindIndex, &d).await?;
    }
    ks.save(&cfg.keyset.file)?;
    let engine = Engine::with_kms(cfg, kms).await?;
    log::line(
        tracing::Level::INFO,
        &format!(
            "benchmarking {} ({} sensitive fields, AES on the {} path) ...",
            schema.display(),
            plan.rows.len(),
            fieldcrypt::crypto::accel::path().describe()
        ),
    );
    let report = fieldcrypt::bench::run(
        &engine,
        &json,
        records,
        rounds,
        Duration::from_secs_f64(seconds),
    )
    .await?;
    print!("{}", report.table());
    Ok(())
}
