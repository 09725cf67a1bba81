//! `https://host/path` objects: read-only, through plain GET and HEAD with byte ranges (a model
//! on a CDN, a release asset, a presigned URL whose query string is part of the key).
//!
//! TLS is rustls with the platform's trust store (`SSL_CERT_FILE` and `SSL_CERT_DIR` where set);
//! a server that ignores `Range` still works, at the cost of reading the whole object per range.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{StatusCode, header};

use crate::{ObjectMeta, StorageError, error_chain};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The objects of one host.
#[derive(Debug, Clone)]
pub struct HttpsStore {
    client: reqwest::Client,
    host: String,
    timeout: Duration,
}

impl HttpsStore {
    pub fn new(host: &str) -> Result<Self, StorageError> {
        crate::install_crypto_provider();
        let timeout = crate::request_timeout()?;
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(CONNECT_TIMEOUT))
            .read_timeout(timeout)
            .https_only(true)
            .build()
            .map_err(|e| StorageError::Io {
                op: "configure",
                uri: format!("https://{host}/"),
                message: error_chain(&e),
            })?;
        Ok(Self { client, host: host.to_string(), timeout })
    }

    fn url(&self, key: &str) -> String {
        format!("https://{}/{key}", self.host)
    }

    fn io(&self, op: &'static str, key: &str, message: String) -> StorageError {
        StorageError::Io { op, uri: self.url(key), message }
    }

    async fn send(
        &self,
        op: &'static str,
        key: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StorageError> {
        let resp = req.send().await.map_err(|e| self.io(op, key, error_chain(&e)))?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::RANGE_NOT_SATISFIABLE => Ok(resp),
            StatusCode::NOT_FOUND | StatusCode::GONE => Err(StorageError::NotFound { uri: self.url(key) }),
            s => Err(self.io(op, key, format!("the server answered {s}"))),
        }
    }

    /// The body, each chunk within the timeout.
    async fn collect(&self, key: &str, mut resp: reqwest::Response) -> Result<Bytes, StorageError> {
        let mut out = bytes::BytesMut::new();
        loop {
            match tokio::time::timeout(self.timeout, resp.chunk()).await {
                Ok(Ok(Some(chunk))) => out.extend_from_slice(&chunk),
                Ok(Ok(None)) => return Ok(out.freeze()),
                Ok(Err(e)) => return Err(self.io("read", key, error_chain(&e))),
                Err(_) => return Err(self.io("read", key, format!("the body stalled for {:?}", self.timeout))),
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let resp = self.send("get", key, self.client.get(self.url(key))).await?;
        self.collect(key, resp).await
    }

    /// `len` bytes from offset `start` (fewer at the end of the object).
    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StorageError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        // HTTP ranges are inclusive at both ends (RFC 9110 §14.1.2).
        let range = format!("bytes={start}-{}", start.saturating_add(len - 1));
        let resp = self.send("get range", key, self.client.get(self.url(key)).header(header::RANGE, range)).await?;
        let status = resp.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(Bytes::new());
        }
        let body = self.collect(key, resp).await?;
        if status == StatusCode::PARTIAL_CONTENT {
            if body.len() as u64 > len {
                return Err(self.io("get range", key, format!("asked for {len} bytes at {start}, got {}", body.len())));
            }
            return Ok(body);
        }
        // A 200: the server sent the whole object.
        let from = usize::try_from(start).unwrap_or(usize::MAX).min(body.len());
        let to = usize::try_from(start.saturating_add(len)).unwrap_or(usize::MAX).min(body.len());
        Ok(body.slice(from..to))
    }

    /// HEAD: the length, and the ETag (or Last-Modified) as the version.
    pub async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let resp = match self.send("stat", key, self.client.head(self.url(key))).await {
            Ok(r) => r,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let text =
            |name: header::HeaderName| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let size = text(header::CONTENT_LENGTH)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| self.io("stat", key, "the server gave no Content-Length".into()))?;
        Ok(Some(ObjectMeta { size, version: text(header::ETAG).or_else(|| text(header::LAST_MODIFIED)) }))
    }

    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        Ok(self.stat(key).await?.map(|m| m.size))
    }

    pub async fn put(&self, key: &str, _body: Bytes) -> Result<(), StorageError> {
        Err(self.io("put", key, "https:// objects are read-only (write to s3://, gs://, az:// or a path)".into()))
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Err(self.io("list", prefix, "https:// has no listing (write to s3://, gs://, az:// or a path)".into()))
    }
}
