//! The router in-process (`oneshot`) over a real engine on the default model: wire-format
//! snapshots of JSON and SSE, every error shape, the loading window, and malformed or fuzzed
//! bodies, which must never crash the server or answer 5xx.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use realm_engine::worker::{EngineHandle, LoadState, WorkerConfig};
use realm_engine::{Engine, EngineOptions, Precision};
use realm_http::limits::RateLimits;
use realm_http::{AppState, ServerConfig, Startup, router};
use serde_json::{Value, json};
use tower::ServiceExt;

const MODEL: &str = "smollm2";
const KEY: &str = "sk-test";

fn engine() -> EngineHandle {
    static ENGINE: OnceLock<EngineHandle> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let path = common::default_model_path();
            let options = EngineOptions { threads: 2, precision: Precision::Fast, ..EngineOptions::default() };
            let handle = EngineHandle::spawn(
                move || Engine::load(&path, &options).map_err(|e| e.to_string()),
                WorkerConfig::default(),
            )
            .expect("spawn engine");
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(handle.state(), LoadState::Loading) {
                assert!(Instant::now() < deadline, "model load timed out");
                std::thread::sleep(Duration::from_millis(5));
            }
            handle
        })
        .clone()
}

fn config() -> ServerConfig {
    ServerConfig {
        model_id: MODEL.into(),
        api_keys: vec![KEY.into()],
        max_body_bytes: 64 << 10,
        ..ServerConfig::default()
    }
}

fn app_with(engine: EngineHandle, config: ServerConfig) -> Router {
    router(AppState::new(engine, config, Arc::new(Startup::new(Instant::now()))))
}

fn app() -> Router {
    app_with(engine(), config())
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {KEY}"))
        .body(body.into())
        .expect("request")
}

async fn send(app: Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app.oneshot(req).await.expect("the router answers");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

/// Ids and timestamps vary per response; everything else is the wire format.
fn normalize(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        if let Some(id) = o.get_mut("id") {
            let prefix = id.as_str().and_then(|s| s.split('-').next()).unwrap_or("").to_string();
            *id = json!(format!("{prefix}-[id]"));
        }
        if o.contains_key("created") {
            o.insert("created".into(), json!("[created]"));
        }
    }
    v
}

fn pretty(v: Value) -> String {
    serde_json::to_string_pretty(&normalize(v)).expect("json")
}

fn chat_body(extra: Value) -> String {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name the capital of France."}],
        "temperature": 0,
        "max_tokens": 12,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body.to_string()
}

#[tokio::test]
async fn chat_completion_json() {
    let (status, headers, body) = send(app(), post("/v1/chat/completions", chat_body(json!({})))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    insta::assert_snapshot!(pretty(serde_json::from_str(&body).expect("json")));
}

#[tokio::test]
async fn chat_completion_sse_frames() {
    let body = chat_body(json!({"stream": true, "stream_options": {"include_usage": true}, "max_tokens": 4}));
    let (status, headers, text) = send(app(), post("/v1/chat/completions", body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let frames: Vec<String> = text
        .split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| match f.strip_prefix("data: ") {
            Some("[DONE]") => "data: [DONE]".to_string(),
            Some(json) => format!("data: {}", normalize(serde_json::from_str(json).expect("frame is JSON"))),
            None => f.to_string(),
        })
        .collect();
    insta::assert_snapshot!(frames.join("\n"));
}

#[tokio::test]
async fn completion_json_with_echo() {
    let body =
        json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0, "echo": true});
    let (status, _, text) = send(app(), post("/v1/completions", body.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    insta::assert_snapshot!(pretty(serde_json::from_str(&text).expect("json")));
}

#[tokio::test]
async fn models_json() {
    let req = Request::get("/v1/models").header("authorization", format!("Bearer {KEY}")).body(Body::empty());
    let (status, _, text) = send(app(), req.expect("request")).await;
    assert_eq!(status, StatusCode::OK);
    let mut v: Value = serde_json::from_str(&text).expect("json");
    v["data"][0]["created"] = json!("[created]");
    insta::assert_snapshot!(serde_json::to_string_pretty(&v).expect("json"));
}

/// Every error answer: status, OpenAI body, and `Retry-After` where it applies.
#[tokio::test]
async fn error_shapes() {
    let mut out = Vec::new();
    let mut record = |name: &str, (status, headers, body): (StatusCode, axum::http::HeaderMap, String)| {
        let retry = headers.get("retry-after").map(|v| format!(" retry-after={}", v.to_str().unwrap_or("?")));
        out.push(format!("{name}: {status}{}\n{body}", retry.unwrap_or_default()));
    };
    record("invalid json", send(app(), post("/v1/chat/completions", "{\"model\":")).await);
    record("unknown field", send(app(), post("/v1/chat/completions", chat_body(json!({"colour": "blue"})))).await);
    let msg = json!({"messages": [{"role": "user", "content": "x", "colour": 1}]});
    record("unknown nested field", send(app(), post("/v1/chat/completions", chat_body(msg))).await);
    record("wrong type", send(app(), post("/v1/chat/completions", chat_body(json!({"max_tokens": "ten"})))).await);
    record("missing field", send(app(), post("/v1/chat/completions", json!({"model": MODEL}).to_string())).await);
    record("out of range", send(app(), post("/v1/chat/completions", chat_body(json!({"top_p": 0})))).await);
    record("unsupported", send(app(), post("/v1/chat/completions", chat_body(json!({"tools": []})))).await);
    record("context", send(app(), post("/v1/chat/completions", chat_body(json!({"max_tokens": 9000})))).await);
    record("unknown model", send(app(), post("/v1/chat/completions", chat_body(json!({"model": "gpt-4o"})))).await);
    let no_key = Request::post("/v1/chat/completions").body(Body::from(chat_body(json!({})))).expect("request");
    record("no key", send(app(), no_key).await);
    let wrong_key = Request::post("/v1/completions")
        .header("authorization", "Bearer sk-nope")
        .body(Body::from("{}"))
        .expect("request");
    record("wrong key", send(app(), wrong_key).await);
    record("too large", send(app(), post("/v1/chat/completions", vec![b' '; 70 << 10])).await);
    record("no route", send(app(), post("/v2/chat", "{}")).await);
    let get = Request::get("/v1/chat/completions").body(Body::empty()).expect("request");
    record("wrong method", send(app(), get).await);
    let limited = app_with(
        engine(),
        ServerConfig { rate_limits: RateLimits { requests_per_minute: Some(1), tokens_per_minute: None }, ..config() },
    );
    let one = chat_body(json!({"max_tokens": 1}));
    assert_eq!(send(limited.clone(), post("/v1/chat/completions", one.clone())).await.0, StatusCode::OK);
    record("rate limited", send(limited, post("/v1/chat/completions", one)).await);
    insta::assert_snapshot!(out.join("\n\n"));
}

/// An engine whose model loads only when the returned sender says so.
fn gated_engine() -> (EngineHandle, std::sync::mpsc::Sender<()>) {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let path = common::default_model_path();
    let handle = EngineHandle::spawn(
        move || {
            let _ = wait.recv();
            let options = EngineOptions { threads: 2, precision: Precision::Fast, ..EngineOptions::default() };
            Engine::load(&path, &options).map_err(|e| e.to_string())
        },
        WorkerConfig::default(),
    )
    .expect("spawn");
    (handle, release)
}

#[tokio::test]
async fn while_loading_probes_and_api_answer_503() {
    let (handle, release) = gated_engine();
    let app = app_with(handle.clone(), config());
    let get = |p: &str| Request::get(p).body(Body::empty()).expect("request");
    assert_eq!(send(app.clone(), get("/health")).await.0, StatusCode::OK);
    assert_eq!(send(app.clone(), get("/ready")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    let (status, headers, body) = send(app.clone(), post("/v1/chat/completions", chat_body(json!({})))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "5");
    assert!(body.contains("model_loading"), "{body}");
    let (_, _, metrics) = send(app.clone(), get("/metrics")).await;
    assert!(metrics.contains("realm_model_loaded 0"), "{metrics}");
    release.send(()).expect("release the loader");
    assert!(matches!(handle.loaded().await, LoadState::Ready(_)));
    assert_eq!(send(app.clone(), get("/ready")).await.0, StatusCode::OK);
    let (_, _, metrics) = send(app, get("/metrics")).await;
    assert!(metrics.contains("realm_model_loaded 1"), "{metrics}");
    assert!(metrics.contains("realm_startup_seconds{phase=\"ready\"}"), "{metrics}");
}

#[tokio::test]
async fn held_requests_wait_for_the_model() {
    let (handle, release) = gated_engine();
    let app = app_with(handle, ServerConfig { hold_while_loading: Some(Duration::from_secs(30)), ..config() });
    let pending = tokio::spawn(send(app, post("/v1/chat/completions", chat_body(json!({"max_tokens": 2})))));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending.is_finished(), "the request waits while the model loads");
    release.send(()).expect("release the loader");
    let (status, _, body) = pending.await.expect("join");
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
        (-3.0f64..3.0).prop_map(Value::from),
        "[a-z \\n\"\\\\{}]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::hash_map("[a-z_]{1,8}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 14] = [
    "model",
    "messages",
    "temperature",
    "top_p",
    "stop",
    "n",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
    "stream",
    "stream_options",
    "response_format",
    "presence_penalty",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_a_400_never_a_crash(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (status, _, body) = rt.block_on(send(app(), post("/v1/chat/completions", bytes)));
        prop_assert!(status.is_client_error(), "{status}: {body}");
        let v: Value = serde_json::from_str(&body).expect("errors are JSON");
        prop_assert!(v["error"]["message"].is_string());
    }

    #[test]
    fn mutated_requests_answer_200_or_a_named_400(field in 0..FIELDS.len(), value in json_value(), completions in any::<bool>()) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (path, mut body) = if completions {
            ("/v1/completions", json!({"model": MODEL, "prompt": "Hi", "max_tokens": 1}))
        } else {
            ("/v1/chat/completions", json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}))
        };
        body[FIELDS[field]] = value;
        let (status, _, text) = rt.block_on(send(app(), post(path, body.to_string())));
        prop_assert!(status == StatusCode::OK || status.is_client_error(), "{status}: {text} for {body}");
        if status != StatusCode::OK {
            let v: Value = serde_json::from_str(&text).expect("errors are JSON");
            prop_assert!(v["error"]["message"].is_string(), "{text}");
        }
    }
}

#[tokio::test]
async fn a_queued_stream_gets_keep_alive_comments() {
    let path = common::default_model_path();
    let options = EngineOptions { threads: 2, precision: Precision::Fast, ..EngineOptions::default() };
    let handle = EngineHandle::spawn(
        move || Engine::load(&path, &options).map_err(|e| e.to_string()),
        WorkerConfig { max_batch: 1, ..WorkerConfig::default() },
    )
    .expect("spawn");
    assert!(matches!(handle.loaded().await, LoadState::Ready(_)));
    let app = app_with(handle, ServerConfig { keep_alive: Duration::from_millis(20), ..config() });
    let long = chat_body(json!({"max_tokens": 150, "ignore_eos": true}));
    let first = tokio::spawn(send(app.clone(), post("/v1/chat/completions", long)));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let queued = chat_body(json!({"max_tokens": 2, "stream": true}));
    let (status, _, text) = send(app, post("/v1/chat/completions", queued)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(": keep-alive\n"), "no keep-alive while queued behind a long request:\n{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(first.await.expect("join").0, StatusCode::OK);
}
