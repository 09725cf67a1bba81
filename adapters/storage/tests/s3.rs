//! realm-storage against a real S3 API: moto in server mode (`.venv`, from
//! `scripts/requirements.txt`) on a free loopback port.
//!
//! The AWS SDK reads its endpoint, region and credentials from the environment, and changing
//! the environment of a running (multi-threaded) test process is unsound; so `main` starts moto
//! and runs this same binary again as a child with the environment set, and the child runs the
//! cases. `harness = false` (see Cargo.toml): run with `cargo test -p realm-storage --features s3
//! --test s3`.
#![cfg(feature = "s3")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use realm_storage::{ObjectUri, StorageError, Store};

mod common;

use common::{BUCKET, Cloud};

const CHILD_ENV: &str = "REALM_STORAGE_S3_TEST_CHILD";
static CLOUD: Cloud = Cloud { scheme: "s3", child_env: CHILD_ENV, fetch_env: "REALM_STORAGE_S3_TEST_FETCH" };

struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Result<Moto> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = root.join(".venv/bin/python");
        ensure!(python.is_file(), "{} is missing: run scripts/setup.sh (it installs moto[server])", python.display());
        // A free port: bind port 0, note the port, let it go for moto to take.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting moto with {}", python.display()))?;
        let mut moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = moto.child.try_wait()? {
                bail!("moto exited at start ({status})");
            }
            if http(port, "GET", "/moto-api/").is_ok() {
                return Ok(moto);
            }
            ensure!(Instant::now() < deadline, "moto did not answer on port {port} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One bare HTTP/1.1 request (moto needs no signature for bucket creation); the status code.
fn http(port: u16, method: &str, path: &str) -> Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let code = reply.split_whitespace().nth(1).context("empty HTTP reply")?;
    Ok(code.parse()?)
}

fn main() -> Result<()> {
    if let Some(done) = CLOUD.child(cases) {
        return done;
    }
    let moto = Moto::start()?;
    let code = http(moto.port, "PUT", &format!("/{BUCKET}"))?;
    ensure!(code == 200, "creating bucket {BUCKET} answered {code}");
    let status = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, "1")
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", moto.port))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("REALM_S3_FORCE_PATH_STYLE", "true")
        // No profile files or instance metadata from the machine running the tests.
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .status()?;
    ensure!(status.success(), "the S3 cases failed ({status})");
    Ok(())
}

async fn cases() -> Result<()> {
    CLOUD.run_cases(Box::pin(store_put_get_list_size())).await
}

async fn store_put_get_list_size() -> Result<()> {
    // ListObjectsV2 pages hold 1,000 keys.
    CLOUD.put_get_list(1003).await?;

    // A missing bucket is an error that names it, not a missing object.
    let other = Store::for_uri(&ObjectUri::parse("s3://no-such-bucket/k")?).await?;
    match other.get("k").await {
        Err(e @ StorageError::Io { .. }) => ensure!(e.to_string().contains("s3://no-such-bucket/k"), "{e}"),
        r => bail!("get from a missing bucket gave {r:?}"),
    }
    Ok(())
}
