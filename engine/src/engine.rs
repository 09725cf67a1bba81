//! The public engine API: load a GGUF model and generate or score tokens.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use realm_kernels::cpu::{Activations, Cpu};
use realm_kernels::{Backend, BackendKind, Device};

use crate::chat::{ChatError, ChatTemplate};
use crate::gguf::{GgufError, GgufFile};
use crate::model::{Llama, LlamaConfig, Logits, ModelError, SeqStep};
use crate::sampler::{Sampler, SamplerError, SamplingParams};
use crate::stop::StopMatcher;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Numeric precision of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 activations, weights dequantized exactly as they are used: the reference path.
    Exact,
    /// 8-bit activations with integer dot products against the quantized weights (formats
    /// without an integer kernel yet take the exact path).
    Fast,
}

/// Which hardware runs the model (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA if this build has it and a GPU answers, else a hardware wgpu adapter, else the CPU.
    Auto,
    Cpu,
    Cuda,
    Wgpu,
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// CPU threads; 0 means one per physical core.
    pub threads: usize,
    pub precision: Precision,
    pub backend: BackendChoice,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { threads: 0, precision: Precision::Exact, backend: BackendChoice::Cpu }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error(transparent)]
    Kernel(#[from] realm_kernels::KernelError),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt of {prompt} tokens plus max_tokens {max_tokens} exceeds the context of {context} tokens")]
    ContextExceeded { prompt: usize, max_tokens: usize, context: usize },
}

fn cpu(options: &EngineOptions) -> Result<Device, EngineError> {
    let activations = match options.precision {
        Precision::Exact => Activations::F32,
        Precision::Fast => Activations::Q8,
    };
    Ok(Device::Cpu(Cpu::new(options.threads, activations)?))
}

#[cfg(feature = "cuda")]
fn cuda(options: &EngineOptions) -> Result<(Device, String), realm_kernels::KernelError> {
    // Activations stay f32 in either precision. The f16 KV cache of the fast precision is not
    // yet checked on a GPU (issue 9): until scripts/gpu-check.sh passes with it, it also takes
    // REALM_CUDA_KV_F16=1.
    let f16 = options.precision == Precision::Fast && std::env::var_os("REALM_CUDA_KV_F16").is_some_and(|v| v == "1");
    let c = realm_kernels::cuda::Cuda::new(0)?.with_f16_kv(f16);
    let note = format!("cuda: {}, KV cache {}", c.description(), if f16 { "f16" } else { "f32" });
    Ok((Device::Cuda(Box::new(c)), note))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_options: &EngineOptions) -> Result<(Device, String), realm_kernels::KernelError> {
    Err(not_built(BackendKind::Cuda))
}

#[cfg(feature = "wgpu")]
fn wgpu(options: &EngineOptions) -> Result<(Device, String, bool), realm_kernels::KernelError> {
    let fast = options.precision == Precision::Fast;
    let w = realm_kernels::wgpu::Wgpu::new()?.with_f16_kv(fast);
    let kv = if w.kv_f16() { "f16" } else { "f32" };
    let (note, software) = (format!("wgpu: {}, KV cache {kv}", w.adapter_name()), w.is_software());
    Ok((Device::Wgpu(Box::new(w)), note, software))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_options: &EngineOptions) -> Result<(Device, String, bool), realm_kernels::KernelError> {
    Err(not_built(BackendKind::Wgpu))
}

#[cfg(any(not(feature = "cuda"), not(feature = "wgpu")))]
fn not_built(backend: BackendKind) -> realm_kernels::KernelError {
    realm_kernels::KernelError::Device {
        backend,
        reason: format!("this build has no {backend} support (cargo feature `{backend}`)"),
    }
}

/// Opens the backend `options` ask for; `auto` falls through CUDA, a hardware wgpu adapter
/// and the CPU, and says what it passed over and why.
fn open_backend(options: &EngineOptions) -> Result<(Device, String), EngineError> {
    let threads_note = |d: &Device| {
        let isa = d.cpu_isa().map(|isa| format!(", {isa}")).unwrap_or_default();
        format!("cpu: {} threads{isa}, precision {:?}", d.threads(), options.precision)
    };
    match options.backend {
        BackendChoice::Cpu => {
            let d = cpu(options)?;
            let note = threads_note(&d);
            Ok((d, note))
        }
        BackendChoice::Cuda => Ok(cuda(options)?),
        BackendChoice::Wgpu => {
            let (d, note, _) = wgpu(options)?;
            Ok((d, note))
        }
        BackendChoice::Auto => {
            let cuda_why = match cuda(options) {
                Ok((d, note)) => return Ok((d, format!("{note} (auto: CUDA is usable)"))),
                Err(e) => e.to_string(),
            };
            let wgpu_why = match wgpu(options) {
                Ok((d, note, false)) => {
                    return Ok((d, format!("{note} (auto: CUDA not usable: {cuda_why})")));
                }
                Ok((_, note, true)) => format!("{note} is a software adapter, slower than the CPU backend"),
                Err(e) => e.to_string(),
            };
            let d = cpu(options)?;
            let note = format!("{} (auto: CUDA not usable: {cuda_why}; wgpu not used: {wgpu_why})", threads_note(&d));
            Ok((d, note))
        }
    }
}

/// What [`Engine::greedy_batch`] produced and how long it took.
#[derive(Debug, Clone)]
pub struct BatchRun {
    /// Generated ids per prompt.
    pub ids: Vec<Vec<u32>>,
    /// The prompts' step, which also yields each sequence's first token.
    pub prefill_time: Duration,
    /// The remaining steps, one token per sequence each.
    pub decode_time: Duration,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller asked to stop.
    Cancelled,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks, reference comparisons).
    pub ignore_eos: bool,
}

/// One generated token and the text it released (possibly empty while a UTF-8 sequence or a
/// possible stop string is incomplete).
#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub id: u32,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

pub struct Engine {
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Arc<ChatTemplate>,
    model: Llama<Device>,
    backend_note: String,
}

impl Engine {
    pub fn load(path: &Path, options: &EngineOptions) -> Result<Self, EngineError> {
        let mut file = GgufFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf_taking(&mut file)?;
        let chat_template = ChatTemplate::from_gguf(&file, &tokenizer)?;
        let (device, backend_note) = open_backend(options)?;
        let model = Llama::load(&file, device)?;
        Ok(Self { tokenizer: Arc::new(tokenizer), chat_template: Arc::new(chat_template), model, backend_note })
    }

    /// Which backend runs the model and why it was chosen, for the start-up log line.
    pub fn backend_note(&self) -> &str {
        &self.backend_note
    }

    pub fn backend_kind(&self) -> BackendKind {
        self.model.backend().kind()
    }

    pub(crate) fn model(&self) -> &Llama<Device> {
        &self.model
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.model.config
    }

    pub fn threads(&self) -> usize {
        self.model.backend().threads()
    }

    /// Bytes the KV cache holds per position of a sequence, keys and values of every layer;
    /// a decode step at context `n` reads `n` times this.
    pub fn kv_bytes_per_position(&self) -> usize {
        let c = &self.model.config;
        c.n_layer * self.model.backend().kv_row_bytes(c.kv_dim())
    }

    /// The GPU's device-to-device copy bandwidth (bytes read plus written per second), or
    /// `None` on a backend without such a probe.
    pub fn device_copy_bandwidth(&self) -> Result<Option<f64>, EngineError> {
        match self.model.backend() {
            #[cfg(feature = "cuda")]
            Device::Cuda(c) => Ok(Some(c.copy_bandwidth(1 << 30, 10)?)),
            _ => Ok(None),
        }
    }

    /// How the GPU's launches were submitted so far (CUDA graphs built and replayed), for a
    /// benchmark's log; `None` on a backend without graphs.
    pub fn launch_note(&self) -> Result<Option<String>, EngineError> {
        match self.model.backend() {
            #[cfg(feature = "cuda")]
            Device::Cuda(c) => {
                let g = c.graph_stats()?;
                let mut note = format!(
                    "CUDA graphs: {} built, {} replays; {} kernels launched one by one; {} decode steps as one launch",
                    g.built, g.replays, g.direct, g.whole_steps
                );
                if let Some(phases) = c.whole_step_timing() {
                    note = format!("{note}\n{phases}");
                }
                Ok(Some(note))
            }
            _ => Ok(None),
        }
    }

    /// Waits for the device's queued work (a GPU runs ahead of the host); benchmarks call it
    /// before reading a clock.
    pub fn synchronize(&self) -> Result<(), EngineError> {
        Ok(self.model.backend().synchronize()?)
    }

    /// Greedy decoding of several prompts together, the way a batched server step runs them:
    /// every prompt in one prefill step, then one decode step per token for all of them.
    /// Benchmarks use it to time batch sizes; it ignores end-of-generation tokens.
    pub fn greedy_batch(&self, prompts: &[Vec<u32>], max_tokens: usize) -> Result<BatchRun, EngineError> {
        let context = self.model.config.context_length;
        for p in prompts {
            if p.is_empty() {
                return Err(EngineError::EmptyPrompt);
            }
            if p.len() + max_tokens > context {
                return Err(EngineError::ContextExceeded { prompt: p.len(), max_tokens, context });
            }
        }
        let mut caches = prompts.iter().map(|_| self.model.new_cache()).collect::<Result<Vec<_>, _>>()?;
        let mut ids: Vec<Vec<u32>> = vec![Vec::with_capacity(max_tokens); prompts.len()];
        let start = Instant::now();
        let mut last: Vec<Vec<u32>> = prompts.to_vec();
        let mut prefill_time = Duration::ZERO;
        for step in 0..max_tokens {
            let mut steps: Vec<SeqStep<'_, Device>> = caches
                .iter_mut()
                .zip(&last)
                .map(|(cache, tokens)| SeqStep { cache, tokens, logits: Logits::Last })
                .collect();
            let argmax = self.model.forward_greedy(&mut steps)?;
            for ((seq_ids, next), id) in ids.iter_mut().zip(last.iter_mut()).zip(argmax) {
                let id = id.unwrap_or(0);
                seq_ids.push(id);
                *next = vec![id];
            }
            if step == 0 {
                prefill_time = start.elapsed();
            }
        }
        Ok(BatchRun { ids, prefill_time, decode_time: start.elapsed() - prefill_time })
    }

    /// Tokens for a prompt: special tokens parsed, BOS added when the model asks for it.
    pub fn encode_prompt(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode_prompt(text)
    }

    /// Logits after every token of `tokens` (row after row, `vocab_size` each), from a fresh
    /// sequence: scoring and teacher forcing.
    pub fn score(&self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let mut cache = self.model.new_cache()?;
        let mut step = [SeqStep { cache: &mut cache, tokens, logits: Logits::All }];
        let mut out = self.model.forward(&mut step)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Generates after `prompt`, calling `on_token` for each token; `on_token` returning false
    /// cancels.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let context = self.model.config.context_length;
        if prompt.len() + params.max_tokens > context {
            return Err(EngineError::ContextExceeded { prompt: prompt.len(), max_tokens: params.max_tokens, context });
        }
        let vocab = self.model.config.vocab_size;
        let mut sampler = Sampler::new(params.sampling.clone(), vocab)?;
        // Plain greedy takes the argmax where the logits are (on a GPU, only the id comes back).
        let plain_greedy = params.sampling.is_plain_greedy();
        let mut stops = StopMatcher::new(&params.stop);
        let mut decoder = self.tokenizer.stream_decoder();
        let mut cache = self.model.new_cache()?;
        let mut history = prompt.to_vec();
        let mut ids = Vec::new();
        let mut text = String::new();
        let mut finish_reason = FinishReason::Length;

        let start = Instant::now();
        let mut step_tokens = prompt.to_vec();
        let mut prefill_time = Duration::ZERO;
        while ids.len() < params.max_tokens {
            let mut step = [SeqStep { cache: &mut cache, tokens: &step_tokens, logits: Logits::Last }];
            let id = if plain_greedy {
                let id = self.model.forward_greedy(&mut step)?.pop().flatten();
                id.ok_or(SamplerError::NothingToSample)?
            } else {
                let mut logits = self.model.forward(&mut step)?.pop().unwrap_or_default();
                sampler.sample(&mut logits, &history)?
            };
            if ids.is_empty() {
                prefill_time = start.elapsed();
            }
            ids.push(id);
            history.push(id);
            if !params.ignore_eos && self.tokenizer.is_eog(id) {
                finish_reason = FinishReason::Stop;
                break;
            }
            let released = stops.push(&decoder.push(id));
            text.push_str(&released.text);
            if !on_token(&TokenEvent { id, text: released.text }) {
                finish_reason = FinishReason::Cancelled;
                break;
            }
            if released.stopped {
                finish_reason = FinishReason::Stop;
                break;
            }
            step_tokens.clear();
            step_tokens.push(id);
        }
        if finish_reason == FinishReason::Length {
            let rest = stops.push(&decoder.finish()).text + &stops.finish();
            if !rest.is_empty() {
                text.push_str(&rest);
                on_token(&TokenEvent { id: ids.last().copied().unwrap_or_default(), text: rest });
            }
        }
        let decode_time = start.elapsed().saturating_sub(prefill_time);
        Ok(Generation { ids, text, finish_reason, prompt_tokens: prompt.len(), prefill_time, decode_time })
    }
}
