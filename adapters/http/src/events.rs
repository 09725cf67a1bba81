//! CloudEvents intake on `POST /events` and `POST /` (binary and structured content mode, via
//! the CloudEvents SDK's HTTP binding), and the CloudEvents webhook validation handshake that
//! Azure Event Grid sends before delivering (`OPTIONS` with `WebHook-Request-Origin`).

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloudevents::AttributesReader;
use serde::Serialize;

use crate::error::ApiError;
use crate::{AppState, body_bytes};

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
    let event = cloudevents::binding::http::to_event(headers, body.to_vec())
        .map_err(|e| ApiError::invalid("cloudevent", format!("not a CloudEvent (binary or structured mode): {e}")))?;
    let kind = event.ty();
    let triggers = &state.config().event_types;
    if !triggers.is_empty() && !triggers.iter().any(|t| event_matches(t, kind)) {
        return Err(ApiError::invalid(
            "type",
            format!("event type `{kind}` is not a trigger of this function (it takes: {})", triggers.join(", ")),
        ));
    }
    tracing::info!(id = event.id(), r#type = kind, source = %event.source(), "cloudevent received");
    // Batch jobs from events are issue 6. Until then the event is refused with a 5xx, so the
    // sender keeps it (retries, dead-letter) instead of it being lost here.
    let received = Received {
        id: event.id(),
        kind,
        source: event.source().to_string(),
        status: "not_processed",
        message: "batch jobs started by events are not built yet; the event was not processed".to_string(),
    };
    Ok((StatusCode::NOT_IMPLEMENTED, axum::Json(received)).into_response())
}

/// Event types from the manifest against what arrives: Realm's short names for the S3
/// notification family match any of its `ObjectCreated:*` events.
fn event_matches(trigger: &str, kind: &str) -> bool {
    trigger == kind || (trigger == "aws.s3.ObjectCreated" && kind.starts_with("aws.s3.ObjectCreated"))
}
