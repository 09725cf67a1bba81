//! realm-storage against a real Azure Blob API: Azurite (`scripts/setup-azurite.sh` installs
//! it) on a free loopback port, reached as users reach it, through
//! `AZURE_STORAGE_CONNECTION_STRING` with Azurite's well-known development account.
//!
//! The store reads its endpoint and credentials from the environment, and changing the
//! environment of a running (multi-threaded) test process is unsound; so `main` starts Azurite
//! and runs this same binary again as a child with the environment set, and the child runs the
//! cases. `harness = false` (see Cargo.toml): run with `cargo test -p realm-storage --features
//! azure --test azure`.
#![cfg(feature = "azure")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use realm_storage::{ObjectUri, StorageError, Store};

mod common;

use common::{Cloud, Emulator, http_status};

const CHILD_ENV: &str = "REALM_STORAGE_AZURE_TEST_CHILD";
static CLOUD: Cloud = Cloud { scheme: "az", child_env: CHILD_ENV, fetch_env: "REALM_STORAGE_AZURE_TEST_FETCH" };
/// The azurite-blob launcher; when unset, `scripts/setup-azurite.sh` installs it and says where.
const AZURITE_ENV: &str = "REALM_AZURITE_BLOB";
/// Azurite's development account and its key, which Microsoft publishes for every emulator user.
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite and the folder it runs in.
struct Azurite {
    server: Emulator,
    _dir: tempfile::TempDir,
}

fn azurite_launcher(root: &Path) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(AZURITE_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new("bash")
        .arg(root.join("scripts/setup-azurite.sh"))
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/setup-azurite.sh")?;
    ensure!(out.status.success(), "scripts/setup-azurite.sh failed ({})", out.status);
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

impl Azurite {
    fn start() -> Result<Azurite> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let launcher = azurite_launcher(&root)?;
        ensure!(launcher.is_file(), "{} is missing: run scripts/setup-azurite.sh", launcher.display());
        // In memory, but run in a folder of its own in case it writes anything.
        let dir = tempfile::tempdir()?;
        let command = |port: u16| {
            let mut c = Command::new(&launcher);
            c.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .args(["--inMemoryPersistence", "--silent", "--disableTelemetry"])
                .current_dir(dir.path());
            c
        };
        // Any answer will do: an unsigned request is refused.
        let server = Emulator::start("Azurite", command, |port| http_status(port, "GET", "/").is_ok())?;
        Ok(Azurite { server, _dir: dir })
    }
}

fn main() -> Result<()> {
    if let Some(done) = CLOUD.child(cases) {
        return done;
    }
    let azurite = Azurite::start()?;
    let connection = format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_ACCOUNT_KEY};\
         BlobEndpoint=http://127.0.0.1:{}/{DEV_ACCOUNT};",
        azurite.server.port
    );
    let status = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, "1")
        .env("AZURE_STORAGE_CONNECTION_STRING", connection)
        // No identity of the machine running the tests.
        .env_remove("AZURE_STORAGE_ACCOUNT")
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .env_remove("AZURE_CLIENT_ID")
        .status()?;
    ensure!(status.success(), "the Azure cases failed ({status})");
    Ok(())
}

async fn cases() -> Result<()> {
    let Store::Azure(s) = CLOUD.store().await? else { bail!("az:// gave another store") };
    s.client().create(None).await.context("creating the container")?;
    CLOUD.run_cases(Box::pin(store_put_get_list_size())).await
}

async fn store_put_get_list_size() -> Result<()> {
    // List Blobs pages hold 5,000 blobs.
    CLOUD.put_get_list(5003).await?;

    // A missing container is an error that names it, not a missing blob.
    let other = Store::for_uri(&ObjectUri::parse("az://no-such-container/k")?).await?;
    match other.get("k").await {
        Err(e @ StorageError::Io { .. }) => {
            let text = e.to_string();
            ensure!(text.contains("az://no-such-container/k") && text.contains("ContainerNotFound"), "{text}");
            // The SAS the store signed stays out of errors (and so out of logs).
            ensure!(!text.contains("sig="), "the error holds the SAS: {text}");
            println!("a missing container: {text}");
        }
        r => bail!("get from a missing container gave {r:?}"),
    }
    match other.stat("k").await {
        Err(e @ StorageError::Io { .. }) => {
            let text = e.to_string();
            ensure!(text.contains("az://no-such-container/k") && text.contains("ContainerNotFound"), "{text}");
        }
        r => bail!("stat in a missing container gave {r:?}"),
    }
    Ok(())
}
