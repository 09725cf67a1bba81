//! Realm's HTTP front door: the OpenAI API (chat completions, completions, models; JSON and
//! server-sent events) over the engine's continuous-batching scheduler, plus `/health`,
//! `/ready` and Prometheus `/metrics`. It knows requests, not tensors: prompts become token
//! ids and sampling settings, the engine answers with token events.

pub mod auth;
pub mod batches;
mod chat;
mod completions;
pub mod config;
pub mod error;
mod events;
mod generate;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod platform;
pub mod request;
pub mod response;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use realm_engine::worker::{EngineHandle, LoadState, ModelInfo};

pub use config::{GenerationDefaults, ServerConfig};
pub use error::ApiError;
pub use metrics::Startup;

use auth::{ApiKeys, Caller};
use error::ErrorKind;
use limits::RateLimiter;
use metrics::{Metrics, RequestLabels};
use names::*;

/// Everything a handler needs, shared by all of them.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    engine: EngineHandle,
    config: ServerConfig,
    keys: ApiKeys,
    limiter: RateLimiter,
    metrics: Metrics,
    startup: Arc<Startup>,
    draining: AtomicBool,
    fingerprint: String,
    ids: AtomicU64,
    batches: OnceLock<Arc<dyn batches::Batches>>,
}

impl AppState {
    pub fn new(engine: EngineHandle, config: ServerConfig, startup: Arc<Startup>) -> Self {
        let keys = ApiKeys::new(config.api_keys.iter().cloned());
        let limiter = RateLimiter::new(config.rate_limits);
        let fingerprint = format!("realm-{}", env!("CARGO_PKG_VERSION"));
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Self {
            inner: Arc::new(Inner {
                engine,
                config,
                keys,
                limiter,
                metrics: Metrics::new(),
                startup,
                draining: AtomicBool::new(false),
                fingerprint,
                ids: AtomicU64::new(seed),
                batches: OnceLock::new(),
            }),
        }
    }

    /// Hands events and `/v1/batches` to a batch runner.
    pub fn set_batches(&self, batches: Arc<dyn batches::Batches>) {
        let _ = self.inner.batches.set(batches);
    }

    /// Stop taking new work: `/ready` turns 503 and `/v1/*` answers 503, while streams already
    /// running go on.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.inner.engine
    }

    fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// A fresh id for a response (`chatcmpl-…`, `cmpl-…`) or a seed.
    fn next_id(&self) -> u64 {
        // splitmix64 over a counter: unique per process, unpredictable enough for ids and seeds.
        let mut z = self.inner.ids.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Authenticates a `/v1/*` request and waits for (or refuses during) model load.
    /// `internal` requests come from this process (the batch runner): no key, no HTTP trigger
    /// needed, no rate limit.
    async fn admit(&self, headers: &HeaderMap, internal: bool) -> Result<(Caller, Arc<ModelInfo>), ApiError> {
        let caller = if internal {
            Caller::Internal
        } else {
            if !self.config().http_api {
                return Err(ApiError::NoHttpTrigger);
            }
            self.inner.keys.check(headers)?
        };
        if self.inner.draining.load(Ordering::Acquire) {
            return Err(ApiError::ShuttingDown);
        }
        let state = match (self.engine().state(), self.config().hold_while_loading) {
            (LoadState::Loading, Some(wait)) => {
                tokio::time::timeout(wait, self.engine().loaded()).await.unwrap_or(LoadState::Loading)
            }
            (state, _) => state,
        };
        match state {
            LoadState::Ready(info) => Ok((caller, info)),
            LoadState::Loading => Err(ApiError::Loading { retry_after_s: 5 }),
            LoadState::Failed(message) => Err(ApiError::LoadFailed { message: message.to_string() }),
        }
    }

    fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if model == self.config().model_id || self.config().model_aliases.iter().any(|a| a == model) {
            Ok(())
        } else {
            Err(ApiError::ModelNotFound { model: model.to_string(), served: self.config().model_id.clone() })
        }
    }

    fn created() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// The whole API as one router; platform adapters serve it as they must.
pub fn router(state: AppState) -> Router {
    let limit = state.config().max_body_bytes;
    Router::new()
        .route(ROUTE_HEALTH, get(health))
        .route(ROUTE_READY, get(ready))
        .route(ROUTE_METRICS, get(metrics_text))
        .route(ROUTE_MODELS, get(models))
        .route(ROUTE_BATCH, get(batch_status))
        .route(ROUTE_CHAT, post(chat::handle))
        .route(ROUTE_COMPLETIONS, post(completions::handle))
        .route(ROUTE_EVENTS, post(events::receive).options(events::handshake))
        .route(ROUTE_ROOT, post(events::receive).options(events::handshake))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// Cloud Run's trace header, `TRACE_ID/SPAN_ID;o=1`.
const TRACE_HEADER: &str = "x-cloud-trace-context";

/// Counts and logs every response by route, status and error type.
async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().clone();
    let trace = req.headers().get(TRACE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let start = Instant::now();
    let resp = next.run(req).await;
    let error_type = resp.extensions().get::<ErrorKind>().map_or("", |k| k.0).to_string();
    let (status, ms) = (resp.status().as_u16(), start.elapsed().as_millis() as u64);
    let trace = trace.unwrap_or_default();
    if matches!(route.as_str(), ROUTE_HEALTH | ROUTE_READY | ROUTE_METRICS) {
        tracing::debug!(%method, route, status, ms, trace, "request");
    } else {
        // A streamed response is logged when its headers go out; its tokens follow.
        tracing::info!(%method, route, status, ms, error_type, trace, "request");
    }
    let labels = RequestLabels { route, status: resp.status().as_u16(), error_type };
    state.metrics().requests.get_or_create(&labels).inc();
    resp
}

/// The body as bytes, or the error that says why not (too large, unreadable).
fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::InvalidJson { message: rejection.body_text() }
        }
    })
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.inner.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match state.engine().state() {
        LoadState::Ready(_) => {
            let startup = &state.inner.startup;
            let _ = startup.ready.set(startup.process_start.elapsed());
            (StatusCode::OK, "ready").into_response()
        }
        LoadState::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response(),
        LoadState::Failed(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("model failed to load: {e}")).into_response(),
    }
}

async fn metrics_text(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.config().protect_metrics
        && let Err(e) = state.inner.keys.check(&headers)
    {
        return e.into_response();
    }
    let body = state.metrics().render(state.engine(), &state.inner.startup);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

async fn models(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !state.config().http_api {
        return Err(ApiError::NoHttpTrigger);
    }
    state.inner.keys.check(&headers)?;
    let max_model_len = state.engine().info().map_or(0, |i| i.context_length);
    let list = response::ModelList {
        object: "list",
        data: vec![response::ModelCard {
            id: state.config().model_id.clone(),
            object: "model",
            created: AppState::created(),
            owned_by: "realm",
            max_model_len,
        }],
    };
    Ok(axum::Json(list).into_response())
}

async fn batch_status(
    State(state): State<AppState>,
    internal: Option<axum::Extension<auth::Internal>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    if internal.is_none() {
        state.inner.keys.check(&headers)?;
    }
    let found = state.inner.batches.get().and_then(|b| b.get(&id));
    found.map(|v| axum::Json(v).into_response()).ok_or(ApiError::BatchNotFound { id })
}

async fn not_found(req: Request) -> ApiError {
    ApiError::RouteNotFound { method: req.method().to_string(), path: req.uri().path().to_string() }
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed { method: req.method().to_string(), path: req.uri().path().to_string() }
}

/// Records when the first token of the process came out (cold-start metrics).
fn note_first_token(state: &AppState) {
    let startup = &state.inner.startup;
    if startup.first_token.get().is_none() {
        let _ = startup.first_token.set(startup.process_start.elapsed());
    }
}
