//! Object URIs.

use std::fmt;
use std::path::PathBuf;

use crate::StorageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    S3,
    Gs,
    Az,
    Https,
    File,
}

/// A parsed object URI: for buckets and containers `bucket` and `key`; for `file://` and plain
/// paths, `bucket` is empty and `key` the absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUri {
    pub scheme: Scheme,
    pub bucket: String,
    pub key: String,
}

impl ObjectUri {
    pub fn parse(text: &str) -> Result<Self, StorageError> {
        let bad = |reason: &str| StorageError::BadUri { uri: text.to_string(), reason: reason.to_string() };
        let Some((scheme, rest)) = text.split_once("://") else {
            if text.is_empty() {
                return Err(bad("it is empty"));
            }
            let path = std::path::absolute(text).map_err(|e| bad(&e.to_string()))?;
            return Ok(Self { scheme: Scheme::File, bucket: String::new(), key: path.display().to_string() });
        };
        let scheme = match scheme {
            "s3" => Scheme::S3,
            "gs" => Scheme::Gs,
            "az" => Scheme::Az,
            "https" => Scheme::Https,
            "file" => Scheme::File,
            other => return Err(bad(&format!("scheme {other:?} is not one of s3, gs, az, https, file"))),
        };
        if scheme == Scheme::File {
            if !rest.starts_with('/') {
                return Err(bad("file:// URIs hold an absolute path (file:///dir/name)"));
            }
            return Ok(Self { scheme, bucket: String::new(), key: rest.to_string() });
        }
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket (or host) is missing"));
        }
        if bucket.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("the bucket (or host) holds whitespace"));
        }
        Ok(Self { scheme, bucket: bucket.to_string(), key: key.to_string() })
    }

    /// Where a local store's keys are resolved: `/` for files, so keys are absolute paths.
    pub(crate) fn root(&self) -> PathBuf {
        PathBuf::from("/")
    }
}

impl fmt::Display for ObjectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::File => write!(f, "file://{}", self.key),
            Scheme::S3 => write!(f, "s3://{}/{}", self.bucket, self.key),
            Scheme::Gs => write!(f, "gs://{}/{}", self.bucket, self.key),
            Scheme::Az => write!(f, "az://{}/{}", self.bucket, self.key),
            Scheme::Https => write!(f, "https://{}/{}", self.bucket, self.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme_and_refuses_bad_ones() {
        let u = ObjectUri::parse("s3://models/smollm2/m.gguf").expect("s3");
        assert_eq!((u.scheme, u.bucket.as_str(), u.key.as_str()), (Scheme::S3, "models", "smollm2/m.gguf"));
        assert_eq!(ObjectUri::parse("gs://b/k").expect("gs").to_string(), "gs://b/k");
        assert_eq!(ObjectUri::parse("file:///tmp/x.jsonl").expect("file").key, "/tmp/x.jsonl");
        assert_eq!(ObjectUri::parse("/tmp/y").expect("path").scheme, Scheme::File);
        for bad in ["ftp://h/x", "s3:///k", "file://relative", "", "s3://bad bucket/k"] {
            assert!(ObjectUri::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
