//! Shared fixtures for the fieldcrypt fuzz targets (see fuzz/README.md).
//!
//! Everything here is built once per process: the schemas the `avro_walk` target
//! picks from, their encrypt/decrypt plans, and TEST-ONLY keys made from constant
//! bytes (never use them for anything else). Nothing here prints fuzz input.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fieldcrypt::config::Config;
use fieldcrypt::crypto::blind_index::BlindIndexKey;
use fieldcrypt::crypto::cipher::{DeterministicKey, RandomizedKey};
use fieldcrypt::crypto::format::KeyId;
use fieldcrypt::keys::dek::MAX_USES_CEILING;
use fieldcrypt::keys::{Dek, DekCache, DekManager, DekSettings, KeyMaterial, Kms, LocalKms};
use fieldcrypt::schema::plan::{DecryptPlan, EncryptPlan};
use fieldcrypt::transform::decrypt::DekSet;
use fieldcrypt::transform::inspect::Inspector;
use fieldcrypt::transform::{Decryptor, Encryptor};

/// TEST-ONLY local KEK (constant).
pub const TEST_KEK: [u8; 32] = [0x4b; 32];
/// TEST-ONLY randomized (AES-256-GCM) key for the `ciphertext` target.
pub const GCM_KEY_ID: KeyId = *b"fuzz-gcm-key-id!";
pub const GCM_KEY: [u8; 32] = [0x11; 32];
/// TEST-ONLY deterministic (AES-SIV, 64 bytes) key for the `ciphertext` target.
pub const SIV_KEY_ID: KeyId = *b"fuzz-siv-key-id!";
pub const SIV_KEY: [u8; 64] = [0x22; 64];
/// Field contexts the `ciphertext` target opens under (its first input byte picks one).
pub const CONTEXTS: [&str; 4] = [
    "com.example.crm.Customer.ssn",
    "com.example.crm.Customer.email",
    "fuzz.all.Everything.raw",
    "",
];

/// Key domains given keys, so untrusted schemas that name them can be encrypted.
const BASE_DETERMINISTIC: &[&str] = &["default", "email", "num", "raw", "color", "phone"];
const BASE_INDEX: &[&str] = &["email", "num", "raw", "color", "phone"];

/// The configuration the fixtures use: the embedded defaults plus the example
/// config's normalisation of the `email` and `phone` blind-index domains.
const FIXTURE_TOML: &str = r#"
[blind_index.domains.email]
normalize = ["trim", "lowercase"]

[blind_index.domains.phone]
normalize = ["digits_only"]
"#;

pub fn base_config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        let cfg: Config = toml::from_str(FIXTURE_TOML).expect("fixture config parses");
        cfg.validate().expect("fixture config validates");
        cfg
    })
}

/// 64-bit FNV-1a, for stable test-only key ids and bytes.
fn fnv(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn stable_bytes(label: &str, n: usize) -> Vec<u8> {
    (0..n.div_ceil(8) as u64)
        .flat_map(|i| fnv(i + 1, label.as_bytes()).to_le_bytes())
        .take(n)
        .collect()
}

fn stable_id(label: &str) -> KeyId {
    stable_bytes(&format!("id:{label}"), 16).try_into().unwrap()
}

/// TEST-ONLY key material for the given domains: ids and keys derived from the
/// domain name, so they are the same in every process (committed seeds stay valid).
pub fn key_material<'a>(
    cfg: &Config,
    deterministic: impl IntoIterator<Item = &'a str>,
    index: impl IntoIterator<Item = &'a str>,
) -> KeyMaterial {
    let settings = cfg.index_settings();
    let det = deterministic
        .into_iter()
        .map(|d| {
            let k = DeterministicKey::new(
                stable_id(&format!("det:{d}")),
                &stable_bytes(&format!("det-key:{d}"), 64),
            )
            .unwrap();
            (d.to_string(), Arc::new(k))
        })
        .collect();
    let bidx = index
        .into_iter()
        .map(|d| {
            let k = BlindIndexKey::new(
                stable_id(&format!("bidx:{d}")),
                &stable_bytes(&format!("bidx-key:{d}"), 32),
                settings.length,
                settings.normalize.get(d).cloned().unwrap_or_default(),
            )
            .unwrap();
            (d.to_string(), Arc::new(k))
        })
        .collect();
    KeyMaterial::from_keys(det, bidx)
}

/// The TEST-ONLY base key material (the domains untrusted schemas may name).
pub fn base_keys() -> &'static Arc<KeyMaterial> {
    static K: OnceLock<Arc<KeyMaterial>> = OnceLock::new();
    K.get_or_init(|| {
        Arc::new(key_material(
            base_config(),
            BASE_DETERMINISTIC.iter().copied(),
            BASE_INDEX.iter().copied(),
        ))
    })
}

/// One randomized-mode DEK for the whole process, from a local KMS with the
/// TEST-ONLY KEK (through the DEK manager, as the product gets them), and the
/// decrypt side's DEK cache over the same KMS: since the KEK is constant, a
/// wrapped DEK saved in a seed (as a `fieldcrypt.dek` header) unwraps in any process.
pub struct Deks {
    pub dek: Arc<Dek>,
    /// The process DEK's unwrapped key by id.
    pub set: DekSet,
    rt: tokio::runtime::Runtime,
    cache: DekCache,
}

impl Deks {
    /// What the consumer does with a record's `fieldcrypt.dek` header: decode it and
    /// unwrap the DEK through the cache (KMS on first sight). `None` if either fails.
    pub fn from_header(&self, header: &[u8]) -> Option<Arc<RandomizedKey>> {
        let w = fieldcrypt::kafka::headers::decode_dek(header).ok()?;
        self.rt.block_on(self.cache.get(&w)).ok()
    }
}

pub fn deks() -> &'static Deks {
    static D: OnceLock<Deks> = OnceLock::new();
    D.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime");
        let kms: Arc<dyn Kms> = Arc::new(LocalKms::from_bytes(&TEST_KEK).unwrap());
        let settings = DekSettings {
            ttl: Duration::from_secs(7 * 86_400),
            max_uses: MAX_USES_CEILING,
            capacity: 64,
        };
        let manager = DekManager::new(
            kms.clone(),
            Arc::new(fieldcrypt::keys::SystemClock::default()),
            settings,
        );
        let dek = rt.block_on(manager.current("fuzz")).expect("DEK");
        let cache = DekCache::new(kms, settings);
        let key = rt.block_on(cache.get(dek.wrapped())).expect("unwrap DEK");
        let mut set = DekSet::new();
        set.insert(*dek.id(), key);
        Deks { dek, set, rt, cache }
    })
}

/// The TEST-ONLY fixed keys of the `ciphertext` target.
pub fn gcm_key() -> RandomizedKey {
    RandomizedKey::new(GCM_KEY_ID, &GCM_KEY).unwrap()
}

pub fn siv_key() -> DeterministicKey {
    DeterministicKey::new(SIV_KEY_ID, &SIV_KEY).unwrap()
}

/// A schema with everything built for it.
pub struct Fixture {
    pub name: &'static str,
    pub plan: Arc<EncryptPlan>,
    pub dplan: Arc<DecryptPlan>,
    pub enc: Encryptor,
    pub dec: Decryptor,
    pub insp: Inspector,
}

/// Schemas of `avro_walk`, in selector order. Append only: committed seeds pick
/// schemas by position (first input byte, low 6 bits, modulo the count).
/// Corpus entries get config rules on the fields tests/corpus/manifest.json names
/// (second deterministic, the others randomized), as tests/corpus.rs does.
const SCHEMAS: &[(&str, &str)] = &[
    ("customer", include_str!("../../schemas/customer.avsc")),
    ("customer_cdc", include_str!("../../schemas/customer_cdc.avsc")),
    ("linked_list", include_str!("../schemas/linked_list.avsc")),
    ("everything", include_str!("../schemas/everything.avsc")),
    ("01-avro-interop.avsc", include_str!("../../tests/corpus/01-avro-interop.avsc")),
    ("02-avro-record-with-required-fields.avsc", include_str!("../../tests/corpus/02-avro-record-with-required-fields.avsc")),
    ("03-avro-weather.avsc", include_str!("../../tests/corpus/03-avro-weather.avsc")),
    ("04-cpp-tweet.avsc", include_str!("../../tests/corpus/04-cpp-tweet.avsc")),
    ("05-cpp-bigrecord.avsc", include_str!("../../tests/corpus/05-cpp-bigrecord.avsc")),
    ("06-cpp-bigrecord-r.avsc", include_str!("../../tests/corpus/06-cpp-bigrecord-r.avsc")),
    ("07-cpp-reuse.avsc", include_str!("../../tests/corpus/07-cpp-reuse.avsc")),
    ("08-cpp-recursive-longlist.avsc", include_str!("../../tests/corpus/08-cpp-recursive-longlist.avsc")),
    ("09-cpp-tree1.avsc", include_str!("../../tests/corpus/09-cpp-tree1.avsc")),
    ("10-cpp-tree2.avsc", include_str!("../../tests/corpus/10-cpp-tree2.avsc")),
    ("11-cpp-crossref.avsc", include_str!("../../tests/corpus/11-cpp-crossref.avsc")),
    ("12-cpp-circulardep.avsc", include_str!("../../tests/corpus/12-cpp-circulardep.avsc")),
    ("13-cpp-big-union.avsc", include_str!("../../tests/corpus/13-cpp-big-union.avsc")),
    ("14-cpp-union-array-union.avsc", include_str!("../../tests/corpus/14-cpp-union-array-union.avsc")),
    ("15-c-namespace-recursive.avsc", include_str!("../../tests/corpus/15-c-namespace-recursive.avsc")),
    ("16-avro-error-field-in-record.avsc", include_str!("../../tests/corpus/16-avro-error-field-in-record.avsc")),
    ("17-avro-logical-types.avsc", include_str!("../../tests/corpus/17-avro-logical-types.avsc")),
    ("18-avro-nested-different-namespace.avsc", include_str!("../../tests/corpus/18-avro-nested-different-namespace.avsc")),
    ("19-avro-union-fixed-decimal.avsc", include_str!("../../tests/corpus/19-avro-union-fixed-decimal.avsc")),
    ("20-avro-maps-and-arrays.avsc", include_str!("../../tests/corpus/20-avro-maps-and-arrays.avsc")),
    ("24-li-defaults-test.avsc", include_str!("../../tests/corpus/24-li-defaults-test.avsc")),
    ("25-li-record-with-defaults.avsc", include_str!("../../tests/corpus/25-li-record-with-defaults.avsc")),
    ("26-li-record-default-with-union.avsc", include_str!("../../tests/corpus/26-li-record-default-with-union.avsc")),
    ("27-li-recursive-ref-union.avsc", include_str!("../../tests/corpus/27-li-recursive-ref-union.avsc")),
    ("28-li-test-tree-node.avsc", include_str!("../../tests/corpus/28-li-test-tree-node.avsc")),
    ("29-li-logical-types.avsc", include_str!("../../tests/corpus/29-li-logical-types.avsc")),
    ("30-li-logical-types-with-defaults.avsc", include_str!("../../tests/corpus/30-li-logical-types-with-defaults.avsc")),
    ("31-li-util-tester1.avsc", include_str!("../../tests/corpus/31-li-util-tester1.avsc")),
    ("32-li-misleading-namespace.avsc", include_str!("../../tests/corpus/32-li-misleading-namespace.avsc")),
    ("33-li-fastserde-test.avsc", include_str!("../../tests/corpus/33-li-fastserde-test.avsc")),
    ("34-li-split-record-aliases.avsc", include_str!("../../tests/corpus/34-li-split-record-aliases.avsc")),
    ("36-cf-avro-message.avsc", include_str!("../../tests/corpus/36-cf-avro-message.avsc")),
    ("37-cf-repeated-type-with-doc.avsc", include_str!("../../tests/corpus/37-cf-repeated-type-with-doc.avsc")),
    ("38-cf-repeated-type-with-default.avsc", include_str!("../../tests/corpus/38-cf-repeated-type-with-default.avsc")),
    ("39-cf-array-of-records-default.avsc", include_str!("../../tests/corpus/39-cf-array-of-records-default.avsc")),
    ("40-cf-multi-type-union.avsc", include_str!("../../tests/corpus/40-cf-multi-type-union.avsc")),
    ("41-cf-recursive-user.avsc", include_str!("../../tests/corpus/41-cf-recursive-user.avsc")),
    ("42-cf-customer-tags.avsc", include_str!("../../tests/corpus/42-cf-customer-tags.avsc")),
    ("44-flink-debezium-envelope.avsc", include_str!("../../tests/corpus/44-flink-debezium-envelope.avsc")),
    ("45-hudi-debezium-cdc-envelope.avsc", include_str!("../../tests/corpus/45-hudi-debezium-cdc-envelope.avsc")),
    ("deep_nullable", include_str!("../schemas/deep_nullable.avsc")),
];

const MANIFEST: &str = include_str!("../../tests/corpus/manifest.json");

/// Names of the schemas, in selector order (for the seed generator script).
pub fn schema_names() -> impl Iterator<Item = &'static str> {
    SCHEMAS.iter().map(|(n, _)| *n)
}

/// The top-level record's full name, per Avro's naming rules.
fn root_fullname(schema: &serde_json::Value) -> String {
    let name = schema["name"].as_str().unwrap_or_default();
    match schema["namespace"].as_str() {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

/// The config for one schema: the base config plus manifest rules for corpus files.
fn config_for(name: &str, schema: &serde_json::Value) -> Config {
    let mut toml_text = FIXTURE_TOML.to_string();
    let manifest: serde_json::Value = serde_json::from_str(MANIFEST).expect("manifest.json");
    if let Some(entry) = manifest
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["file"].as_str() == Some(name))
    {
        let record = root_fullname(schema);
        for (i, path) in entry["sensitive"].as_array().unwrap().iter().enumerate() {
            let mode = if i == 1 { "deterministic" } else { "randomized" };
            toml_text += &format!(
                "\n[[rules]]\nrecord = {record:?}\nfields = [{:?}]\nmode = {mode:?}\n",
                path.as_str().unwrap()
            );
        }
    }
    let cfg: Config = toml::from_str(&toml_text).expect("fixture config parses");
    cfg.validate().expect("fixture config validates");
    cfg
}

/// All `avro_walk` schemas, built once. Panics (at start-up) if one does not build.
pub fn fixtures() -> &'static [Fixture] {
    static F: OnceLock<Vec<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let built: Vec<_> = SCHEMAS
            .iter()
            .map(|(name, text)| {
                let json = fieldcrypt::schema::parse_schema_json(text)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let cfg = config_for(name, &json);
                let plan = EncryptPlan::build(&json, name, &cfg.plan_config())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let dplan = DecryptPlan::build_with_depth(&plan.output_json, name, cfg.schema.max_depth)
                    .unwrap_or_else(|e| panic!("{name} (output schema): {e}"));
                (*name, cfg, Arc::new(plan), Arc::new(dplan))
            })
            .collect();
        let mut det: BTreeSet<String> = BASE_DETERMINISTIC.iter().map(|s| s.to_string()).collect();
        let mut idx: BTreeSet<String> = BASE_INDEX.iter().map(|s| s.to_string()).collect();
        for (_, _, plan, _) in &built {
            det.extend(plan.deterministic_domains());
            idx.extend(plan.index_domains());
        }
        let keys = Arc::new(key_material(
            base_config(),
            det.iter().map(String::as_str),
            idx.iter().map(String::as_str),
        ));
        built
            .into_iter()
            .map(|(name, _cfg, plan, dplan)| Fixture {
                name,
                enc: Encryptor::new(plan.clone(), &keys).unwrap_or_else(|e| panic!("{name}: {e}")),
                dec: Decryptor::new(dplan.clone(), keys.clone()),
                insp: Inspector::new(dplan.clone()),
                plan,
                dplan,
            })
            .collect()
    })
}

/// Where the seed generator writes, if asked (`FIELDCRYPT_FUZZ_SEEDGEN=<dir>`):
/// targets then save inputs for the encrypted-datum modes made from what they
/// encrypt. Only for fuzz/make-seeds.sh; never set during fuzzing.
pub fn seedgen_dir() -> Option<&'static std::path::Path> {
    static D: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    D.get_or_init(|| std::env::var_os("FIELDCRYPT_FUZZ_SEEDGEN").map(Into::into))
        .as_deref()
}

/// Saves one generated seed (content-addressed, like libFuzzer's corpus files).
pub fn save_seed(bytes: &[u8]) {
    if let Some(dir) = seedgen_dir() {
        let name = format!("{:016x}{:016x}", fnv(1, bytes), fnv(2, bytes));
        let _ = std::fs::write(dir.join(name), bytes);
    }
}
