//! Realm on AWS Lambda: a custom runtime (the Lambda Runtime API, through `lambda_runtime`)
//! around realm-http's one router.
//!
//! - HTTP events (Function URLs, API Gateway REST and HTTP APIs, ALB) become requests to the
//!   router. With response streaming (Function URL invoke mode `RESPONSE_STREAM`) the answer
//!   goes out as it is produced, SSE included; buffered, it goes out whole in the event
//!   source's response shape.
//! - S3 notifications and EventBridge `Object Created` events start batch jobs (as on
//!   `POST /events`).
//! - Any other payload is a direct `Invoke` with an OpenAI request body: `messages` means a
//!   chat completion, `prompt` a completion; the answer is the JSON body.
//!
//! When a streaming client goes away, Lambda stops taking the stream; the response body is
//! dropped and generation is cancelled like any disconnect.

use axum::Router;
use axum::body::Body;
use axum::http::{self, HeaderMap, Method};
use base64::Engine as _;
use http_body_util::BodyExt;
use lambda_http::request::LambdaRequest;
use lambda_runtime::{Diagnostic, FunctionResponse, LambdaEvent, MetadataPrelude, StreamResponse, service_fn};
use realm_http::auth::Internal;
use serde_json::{Value, json};
use tower::ServiceExt;

/// How HTTP events are answered; it must match the Function URL's invoke mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    Streaming,
    Buffered,
}

#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    #[error("the event is neither an HTTP event nor an OpenAI request body: {0}")]
    BadEvent(String),
    #[error("{status}: {body}")]
    Request { status: u16, body: String },
    #[error("reading the response: {0}")]
    Body(String),
}

impl From<LambdaError> for Diagnostic {
    fn from(e: LambdaError) -> Self {
        let error_type = match &e {
            LambdaError::BadEvent(_) => "BadEvent",
            LambdaError::Request { .. } => "RequestFailed",
            LambdaError::Body(_) => "ResponseFailed",
        };
        Diagnostic { error_type: error_type.to_string(), error_message: e.to_string() }
    }
}

type Answer = FunctionResponse<Value, axum::body::BodyDataStream>;

/// Polls the Runtime API for invocations until the process ends.
pub async fn run(router: Router, mode: ResponseMode) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let router = router.clone();
        async move { handle(router, mode, event.payload).await }
    }))
    .await
}

async fn handle(router: Router, mode: ResponseMode, payload: Value) -> Result<Answer, LambdaError> {
    if is_http_event(&payload) {
        let event: LambdaRequest =
            serde_json::from_value(payload).map_err(|e| LambdaError::BadEvent(format!("HTTP event: {e}")))?;
        let (parts, body) = lambda_http::Request::from(event).into_parts();
        let request = http::Request::from_parts(parts, Body::from(body.to_vec()));
        let response = call(router, request).await;
        return match mode {
            ResponseMode::Streaming => Ok(FunctionResponse::StreamingResponse(streamed(response))),
            ResponseMode::Buffered => buffered(response).await.map(FunctionResponse::BufferedResponse),
        };
    }
    direct_invoke(router, payload).await.map(FunctionResponse::BufferedResponse)
}

/// API Gateway, Function URL and ALB events all carry `requestContext` and an HTTP method.
fn is_http_event(payload: &Value) -> bool {
    payload.get("requestContext").is_some() && (payload.get("httpMethod").is_some() || payload.get("rawPath").is_some())
}

async fn call(router: Router, request: http::Request<Body>) -> http::Response<Body> {
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn streamed(response: http::Response<Body>) -> StreamResponse<axum::body::BodyDataStream> {
    let (parts, body) = response.into_parts();
    let mut headers = parts.headers;
    let cookies = take_cookies(&mut headers);
    StreamResponse {
        metadata_prelude: MetadataPrelude { status_code: parts.status, headers, cookies },
        stream: body.into_data_stream(),
    }
}

fn take_cookies(headers: &mut HeaderMap) -> Vec<String> {
    let cookies = headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .map(|c| String::from_utf8_lossy(c.as_bytes()).into_owned())
        .collect();
    headers.remove(http::header::SET_COOKIE);
    cookies
}

/// The proxy-integration response shape API Gateway (REST and HTTP), Function URLs and ALB
/// all read.
async fn buffered(response: http::Response<Body>) -> Result<Value, LambdaError> {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map_err(|e| LambdaError::Body(e.to_string()))?.to_bytes();
    let mut headers = parts.headers;
    let cookies = take_cookies(&mut headers);
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned())))
        .collect();
    let (body, base64) = match String::from_utf8(bytes.to_vec()) {
        Ok(text) => (text, false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(&bytes), true),
    };
    Ok(json!({
        "statusCode": parts.status.as_u16(),
        "headers": headers,
        "cookies": cookies,
        "body": body,
        "isBase64Encoded": base64,
    }))
}

/// A direct invoke: the payload is the request body itself.
async fn direct_invoke(router: Router, mut payload: Value) -> Result<Value, LambdaError> {
    let path = if payload.get("messages").is_some() {
        "/v1/chat/completions"
    } else if payload.get("prompt").is_some() {
        "/v1/completions"
    } else if payload.get("Records").is_some() || payload.get("detail-type").is_some() {
        // S3 notifications and EventBridge events start batch jobs, as on `/events`.
        "/events"
    } else {
        return Err(LambdaError::BadEvent(
            "expected an HTTP event, an S3 or EventBridge event, or an OpenAI body with `messages` (chat) or \
             `prompt` (completion)"
                .into(),
        ));
    };
    // An invoke returns one payload: the answer comes whole.
    if let Some(stream) = payload.get_mut("stream") {
        *stream = Value::Bool(false);
    }
    let answer = internal(&router, Method::POST, path, Body::from(payload.to_string())).await?;
    if path == "/events" {
        return finish_batches(&router, answer).await;
    }
    Ok(answer)
}

/// A request from inside the process; a non-2xx answer is an error carrying its body.
async fn internal(router: &Router, method: Method, path: &str, body: Body) -> Result<Value, LambdaError> {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .extension(Internal)
        .body(body)
        .map_err(|e| LambdaError::BadEvent(e.to_string()))?;
    let response = call(router.clone(), request).await;
    let status = response.status();
    let bytes = response.into_body().collect().await.map_err(|e| LambdaError::Body(e.to_string()))?.to_bytes();
    let body = String::from_utf8_lossy(&bytes).into_owned();
    if !status.is_success() {
        return Err(LambdaError::Request { status: status.as_u16(), body });
    }
    serde_json::from_str(&body).map_err(|e| LambdaError::Body(e.to_string()))
}

/// Lambda freezes the environment once an invocation returns, so batch jobs an event started
/// run to the end inside it. One that outlives the function's timeout resumes from its
/// committed parts when S3 retries the event.
async fn finish_batches(router: &Router, mut accepted: Value) -> Result<Value, LambdaError> {
    let ids: Vec<String> = accepted
        .get("batches")
        .and_then(Value::as_array)
        .map(|b| b.iter().filter_map(|b| b.get("id").and_then(Value::as_str).map(str::to_string)).collect())
        .unwrap_or_default();
    let mut finished = Vec::with_capacity(ids.len());
    for id in ids {
        loop {
            let batch = internal(router, Method::GET, &format!("/v1/batches/{id}"), Body::empty()).await?;
            match batch.get("status").and_then(Value::as_str) {
                Some("completed") => {
                    finished.push(batch);
                    break;
                }
                Some("failed") => return Err(LambdaError::Request { status: 500, body: batch.to_string() }),
                _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
    }
    if let Some(obj) = accepted.as_object_mut() {
        obj.insert("status".into(), Value::from("completed"));
        obj.insert("batches".into(), Value::from(finished));
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_events_are_told_from_direct_invokes() {
        assert!(is_http_event(&json!({"requestContext": {}, "rawPath": "/v1/models"})));
        assert!(is_http_event(&json!({"requestContext": {}, "httpMethod": "GET"})));
        assert!(!is_http_event(&json!({"model": "m", "messages": []})));
    }
}
