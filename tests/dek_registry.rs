//! The DEK Registry client and rule-set registration against the project's test
//! registry (tools/test_registry.py): KEKs created once (a conflicting one
//! refused), DEK versions and "latest", the 409 of a second create answered with
//! the existing DEK, the 405 fallback to the older create route, unknown
//! algorithms refused before any request, one request per cached DEK version,
//! and schemas registered with a ruleSet and metadata under their own ids.

mod common;

use std::sync::Arc;

use common::broker::Registry;
use fieldcrypt::config::SchemaRegistryConfig;
use fieldcrypt::observe::Metrics;
use fieldcrypt::registry::dek::{DekVersion, NewDek, NewKek};
use fieldcrypt::registry::{RegistryError, SchemaRegistry};
use serde_json::json;

const GCM: &str = "AES256_GCM";

fn client(url: String) -> (SchemaRegistry, Arc<Metrics>) {
    let cfg = SchemaRegistryConfig {
        url: Some(url),
        retries: 0,
        timeout_seconds: 5,
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::new());
    (SchemaRegistry::new(&cfg, metrics.clone()).unwrap(), metrics)
}

/// Requests made by this client for `op` with `outcome`.
fn requests(m: &Metrics, op: &str, outcome: &str) -> u64 {
    m.registry_requests.with_label_values(&[op, outcome]).get()
}

fn run<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn new_kek(name: &str, key: &str) -> NewKek {
    NewKek {
        name: name.into(),
        kms_type: "local-kms".into(),
        kms_key_id: key.into(),
        shared: false,
    }
}

fn new_dek(subject: &str, version: i32, material: &str) -> NewDek {
    NewDek {
        subject: subject.into(),
        version,
        algorithm: GCM.into(),
        encrypted_key_material: Some(material.into()),
    }
}

#[test]
fn keks_are_created_once_and_a_conflicting_one_is_refused() {
    let reg = Registry::start();
    run(async {
        let (c, m) = client(reg.url());
        assert!(c.kek("kek1").await.unwrap().is_none());
        let kek = c.create_kek(&new_kek("kek1", "mykey")).await.unwrap();
        assert_eq!(
            (
                kek.name.as_str(),
                kek.kms_type.as_str(),
                kek.kms_key_id.as_str()
            ),
            ("kek1", "local-kms", "mykey")
        );
        assert!(kek.ts.is_some() && !kek.shared && !kek.deleted);
        assert_eq!(c.kek("kek1").await.unwrap().as_ref(), Some(&kek));
        // The 404 was not cached; the create filled the cache.
        assert_eq!(requests(&m, "get_kek", "not_found"), 1);
        assert_eq!(requests(&m, "get_kek", "ok"), 0);

        // Created again (the registry answers 409): the existing KEK, read back
        // from the registry by a client that has never seen it.
        let (fresh, fm) = client(reg.url());
        assert_eq!(
            fresh.create_kek(&new_kek("kek1", "mykey")).await.unwrap(),
            kek
        );
        assert_eq!(requests(&fm, "create_kek", "error"), 1);
        assert_eq!(requests(&fm, "get_kek", "ok"), 1);
        assert_eq!(c.create_kek(&new_kek("kek1", "mykey")).await.unwrap(), kek);

        let e = fresh
            .create_kek(&new_kek("kek1", "another-key"))
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::Refused { .. }), "{e}");
        assert!(e.is_infrastructure());
        let msg = e.to_string();
        assert!(
            msg.contains("mykey") && msg.contains("another-key"),
            "{msg}"
        );
        let mut other_kms = new_kek("kek1", "mykey");
        other_kms.kms_type = "hcvault".into();
        other_kms.kms_key_id = "https://vault/mykey".into();
        let e = c.create_kek(&other_kms).await.unwrap_err();
        assert!(matches!(e, RegistryError::Refused { .. }), "{e}");

        // The registry's own refusal (a KEK name must start with a letter or _).
        let e = c.create_kek(&new_kek("1bad", "k")).await.unwrap_err();
        assert!(
            matches!(
                e,
                RegistryError::Rejected {
                    status: 422,
                    code: 42271,
                    ..
                }
            ),
            "{e}"
        );
    });
}

#[test]
fn deks_by_version_and_latest_with_one_request_per_version() {
    let reg = Registry::start();
    run(async {
        let (c, m) = client(reg.url());
        // A subject that needs encoding in the path.
        let subject = "orders/eu value";
        let get = |v, deleted| c.dek("kek1", subject, v, GCM, deleted);
        assert!(
            get(DekVersion::Number(1), false).await.unwrap().is_none(),
            "no KEK yet"
        );
        c.create_kek(&new_kek("kek1", "mykey")).await.unwrap();
        assert!(get(DekVersion::Number(1), false).await.unwrap().is_none());
        assert!(get(DekVersion::Latest, false).await.unwrap().is_none());

        let v1 = c
            .create_dek("kek1", &new_dek(subject, 1, "d3JhcHBlZC0x"))
            .await
            .unwrap();
        assert_eq!(
            (v1.kek_name.as_str(), v1.subject.as_str(), v1.version),
            ("kek1", subject, 1)
        );
        assert_eq!(v1.algorithm, GCM);
        assert_eq!(v1.encrypted_key_material.as_deref(), Some("d3JhcHBlZC0x"));
        assert!(v1.ts.is_some() && v1.key_material.is_none() && !v1.deleted);
        assert_eq!(
            get(DekVersion::Number(1), false).await.unwrap().as_ref(),
            Some(&v1)
        );
        assert_eq!(
            get(DekVersion::Latest, false).await.unwrap().as_ref(),
            Some(&v1)
        );
        assert_eq!(
            get(DekVersion::Number(1), true).await.unwrap().as_ref(),
            Some(&v1)
        );
        // Another algorithm is another DEK.
        assert!(c
            .dek("kek1", subject, DekVersion::Number(1), "AES256_SIV", false)
            .await
            .unwrap()
            .is_none());

        // The same version again (the registry answers 409): the stored DEK, not
        // the material sent — the first writer wins.
        let again = c
            .create_dek("kek1", &new_dek(subject, 1, "b3RoZXI="))
            .await
            .unwrap();
        assert_eq!(again, v1);
        let (fresh, fm) = client(reg.url());
        let again = fresh
            .create_dek("kek1", &new_dek(subject, 1, "b3RoZXI="))
            .await
            .unwrap();
        assert_eq!(again, v1);
        assert_eq!(requests(&fm, "create_dek", "error"), 1);
        assert_eq!(requests(&fm, "get_dek", "ok"), 1);

        // Repeated gets of a version cost one request per (kek, subject, version).
        let (fresh, fm) = client(reg.url());
        for _ in 0..5 {
            let d = fresh
                .dek("kek1", subject, DekVersion::Number(1), GCM, true)
                .await;
            assert_eq!(d.unwrap().as_ref(), Some(&v1));
        }
        assert_eq!(requests(&fm, "get_dek", "ok"), 1);
        for _ in 0..3 {
            fresh
                .dek("kek1", subject, DekVersion::Latest, GCM, true)
                .await
                .unwrap();
        }
        assert_eq!(
            requests(&fm, "get_dek", "ok"),
            2,
            "latest is cached for a while"
        );

        // A rotation by this client shows in "latest" at once.
        let v2 = c
            .create_dek("kek1", &new_dek(subject, 2, "d3JhcHBlZC0y"))
            .await
            .unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(
            get(DekVersion::Latest, false).await.unwrap().as_ref(),
            Some(&v2)
        );
        assert_eq!(
            get(DekVersion::Number(1), false).await.unwrap().as_ref(),
            Some(&v1)
        );
        assert_eq!(
            get(DekVersion::Number(2), false).await.unwrap().as_ref(),
            Some(&v2)
        );
        assert_eq!(requests(&m, "create_dek", "ok"), 2);

        // The registry's refusal: no encryptedKeyMaterial under a non-shared KEK.
        let mut bare = new_dek(subject, 3, "");
        bare.encrypted_key_material = None;
        let e = c.create_dek("kek1", &bare).await.unwrap_err();
        assert!(
            matches!(
                e,
                RegistryError::Rejected {
                    status: 422,
                    code: 42271,
                    ..
                }
            ),
            "{e}"
        );
    });
}

#[test]
fn dek_create_falls_back_to_the_older_route_on_405() {
    let reg = Registry::start_with(&["--legacy-dek-create"]);
    run(async {
        let (c, m) = client(reg.url());
        c.create_kek(&new_kek("kek1", "mykey")).await.unwrap();
        let dek = c
            .create_dek("kek1", &new_dek("t-value", 1, "d3JhcHBlZA=="))
            .await
            .unwrap();
        assert_eq!((dek.subject.as_str(), dek.version), ("t-value", 1));
        assert_eq!(requests(&m, "create_dek", "error"), 1, "the 405");
        assert_eq!(requests(&m, "create_dek", "ok"), 1);
        let (fresh, _) = client(reg.url());
        let got = fresh
            .dek("kek1", "t-value", DekVersion::Latest, GCM, false)
            .await
            .unwrap();
        assert_eq!(got.as_ref(), Some(&dek));
        // A 409 on the older route is handled the same way.
        let again = fresh
            .create_dek("kek1", &new_dek("t-value", 1, "b3RoZXI="))
            .await
            .unwrap();
        assert_eq!(again, dek);
    });
}

#[test]
fn unknown_algorithms_and_versions_are_refused_before_any_request() {
    let reg = Registry::start();
    run(async {
        let (c, m) = client(reg.url());
        c.create_kek(&new_kek("kek1", "mykey")).await.unwrap();
        // The registry would answer this GET 404, indistinguishable from "no DEK".
        let e = c
            .dek(
                "kek1",
                "t-value",
                DekVersion::Number(1),
                "AES512_GCM",
                false,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("AES512_GCM"), "{e}");
        let mut bad = new_dek("t-value", 1, "d3JhcHBlZA==");
        bad.algorithm = "aes256_gcm".into();
        let e = c.create_dek("kek1", &bad).await.unwrap_err();
        assert!(matches!(e, RegistryError::Refused { .. }), "{e}");
        let e = c
            .dek("kek1", "t-value", DekVersion::Number(0), GCM, false)
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::Refused { .. }), "{e}");
        let e = c
            .create_dek("kek1", &new_dek("t-value", 0, "d3JhcHBlZA=="))
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::Refused { .. }), "{e}");
        let total: u64 = ["get_dek", "create_dek"]
            .iter()
            .flat_map(|op| ["ok", "error", "not_found"].map(|o| requests(&m, op, o)))
            .sum();
        assert_eq!(total, 0);
    });
}

#[test]
fn schemas_register_with_rule_sets_under_their_own_ids() {
    let reg = Registry::start();
    run(async {
        let (c, m) = client(reg.url());
        let schema = json!({"type":"record","name":"Order","namespace":"t","fields":[
            {"name":"id","type":"string"},
            {"name":"card","type":"string","confluent:tags":["PII"]}]});
        // In the normalised form the registry stores, so it compares equal.
        let rules = json!({"domainRules":[{
            "name":"encryptPII","kind":"TRANSFORM","mode":"WRITEREAD","type":"ENCRYPT",
            "tags":["PII"],"params":{"encrypt.kek.name":"kek1"},"onFailure":"ERROR,NONE",
            "disabled":false}]});
        let metadata = json!({"properties":{"owner":"payments"}});

        let plain = c.id_for("orders-plain-value", &schema, true).await.unwrap();
        let ruled = c
            .id_for_with("orders-value", &schema, Some(&rules), Some(&metadata), true)
            .await
            .unwrap();
        assert_ne!(plain, ruled, "the same text with rules is another schema");
        let got = c.schema_by_id(ruled).await.unwrap();
        assert_eq!(got.json, schema);
        assert_eq!(got.rule_set.as_ref(), Some(&rules));
        assert_eq!(got.metadata.as_ref(), Some(&metadata));
        let got = c.schema_by_id(plain).await.unwrap();
        assert!(got.rule_set.is_none() && got.metadata.is_none());

        // Cached with its rules: no second request; a lookup finds the same id.
        let again = c
            .id_for_with("orders-value", &schema, Some(&rules), Some(&metadata), true)
            .await
            .unwrap();
        assert_eq!(again, ruled);
        assert_eq!(requests(&m, "register", "ok"), 2);
        let (fresh, _) = client(reg.url());
        let found = fresh
            .id_for_with(
                "orders-value",
                &schema,
                Some(&rules),
                Some(&metadata),
                false,
            )
            .await
            .unwrap();
        assert_eq!(found, ruled);
        // Without rules, the registry gives the schema the subject's latest rules
        // (Confluent's inheritance): under that subject it is the ruled id.
        assert_eq!(
            fresh.id_for("orders-value", &schema, true).await.unwrap(),
            ruled
        );
        assert_eq!(
            fresh.id_for("orders-value", &schema, false).await.unwrap(),
            ruled
        );

        // The registry validates the rule set on register.
        let dup = json!({"domainRules":[
            {"name":"r","type":"ENCRYPT"},{"name":"r","type":"ENCRYPT"}]});
        let e = c
            .id_for_with("dup-value", &schema, Some(&dup), None, true)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                RegistryError::Rejected {
                    status: 422,
                    code: 42210,
                    ..
                }
            ),
            "{e}"
        );
    });
}
