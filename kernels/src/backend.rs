//! The seam between the model code and the hardware: the few ops one transformer step needs.
//! The forward pass is written once against this trait and dispatched once per step.

use std::fmt;
use std::sync::Arc;

use crate::quant::{GgmlType, QuantError};

/// Errors from a backend.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("{op}: {reason}")]
    Shape { op: &'static str, reason: String },
    /// The device, its driver or its kernel compiler failed or is missing.
    #[error("{backend}: {reason}")]
    Device { backend: BackendKind, reason: String },
}

/// A `Shape` error of `op`.
pub(crate) fn shape_err(op: &'static str, reason: String) -> KernelError {
    KernelError::Shape { op, reason }
}

/// Fails unless a tensor (`what`, holding `have` elements) holds the `need` an op reads or
/// writes: every backend checks before touching memory.
pub(crate) fn check_len(op: &'static str, what: &str, have: usize, need: usize) -> Result<(), KernelError> {
    if have < need {
        return Err(shape_err(op, format!("{what} holds {have} elements, needs {need}")));
    }
    Ok(())
}

/// The highest logit's id; the lowest id wins a tie, so greedy output is deterministic. NaN
/// and `-inf` are never chosen; `None` when nothing else is there.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    // Eight running maxima, one per lane, so the scan over a vocabulary vectorises: a select on
    // `>` skips NaN as the comparison is false for it.
    const LANES: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = logits.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &l) in lanes.iter_mut().zip(chunk) {
            *m = if l > *m { l } else { *m };
        }
    }
    let max = chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &l| if l > m { l } else { m });
    if max == f32::NEG_INFINITY {
        return None;
    }
    logits.iter().position(|&l| l == max).map(|i| i as u32)
}

/// The caches of `writes`, read-only, with their rows: what attention reads after the append.
pub(crate) fn written<'a, T>(writes: &'a [(KvLayer<&mut T>, SeqRows)]) -> Vec<(KvLayer<&'a T>, SeqRows)> {
    writes.iter().map(|(c, r)| (KvLayer { k: &*c.k, v: &*c.v }, *r)).collect()
}

/// [`Backend::rope_kv_write_attention`] as two ops, `rope_kv_write` then `attention_many`: the
/// trait's default, and a GPU's path for steps it cannot do in one launch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_kv_write_then_attention<B: Backend + ?Sized>(
    b: &B,
    q: &mut B::Tensor,
    k: &mut B::Tensor,
    v: &B::Tensor,
    positions: &[u32],
    rope: &Rope,
    writes: &mut [(KvLayer<&mut B::Tensor>, SeqRows)],
    shape: AttentionShape,
    out: &mut B::Tensor,
) -> Result<(), KernelError> {
    let row_len = shape.n_kv_head * shape.head_dim;
    b.rope_kv_write(q, k, v, shape.head_dim, positions, rope, writes, row_len)?;
    b.attention_many(q, &written(writes), shape, out)
}

/// What [`Backend::argmax_rows`] returns without running a kernel, once `len` elements are
/// checked to hold the rows: nothing for no rows, `None` for each empty row.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub(crate) fn argmax_without_kernel(
    len: usize,
    rows: usize,
    row_len: usize,
) -> Result<Option<Vec<Option<u32>>>, KernelError> {
    check_len("argmax_rows", "tensor", len, rows * row_len)?;
    Ok((rows == 0 || row_len == 0).then(|| vec![None; rows]))
}

/// A GPU argmax kernel's ids as [`Backend::argmax_rows`] returns them: an id past the row (the
/// kernels' "none", `u32::MAX`) is a row with no value that may be chosen.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub(crate) fn argmax_ids(ids: impl IntoIterator<Item = u32>, row_len: usize) -> Vec<Option<u32>> {
    ids.into_iter().map(|i| ((i as usize) < row_len).then_some(i)).collect()
}

/// Which implementation runs the ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Cpu,
    /// NVIDIA GPUs through the CUDA driver API (feature `cuda`).
    Cuda,
    /// Vulkan, Metal, DX12 or browser WebGPU through `wgpu` (feature `wgpu`).
    Wgpu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendKind::Cpu => f.write_str("cpu"),
            BackendKind::Cuda => f.write_str("cuda"),
            BackendKind::Wgpu => f.write_str("wgpu"),
        }
    }
}

/// What [`SharedBytes`] live in: a memory-mapped model file, or a buffer.
pub trait Backing: AsRef<[u8]> + Send + Sync {
    /// Says that `range` will not be read for a while (a backend made its own copy of it), so
    /// memory held for it can go: a file mapping drops those pages, which come back from the
    /// file if they are read again.
    fn release(&self, _range: std::ops::Range<usize>) {}
}

impl Backing for Vec<u8> {}

/// Bytes shared with whatever owns them (a memory-mapped model file), so weights are never
/// copied to be used on the CPU.
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn Backing>,
    start: usize,
    len: usize,
}

impl SharedBytes {
    /// A window of `owner`; `None` when the range is not inside it.
    pub fn new(owner: Arc<dyn Backing>, start: usize, len: usize) -> Option<Self> {
        let end = start.checked_add(len)?;
        ((*owner).as_ref().len() >= end).then_some(Self { owner, start, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }

    /// [`Backing::release`] for bytes `range` of this window.
    pub fn release(&self, range: std::ops::Range<usize>) {
        let end = range.end.min(self.len);
        if range.start < end {
            self.owner.release(self.start + range.start..self.start + end);
        }
    }
}

/// A row-major matrix of GGML blocks: `rows` rows of `cols` elements each (a 1-D tensor is
/// one row).
#[derive(Clone)]
pub struct QTensor {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: SharedBytes,
    row_bytes: usize,
}

impl QTensor {
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: SharedBytes) -> Result<Self, QuantError> {
        let elements = (rows as u64).saturating_mul(cols as u64);
        let row_bytes = ty.byte_size(cols as u64)?.unwrap_or(u64::MAX);
        let expected = ty.byte_size(elements)?.unwrap_or(u64::MAX);
        if bytes.len as u64 != expected {
            return Err(QuantError::WrongByteLength { ty, elements, expected, got: bytes.len as u64 });
        }
        Ok(Self { ty, rows, cols, bytes, row_bytes: row_bytes as usize })
    }

    /// The encoded bytes of row `r` (`r < rows`).
    pub fn row(&self, r: usize) -> &[u8] {
        self.rows(r..r + 1)
    }

    /// [`Backing::release`] for the bytes of `rows`: a copy of them is what will be read.
    pub fn release_rows(&self, rows: std::ops::Range<usize>) {
        self.bytes.release(rows.start * self.row_bytes..rows.end * self.row_bytes);
    }

    /// The encoded bytes of consecutive rows (within `0..rows`).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> &[u8] {
        &self.bytes.as_slice()[rows.start * self.row_bytes..rows.end * self.row_bytes]
    }
}

/// How RoPE pairs the elements of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs (x[2i], x[2i+1]): llama.cpp's `LLAMA_ROPE_TYPE_NORM`.
    Normal,
    /// Halves (x[i], x[i + d/2]): `LLAMA_ROPE_TYPE_NEOX`.
    Neox,
}

/// Rotary position embedding parameters.
#[derive(Debug, Clone, Copy)]
pub struct Rope {
    pub layout: RopeLayout,
    pub freq_base: f32,
    /// Dimensions rotated per head (the rest pass through).
    pub n_rot: usize,
}

/// How much rounding a weight's inputs tolerate, so a backend can choose how far it may
/// quantize them (docs/precision.md has the measurements behind the split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    /// 8 bits are enough: FFN gate/up and the output head (RMS-normalised rows) and the
    /// attention output projection (convex mixes of value rows).
    Robust,
    /// Keep more precision: Q, K and V, whose rounding errors softmax amplifies, and FFN down,
    /// fed by SwiGLU's heavy-tailed products.
    Sensitive,
}

/// One sequence's part of a batched step: rows `row..row + n` of the step's activations,
/// whose first token sits at position `first_pos` of the sequence.
#[derive(Debug, Clone, Copy)]
pub struct SeqRows {
    pub row: usize,
    pub n: usize,
    pub first_pos: usize,
}

/// One layer's cached keys and values for one sequence, a row per position. The ops borrow
/// it as `KvLayer<&T>` or `KvLayer<&mut T>`.
#[derive(Clone, Copy)]
pub struct KvLayer<T> {
    pub k: T,
    pub v: T,
}

impl<T> KvLayer<T> {
    pub fn as_ref(&self) -> KvLayer<&T> {
        KvLayer { k: &self.k, v: &self.v }
    }

    pub fn as_mut(&mut self) -> KvLayer<&mut T> {
        KvLayer { k: &mut self.k, v: &mut self.v }
    }
}

/// Shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

/// One llama layer's weights.
#[derive(Clone, Copy)]
pub struct LlamaLayer<W> {
    pub attn_norm: W,
    pub wq: W,
    pub wk: W,
    pub wv: W,
    pub wo: W,
    pub ffn_norm: W,
    pub w_gate: W,
    pub w_up: W,
    pub w_down: W,
}

impl<W> LlamaLayer<W> {
    pub fn as_ref(&self) -> LlamaLayer<&W> {
        LlamaLayer {
            attn_norm: &self.attn_norm,
            wq: &self.wq,
            wk: &self.wk,
            wv: &self.wv,
            wo: &self.wo,
            ffn_norm: &self.ffn_norm,
            w_gate: &self.w_gate,
            w_up: &self.w_up,
            w_down: &self.w_down,
        }
    }

    /// Each weight passed through `f`, or its first error.
    pub fn try_map<'a, V, E>(&'a self, f: impl Fn(&'a W) -> Result<V, E>) -> Result<LlamaLayer<V>, E> {
        Ok(LlamaLayer {
            attn_norm: f(&self.attn_norm)?,
            wq: f(&self.wq)?,
            wk: f(&self.wk)?,
            wv: f(&self.wv)?,
            wo: f(&self.wo)?,
            ffn_norm: f(&self.ffn_norm)?,
            w_gate: f(&self.w_gate)?,
            w_up: f(&self.w_up)?,
            w_down: f(&self.w_down)?,
        })
    }
}

/// A llama model's weights and shape, as [`Backend::llama_decode_one`] takes them.
pub struct LlamaWeights<'a, W> {
    pub token_embd: &'a W,
    pub layers: Vec<LlamaLayer<&'a W>>,
    pub output_norm: &'a W,
    pub output: &'a W,
    pub shape: AttentionShape,
    pub rope: Rope,
    pub eps: f32,
}

/// The ops of a transformer step. Tensors are row-major `[n_rows, row_len]` activations.
pub trait Backend: Send {
    /// Activations (f32 on the CPU).
    type Tensor: Send;
    /// A weight tensor resident where the ops run.
    type Weight: Send + Sync;

    fn kind(&self) -> BackendKind;

    fn load_weight(&self, w: &QTensor, inputs: Inputs) -> Result<Self::Weight, KernelError>;

    /// Output rows of a weight (its `rows`).
    fn weight_rows(&self, w: &Self::Weight) -> usize;

    fn zeros(&self, len: usize) -> Result<Self::Tensor, KernelError>;

    /// A tensor holding `data` (host to device).
    fn upload(&self, data: &[f32]) -> Result<Self::Tensor, KernelError>;

    /// `out[i] = table[ids[i]]` (rows dequantized).
    fn embed(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Tensor) -> Result<(), KernelError>;

    /// RMSNorm of each row of `x` times `weight`.
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<(), KernelError>;

    /// `out[n, w.rows] = x[n, w.cols] · wᵀ` for the first `n` rows of `x`.
    fn matmul(&self, w: &Self::Weight, x: &Self::Tensor, n: usize, out: &mut Self::Tensor) -> Result<(), KernelError> {
        self.matmuls(x, n, &mut [(w, out)])
    }

    /// Several matmuls of the same input (Q, K and V; gate and up) as one call, so the input
    /// is prepared once and the work is spread as one piece.
    fn matmuls(
        &self,
        x: &Self::Tensor,
        n: usize,
        jobs: &mut [(&Self::Weight, &mut Self::Tensor)],
    ) -> Result<(), KernelError>;

    /// `out += x · wᵀ`: a projection added to the residual stream. `scratch` (`n * rows`
    /// elements) is for backends that form the product apart first; a GPU fuses the add.
    fn matmul_add(
        &self,
        w: &Self::Weight,
        x: &Self::Tensor,
        n: usize,
        out: &mut Self::Tensor,
        scratch: &mut Self::Tensor,
    ) -> Result<(), KernelError> {
        self.matmul(w, x, n, scratch)?;
        self.add(out, scratch, n * self.weight_rows(w))
    }

    /// `out = silu(x · gateᵀ) * (x · upᵀ)`, the SwiGLU FFN's first half; `scratch` as in
    /// [`Backend::matmul_add`].
    fn matmul_swiglu(
        &self,
        x: &Self::Tensor,
        n: usize,
        gate: &Self::Weight,
        up: &Self::Weight,
        out: &mut Self::Tensor,
        scratch: &mut Self::Tensor,
    ) -> Result<(), KernelError> {
        self.matmuls(x, n, &mut [(gate, &mut *out), (up, &mut *scratch)])?;
        self.silu_mul(out, scratch, n * self.weight_rows(gate))
    }

    /// Rotates each head of row `i` of `x` by position `positions[i]`.
    fn rope(&self, x: &mut Self::Tensor, head_dim: usize, positions: &[u32], rope: &Rope) -> Result<(), KernelError>;

    /// `matmuls` of the rows of `x` RMS-normalised by `norm`. `normed` (`n * cols` elements)
    /// receives the normalised rows where a backend forms them apart first; a GPU normalises
    /// inside the products and leaves it untouched.
    fn norm_matmuls(
        &self,
        x: &Self::Tensor,
        norm: &Self::Weight,
        eps: f32,
        n: usize,
        jobs: &mut [(&Self::Weight, &mut Self::Tensor)],
        normed: &mut Self::Tensor,
    ) -> Result<(), KernelError> {
        self.rms_norm(x, norm, eps, normed)?;
        self.matmuls(normed, n, jobs)
    }

    /// `matmul_swiglu` of the rows of `x` RMS-normalised by `norm`; `normed` as in
    /// [`Backend::norm_matmuls`].
    #[allow(clippy::too_many_arguments)]
    fn norm_matmul_swiglu(
        &self,
        x: &Self::Tensor,
        norm: &Self::Weight,
        eps: f32,
        n: usize,
        gate: &Self::Weight,
        up: &Self::Weight,
        out: &mut Self::Tensor,
        scratch: &mut Self::Tensor,
        normed: &mut Self::Tensor,
    ) -> Result<(), KernelError> {
        self.rms_norm(x, norm, eps, normed)?;
        self.matmul_swiglu(normed, n, gate, up, out, scratch)
    }

    /// [`Backend::kv_write`] for every sequence of a step; a GPU does them in one launch.
    fn kv_write_many(
        &self,
        writes: &mut [(KvLayer<&mut Self::Tensor>, SeqRows)],
        k: &Self::Tensor,
        v: &Self::Tensor,
        row_len: usize,
    ) -> Result<(), KernelError> {
        for (cache, rows) in writes.iter_mut() {
            self.kv_write(KvLayer { k: &mut *cache.k, v: &mut *cache.v }, k, v, *rows, row_len)?;
        }
        Ok(())
    }

    /// `rope_qk`, then `kv_write_many` of the rotated keys and `v` (rows of `row_len`): one
    /// launch on a GPU.
    #[allow(clippy::too_many_arguments)]
    fn rope_kv_write(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        v: &Self::Tensor,
        head_dim: usize,
        positions: &[u32],
        rope: &Rope,
        writes: &mut [(KvLayer<&mut Self::Tensor>, SeqRows)],
        row_len: usize,
    ) -> Result<(), KernelError> {
        self.rope_qk(q, k, head_dim, positions, rope)?;
        self.kv_write_many(writes, k, v, row_len)
    }

    /// `rope_kv_write`, then `attention_many` of the rotated queries over the caches written
    /// (rows of `shape.n_kv_head * shape.head_dim`): a step's attention after its Q/K/V
    /// projections. A GPU does a decode step (one new row per sequence) in one launch, which
    /// leaves `q` and `k` unrotated; callers treat both as spent.
    #[allow(clippy::too_many_arguments)]
    fn rope_kv_write_attention(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        v: &Self::Tensor,
        positions: &[u32],
        rope: &Rope,
        writes: &mut [(KvLayer<&mut Self::Tensor>, SeqRows)],
        shape: AttentionShape,
        out: &mut Self::Tensor,
    ) -> Result<(), KernelError> {
        rope_kv_write_then_attention(self, q, k, v, positions, rope, writes, shape, out)
    }

    /// [`Backend::rope`] of the queries and the keys of one step (same positions).
    fn rope_qk(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        head_dim: usize,
        positions: &[u32],
        rope: &Rope,
    ) -> Result<(), KernelError> {
        self.rope(q, head_dim, positions, rope)?;
        self.rope(k, head_dim, positions, rope)
    }

    /// Appends a sequence's new keys and values: rows `rows.row..rows.row + rows.n` of `k`
    /// and `v` (each `row_len` long) go to cache rows `rows.first_pos..`, growing the cache
    /// when needed.
    fn kv_write(
        &self,
        cache: KvLayer<&mut Self::Tensor>,
        k: &Self::Tensor,
        v: &Self::Tensor,
        rows: SeqRows,
        row_len: usize,
    ) -> Result<(), KernelError>;

    /// Called at the end of every forward step: a backend may start tidying work there that
    /// must not delay the step itself (the CPU moves freshly packed weights to huge pages).
    fn step_done(&self) {}

    /// Bytes one layer's cache takes per position for rows of `row_len` elements, keys and
    /// values together (what [`Backend::kv_write`] stores).
    fn kv_row_bytes(&self, row_len: usize) -> usize {
        2 * row_len * size_of::<f32>()
    }

    /// Causal attention for one sequence's query rows of `q` against its cache, which holds
    /// positions `0..rows.first_pos + rows.n`. Writes the same rows of `out`.
    fn attention(
        &self,
        q: &Self::Tensor,
        cache: KvLayer<&Self::Tensor>,
        rows: SeqRows,
        shape: AttentionShape,
        out: &mut Self::Tensor,
    ) -> Result<(), KernelError>;

    /// [`Backend::attention`] for several sequences of one step at once (a decode step holds
    /// many); a backend may run them together. Each sequence gets what it would alone.
    fn attention_many(
        &self,
        q: &Self::Tensor,
        seqs: &[(KvLayer<&Self::Tensor>, SeqRows)],
        shape: AttentionShape,
        out: &mut Self::Tensor,
    ) -> Result<(), KernelError> {
        for &(cache, rows) in seqs {
            self.attention(q, cache, rows, shape, out)?;
        }
        Ok(())
    }

    /// Copies rows `rows` (each `row_len` long) of `src` into consecutive rows of `out`.
    fn gather_rows(
        &self,
        src: &Self::Tensor,
        rows: &[usize],
        row_len: usize,
        out: &mut Self::Tensor,
    ) -> Result<(), KernelError>;

    /// `gate = silu(gate) * up`, element-wise over the first `len` elements.
    fn silu_mul(&self, gate: &mut Self::Tensor, up: &Self::Tensor, len: usize) -> Result<(), KernelError>;

    /// `x += y` over the first `len` elements.
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor, len: usize) -> Result<(), KernelError>;

    /// Waits until every queued op has finished (a GPU runs ahead of the host); timing code
    /// calls it before reading a clock.
    fn synchronize(&self) -> Result<(), KernelError> {
        Ok(())
    }

    /// Copies rows `rows` (each `row_len` long) of `t` to host memory, one after another.
    fn read_rows(
        &self,
        t: &Self::Tensor,
        rows: std::ops::Range<usize>,
        row_len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        out.clear();
        let mut row = Vec::with_capacity(row_len);
        for r in rows {
            self.read_row(t, r, row_len, &mut row)?;
            out.extend_from_slice(&row);
        }
        Ok(())
    }

    /// [`argmax`] of each of the first `rows` rows of `t` (each `row_len` long): greedy
    /// sampling where the logits are, so a GPU sends back one index per row instead of rows.
    fn argmax_rows(&self, t: &Self::Tensor, rows: usize, row_len: usize) -> Result<Vec<Option<u32>>, KernelError> {
        let mut host = Vec::new();
        self.read_rows(t, 0..rows, row_len, &mut host)?;
        Ok((0..rows).map(|r| argmax(&host[r * row_len..(r + 1) * row_len])).collect())
    }

    /// Whether [`Backend::llama_decode_one`] may run a step (a caller skips preparing one
    /// otherwise).
    fn decodes_whole_steps(&self) -> bool {
        false
    }

    /// A llama decode step of one sequence in one launch: embeds `token` at `position`, runs
    /// every layer (appending to `cache`, one entry per layer), and returns the output head's
    /// logits (one row of the vocabulary). `None`, with nothing touched, where the backend has
    /// no such kernel or the model does not fit it (the default): the caller runs the step op by
    /// op, which also reports what is wrong with a malformed model.
    fn llama_decode_one(
        &self,
        _model: &LlamaWeights<'_, Self::Weight>,
        _token: u32,
        _position: usize,
        _cache: &mut [KvLayer<&mut Self::Tensor>],
    ) -> Result<Option<Self::Tensor>, KernelError> {
        Ok(None)
    }

    /// Copies row `row` (of `row_len` elements) of `t` to host memory.
    fn read_row(&self, t: &Self::Tensor, row: usize, row_len: usize, out: &mut Vec<f32>) -> Result<(), KernelError>;
}
