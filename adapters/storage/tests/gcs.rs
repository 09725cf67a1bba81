//! realm-storage against a real GCS JSON API: gcp-storage-emulator (`.venv`, from
//! `scripts/requirements.txt`) on a free loopback port, reached as Google's client libraries
//! reach an emulator, through `STORAGE_EMULATOR_HOST`.
//!
//! The store reads its endpoint from the environment, and changing the environment of a running
//! (multi-threaded) test process is unsound; so `main` starts the emulator and runs this same
//! binary again as a child with the environment set, and the child runs the cases.
//! `harness = false` (see Cargo.toml): run with `cargo test -p realm-storage --features gcs
//! --test gcs`.
#![cfg(feature = "gcs")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use realm_storage::{ObjectUri, StorageError, Store};

mod common;

use common::{BUCKET, Cloud};

const CHILD_ENV: &str = "REALM_STORAGE_GCS_TEST_CHILD";
static CLOUD: Cloud = Cloud { scheme: "gs", child_env: CHILD_ENV, fetch_env: "REALM_STORAGE_GCS_TEST_FETCH" };

struct Emulator {
    child: Child,
    port: u16,
}

impl Emulator {
    /// The emulator, in memory, with the tests' bucket made at start.
    fn start() -> Result<Emulator> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let launcher = root.join(".venv/bin/gcp-storage-emulator");
        ensure!(
            launcher.is_file(),
            "{} is missing: run scripts/setup.sh (it installs gcp-storage-emulator)",
            launcher.display()
        );
        // A free port: bind port 0, note the port, let it go for the emulator to take.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&launcher)
            .args(["start", "--host", "127.0.0.1", "--port", &port.to_string(), "--in-memory", "--quiet"])
            .args(["--default-bucket", BUCKET])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", launcher.display()))?;
        let mut emulator = Emulator { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = emulator.child.try_wait()? {
                bail!("gcp-storage-emulator exited at start ({status})");
            }
            if get_status(port, &format!("/storage/v1/b/{BUCKET}")).is_ok_and(|code| code == 200) {
                return Ok(emulator);
            }
            ensure!(Instant::now() < deadline, "gcp-storage-emulator did not answer on port {port} within 60 s");
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

/// One bare HTTP GET; the status code.
fn get_status(port: u16, path: &str) -> Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let code = reply.split_whitespace().nth(1).context("empty HTTP reply")?;
    Ok(code.parse()?)
}

fn main() -> Result<()> {
    if let Some(done) = CLOUD.child(cases) {
        return done;
    }
    let emulator = Emulator::start()?;
    let status = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, "1")
        .env(realm_storage::GCS_EMULATOR_HOST_ENV, format!("http://127.0.0.1:{}", emulator.port))
        // No credentials of the machine running the tests.
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .status()?;
    ensure!(status.success(), "the GCS cases failed ({status})");
    Ok(())
}

async fn cases() -> Result<()> {
    CLOUD.run_cases(Box::pin(store_put_get_list_size())).await
}

async fn store_put_get_list_size() -> Result<()> {
    // objects.list pages hold 1,000 objects (the emulator answers in one page; GCS pages).
    CLOUD.put_get_list(1003).await?;

    // The version is the object's generation, and a new upload changes it.
    let s = CLOUD.store().await?;
    let first = s.stat("docs/a.jsonl").await?.context("stat")?;
    s.put("docs/a.jsonl", bytes::Bytes::from_static(b"{\"a\":2}\n")).await?;
    let second = s.stat("docs/a.jsonl").await?.context("stat")?;
    ensure!(first.version.is_some() && first.version != second.version, "{first:?} then {second:?}");

    // An empty object (a batch part's commit marker).
    s.put("docs/empty", bytes::Bytes::new()).await?;
    ensure!(s.get("docs/empty").await?.is_empty());
    assert_eq!(s.size("docs/empty").await?, Some(0));

    // A missing bucket is an error that names it, not a missing object.
    let other = Store::for_uri(&ObjectUri::parse("gs://no-such-bucket/k")?).await?;
    for (op, result) in [
        ("get", other.get("k").await.map(|_| ())),
        ("stat", other.stat("k").await.map(|_| ())),
        ("list", other.list("k").await.map(|_| ())),
        ("put", other.put("k", bytes::Bytes::from_static(b"x")).await),
    ] {
        match result {
            Err(e @ StorageError::Io { .. }) => {
                let text = e.to_string();
                ensure!(text.contains("gs://no-such-bucket/k") && text.contains("no such bucket"), "{op}: {text}");
            }
            r => bail!("{op} in a missing bucket gave {r:?}"),
        }
    }

    // A name GCS would refuse is named as such before any request.
    match Store::for_uri(&ObjectUri::parse("gs://Bad_Bucket!/k")?).await {
        Err(e @ StorageError::BadUri { .. }) => ensure!(e.to_string().contains("lowercase"), "{e}"),
        r => bail!("a bad bucket name gave {r:?}"),
    }
    Ok(())
}
