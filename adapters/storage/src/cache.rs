//! The model cache: an object (`s3://`, `file://`, and every other scheme a [`Store`] serves)
//! fetched into a local directory with parallel ranged reads.
//!
//! On disk, beside the target `<name>`:
//! - `<name>.partial`: the download, written range by range at its offsets;
//! - `<name>.partial.ranges`: a header line (object size and version, range size), then the index of each
//!   range already written, one per line, so a killed download resumes where it stopped;
//! - `<name>.lock`: created with `create_new` by the one process that downloads; its
//!   modification time is a heartbeat, and a lock that has not beaten for
//!   [`FetchOptions::stale_lock`] is taken over;
//! - `<name>.sha256`: "`sha256 size mtime`" once the file was checked against a hash, so a later
//!   start skips hashing it again.
//!
//! The finished file is renamed into place (same directory, so readers see no file or all of it).

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::{ObjectMeta, ObjectUri, Scheme, StorageError, Store};

/// How a model is fetched. The defaults suit object stores: 8 requests of 8 MiB in flight (one
/// S3 connection gives well under a cloud host's bandwidth, so the fetch runs several).
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Bytes per ranged read.
    pub range_size: u64,
    /// Ranged reads in flight at once.
    pub concurrency: usize,
    /// Attempts per range (the SDKs retry failed requests; this also covers a body that breaks
    /// off midway).
    pub attempts: u32,
    /// A lock whose heartbeat is older than this belongs to a dead process.
    pub stale_lock: Duration,
    /// How often a waiting process looks at the lock again.
    pub poll: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            range_size: 8 << 20,
            concurrency: 8,
            attempts: 3,
            // The holder beats every quarter of this: a killed holder delays the next fetch by
            // at most this long.
            stale_lock: Duration::from_secs(20),
            poll: Duration::from_millis(250),
        }
    }
}

/// What a fetch did: `downloaded` is what this call read from the store (0 when the cache
/// already held the file or another process fetched it meanwhile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    pub size: u64,
    pub downloaded: u64,
}

/// Ranged reads in flight, and MiB per ranged read, when set (else the defaults).
pub const CONCURRENCY_ENV: &str = "REALM_FETCH_CONCURRENCY";
pub const RANGE_MIB_ENV: &str = "REALM_FETCH_RANGE_MIB";

impl FetchOptions {
    /// The defaults, with [`CONCURRENCY_ENV`] and [`RANGE_MIB_ENV`] applied.
    pub fn from_env() -> Result<Self, StorageError> {
        let var = |name: &'static str, max: u64| -> Result<Option<u64>, StorageError> {
            let Ok(value) = std::env::var(name) else { return Ok(None) };
            match value.trim().parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
                _ => Err(StorageError::Config { var: name, value, reason: format!("not a whole number in 1..={max}") }),
            }
        };
        let mut opts = Self::default();
        if let Some(n) = var(CONCURRENCY_ENV, 64)? {
            opts.concurrency = n as usize;
        }
        if let Some(mib) = var(RANGE_MIB_ENV, 1024)? {
            opts.range_size = mib << 20;
        }
        Ok(opts)
    }
}

/// Fetches `uri` into `cache_dir` (unless already there) and returns the local path, with the
/// options [`FetchOptions::from_env`] gives. `sha256`, when given, is checked before the file
/// is moved into place.
pub async fn fetch_model(uri: &ObjectUri, cache_dir: &Path, sha256: Option<&str>) -> Result<PathBuf, StorageError> {
    fetch_model_with(uri, cache_dir, sha256, &FetchOptions::from_env()?).await.map(|f| f.path)
}

/// The file name an object gets in the cache: scheme, bucket and key, with every byte outside
/// `[A-Za-z0-9._-]` written `%XX` and the parts joined by `+` (which is itself escaped inside
/// a part), so two URIs never share a name. Names that would pass 200 bytes become
/// `scheme+<sha256 of the URI>++<end of the key>`: three `+` where the plain form has two.
pub fn cache_path(uri: &ObjectUri, cache_dir: &Path) -> PathBuf {
    let scheme = match uri.scheme {
        Scheme::S3 => "s3",
        Scheme::Gs => "gs",
        Scheme::Az => "az",
        Scheme::Https => "https",
        Scheme::File => "file",
    };
    let name = format!("{scheme}+{}+{}", escape(&uri.bucket), escape(&uri.key));
    if name.len() <= 200 {
        return cache_dir.join(name);
    }
    let base = uri.key.rsplit('/').next().unwrap_or_default();
    let mut tail = escape(base);
    if tail.len() > 80 {
        // Escapes are ASCII, so any byte offset is a char boundary.
        tail = tail.split_off(tail.len() - 80);
    }
    cache_dir.join(format!("{scheme}+{}++{tail}", hex(&Sha256::digest(uri.to_string().as_bytes()))))
}

fn escape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // "." and ".." are not file names one can own.
    if out == "." || out == ".." {
        out = out.replace('.', "%2E");
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Io { op, uri: format!("file://{}", path.display()), message: e.to_string() }
}

/// [`fetch_model`] with explicit options, reporting what it downloaded.
pub async fn fetch_model_with(
    uri: &ObjectUri,
    cache_dir: &Path,
    sha256: Option<&str>,
    opts: &FetchOptions,
) -> Result<Fetched, StorageError> {
    let expected = match sha256 {
        Some(h) => Some(parse_sha256(uri, h)?),
        None => None,
    };
    if opts.range_size == 0 || opts.concurrency == 0 {
        return Err(StorageError::Io {
            op: "fetch",
            uri: uri.to_string(),
            message: format!("range size {} and concurrency {} must be positive", opts.range_size, opts.concurrency),
        });
    }
    let target = cache_path(uri, cache_dir);
    // A file already checked against the pinned hash is that model whatever the store holds
    // now: a warm start needs no request at all.
    if let Some(want) = &expected
        && let Some(size) = verified_before(&target, want).await
    {
        tracing::debug!(uri = %uri, path = %target.display(), "model in the cache, sha256 checked before");
        return Ok(Fetched { path: target, size, downloaded: 0 });
    }
    tokio::fs::create_dir_all(cache_dir).await.map_err(|e| io_err("create", cache_dir, e))?;
    let store = Store::for_uri(uri).await?;
    let meta = store.stat(&uri.key).await?.ok_or_else(|| StorageError::NotFound { uri: uri.to_string() })?;
    let size = meta.size;
    let done = |downloaded| Fetched { path: target.clone(), size, downloaded };
    if cached(&target, size, expected.as_deref()).await? {
        tracing::debug!(uri = %uri, path = %target.display(), "model already in the cache");
        return Ok(done(0));
    }
    let _lock = Lock::acquire(&target, opts).await?;
    // Whoever held the lock before may have finished the job.
    if cached(&target, size, expected.as_deref()).await? {
        tracing::info!(uri = %uri, path = %target.display(), "model fetched by another process");
        return Ok(done(0));
    }
    let downloaded = download(&store, uri, &target, &meta, opts).await?;
    let partial = with_suffix(&target, ".partial");
    if let Some(want) = &expected {
        let got = sha256_file(&partial).await?;
        if &got != want {
            // The bytes are wrong, so none of them may seed a resume.
            remove_quietly(&partial).await;
            remove_quietly(&with_suffix(&target, ".partial.ranges")).await;
            return Err(StorageError::Checksum { uri: uri.to_string(), expected: want.clone(), actual: got });
        }
    }
    // Same directory, so the rename is atomic.
    tokio::fs::rename(&partial, &target).await.map_err(|e| io_err("rename", &target, e))?;
    remove_quietly(&with_suffix(&target, ".partial.ranges")).await;
    if let Some(want) = &expected {
        record_verified(&target, want).await;
    }
    tracing::info!(uri = %uri, path = %target.display(), bytes = size, "model ready in the cache");
    Ok(done(downloaded))
}

fn parse_sha256(uri: &ObjectUri, text: &str) -> Result<String, StorageError> {
    let h = text.trim().to_ascii_lowercase();
    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StorageError::Io {
            op: "verify",
            uri: uri.to_string(),
            message: format!("expected sha256 {text:?} is not 64 hex digits"),
        });
    }
    Ok(h)
}

async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove");
    }
}

async fn fingerprint(path: &Path) -> Option<(u64, u128)> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    let mtime = meta.modified().ok()?.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_nanos();
    Some((meta.len(), mtime))
}

async fn record_verified(target: &Path, sha: &str) {
    let Some((len, mtime)) = fingerprint(target).await else { return };
    let marker = with_suffix(target, ".sha256");
    // A read-only cache cannot take the marker; the file is then hashed again next time.
    if let Err(e) = tokio::fs::write(&marker, format!("{sha} {len} {mtime}\n")).await {
        tracing::warn!(path = %marker.display(), error = %e, "could not record the sha256 check");
    }
}

/// The file's size when its `.sha256` marker records `sha` for its current size and mtime.
async fn verified_before(target: &Path, sha: &str) -> Option<u64> {
    let (len, mtime) = fingerprint(target).await?;
    let text = tokio::fs::read_to_string(with_suffix(target, ".sha256")).await.ok()?;
    (text == format!("{sha} {len} {mtime}\n")).then_some(len)
}

/// Whether `target` is complete: the right size, and when a hash is asked for, that hash
/// (recorded earlier for this very size and mtime, or computed now). A file with the wrong
/// size or hash is removed so it is fetched again.
async fn cached(target: &Path, size: u64, sha: Option<&str>) -> Result<bool, StorageError> {
    let Some((len, _)) = fingerprint(target).await else { return Ok(false) };
    if len != size {
        tracing::warn!(path = %target.display(), len, size, "cached model has the wrong size; fetching it again");
        remove_quietly(target).await;
        return Ok(false);
    }
    let Some(sha) = sha else { return Ok(true) };
    if verified_before(target, sha).await.is_some() {
        return Ok(true);
    }
    let got = sha256_file(target).await?;
    if got == sha {
        record_verified(target, sha).await;
        return Ok(true);
    }
    tracing::warn!(path = %target.display(), expected = sha, actual = %got, "cached model has the wrong sha256; fetching it again");
    remove_quietly(target).await;
    Ok(false)
}

async fn sha256_file(path: &Path) -> Result<String, StorageError> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| io_err("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| io_err("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The ranges written so far, from the sidecar; a sidecar for another size or range size (or
/// none at all) means starting over.
async fn load_progress(sidecar: &Path, header: &str, ranges: u64) -> BTreeSet<u64> {
    let Ok(text) = tokio::fs::read_to_string(sidecar).await else { return BTreeSet::new() };
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        return BTreeSet::new();
    }
    // A line cut short by a kill does not parse and is simply fetched again.
    lines.filter_map(|l| l.parse::<u64>().ok()).filter(|&i| i < ranges).collect()
}

/// Fills `<target>.partial`, resuming from its sidecar; returns the bytes read from the store.
async fn download(
    store: &Store,
    uri: &ObjectUri,
    target: &Path,
    meta: &ObjectMeta,
    opts: &FetchOptions,
) -> Result<u64, StorageError> {
    let size = meta.size;
    let partial = with_suffix(target, ".partial");
    let sidecar = with_suffix(target, ".partial.ranges");
    let ranges = size.div_ceil(opts.range_size);
    // A partial of another object version (or cut into other ranges) is not resumed.
    let version = meta.version.as_deref().unwrap_or("-").replace(char::is_whitespace, "_");
    let header = format!("realm-fetch v1 size={size} range={} version={version}", opts.range_size);
    let partial_len = tokio::fs::metadata(&partial).await.map(|m| m.len()).ok();
    let mut have = load_progress(&sidecar, &header, ranges).await;
    if partial_len != Some(size) {
        have.clear();
    }
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(have.is_empty())
        .open(&partial)
        .await
        .map_err(|e| io_err("create", &partial, e))?;
    file.set_len(size).await.map_err(|e| io_err("allocate", &partial, e))?;
    drop(file);
    let mut log = if have.is_empty() {
        let mut f = tokio::fs::File::create(&sidecar).await.map_err(|e| io_err("create", &sidecar, e))?;
        f.write_all(format!("{header}\n").as_bytes()).await.map_err(|e| io_err("write", &sidecar, e))?;
        f
    } else {
        tokio::fs::OpenOptions::new().append(true).open(&sidecar).await.map_err(|e| io_err("open", &sidecar, e))?
    };
    let resumed = have.len() as u64;
    tracing::info!(
        uri = %uri,
        path = %target.display(),
        bytes = size,
        ranges,
        resumed_ranges = resumed,
        "fetching model"
    );

    let range_len = |i: u64| opts.range_size.min(size - i * opts.range_size);
    let mut todo = (0..ranges).filter(|i| !have.contains(i));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let mut downloaded = 0u64;
    let mut done_bytes: u64 = have.iter().map(|&i| range_len(i)).sum();
    let mut next_log = Instant::now() + Duration::from_secs(1);
    loop {
        while tasks.len() < opts.concurrency {
            let Some(i) = todo.next() else { break };
            let (store, key, partial, attempts) = (store.clone(), uri.key.clone(), partial.clone(), opts.attempts);
            let (start, len) = (i * opts.range_size, range_len(i));
            let uri = uri.to_string();
            tasks.spawn(async move {
                fetch_range(&store, &key, &uri, &partial, start, len, attempts).await.map(|()| (i, len))
            });
        }
        let Some(joined) = tasks.join_next().await else { break };
        let (i, len) = joined.map_err(|e| StorageError::Io {
            op: "fetch",
            uri: uri.to_string(),
            message: format!("a range task failed: {e}"),
        })??;
        // Recorded only after its bytes are in the partial file; a kill between the two
        // costs one range, never a hole.
        log.write_all(format!("{i}\n").as_bytes()).await.map_err(|e| io_err("write", &sidecar, e))?;
        downloaded += len;
        done_bytes += len;
        if Instant::now() >= next_log || done_bytes == size {
            next_log = Instant::now() + Duration::from_secs(1);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                uri = %uri,
                done_mib = done_bytes >> 20,
                total_mib = size >> 20,
                percent = done_bytes * 100 / size.max(1),
                mib_per_s = %format!("{:.1}", downloaded as f64 / secs / (1 << 20) as f64),
                "fetch progress"
            );
        }
    }
    log.flush().await.map_err(|e| io_err("write", &sidecar, e))?;
    Ok(downloaded)
}

async fn fetch_range(
    store: &Store,
    key: &str,
    uri: &str,
    partial: &Path,
    start: u64,
    len: u64,
    attempts: u32,
) -> Result<(), StorageError> {
    let file = std::fs::OpenOptions::new().write(true).open(partial).map_err(|e| io_err("open", partial, e))?;
    // Each chunk goes to its place in the file as it arrives, as a plain download does: a
    // range gathered in memory first cost a fresh buffer's page faults and a copy per byte,
    // which made the fetch slower than one `curl` on the same machine. A retry writes the
    // range again from its start.
    let got = crate::retry_io("get range", attempts, || {
        let file = &file;
        async move {
            let mut at = start;
            let mut write = |chunk: &[u8]| {
                write_at(file, chunk, at).map_err(|e| io_err("write", partial, e))?;
                at += chunk.len() as u64;
                Ok(())
            };
            store.read_range(key, start, len, &mut write).await
        }
    })
    .await?;
    if got != len {
        // A short range means the object changed under us; retrying will not help.
        return Err(StorageError::Io {
            op: "get range",
            uri: uri.to_string(),
            message: format!("asked for {len} bytes at {start}, got {got} (did the object change?)"),
        });
    }
    Ok(())
}

/// Writes `buf` at `offset` of `file` (this range's own handle).
fn write_at(file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, Write};
        let mut file = file;
        file.seek(std::io::SeekFrom::Start(offset))?;
        file.write_all(buf)
    }
}

/// `<target>.lock`, held while one process downloads; removed on drop (also when the fetch is
/// cancelled). A background task refreshes its modification time so waiters can tell a live
/// holder from a dead one.
struct Lock {
    path: PathBuf,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Lock {
    async fn acquire(target: &Path, opts: &FetchOptions) -> Result<Lock, StorageError> {
        let path = with_suffix(target, ".lock");
        let mut waiting_logged = false;
        loop {
            match tokio::fs::OpenOptions::new().write(true).create_new(true).open(&path).await {
                Ok(mut f) => {
                    let owner = format!("pid {} at {:?}\n", std::process::id(), SystemTime::now());
                    // The content is for people reading the directory; the lock is the file.
                    let _ = f.write_all(owner.as_bytes()).await;
                    let beat_path = path.clone();
                    let every = (opts.stale_lock / 4).max(Duration::from_millis(100));
                    let heartbeat = tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(every).await;
                            touch(&beat_path).await;
                        }
                    });
                    return Ok(Lock { path, heartbeat });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("lock", &path, e)),
            }
            if let Some(age) = lock_age(&path).await
                && age > opts.stale_lock
            {
                take_over_stale(&path, opts.stale_lock).await;
                continue;
            }
            if !waiting_logged {
                tracing::info!(lock = %path.display(), "another process is fetching this model; waiting");
                waiting_logged = true;
            }
            tokio::time::sleep(opts.poll).await;
        }
    }
}

async fn lock_age(path: &Path) -> Option<Duration> {
    let modified = tokio::fs::metadata(path).await.ok()?.modified().ok()?;
    SystemTime::now().duration_since(modified).ok()
}

async fn touch(path: &Path) {
    let path = path.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()))
    })
    .await;
}

/// Moves a stale lock aside under a name of our own, then checks that what was moved is still
/// stale: if its owner (or another waiter) refreshed or replaced it in between, it is put back.
async fn take_over_stale(path: &Path, stale: Duration) {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let aside = with_suffix(path, &format!(".stale-{}-{nanos}", std::process::id()));
    if tokio::fs::rename(path, &aside).await.is_err() {
        return; // someone else moved it first
    }
    if lock_age(&aside).await.is_some_and(|age| age > stale) {
        tracing::warn!(lock = %path.display(), "took over a stale lock (its holder stopped without removing it)");
    } else if tokio::fs::hard_link(&aside, path).await.is_err() {
        tracing::warn!(lock = %path.display(), "a fresh lock was moved aside and could not be restored");
    }
    remove_quietly(&aside).await;
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.heartbeat.abort();
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(lock = %self.path.display(), error = %e, "could not remove the lock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(uri: &str) -> String {
        let u = ObjectUri::parse(uri).expect("uri");
        cache_path(&u, Path::new("/c")).file_name().expect("name").to_string_lossy().into_owned()
    }

    #[test]
    fn cache_names_are_distinct_and_flat() {
        let uris = [
            "s3://b/m.gguf",
            "s3://b/d/m.gguf",
            "s3://b/d%2Fm.gguf",
            "s3://b+d/m.gguf",
            "s3://b/d+m.gguf",
            "gs://b/m.gguf",
            "file:///b/m.gguf",
            "s3://b/..",
        ];
        let names: Vec<_> = uris.iter().map(|u| name(u)).collect();
        let set: BTreeSet<_> = names.iter().collect();
        assert_eq!(set.len(), names.len(), "{names:?}");
        for n in &names {
            assert!(!n.contains('/') && n != "." && n != "..", "{n}");
        }
        assert_eq!(name("s3://models/smollm2/m.Q4_1.gguf"), "s3+models+smollm2%2Fm.Q4_1.gguf");
        let long = format!("s3://b/{}/model.gguf", "x".repeat(300));
        let n = name(&long);
        assert!(n.len() < 255 && n.ends_with("++model.gguf") && n.matches('+').count() == 3, "{n}");
        assert_ne!(n, name(&format!("s3://b/{}/model.gguf", "y".repeat(300))));
    }

    #[tokio::test]
    async fn file_uris_are_copied_resumed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.bin");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&src, &data).expect("write");
        let uri = ObjectUri::parse(&format!("file://{}", src.display())).expect("uri");
        let cache = dir.path().join("cache");
        let sha = hex(&Sha256::digest(&data));
        let opts = FetchOptions { range_size: 4096, ..FetchOptions::default() };

        let wrong = "0".repeat(64);
        let err = fetch_model_with(&uri, &cache, Some(&wrong), &opts).await.expect_err("wrong hash");
        assert!(err.to_string().contains(&wrong) && err.to_string().contains(&sha), "{err}");
        assert!(!cache_path(&uri, &cache).exists());

        // A partial copy left by a killed fetch: the first 3 ranges written and recorded.
        let target = cache_path(&uri, &cache);
        let mut partial = data[..3 * 4096].to_vec();
        partial.resize(data.len(), 0);
        std::fs::write(with_suffix(&target, ".partial"), &partial).expect("partial");
        let version =
            Store::for_uri(&uri).await.expect("store").stat(&uri.key).await.expect("stat").expect("exists").version;
        let header = format!("realm-fetch v1 size={} range=4096 version={}", data.len(), version.expect("mtime"));
        std::fs::write(with_suffix(&target, ".partial.ranges"), format!("{header}\n0\n1\n2\n")).expect("sidecar");
        let got = fetch_model_with(&uri, &cache, Some(&sha), &opts).await.expect("fetch");
        assert_eq!(got.downloaded, data.len() as u64 - 3 * 4096);
        assert_eq!(std::fs::read(&got.path).expect("read"), data);
        assert!(!with_suffix(&target, ".partial").exists() && !with_suffix(&target, ".lock").exists());

        let again = fetch_model_with(&uri, &cache, Some(&sha), &opts).await.expect("cached");
        assert_eq!(again.downloaded, 0);
        // Checked against the pinned hash before, the cached file needs no source at all;
        // without the hash the source's size is asked for.
        std::fs::remove_file(&src).expect("remove source");
        let offline = fetch_model_with(&uri, &cache, Some(&sha), &opts).await.expect("offline");
        assert_eq!((offline.path, offline.size, offline.downloaded), (target.clone(), data.len() as u64, 0));
        assert!(matches!(fetch_model_with(&uri, &cache, None, &opts).await, Err(StorageError::NotFound { .. })));
    }

    #[tokio::test]
    async fn a_stale_lock_is_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("m.bin");
        std::fs::write(&src, b"weights").expect("write");
        let uri = ObjectUri::parse(&format!("file://{}", src.display())).expect("uri");
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&cache).expect("mkdir");
        let lock = with_suffix(&cache_path(&uri, &cache), ".lock");
        let f = std::fs::File::create(&lock).expect("lock");
        f.set_modified(SystemTime::now() - Duration::from_secs(120)).expect("age the lock");
        let opts = FetchOptions { stale_lock: Duration::from_secs(30), ..FetchOptions::default() };
        let got = fetch_model_with(&uri, &cache, None, &opts).await.expect("fetch");
        assert_eq!(std::fs::read(got.path).expect("read"), b"weights");
        assert!(!lock.exists());
    }
}
