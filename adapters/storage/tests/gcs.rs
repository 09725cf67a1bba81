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

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use realm_storage::{ObjectUri, StorageError, Store};

mod common;

use common::{BUCKET, Cloud, Emulator, http_status};

const CHILD_ENV: &str = "REALM_STORAGE_GCS_TEST_CHILD";
static CLOUD: Cloud = Cloud { scheme: "gs", child_env: CHILD_ENV, fetch_env: "REALM_STORAGE_GCS_TEST_FETCH" };

/// gcp-storage-emulator from the project's venv, in memory, with the tests' bucket made at
/// start.
fn start_emulator() -> Result<Emulator> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let launcher = root.join(".venv/bin/gcp-storage-emulator");
    ensure!(
        launcher.is_file(),
        "{} is missing: run scripts/setup.sh (it installs gcp-storage-emulator)",
        launcher.display()
    );
    let command = |port: u16| {
        let mut c = Command::new(&launcher);
        c.args(["start", "--host", "127.0.0.1", "--port", &port.to_string(), "--in-memory", "--quiet"])
            .args(["--default-bucket", BUCKET]);
        c
    };
    let ready = |port| http_status(port, "GET", &format!("/storage/v1/b/{BUCKET}")).is_ok_and(|code| code == 200);
    Emulator::start("gcp-storage-emulator", command, ready)
}

fn main() -> Result<()> {
    if let Some(done) = CLOUD.child(cases) {
        return done;
    }
    let emulator = start_emulator()?;
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
