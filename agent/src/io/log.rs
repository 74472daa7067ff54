//! The agent's log: the `log` facade, one line per record on stderr, as text
//! (`<unix seconds>.<micros> takeover: <message>`) or as JSON (`--log-format json`: `ts`,
//! `level`, `message`, and for the core's events `event` and its fields by name).
use std::{
    io::Write,
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

use log::{kv, Level, LevelFilter, Log, Metadata, Record};

use crate::core::{config::CoreConfig, event::Event};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

struct Logger {
    format: Format,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger (once; later calls keep the first). `verbose` includes the per-resource
/// gate changes (debug level).
pub fn init(format: Format, verbose: bool) {
    let logger = LOGGER.get_or_init(|| Logger { format });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(if verbose {
            LevelFilter::Debug
        } else {
            LevelFilter::Info
        });
    }
}

/// Logs one of the core's events, with its fields for the JSON form.
pub fn event(cfg: &CoreConfig, e: &Event) {
    let level = if e.is_detail() {
        Level::Debug
    } else if matches!(
        e,
        Event::ConfigMismatch { .. } | Event::FenceFailed { .. } | Event::PersistFailed { .. }
    ) {
        Level::Warn
    } else {
        Level::Info
    };
    if !log::log_enabled!(target: "takeover::event", level) {
        return;
    }
    let mut fields = vec![("event", e.kind().to_string())];
    fields.extend(e.fields(cfg));
    let kvs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    log::logger().log(
        &Record::builder()
            .args(format_args!("{}", e.describe(cfg)))
            .level(level)
            .target("takeover::event")
            .key_values(&kvs)
            .build(),
    );
}

/// Collects a record's key-values as JSON.
struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> kv::VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        self.0
            .insert(key.as_str().to_string(), value.to_string().into());
        Ok(())
    }
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = match self.format {
            Format::Text => {
                let level = match record.level() {
                    Level::Error => "error: ",
                    Level::Warn => "warning: ",
                    _ => "",
                };
                format!(
                    "{}.{:06} takeover: {level}{}\n",
                    now.as_secs(),
                    now.subsec_micros(),
                    record.args()
                )
            }
            Format::Json => {
                let mut m = serde_json::Map::new();
                m.insert(
                    "ts".into(),
                    format!("{}.{:06}", now.as_secs(), now.subsec_micros()).into(),
                );
                m.insert(
                    "level".into(),
                    record.level().as_str().to_lowercase().into(),
                );
                m.insert("message".into(), record.args().to_string().into());
                if record.target() != "takeover::event" {
                    m.insert("target".into(), record.target().into());
                }
                let _ = record.key_values().visit(&mut Fields(&mut m));
                format!("{}\n", serde_json::Value::Object(m))
            }
        };
        // One write per line, so lines from two threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}
