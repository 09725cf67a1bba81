//! `realm batch --input URI --output URI`: one batch job, run in this process through the same
//! router `realm serve` uses (no socket), resumable: run it again after a crash and it goes on
//! from the parts already committed.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use realm_engine::worker::{EngineHandle, LoadState, WorkerConfig};
use realm_engine::{Engine, EngineOptions};
use realm_events::{Counts, Job};
use realm_http::{AppState, ServerConfig, Startup};
use realm_storage::ObjectUri;

use crate::{BackendArg, PrecisionArg, default_model};

#[derive(clap::Args)]
pub struct BatchArgs {
    /// The input JSONL (OpenAI Batch format): s3://, gs://, az://, file:// or a path.
    #[arg(long)]
    input: String,
    /// Where results go: part files, then output.jsonl and errors.jsonl.
    #[arg(long)]
    output: String,
    #[arg(long, env = "REALM_MODEL", default_value = "default")]
    model: String,
    #[arg(long, env = "REALM_THREADS", default_value_t = 0)]
    threads: usize,
    #[arg(long, value_enum, env = "REALM_PRECISION", default_value_t = PrecisionArg::Fast)]
    precision: PrecisionArg,
    #[arg(long, value_enum, env = "REALM_BACKEND", default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Sequences decoded together.
    #[arg(long, env = "REALM_MAX_BATCH", default_value_t = 32)]
    max_batch: usize,
}

pub fn run(args: BatchArgs) -> Result<()> {
    let input = ObjectUri::parse(&args.input)?;
    let output = ObjectUri::parse(&args.output)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let path = default_model::resolve(&args.model)?;
        let options =
            EngineOptions { threads: args.threads, precision: args.precision.into(), backend: args.backend.into() };
        let load_path = path.clone();
        let engine = EngineHandle::spawn(
            move || Engine::load(&load_path, &options).map_err(|e| e.to_string()),
            WorkerConfig { max_batch: args.max_batch.max(1), ..WorkerConfig::default() },
        )?;
        if let LoadState::Failed(e) = engine.loaded().await {
            bail!("loading {}: {e}", path.display());
        }
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let config = ServerConfig {
            model_id: stem,
            model_aliases: vec![args.model.clone(), "default".into()],
            request_timeout: None,
            ..ServerConfig::default()
        };
        let router = realm_http::router(AppState::new(engine, config, Arc::new(Startup::new(Instant::now()))));
        let started = Instant::now();
        let counts = realm_events::batch::run(router, &Job { input, output: output.clone() }, |c: Counts| {
            eprintln!("realm: batch {}/{} done ({} failed)", c.completed + c.failed, c.total, c.failed);
        })
        .await
        .context("batch")?;
        eprintln!(
            "realm: batch finished in {:.1} s: {} answered, {} in errors.jsonl; results in {output}",
            started.elapsed().as_secs_f64(),
            counts.completed,
            counts.failed
        );
        Ok(())
    })
}
