//! `gs://bucket/object` objects through Google Cloud Storage's JSON API (objects.insert with
//! `uploadType=media`, or `multipart` for an empty object; objects.get with `alt=media` and a
//! `Range`; objects.get for metadata; objects.list), with the `google-cloud-storage` 0.24 crate.
//!
//! Where the bucket lives and how requests are authorised:
//!
//! - `STORAGE_EMULATOR_HOST` (`http://127.0.0.1:9023`, or a bare `host:port`), the variable
//!   Google's own client libraries read: requests go there, unauthenticated. This is how
//!   gcp-storage-emulator is reached.
//! - Otherwise `https://storage.googleapis.com` with Application Default Credentials:
//!   `GOOGLE_APPLICATION_CREDENTIALS` (a service account key or an authorized-user file; the
//!   crate's `external-account` feature, for workload identity federation, is not enabled),
//!   else gcloud's `application_default_credentials.json`, else the metadata server (Cloud Run,
//!   GKE, Compute Engine). They are looked up when the store is made; a token is fetched then
//!   and refreshed before it expires.
//!
//! Why this crate and not Google's official `google-cloud-storage` 1.x (which now holds the
//! name): 1.x reads objects only with the `x-goog-generation` header in the answer, which
//! gcp-storage-emulator never sends, and lists and reads metadata over gRPC only, which no
//! emulator installable here serves; so it could not be tested on any machine this project
//! runs on. The 0.x client speaks the JSON API for everything, which the emulator serves, on
//! reqwest 0.12 with rustls on ring (no aws-lc, no OpenSSL). It costs a second reqwest beside
//! the 0.13 the other stores use; see docs/batch.md for the weight.
//!
//! A missing object and a missing bucket both answer 404, and an emulator says no more than
//! that; so a 404 is followed by one objects.list of the bucket (which a reader's
//! `roles/storage.objectViewer` allows, unlike buckets.get) to tell them apart. Timeouts: a
//! connection must open and every read must return within `REALM_STORAGE_TIMEOUT_S`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use google_cloud_storage::client::{Client, ClientConfig};
use google_cloud_storage::http::Error;
use google_cloud_storage::http::objects::Object;
use google_cloud_storage::http::objects::download::Range;
use google_cloud_storage::http::objects::get::GetObjectRequest;
use google_cloud_storage::http::objects::list::ListObjectsRequest;
use google_cloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};

use crate::{ObjectMeta, StorageError, error_chain};

/// Where an emulator listens; set, requests go there without credentials.
pub const EMULATOR_HOST_ENV: &str = "STORAGE_EMULATOR_HOST";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The objects of one bucket.
#[derive(Clone)]
pub struct GcsStore {
    client: Arc<Client>,
    bucket: String,
    timeout: Duration,
}

impl std::fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the credentials.
        f.debug_struct("GcsStore").field("bucket", &self.bucket).finish_non_exhaustive()
    }
}

/// Why `bucket` cannot name a GCS bucket, if it cannot: GCS's naming rules (lowercase letters,
/// digits, `-`, `_` and `.`; a letter or digit at each end; 3 to 63 characters, or up to 222 in
/// dot-separated parts of at most 63). Checked here so that a typo is named as one, not
/// reported as a missing bucket or an HTTP 400.
fn bad_bucket_name(bucket: &str) -> Option<&'static str> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !bucket.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.')) {
        return Some("GCS bucket names hold only lowercase letters, digits, '-', '_' and '.'");
    }
    if !bucket.starts_with(alnum) || !bucket.ends_with(alnum) {
        return Some("GCS bucket names start and end with a lowercase letter or a digit");
    }
    let longest = if bucket.contains('.') { 222 } else { 63 };
    if bucket.len() < 3 || bucket.len() > longest || bucket.split('.').any(|part| part.len() > 63) {
        return Some("GCS bucket names are 3 to 63 characters long (222 in dot-separated parts of at most 63)");
    }
    None
}

/// The emulator's base URL from `STORAGE_EMULATOR_HOST`, which may leave out the scheme.
fn emulator_endpoint(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.contains("://") { host.to_string() } else { format!("http://{host}") }
}

/// The HTTP status of a failed call, when the store answered.
fn status(e: &Error) -> Option<u16> {
    match e {
        Error::Response(r) => Some(r.code),
        Error::HttpClient(e) | Error::RawResponse(e, _) => e.status().map(|s| s.as_u16()),
        _ => None,
    }
}

impl GcsStore {
    /// A client for `bucket`: the emulator `STORAGE_EMULATOR_HOST` names, or GCS with
    /// Application Default Credentials (see the module docs).
    pub async fn new(bucket: &str) -> Result<Self, StorageError> {
        if let Some(reason) = bad_bucket_name(bucket) {
            return Err(StorageError::BadUri { uri: format!("gs://{bucket}/"), reason: reason.to_string() });
        }
        let timeout = crate::request_timeout()?;
        let fail = |message: String| StorageError::Io { op: "configure", uri: format!("gs://{bucket}/"), message };
        let http = reqwest_012::Client::builder()
            .connect_timeout(timeout.min(CONNECT_TIMEOUT))
            .read_timeout(timeout)
            .build()
            .map_err(|e| fail(error_chain(&e)))?;
        let config = ClientConfig {
            http: Some(reqwest_middleware::ClientBuilder::new(http).build()),
            ..ClientConfig::default()
        };
        let config = match std::env::var(EMULATOR_HOST_ENV).ok().filter(|h| !h.trim().is_empty()) {
            Some(host) => ClientConfig { storage_endpoint: emulator_endpoint(&host), ..config }.anonymous(),
            // The auth crate's messages already hold their sources.
            None => config.with_auth().await.map_err(|e| {
                fail(format!(
                    "Application Default Credentials: {e} (set GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth \
                     application-default login` or run on Google Cloud; {EMULATOR_HOST_ENV} for an emulator)"
                ))
            })?,
        };
        Ok(Self { client: Arc::new(Client::new(config)), bucket: bucket.to_string(), timeout })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn uri(&self, key: &str) -> String {
        format!("gs://{}/{key}", self.bucket)
    }

    fn io(&self, op: &'static str, key: &str, message: String) -> StorageError {
        StorageError::Io { op, uri: self.uri(key), message }
    }

    fn missing_bucket(&self, op: &'static str, key: &str) -> StorageError {
        self.io(op, key, format!("no such bucket: {}", self.bucket))
    }

    /// A failed call on `key`: a 404 is a missing object unless the bucket is missing.
    async fn err(&self, op: &'static str, key: &str, e: Error) -> StorageError {
        if status(&e) != Some(404) {
            return self.io(op, key, error_chain(&e));
        }
        let probe = ListObjectsRequest { bucket: self.bucket.clone(), max_results: Some(1), ..Default::default() };
        match tokio::time::timeout(self.timeout, self.client.list_objects(&probe)).await {
            Ok(Err(e)) if status(&e) == Some(404) => self.missing_bucket(op, key),
            _ => StorageError::NotFound { uri: self.uri(key) },
        }
    }

    fn object(&self, key: &str) -> GetObjectRequest {
        GetObjectRequest { bucket: self.bucket.clone(), object: key.to_string(), ..Default::default() }
    }

    /// The object's bytes in `range`, each chunk of the body within the timeout. `None` when
    /// the range starts at or past the end (GCS answers 416).
    async fn download(&self, op: &'static str, key: &str, range: Range) -> Result<Option<Bytes>, StorageError> {
        let stream = match self.client.download_streamed_object(&self.object(key), &range).await {
            Ok(stream) => stream,
            Err(e) if status(&e) == Some(416) => return Ok(None),
            Err(e) => return Err(self.err(op, key, e).await),
        };
        let mut stream = std::pin::pin!(stream);
        let mut out = bytes::BytesMut::new();
        loop {
            match tokio::time::timeout(self.timeout, stream.next()).await {
                Ok(Some(Ok(chunk))) => out.extend_from_slice(&chunk),
                Ok(None) => return Ok(Some(out.freeze())),
                Ok(Some(Err(e))) => return Err(self.io("read", key, error_chain(&e))),
                Err(_) => return Err(self.io("read", key, format!("the body stalled for {:?}", self.timeout))),
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        Ok(self.download("get", key, Range::default()).await?.unwrap_or_default())
    }

    /// `len` bytes from offset `start` (fewer at the end of the object).
    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StorageError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        // HTTP ranges are inclusive at both ends (RFC 9110 §14.1.2).
        let range = Range(Some(start), Some(start.saturating_add(len - 1)));
        let bytes = self.download("get range", key, range).await?.unwrap_or_default();
        if bytes.len() as u64 > len {
            return Err(self.io(
                "get range",
                key,
                format!("asked for {len} bytes at {start}, the store sent {}", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    /// One single-request upload: GCS makes the new object visible whole or not at all.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StorageError> {
        let req = UploadObjectRequest { bucket: self.bucket.clone(), ..Default::default() };
        let upload = if body.is_empty() {
            // An empty object (a batch part's commit marker) goes up as a multipart upload:
            // gcp-storage-emulator drops the connection on a media upload with no body.
            let object = Object { name: key.to_string(), bucket: self.bucket.clone(), ..Default::default() };
            UploadType::Multipart(Box::new(object))
        } else {
            UploadType::Simple(Media { content_length: Some(body.len() as u64), ..Media::new(key.to_string()) })
        };
        match self.client.upload_object(&req, body, &upload).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(self.missing_bucket("put", key)),
            Err(e) => Err(self.io("put", key, error_chain(&e))),
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut req =
            ListObjectsRequest { bucket: self.bucket.clone(), prefix: Some(prefix.to_string()), ..Default::default() };
        let mut keys = Vec::new();
        loop {
            let page = match self.client.list_objects(&req).await {
                Ok(page) => page,
                Err(e) if status(&e) == Some(404) => return Err(self.missing_bucket("list", prefix)),
                Err(e) => return Err(self.io("list", prefix, error_chain(&e))),
            };
            keys.extend(page.items.unwrap_or_default().into_iter().map(|o| o.name));
            match page.next_page_token {
                Some(token) if !token.is_empty() => req.page_token = Some(token),
                _ => break,
            }
        }
        // GCS lists in UTF-8 binary order already; emulators may not.
        keys.sort();
        Ok(keys)
    }

    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        Ok(self.stat(key).await?.map(|m| m.size))
    }

    /// objects.get: size and generation (which changes whenever the content does).
    pub async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let object = match self.client.get_object(&self.object(key)).await {
            Ok(object) => object,
            Err(e) => {
                return match self.err("stat", key, e).await {
                    StorageError::NotFound { .. } => Ok(None),
                    other => Err(other),
                };
            }
        };
        let size = u64::try_from(object.size)
            .map_err(|_| self.io("stat", key, format!("the store reported a size of {}", object.size)))?;
        Ok(Some(ObjectMeta { size, version: Some(object.generation.to_string()) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_gcs_rules() {
        for good in ["abc", "realm-models", "my_bucket.example.com", "0a9"] {
            assert_eq!(bad_bucket_name(good), None, "{good}");
        }
        let long_part = format!("{}.com", "a".repeat(64));
        for bad in ["ab", "Models", "my bucket", "-abc", "abc-", "a!b", &"a".repeat(64), long_part.as_str()] {
            assert!(bad_bucket_name(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn emulator_host_may_leave_out_the_scheme() {
        assert_eq!(emulator_endpoint("127.0.0.1:9023"), "http://127.0.0.1:9023");
        assert_eq!(emulator_endpoint("http://127.0.0.1:9023/"), "http://127.0.0.1:9023");
        assert_eq!(emulator_endpoint("https://gcs.internal"), "https://gcs.internal");
    }
}
