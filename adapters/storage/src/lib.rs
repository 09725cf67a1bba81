//! Realm's object-store seam. An [`ObjectUri`] names an object (`s3://bucket/key`,
//! `gs://bucket/key`, `az://container/blob`, `https://host/path`, `file:///path` or a plain
//! path); a [`Store`] reads and writes the objects of one bucket (or one directory). Cloud
//! backends sit behind cargo features; a URI whose backend is not compiled in is a clear error.

mod local;
mod uri;

use bytes::Bytes;

pub use local::LocalStore;
pub use uri::{ObjectUri, Scheme};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{uri:?} is not an object URI: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("{uri}: no such object")]
    NotFound { uri: String },
    #[error("{scheme}:// objects need the `{feature}` cargo feature, which this build lacks")]
    NotCompiled { scheme: &'static str, feature: &'static str },
    #[error("{op} {uri}: {message}")]
    Io { op: &'static str, uri: String, message: String },
}

/// The objects under one root: a bucket, a container or a directory.
#[derive(Debug, Clone)]
pub enum Store {
    Local(LocalStore),
}

impl Store {
    /// The store that holds `uri`'s objects.
    pub async fn for_uri(uri: &ObjectUri) -> Result<Store, StorageError> {
        match uri.scheme {
            Scheme::File => Ok(Store::Local(LocalStore::new(uri.root()))),
            Scheme::S3 => Err(StorageError::NotCompiled { scheme: "s3", feature: "s3" }),
            Scheme::Gs => Err(StorageError::NotCompiled { scheme: "gs", feature: "gcs" }),
            Scheme::Az => Err(StorageError::NotCompiled { scheme: "az", feature: "azure" }),
            Scheme::Https => Err(StorageError::NotCompiled { scheme: "https", feature: "https" }),
        }
    }

    /// The whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        match self {
            Store::Local(s) => s.get(key).await,
        }
    }

    /// Writes the object whole; readers see the old object or the new one, never a part.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StorageError> {
        match self {
            Store::Local(s) => s.put(key, body).await,
        }
    }

    /// Keys that start with `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        match self {
            Store::Local(s) => s.list(prefix).await,
        }
    }

    /// The object's size, or `None` when it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self {
            Store::Local(s) => s.size(key).await,
        }
    }
}
