//! Files as objects: keys are paths; writes go to a temporary file renamed into place.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::{ObjectMeta, StorageError};

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> StorageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound { uri: format!("file://{}", path.display()) }
    } else {
        StorageError::Io { op, uri: format!("file://{}", path.display()), message: e.to_string() }
    }
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.trim_start_matches('/'))
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let path = self.path(key);
        tokio::fs::read(&path).await.map(Bytes::from).map_err(|e| io_err("read", &path, e))
    }

    /// `len` bytes from offset `start` (fewer at the end of the file).
    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StorageError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.path(key);
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| io_err("read", &path, e))?;
        file.seek(std::io::SeekFrom::Start(start)).await.map_err(|e| io_err("seek", &path, e))?;
        let mut buf = Vec::new();
        file.take(len).read_to_end(&mut buf).await.map_err(|e| io_err("read", &path, e))?;
        Ok(Bytes::from(buf))
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StorageError> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| io_err("create", dir, e))?;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("object");
        let tmp = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
        tokio::fs::write(&tmp, &body).await.map_err(|e| io_err("write", &tmp, e))?;
        tokio::fs::rename(&tmp, &path).await.map_err(|e| io_err("rename", &path, e))
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let full = self.path(prefix);
        // The prefix's directory part is listed; its last part filters names.
        let (dir, stem) = if prefix.ends_with('/') {
            (full.clone(), String::new())
        } else {
            let stem = full.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (full.parent().map(Path::to_path_buf).unwrap_or_default(), stem)
        };
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("list", &dir, e)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(|e| io_err("list", &dir, e))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&stem) && !name.ends_with(".partial") {
                out.push(dir.join(&name).display().to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        Ok(self.stat(key).await?.map(|m| m.size))
    }

    pub async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path(key);
        match tokio::fs::metadata(&path).await {
            Ok(m) => {
                let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                Ok(Some(ObjectMeta { size: m.len(), version: mtime.map(|d| format!("mtime-{}", d.as_nanos())) }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(PathBuf::from("/"));
        let key = format!("{}/out/part-00001.jsonl", dir.path().display());
        store.put(&key, Bytes::from_static(b"{}\n")).await.expect("put");
        assert_eq!(store.get(&key).await.expect("get"), Bytes::from_static(b"{}\n"));
        assert_eq!(store.size(&key).await.expect("size"), Some(3));
        assert_eq!(store.get_range(&key, 1, 1).await.expect("range"), Bytes::from_static(b"}"));
        assert_eq!(store.get_range(&key, 2, 10).await.expect("range"), Bytes::from_static(b"\n"));
        let listed = store.list(&format!("{}/out/part-", dir.path().display())).await.expect("list");
        assert_eq!(listed, vec![key.clone()]);
        assert!(matches!(store.get(&format!("{key}.missing")).await, Err(StorageError::NotFound { .. })));
        assert_eq!(
            store.list(&format!("{}/nowhere/", dir.path().display())).await.expect("list"),
            Vec::<String>::new()
        );
    }
}
