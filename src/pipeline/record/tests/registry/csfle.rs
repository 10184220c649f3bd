//! Confluent's format through the in-memory registry: DEKs from its DEK Registry,
//! exact decryption, and re-keying into fieldcrypt's format.

use super::*;

/// The local-kms secret Confluent's format wraps DEKs with in these tests.
fn local_kms_secret() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("FIELDCRYPT_LOCAL_KMS_SECRET", "unit-test-secret"));
}

/// The orders schema with its sensitive fields tagged PII for Confluent's rule.
fn tagged_schema() -> Json {
    json!({"type": "record", "name": "Order", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"},
        {"name": "email", "type": "string", "confluent:tags": ["PII"]},
        {"name": "card", "type": "string", "confluent:tags": ["PII"]},
        {"name": "note", "type": ["null", "string"], "default": null}]})
}

fn pii_rule() -> ConfluentRule {
    ConfluentRule {
        tags: vec!["PII".into()],
        kek_name: "orders-kek".into(),
        kms_type: "local-kms".into(),
        kms_key_id: "orders-kek".into(),
        algorithm: "AES256_GCM".into(),
        dek_expiry_days: 0,
        rule_name: "fieldcrypt".into(),
    }
}

#[tokio::test]
async fn confluents_format_goes_through_the_dek_registry_and_decrypts_exactly() {
    local_kms_secret();
    let fx = Registered::new(|r| {
        r.format = Format::Confluent;
        r.confluent = Some(pii_rule());
    })
    .await;
    let id = fx.reg.add("orders-value", tagged_schema(), None);
    let msg = message(SOURCE, Some(framed(id, &order(1))), None);
    let (o, enc) = fx.encrypt(&msg).await;
    let (_, _, headers, counts) = produced(o);
    assert_eq!(counts.randomized, 2);
    assert!(
        pairs(&headers).iter().all(|(k, _)| k != headers::DEK),
        "no fieldcrypt header"
    );
    for secret in [CARD, EMAIL] {
        assert!(!enc.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    // The output schema carries the route's rule; the DEK was created, wrapped.
    let (subject, _, _, rules, _) = fx.reg.entry(schema_id(&enc)).unwrap();
    assert_eq!(subject, "secure.orders-value");
    assert!(rules.unwrap().to_string().contains("orders-kek"));
    let deks = fx.reg.deks.lock().unwrap().clone();
    assert_eq!(deks.len(), 1);
    let dek = deks.values().next().unwrap();
    assert_eq!(
        (dek.subject.as_str(), dek.key_material.is_none()),
        ("secure.orders-value", true)
    );
    assert!(fx.reg.keks.lock().unwrap().contains_key("orders-kek"));

    // A decrypting route reads the writer's rule and restores the exact bytes.
    let (o, plain) = fx.decrypt(enc.clone(), None).await;
    produced(o);
    assert_eq!(&plain[5..], &order(1)[..]);

    // One flipped byte in the email's ciphertext (framing 5, id 1, length 2
    // bytes in) is the record's fault: a dead letter, not a fatal error.
    let mut bad = enc;
    bad[5 + 1 + 2 + 10] ^= 1;
    let (code, m) = dead_letter(fx.decrypt(bad, None).await.0);
    assert!(m.starts_with("value: "), "{code:?}: {m}");
}

#[tokio::test]
async fn confluents_format_is_rekeyed_into_fieldcrypts() {
    local_kms_secret();
    // Confluent's format written by one route...
    let writer = Registered::new(|r| {
        r.format = Format::Confluent;
        r.confluent = Some(pii_rule());
    })
    .await;
    let id = writer.reg.add("orders-value", tagged_schema(), None);
    let (o, csfle) = writer
        .encrypt(&message(SOURCE, Some(framed(id, &order(1))), None))
        .await;
    produced(o);

    // ...re-keyed into fieldcrypt's by an encrypting route over the same registry
    // that maps the tag (its policy must cover every field the rule protects).
    let mut cfg = Config::default();
    cfg.tags.insert("PII".into(), Default::default());
    let (engine, mut cfg, _dir) = local_engine_with(cfg).await;
    cfg.routes = vec![RouteConfig {
        source: TARGET.into(),
        target: "fc.orders".into(),
        ..Default::default()
    }];
    let rekey = Transformer::new(engine, &cfg, Some(writer.reg.clone())).unwrap();
    let msg = message(TARGET, Some(csfle), None);
    let mut fc = Vec::new();
    let (_, _, headers, counts) = produced(
        rekey
            .transform(&msg, 0, "fc.orders", &mut fc)
            .await
            .unwrap(),
    );
    assert_eq!(counts.randomized, 2);
    assert!(pairs(&headers).iter().any(|(k, _)| k == headers::DEK));
    assert!(!fc.windows(CARD.len()).any(|w| w == CARD.as_bytes()));
}
