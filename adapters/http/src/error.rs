//! One error type for every route, answered in OpenAI's shape:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use realm_engine::sampler::SamplerError;
use realm_engine::worker::SubmitError;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// A field is missing, malformed, out of range or unsupported; `param` names it.
    #[error("{message}")]
    InvalidRequest { message: String, param: Option<String> },
    #[error("the request body is not valid JSON: {message}")]
    InvalidJson { message: String },
    #[error(
        "the prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the model's context of {context} tokens"
    )]
    ContextLength { prompt: usize, max_tokens: usize, context: usize },
    #[error("the request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("missing API key: send it as `Authorization: Bearer <key>`")]
    MissingKey,
    #[error("incorrect API key")]
    WrongKey,
    #[error("the model `{model}` does not exist; this server serves `{served}`")]
    ModelNotFound { model: String, served: String },
    #[error("this function has no HTTP trigger (triggers.http is false in its manifest)")]
    NoHttpTrigger,
    #[error("no batch `{id}`")]
    BatchNotFound { id: String },
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("rate limit reached: {limit}; retry in {retry_after_s} s")]
    RateLimited { limit: String, retry_after_s: u64 },
    #[error("the server is overloaded; retry in {retry_after_s} s")]
    Overloaded { retry_after_s: u64 },
    #[error("the model is still loading; retry in {retry_after_s} s")]
    Loading { retry_after_s: u64 },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the model failed to load: {message}")]
    LoadFailed { message: String },
    #[error("internal error: {message}")]
    Internal { message: String },
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidRequest { message: message.into(), param: Some(param.into()) }
    }

    pub fn unsupported(param: &str) -> Self {
        Self::invalid(param, format!("`{param}` is not supported by this server"))
    }

    /// A sampling setting out of range, naming the field.
    pub fn from_sampler(s: SamplerError) -> Self {
        let param = match &s {
            SamplerError::OutOfRange { name, .. } => *name,
            SamplerError::BiasToken { .. } | SamplerError::NothingToSample => "logit_bias",
        };
        Self::invalid(param, s.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } | Self::InvalidJson { .. } | Self::ContextLength { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MissingKey | Self::WrongKey => StatusCode::UNAUTHORIZED,
            Self::ModelNotFound { .. }
            | Self::RouteNotFound { .. }
            | Self::NoHttpTrigger
            | Self::BatchNotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } | Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Loading { .. } | Self::ShuttingDown | Self::LoadFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI error `type`, also the `error_type` label of the request metrics and the type
    /// of an SSE error frame.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. }
            | Self::InvalidJson { .. }
            | Self::ContextLength { .. }
            | Self::BodyTooLarge { .. }
            | Self::ModelNotFound { .. }
            | Self::RouteNotFound { .. }
            | Self::NoHttpTrigger
            | Self::BatchNotFound { .. }
            | Self::MethodNotAllowed { .. } => "invalid_request_error",
            Self::MissingKey | Self::WrongKey => "authentication_error",
            Self::RateLimited { .. } | Self::Overloaded { .. } => "rate_limit_error",
            Self::Loading { .. } | Self::ShuttingDown | Self::LoadFailed { .. } => "service_unavailable",
            Self::Internal { .. } => "server_error",
        }
    }

    pub fn code(&self) -> Option<&'static str> {
        Some(match self {
            Self::InvalidJson { .. } => "invalid_json",
            Self::ContextLength { .. } => "context_length_exceeded",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::MissingKey => "missing_api_key",
            Self::WrongKey => "invalid_api_key",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::Overloaded { .. } => "overloaded",
            Self::Loading { .. } => "model_loading",
            Self::ShuttingDown => "shutting_down",
            _ => return None,
        })
    }

    pub fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } => param.as_deref(),
            Self::ContextLength { .. } => Some("messages"),
            Self::ModelNotFound { .. } => Some("model"),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_s, .. }
            | Self::Overloaded { retry_after_s }
            | Self::Loading { retry_after_s } => Some(*retry_after_s),
            Self::ShuttingDown => Some(1),
            _ => None,
        }
    }

    /// The JSON body, also sent as an SSE `data:` frame when a stream fails midway.
    pub fn body(&self) -> String {
        let body = Body {
            error: Detail {
                message: self.to_string(),
                kind: self.error_type(),
                param: self.param(),
                code: self.code(),
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| String::from("{\"error\":{}}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), [(header::CONTENT_TYPE, "application/json")], self.body()).into_response();
        if let Some(s) = self.retry_after() {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if matches!(self, Self::MissingKey | Self::WrongKey) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp.extensions_mut().insert(ErrorKind(self.error_type()));
        resp
    }
}

/// Left on error responses so the metrics layer can count them by type.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Loading => Self::Loading { retry_after_s: 5 },
            SubmitError::LoadFailed(message) => Self::LoadFailed { message: message.to_string() },
            SubmitError::Stopped => Self::ShuttingDown,
            SubmitError::Overloaded { .. } => Self::Overloaded { retry_after_s: 1 },
            SubmitError::EmptyPrompt => Self::invalid("prompt", "the prompt is empty"),
            SubmitError::BadToken { .. } => Self::invalid("prompt", e.to_string()),
            SubmitError::ContextExceeded { prompt, max_tokens, context } => {
                Self::ContextLength { prompt, max_tokens, context }
            }
            SubmitError::Admit(a) => Self::invalid("max_tokens", a.to_string()),
            SubmitError::Sampler(s) => Self::from_sampler(s),
        }
    }
}
