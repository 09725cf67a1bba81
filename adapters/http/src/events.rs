//! CloudEvents intake on `POST /events` and `POST /` (binary and structured content mode, via
//! the CloudEvents SDK's HTTP binding), and the CloudEvents webhook validation handshake that
//! Azure Event Grid sends before delivering (`OPTIONS` with `WebHook-Request-Origin`).

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloudevents::{AttributesReader, Data};
use serde::Serialize;

use crate::error::ApiError;
use crate::{AppState, batches, body_bytes};

const ORIGIN: HeaderName = HeaderName::from_static("webhook-request-origin");
const ALLOWED_ORIGIN: HeaderName = HeaderName::from_static("webhook-allowed-origin");
const ALLOWED_RATE: HeaderName = HeaderName::from_static("webhook-allowed-rate");

/// What a received event was, as answered to its sender.
#[derive(Debug, Serialize)]
struct Received<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    source: String,
    status: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<serde_json::Value>,
}

/// Answers the abuse-protection handshake: the sender proves it may deliver to this endpoint
/// by asking, and the endpoint allows its origin (any rate).
pub async fn handshake(headers: HeaderMap) -> Response {
    match headers.get(ORIGIN) {
        Some(origin) => {
            let origin = origin.clone();
            (
                StatusCode::OK,
                [(ALLOWED_ORIGIN, origin), (ALLOWED_RATE, HeaderValue::from_static("*"))],
                [(header::ALLOW, "POST, OPTIONS")],
            )
                .into_response()
        }
        None => (StatusCode::NO_CONTENT, [(header::ALLOW, "POST, OPTIONS")]).into_response(),
    }
}

pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match accept(&state, &headers, body) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

fn accept(state: &AppState, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    // Deliveries authenticate the platform's way (Eventarc's OIDC through Cloud Run IAM,
    // Event Grid's handshake, Knative's in-cluster broker), not with an API key.
    let body = body_bytes(body, state.config().max_body_bytes)?;
    if !headers.contains_key("ce-specversion")
        && let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(jobs) = batches::aws_jobs(&json, &state.config().batch_routes)
    {
        return start_aws(state, jobs?);
    }
    let event = cloudevents::binding::http::to_event(headers, body.to_vec())
        .map_err(|e| ApiError::invalid("cloudevent", format!("not a CloudEvent (binary or structured mode): {e}")))?;
    let kind = event.ty();
    check_trigger(state, kind)?;
    tracing::info!(id = event.id(), r#type = kind, source = %event.source(), "cloudevent received");
    if !KNOWN_TYPES.contains(&kind) {
        return Err(unknown_type(kind));
    }
    let data =
        match event.data() {
            Some(Data::Json(v)) => v.clone(),
            Some(Data::String(s)) => serde_json::from_str(s)
                .map_err(|e| ApiError::invalid("data", format!("event data is not JSON: {e}")))?,
            Some(Data::Binary(b)) => serde_json::from_slice(b)
                .map_err(|e| ApiError::invalid("data", format!("event data is not JSON: {e}")))?,
            None => return Err(ApiError::invalid("data", format!("the {kind} event carries no data"))),
        };
    let received = |status: &'static str, message: String| Received {
        id: event.id(),
        kind,
        source: event.source().to_string(),
        status,
        message,
        batch: None,
    };
    let (input, output) = match batches::job_for_event(kind, &data, &state.config().batch_routes)? {
        Some(batches::Routed::Job { input, output }) => (input, output),
        Some(turned_away) => {
            let r = received("ignored", turned_away.reason().into());
            return Ok((StatusCode::OK, axum::Json(r)).into_response());
        }
        None => return Err(unknown_type(kind)),
    };
    let Some(jobs) = state.inner.batches.get() else {
        // This server runs no batch jobs: the event is refused with a 5xx so that its sender
        // keeps it (retries, dead-letter) rather than it being lost here.
        let r = received("not_processed", "this server runs no batch jobs; the event was not processed".into());
        return Ok((StatusCode::NOT_IMPLEMENTED, axum::Json(r)).into_response());
    };
    let batch = jobs.start(&input, &output, &format!("{kind} {}", event.id()))?;
    let mut r = received("accepted", format!("batch job reading {input}, writing under {output}"));
    r.batch = Some(batch);
    Ok((StatusCode::ACCEPTED, axum::Json(r)).into_response())
}

/// AWS's own event shapes (S3 notifications, EventBridge `Object Created`): one job per object.
fn start_aws(state: &AppState, jobs: Vec<batches::ObjectJob>) -> Result<Response, ApiError> {
    let Some(runner) = state.inner.batches.get() else {
        let body = serde_json::json!({"status": "not_processed", "message": "this server runs no batch jobs"});
        return Ok((StatusCode::NOT_IMPLEMENTED, axum::Json(body)).into_response());
    };
    let mut started = Vec::new();
    for job in jobs {
        check_trigger(state, &job.kind)?;
        started.push(runner.start(&job.input, &job.output, &job.kind)?);
    }
    let body = serde_json::json!({"status": "accepted", "batches": started});
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

fn unknown_type(kind: &str) -> ApiError {
    ApiError::invalid("type", format!("event type `{kind}` starts nothing here (known: {})", KNOWN_TYPES.join(", ")))
}

/// CloudEvent types that start batch jobs.
const KNOWN_TYPES: [&str; 3] =
    ["dev.realm.batch.v1.requested", "google.cloud.storage.object.v1.finalized", "Microsoft.Storage.BlobCreated"];

/// Refuses an event type the function's manifest does not list (no list takes any).
fn check_trigger(state: &AppState, kind: &str) -> Result<(), ApiError> {
    let triggers = &state.config().event_types;
    if triggers.is_empty() || triggers.iter().any(|t| t == kind) {
        return Ok(());
    }
    Err(ApiError::invalid(
        "type",
        format!("event type `{kind}` is not a trigger of this function (it takes: {})", triggers.join(", ")),
    ))
}
