//! `realm`: the command-line front of the Realm engine.

mod batch_cmd;
mod bench;
mod default_model;
mod function;
mod logging;
mod membw;
mod quantize;
mod serve;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use realm_engine::chat::ChatMessage;
use realm_engine::gguf::GgufFile;
use realm_engine::sampler::SamplingParams;
use realm_engine::tokenizer::Tokenizer;
use realm_engine::{BackendChoice, Engine, EngineOptions, GenerateParams, Precision};

#[derive(Parser)]
#[command(name = "realm", version, about = "Serverless LLM inference runtime")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt, streaming it to stdout.
    Run(RunArgs),
    /// Serve the OpenAI API (chat completions, completions, models; JSON and SSE) over HTTP.
    Serve(serve::ServeArgs),
    /// Run a batch job (OpenAI Batch JSONL) from an input object to an output prefix; resumable.
    Batch(batch_cmd::BatchArgs),
    /// Check a function manifest (realm.yaml) or print its JSON Schema.
    #[command(subcommand)]
    Function(function::FunctionCmd),
    /// Fetch a model into the model cache: the default one (size and sha256 verified), or one
    /// named by an s3://, gs://, az:// or https:// URI, `REALM_MODEL_SHA256` checked when set.
    Pull {
        /// `default`, or an object URI.
        #[arg(default_value = "default")]
        model: String,
    },
    /// Print a GGUF file's metadata and tensor table.
    Inspect { file: PathBuf },
    /// Print the token ids of TEXT as a JSON array (special tokens parsed, no BOS unless the
    /// model adds one).
    Tokenize {
        #[arg(long, default_value = "default")]
        model: String,
        text: String,
    },
    /// Measure prefill and decode speed, time to first token, peak memory and the decode
    /// bandwidth floor.
    Bench(bench::BenchArgs),
    /// Convert a GGUF model's weight matrices to another format (like llama.cpp's
    /// `llama-quantize --pure`).
    Quantize(quantize::QuantizeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    Exact,
    Fast,
}

/// `--backend`: which hardware runs the model.
#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    /// CUDA when usable, else a hardware GPU through wgpu, else the CPU (the log says which).
    Auto,
    Cpu,
    Cuda,
    Wgpu,
}

impl From<BackendArg> for BackendChoice {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Cpu => BackendChoice::Cpu,
            BackendArg::Cuda => BackendChoice::Cuda,
            BackendArg::Wgpu => BackendChoice::Wgpu,
        }
    }
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Exact => Precision::Exact,
            PrecisionArg::Fast => Precision::Fast,
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// A GGUF file, or `default` for the default model (fetched when absent).
    #[arg(long, default_value = "default")]
    model: String,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// exact: f32 activations (the reference path); fast: 8-bit activations and integer dots on
    /// the CPU, a bf16 KV cache on the CPU and an f16 one on wgpu.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Exact)]
    precision: PrecisionArg,
    /// CPU threads (0: one per physical core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long, value_enum, env = "REALM_BACKEND", default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Print one JSON object with the generated ids and text instead of streaming.
    #[arg(long)]
    json: bool,
}

/// Lets glibc's malloc keep memory it gets back instead of returning it to the kernel at once.
/// A forward step allocates buffers of a few hundred KiB to a few MiB (logits, a prefill's
/// activations) and frees them at its end; by default glibc maps each one afresh or trims the
/// heap after it, so every step pays a page fault per 4 KiB touched (A/B in bench/RESULTS.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    const MMAP_THRESHOLD: libc::c_int = 16 << 20;
    const TRIM_THRESHOLD: libc::c_int = 64 << 20;
    // SAFETY: mallopt only changes allocator parameters, before any thread exists; a value it
    // refuses leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> ExitCode {
    keep_freed_memory();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let serve_matches = matches.subcommand_matches("serve").cloned();
    match run_cli(cli, serve_matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("realm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(cli: Cli, serve_matches: Option<clap::ArgMatches>) -> Result<()> {
    match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Serve(args) => serve::run(args, serve_matches.unwrap_or_default()),
        Cmd::Function(cmd) => function::run(cmd),
        Cmd::Batch(args) => batch_cmd::run(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Quantize(args) => quantize::run(args),
        Cmd::Pull { model } if model == "default" => default_model::pull().map(|_| ()),
        Cmd::Pull { model } => default_model::fetch_uri(&model, default_model::env_sha256().as_deref()).map(|_| ()),
        Cmd::Inspect { file } => inspect(&file),
        Cmd::Tokenize { model, text } => {
            let path = default_model::resolve(&model)?;
            let file = GgufFile::open(&path)?;
            let tok = Tokenizer::from_gguf(&file)?;
            println!("{}", serde_json::to_string(&tok.encode_prompt(&text))?);
            Ok(())
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let path = default_model::resolve(&args.model)?;
    let engine = Engine::load(
        &path,
        &EngineOptions { threads: args.threads, precision: args.precision.into(), backend: args.backend.into() },
    )
    .with_context(|| format!("loading {}", path.display()))?;
    eprintln!("realm: backend {}", engine.backend_note());
    let prompt_text = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = args.system {
            messages.push(ChatMessage { role: "system".into(), content: system });
        }
        messages.push(ChatMessage { role: "user".into(), content: args.prompt });
        engine.chat_template.render(&messages, true)?
    } else {
        args.prompt
    };
    let prompt = engine.encode_prompt(&prompt_text);
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repetition_penalty: args.repeat_penalty,
            seed: args.seed,
            ..SamplingParams::default()
        },
        stop: args.stop,
        ignore_eos: args.ignore_eos,
    };
    let mut stdout = std::io::stdout().lock();
    let stream = !args.json;
    let generation = engine.generate(&prompt, &params, |event| {
        // A closed stdout (`| head`) cancels generation instead of failing it.
        !stream || (stdout.write_all(event.text.as_bytes()).is_ok() && stdout.flush().is_ok())
    })?;
    if stream {
        let _ = writeln!(stdout);
    } else {
        let out = serde_json::json!({
            "prompt_ids": prompt,
            "ids": generation.ids,
            "text": generation.text,
            "finish_reason": format!("{:?}", generation.finish_reason).to_lowercase(),
        });
        writeln!(stdout, "{out}")?;
    }
    let gen_n = generation.ids.len();
    let rate = |n: usize, d: std::time::Duration| if d.as_secs_f64() > 0.0 { n as f64 / d.as_secs_f64() } else { 0.0 };
    eprintln!(
        "realm: prompt {} tokens, generated {gen_n} tokens, prefill {:.1} tok/s, decode {:.1} tok/s, {} threads, finish {:?}",
        generation.prompt_tokens,
        rate(generation.prompt_tokens, generation.prefill_time),
        rate(gen_n.saturating_sub(1), generation.decode_time),
        engine.threads(),
        generation.finish_reason,
    );
    Ok(())
}

fn inspect(path: &std::path::Path) -> Result<()> {
    let f = GgufFile::open(path)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "file: {} ({} bytes)", path.display(), f.file_size())?;
    writeln!(out, "gguf version {}, alignment {}, data at offset {}", f.version, f.alignment, f.data_offset)?;
    writeln!(out, "\nmetadata ({} keys):", f.metadata.len())?;
    for (k, v) in &f.metadata {
        writeln!(out, "  {k:<44} {v}")?;
    }
    writeln!(out, "\ntensors ({}):", f.tensors.len())?;
    writeln!(out, "  {:<32} {:<8} {:<20} {:>12} {:>14}", "name", "type", "dims", "bytes", "offset")?;
    for t in &f.tensors {
        let dims = format!("{:?}", t.dims);
        writeln!(
            out,
            "  {:<32} {:<8} {:<20} {:>12} {:>14}",
            t.name,
            t.ggml_type.name(),
            dims,
            t.byte_size,
            t.file_offset
        )?;
    }
    Ok(())
}
