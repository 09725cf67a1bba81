//! Realm's object-store seam. An [`ObjectUri`] names an object (`s3://bucket/key`,
//! `gs://bucket/key`, `az://container/blob`, `https://host/path`, `file:///path` or a plain
//! path); a [`Store`] reads and writes the objects of one bucket (or one directory). Cloud
//! backends sit behind cargo features; a URI whose backend is not compiled in is a clear error.
//! [`fetch_model`] brings a model object into the local model cache.

#[cfg(feature = "azure")]
mod azure;
mod cache;
#[cfg(feature = "gcs")]
mod gcs;
#[cfg(feature = "https")]
mod https;
mod local;
#[cfg(feature = "s3")]
mod s3;
mod uri;

use std::time::Duration;

use bytes::Bytes;

#[cfg(feature = "azure")]
pub use azure::{ACCOUNT_ENV as AZURE_ACCOUNT_ENV, AzureStore, CONNECTION_STRING_ENV as AZURE_CONNECTION_STRING_ENV};
pub use cache::{FetchOptions, Fetched, cache_path, fetch_model, fetch_model_with};
#[cfg(feature = "gcs")]
pub use gcs::{EMULATOR_HOST_ENV as GCS_EMULATOR_HOST_ENV, GcsStore};
#[cfg(feature = "https")]
pub use https::HttpsStore;
pub use local::LocalStore;
#[cfg(feature = "s3")]
pub use s3::{FORCE_PATH_STYLE_ENV, S3Store};
pub use uri::{ObjectUri, Scheme};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{uri:?} is not an object URI: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("{uri}: no such object")]
    NotFound { uri: String },
    #[error("{scheme}:// objects need the `{feature}` cargo feature, which this build lacks")]
    NotCompiled { scheme: &'static str, feature: &'static str },
    #[error("{uri}: sha256 is {actual}, expected {expected}")]
    Checksum { uri: String, expected: String, actual: String },
    #[error("{op} {uri}: {message}")]
    Io { op: &'static str, uri: String, message: String },
    #[error("{var}={value:?}: {reason}")]
    Config { var: &'static str, value: String, reason: String },
}

/// Seconds a store call may wait for the store to answer, or for the next bytes of a body,
/// before it fails (and is retried): a stalled connection must not hang a download or a job.
pub const TIMEOUT_ENV: &str = "REALM_STORAGE_TIMEOUT_S";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The timeout [`TIMEOUT_ENV`] sets, or 30 s.
pub fn request_timeout() -> Result<Duration, StorageError> {
    let Ok(value) = std::env::var(TIMEOUT_ENV) else {
        return Ok(DEFAULT_TIMEOUT);
    };
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(StorageError::Config {
            var: TIMEOUT_ENV,
            value,
            reason: "not a number of seconds between 0 and 86400".into(),
        }),
    }
}

/// `call`, tried again while it fails with an I/O error, `attempts` times in all, waiting
/// 200 ms and twice as long each time after (at most 5 s). The SDKs retry a failed request a
/// few times themselves; this also outlasts a longer outage or a body that breaks off. A missing
/// object or a bad URI is returned at once: waiting will not change it.
pub async fn retry_io<T, F: Future<Output = Result<T, StorageError>>>(
    what: &str,
    attempts: u32,
    mut call: impl FnMut() -> F,
) -> Result<T, StorageError> {
    const FIRST_DELAY: Duration = Duration::from_millis(200);
    const MAX_DELAY: Duration = Duration::from_secs(5);
    let mut delay = FIRST_DELAY;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e @ StorageError::Io { .. }) if attempt < attempts => {
                tracing::warn!(what, attempt, error = %e, "object store call failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_DELAY);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The error and its sources, which is where reqwest says what went wrong.
#[cfg(any(feature = "https", feature = "gcs"))]
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Where [`Store::read_range`] puts each part of a range, in order.
pub type ChunkSink<'a> = dyn FnMut(&[u8]) -> Result<(), StorageError> + Send + 'a;

/// What a store says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    /// Changes whenever the object's content does (S3's ETag; a file's modification time), so
    /// a resumed download can tell the object it started from; `None` when the store has none.
    pub version: Option<String>,
}

/// The objects under one root: a bucket, a container or a directory.
#[derive(Debug, Clone)]
pub enum Store {
    Local(LocalStore),
    #[cfg(feature = "s3")]
    S3(S3Store),
    #[cfg(feature = "gcs")]
    Gcs(GcsStore),
    #[cfg(feature = "azure")]
    Azure(AzureStore),
    #[cfg(feature = "https")]
    Https(HttpsStore),
}

/// Makes ring rustls's process-wide crypto provider unless one is set already: the cloud SDKs'
/// reqwest clients are built with rustls but no provider of their own (see the workspace
/// Cargo.toml), so that aws-lc is not compiled in.
#[cfg(any(feature = "azure", feature = "https"))]
fn install_crypto_provider() {
    // An error only says that a provider is installed already, which is all this needs.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Store {
    /// The store that holds `uri`'s objects.
    pub async fn for_uri(uri: &ObjectUri) -> Result<Store, StorageError> {
        match uri.scheme {
            Scheme::File => Ok(Store::Local(LocalStore::new(uri.root()))),
            #[cfg(feature = "s3")]
            Scheme::S3 => Ok(Store::S3(S3Store::new(&uri.bucket).await?)),
            #[cfg(not(feature = "s3"))]
            Scheme::S3 => Err(StorageError::NotCompiled { scheme: "s3", feature: "s3" }),
            #[cfg(feature = "gcs")]
            Scheme::Gs => Ok(Store::Gcs(GcsStore::new(&uri.bucket).await?)),
            #[cfg(not(feature = "gcs"))]
            Scheme::Gs => Err(StorageError::NotCompiled { scheme: "gs", feature: "gcs" }),
            #[cfg(feature = "azure")]
            Scheme::Az => Ok(Store::Azure(AzureStore::new(&uri.bucket)?)),
            #[cfg(not(feature = "azure"))]
            Scheme::Az => Err(StorageError::NotCompiled { scheme: "az", feature: "azure" }),
            #[cfg(feature = "https")]
            Scheme::Https => Ok(Store::Https(HttpsStore::new(&uri.bucket)?)),
            #[cfg(not(feature = "https"))]
            Scheme::Https => Err(StorageError::NotCompiled { scheme: "https", feature: "https" }),
        }
    }

    /// The whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        match self {
            Store::Local(s) => s.get(key).await,
            #[cfg(feature = "s3")]
            Store::S3(s) => s.get(key).await,
            #[cfg(feature = "gcs")]
            Store::Gcs(s) => s.get(key).await,
            #[cfg(feature = "azure")]
            Store::Azure(s) => s.get(key).await,
            #[cfg(feature = "https")]
            Store::Https(s) => s.get(key).await,
        }
    }

    /// Writes the object whole; readers see the old object or the new one, never a part.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StorageError> {
        match self {
            Store::Local(s) => s.put(key, body).await,
            #[cfg(feature = "s3")]
            Store::S3(s) => s.put(key, body).await,
            #[cfg(feature = "gcs")]
            Store::Gcs(s) => s.put(key, body).await,
            #[cfg(feature = "azure")]
            Store::Azure(s) => s.put(key, body).await,
            #[cfg(feature = "https")]
            Store::Https(s) => s.put(key, body).await,
        }
    }

    /// Keys that start with `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        match self {
            Store::Local(s) => s.list(prefix).await,
            #[cfg(feature = "s3")]
            Store::S3(s) => s.list(prefix).await,
            #[cfg(feature = "gcs")]
            Store::Gcs(s) => s.list(prefix).await,
            #[cfg(feature = "azure")]
            Store::Azure(s) => s.list(prefix).await,
            #[cfg(feature = "https")]
            Store::Https(s) => s.list(prefix).await,
        }
    }

    /// The object's size, or `None` when it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self {
            Store::Local(s) => s.size(key).await,
            #[cfg(feature = "s3")]
            Store::S3(s) => s.size(key).await,
            #[cfg(feature = "gcs")]
            Store::Gcs(s) => s.size(key).await,
            #[cfg(feature = "azure")]
            Store::Azure(s) => s.size(key).await,
            #[cfg(feature = "https")]
            Store::Https(s) => s.size(key).await,
        }
    }

    /// `len` bytes from offset `start`; fewer when the object ends first.
    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StorageError> {
        match self {
            Store::Local(s) => s.get_range(key, start, len).await,
            #[cfg(feature = "s3")]
            Store::S3(s) => s.get_range(key, start, len).await,
            #[cfg(feature = "gcs")]
            Store::Gcs(s) => s.get_range(key, start, len).await,
            #[cfg(feature = "azure")]
            Store::Azure(s) => s.get_range(key, start, len).await,
            #[cfg(feature = "https")]
            Store::Https(s) => s.get_range(key, start, len).await,
        }
    }

    /// [`Store::get_range`], each part handed to `sink` in order as it arrives (S3 streams
    /// the body chunk by chunk; the other stores hand over their whole range at once); returns
    /// the bytes there were. A download written this way never holds a range in memory.
    pub async fn read_range(
        &self,
        key: &str,
        start: u64,
        len: u64,
        sink: &mut ChunkSink<'_>,
    ) -> Result<u64, StorageError> {
        #[cfg(feature = "s3")]
        if let Store::S3(s) = self {
            return s.read_range(key, start, len, sink).await;
        }
        let bytes = self.get_range(key, start, len).await?;
        sink(&bytes)?;
        Ok(bytes.len() as u64)
    }

    /// Size and version of the object, or `None` when it does not exist.
    pub async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        match self {
            Store::Local(s) => s.stat(key).await,
            #[cfg(feature = "s3")]
            Store::S3(s) => s.stat(key).await,
            #[cfg(feature = "gcs")]
            Store::Gcs(s) => s.stat(key).await,
            #[cfg(feature = "azure")]
            Store::Azure(s) => s.stat(key).await,
            #[cfg(feature = "https")]
            Store::Https(s) => s.stat(key).await,
        }
    }
}
