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

/// Logs one of the core's events, with its fields for the JSON form, stamped `at` (when the
/// shell took it from the core: lines are written after the datagrams have gone).
pub fn event(cfg: &CoreConfig, e: &Event, at: SystemTime) {
    let level = if e.is_detail(cfg) {
        Level::Debug
    } else if matches!(
        e,
        Event::ConfigMismatch { .. }
            | Event::FenceFailed { .. }
            | Event::LeaseWait { leased: false, .. }
            | Event::Storage { lost: true, .. }
            | Event::PersistFailed { .. }
            | Event::Escalated { .. }
            | Event::NoInstance { .. }
    ) {
        Level::Warn
    } else {
        Level::Info
    };
    if !log::log_enabled!(target: "takeover::event", level) {
        return;
    }
    let mut fields = vec![("ts", stamp(at)), ("event", e.kind().to_string())];
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

fn stamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
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
        // Other crates' warnings (netlink's about a dump read only in part, say) are noise to
        // an operator; their errors are not.
        let ours = m.target().starts_with("takeover");
        m.level() <= log::max_level() && (ours || m.level() <= Level::Error)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // One write per line, so lines from two threads never interleave.
        let _ = std::io::stderr()
            .lock()
            .write_all(self.line(record).as_bytes());
    }

    fn flush(&self) {}
}

impl Logger {
    fn line(&self, record: &Record) -> String {
        // An event carries its own time; anything else is stamped now.
        let ts = record
            .key_values()
            .get(kv::Key::from("ts"))
            .map_or_else(|| stamp(SystemTime::now()), |v| v.to_string());
        match self.format {
            Format::Text => {
                let level = match record.level() {
                    Level::Error => "error: ",
                    Level::Warn => "warning: ",
                    _ => "",
                };
                format!("{ts} takeover: {level}{}\n", record.args())
            }
            Format::Json => {
                let mut m = serde_json::Map::new();
                m.insert("ts".into(), ts.into());
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_line_of_text_or_of_json_with_its_fields() {
        let kvs = [
            ("ts", "1700000000.000042"),
            ("event", "peer_dead"),
            ("peer", "b"),
        ];
        let record = Record::builder()
            .args(format_args!("peer b is dead: every path silent"))
            .level(Level::Info)
            .target("takeover::event")
            .key_values(&kvs)
            .build();
        let text = Logger {
            format: Format::Text,
        }
        .line(&record);
        assert_eq!(
            text,
            "1700000000.000042 takeover: peer b is dead: every path silent\n"
        );
        let json = Logger {
            format: Format::Json,
        }
        .line(&record);
        assert_eq!(json.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["event"], "peer_dead");
        assert_eq!(v["peer"], "b");
        assert_eq!(v["ts"], "1700000000.000042");
        assert_eq!(v["level"], "info");
        assert_eq!(v["message"], "peer b is dead: every path silent");
        assert!(v.get("target").is_none());
        let warn = Record::builder()
            .args(format_args!("mlockall: denied"))
            .level(Level::Warn)
            .target("takeover::io")
            .build();
        assert!(Logger {
            format: Format::Text
        }
        .line(&warn)
        .ends_with(" takeover: warning: mlockall: denied\n"));
    }
}
