//! `realm bench`: prefill and decode speed, time to first token and peak memory on one model,
//! with the decode step's memory-bandwidth floor (bytes it reads over a measured read
//! bandwidth) and the share of that floor the measured decode reached.
//!
//! Per batch size and prompt length: one warm-up run, then `--repeat` measured ones, each with
//! fresh sequences: all prompts in one forward step, then greedy decode past end-of-generation.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use realm_engine::gguf::GgufFile;
use realm_engine::{Engine, EngineOptions, Precision};
use serde_json::{Value, json};

use crate::{BackendArg, PrecisionArg, default_model, membw};

/// The probe's buffer: far larger than any last-level cache, so it measures DRAM.
const PROBE_BYTES: usize = 1 << 30;
/// Passes over it; the fastest counts (other tenants of a shared host slow some passes).
const PROBE_PASSES: usize = 10;

/// Repeated (and cut) to make prompts of any length; its content does not change the timing.
const PROMPT_TEXT: &str = "The history of computing is a story of machines that learned to remember. \
Early mechanical calculators kept their state in gears and levers; later, vacuum tubes and \
magnetic cores held numbers for a few microseconds at a time. Each generation of memory was \
faster and denser than the last, and each one changed what programmers believed was possible.";

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A GGUF file, or `default` for the default model (fetched when absent).
    #[arg(long, default_value = "default")]
    model: String,
    /// Prompt lengths to measure, in tokens (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [128usize, 512], value_parser = at_least::<1>)]
    prompt_tokens: Vec<usize>,
    /// Tokens generated after each prompt (the first comes from the prefill step).
    #[arg(long, default_value_t = 128, value_parser = at_least::<2>)]
    gen_tokens: usize,
    /// CPU threads (0: one per physical core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Sequences decoded together (comma-separated): each batch size runs every prompt length,
    /// all sequences prefilled in one step and then decoded in lockstep.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize], value_parser = at_least::<1>)]
    batch: Vec<usize>,
    /// Measured runs per prompt length, after one warm-up run.
    #[arg(long, default_value_t = 3, value_parser = at_least::<1>)]
    repeat: usize,
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fast)]
    precision: PrecisionArg,
    /// Which hardware runs the model (`auto` picks a GPU when there is one).
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// A count of at least `MIN`.
fn at_least<const MIN: usize>(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= MIN => Ok(n),
        _ => Err(format!("expected a whole number of at least {MIN}, got {s:?}")),
    }
}

/// Median, minimum and maximum of a sample.
#[derive(Debug, Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Self { median, min: v.first().copied().unwrap_or(f64::NAN), max: v.last().copied().unwrap_or(f64::NAN) }
    }

    fn json(&self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }
}

/// One timed generation.
struct Sample {
    prefill_tok_s: f64,
    ttft_s: f64,
    decode_tok_s: f64,
}

/// Results for one batch size and prompt length (speeds summed over the batch).
struct Row {
    batch: usize,
    prompt_tokens: usize,
    prefill_tok_s: Stat,
    ttft_ms: Stat,
    decode_tok_s: Stat,
    /// Bytes one decode step reads, at the mean context of the decode steps, per token it
    /// yields.
    decode_bytes_per_token: f64,
    /// What bounded the decode steps, measured right before and right after them.
    bw: Bandwidth,
}

impl Row {
    /// Decode tok/s if a step took just the time to read its bytes at `bw`.
    fn decode_floor_tok_s(&self) -> f64 {
        self.bw.bytes_per_s() / self.decode_bytes_per_token
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let path = default_model::resolve(&args.model)?;
    let precision: Precision = args.precision.into();
    let weight_bytes = decode_weight_bytes(&path)?;
    let engine = Engine::load(&path, &EngineOptions { threads: args.threads, precision, backend: args.backend.into() })
        .with_context(|| format!("loading {}", path.display()))?;
    let context = engine.config().context_length;
    if let Some(&p) = args.prompt_tokens.iter().find(|&&p| p + args.gen_tokens > context) {
        bail!("a prompt of {p} tokens plus {} generated exceeds the model's context of {context}", args.gen_tokens);
    }
    let kv_per_pos = engine.kv_bytes_per_position() as f64;
    eprintln!("realm bench: backend {}", engine.backend_note());
    let threads = engine.threads();
    let mut probe = Probe { device: engine.device_copy_bandwidth()?, threads, peak_rss: 0, hwm_reset: true };

    let mut measured = Vec::new();
    for &b in &args.batch {
        for &p in &args.prompt_tokens {
            let prompts = vec![make_prompt(&engine, p)?; b];
            generate_once(&engine, &prompts, args.gen_tokens)?; // warm-up
            let before = probe.measure()?;
            let samples = (0..args.repeat)
                .map(|_| generate_once(&engine, &prompts, args.gen_tokens))
                .collect::<Result<Vec<_>>>()?;
            let after = probe.measure()?;
            measured.push((b, p, samples, before.best_of(after)));
        }
    }
    let peak_rss = probe.peak_rss();
    let backend = engine.backend_kind().to_string();
    if let Some(note) = engine.launch_note()? {
        eprintln!("realm bench: {note}");
    }
    drop(engine);

    let rows: Vec<Row> = measured
        .into_iter()
        .map(|(b, p, samples, bw)| {
            let stat = |f: fn(&Sample) -> f64| Stat::of(&samples.iter().map(f).collect::<Vec<_>>());
            // Decode step i (1..gen) attends over p + i positions: p + gen/2 on average; a
            // step reads the weights once for the whole batch and each sequence's cache.
            let mean_context = p as f64 + args.gen_tokens as f64 / 2.0;
            let step_bytes = weight_bytes as f64 + kv_per_pos * mean_context * b as f64;
            Row {
                batch: b,
                prompt_tokens: p,
                prefill_tok_s: stat(|s| s.prefill_tok_s),
                ttft_ms: stat(|s| s.ttft_s * 1e3),
                decode_tok_s: stat(|s| s.decode_tok_s),
                decode_bytes_per_token: step_bytes / b as f64,
                bw,
            }
        })
        .collect();

    let bw =
        rows.iter().map(|r| r.bw).reduce(Bandwidth::best_of).context("no prompt length or batch size to measure")?;
    let report = Report { path: &path, args: &args, backend, threads, weight_bytes, kv_per_pos, bw, peak_rss, rows };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Exactly `n` tokens: BOS when the model wants one, then the text's tokens over and over.
fn make_prompt(engine: &Engine, n: usize) -> Result<Vec<u32>> {
    let body = engine.tokenizer.encode(PROMPT_TEXT, false);
    if body.is_empty() {
        bail!("the model's tokenizer gives no tokens for the benchmark text");
    }
    let mut ids = engine.encode_prompt("");
    ids.truncate(n);
    let rest = n - ids.len();
    ids.extend(body.iter().copied().cycle().take(rest));
    Ok(ids)
}

/// One timed batch: the prompts' step (which yields each sequence's first token), then
/// `gen_tokens - 1` decode steps.
fn generate_once(engine: &Engine, prompts: &[Vec<u32>], gen_tokens: usize) -> Result<Sample> {
    let run = engine.greedy_batch(prompts, gen_tokens)?;
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    let decoded: usize = run.ids.iter().map(|ids| ids.len().saturating_sub(1)).sum();
    Ok(Sample {
        prefill_tok_s: rate(prompt_tokens, run.prefill_time),
        ttft_s: run.prefill_time.as_secs_f64(),
        decode_tok_s: rate(decoded, run.decode_time),
    })
}

/// Measures the bandwidth that bounds decode next to each row's runs: a shared host's
/// bandwidth moves by a third within minutes, so a floor from a probe taken minutes away says
/// more about the neighbours than about the engine.
struct Probe {
    /// The GPU's copy bandwidth, measured once; `None` on the CPU backend.
    device: Option<f64>,
    threads: usize,
    /// The largest peak RSS read before a probe mapped its buffer.
    peak_rss: u64,
    /// Whether resetting the kernel's peak after each probe has worked so far.
    hwm_reset: bool,
}

impl Probe {
    fn measure(&mut self) -> Result<Bandwidth> {
        if let Some(b) = self.device {
            return Ok(Bandwidth::Device(b));
        }
        if self.hwm_reset {
            self.peak_rss = self.peak_rss.max(peak_rss_bytes());
        }
        let bw = membw::measure(PROBE_BYTES, self.threads, PROBE_PASSES)?;
        // The probe's gigabyte is not the engine's memory: the peak starts again from what is
        // resident now (Linux's clear_refs "5"). Where that fails, later peaks would include
        // the probe, so only the readings before the first probe count.
        self.hwm_reset = self.hwm_reset && std::fs::write("/proc/self/clear_refs", "5").is_ok();
        Ok(Bandwidth::Host(bw))
    }

    /// The whole run's peak RSS, probes' buffers left out.
    fn peak_rss(&self) -> u64 {
        if self.hwm_reset { self.peak_rss.max(peak_rss_bytes()) } else { self.peak_rss }
    }
}

/// What bounds a decode step: the host's DRAM read bandwidth, or the GPU's copy bandwidth.
#[derive(Clone, Copy)]
enum Bandwidth {
    Host(membw::ReadBandwidth),
    /// Device-to-device copy, bytes read plus written per second.
    Device(f64),
}

impl Bandwidth {
    /// The faster of two measurements.
    fn best_of(self, other: Bandwidth) -> Bandwidth {
        if other.bytes_per_s() > self.bytes_per_s() { other } else { self }
    }

    fn bytes_per_s(&self) -> f64 {
        match self {
            Bandwidth::Host(b) => b.bytes_per_s,
            Bandwidth::Device(b) => *b,
        }
    }

    fn median_bytes_per_s(&self) -> f64 {
        match self {
            Bandwidth::Host(b) => b.median_bytes_per_s,
            Bandwidth::Device(b) => *b,
        }
    }

    fn describe(&self) -> String {
        match self {
            Bandwidth::Host(b) => format!(
                "read bandwidth up to {:.1} GB/s ({} threads streaming {} MiB right before and after each row's \
                 runs, best of {} passes, median {:.1})",
                b.bytes_per_s / 1e9,
                b.threads,
                b.buffer_bytes >> 20,
                b.passes,
                b.median_bytes_per_s / 1e9
            ),
            Bandwidth::Device(b) => format!(
                "GPU copy bandwidth {:.1} GB/s (1 GiB device-to-device, bytes read + written, best of 10)",
                b / 1e9
            ),
        }
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Weight bytes one decode step reads: every tensor of the file, except that the token
/// embedding contributes one row when a separate output head exists (it is read whole when it
/// is the tied output head).
fn decode_weight_bytes(path: &Path) -> Result<u64> {
    let f = GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    let tied = f.tensor("output.weight").is_none();
    let mut total = 0u64;
    for t in &f.tensors {
        let bytes = if t.name == "token_embd.weight" && !tied {
            let rows = t.dims.get(1).copied().unwrap_or(1).max(1);
            t.byte_size / rows
        } else {
            t.byte_size
        };
        total = total.saturating_add(bytes);
    }
    Ok(total)
}

/// The process's peak resident set (`VmHWM`), model mapping and KV caches included; 0 where
/// /proc is not there.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

struct Report<'a> {
    path: &'a Path,
    args: &'a BenchArgs,
    backend: String,
    threads: usize,
    weight_bytes: u64,
    kv_per_pos: f64,
    bw: Bandwidth,
    peak_rss: u64,
    rows: Vec<Row>,
}

impl Report<'_> {
    fn precision(&self) -> &'static str {
        match self.args.precision {
            PrecisionArg::Exact => "exact",
            PrecisionArg::Fast => "fast",
        }
    }

    fn model_bytes(&self) -> u64 {
        std::fs::metadata(self.path).map_or(0, |m| m.len())
    }

    fn json(&self) -> Value {
        let runs: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "batch": r.batch,
                    "prompt_tokens": r.prompt_tokens,
                    "gen_tokens": self.args.gen_tokens,
                    "prefill_tok_s": r.prefill_tok_s.json(),
                    "ttft_ms": r.ttft_ms.json(),
                    "decode_tok_s": r.decode_tok_s.json(),
                    "decode_bytes_per_token": r.decode_bytes_per_token,
                    "decode_floor_tok_s": r.decode_floor_tok_s(),
                    "decode_floor_share": r.decode_tok_s.median / r.decode_floor_tok_s(),
                    "read_bandwidth_gb_s": r.bw.bytes_per_s() / 1e9,
                })
            })
            .collect();
        json!({
            "model": self.path.display().to_string(),
            "model_bytes": self.model_bytes(),
            "backend": self.backend,
            "threads": self.threads,
            "precision": self.precision(),
            "repeat": self.args.repeat,
            "warmup": 1,
            "weight_bytes_per_token": self.weight_bytes,
            "kv_bytes_per_position": self.kv_per_pos,
            "read_bandwidth_gb_s": self.bw.bytes_per_s() / 1e9,
            "read_bandwidth_median_gb_s": self.bw.median_bytes_per_s() / 1e9,
            "read_bandwidth_source": match self.bw { Bandwidth::Host(_) => "host read", Bandwidth::Device(_) => "device copy" },
            "peak_rss_bytes": self.peak_rss,
            "runs": runs,
        })
    }

    fn table(&self) -> String {
        let mib = |b: f64| b / (1024.0 * 1024.0);
        let mut s = format!(
            "model {} ({:.1} MiB), backend {}, {} threads, precision {}, {} runs per prompt after 1 warm-up\n",
            self.path.display(),
            mib(self.model_bytes() as f64),
            self.backend,
            self.threads,
            self.precision(),
            self.args.repeat,
        );
        s += &format!(
            "{}; a decode step reads {:.1} MiB of weights + {:.1} KiB of KV cache per position per sequence\n",
            self.bw.describe(),
            mib(self.weight_bytes as f64),
            self.kv_per_pos / 1024.0,
        );
        s += &format!(
            "peak RSS {:.1} MiB (VmHWM, whole process, model mapping included)\n\n",
            mib(self.peak_rss as f64)
        );
        s += &format!(
            "{:>5} {:>7} {:>7}  {:>26}  {:>26}  {:>24}  {:>6}  {:>11} {:>6}\n",
            "batch",
            "prompt",
            "gen",
            "prefill tok/s (min-max)",
            "TTFT ms (min-max)",
            "decode tok/s (min-max)",
            "GB/s",
            "floor tok/s",
            "share"
        );
        let cell = |st: &Stat| format!("{:.1} ({:.1}-{:.1})", st.median, st.min, st.max);
        for r in &self.rows {
            s += &format!(
                "{:>5} {:>7} {:>7}  {:>26}  {:>26}  {:>24}  {:>6.1}  {:>11.1} {:>5.0}%\n",
                r.batch,
                r.prompt_tokens,
                self.args.gen_tokens,
                cell(&r.prefill_tok_s),
                cell(&r.ttft_ms),
                cell(&r.decode_tok_s),
                r.bw.bytes_per_s() / 1e9,
                r.decode_floor_tok_s(),
                100.0 * r.decode_tok_s.median / r.decode_floor_tok_s(),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Stat::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Stat::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }
}
