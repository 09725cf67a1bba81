//! What the server is told at start: who may call it, how much, and request defaults.

use std::time::Duration;

use crate::limits::RateLimits;

/// Sampling defaults for fields a request leaves out (OpenAI's defaults unless the function
/// manifest says otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    /// `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
}

impl Default for GenerationDefaults {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: 1.0, top_k: 0, min_p: 0.0, max_tokens: None }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The id `/v1/models` lists and requests must name.
    pub model_id: String,
    /// Other names requests may use for the model (`default`, the path given).
    pub model_aliases: Vec<String>,
    pub api_keys: Vec<String>,
    pub rate_limits: RateLimits,
    pub max_body_bytes: usize,
    /// While the model loads, `/v1/*` requests wait up to this long for it (then 503); `None`
    /// answers 503 with `Retry-After` at once.
    pub hold_while_loading: Option<Duration>,
    /// Server-side wall-time budget per request (some platforms cannot see a client leave).
    pub request_timeout: Option<Duration>,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_limit: Option<usize>,
    pub defaults: GenerationDefaults,
    /// SSE comment frames on idle streams, well inside proxies' idle timeouts.
    pub keep_alive: Duration,
    /// Also require the API key on `/metrics`.
    pub protect_metrics: bool,
    /// Serve `/v1/*` (the manifest's `triggers.http`); off, those routes answer 404.
    pub http_api: bool,
    /// CloudEvent types this function takes on `/events` (the manifest's `triggers.events`);
    /// empty takes any.
    pub event_types: Vec<String>,
    /// Which objects start batch jobs and where results go (the manifest's `triggers.batch`).
    pub batch_routes: Vec<realm_functions::BatchRoute>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model_id: "default".to_string(),
            model_aliases: Vec::new(),
            api_keys: Vec::new(),
            rate_limits: RateLimits::default(),
            max_body_bytes: 4 << 20,
            hold_while_loading: None,
            request_timeout: Some(Duration::from_secs(600)),
            max_tokens_limit: None,
            defaults: GenerationDefaults::default(),
            keep_alive: Duration::from_secs(15),
            protect_metrics: false,
            event_types: Vec::new(),
            batch_routes: Vec::new(),
            http_api: true,
        }
    }
}
