//! realm-storage against a real S3 API: moto in server mode (`.venv`, from
//! `scripts/requirements.txt`) on a free loopback port.
//!
//! The AWS SDK reads its endpoint, region and credentials from the environment, and changing
//! the environment of a running (multi-threaded) test process is unsound; so `main` starts moto
//! and runs this same binary again as a child with the environment set, and the child runs the
//! cases. `harness = false` (see Cargo.toml): run with `cargo test -p realm-storage --features s3
//! --test s3`.
#![cfg(feature = "s3")]

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail, ensure};
use realm_storage::{ObjectUri, StorageError, Store};

mod common;

use common::{BUCKET, Cloud, Emulator, http_status};

const CHILD_ENV: &str = "REALM_STORAGE_S3_TEST_CHILD";
static CLOUD: Cloud = Cloud { scheme: "s3", child_env: CHILD_ENV, fetch_env: "REALM_STORAGE_S3_TEST_FETCH" };

/// moto in server mode, from the project's venv.
fn start_moto() -> Result<Emulator> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    ensure!(python.is_file(), "{} is missing: run scripts/setup.sh (it installs moto[server])", python.display());
    let command = |port: u16| {
        let mut c = Command::new(&python);
        c.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()]);
        c
    };
    Emulator::start("moto", command, |port| http_status(port, "GET", "/moto-api/").is_ok())
}

fn main() -> Result<()> {
    if let Some(done) = CLOUD.child(cases) {
        return done;
    }
    let moto = start_moto()?;
    // moto needs no signature to make a bucket.
    let code = http_status(moto.port, "PUT", &format!("/{BUCKET}"))?;
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
