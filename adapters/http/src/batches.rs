//! The seam to the batch runner (in `realm-events`, which builds on this crate): events start
//! jobs, `GET /v1/batches/{id}` reads their OpenAI batch objects.

use serde_json::Value;

use crate::error::ApiError;

pub trait Batches: Send + Sync {
    /// Starts (or finds, for a repeated event) the job reading `input` and writing under
    /// `output`; `trigger` says what started it. Returns the batch object.
    fn start(&self, input: &str, output: &str, trigger: &str) -> Result<Value, ApiError>;
    fn get(&self, id: &str) -> Option<Value>;
}

/// The input and output a storage or batch event names. Storage events write their results
/// beside the object, under `<object>.out/`; objects under such a folder start nothing, so a
/// job's own output never triggers another.
pub fn job_for_event(kind: &str, data: &Value) -> Result<Option<(String, String)>, ApiError> {
    let text = |v: &Value, field: &str| -> Result<String, ApiError> {
        v.get(field).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string).ok_or_else(|| {
            ApiError::invalid(format!("data.{field}"), format!("the {kind} event has no `data.{field}` string"))
        })
    };
    let input = match kind {
        "dev.realm.batch.v1.requested" => return Ok(Some((text(data, "input")?, text(data, "output")?))),
        "google.cloud.storage.object.v1.finalized" => format!("gs://{}/{}", text(data, "bucket")?, text(data, "name")?),
        "Microsoft.Storage.BlobCreated" => {
            // https://<account>.blob.core.windows.net/<container>/<blob>
            let url = text(data, "url")?;
            let path =
                url.split_once("://").map(|(_, rest)| rest).and_then(|rest| rest.split_once('/')).map(|(_, p)| p);
            match path {
                Some(p) if p.contains('/') => format!("az://{p}"),
                _ => {
                    return Err(ApiError::invalid("data.url", format!("{url:?} does not name a container and a blob")));
                }
            }
        }
        _ => return Ok(None),
    };
    if input.contains(".out/") {
        return Ok(None);
    }
    let output = format!("{input}.out/");
    Ok(Some((input, output)))
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
/// or an EventBridge `Object Created` event. `None`: the JSON is neither.
pub fn aws_jobs(body: &Value) -> Option<Result<Vec<ObjectJob>, ApiError>> {
    let object = |bucket: Option<&str>, key: Option<&str>, kind: &str| -> Result<Option<ObjectJob>, ApiError> {
        let (Some(bucket), Some(key)) = (bucket, key) else {
            return Err(ApiError::invalid("bucket", format!("the {kind} event names no bucket and key")));
        };
        let input = format!("s3://{bucket}/{}", url_decode(key));
        if input.contains(".out/") {
            return Ok(None);
        }
        Ok(Some(ObjectJob { output: format!("{input}.out/"), input, kind: kind.to_string() }))
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

    #[test]
    fn storage_events_name_their_object_and_an_output_beside_it() {
        let gcs =
            job_for_event("google.cloud.storage.object.v1.finalized", &json!({"bucket": "b", "name": "in/x.jsonl"}));
        assert_eq!(gcs.expect("ok"), Some(("gs://b/in/x.jsonl".into(), "gs://b/in/x.jsonl.out/".into())));
        let az = job_for_event(
            "Microsoft.Storage.BlobCreated",
            &json!({"url": "https://acct.blob.core.windows.net/jobs/a.jsonl"}),
        );
        assert_eq!(az.expect("ok"), Some(("az://jobs/a.jsonl".into(), "az://jobs/a.jsonl.out/".into())));
        let own = job_for_event(
            "google.cloud.storage.object.v1.finalized",
            &json!({"bucket": "b", "name": "x.jsonl.out/part-00000.jsonl"}),
        );
        assert_eq!(own.expect("ok"), None, "a job's own output starts nothing");
        let bad = job_for_event("dev.realm.batch.v1.requested", &json!({"input": "s3://a/b"}));
        assert_eq!(bad.expect_err("no output").param(), Some("data.output"));
        assert_eq!(job_for_event("com.example.other", &json!({})).expect("ok"), None);
    }

    #[test]
    fn aws_s3_notifications_and_eventbridge_events() {
        let n = json!({"Records": [
            {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "in/my+file%2B1.jsonl"}}},
            {"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b"}, "object": {"key": "x"}}},
            {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "in/a.jsonl.out/part-00000.jsonl"}}}
        ]});
        let jobs = aws_jobs(&n).expect("an S3 notification").expect("valid");
        let want = ObjectJob {
            input: "s3://b/in/my file+1.jsonl".into(),
            output: "s3://b/in/my file+1.jsonl.out/".into(),
            kind: "aws.s3.ObjectCreated".into(),
        };
        assert_eq!(jobs, vec![want]);
        let eb = json!({"source": "aws.s3", "detail-type": "Object Created", "detail": {"bucket": {"name": "b"}, "object": {"key": "k.jsonl"}}});
        let jobs = aws_jobs(&eb).expect("an EventBridge event").expect("valid");
        assert_eq!(jobs[0].input, "s3://b/k.jsonl");
        assert!(aws_jobs(&json!({"model": "m"})).is_none());
        let broken = json!({"source": "aws.s3", "detail-type": "Object Created", "detail": {}});
        assert!(aws_jobs(&broken).expect("EventBridge").is_err());
    }
}
