//! `fieldcrypt.dek` Kafka record headers from untrusted producers: decoding must
//! return errors, never panic; what decodes encodes back to the same bytes and
//! decodes to the same value. The decoded scope then goes through the decrypting
//! route's scope check (`AcceptScopes::accepts`, `template_yields`) as the
//! pipeline does before any KMS call. Assertion messages never contain input bytes.

#![no_main]

use fieldcrypt::kafka::headers::{decode_dek, encode_dek};
use fieldcrypt::kafka::route::{template_yields, valid_topic, AcceptScopes, RouteConfig};
use libfuzzer_sys::fuzz_target;

const TOPICS: [&str; 4] = ["orders", "secure.orders", "cdc.inventory.customers", "a"];

fn acceptors() -> Vec<AcceptScopes> {
    let route = |target: &str, tenant: Option<&str>, accept: Option<Vec<&str>>| RouteConfig {
        source: "orders".into(),
        target: target.into(),
        tenant: tenant.map(Into::into),
        accept_scopes: accept.map(|v| v.into_iter().map(Into::into).collect()),
        ..Default::default()
    };
    vec![
        AcceptScopes::for_route(&route("secure.${topic}", None, None)),
        AcceptScopes::for_route(&route("x", Some("acme"), None)),
        AcceptScopes::for_route(&route("x", None, Some(vec!["route:secure.${topic}", "tenant:acme"]))),
    ]
}

fuzz_target!(|data: &[u8]| {
    match decode_dek(data) {
        Ok(w) => {
            let again = encode_dek(&w).expect("a decoded DEK header does not encode");
            assert!(again == data, "DEK header does not re-encode to the same bytes");
            let back = decode_dek(&again).expect("a re-encoded DEK header does not decode");
            assert!(back == w, "DEK header round trip changed the value");
            // The KMS encryption context the consumer unwraps it with.
            let _ = w.context();
            for a in acceptors() {
                for t in TOPICS {
                    let _ = a.accepts(&w.scope, t);
                }
                if valid_topic(&w.wrapped.kek) {
                    let _ = a.accepts(&w.scope, &w.wrapped.kek);
                }
                let _ = a.describe("orders");
            }
            if let Some(t) = w.scope.strip_prefix("route:") {
                let topic = if valid_topic(&w.wrapped.kek) { w.wrapped.kek.as_str() } else { "orders" };
                let _ = template_yields(t, topic);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
