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
}
