//! The batch runner: OpenAI's Batch file format over an object store.
//!
//! Input: JSONL lines `{custom_id, method, url, body}`. Output, under the output prefix:
//! `part-NNNNN.jsonl` (answered lines: `{id, custom_id, response: {status_code, request_id,
//! body}, error: null}`), `part-NNNNN.errors.jsonl` (lines that could not be answered, or were
//! answered with an error status), then `part-NNNNN.commit`, written last. A part without its
//! commit marker never happened: a restarted job reads the committed parts, skips the
//! `custom_id`s they hold and writes new parts after them, so a crash loses nothing and repeats
//! nothing. When every line is done, `output.jsonl` and `errors.jsonl` gather the parts.
//!
//! Every line goes through the same router as HTTP requests, all at once up to a bound, so the
//! engine batches them at full width.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http_body_util::BodyExt;
use realm_http::auth::Internal;
use realm_storage::{ObjectUri, StorageError, Store, retry_io};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Lines in flight at once: enough to fill the engine's batch several times over.
const IN_FLIGHT: usize = 64;
/// A part is written after this many finished lines, or this long after its first.
const PART_LINES: usize = 64;
const PART_AGE: Duration = Duration::from_secs(2);
/// Overload (429) and loading (503) answers are retried this many times, backing off.
const RETRIES: u32 = 30;
/// Attempts per object-store call: a job must outlast a short outage, not fail with its work
/// done.
const STORE_ATTEMPTS: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the input {uri} is not UTF-8 text")]
    NotText { uri: String },
}

/// Where a job reads and writes, and what it has done so far.
#[derive(Debug, Clone)]
pub struct Job {
    pub input: ObjectUri,
    /// The output prefix; part and summary files go under it.
    pub output: ObjectUri,
}

/// Running totals, updated as parts commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub total: usize,
    pub completed: usize,
    pub failed: usize,
}

#[derive(Deserialize)]
struct InputLine {
    custom_id: Option<Value>,
    method: Option<String>,
    url: Option<String>,
    body: Option<Value>,
}

/// One finished line: for the output file or the error file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OutputLine {
    id: String,
    custom_id: Option<String>,
    response: Option<Value>,
    error: Option<Value>,
}

enum Work {
    Run { custom_id: String, url: String, body: Value },
    Refuse(OutputLine),
}

async fn put(out: &Store, key: &str, body: Bytes) -> Result<(), StorageError> {
    retry_io("put", STORE_ATTEMPTS, || out.put(key, body.clone())).await
}

async fn get(store: &Store, key: &str) -> Result<Bytes, StorageError> {
    retry_io("get", STORE_ATTEMPTS, || store.get(key)).await
}

async fn list(store: &Store, prefix: &str) -> Result<Vec<String>, StorageError> {
    retry_io("list", STORE_ATTEMPTS, || store.list(prefix)).await
}

fn key_of(prefix: &ObjectUri, name: &str) -> String {
    let base = prefix.key.trim_end_matches('/');
    if base.is_empty() { name.to_string() } else { format!("{base}/{name}") }
}

fn part_name(n: usize, suffix: &str) -> String {
    format!("part-{n:05}{suffix}")
}

fn error_line(line_no: usize, custom_id: Option<String>, code: &str, message: String) -> OutputLine {
    OutputLine {
        id: format!("batch_req_line_{line_no}"),
        custom_id,
        response: None,
        error: Some(json!({"code": code, "message": message, "line": line_no})),
    }
}

/// Parses the input into work, refusing bad lines (and repeated `custom_id`s) one by one.
fn plan(text: &str, done: &HashSet<String>) -> (Vec<Work>, usize) {
    let mut seen = HashSet::new();
    let mut work = Vec::new();
    let mut total = 0;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        total += 1;
        let parsed: InputLine = match serde_json::from_str(raw) {
            Ok(l) => l,
            Err(e) => {
                let id = format!("line-{line_no}");
                if !done.contains(&id) {
                    work.push(Work::Refuse(error_line(
                        line_no,
                        Some(id),
                        "invalid_json",
                        format!("line {line_no}: {e}"),
                    )));
                }
                continue;
            }
        };
        let custom_id = match parsed.custom_id {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => {
                let id = format!("line-{line_no}");
                if !done.contains(&id) {
                    let msg = format!("line {line_no}: `custom_id` must be a non-empty string");
                    work.push(Work::Refuse(error_line(line_no, Some(id), "missing_custom_id", msg)));
                }
                continue;
            }
        };
        if !seen.insert(custom_id.clone()) {
            let id = format!("line-{line_no}");
            if !done.contains(&id) {
                let msg = format!("line {line_no}: custom_id {custom_id:?} repeats an earlier line");
                work.push(Work::Refuse(error_line(line_no, Some(id), "duplicate_custom_id", msg)));
            }
            continue;
        }
        if done.contains(&custom_id) {
            continue;
        }
        let refuse = |code: &str, msg: String| Work::Refuse(error_line(line_no, Some(custom_id.clone()), code, msg));
        let url = parsed.url.unwrap_or_default();
        if !matches!(url.as_str(), "/v1/chat/completions" | "/v1/completions") {
            work.push(refuse(
                "invalid_url",
                format!("line {line_no}: url {url:?} is not /v1/chat/completions or /v1/completions"),
            ));
            continue;
        }
        if parsed.method.as_deref() != Some("POST") {
            work.push(refuse("invalid_method", format!("line {line_no}: method must be POST")));
            continue;
        }
        match parsed.body {
            Some(body @ Value::Object(_)) if body.get("stream") == Some(&Value::Bool(true)) => {
                work.push(refuse("invalid_body", format!("line {line_no}: streaming is not available in a batch")));
            }
            Some(body @ Value::Object(_)) => work.push(Work::Run { custom_id, url, body }),
            _ => work.push(refuse("invalid_body", format!("line {line_no}: `body` must be a JSON object"))),
        }
    }
    (work, total)
}

/// Runs (or resumes) a job to the end and returns its counts.
pub async fn run(router: Router, job: &Job, on_progress: impl Fn(Counts) + Send + Sync) -> Result<Counts, BatchError> {
    let input_store = Store::for_uri(&job.input).await?;
    let out = Store::for_uri(&job.output).await?;
    let bytes = get(&input_store, &job.input.key).await?;
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| BatchError::NotText { uri: job.input.to_string() })?;

    let (done, mut counts, mut next_part) = committed(&out, &job.output).await?;
    let (work, total) = plan(&text, &done);
    counts.total = total;
    on_progress(counts);
    tracing::info!(input = %job.input, output = %job.output, total, already_done = done.len(), "batch job");

    let mut pending: Vec<OutputLine> = Vec::new();
    let mut pending_since = Instant::now();
    let router = Arc::new(router);
    let mut queue = work.into_iter();
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < IN_FLIGHT {
            match queue.next() {
                Some(Work::Refuse(line)) => pending.push(line),
                Some(Work::Run { custom_id, url, body }) => running.push(answer(router.clone(), custom_id, url, body)),
                None => break,
            }
        }
        let Some(line) = running.next().await else { break };
        if pending.is_empty() {
            pending_since = Instant::now();
        }
        pending.push(line);
        if pending.len() >= PART_LINES || pending_since.elapsed() >= PART_AGE {
            commit(&out, &job.output, next_part, &mut pending, &mut counts).await?;
            next_part += 1;
            on_progress(counts);
        }
    }
    if !pending.is_empty() {
        commit(&out, &job.output, next_part, &mut pending, &mut counts).await?;
        on_progress(counts);
    }
    gather(&out, &job.output).await?;
    Ok(counts)
}

/// The `custom_id`s in committed parts, the counts so far and the next part number.
async fn committed(out: &Store, prefix: &ObjectUri) -> Result<(HashSet<String>, Counts, usize), BatchError> {
    let mut done = HashSet::new();
    let mut counts = Counts::default();
    let mut next = 0;
    let listed = list(out, &key_of(prefix, "part-")).await?;
    for key in listed.iter().filter(|k| k.ends_with(".commit")) {
        let stem = key.trim_end_matches(".commit");
        let n: usize = stem.rsplit("part-").next().and_then(|d| d.parse().ok()).unwrap_or(0);
        next = next.max(n + 1);
        for (suffix, failed) in [(".jsonl", false), (".errors.jsonl", true)] {
            let body = match get(out, &format!("{stem}{suffix}")).await {
                Ok(b) => b,
                Err(StorageError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            for line in String::from_utf8_lossy(&body).lines().filter(|l| !l.is_empty()) {
                if let Ok(l) = serde_json::from_str::<OutputLine>(line) {
                    done.insert(l.custom_id.unwrap_or(l.id));
                    if failed { counts.failed += 1 } else { counts.completed += 1 }
                }
            }
        }
    }
    Ok((done, counts, next))
}

/// Writes a part's two files, then its marker.
async fn commit(
    out: &Store,
    prefix: &ObjectUri,
    n: usize,
    lines: &mut Vec<OutputLine>,
    counts: &mut Counts,
) -> Result<(), BatchError> {
    let (ok, failed): (Vec<_>, Vec<_>) = lines.drain(..).partition(|l| l.error.is_none());
    let to_jsonl = |lines: &[OutputLine]| -> Bytes {
        let mut s = String::new();
        for l in lines {
            s.push_str(&serde_json::to_string(l).unwrap_or_default());
            s.push('\n');
        }
        Bytes::from(s)
    };
    put(out, &key_of(prefix, &part_name(n, ".jsonl")), to_jsonl(&ok)).await?;
    put(out, &key_of(prefix, &part_name(n, ".errors.jsonl")), to_jsonl(&failed)).await?;
    put(out, &key_of(prefix, &part_name(n, ".commit")), Bytes::from_static(b"")).await?;
    counts.completed += ok.len();
    counts.failed += failed.len();
    Ok(())
}

/// `output.jsonl` and `errors.jsonl`: the committed parts, in order.
async fn gather(out: &Store, prefix: &ObjectUri) -> Result<(), BatchError> {
    let listed = list(out, &key_of(prefix, "part-")).await?;
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for key in listed.iter().filter(|k| k.ends_with(".commit")) {
        let stem = key.trim_end_matches(".commit");
        for (suffix, into) in [(".jsonl", &mut results), (".errors.jsonl", &mut errors)] {
            match get(out, &format!("{stem}{suffix}")).await {
                Ok(b) => into.extend_from_slice(&b),
                Err(StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    put(out, &key_of(prefix, "output.jsonl"), Bytes::from(results)).await?;
    put(out, &key_of(prefix, "errors.jsonl"), Bytes::from(errors)).await?;
    Ok(())
}

/// One line through the router, retried while the server is overloaded or loading.
async fn answer(router: Arc<Router>, custom_id: String, url: String, body: Value) -> OutputLine {
    let payload = body.to_string();
    let mut delay = Duration::from_millis(50);
    for attempt in 0..=RETRIES {
        let request = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header("content-type", "application/json")
            .extension(Internal)
            .body(Body::from(payload.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => return error_line(0, Some(custom_id), "invalid_request", e.to_string()),
        };
        let response = match (*router).clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let retryable = status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
        if retryable && attempt < RETRIES {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            continue;
        }
        let bytes = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body: Value =
            serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        let request_id = body.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let response = json!({"status_code": status.as_u16(), "request_id": request_id, "body": body});
        let error = (!status.is_success()).then(|| {
            let message = body.pointer("/error/message").and_then(Value::as_str).unwrap_or("request failed");
            json!({"code": status.as_u16().to_string(), "message": message})
        });
        return OutputLine {
            id: format!("batch_req_{custom_id}"),
            custom_id: Some(custom_id),
            response: Some(response),
            error,
        };
    }
    error_line(0, Some(custom_id), "unavailable", "the server stayed overloaded".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_refuses_bad_lines_one_by_one_and_skips_done_ones() {
        let input = [
            r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#,
            "not json",
            r#"{"method":"POST","url":"/v1/completions","body":{}}"#,
            r#"{"custom_id":"a","method":"POST","url":"/v1/completions","body":{}}"#,
            r#"{"custom_id":"b","method":"GET","url":"/v1/completions","body":{}}"#,
            r#"{"custom_id":"c","method":"POST","url":"/v1/embeddings","body":{}}"#,
            r#"{"custom_id":"d","method":"POST","url":"/v1/completions","body":{"stream":true}}"#,
            r#"{"custom_id":"e","method":"POST","url":"/v1/completions","body":{"prompt":"x"}}"#,
            "",
        ]
        .join("\n");
        let (work, total) = plan(&input, &HashSet::from(["e".to_string()]));
        assert_eq!(total, 8);
        let refused: Vec<String> = work
            .iter()
            .filter_map(|w| match w {
                Work::Refuse(l) => l.error.as_ref().and_then(|e| e["code"].as_str()).map(str::to_string),
                Work::Run { .. } => None,
            })
            .collect();
        assert_eq!(
            refused,
            [
                "invalid_json",
                "missing_custom_id",
                "duplicate_custom_id",
                "invalid_method",
                "invalid_url",
                "invalid_body"
            ]
        );
        let runs = work.iter().filter(|w| matches!(w, Work::Run { .. })).count();
        assert_eq!(runs, 1, "a runs; e was done before");
    }
}
