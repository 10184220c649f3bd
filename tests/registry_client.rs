//! The Schema Registry client against the project's Confluent-API test registry:
//! register and fetch with basic auth, ids shared by equal schemas, a lookup that
//! does not register, and clear, credential-free errors for a wrong password, an
//! unknown id, an unregistered schema and a registry that is down.

mod common;

use std::sync::Arc;

use common::broker::{free_port, Registry};
use fieldcrypt::config::SchemaRegistryConfig;
use fieldcrypt::observe::Metrics;
use fieldcrypt::registry::{RegistryError, SchemaRegistry};

fn client(url: String, user: Option<&str>, password: Option<&str>, retries: u32) -> SchemaRegistry {
    let cfg = SchemaRegistryConfig {
        url: Some(url),
        username: user.map(str::to_string),
        password: password.map(str::to_string),
        retries,
        timeout_seconds: 5,
        ..Default::default()
    };
    SchemaRegistry::new(&cfg, Arc::new(Metrics::new())).unwrap()
}

#[test]
fn registers_fetches_and_fails_clearly() {
    let reg = Registry::start_with(&["--basic-auth", "fc:s3cret-pw"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let schema: serde_json::Value = serde_json::from_str(
            r#"{"type":"record","name":"R","namespace":"t","fields":[{"name":"a","type":"string"}]}"#,
        )
        .unwrap();
        let ok = client(reg.url(), Some("fc"), Some("s3cret-pw"), 0);
        let id = ok.id_for("x-value", &schema, true).await.unwrap();
        assert_eq!(ok.id_for("y-value", &schema, true).await.unwrap(), id, "same schema, same id");
        assert_eq!(ok.id_for("x-value", &schema, false).await.unwrap(), id, "lookup finds it");
        assert_eq!(ok.schema_by_id(id).await.unwrap().json, schema);

        let other = serde_json::json!({"type":"record","name":"S","fields":[]});
        let e = ok.id_for("x-value", &other, false).await.unwrap_err();
        assert!(matches!(e, RegistryError::Rejected { .. }), "{e}");
        assert!(e.to_string().contains("auto_register"), "{e}");
        let e = ok.schema_by_id(9999).await.unwrap_err();
        assert!(matches!(e, RegistryError::NotFound { .. }) && e.code().as_str() == "unknown_schema_id");

        let wrong = client(reg.url(), Some("fc"), Some("not-it"), 0);
        let e = wrong.schema_by_id(id).await.unwrap_err();
        assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
        assert!(e.is_infrastructure());
        assert!(!e.to_string().contains("not-it") && !format!("{e:?}").contains("not-it"));

        let down = client(format!("http://127.0.0.1:{}", free_port()), None, None, 2);
        let e = down.schema_by_id(1).await.unwrap_err();
        assert!(matches!(e, RegistryError::Unavailable { .. }) && e.is_infrastructure(), "{e}");
        assert!(e.to_string().contains("schema id 1"), "{e}");
    });
}
