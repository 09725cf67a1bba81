//! The Realm function manifest (`realm.yaml`): one file that says which model a function
//! serves, how it runs, what triggers it and how it scales. The runtime reads it here; the
//! Terraform modules and the Helm chart read the same file, so code and infrastructure agree.
//!
//! Unknown keys and bad values are errors naming the path and the value
//! (`runtime.max_batch: 0 is out of range 1..=1024`).

use std::fmt;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Event types a function may name under `triggers.events`.
pub const EVENT_TYPES: [&str; 5] = [
    "google.cloud.storage.object.v1.finalized",
    "Microsoft.Storage.BlobCreated",
    "aws.s3.ObjectCreated",
    "aws.eventbridge.ObjectCreated",
    "dev.realm.batch.v1.requested",
];

/// URI schemes `model.uri` may use (besides `default` and a local path).
pub const MODEL_SCHEMES: [&str; 5] = ["s3", "gs", "az", "https", "file"];

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The function's name: a DNS label (lowercase letters, digits, `-`; at most 63), used for
    /// cloud resource names.
    pub name: String,
    pub model: ModelSpec,
    #[serde(default)]
    pub runtime: Runtime,
    /// Defaults for requests that leave a field out.
    #[serde(default)]
    pub generation: Generation,
    #[serde(default)]
    pub triggers: Triggers,
    #[serde(default)]
    pub scaling: Scaling,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `default` (the default model), a local path, or an `s3://`, `gs://`, `az://`,
    /// `https://` or `file://` URI.
    pub uri: String,
    /// Hex sha256 of the file, checked after download.
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Auto,
    Cpu,
    Cuda,
    Wgpu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Exact,
    #[default]
    Fast,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    pub backend: Backend,
    pub precision: Precision,
    /// Caps prompt + generated tokens below the model's own context length.
    pub context_length: Option<u32>,
    /// Sequences decoded together.
    pub max_batch: u32,
    /// CPU threads; 0 is one per physical core.
    pub threads: u32,
    /// KV cache budget in MiB.
    pub kv_cache_mib: u32,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            precision: Precision::Fast,
            context_length: None,
            max_batch: 16,
            threads: 0,
            kv_cache_mib: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Generation {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Triggers {
    /// Serve the OpenAI API over HTTP.
    pub http: bool,
    /// CloudEvent types that start a batch job (see `EVENT_TYPES`).
    pub events: Vec<String>,
    /// Which new objects start a batch job and where its results go, first match wins. Empty:
    /// every object an event names starts one, with results beside it under `<object>.out/`.
    pub batch: Vec<BatchRoute>,
}

impl Default for Triggers {
    fn default() -> Self {
        Self { http: true, events: Vec::new(), batch: Vec::new() }
    }
}

/// Objects whose key starts with `prefix` (in any bucket the platform delivers events for)
/// start a batch job when a storage event of one of `events` (all, when empty) names them.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchRoute {
    pub prefix: String,
    pub events: Vec<String>,
    /// Where results go: a URI (`s3://results/done/`) or a key prefix in the input's own
    /// bucket (`results/`); the input's key after `prefix` is appended. None: beside the input.
    pub output: Option<String>,
}

/// Storage event types: those whose object a [`BatchRoute`] can match.
pub fn storage_event_types() -> impl Iterator<Item = &'static str> {
    EVENT_TYPES.into_iter().filter(|t| *t != "dev.realm.batch.v1.requested")
}

/// URI schemes a batch job can write its results to.
pub const OUTPUT_SCHEMES: [&str; 4] = ["s3", "gs", "az", "file"];

/// Why `output` cannot be a route's output, if it cannot.
fn bad_output(output: &str, prefix: &str) -> Option<String> {
    match output.split_once("://") {
        Some((scheme, rest)) if OUTPUT_SCHEMES.contains(&scheme) && !rest.is_empty() => None,
        Some((scheme, _)) => Some(format!("{output:?}: scheme {scheme:?} is not one of {}", OUTPUT_SCHEMES.join(", "))),
        None if output.is_empty() || output.starts_with('/') || output.split('/').any(|p| p == ".." || p == ".") => {
            Some(format!("{output:?} is not a key prefix (relative, without . or .. segments)"))
        }
        // Results under the route's own prefix would start jobs of their own, without end.
        None if output.starts_with(prefix) => {
            Some(format!("{output:?} lies under the route's prefix {prefix:?}: its results would start more jobs"))
        }
        None => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Gpu {
    None,
    NvidiaL4,
    NvidiaT4,
    NvidiaA100,
    NvidiaH100,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Scaling {
    pub min_instances: u32,
    pub max_instances: u32,
    /// Requests one instance takes at once.
    pub concurrency: u32,
    pub gpu: Gpu,
}

impl Default for Scaling {
    fn default() -> Self {
        Self { min_instances: 0, max_instances: 10, concurrency: 16, gpu: Gpu::None }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// Wall-time budget per request, seconds.
    pub request_timeout_s: Option<u32>,
    pub max_tokens: Option<u32>,
}

/// One thing wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path to the key (`runtime.max_batch`), empty for the document itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { write!(f, "{}", self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

impl ManifestError {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { problems: vec![Problem { path: path.into(), message: message.into() }] }
    }
}

impl Manifest {
    pub fn from_file(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ManifestError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    /// Parses and validates a manifest.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        // YAML → JSON value first, so type errors come back with their path.
        let value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| ManifestError::one("", e.to_string()))?;
        if value.is_null() {
            return Err(ManifestError::one("", "the manifest is empty"));
        }
        let manifest: Manifest = serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = e.into_inner().to_string();
            ManifestError::one(path, message)
        })?;
        let problems = manifest.problems();
        if problems.is_empty() { Ok(manifest) } else { Err(ManifestError::Invalid { problems }) }
    }

    /// Every value out of range or inconsistent, each with its path.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |path: &str, message: String| out.push(Problem { path: path.to_string(), message });
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && self.name.as_bytes()[0].is_ascii_lowercase()
            && !self.name.ends_with('-');
        if !name_ok {
            bad(
                "name",
                format!(
                    "{:?} is not a DNS label (lowercase letters, digits and '-', starting with a letter, at most 63)",
                    self.name
                ),
            );
        }
        let uri = self.model.uri.as_str();
        match uri.split_once("://") {
            Some((scheme, rest)) if MODEL_SCHEMES.contains(&scheme) && !rest.is_empty() => {}
            Some((scheme, _)) => {
                bad("model.uri", format!("{uri:?}: scheme {scheme:?} is not one of {}", MODEL_SCHEMES.join(", ")))
            }
            None if uri.is_empty() => bad("model.uri", "is empty".into()),
            None => {}
        }
        if let Some(sha) = &self.model.sha256
            && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            bad("model.sha256", format!("{sha:?} is not 64 hex digits"));
        }
        let r = &self.runtime;
        if !(1..=1024).contains(&r.max_batch) {
            bad("runtime.max_batch", format!("{} is out of range 1..=1024", r.max_batch));
        }
        if r.threads > 1024 {
            bad("runtime.threads", format!("{} is out of range 0..=1024", r.threads));
        }
        if r.kv_cache_mib == 0 {
            bad("runtime.kv_cache_mib", "0 leaves no room for the KV cache".into());
        }
        if r.context_length == Some(0) {
            bad("runtime.context_length", "0 is out of range (at least 1)".into());
        }
        let g = &self.generation;
        let ranges = [
            ("generation.temperature", g.temperature, 0.0, 2.0),
            ("generation.top_p", g.top_p, f32::MIN_POSITIVE, 1.0),
            ("generation.min_p", g.min_p, 0.0, 1.0),
        ];
        for (path, value, lo, hi) in ranges {
            if let Some(v) = value.filter(|v| !(lo..=hi).contains(v)) {
                bad(path, format!("{v} is out of range [{lo}, {hi}]"));
            }
        }
        if g.max_tokens == Some(0) {
            bad("generation.max_tokens", "0 is out of range (at least 1)".into());
        }
        for (i, event) in self.triggers.events.iter().enumerate() {
            if !EVENT_TYPES.contains(&event.as_str()) {
                bad(&format!("triggers.events[{i}]"), format!("{event:?} is not one of {}", EVENT_TYPES.join(", ")));
            }
        }
        for (i, route) in self.triggers.batch.iter().enumerate() {
            for (j, event) in route.events.iter().enumerate() {
                let listed = self.triggers.events.is_empty() || self.triggers.events.contains(event);
                if !storage_event_types().any(|t| t == event) || !listed {
                    bad(
                        &format!("triggers.batch[{i}].events[{j}]"),
                        format!("{event:?} is not a storage event type listed in triggers.events"),
                    );
                }
            }
            if let Some(problem) = route.output.as_deref().and_then(|o| bad_output(o, &route.prefix)) {
                bad(&format!("triggers.batch[{i}].output"), problem);
            }
        }
        if !self.triggers.http && self.triggers.events.is_empty() {
            bad("triggers", "neither http nor any event: nothing would reach the function".into());
        }
        let s = &self.scaling;
        if s.max_instances == 0 {
            bad("scaling.max_instances", "0 is out of range (at least 1)".into());
        }
        if s.min_instances > s.max_instances {
            bad(
                "scaling.min_instances",
                format!("{} is above scaling.max_instances {}", s.min_instances, s.max_instances),
            );
        }
        if !(1..=1000).contains(&s.concurrency) {
            bad("scaling.concurrency", format!("{} is out of range 1..=1000", s.concurrency));
        }
        let l = &self.limits;
        for (path, v) in [
            ("limits.requests_per_minute", l.requests_per_minute),
            ("limits.tokens_per_minute", l.tokens_per_minute),
            ("limits.request_timeout_s", l.request_timeout_s),
            ("limits.max_tokens", l.max_tokens),
        ] {
            if v == Some(0) {
                bad(path, "0 is out of range (at least 1; leave it out for no limit)".into());
            }
        }
        out
    }
}

/// The manifest's JSON Schema, for editors (`# yaml-language-server: $schema=...`).
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Manifest)).unwrap_or_default()
}
