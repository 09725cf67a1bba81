//! Log output: human-readable on a terminal, JSON lines otherwise, and on Cloud Run the JSON
//! shape Cloud Logging reads (`severity`, `message`, `logging.googleapis.com/trace`).

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub fn init(cloud_logging: bool) {
    let filter = EnvFilter::try_from_env("REALM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if cloud_logging {
        let project = std::env::var("GOOGLE_CLOUD_PROJECT").ok().filter(|p| !p.is_empty());
        builder.event_format(CloudLogging { project }).try_init()
    } else if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.json().try_init()
    };
}

/// One JSON object per event: Cloud Logging's special keys, then the event's own fields.
struct CloudLogging {
    project: Option<String>,
}

#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_string(), Value::from(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
}

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut out = Map::new();
        let severity = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "INFO",
            Level::DEBUG | Level::TRACE => "DEBUG",
        };
        out.insert("severity".into(), Value::from(severity));
        out.insert("message".into(), fields.0.remove("message").unwrap_or(Value::from("")));
        // X-Cloud-Trace-Context is `TRACE_ID/SPAN_ID;o=1`; Cloud Logging wants the trace's
        // resource name to group a request's lines with its trace.
        if let Some(Value::String(header)) = fields.0.remove("trace")
            && let Some(id) = header.split('/').next().filter(|id| !id.is_empty())
        {
            let trace = match &self.project {
                Some(project) => format!("projects/{project}/traces/{id}"),
                None => id.to_string(),
            };
            out.insert("logging.googleapis.com/trace".into(), Value::from(trace));
        }
        out.insert("target".into(), Value::from(event.metadata().target()));
        out.extend(fields.0);
        writeln!(writer, "{}", Value::Object(out))
    }
}
