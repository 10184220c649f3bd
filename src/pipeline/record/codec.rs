//! The value-codec seam. A [`ValueCodec`] turns one source value into its output
//! value: decode it with its writer schema, apply the plan (encrypt, decrypt, or
//! re-key), encode. A [`ValueFormat`] builds the codec for a writer schema from
//! the registry, or declines it. [`FORMATS`] lists the formats in the order they
//! are asked; the first that claims a schema builds its codec. A new value format
//! (JSON Schema, Protobuf) is a file implementing both traits and one line in
//! [`FORMATS`] (see docs/ARCHITECTURE.md for what else a format touches).

use std::sync::Arc;

use async_trait::async_trait;
use rdkafka::message::OwnedHeaders;
use serde_json::Value as Json;
use zeroize::Zeroizing;

use super::failure::{Refused, Step};
use super::Route;
use crate::codes::Code;
use crate::config::PipelineMode;
use crate::csfle::keys::CsfleKeys;
use crate::engine::Engine;
use crate::kafka::headers::HeaderRef;
use crate::registry::{RegisteredSchema, Registry, SubjectStrategy};
use crate::transform::Counts;

/// What a codec may use while transforming one record.
pub(super) struct RecordCx<'a> {
    pub engine: &'a Engine,
    /// DEKs of Confluent's format (with a registry).
    pub csfle: Option<&'a CsfleKeys>,
    pub route: &'a Route,
    /// The record's source topic.
    pub source: &'a str,
    /// The record's headers as consumed (a decrypting codec reads its DEK
    /// references there).
    pub headers: &'a [HeaderRef<'a>],
}

/// One value in, one value out.
#[async_trait]
pub(super) trait ValueCodec: Send + Sync {
    /// Appends the output value for `datum` (the value without its framing) to
    /// `out`; headers the output needs (DEK references) are added to `headers`.
    async fn apply(
        &self,
        cx: &RecordCx<'_>,
        datum: &[u8],
        out: &mut Vec<u8>,
        headers: &mut Option<OwnedHeaders>,
    ) -> Step<Counts>;

    /// Nothing to do: an encrypting plan that encrypts nothing, a decrypting plan
    /// with nothing encrypted.
    fn is_passthrough(&self) -> bool;

    /// Why a schema this codec would pass through unchanged is refused (a route
    /// without `allow_unencrypted`).
    fn nothing_refused(&self, _engine: &Engine, label: &str) -> Refused {
        not_encrypted(label)
    }
}

/// A decrypting route's refusal of a schema with nothing encrypted.
pub(super) fn not_encrypted(label: &str) -> Refused {
    Refused::new(
        Code::NotEncrypted,
        format!(
            "{label}: nothing in this schema is encrypted (no field carries a fieldcrypt attribute and it has no ENCRYPT rule), so there is nothing to decrypt: is the route reading the right topic? Set allow_unencrypted = true on the route to pass such records through"
        ),
    )
}

/// Re-keying from one format into another: `from` decrypts into a buffer that
/// is wiped when dropped, `to` encrypts that.
pub(super) struct Rekey {
    pub from: Arc<dyn ValueCodec>,
    pub to: Arc<dyn ValueCodec>,
}

#[async_trait]
impl ValueCodec for Rekey {
    async fn apply(
        &self,
        cx: &RecordCx<'_>,
        datum: &[u8],
        out: &mut Vec<u8>,
        headers: &mut Option<OwnedHeaders>,
    ) -> Step<Counts> {
        // Decrypted values are at most as long as their ciphertexts: no
        // reallocation leaves an unwiped copy behind.
        let mut plain = Zeroizing::new(Vec::with_capacity(datum.len()));
        self.from.apply(cx, datum, &mut plain, headers).await?;
        self.to.apply(cx, &plain, out, headers).await
    }

    fn is_passthrough(&self) -> bool {
        false
    }
}

/// What a format knows when it is asked about a writer schema.
pub(super) struct SchemaCx<'a> {
    pub engine: &'a Engine,
    pub registry: &'a dyn Registry,
    pub mode: PipelineMode,
    pub strategy: SubjectStrategy,
    pub route: &'a Route,
    pub schema: &'a RegisteredSchema,
    /// How messages name the schema: `schema id N (value)`.
    pub label: &'a str,
    pub source: &'a str,
    pub target: &'a str,
}

/// A codec for a writer schema, and the output schema to register for it.
pub(super) struct Built {
    pub codec: Arc<dyn ValueCodec>,
    /// The output schema's type (the registry's `schemaType`).
    pub schema_type: &'static str,
    pub out_json: Json,
    /// The data-contract rule set registered with the output schema.
    pub out_rules: Option<Arc<Json>>,
    /// Register the writer's data-contract metadata with the output schema.
    pub keep_metadata: bool,
}

/// A format's answer about a writer schema: not its own (`None`), refused for
/// good, or built.
pub(super) type Claim = Option<Result<Built, Refused>>;

/// A value format: which writer schemas are its own, and their codecs.
#[async_trait]
pub(super) trait ValueFormat: Sync {
    /// Logged with each schema the format takes.
    fn name(&self) -> &'static str;

    /// The codec for `cx.schema`, or `None` when the schema is not this
    /// format's (its type, `cx.schema.schema_type`, first of all). `Err` is a failure that is not for good (an outage, or a
    /// registry answer about this record).
    async fn build(&self, cx: &SchemaCx<'_>) -> Step<Claim>;
}

/// The value formats, asked in this order. Confluent's comes first: it claims
/// only schemas with ENCRYPT rules (or a `format = "confluent"` route), and
/// fieldcrypt's claims every Avro schema.
pub(super) static FORMATS: &[&dyn ValueFormat] = &[
    &super::confluent::ConfluentAvro,
    &super::avro::FieldcryptAvro,
];
