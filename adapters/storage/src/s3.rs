//! `s3://bucket/key` objects through the official AWS SDK (Amazon S3 API: GetObject, PutObject,
//! ListObjectsV2, HeadObject).
//!
//! Credentials and region come from aws-config's standard chain (environment, profile files,
//! web identity, ECS and EC2 metadata); a custom endpoint from `AWS_ENDPOINT_URL_S3` or
//! `AWS_ENDPOINT_URL`, which aws-config reads itself. S3-compatible stores that need path-style
//! addressing (MinIO, moto, Ceph) set `REALM_S3_FORCE_PATH_STYLE=true`. Retries are the SDK's
//! (`AWS_MAX_ATTEMPTS`, `AWS_RETRY_MODE`); a request the store does not answer within
//! `REALM_STORAGE_TIMEOUT_S` fails and is retried like any other.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use bytes::Bytes;

use crate::{ObjectMeta, StorageError};

/// Region used when the standard chain finds none: S3-compatible stores mostly ignore it, and
/// AWS's own environments (Lambda, ECS, EC2) always set one.
const FALLBACK_REGION: &str = "us-east-1";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const FORCE_PATH_STYLE_ENV: &str = "REALM_S3_FORCE_PATH_STYLE";

/// The objects of one bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// The read timeout, applied again to each chunk of a body (the SDK's covers the headers).
    timeout: Duration,
}

fn force_path_style(bucket: &str) -> Result<bool, StorageError> {
    let Ok(value) = std::env::var(FORCE_PATH_STYLE_ENV) else {
        return Ok(false);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" => Ok(false),
        "1" | "true" | "yes" => Ok(true),
        _ => Err(StorageError::Config {
            var: FORCE_PATH_STYLE_ENV,
            value,
            reason: format!("not true or false (for s3://{bucket}/)"),
        }),
    }
}

/// HTTP status of a failed call, when the service answered at all.
fn status<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

impl S3Store {
    /// A client for `bucket` from the standard AWS configuration chain. Loading reads the
    /// environment and profile files only; credentials are resolved on the first request.
    pub async fn new(bucket: &str) -> Result<Self, StorageError> {
        let path_style = force_path_style(bucket)?;
        let timeout = crate::request_timeout()?;
        // rustls on ring rather than the SDK's default aws-lc: same protocol, no C build.
        let http =
            aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let region = aws_config::meta::region::RegionProviderChain::default_provider().or_else(FALLBACK_REGION);
        let timeouts =
            TimeoutConfig::builder().connect_timeout(timeout.min(CONNECT_TIMEOUT)).read_timeout(timeout).build();
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .region(region)
            .timeout_config(timeouts)
            .load()
            .await;
        let config = aws_sdk_s3::config::Builder::from(&shared).force_path_style(path_style).build();
        Ok(Self { client: Client::from_conf(config), bucket: bucket.to_string(), timeout })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn err<E>(&self, op: &'static str, key: &str, e: SdkError<E>) -> StorageError
    where
        E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    {
        // A missing bucket is a configuration error, not a missing object (HeadObject answers a
        // bare 404 for both; GetObject and ListObjectsV2 say which).
        let code = e.as_service_error().and_then(|s| s.code());
        let not_found =
            code != Some("NoSuchBucket") && (status(&e) == Some(404) || matches!(code, Some("NoSuchKey" | "NotFound")));
        if not_found {
            return StorageError::NotFound { uri: self.uri(key) };
        }
        StorageError::Io { op, uri: self.uri(key), message: DisplayErrorContext(&e).to_string() }
    }

    async fn collect(&self, key: &str, body: ByteStream) -> Result<Bytes, StorageError> {
        let mut out = bytes::BytesMut::new();
        self.drain(key, body, &mut |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(out.freeze())
    }

    /// Hands each chunk of `body` to `sink` as it arrives; returns the bytes there were.
    async fn drain(
        &self,
        key: &str,
        mut body: ByteStream,
        sink: &mut crate::ChunkSink<'_>,
    ) -> Result<u64, StorageError> {
        let io = |message: String| StorageError::Io { op: "read", uri: self.uri(key), message };
        let mut total = 0u64;
        loop {
            match tokio::time::timeout(self.timeout, body.try_next()).await {
                Ok(Ok(Some(chunk))) => {
                    sink(&chunk)?;
                    total += chunk.len() as u64;
                }
                Ok(Ok(None)) => return Ok(total),
                Ok(Err(e)) => return Err(io(DisplayErrorContext(&e).to_string())),
                Err(_) => return Err(io(format!("the body stalled for {:?}", self.timeout))),
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let out =
            self.client.get_object().bucket(&self.bucket).key(key).send().await.map_err(|e| self.err("get", key, e))?;
        self.collect(key, out.body).await
    }

    /// `len` bytes from offset `start` (fewer at the end of the object).
    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StorageError> {
        let mut out = bytes::BytesMut::new();
        self.read_range(key, start, len, &mut |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(out.freeze())
    }

    /// [`S3Store::get_range`], each chunk handed to `sink` as it arrives; returns the bytes
    /// there were.
    pub async fn read_range(
        &self,
        key: &str,
        start: u64,
        len: u64,
        sink: &mut crate::ChunkSink<'_>,
    ) -> Result<u64, StorageError> {
        if len == 0 {
            return Ok(0);
        }
        // HTTP ranges are inclusive at both ends (RFC 9110 §14.1.2).
        let range = format!("bytes={start}-{}", start.saturating_add(len - 1));
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(range)
            .send()
            .await
            .map_err(|e| self.err("get range", key, e))?;
        let too_long = || StorageError::Io {
            op: "get range",
            uri: self.uri(key),
            message: format!("asked for {len} bytes at {start}, the store sent more"),
        };
        let mut seen = 0u64;
        self.drain(key, out.body, &mut |chunk| {
            seen += chunk.len() as u64;
            if seen > len { Err(too_long()) } else { sink(chunk) }
        })
        .await
    }

    /// One PutObject: S3 makes the new object visible whole or not at all.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.err("put", key, e))?;
        Ok(())
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("list", prefix, e))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        }
        // S3 lists in UTF-8 binary order already; S3-compatible stores may not.
        keys.sort();
        Ok(keys)
    }

    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        Ok(self.stat(key).await?.map(|m| m.size))
    }

    /// HeadObject: size and ETag.
    pub async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => {
                let len = out.content_length().unwrap_or(0);
                let size = u64::try_from(len).map_err(|_| StorageError::Io {
                    op: "stat",
                    uri: self.uri(key),
                    message: format!("the store reported a length of {len}"),
                })?;
                Ok(Some(ObjectMeta { size, version: out.e_tag().map(str::to_string) }))
            }
            Err(e) => match self.err("stat", key, e) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }
}
