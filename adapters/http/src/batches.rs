//! The seam to the batch runner (in `realm-events`, which builds on this crate): events start
//! jobs, `GET /v1/batches/{id}` reads their OpenAI batch objects.

use realm_functions::BatchRoute;
use serde_json::Value;

use crate::error::ApiError;

pub trait Batches: Send + Sync {
    /// Starts (or finds, for a repeated event) the job reading `input` and writing under
    /// `output`; `trigger` says what started it. Returns the batch object.
    fn start(&self, input: &str, output: &str, trigger: &str) -> Result<Value, ApiError>;
    fn get(&self, id: &str) -> Option<Value>;
}

/// What an object-created event asks for, after the function's routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    Job {
        input: String,
        output: String,
    },
    /// The object is a batch job's own output: starting a job on it would never end.
    OwnOutput,
    /// No route of the manifest's `triggers.batch` takes the object.
    NoRoute,
}

impl Routed {
    /// Why the object starts nothing, for the event's answer.
    pub fn reason(&self) -> &'static str {
        match self {
            Routed::Job { .. } => "",
            Routed::OwnOutput => "the object is a batch job's own output",
            Routed::NoRoute => "no route of the function's triggers.batch takes the object",
        }
    }
}

/// The job for object `key` of `bucket` (`scheme://bucket/key`), which an event of `kind` says
/// was created. Without routes every object starts one, writing beside itself under
/// `<object>.out/`; with routes the first whose prefix and events match decides where results
/// go, and objects under any route's output start nothing.
pub fn route(kind: &str, scheme: &str, bucket: &str, key: &str, routes: &[BatchRoute]) -> Routed {
    let input = format!("{scheme}://{bucket}/{key}");
    let beside = || format!("{input}.out/");
    let under_output = |r: &BatchRoute| match r.output.as_deref() {
        Some(o) if o.contains("://") => input.starts_with(&dir(o)),
        Some(o) => key.starts_with(&dir(o)),
        None => false,
    };
    if input.contains(".out/") || routes.iter().any(under_output) {
        return Routed::OwnOutput;
    }
    if routes.is_empty() {
        return Routed::Job { output: beside(), input };
    }
    let Some(r) = routes
        .iter()
        .find(|r| key.starts_with(&r.prefix) && (r.events.is_empty() || r.events.iter().any(|e| e == kind)))
    else {
        return Routed::NoRoute;
    };
    let rest = &key[r.prefix.len()..];
    let output = match r.output.as_deref() {
        None => beside(),
        Some(o) if o.contains("://") => format!("{}{rest}/", dir(o)),
        Some(o) => format!("{scheme}://{bucket}/{}{rest}/", dir(o)),
    };
    Routed::Job { input, output }
}

/// `prefix` as a folder: with one trailing `/`.
fn dir(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

/// The job a storage or batch event names. `dev.realm.batch.v1.requested` names its input and
/// output itself; storage events go through [`route`]. `None`: the type starts no job.
pub fn job_for_event(kind: &str, data: &Value, routes: &[BatchRoute]) -> Result<Option<Routed>, ApiError> {
    let text = |v: &Value, field: &str| -> Result<String, ApiError> {
        v.get(field).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string).ok_or_else(|| {
            ApiError::invalid(format!("data.{field}"), format!("the {kind} event has no `data.{field}` string"))
        })
    };
    let (scheme, bucket, key) = match kind {
        "dev.realm.batch.v1.requested" => {
            return Ok(Some(Routed::Job { input: text(data, "input")?, output: text(data, "output")? }));
        }
        "google.cloud.storage.object.v1.finalized" => ("gs", text(data, "bucket")?, text(data, "name")?),
        "Microsoft.Storage.BlobCreated" => {
            // https://<account>.blob.core.windows.net/<container>/<blob>
            let url = text(data, "url")?;
            let path =
                url.split_once("://").map(|(_, rest)| rest).and_then(|rest| rest.split_once('/')).map(|(_, p)| p);
            match path.and_then(|p| p.split_once('/')) {
                Some((container, blob)) if !container.is_empty() && !blob.is_empty() => {
                    ("az", container.to_string(), blob.to_string())
                }
                _ => {
                    return Err(ApiError::invalid("data.url", format!("{url:?} does not name a container and a blob")));
                }
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(route(kind, scheme, &bucket, &key, routes)))
}

/// A job an object-created event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectJob {
    pub input: String,
    pub output: String,
    /// The event type as a function manifest names it.
    pub kind: String,
}

/// Jobs named by AWS's S3 event shapes: an S3 notification (`Records`, as Lambda receives it)
/// or an EventBridge `Object Created` event; objects that [`route`] turns away are left out.
/// `None`: the JSON is neither.
pub fn aws_jobs(body: &Value, routes: &[BatchRoute]) -> Option<Result<Vec<ObjectJob>, ApiError>> {
    let object = |bucket: Option<&str>, key: Option<&str>, kind: &str| -> Result<Option<ObjectJob>, ApiError> {
        let (Some(bucket), Some(key)) = (bucket, key) else {
            return Err(ApiError::invalid("bucket", format!("the {kind} event names no bucket and key")));
        };
        match route(kind, "s3", bucket, &url_decode(key), routes) {
            Routed::Job { input, output } => Ok(Some(ObjectJob { input, output, kind: kind.to_string() })),
            other => {
                tracing::info!(bucket, key, reason = other.reason(), "object starts no batch job");
                Ok(None)
            }
        }
    };
    if let Some(records) = body.get("Records").and_then(Value::as_array) {
        let jobs = records
            .iter()
            .filter(|r| r.get("eventSource").and_then(Value::as_str) == Some("aws:s3"))
            .filter(|r| r.get("eventName").and_then(Value::as_str).is_some_and(|n| n.starts_with("ObjectCreated:")))
            .map(|r| {
                let s3 = r.get("s3");
                let bucket = s3.and_then(|s| s.pointer("/bucket/name")).and_then(Value::as_str);
                let key = s3.and_then(|s| s.pointer("/object/key")).and_then(Value::as_str);
                object(bucket, key, "aws.s3.ObjectCreated")
            })
            .filter_map(Result::transpose)
            .collect();
        return Some(jobs);
    }
    if body.get("source").and_then(Value::as_str) == Some("aws.s3")
        && body.get("detail-type").and_then(Value::as_str) == Some("Object Created")
    {
        let bucket = body.pointer("/detail/bucket/name").and_then(Value::as_str);
        let key = body.pointer("/detail/object/key").and_then(Value::as_str);
        return Some(object(bucket, key, "aws.eventbridge.ObjectCreated").map(|j| j.into_iter().collect()));
    }
    None
}

/// S3 event keys are URL-encoded, with `+` for a space.
fn url_decode(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const GCS: &str = "google.cloud.storage.object.v1.finalized";

    fn job(input: &str, output: &str) -> Option<Routed> {
        Some(Routed::Job { input: input.into(), output: output.into() })
    }

    #[test]
    fn storage_events_name_their_object_and_an_output_beside_it() {
        let gcs = job_for_event(GCS, &json!({"bucket": "b", "name": "in/x.jsonl"}), &[]);
        assert_eq!(gcs.expect("ok"), job("gs://b/in/x.jsonl", "gs://b/in/x.jsonl.out/"));
        let az = job_for_event(
            "Microsoft.Storage.BlobCreated",
            &json!({"url": "https://acct.blob.core.windows.net/jobs/a.jsonl"}),
            &[],
        );
        assert_eq!(az.expect("ok"), job("az://jobs/a.jsonl", "az://jobs/a.jsonl.out/"));
        let own = job_for_event(GCS, &json!({"bucket": "b", "name": "x.jsonl.out/part-00000.jsonl"}), &[]);
        assert_eq!(own.expect("ok"), Some(Routed::OwnOutput), "a job's own output starts nothing");
        let bad = job_for_event("dev.realm.batch.v1.requested", &json!({"input": "s3://a/b"}), &[]);
        assert_eq!(bad.expect_err("no output").param(), Some("data.output"));
        let no_blob = job_for_event(
            "Microsoft.Storage.BlobCreated",
            &json!({"url": "https://acct.blob.core.windows.net/jobs"}),
            &[],
        );
        assert_eq!(no_blob.expect_err("no blob").param(), Some("data.url"));
        assert_eq!(job_for_event("com.example.other", &json!({}), &[]).expect("ok"), None);
    }

    #[test]
    fn routes_pick_the_output_and_turn_away_other_objects() {
        let r = |prefix: &str, events: &[&str], output: Option<&str>| BatchRoute {
            prefix: prefix.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            output: output.map(str::to_string),
        };
        let routes = [
            r("incoming/", &["aws.s3.ObjectCreated"], Some("results")),
            r("incoming/", &[], Some("gs://archive/done/")),
            r("beside/", &[], None),
        ];
        let at = |kind, bucket, key| route(kind, "s3", bucket, key, &routes);
        assert_eq!(
            Some(at("aws.s3.ObjectCreated", "jobs", "incoming/day1/a.jsonl")),
            job("s3://jobs/incoming/day1/a.jsonl", "s3://jobs/results/day1/a.jsonl/"),
            "a relative output stays in the input's bucket"
        );
        assert_eq!(
            Some(at("aws.eventbridge.ObjectCreated", "jobs", "incoming/a.jsonl")),
            job("s3://jobs/incoming/a.jsonl", "gs://archive/done/a.jsonl/"),
            "the first route takes only its events; the next takes the rest"
        );
        assert_eq!(
            Some(at("aws.s3.ObjectCreated", "jobs", "beside/b.jsonl")),
            job("s3://jobs/beside/b.jsonl", "s3://jobs/beside/b.jsonl.out/")
        );
        assert_eq!(at("aws.s3.ObjectCreated", "jobs", "elsewhere/c.jsonl"), Routed::NoRoute);
        assert_eq!(at("aws.s3.ObjectCreated", "jobs", "results/day1/a.jsonl/output.jsonl"), Routed::OwnOutput);
        assert_eq!(route(GCS, "gs", "archive", "done/a.jsonl/output.jsonl", &routes), Routed::OwnOutput);
    }

    #[test]
    fn aws_s3_notifications_and_eventbridge_events() {
        let n = json!({"Records": [
            {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "in/my+file%2B1.jsonl"}}},
            {"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b"}, "object": {"key": "x"}}},
            {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "in/a.jsonl.out/part-00000.jsonl"}}}
        ]});
        let jobs = aws_jobs(&n, &[]).expect("an S3 notification").expect("valid");
        let want = ObjectJob {
            input: "s3://b/in/my file+1.jsonl".into(),
            output: "s3://b/in/my file+1.jsonl.out/".into(),
            kind: "aws.s3.ObjectCreated".into(),
        };
        assert_eq!(jobs, vec![want]);
        let eb = json!({"source": "aws.s3", "detail-type": "Object Created", "detail": {"bucket": {"name": "b"}, "object": {"key": "k.jsonl"}}});
        let jobs = aws_jobs(&eb, &[]).expect("an EventBridge event").expect("valid");
        assert_eq!(jobs[0].input, "s3://b/k.jsonl");
        assert!(aws_jobs(&json!({"model": "m"}), &[]).is_none());
        let broken = json!({"source": "aws.s3", "detail-type": "Object Created", "detail": {}});
        assert!(aws_jobs(&broken, &[]).expect("EventBridge").is_err());
    }
}
