//! The llama forward pass: token embedding, per layer RMSNorm → GQA attention with RoPE over
//! a KV cache → residual → RMSNorm → SwiGLU FFN → residual, final norm and output head (tied
//! to the embedding when `output.weight` is absent).
//!
//! One call runs one step over many sequences at once: their tokens are stacked into one
//! activation matrix so every weight is read once per step, whatever the batch holds.

use realm_kernels::{AttentionShape, Backend, Inputs, KvLayer, LlamaLayer, LlamaWeights, QTensor, Rope, SeqRows};

use super::{LlamaConfig, ModelError};
use crate::gguf::GgufFile;

pub struct Llama<B: Backend> {
    pub config: LlamaConfig,
    backend: B,
    token_embd: B::Weight,
    layers: Vec<LlamaLayer<B::Weight>>,
    output_norm: B::Weight,
    output: B::Weight,
    rope: Rope,
}

/// One sequence's keys and values for every layer, rows `0..len` valid.
pub struct KvCache<B: Backend> {
    layers: Vec<KvLayer<B::Tensor>>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets positions from `len` on (a shared prefix can be kept).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// Which logits a sequence wants back from a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only after its last token (generation).
    Last,
    /// After every token of the step (scoring, teacher forcing).
    All,
    /// None: a prompt chunk that does not reach the end of the prompt.
    None,
}

/// One sequence's part of a step: new tokens appended after what its cache holds.
pub struct SeqStep<'a, B: Backend> {
    pub cache: &'a mut KvCache<B>,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

fn load<B: Backend>(
    backend: &B,
    f: &GgufFile,
    name: &str,
    (rows, cols): (usize, usize),
    inputs: Inputs,
) -> Result<B::Weight, ModelError> {
    let t: QTensor = f.qtensor(name)?;
    if t.rows != rows || t.cols != cols {
        return Err(ModelError::TensorShape {
            name: name.to_string(),
            expected: format!("{rows} x {cols}"),
            found: format!("{} x {}", t.rows, t.cols),
        });
    }
    Ok(backend.load_weight(&t, inputs)?)
}

impl<B: Backend> Llama<B> {
    pub fn load(f: &GgufFile, backend: B) -> Result<Self, ModelError> {
        let c = LlamaConfig::from_gguf(f)?;
        let (dim, kv_dim, ffn) = (c.dim, c.kv_dim(), c.ffn_dim);
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let name = |t: &str| format!("blk.{i}.{t}.weight");
            layers.push(LlamaLayer {
                attn_norm: load(&backend, f, &name("attn_norm"), (1, dim), Inputs::Robust)?,
                wq: load(&backend, f, &name("attn_q"), (dim, dim), Inputs::Sensitive)?,
                wk: load(&backend, f, &name("attn_k"), (kv_dim, dim), Inputs::Sensitive)?,
                wv: load(&backend, f, &name("attn_v"), (kv_dim, dim), Inputs::Sensitive)?,
                wo: load(&backend, f, &name("attn_output"), (dim, dim), Inputs::Robust)?,
                ffn_norm: load(&backend, f, &name("ffn_norm"), (1, dim), Inputs::Robust)?,
                w_gate: load(&backend, f, &name("ffn_gate"), (ffn, dim), Inputs::Robust)?,
                w_up: load(&backend, f, &name("ffn_up"), (ffn, dim), Inputs::Robust)?,
                w_down: load(&backend, f, &name("ffn_down"), (dim, ffn), Inputs::Sensitive)?,
            });
        }
        let token_embd = load(&backend, f, "token_embd.weight", (c.vocab_size, dim), Inputs::Robust)?;
        let output_name = if f.tensor("output.weight").is_some() { "output.weight" } else { "token_embd.weight" };
        let output = load(&backend, f, output_name, (c.vocab_size, dim), Inputs::Robust)?;
        let output_norm = load(&backend, f, "output_norm.weight", (1, dim), Inputs::Robust)?;
        let rope = Rope { layout: c.rope_layout, freq_base: c.rope_freq_base, n_rot: c.n_rot };
        Ok(Self { config: c, backend, token_embd, layers, output_norm, output, rope })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn new_cache(&self) -> Result<KvCache<B>, ModelError> {
        let layers = (0..self.config.n_layer)
            .map(|_| Ok(KvLayer { k: self.backend.zeros(0)?, v: self.backend.zeros(0)? }))
            .collect::<Result<_, ModelError>>()?;
        Ok(KvCache { layers, len: 0 })
    }

    /// Runs one step over every sequence in `steps` and returns, per sequence, its logits
    /// (`vocab_size` floats per requested row, row after row).
    pub fn forward(&self, steps: &mut [SeqStep<'_, B>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = &self.config;
        let b = &self.backend;
        let Some((logits, rows)) = self.run(steps)? else { return Ok(steps.iter().map(|_| Vec::new()).collect()) };
        // One copy to the host for the whole step (a GPU waits once), then split per sequence.
        let mut host = Vec::with_capacity(rows * c.vocab_size);
        b.read_rows(&logits, 0..rows, c.vocab_size, &mut host)?;
        let mut out = Vec::with_capacity(steps.len());
        let mut next = 0;
        for s in steps.iter() {
            let rows = match s.logits {
                Logits::Last => 1,
                Logits::All => s.tokens.len(),
                Logits::None => 0,
            };
            out.push(host[next * c.vocab_size..(next + rows) * c.vocab_size].to_vec());
            next += rows;
        }
        b.step_done();
        Ok(out)
    }

    /// Runs one step like [`Llama::forward`] and returns, per sequence, the id of the highest
    /// logit after its last token (each step's `logits` is taken as [`Logits::Last`]); `None`
    /// where no logit is finite. Greedy decoding without the logits: a GPU computes the argmax
    /// and sends back one id per sequence instead of a vocabulary of floats.
    pub fn forward_greedy(&self, steps: &mut [SeqStep<'_, B>]) -> Result<Vec<Option<u32>>, ModelError> {
        for s in steps.iter_mut() {
            s.logits = Logits::Last;
        }
        let Some((logits, rows)) = self.run(steps)? else { return Ok(Vec::new()) };
        let ids = self.backend.argmax_rows(&logits, rows, self.config.vocab_size)?;
        self.backend.step_done();
        Ok(ids)
    }

    /// A one-token step of one sequence through [`Backend::llama_decode_one`], where the
    /// backend runs it in one launch: its logits, with the token appended to the cache.
    fn decode_in_one_launch(&self, s: &mut SeqStep<'_, B>) -> Result<Option<B::Tensor>, ModelError> {
        let b = &self.backend;
        if !b.decodes_whole_steps() {
            return Ok(None);
        }
        let c = &self.config;
        let model = LlamaWeights {
            token_embd: &self.token_embd,
            layers: self.layers.iter().map(LlamaLayer::as_ref).collect(),
            output_norm: &self.output_norm,
            output: &self.output,
            shape: AttentionShape { n_head: c.n_head, n_kv_head: c.n_kv_head, head_dim: c.head_dim },
            rope: self.rope,
            eps: c.rms_eps,
        };
        let mut cache: Vec<_> = s.cache.layers.iter_mut().map(KvLayer::as_mut).collect();
        let logits = b.llama_decode_one(&model, s.tokens[0], s.cache.len, &mut cache)?;
        if logits.is_some() {
            s.cache.len += 1;
        }
        Ok(logits)
    }

    /// The step itself: the output head's rows for the rows whose logits are wanted (in order)
    /// and how many there are; `None` when no sequence wants any.
    fn run(&self, steps: &mut [SeqStep<'_, B>]) -> Result<Option<(B::Tensor, usize)>, ModelError> {
        let c = &self.config;
        let b = &self.backend;
        let (dim, kv_dim, ffn) = (c.dim, c.kv_dim(), c.ffn_dim);
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for s in steps.iter() {
            if s.tokens.is_empty() {
                return Err(ModelError::EmptyStep);
            }
            if s.cache.len + s.tokens.len() > c.context_length {
                return Err(ModelError::ContextFull {
                    tokens: s.tokens.len(),
                    cached: s.cache.len,
                    context: c.context_length,
                });
            }
            for (i, &id) in s.tokens.iter().enumerate() {
                if id as usize >= c.vocab_size {
                    return Err(ModelError::BadToken { id, vocab: c.vocab_size });
                }
                ids.push(id);
                positions.push((s.cache.len + i) as u32);
            }
        }
        if let [s] = &mut *steps
            && s.tokens.len() == 1
            && s.logits != Logits::None
            && let Some(logits) = self.decode_in_one_launch(s)?
        {
            return Ok(Some((logits, 1)));
        }
        let n = ids.len();
        let mut x = b.zeros(n * dim)?;
        let mut xn = b.zeros(n * dim)?;
        let mut q = b.zeros(n * dim)?;
        let mut k = b.zeros(n * kv_dim)?;
        let mut v = b.zeros(n * kv_dim)?;
        let mut att = b.zeros(n * dim)?;
        let mut proj = b.zeros(n * dim)?;
        let mut gate = b.zeros(n * ffn)?;
        let mut up = b.zeros(n * ffn)?;
        b.embed(&self.token_embd, &ids, &mut x)?;
        let shape = AttentionShape { n_head: c.n_head, n_kv_head: c.n_kv_head, head_dim: c.head_dim };
        let mut seq_rows = Vec::with_capacity(steps.len());
        let mut row = 0;
        for s in steps.iter() {
            seq_rows.push(SeqRows { row, n: s.tokens.len(), first_pos: s.cache.len });
            row += s.tokens.len();
        }

        for (li, layer) in self.layers.iter().enumerate() {
            let qkv = &mut [(&layer.wq, &mut q), (&layer.wk, &mut k), (&layer.wv, &mut v)];
            b.norm_matmuls(&x, &layer.attn_norm, c.rms_eps, n, qkv, &mut xn)?;
            let mut writes: Vec<_> =
                steps.iter_mut().zip(&seq_rows).map(|(s, &rows)| (s.cache.layers[li].as_mut(), rows)).collect();
            b.rope_kv_write_attention(&mut q, &mut k, &v, &positions, &self.rope, &mut writes, shape, &mut att)?;
            b.matmul_add(&layer.wo, &att, n, &mut x, &mut proj)?;

            let (ffn_norm, eps) = (&layer.ffn_norm, c.rms_eps);
            b.norm_matmul_swiglu(&x, ffn_norm, eps, n, &layer.w_gate, &layer.w_up, &mut gate, &mut up, &mut xn)?;
            b.matmul_add(&layer.w_down, &gate, n, &mut x, &mut proj)?;
        }
        for s in steps.iter_mut() {
            s.cache.len += s.tokens.len();
        }

        // Only the rows whose logits are wanted go through the output head.
        let mut wanted = Vec::new();
        let mut row = 0;
        for s in steps.iter() {
            let t = s.tokens.len();
            match s.logits {
                Logits::Last => wanted.push(row + t - 1),
                Logits::All => wanted.extend(row..row + t),
                Logits::None => {}
            }
            row += t;
        }
        if wanted.is_empty() {
            b.step_done();
            return Ok(None);
        }
        let mut gathered = b.zeros(wanted.len() * dim)?;
        b.gather_rows(&x, &wanted, dim, &mut gathered)?;
        b.rms_norm(&gathered, &self.output_norm, c.rms_eps, &mut xn)?;
        let mut logits = b.zeros(wanted.len() * c.vocab_size)?;
        b.matmul(&self.output, &xn, wanted.len(), &mut logits)?;
        Ok(Some((logits, wanted.len())))
    }
}
