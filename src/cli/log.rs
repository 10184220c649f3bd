//! Everything the process writes to stderr: tracing events and the command's own
//! lines (summaries, fatal errors), in one of two formats.
//!
//! - `pretty`: human lines; ANSI colours only when stderr is a terminal.
//! - `json`: one JSON object per line for every line, fatal errors, summaries
//!   and panics included, with `timestamp`, `level`, `target` and `message` at
//!   the top level and each structured value as a JSON value (numbers as numbers,
//!   lists as arrays), so a log pipeline ingests it without parsing text.
//!
//! The filter comes from `--log`, else `FIELDCRYPT_LOG`, else `RUST_LOG`, else
//! the command's default (`info` for `run`, `warn` otherwise); an invalid filter
//! is an error, not a silent fallback.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use serde_json::{Map, Value as Json};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Log format of everything on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The log filter in effect: `--log`, `FIELDCRYPT_LOG`, `RUST_LOG`, or `default`;
/// with the name of where it came from, for errors.
pub fn filter_spec(
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    default: &str,
) -> (String, &'static str) {
    if let Some(f) = flag {
        return (f.to_string(), "--log");
    }
    for var in ["FIELDCRYPT_LOG", "RUST_LOG"] {
        if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
            return (
                v,
                if var == "RUST_LOG" {
                    "RUST_LOG"
                } else {
                    "FIELDCRYPT_LOG"
                },
            );
        }
    }
    (default.to_string(), "default")
}

/// A log filter (from `from`: a flag, a variable or the default) that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "{from}: \"{spec}\" is not a log filter ({source}); use a level (error, warn, info, debug, trace) or e.g. \"info,librdkafka=debug\""
)]
pub struct FilterError {
    from: String,
    spec: String,
    source: tracing_subscriber::filter::ParseError,
}

/// Installs the subscriber and the panic hook. `Err`: the filter is invalid.
pub fn init(format: LogFormat, spec: &str, from: &str) -> Result<(), FilterError> {
    let _ = FORMAT.set(format);
    let invalid = |source| FilterError {
        from: from.to_string(),
        spec: spec.to_string(),
        source,
    };
    // Validated as given, so the error quotes what the user wrote.
    tracing_subscriber::EnvFilter::try_new(spec).map_err(invalid)?;
    let filter =
        tracing_subscriber::EnvFilter::try_new(fieldcrypt::keys::driver::cap_client_logs(spec))
            .map_err(invalid)?;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => b.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => {
            b.event_format(JsonLines).init();
            std::panic::set_hook(Box::new(|info| {
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                line(Level::ERROR, &format!("panic{at}: {msg}"));
            }));
        }
    }
    Ok(())
}

/// One line of the command's own (a summary, a fatal error), whatever the
/// filter: plain text, or a JSON object in the JSON format.
pub fn line(level: Level, message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = match FORMAT.get() {
        Some(LogFormat::Json) => {
            let mut o = Map::new();
            o.insert("timestamp".into(), Json::String(timestamp()));
            o.insert("level".into(), Json::String(level.as_str().into()));
            o.insert("target".into(), Json::String("fieldcrypt".into()));
            o.insert("message".into(), Json::String(message.into()));
            writeln!(err, "{}", Json::Object(o))
        }
        _ if level == Level::ERROR => writeln!(err, "error: {message}"),
        _ => writeln!(err, "{message}"),
    };
}

/// The JSON event format: one object per event.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writeln!(writer, "{}", event_json(event))
    }
}

/// An event as one JSON object.
fn event_json(event: &Event<'_>) -> Json {
    let meta = event.metadata();
    let mut o = Map::new();
    o.insert("timestamp".into(), Json::String(timestamp()));
    o.insert("level".into(), Json::String(meta.level().as_str().into()));
    o.insert("target".into(), Json::String(meta.target().into()));
    o.insert("message".into(), Json::String(String::new()));
    event.record(&mut JsonFields(&mut o));
    Json::Object(o)
}

/// Records an event's fields as JSON values.
struct JsonFields<'a>(&'a mut Map<String, Json>);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Json::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Json::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        // A list or map logged with `?` (Debug of a Vec or map of strings and
        // numbers) is valid JSON: keep it structured.
        let v = if field.name() != "message" && (text.starts_with('[') || text.starts_with('{')) {
            serde_json::from_str(&text).unwrap_or(Json::String(text))
        } else {
            Json::String(text)
        };
        self.0.insert(field.name().into(), v);
    }
}

/// Now, as RFC 3339 UTC with milliseconds (`2026-12-07T14:57:08.123Z`).
fn timestamp() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

/// Seconds since the epoch as a UTC date and time (civil-from-days).
fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_655_428, 123), "2026-12-07T14:57:08.123Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
    }

    #[test]
    fn the_filter_comes_from_the_flag_then_the_environment_then_the_default() {
        let env = |v: &str| match v {
            "FIELDCRYPT_LOG" => Some("debug".to_string()),
            "RUST_LOG" => Some("trace".to_string()),
            _ => None,
        };
        assert_eq!(filter_spec(Some("warn"), &env, "info").0, "warn");
        assert_eq!(filter_spec(None, &env, "info").0, "debug");
        let only_rust = |v: &str| (v == "RUST_LOG").then(|| "trace".to_string());
        assert_eq!(
            filter_spec(None, &only_rust, "info"),
            ("trace".into(), "RUST_LOG")
        );
        assert_eq!(
            filter_spec(None, &|_| None, "info"),
            ("info".into(), "default")
        );
    }

    #[test]
    fn events_become_flat_json_with_typed_values() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let sink = buf.clone();
        let sub = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            let topics = vec!["a", "b"];
            tracing::info!(target: "fieldcrypt::x", workers = 2, ok = true, topics = ?topics, name = %"n", "started {}", 1);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: Json = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "fieldcrypt::x");
        assert_eq!(v["message"], "started 1");
        assert_eq!(v["workers"], 2);
        assert_eq!(v["ok"], true);
        assert_eq!(v["topics"], serde_json::json!(["a", "b"]));
        assert_eq!(v["name"], "n");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(&keys[..4], ["timestamp", "level", "target", "message"]);
    }
}
