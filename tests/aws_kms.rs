//! The AWS KMS provider against a real KMS emulator (moto's server, one per test):
//! data keys generated and unwrapped through the SDK, bound to their encryption
//! context and to the key that wrapped them; per-tenant KEKs through the key ring;
//! `keys rotate` and `keys rewrap` (ReEncrypt) through the binary with old data
//! still decrypting; and, with a real broker, the DEK cache keeping KMS calls to a
//! handful per run, and the pipeline pausing through a KMS outage (cut by a fault
//! proxy) with nothing lost and nothing written in clear.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::broker::*;
use common::kms::*;
use fieldcrypt::config::{Config, ProviderConfig};
use fieldcrypt::kafka::route::RouteConfig;
use fieldcrypt::keys::aws::AwsConfig;
use fieldcrypt::keys::aws::{self, AwsKms};
use fieldcrypt::keys::{EncryptionContext, KeyRing, Kms, KmsError};
use fieldcrypt::sample::Generator;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn data_keys_through_the_sdk_are_bound_to_context_and_key() {
    let moto = Moto::start();
    let arn_a = moto.create_key(None);
    let arn_t = moto.create_key(Some("alias/tenant-t"));
    rt().block_on(async {
        let client = aws::client(&moto.settings()).await.unwrap();
        let a: Arc<dyn Kms> = Arc::new(AwsKms::new(client.clone(), arn_a.clone()));
        let c = ctx(&[
            ("fieldcrypt:purpose", "dek"),
            ("fieldcrypt:scope", "route:x"),
        ]);

        let dk = a.generate_data_key(32, &c).await.unwrap();
        assert_eq!(dk.plaintext.len(), 32);
        assert_eq!(dk.wrapped.kek, arn_a, "the wrapped key records the key ARN");
        assert!(!dk.wrapped.blob.windows(32).any(|w| w == &dk.plaintext[..]));
        let back = a.decrypt_data_key(&dk.wrapped, &c).await.unwrap();
        assert_eq!(*back, *dk.plaintext);

        // Out of context: another scope, another purpose, or none at all.
        for wrong in [
            ctx(&[
                ("fieldcrypt:purpose", "dek"),
                ("fieldcrypt:scope", "route:y"),
            ]),
            ctx(&[
                ("fieldcrypt:purpose", "deterministic"),
                ("fieldcrypt:scope", "route:x"),
            ]),
            EncryptionContext::new(),
        ] {
            let e = a.decrypt_data_key(&dk.wrapped, &wrong).await.unwrap_err();
            assert_eq!(e, KmsError::InvalidCiphertext, "{wrong:?}");
        }
        // A corrupted blob is refused, not retried as an outage.
        let mut bad = dk.wrapped.clone();
        let n = bad.blob.len();
        bad.blob[n - 1] ^= 1;
        let e = a.decrypt_data_key(&bad, &c).await.unwrap_err();
        assert!(!e.is_retriable(), "{e}");

        // Per-tenant KEK: the ring wraps the tenant's keys with its own key (named by
        // alias, resolved to its ARN when opened) and unwraps a key by the ARN it
        // carries, when that is one of its keys.
        let unresolved = AwsKms::new(client.clone(), "alias/tenant-t");
        assert!(
            !unresolved.owns(&arn_t),
            "an alias owns nothing until resolved"
        );
        let t: Arc<dyn Kms> = Arc::new(unresolved.resolve().await.unwrap());
        assert!(t.owns(&arn_t));
        let ring = KeyRing::new(a.clone()).scope("tenant:t", t.clone());
        let tc = ctx(&[
            ("fieldcrypt:purpose", "dek"),
            ("fieldcrypt:scope", "tenant:t"),
        ]);
        let tk = ring.generate_data_key(32, &tc).await.unwrap();
        assert_eq!(
            tk.wrapped.kek, arn_t,
            "the tenant's key wraps its data keys"
        );
        assert_eq!(
            *ring.decrypt_data_key(&tk.wrapped, &tc).await.unwrap(),
            *tk.plaintext
        );
        assert_eq!(
            *ring.decrypt_data_key(&dk.wrapped, &c).await.unwrap(),
            *dk.plaintext
        );

        // A wrapped key naming a key the config does not name (another account's,
        // a forger's) is refused before any KMS call: no request reaches KMS.
        let forged = fieldcrypt::keys::WrappedKey {
            kek: "arn:aws:kms:us-east-1:999999999999:key/00000000-0000-0000-0000-000000000000"
                .into(),
            blob: dk.wrapped.blob.clone(),
        };
        let only_a = KeyRing::new(a.clone());
        let e = only_a.decrypt_data_key(&forged, &c).await.unwrap_err();
        assert!(matches!(e, KmsError::WrongKek { .. }), "{e}");
        let e = a.decrypt_data_key(&tk.wrapped, &tc).await.unwrap_err();
        assert!(
            matches!(e, KmsError::WrongKek { .. }),
            "key a does not unwrap the tenant key's data keys: {e}"
        );

        // ReEncrypt moves a wrapped key to another KEK inside KMS, same context.
        let moved = a
            .re_encrypt(&dk.wrapped, &c, "alias/tenant-t")
            .await
            .unwrap()
            .expect("AWS re-encrypts server-side");
        assert_eq!(moved.kek, arn_t);
        assert_eq!(
            *t.decrypt_data_key(&moved, &c).await.unwrap(),
            *dk.plaintext
        );

        // What a DEK cache miss costs: one GenerateDataKey (encrypt side) or Decrypt
        // (decrypt side) round trip, here to moto on loopback.
        let mut gen = Vec::new();
        let mut dec = Vec::new();
        for _ in 0..50 {
            let t = std::time::Instant::now();
            let k = a.generate_data_key(32, &c).await.unwrap();
            gen.push(t.elapsed());
            let t = std::time::Instant::now();
            a.decrypt_data_key(&k.wrapped, &c).await.unwrap();
            dec.push(t.elapsed());
        }
        for (op, mut v) in [("GenerateDataKey", gen), ("Decrypt", dec)] {
            v.sort();
            println!(
                "cache miss = one {op}: p50 {:.2} ms, p90 {:.2} ms (moto on loopback, 50 calls)",
                v[25].as_secs_f64() * 1e3,
                v[45].as_secs_f64() * 1e3
            );
        }

        // A key that does not exist is a configuration error naming it, not an outage.
        let missing = AwsKms::new(client.clone(), "alias/nope");
        let Err(e) = missing.generate_data_key(32, &c).await else {
            panic!("a missing key generated a data key")
        };
        assert!(
            !e.is_retriable() && e.to_string().contains("alias/nope"),
            "{e}"
        );
    });
}

#[test]
fn unreachable_kms_is_an_outage_and_the_layers_retry_it() {
    let moto = Moto::start();
    let arn = moto.create_key(None);
    let proxy = FaultProxy::start(moto.port);
    rt().block_on(async {
        let client = aws::client(&settings(&proxy.url())).await.unwrap();
        let raw: Arc<dyn Kms> = Arc::new(AwsKms::new(client, arn));
        let c = ctx(&[("fieldcrypt:purpose", "dek")]);
        raw.generate_data_key(32, &c).await.unwrap();
        proxy.set_down(true);
        let Err(e) = raw.generate_data_key(32, &c).await else {
            panic!("the KMS answered through a severed proxy")
        };
        assert!(e.is_retriable(), "an unreachable KMS is retriable: {e}");
        // A gateway failing without a KMS error code is an outage too, not a refusal.
        proxy.set_down(false);
        proxy.set_bad_gateway(true);
        let Err(e) = raw.generate_data_key(32, &c).await else {
            panic!("the KMS answered through a 502")
        };
        assert!(e.is_retriable() && e.to_string().contains("502"), "{e}");
        proxy.set_bad_gateway(false);
        proxy.set_down(true);
        // Through the resilient layer: retries with backoff until the KMS is back.
        let policy = fieldcrypt::keys::RetryPolicy {
            timeout: Duration::from_secs(2),
            retries: 20,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        };
        let kms = fieldcrypt::keys::Resilient::new(raw, policy);
        let back = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            proxy.set_down(false);
            proxy
        });
        kms.generate_data_key(32, &c).await.unwrap();
        drop(back.await.unwrap());
    });
}

fn fc(dir: &Path, args: &[&str]) -> String {
    CREDENTIALS
        .iter()
        .fold(
            common::cli::Fc::new(env!("CARGO_BIN_EXE_fieldcrypt")),
            |f, (k, v)| f.env(k, v),
        )
        .ok(dir, args)
}

fn aws_config(dir: &Path, url: &str, key: &str) {
    aws_config_with(dir, url, key, "")
}

/// With extra `[kms]` lines (`decrypt_keks = [...]`).
fn aws_config_with(dir: &Path, url: &str, key: &str, kms_extra: &str) {
    std::fs::write(
        dir.join("fieldcrypt.toml"),
        format!(
            "[kms]\nprovider = \"aws\"\nkey_id = \"{key}\"\nregion = \"{REGION}\"\nendpoint_url = \"{url}\"\n{kms_extra}\
             [keyset]\nfile = \"keyset.json\"\n"
        ),
    )
    .unwrap();
}

fn keyset_keks(dir: &Path) -> Vec<String> {
    let ks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("keyset.json")).unwrap()).unwrap();
    ks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kek"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn rotate_and_rewrap_keep_old_data_decryptable() {
    let moto = Moto::start();
    let old = moto.create_key(Some("alias/fieldcrypt-2025"));
    let new = moto.create_key(Some("alias/fieldcrypt-2026"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(
        repo().join("schemas/customer.avsc"),
        d.join("customer.avsc"),
    )
    .unwrap();
    aws_config(d, &moto.url(), "alias/fieldcrypt-2025");
    let c = ["--config", "fieldcrypt.toml"];
    let run = |args: &[&str]| fc(d, &[args, &c[..]].concat());
    let e = std::process::Command::new(env!("CARGO_BIN_EXE_fieldcrypt"))
        .current_dir(d)
        .args(["keys", "init", "--config", "fieldcrypt.toml"])
        .output()
        .unwrap();
    assert!(!e.status.success(), "no KEK file for AWS");
    assert!(String::from_utf8_lossy(&e.stderr).contains("kms.key_id"));

    run(&[
        "keys",
        "create",
        "--purpose",
        "deterministic",
        "--domain",
        "default",
    ]);
    run(&[
        "keys",
        "create",
        "--purpose",
        "blind-index",
        "--domain",
        "email",
    ]);
    assert_eq!(keyset_keks(d), vec![old.clone(), old.clone()]);
    fc(
        d,
        &[
            "sample",
            "--schema",
            "customer.avsc",
            "--count",
            "300",
            "in.avro",
        ],
    );
    run(&["encrypt-file", "in.avro", "enc-v1.avro"]);

    // Rotation: a second deterministic version is active, the first stays.
    let out = run(&["keys", "rotate", "--domain", "default"]);
    assert!(out.contains("version 2"), "{out}");
    run(&["encrypt-file", "in.avro", "enc-v2.avro"]);

    // Rewrap onto the new KEK inside KMS; data is untouched.
    let before = std::fs::read(d.join("enc-v1.avro")).unwrap();
    let out = run(&["keys", "rewrap", "--to-kek", "alias/fieldcrypt-2026"]);
    assert_eq!(out.matches("(ReEncrypt)").count(), 3, "{out}");
    assert_eq!(keyset_keks(d), vec![new.clone(); 3]);
    assert_eq!(std::fs::read(d.join("enc-v1.avro")).unwrap(), before);

    // With the config on the new KEK alone, data keys the old KEK wrapped are
    // refused without a KMS call: a process unwraps only with KEKs its config
    // names (a forged DEK header cannot send it to another key).
    aws_config(d, &moto.url(), "alias/fieldcrypt-2026");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_fieldcrypt"))
        .current_dir(d)
        .args([
            "decrypt-file",
            "enc-v1.avro",
            "x.avro",
            "--config",
            "fieldcrypt.toml",
        ])
        .envs(CREDENTIALS)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&old) && err.contains("kms.decrypt_keks"),
        "{err}"
    );
    // Keeping the old KEK for unwrapping, data from before rotation and rewrap decrypts.
    aws_config_with(
        d,
        &moto.url(),
        "alias/fieldcrypt-2026",
        "decrypt_keks = [\"aws:alias/fieldcrypt-2025\"]\n",
    );
    let plain = fc(d, &["cat", "in.avro"]);
    for f in ["enc-v1.avro", "enc-v2.avro"] {
        run(&["decrypt-file", f, &format!("dec-{f}")]);
        assert_eq!(fc(d, &["cat", &format!("dec-{f}")]), plain, "{f}");
    }
    // New data keys come from the new KEK.
    run(&["encrypt-file", "in.avro", "enc-v3.avro"]);
    let meta = String::from_utf8_lossy(&std::fs::read(d.join("enc-v3.avro")).unwrap()).into_owned();
    assert!(
        meta.contains(&new) && !meta.contains(&old),
        "file DEKs name the new KEK"
    );
}

/// Produces `n` customer records (seq header `start..start+n`); returns their emails.
fn produce(bootstrap: &str, topic: &str, start: usize, n: usize) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/customer.avsc")).unwrap(),
    )
    .unwrap();
    let tree = fieldcrypt::schema::model::SchemaTree::compile(&json).unwrap();
    let schema = apache_avro::Schema::parse(&json).unwrap();
    let mut g = Generator::new(&tree, start as u64 + 1, 1_000_000);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut emails = Vec::new();
    for i in start..start + n {
        let mut d = Vec::new();
        g.next(&mut d);
        #[allow(deprecated)]
        if let apache_avro::types::Value::Record(f) =
            apache_avro::from_avro_datum(&schema, &mut &d[..], None).unwrap()
        {
            if let Some((_, apache_avro::types::Value::String(e))) =
                f.iter().find(|(k, _)| k == "email")
            {
                emails.push(e.clone());
            }
        }
        let seq = i.to_string();
        let key = format!("k{i}");
        let mut rec =
            BaseRecord::to(topic)
                .key(&key)
                .payload(&d)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "seq",
                    value: Some(seq.as_bytes()),
                }));
        while let Err((_, r)) = p.send(rec) {
            rec = r;
            p.poll(Duration::from_millis(20));
        }
    }
    if let Err(e) = p.flush(Duration::from_secs(30)) {
        panic!("flush: {e}; {} of {n} not delivered", p.in_flight_count());
    }
    emails
}

struct AwsSetup {
    _broker: Broker,
    _moto: Moto,
    /// Between the pipeline and moto, when asked for.
    proxy: Option<FaultProxy>,
    bs: String,
    _dir: tempfile::TempDir,
    cfg: Config,
}

/// A broker with `customers` → `secure.customers`, moto with a KEK, a keyset
/// wrapped by it, and a pipeline config reaching KMS directly or through a fault
/// proxy.
fn aws_setup(with_proxy: bool) -> AwsSetup {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    create_topics(
        &bs,
        &[
            ("customers", 2),
            ("secure.customers", 2),
            ("dlq.customers", 1),
        ],
    );
    let moto = Moto::start();
    let arn = moto.create_key(Some("alias/fieldcrypt"));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = keys_on_disk(dir.path(), &bs, &[], &[]);
    let proxy = with_proxy.then(|| FaultProxy::start(moto.port));
    cfg.kms.provider = ProviderConfig::Aws(AwsConfig {
        key_id: Some(arn),
        region: Some(REGION.into()),
        endpoint_url: Some(proxy.as_ref().map_or_else(|| moto.url(), FaultProxy::url)),
    });
    cfg.keyset.file = dir.path().join("aws-keyset.json");
    rt().block_on(async {
        let kms = fieldcrypt::engine::open_kms(&cfg).await.unwrap();
        common::write_keyset(kms.as_ref(), &cfg.keyset.file, &["default"], &["email"]).await;
    });
    cfg.kafka.group_id = "aws-encryptor".into();
    cfg.routes = vec![RouteConfig {
        source: "customers".into(),
        target: "secure.customers".into(),
        value_schema: Some(repo().join("schemas/customer.avsc")),
        ..Default::default()
    }];
    AwsSetup {
        _broker: broker,
        _moto: moto,
        proxy,
        bs,
        _dir: dir,
        cfg,
    }
}

/// The pipeline's metrics; empty until its listener is up.
fn scrape(cfg: &Config) -> String {
    if std::net::TcpStream::connect(&cfg.metrics.listen).is_err() {
        return String::new();
    }
    http_get(&cfg.metrics.listen, "/metrics").1
}

#[test]
fn dek_cache_keeps_kms_calls_to_a_handful_per_run() {
    let AwsSetup { bs, cfg, .. } = &aws_setup(false);
    let n = 5000;
    produce(bs, "customers", 0, n);
    let engine = engine(cfg);
    let (stop, runner) = start_pipeline(engine, cfg.clone());
    let out = consume(bs, "secure.customers", n, Duration::from_secs(90));
    let m = scrape(cfg);
    stop.send(()).unwrap();
    runner.join().unwrap().unwrap();
    let seqs: HashSet<String> = out.iter().map(|m| header(m, "seq").unwrap()).collect();
    assert_eq!(seqs.len(), n, "every record delivered");
    let kms = |op: &str| metric(&m, "fieldcrypt_kms_requests_total", &[("operation", op)]);
    let total = metric(&m, "fieldcrypt_kms_requests_total", &[]);
    println!(
        "KMS calls for {n} records: {total} (generate_data_key {}, decrypt {})",
        kms("generate_data_key"),
        kms("decrypt")
    );
    // What a cache miss costs: one KMS round trip (here to moto on loopback).
    for op in ["generate_data_key", "decrypt"] {
        let l = [("operation", op)];
        let sum = metric(&m, "fieldcrypt_kms_request_duration_seconds_sum", &l);
        let count = metric(&m, "fieldcrypt_kms_request_duration_seconds_count", &l);
        println!(
            "KMS {op}: mean {:.1} ms over {count} calls",
            1000.0 * sum / count
        );
    }
    // Two keyset keys unwrapped at start, one data key for the route: the DEK
    // cache serves the other ~25,000 field encryptions.
    assert_eq!(kms("decrypt"), 2.0, "{m}");
    assert_eq!(kms("generate_data_key"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "fieldcrypt_kms_requests_total", &[("outcome", "ok")]),
        total
    );
    assert!(
        metric(
            &m,
            "fieldcrypt_dek_cache_hits_total",
            &[("side", "encrypt")]
        ) >= (n - 1) as f64
    );
}

#[test]
fn kms_outage_pauses_the_pipeline_and_it_resumes_losing_nothing() {
    // Bound whole: a `..` pattern would drop the broker and moto right here.
    let mut setup = aws_setup(true);
    let proxy = setup.proxy.take().unwrap();
    let bs = setup.bs.clone();
    let bs = bs.as_str();
    let mut cfg = setup.cfg.clone();
    // Data keys retire every 60 field encryptions (~10 records), so the KMS is
    // needed all along the stream; short timeouts keep the test quick. A small
    // in-flight window fills during the outage, and a poll interval shorter than the
    // outage would drop the instance from its group unless the paused loop polls.
    cfg.dek.max_uses = 60;
    cfg.kms.timeout_seconds = 1;
    cfg.kms.retries = 1;
    cfg.pipeline.max_in_flight = 50;
    cfg.kafka
        .properties
        .insert("max.poll.interval.ms".into(), "7000".into());
    let addr = cfg.metrics.listen.clone();
    let first = 300;
    let mut emails = produce(bs, "customers", 0, first);
    let engine = engine(&cfg);
    let (stop, runner) = start_pipeline(engine, cfg.clone());
    wait_until(Duration::from_secs(60), "the first batch", || {
        metric(&scrape(&cfg), "fieldcrypt_records_produced_total", &[]) >= first as f64
    });
    assert_eq!(http_get(&addr, "/health/ready").0, 200);

    proxy.set_down(true);
    let second = 300;
    emails.extend(produce(bs, "customers", first, second));
    wait_until(Duration::from_secs(60), "the pause", || {
        let m = scrape(&cfg);
        metric(&m, "fieldcrypt_paused", &[]) == 1.0
    });
    let (status, _) = http_get(&addr, "/health/ready");
    assert_eq!(status, 503, "not ready while the KMS is away");
    let revokes = |m: &str| metric(m, "fieldcrypt_rebalances_total", &[("kind", "revoke")]);
    let revoked_before = revokes(&scrape(&cfg));
    // Held, not lost and not passed on: the count stops short while the KMS is
    // away, longer than max.poll.interval.ms.
    std::thread::sleep(Duration::from_secs(9));
    let during = metric(&scrape(&cfg), "fieldcrypt_records_produced_total", &[]);
    assert!(during < (first + second) as f64, "records waited: {during}");
    let m = scrape(&cfg);
    assert!(
        metric(
            &m,
            "fieldcrypt_errors_total",
            &[("code", "kms_unavailable")]
        ) > 0.0
    );
    assert_eq!(
        metric(&m, "fieldcrypt_dead_letters_total", &[]),
        0.0,
        "nothing dead-lettered"
    );

    proxy.set_down(false);
    wait_until(Duration::from_secs(90), "the resume", || {
        let m = scrape(&cfg);
        metric(&m, "fieldcrypt_paused", &[]) == 0.0
            && metric(&m, "fieldcrypt_records_produced_total", &[]) >= (first + second) as f64
    });
    assert_eq!(http_get(&addr, "/health/ready").0, 200, "ready again");
    assert_eq!(
        revokes(&scrape(&cfg)),
        revoked_before,
        "the paused instance stayed in its group"
    );
    stop.send(()).unwrap();
    let stats = runner
        .join()
        .unwrap()
        .expect("the pipeline ran through the outage");
    assert!(stats.produced >= (first + second) as u64);

    let out = consume(
        bs,
        "secure.customers",
        first + second,
        Duration::from_secs(60),
    );
    let seqs: HashSet<String> = out.iter().map(|m| header(m, "seq").unwrap()).collect();
    assert_eq!(seqs.len(), first + second, "every input record delivered");
    // Not one plaintext email anywhere in the output, and every record names its DEK.
    let mut per_dek: HashMap<String, usize> = HashMap::new();
    for m in &out {
        let v = String::from_utf8_lossy(m.payload().unwrap()).into_owned();
        for e in &emails {
            assert!(!v.contains(e.as_str()), "plaintext email in the output");
        }
        let dek = header(m, fieldcrypt::kafka::headers::DEK).expect("DEK header");
        *per_dek.entry(dek).or_default() += 1;
    }
    assert!(
        per_dek.len() > 10,
        "data keys rotated by usage along the stream"
    );
}
