//! Batch inference started by events: the batch runner ([`batch`]) over object stores, and the
//! job registry the HTTP server hands `POST /events` and `GET /v1/batches/{id}` to. Jobs are
//! named after their input and output, so a redelivered event (deliveries are at least once)
//! finds its job instead of starting another, and a restarted process resumes from the parts
//! already committed.

pub mod batch;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use realm_http::ApiError;
use realm_http::batches::Batches;
use realm_storage::{ObjectUri, Scheme};
use serde_json::{Value, json};

pub use batch::{BatchError, Counts, Job};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One job's OpenAI batch object, kept current while it runs.
#[derive(Debug, Clone)]
struct Status {
    id: String,
    input: String,
    output: String,
    trigger: String,
    state: &'static str,
    counts: Counts,
    created_at: u64,
    completed_at: Option<u64>,
    error: Option<String>,
}

impl Status {
    fn object(&self) -> Value {
        let done = self.state == "completed";
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": self.error.as_ref().map(|m| json!({"object": "list", "data": [{"code": "batch_failed", "message": m}]})),
            "input_file_id": self.input,
            "completion_window": "24h",
            "status": self.state,
            "output_file_id": done.then(|| format!("{}/output.jsonl", self.output.trim_end_matches('/'))),
            "error_file_id": done.then(|| format!("{}/errors.jsonl", self.output.trim_end_matches('/'))),
            "created_at": self.created_at,
            "in_progress_at": self.created_at,
            "completed_at": if done { self.completed_at } else { None },
            "failed_at": if self.state == "failed" { self.completed_at } else { None },
            "request_counts": self.counts,
            "metadata": {"trigger": self.trigger},
        })
    }
}

/// Jobs started by events in this process.
pub struct BatchJobs {
    router: OnceLock<Router>,
    /// `file://` inputs and outputs from events must lie under this directory; without it,
    /// events may name only object stores (a sender must not read or write the server's files).
    local_root: Option<PathBuf>,
    jobs: Mutex<HashMap<String, Arc<Mutex<Status>>>>,
}

impl BatchJobs {
    pub fn new(local_root: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self { router: OnceLock::new(), local_root, jobs: Mutex::new(HashMap::new()) })
    }

    /// The router lines are answered through (set once it exists: it holds these jobs).
    pub fn attach(&self, router: Router) {
        let _ = self.router.set(router);
    }

    fn allowed(&self, uri: &ObjectUri, field: &str) -> Result<(), ApiError> {
        if uri.scheme != Scheme::File {
            return Ok(());
        }
        match &self.local_root {
            Some(root) if std::path::Path::new(&uri.key).starts_with(root) && !uri.key.contains("/../") => Ok(()),
            _ => Err(ApiError::invalid(field, format!("{uri}: local files are not open to events on this server"))),
        }
    }
}

fn job_id(input: &str, output: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (input, output).hash(&mut h);
    format!("batch_{:016x}", h.finish())
}

impl Batches for BatchJobs {
    fn start(&self, input: &str, output: &str, trigger: &str) -> Result<Value, ApiError> {
        let parse = |text: &str, field: &str| {
            ObjectUri::parse(text).map_err(|e| ApiError::invalid(field.to_string(), e.to_string()))
        };
        let (input_uri, output_uri) = (parse(input, "input")?, parse(output, "output")?);
        self.allowed(&input_uri, "input")?;
        self.allowed(&output_uri, "output")?;
        let router = self.router.get().cloned().ok_or(ApiError::Loading { retry_after_s: 1 })?;
        let id = job_id(input, output);
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = jobs.get(&id) {
            let status = existing.lock().unwrap_or_else(|p| p.into_inner());
            // A redelivered event: the job already runs (or ran); a failed one starts again.
            if status.state != "failed" {
                return Ok(status.object());
            }
        }
        let status = Arc::new(Mutex::new(Status {
            id: id.clone(),
            input: input.to_string(),
            output: output.to_string(),
            trigger: trigger.to_string(),
            state: "in_progress",
            counts: Counts::default(),
            created_at: now(),
            completed_at: None,
            error: None,
        }));
        jobs.insert(id, status.clone());
        let object = status.lock().unwrap_or_else(|p| p.into_inner()).object();
        let job = Job { input: input_uri, output: output_uri };
        tokio::spawn(async move {
            let progress = {
                let status = status.clone();
                move |counts: Counts| status.lock().unwrap_or_else(|p| p.into_inner()).counts = counts
            };
            let result = batch::run(router, &job, progress).await;
            let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
            s.completed_at = Some(now());
            match result {
                Ok(counts) => {
                    s.counts = counts;
                    s.state = "completed";
                    tracing::info!(id = %s.id, completed = counts.completed, failed = counts.failed, "batch done");
                }
                Err(e) => {
                    tracing::error!(id = %s.id, error = %e, "batch failed");
                    s.state = "failed";
                    s.error = Some(e.to_string());
                }
            }
        });
        Ok(object)
    }

    fn get(&self, id: &str) -> Option<Value> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.get(id).map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).object())
    }
}
