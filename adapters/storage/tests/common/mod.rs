//! What the object-store tests share: the store's fetch cases (ranges, checksums, resume after
//! a cancel or a kill, one download for two fetchers, the default model) run the same against
//! every backend; each test binary starts its server and adds its own store case.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use realm_storage::{FetchOptions, ObjectUri, StorageError, Store, fetch_model, fetch_model_with};
use sha2::{Digest, Sha256};

pub const BUCKET: &str = "realm-models";
const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

pub type Case = std::pin::Pin<Box<dyn Future<Output = Result<()>>>>;

/// A store's server on a free loopback port, killed (and waited for) on drop.
pub struct Emulator {
    child: Child,
    pub port: u16,
}

impl Emulator {
    /// Runs `command(port)` on a free port, its output discarded, and waits up to 60 s until
    /// `ready(port)`; `name` is for the errors.
    pub fn start(name: &str, command: impl FnOnce(u16) -> Command, ready: impl Fn(u16) -> bool) -> Result<Emulator> {
        // A free port: bind port 0, note the port, let it go for the server to take.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = command(port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut server = Emulator { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("{name} exited at start ({status})");
            }
            if ready(port) {
                return Ok(server);
            }
            ensure!(Instant::now() < deadline, "{name} did not answer on port {port} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One bare HTTP/1.1 request without a body or a signature to a server on loopback; the
/// status code.
pub fn http_status(port: u16, method: &str, path: &str) -> Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let code = reply.split_whitespace().nth(1).context("empty HTTP reply")?;
    Ok(code.parse()?)
}

/// One backend under test.
pub struct Cloud {
    /// `s3`, `az`: the URI scheme, also the tests' name prefix.
    pub scheme: &'static str,
    /// Set in the child process that runs the cases.
    pub child_env: &'static str,
    /// Set to `uri cache_dir`: the binary only fetches (slowly) and is then killed by a case.
    pub fetch_env: &'static str,
}

impl Cloud {
    pub async fn store(&self) -> Result<Store> {
        Ok(Store::for_uri(&ObjectUri::parse(&format!("{}://{BUCKET}/", self.scheme))?).await?)
    }

    pub fn uri(&self, key: &str) -> Result<ObjectUri> {
        Ok(ObjectUri::parse(&format!("{}://{BUCKET}/{key}", self.scheme))?)
    }

    /// In a child process, what it did: the one a kill case starts fetches slowly (to be
    /// killed), the one the parent starts with `child_env` set runs `cases`. `None` in the
    /// parent, which starts the store and runs this binary again as the child.
    pub fn child<F: Future<Output = Result<()>>>(&self, cases: impl FnOnce() -> F) -> Option<Result<()>> {
        if let Some(done) = self.fetch_child() {
            return Some(done);
        }
        std::env::var_os(self.child_env)?;
        // RUST_LOG=realm_storage=info shows the fetch's progress lines.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        Some(tokio::runtime::Runtime::new().map_err(Into::into).and_then(|rt| rt.block_on(cases())))
    }

    /// In the process a kill case starts: fetches slowly, to be killed. `None` elsewhere.
    fn fetch_child(&self) -> Option<Result<()>> {
        let job = std::env::var(self.fetch_env).ok()?;
        Some((|| {
            let (u, dir) = job.split_once(' ').context("the fetch job is `uri dir`")?;
            let opts = FetchOptions { range_size: 256 << 10, concurrency: 1, ..FetchOptions::default() };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(fetch_model_with(&ObjectUri::parse(u)?, Path::new(dir), None, &opts))?;
            Ok(())
        })())
    }

    /// Put, get, size, ranges and missing keys, then `listed` keys listed back in order (more
    /// than one page of the store's listing).
    pub async fn put_get_list(&self, listed: u32) -> Result<()> {
        let s = self.store().await?;
        s.put("docs/a.jsonl", Bytes::from_static(b"{\"a\":1}\n")).await?;
        assert_eq!(s.get("docs/a.jsonl").await?, Bytes::from_static(b"{\"a\":1}\n"));
        assert_eq!(s.size("docs/a.jsonl").await?, Some(8));
        assert_eq!(s.size("docs/missing").await?, None);
        match s.get("docs/missing").await {
            Err(StorageError::NotFound { uri }) => assert_eq!(uri, self.uri("docs/missing")?.to_string()),
            other => bail!("get of a missing key gave {other:?}"),
        }
        // Ranges: inside, cut short by the end, empty.
        assert_eq!(s.get_range("docs/a.jsonl", 2, 3).await?, Bytes::from_static(b"a\":"));
        assert_eq!(s.get_range("docs/a.jsonl", 6, 100).await?, Bytes::from_static(b"}\n"));
        assert_eq!(s.get_range("docs/a.jsonl", 0, 0).await?, Bytes::new());
        assert!(matches!(s.get_range("docs/missing", 0, 4).await, Err(StorageError::NotFound { .. })));

        // Past one listing page, written out of order by 8 tasks.
        let mut puts = tokio::task::JoinSet::new();
        for chunk in (0..listed).rev().collect::<Vec<_>>().chunks(listed.div_ceil(8) as usize) {
            let (s, chunk) = (s.clone(), chunk.to_vec());
            puts.spawn(async move {
                for i in chunk {
                    s.put(&format!("many/part-{i:05}.jsonl"), Bytes::from(format!("{i}\n"))).await?;
                }
                Ok::<_, StorageError>(())
            });
        }
        while let Some(r) = puts.join_next().await {
            r??;
        }
        let want: Vec<String> = (0..listed).map(|i| format!("many/part-{i:05}.jsonl")).collect();
        assert_eq!(s.list("many/part-").await?, want);
        assert_eq!(s.list("docs/").await?, vec!["docs/a.jsonl".to_string()]);
        assert_eq!(s.list("nothing/").await?, Vec::<String>::new());
        Ok(())
    }

    /// `store_case` (the backend's own), then every shared case, each reported like a test.
    pub async fn run_cases(&'static self, store_case: Case) -> Result<()> {
        let cases: [(&str, Case); 7] = [
            ("store_put_get_list_size", store_case),
            ("fetch_multi_range_object", Box::pin(fetch_multi_range_object(self))),
            ("fetch_wrong_sha256", Box::pin(fetch_wrong_sha256(self))),
            ("fetch_resumes_after_interruption", Box::pin(fetch_resumes_after_interruption(self))),
            ("fetch_resumes_after_kill", Box::pin(fetch_resumes_after_kill(self))),
            ("concurrent_fetches_download_once", Box::pin(concurrent_fetches_download_once(self))),
            ("fetch_default_model", Box::pin(fetch_default_model(self))),
        ];
        let mut failed = 0;
        for (name, case) in cases {
            let started = Instant::now();
            match case.await {
                Ok(()) => println!("test {}::{name} ... ok ({:.2} s)", self.scheme, started.elapsed().as_secs_f64()),
                Err(e) => {
                    println!("test {}::{name} ... FAILED: {e:#}", self.scheme);
                    failed += 1;
                }
            }
        }
        ensure!(failed == 0, "{failed} case(s) failed");
        Ok(())
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so no data file is checked in.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub const MIB: u64 = 1 << 20;

async fn fetch_multi_range_object(c: &Cloud) -> Result<()> {
    let data = random_bytes(20 * MIB as usize + 12_345, 1);
    let sha = sha256_hex(&data);
    c.store().await?.put("models/random-20m.bin", Bytes::from(data.clone())).await?;
    let cache = tempfile::tempdir()?;
    let u = c.uri("models/random-20m.bin")?;
    let got = fetch_model_with(&u, cache.path(), Some(&sha), &FetchOptions::default()).await?;
    assert_eq!(got.downloaded, data.len() as u64);
    ensure!(std::fs::read(&got.path)? == data, "fetched bytes differ");
    assert_eq!(got.path, realm_storage::cache_path(&u, cache.path()));
    let names: Vec<String> = std::fs::read_dir(cache.path())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    let mut names = names;
    names.sort();
    // Only the model and its sha256 marker are left: no partial, sidecar or lock.
    let base = got.path.file_name().context("name")?.to_string_lossy().into_owned();
    assert_eq!(names, vec![base.clone(), format!("{base}.sha256")]);
    // Cached: nothing is read again, with or without the hash.
    assert_eq!(fetch_model_with(&u, cache.path(), Some(&sha), &FetchOptions::default()).await?.downloaded, 0);
    assert_eq!(fetch_model(&u, cache.path(), None).await?, got.path);
    Ok(())
}

async fn fetch_wrong_sha256(c: &Cloud) -> Result<()> {
    let data = random_bytes(9 * MIB as usize, 2);
    c.store().await?.put("models/wrong-hash.bin", Bytes::from(data.clone())).await?;
    let cache = tempfile::tempdir()?;
    let wrong = "ab".repeat(32);
    let err = fetch_model(&c.uri("models/wrong-hash.bin")?, cache.path(), Some(&wrong))
        .await
        .err()
        .context("a wrong sha256 was accepted")?;
    let text = err.to_string();
    ensure!(matches!(err, StorageError::Checksum { .. }), "{err:?}");
    ensure!(text.contains(&wrong) && text.contains(&sha256_hex(&data)), "the error names both hashes: {text}");
    ensure!(text.contains(&c.uri("models/wrong-hash.bin")?.to_string()), "the error names the object: {text}");
    ensure!(std::fs::read_dir(cache.path())?.next().is_none(), "files were left behind");
    match fetch_model(&c.uri("models/absent.bin")?, cache.path(), None).await {
        Err(StorageError::NotFound { uri }) => assert_eq!(uri, c.uri("models/absent.bin")?.to_string()),
        other => bail!("fetching a missing object gave {other:?}"),
    }
    // A hash that is not one is refused before anything is read.
    ensure!(fetch_model(&c.uri("models/wrong-hash.bin")?, cache.path(), Some("xyz")).await.is_err());
    Ok(())
}

async fn fetch_resumes_after_interruption(c: &Cloud) -> Result<()> {
    let data = random_bytes(20 * MIB as usize, 3);
    let sha = sha256_hex(&data);
    c.store().await?.put("models/resume.bin", Bytes::from(data.clone())).await?;
    let cache = tempfile::tempdir()?;
    let u = c.uri("models/resume.bin")?;
    let target = realm_storage::cache_path(&u, cache.path());
    let sidecar = with_suffix(&target, ".partial.ranges");
    // Small ranges one at a time, so the fetch is still going when it is cut off.
    let opts = FetchOptions { range_size: 256 << 10, concurrency: 1, ..FetchOptions::default() };
    let first = {
        let (u, dir, opts, sha) = (u.clone(), cache.path().to_path_buf(), opts.clone(), sha.clone());
        tokio::spawn(async move { fetch_model_with(&u, &dir, Some(&sha), &opts).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recorded = std::fs::read_to_string(&sidecar).map(|t| t.lines().count()).unwrap_or(0);
        if recorded >= 4 {
            break;
        }
        ensure!(!first.is_finished(), "the fetch ended before it could be interrupted");
        ensure!(Instant::now() < deadline, "the fetch made no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    first.abort();
    ensure!(first.await.is_err_and(|e| e.is_cancelled()), "the fetch was not cancelled");
    ensure!(with_suffix(&target, ".partial").exists() && !target.exists(), "no partial download left behind");
    ensure!(!with_suffix(&target, ".lock").exists(), "a cancelled fetch left its lock");

    let got = fetch_model_with(&u, cache.path(), Some(&sha), &opts).await?;
    ensure!(
        got.downloaded < data.len() as u64 && got.downloaded > 0,
        "resumed fetch read {} of {} bytes",
        got.downloaded,
        data.len()
    );
    ensure!(std::fs::read(&got.path)? == data, "resumed bytes differ");
    ensure!(!sidecar.exists() && !with_suffix(&target, ".partial").exists());

    // A partial of another version of the object (another ETag) is not trusted: it is
    // fetched from the start.
    std::fs::remove_file(&got.path)?;
    std::fs::write(with_suffix(&target, ".partial"), vec![0u8; data.len()])?;
    let header = format!("realm-fetch v1 size={} range={} version=\"0123\"", data.len(), 8 * MIB);
    std::fs::write(&sidecar, format!("{header}\n0\n1\n"))?;
    let again = fetch_model_with(&u, cache.path(), Some(&sha), &FetchOptions::default()).await?;
    assert_eq!(again.downloaded, data.len() as u64);
    Ok(())
}

/// A fetching process killed with SIGKILL leaves its partial, sidecar and lock; the next fetch
/// takes the lock over once it is stale and reads only the ranges still missing.
async fn fetch_resumes_after_kill(c: &Cloud) -> Result<()> {
    let data = random_bytes(20 * MIB as usize, 5);
    let sha = sha256_hex(&data);
    c.store().await?.put("models/killed.bin", Bytes::from(data.clone())).await?;
    let cache = tempfile::tempdir()?;
    let u = c.uri("models/killed.bin")?;
    let target = realm_storage::cache_path(&u, cache.path());
    let sidecar = with_suffix(&target, ".partial.ranges");
    let mut child = Command::new(std::env::current_exe()?)
        .env(c.fetch_env, format!("{u} {}", cache.path().display()))
        .env_remove(c.child_env)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recorded = std::fs::read_to_string(&sidecar).map(|t| t.lines().count()).unwrap_or(0);
        if recorded >= 4 {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!("the fetching process ended ({status}) before it could be killed");
        }
        ensure!(Instant::now() < deadline, "the fetching process made no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill()?;
    child.wait()?;
    ensure!(with_suffix(&target, ".lock").exists(), "a killed process cannot remove its lock");
    ensure!(with_suffix(&target, ".partial").exists() && !target.exists());

    // The killed process's range size, so its ranges count.
    let opts = FetchOptions {
        range_size: 256 << 10,
        stale_lock: Duration::from_secs(1),
        poll: Duration::from_millis(50),
        ..FetchOptions::default()
    };
    let started = Instant::now();
    let got = fetch_model_with(&u, cache.path(), Some(&sha), &opts).await?;
    ensure!(started.elapsed() >= Duration::from_millis(500), "the lock was taken over before it went stale");
    ensure!(got.downloaded > 0 && got.downloaded < data.len() as u64, "read {} of {}", got.downloaded, data.len());
    ensure!(std::fs::read(&got.path)? == data, "resumed bytes differ");
    ensure!(!with_suffix(&target, ".lock").exists());
    Ok(())
}

async fn concurrent_fetches_download_once(c: &Cloud) -> Result<()> {
    let data = random_bytes(20 * MIB as usize, 4);
    let sha = sha256_hex(&data);
    c.store().await?.put("models/shared.bin", Bytes::from(data.clone())).await?;
    let cache = tempfile::tempdir()?;
    let u = c.uri("models/shared.bin")?;
    let opts = FetchOptions { poll: Duration::from_millis(20), ..FetchOptions::default() };
    let (a, b) = tokio::join!(
        fetch_model_with(&u, cache.path(), Some(&sha), &opts),
        fetch_model_with(&u, cache.path(), Some(&sha), &opts)
    );
    let (a, b) = (a?, b?);
    assert_eq!(a.path, b.path);
    assert_eq!(a.downloaded + b.downloaded, data.len() as u64, "exactly one fetch downloads");
    ensure!(std::fs::read(&a.path)? == data, "fetched bytes differ");
    Ok(())
}

/// The default model, as `scripts/test.sh` fetches it (see adapters/http/tests/common).
fn default_model_path() -> Result<PathBuf> {
    let path = if let Some(p) = std::env::var_os("REALM_TEST_MODEL") {
        PathBuf::from(p)
    } else if let Some(dir) = std::env::var_os("REALM_MODEL_CACHE").filter(|d| !d.is_empty()) {
        PathBuf::from(dir).join(DEFAULT_MODEL)
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        PathBuf::from(dir).join("realm/models").join(DEFAULT_MODEL)
    } else {
        PathBuf::from(std::env::var_os("HOME").context("HOME is set")?).join(".cache/realm/models").join(DEFAULT_MODEL)
    };
    ensure!(path.is_file(), "default model not found at {}: run scripts/test.sh (it fetches it)", path.display());
    Ok(path)
}

async fn fetch_default_model(c: &Cloud) -> Result<()> {
    let model = std::fs::read(default_model_path()?)?;
    ensure!(sha256_hex(&model) == DEFAULT_MODEL_SHA256, "the local default model is not the expected file");
    let key = format!("smollm2/{DEFAULT_MODEL}");
    c.store().await?.put(&key, Bytes::from(model.clone())).await?;
    let cache = tempfile::tempdir()?;
    let started = Instant::now();
    let path = fetch_model(&c.uri(&key)?, cache.path(), Some(DEFAULT_MODEL_SHA256)).await?;
    let ranged = started.elapsed();
    ensure!(std::fs::read(&path)? == model, "fetched model differs");
    // For the record: the same fetch without the hash, and one plain get of the whole object.
    let started = Instant::now();
    let bare = tempfile::tempdir()?;
    fetch_model(&c.uri(&key)?, bare.path(), None).await?;
    let unhashed = started.elapsed();
    let started = Instant::now();
    let whole = c.store().await?.get(&key).await?;
    let single = started.elapsed();
    ensure!(whole.len() == model.len());
    println!(
        "default model ({} MB): fetch_model {:.2} s with sha256, {:.2} s without; one whole get {:.2} s",
        model.len() / 1_000_000,
        ranged.as_secs_f64(),
        unhashed.as_secs_f64(),
        single.as_secs_f64()
    );
    Ok(())
}
