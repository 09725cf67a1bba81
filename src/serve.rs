//! `realm serve`: the OpenAI-compatible server on `$PORT`. The socket answers (`/health`)
//! from the first milliseconds; the model is fetched and loaded on the engine thread, and
//! `/ready` turns 200 when it has. SIGTERM or SIGINT: stop accepting, let running streams
//! finish within the grace period, exit 0.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use realm_engine::worker::{EngineHandle, LoadState, WorkerConfig};
use realm_engine::{Engine, EngineOptions};
use realm_events::BatchJobs;
use realm_functions::Manifest;
use realm_http::limits::RateLimits;
use realm_http::platform::Platform;
use realm_http::{AppState, GenerationDefaults, ServerConfig, Startup};
use realm_lambda::ResponseMode;

use crate::{BackendArg, PrecisionArg, default_model, logging};

/// The function manifest's text, for platforms that cannot mount a file (Lambda, Cloud Run
/// without a volume); the Terraform modules set it from realm.yaml.
const FUNCTION_YAML_ENV: &str = "REALM_FUNCTION_YAML";

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A function manifest (realm.yaml); its settings apply where no flag or variable is given.
    /// Platforms that cannot mount a file pass its text in REALM_FUNCTION_YAML instead.
    #[arg(long, env = "REALM_FUNCTION")]
    function: Option<std::path::PathBuf>,
    /// A GGUF file, `default` for the default model (fetched when absent), or an s3://, gs://,
    /// az://, https:// or file:// URI (fetched into REALM_MODEL_CACHE once).
    #[arg(long, env = "REALM_MODEL", default_value = "default")]
    model: String,
    /// Hex sha256 a model fetched from a URI must have (checked before it enters the cache).
    #[arg(long, env = "REALM_MODEL_SHA256")]
    model_sha256: Option<String>,
    /// The model id clients name (default: the file name without `.gguf`).
    #[arg(long, env = "REALM_MODEL_ID")]
    model_id: Option<String>,
    #[arg(long, env = "REALM_HOST", default_value = "0.0.0.0")]
    host: String,
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// CPU threads (0: one per physical core).
    #[arg(long, env = "REALM_THREADS", default_value_t = 0)]
    threads: usize,
    #[arg(long, value_enum, env = "REALM_PRECISION", default_value_t = PrecisionArg::Fast)]
    precision: PrecisionArg,
    #[arg(long, value_enum, env = "REALM_BACKEND", default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Sequences decoded together in one step.
    #[arg(long, env = "REALM_MAX_BATCH", default_value_t = 16)]
    max_batch: usize,
    /// Requests that may wait for a batch slot; beyond that the server answers 429.
    #[arg(long, env = "REALM_MAX_QUEUE", default_value_t = 256)]
    max_queue: usize,
    /// Tokens per forward step: one per running sequence, the rest for prompt chunks.
    #[arg(long, env = "REALM_STEP_TOKENS", default_value_t = 512)]
    step_tokens: usize,
    /// KV cache budget shared by all sequences, in MiB.
    #[arg(long, env = "REALM_KV_CACHE_MIB", default_value_t = 1024)]
    kv_cache_mib: usize,
    /// API keys, comma-separated; none means no authentication.
    #[arg(long, env = "REALM_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    api_keys: Vec<String>,
    /// A file with one API key per line (`#` starts a comment).
    #[arg(long, env = "REALM_API_KEYS_FILE")]
    api_keys_file: Option<std::path::PathBuf>,
    /// Requests per minute per API key.
    #[arg(long, env = "REALM_RATE_LIMIT_RPM")]
    rate_limit_rpm: Option<u32>,
    /// Tokens (prompt + max_tokens) per minute per API key.
    #[arg(long, env = "REALM_RATE_LIMIT_TPM")]
    rate_limit_tpm: Option<u32>,
    /// Largest request body in bytes.
    #[arg(long, env = "REALM_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// While the model loads, hold `/v1/*` requests up to this many seconds (0: answer 503).
    #[arg(long, env = "REALM_HOLD_WHILE_LOADING", default_value_t = 0)]
    hold_while_loading: u64,
    /// Wall-time budget per request in seconds, enforced by the server (0: none).
    #[arg(long, env = "REALM_REQUEST_TIMEOUT", default_value_t = 600)]
    request_timeout: u64,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, env = "REALM_MAX_TOKENS_LIMIT")]
    max_tokens_limit: Option<usize>,
    /// `max_tokens` when a request gives none (default: the rest of the context).
    #[arg(long, env = "REALM_DEFAULT_MAX_TOKENS")]
    default_max_tokens: Option<usize>,
    /// Seconds running streams get to finish after SIGTERM.
    #[arg(long, env = "REALM_GRACE_PERIOD", default_value_t = 8)]
    grace_period: u64,
    /// Seconds between SSE keep-alive comments on an idle stream.
    #[arg(long, env = "REALM_SSE_KEEP_ALIVE", default_value_t = 15)]
    keep_alive: u64,
    /// Require the API key on `/metrics` too.
    #[arg(long, env = "REALM_PROTECT_METRICS")]
    protect_metrics: bool,
    /// Let events name `file://` inputs and outputs under this directory (otherwise events
    /// may name object stores only).
    #[arg(long, env = "REALM_BATCH_LOCAL_ROOT")]
    batch_local_root: Option<std::path::PathBuf>,
}

pub fn run(mut args: ServeArgs, matches: clap::ArgMatches) -> Result<()> {
    let process_start = Instant::now();
    let (platform, why) = Platform::detect(|k| std::env::var(k).ok())?;
    logging::init(platform.cloud_logging());
    tracing::info!(platform = %platform, detected_by = why, "platform");
    let manifest = match (&args.function, std::env::var(FUNCTION_YAML_ENV).ok().filter(|t| !t.trim().is_empty())) {
        (Some(_), Some(_)) => {
            bail!("give the function manifest as --function/REALM_FUNCTION or {FUNCTION_YAML_ENV}, not both")
        }
        (Some(path), None) => {
            Some(Manifest::from_file(path).with_context(|| format!("function manifest {}", path.display()))?)
        }
        (None, Some(text)) => {
            Some(Manifest::parse(&text).with_context(|| format!("function manifest in {FUNCTION_YAML_ENV}"))?)
        }
        (None, None) => None,
    };
    if let Some(m) = &manifest {
        apply_manifest(&mut args, m, &matches)?;
    }
    let function = manifest;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, function, platform, process_start))
}

/// Settings from the manifest, below flags and `REALM_*` variables: a value clap took from
/// its default is replaced.
fn apply_manifest(args: &mut ServeArgs, m: &Manifest, matches: &clap::ArgMatches) -> Result<()> {
    let unset = |id: &str| matches!(matches.value_source(id), None | Some(ValueSource::DefaultValue));
    if unset("model") {
        args.model = match m.model.uri.split_once("://") {
            Some(("file", path)) => path.to_string(),
            _ => m.model.uri.clone(),
        };
        if args.model_sha256.is_none() {
            args.model_sha256 = m.model.sha256.clone();
        }
    }
    let r = &m.runtime;
    if unset("precision") {
        args.precision = match r.precision {
            realm_functions::Precision::Exact => PrecisionArg::Exact,
            realm_functions::Precision::Fast => PrecisionArg::Fast,
        };
    }
    if unset("threads") {
        args.threads = r.threads as usize;
    }
    if unset("max_batch") {
        args.max_batch = r.max_batch as usize;
    }
    if unset("kv_cache_mib") {
        args.kv_cache_mib = r.kv_cache_mib as usize;
    }
    let l = &m.limits;
    if unset("rate_limit_rpm") {
        args.rate_limit_rpm = l.requests_per_minute;
    }
    if unset("rate_limit_tpm") {
        args.rate_limit_tpm = l.tokens_per_minute;
    }
    if unset("request_timeout")
        && let Some(t) = l.request_timeout_s
    {
        args.request_timeout = u64::from(t);
    }
    if unset("max_tokens_limit") {
        args.max_tokens_limit = l.max_tokens.map(|t| t as usize);
    }
    if unset("default_max_tokens") {
        args.default_max_tokens = m.generation.max_tokens.map(|t| t as usize);
    }
    if unset("backend") {
        args.backend = match r.backend {
            realm_functions::Backend::Auto => BackendArg::Auto,
            realm_functions::Backend::Cpu => BackendArg::Cpu,
            realm_functions::Backend::Cuda => BackendArg::Cuda,
            realm_functions::Backend::Wgpu => BackendArg::Wgpu,
        };
    }
    Ok(())
}

fn read_keys(args: &ServeArgs) -> Result<Vec<String>> {
    let mut keys: Vec<String> = args.api_keys.iter().map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
    if let Some(path) = &args.api_keys_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading API keys from {}", path.display()))?;
        keys.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string));
    }
    Ok(keys)
}

fn model_id(args: &ServeArgs) -> String {
    if let Some(id) = &args.model_id {
        return id.clone();
    }
    let name = if args.model == "default" { default_model::FILE_NAME } else { &args.model };
    let stem = Path::new(name).file_name().and_then(|f| f.to_str()).unwrap_or(name);
    stem.strip_suffix(".gguf").unwrap_or(stem).to_string()
}

async fn serve(args: ServeArgs, function: Option<Manifest>, platform: Platform, process_start: Instant) -> Result<()> {
    // Lambda hands invocations over its Runtime API; everywhere else the socket opens first, so
    // `/health` answers while the model loads.
    let listener = if platform == Platform::Lambda {
        None
    } else {
        let addr: SocketAddr = format!("{}:{}", args.host, args.port)
            .parse()
            .or_else(|_| format!("[{}]:{}", args.host, args.port).parse())
            .with_context(|| format!("--host {} --port {} is not an address to listen on", args.host, args.port))?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "listening");
        Some(listener)
    };

    let id = model_id(&args);
    let mut aliases = vec![args.model.clone()];
    let mut defaults = GenerationDefaults { max_tokens: args.default_max_tokens, ..GenerationDefaults::default() };
    if let Some(m) = &function {
        tracing::info!(function = %m.name, model = %args.model, "serving function");
        aliases.push(m.name.clone());
        let g = &m.generation;
        defaults.temperature = g.temperature.unwrap_or(defaults.temperature);
        defaults.top_p = g.top_p.unwrap_or(defaults.top_p);
        defaults.top_k = g.top_k.map_or(defaults.top_k, |k| k as usize);
        defaults.min_p = g.min_p.unwrap_or(defaults.min_p);
    }
    let config = ServerConfig {
        model_aliases: aliases,
        model_id: id.clone(),
        api_keys: read_keys(&args)?,
        rate_limits: RateLimits { requests_per_minute: args.rate_limit_rpm, tokens_per_minute: args.rate_limit_tpm },
        max_body_bytes: args.max_body_bytes,
        hold_while_loading: (args.hold_while_loading > 0).then(|| Duration::from_secs(args.hold_while_loading)),
        request_timeout: (args.request_timeout > 0).then(|| Duration::from_secs(args.request_timeout)),
        max_tokens_limit: args.max_tokens_limit,
        defaults,
        keep_alive: Duration::from_secs(args.keep_alive.max(1)),
        protect_metrics: args.protect_metrics,
        event_types: function.as_ref().map(|m| m.triggers.events.clone()).unwrap_or_default(),
        batch_routes: function.as_ref().map(|m| m.triggers.batch.clone()).unwrap_or_default(),
        http_api: function.as_ref().is_none_or(|m| m.triggers.http),
    };
    if config.api_keys.is_empty() && platform != Platform::Lambda {
        tracing::warn!("no API keys configured: /v1/* is open to anyone who can reach the port");
    }
    let startup = Arc::new(Startup::new(process_start));
    let worker = WorkerConfig {
        max_batch: args.max_batch.max(1),
        step_tokens: args.step_tokens,
        block_size: 16,
        kv_cache_bytes: args.kv_cache_mib << 20,
        max_waiting: args.max_queue,
        context_limit: function.as_ref().and_then(|m| m.runtime.context_length).map(|c| c as usize),
    };
    let options =
        EngineOptions { threads: args.threads, precision: args.precision.into(), backend: args.backend.into() };
    let load_startup = startup.clone();
    let (model, model_sha256) = (args.model.clone(), args.model_sha256.clone().filter(|s| !s.is_empty()));
    let engine = EngineHandle::spawn(
        move || {
            let t = Instant::now();
            let path = default_model::resolve_checked(&model, model_sha256.as_deref()).map_err(|e| format!("{e:#}"))?;
            let _ = load_startup.model_fetch.set(t.elapsed());
            let t = Instant::now();
            let engine = Engine::load(&path, &options).map_err(|e| format!("loading {}: {e}", path.display()))?;
            let _ = load_startup.model_load.set(t.elapsed());
            tracing::info!(
                model = %path.display(),
                load_ms = t.elapsed().as_millis() as u64,
                since_start_ms = load_startup.process_start.elapsed().as_millis() as u64,
                threads = engine.threads(),
                backend = engine.backend_note(),
                "model loaded"
            );
            Ok(engine)
        },
        worker,
    )
    .context("starting the engine thread")?;

    let state = AppState::new(engine, config, startup);
    let jobs = BatchJobs::new(args.batch_local_root.clone());
    state.set_batches(jobs.clone());
    let app = realm_http::router(state.clone());
    jobs.attach(app.clone());
    let Some(listener) = listener else {
        return serve_lambda(state, app).await;
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drain_state = state.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new requests; running streams may finish");
        drain_state.start_draining();
        let _ = stop_tx.send(true);
    });
    let grace = Duration::from_secs(args.grace_period);
    let mut stopping = stop_rx.clone();
    tokio::select! {
        result = server => result.context("serving")?,
        () = async {
            let _ = stopping.wait_for(|&s| s).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(in_flight = state.engine().in_flight(), "grace period over; exiting with requests still running");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Lambda: the model loads during the Init phase (before the first invocation is polled),
/// then the runtime loop hands every invocation to the router.
async fn serve_lambda(state: AppState, app: axum::Router) -> Result<()> {
    let started = Instant::now();
    match state.engine().loaded().await {
        LoadState::Ready(info) => {
            tracing::info!(
                init_ms = started.elapsed().as_millis() as u64,
                load_ms = info.load_time.as_millis() as u64,
                "lambda init done"
            )
        }
        LoadState::Failed(e) => bail!("the model failed to load during Lambda init: {e}"),
        LoadState::Loading => bail!("the engine stopped while loading"),
    }
    let mode = match std::env::var("REALM_LAMBDA_RESPONSE").unwrap_or_default().as_str() {
        "" | "stream" => ResponseMode::Streaming,
        "buffered" => ResponseMode::Buffered,
        other => bail!("REALM_LAMBDA_RESPONSE={other:?} is not `stream` or `buffered`"),
    };
    tracing::info!(response = ?mode, "polling the Lambda Runtime API");
    realm_lambda::run(app, mode).await.map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
