//! Confluent-framed keys and values: the schema id in a record's framing names
//! its writer schema in the registry; the first record of an id builds its codec
//! (values: the first of [`FORMATS`] that claims the schema; keys: fieldcrypt's
//! plan) and registers the output schema under the target's subject. What an id
//! became, codec or refusal, is kept per target: ids never change.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use super::avro::{self, Plan};
use super::codec::{SchemaCx, ValueCodec, FORMATS};
use super::failure::{record, Failure, Refused, Step};
use super::{Route, Transformer};
use crate::codes::Code;
use crate::kafka::wire;
use crate::registry::{OutputSchema, RegisteredSchema, Registry, RegistryError, AVRO};

/// A codec for one registry schema id, and the id of its output schema.
pub(super) struct Framed<C> {
    pub codec: C,
    pub out_id: u32,
}

/// (schema id → target topic → codec, or why the schema is refused), for keys or
/// values of one route.
pub(super) type FramedCache<C> =
    Mutex<HashMap<u32, HashMap<String, Result<Arc<Framed<C>>, Refused>>>>;

/// Most schema ids remembered per route (keys or values); past it the cache
/// starts afresh, so records naming ever new ids cannot grow memory without bound.
const FRAMED_CACHE_LIMIT: usize = 10_000;

/// Keeps what schema id `id` on its way to `target` became (ids never change).
fn remember<C>(cache: &FramedCache<C>, id: u32, target: &str, f: Result<Arc<Framed<C>>, Refused>) {
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= FRAMED_CACHE_LIMIT && !c.contains_key(&id) {
        c.clear();
    }
    c.entry(id).or_default().insert(target.to_string(), f);
}

/// Which part of a record a framed schema is for.
#[derive(Clone, Copy)]
enum Part {
    Key,
    Value,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Key => "key",
            Part::Value => "value",
        }
    }

    /// The dead-letter code of framing that does not parse.
    fn bad_framing(self) -> Code {
        match self {
            Part::Key => Code::BadKeyFraming,
            Part::Value => Code::BadFraming,
        }
    }
}

/// What one schema id became, before it is cached: codec and output id, or a
/// refusal for good.
type Outcome<C> = Step<Result<(C, u32), Refused>>;

impl Transformer {
    /// A framed value's codec and datum; `out` gets the output's framing.
    pub(super) async fn framed_value<'a>(
        &self,
        rc: &Route,
        bytes: &'a [u8],
        source: &str,
        target: &str,
        out: &mut Vec<u8>,
    ) -> Step<(Arc<dyn ValueCodec>, &'a [u8])> {
        let reg = self.registry()?;
        let build = |s| self.build_value(rc, s, reg, source, target);
        let cache = &rc.framed_values;
        self.framed(reg, cache, Part::Value, (bytes, target), out, build)
            .await
    }

    /// A framed key's plan and datum; `out` gets the output's framing.
    pub(super) async fn framed_key<'a>(
        &self,
        rc: &Route,
        bytes: &'a [u8],
        source: &str,
        target: &str,
        out: &mut Vec<u8>,
    ) -> Step<(Plan, &'a [u8])> {
        let reg = self.registry()?;
        let build = |s| self.build_key(rc, s, reg, source, target);
        self.framed(reg, &rc.framed_keys, Part::Key, (bytes, target), out, build)
            .await
    }

    /// A framed key's or value's codec and datum: the schema id read from its
    /// framing, the codec cached for it or built, and the output's framing in `out`.
    async fn framed<'a, C: Clone, F, Fut>(
        &self,
        reg: &dyn Registry,
        cache: &FramedCache<C>,
        part: Part,
        (bytes, target): (&'a [u8], &str),
        out: &mut Vec<u8>,
        build: F,
    ) -> Step<(C, &'a [u8])>
    where
        F: FnOnce(Arc<RegisteredSchema>) -> Fut,
        Fut: Future<Output = Outcome<C>>,
    {
        let (id, datum) = wire::parse(bytes)
            .or_else(|e| record(part.bad_framing(), format!("{}: {e}", part.name())))?;
        let f = self
            .cached_or_built(reg, cache, (id, target), part, build)
            .await?;
        wire::frame_header(f.out_id, out);
        Ok((f.codec.clone(), datum))
    }

    /// The cached answer for schema id `id` on its way to `target`, or `build`'s
    /// for its writer schema, fetched (and checked for size) first.
    async fn cached_or_built<C, F, Fut>(
        &self,
        reg: &dyn Registry,
        cache: &FramedCache<C>,
        (id, target): (u32, &str),
        part: Part,
        build: F,
    ) -> Step<Arc<Framed<C>>>
    where
        F: FnOnce(Arc<RegisteredSchema>) -> Fut,
        Fut: Future<Output = Outcome<C>>,
    {
        let cached = cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .and_then(|m| m.get(target))
            .cloned();
        if let Some(f) = cached {
            return f.map_err(Failure::from);
        }
        let built = match self.writer_schema(reg, id, part).await? {
            Ok(schema) => build(schema).await?,
            Err(refused) => Err(refused),
        };
        let f = built.map(|(codec, out_id)| Arc::new(Framed { codec, out_id }));
        remember(cache, id, target, f.clone());
        f.map_err(Failure::from)
    }

    fn registry(&self) -> Step<&dyn Registry> {
        match self.registry.as_deref() {
            Some(r) => Ok(r),
            None => record(Code::NoRegistry, "no schema registry configured"),
        }
    }

    /// The writer schema with id `id`; refused for good when it is too large.
    async fn writer_schema(
        &self,
        reg: &dyn Registry,
        id: u32,
        part: Part,
    ) -> Step<Result<Arc<RegisteredSchema>, Refused>> {
        let name = part.name();
        let schema = match reg.schema_by_id(id).await {
            Ok(s) => s,
            // Too big is for good (ids never change): not fetched again per record.
            Err(e @ RegistryError::TooLarge { .. }) => {
                return Ok(Err(Refused::new(e.code(), format!("{name}: {e}"))))
            }
            Err(e) => return Err(Failure::from(e).about(name)),
        };
        let max_fields = self.engine.config().schema.max_fields;
        let fields = crate::schema::field_count(&schema.json);
        if fields > max_fields {
            return Ok(Err(Refused::policy(
                &format!("schema id {id} ({name})"),
                format!("it has {fields} fields, more than schema.max_fields = {max_fields}; raise it if the schema is meant to be that big"),
            )));
        }
        Ok(Ok(schema))
    }

    fn schema_cx<'a>(
        &'a self,
        rc: &'a Route,
        schema: &'a RegisteredSchema,
        registry: &'a dyn Registry,
        label: &'a str,
        (source, target): (&'a str, &'a str),
    ) -> SchemaCx<'a> {
        SchemaCx {
            engine: &self.engine,
            registry,
            mode: self.mode,
            strategy: self.strategy,
            route: rc,
            schema,
            label,
            source,
            target,
        }
    }

    /// A value schema's codec from the first format that claims it, refused
    /// when it would pass records through unchanged on a route that does not
    /// allow that; its output schema registered.
    async fn build_value(
        &self,
        rc: &Route,
        schema: Arc<RegisteredSchema>,
        reg: &dyn Registry,
        source: &str,
        target: &str,
    ) -> Outcome<Arc<dyn ValueCodec>> {
        let label = format!("schema id {} (value)", schema.id);
        let cx = self.schema_cx(rc, &schema, reg, &label, (source, target));
        let mut claimed = None;
        for format in FORMATS {
            if let Some(c) = format.build(&cx).await? {
                claimed = Some((format.name(), c));
                break;
            }
        }
        let Some((format, built)) = claimed else {
            let names: Vec<&str> = FORMATS.iter().map(|f| f.name()).collect();
            return Ok(Err(Refused::new(
                Code::SchemaRejected,
                format!(
                    "{label}: its type is {}, which no value format of this build reads (formats: {})",
                    schema.schema_type,
                    names.join(", ")
                ),
            )));
        };
        let built = match built {
            Ok(b) => b,
            Err(refused) => return Ok(Err(refused)),
        };
        if !rc.allow_unencrypted && built.codec.is_passthrough() {
            let refused = built.codec.nothing_refused(&self.engine, &label);
            tracing::error!(schema_id = schema.id, code = %refused.code, "writer schema refused: {}", refused.message);
            return Ok(Err(refused));
        }
        let out = OutputSchema {
            schema_type: built.schema_type,
            json: &built.out_json,
            rule_set: built.out_rules.as_deref(),
            metadata: built
                .keep_metadata
                .then_some(schema.metadata.as_ref())
                .flatten(),
        };
        let out_id = self.register(&cx, Part::Value, out, format).await?;
        Ok(Ok((built.codec, out_id)))
    }

    /// A key schema's plan (fieldcrypt's format: keys are never Confluent's), its
    /// output schema registered.
    async fn build_key(
        &self,
        rc: &Route,
        schema: Arc<RegisteredSchema>,
        reg: &dyn Registry,
        source: &str,
        target: &str,
    ) -> Outcome<Plan> {
        let label = format!("schema id {} (key)", schema.id);
        let cx = self.schema_cx(rc, &schema, reg, &label, (source, target));
        let plan = match avro::build(&cx, true).await? {
            Ok(p) => p,
            Err(refused) => return Ok(Err(refused)),
        };
        let out = OutputSchema {
            schema_type: AVRO,
            json: plan.output_json(),
            rule_set: None,
            metadata: None,
        };
        let out_id = self.register(&cx, Part::Key, out, "fieldcrypt").await?;
        Ok(Ok((plan, out_id)))
    }

    /// Registers (or looks up) the output schema under the target's subject.
    async fn register(
        &self,
        cx: &SchemaCx<'_>,
        part: Part,
        out: OutputSchema<'_>,
        format: &'static str,
    ) -> Step<u32> {
        let is_key = matches!(part, Part::Key);
        let subject = self.strategy.subject(cx.target, is_key, out.json);
        let out_id = cx
            .registry
            .output_id(&subject, &out, self.auto_register)
            .await
            .map_err(|e| Failure::from(e).about(part.name()))?;
        tracing::info!(
            schema_id = cx.schema.id,
            output_schema_id = out_id,
            subject,
            part = part.name(),
            format,
            "new schema: plan built and output schema registered"
        );
        Ok(out_id)
    }
}
