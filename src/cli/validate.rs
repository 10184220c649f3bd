//! `fieldcrypt validate`: every check `run` makes before it consumes a record,
//! without running — the config, the keys, each route's schema and plan, the
//! Schema Registry, and the brokers and topics (one metadata request; the group
//! is never joined, so no rebalance is caused). One line per check with its
//! verdict; the exit status is 0 only when every check passed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

use fieldcrypt::config::Config;
use fieldcrypt::engine::Engine;

/// The verdicts so far.
#[derive(Default)]
struct Verdicts {
    failed: usize,
    warned: usize,
    passed: usize,
}

impl Verdicts {
    fn ok(&mut self, what: &str, detail: impl AsRef<str>) {
        self.passed += 1;
        println!("ok    {what}: {}", detail.as_ref());
    }

    fn warn(&mut self, what: &str, detail: impl AsRef<str>) {
        self.warned += 1;
        println!("warn  {what}: {}", detail.as_ref());
    }

    fn fail(&mut self, what: &str, detail: impl AsRef<str>) {
        self.failed += 1;
        println!("FAIL  {what}: {}", detail.as_ref());
    }

    fn skip(&mut self, what: &str, why: &str) {
        println!("skip  {what}: {why}");
    }

    fn finish(self) -> Result<()> {
        println!(
            "\n{} passed, {} failed, {} warning(s)",
            self.passed, self.failed, self.warned
        );
        if self.failed > 0 {
            bail!("{} check(s) failed (see above)", self.failed);
        }
        Ok(())
    }
}

/// Runs every check and prints a line for each.
pub async fn run(path: Option<&Path>, offline: bool) -> Result<()> {
    let mut v = Verdicts::default();
    let what = path.map_or_else(
        || "embedded defaults".to_string(),
        |p| p.display().to_string(),
    );
    let cfg = match Config::load(path) {
        Ok(c) => {
            v.ok("config", format!("{what}: parsed and valid"));
            c
        }
        Err(e) => {
            v.fail("config", e.to_string());
            return v.finish();
        }
    };
    let engine = match Engine::start(cfg.clone()).await {
        Ok(e) => {
            let kek = match cfg.kms.kek_file() {
                Some(f) => format!("KEK file {}", f.display()),
                None => format!("{} KMS", cfg.kms.provider.kind().name()),
            };
            v.ok(
                "keys",
                format!(
                    "{kek} opened; keyset {} unwrapped",
                    cfg.keyset.file.display()
                ),
            );
            Some(Arc::new(e))
        }
        Err(e) => {
            v.fail("keys", e.to_string());
            None
        }
    };
    if cfg.routes.is_empty() {
        v.warn(
            "routes",
            "no [[routes]]: `fieldcrypt run` would have nothing to consume",
        );
    }
    let registry = cfg.schema_registry.url.is_some();
    for (i, r) in cfg.routes.iter().enumerate() {
        let what = format!("routes[{i}] {} -> {}", r.source, r.target);
        if registry {
            v.ok(
                &what,
                "schemas come from the registry, checked per schema id as records arrive",
            );
            continue;
        }
        match &engine {
            Some(e) => match fieldcrypt::pipeline::record::check_raw_route(e, i) {
                Ok(line) => v.ok(&what, line),
                Err(e) => v.fail(&what, e.to_string()),
            },
            None => v.skip(&what, "needs the keys"),
        }
    }
    if offline {
        v.skip("schema registry", "--offline");
        v.skip("kafka", "--offline");
        return v.finish();
    }
    if let Some(url) = &cfg.schema_registry.url {
        check_registry(&mut v, &cfg, url).await;
    }
    check_kafka(&mut v, &cfg).await;
    v.finish()
}

/// Reaches the registry with one read (a target subject's versions).
async fn check_registry(v: &mut Verdicts, cfg: &Config, url: &str) {
    let metrics = Arc::new(fieldcrypt::observe::Metrics::new());
    let mut rc = cfg.schema_registry.clone();
    rc.retries = 0;
    let reg = match fieldcrypt::registry::SchemaRegistry::new(&rc, metrics) {
        Ok(r) => r,
        Err(e) => return v.fail("schema registry", e.to_string()),
    };
    let subject = cfg.routes.first().map_or_else(
        || "fieldcrypt-validate".to_string(),
        |r| format!("{}-value", r.target.replace("${topic}", "validate")),
    );
    match reg.subject_versions(&subject).await {
        Ok(_) => v.ok("schema registry", format!("{url} answers")),
        Err(e) => v.fail("schema registry", e.to_string()),
    }
}

/// One metadata request: brokers reachable, source topics present.
async fn check_kafka(v: &mut Verdicts, cfg: &Config) {
    let servers = &cfg.kafka.bootstrap_servers;
    match fieldcrypt::pipeline::topics::probe(cfg, Duration::from_secs(10)).await {
        Ok(r) => {
            v.ok(
                "kafka",
                format!("{servers}: {} broker(s) answer", r.brokers),
            );
            if !cfg.routes.is_empty() {
                if r.missing.is_empty() {
                    v.ok(
                        "source topics",
                        format!("present: {}", r.sources.join(", ")),
                    );
                } else {
                    v.fail(
                        "source topics",
                        format!("missing on {servers}: {}", r.missing.join(", ")),
                    );
                }
            }
            for p in &r.unmatched_patterns {
                v.warn(
                    "source topics",
                    format!("no topic matches {p} yet (it is picked up when one appears)"),
                );
            }
        }
        Err(e) => v.fail(
            "kafka",
            format!("kafka.bootstrap_servers = \"{servers}\": {e}"),
        ),
    }
}
