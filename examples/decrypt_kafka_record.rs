//! Decrypting records from Kafka with the library, for a consumer that reads an
//! encrypted topic itself instead of through `fieldcrypt run --mode decrypt`.
//!
//! Each record's value is Avro of the encrypted schema (raw, as a route without a
//! Schema Registry writes it); its randomized fields name their data key in the
//! record's `fieldcrypt.dek` header, which is unwrapped through the KMS once and
//! then cached by the engine. Deterministic fields and blind indexes use the
//! keyset's keys.
//!
//! ```text
//! cargo run --example decrypt_kafka_record -- \
//!     --config demo-out/decrypt.toml --topic secure.dbserver1.inventory.customers \
//!     --schema demo-out/customer_cdc.encrypted.avsc --count 3
//! ```
//! (after `scripts/quickstart.sh`, whose decrypt config and encrypted schema these
//! are). Prints each record's offset and its decrypted value as JSON.

use std::time::{Duration, Instant};

use fieldcrypt::config::Config;
use fieldcrypt::engine::Engine;
use fieldcrypt::kafka::headers;
use fieldcrypt::transform::decrypt::DekSet;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

struct Args {
    config: String,
    topic: String,
    schema: String,
    count: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        config: String::new(),
        topic: String::new(),
        schema: String::new(),
        count: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--config" => a.config = value,
            "--topic" => a.topic = value,
            "--schema" => a.schema = value,
            "--count" => a.count = value.parse().map_err(|e| format!("--count: {e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.config.is_empty() || a.topic.is_empty() || a.schema.is_empty() {
        return Err(
            "usage: decrypt_kafka_record --config FILE --topic TOPIC --schema ENCRYPTED.avsc [--count N]"
                .into(),
        );
    }
    Ok(a)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let config = Config::load(Some(std::path::Path::new(&args.config)))?;
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set(
            "group.id",
            format!("decrypt-example-{}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    for (k, v) in &config.kafka.properties {
        client.set(k, v);
    }
    let consumer: BaseConsumer = client.create()?;
    consumer.subscribe(&[&args.topic])?;

    // The decryptor needs only the encrypted schema: every fieldcrypt attribute the
    // plan needs is in it.
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&args.schema)?)?;
    let original =
        apache_avro::Schema::parse(&fieldcrypt::schema::plan::restore_original(&schema)?)?;
    let engine = Engine::start(config).await?;
    let decryptor = engine.decryptor(&schema, &args.schema)?;

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut shown = 0;
    while shown < args.count && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg?;
        let Some(value) = msg.payload() else {
            println!("offset {}: tombstone", msg.offset());
            shown += 1;
            continue;
        };
        // The data keys this record's randomized fields used.
        let mut deks = DekSet::new();
        for h in msg.headers().into_iter().flat_map(|hs| hs.iter()) {
            if h.key == headers::DEK {
                let wrapped = headers::decode_dek(h.value.unwrap_or_default())?;
                deks.insert(wrapped.id, engine.unwrap_dek(&wrapped).await?);
            }
        }
        let mut plain = Vec::new();
        decryptor.decrypt(value, &deks, &mut plain)?;
        let record = apache_avro::reader::datum::GenericDatumReader::builder(&original)
            .build()?
            .read_value(&mut plain.as_slice())?;
        let json = serde_json::Value::try_from(record)?;
        println!(
            "partition {} offset {}: {json}",
            msg.partition(),
            msg.offset()
        );
        shown += 1;
    }
    if shown < args.count {
        return Err(format!("only {shown} of {} records arrived within 30 s", args.count).into());
    }
    Ok(())
}
