//! A llama decode step of one sequence as one cooperative launch (`decode_step` in
//! decode_step.cu): at batch 1 a small model's step is otherwise ~150 kernels, each bound by
//! launch and memory latency rather than by the bytes it reads. Off unless
//! `REALM_CUDA_WHOLE_STEP=1` (or [`Cuda::set_whole_steps`]): on an H200 the kernel takes
//! 1.41 ms a step against ~1.05 ms op by op (bench/RESULTS.md, 2026-11-27 eleventh session).

use std::sync::Mutex;

use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, LaunchConfig, sys};

use super::{
    AT_MAX_GD, AT_MAX_GROUP, AttnRope, AttnShape, Cuda, CudaTensor, CudaWeight, KernelArg, attention_splits, buf,
    device_err, driver_err, to_i32,
};
use crate::backend::{Backend, KernelError, KvLayer, LlamaLayer, LlamaWeights, RopeLayout};
use crate::quant::GgmlType;

/// Threads per block of `decode_step` (decode_step.cu's `STEP_THREADS`).
const STEP_THREADS: u32 = 512;

/// decode_step.cu's `StepWeight`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq)]
pub(super) struct StepWeight {
    w: u64,
    ty: i32,
    row_bytes: i32,
}

/// decode_step.cu's `StepLayer`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq)]
struct StepLayer {
    q: StepWeight,
    k: StepWeight,
    v: StepWeight,
    o: StepWeight,
    gate: StepWeight,
    up: StepWeight,
    down: StepWeight,
    attn_norm: u64,
    ffn_norm: u64,
    k_cache: u64,
    v_cache: u64,
}

/// decode_step.cu's `StepArgs`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct StepArgs {
    layers: u64,
    out_norm: u64,
    x: u64,
    q: u64,
    k: u64,
    v: u64,
    att: u64,
    h: u64,
    logits: u64,
    partial: u64,
    arrived: u64,
    barrier: u64,
    timing: u64,
    embd: StepWeight,
    head: StepWeight,
    sh: AttnShape,
    rope: AttnRope,
    n_layer: i32,
    dim: i32,
    kv_dim: i32,
    ffn: i32,
    vocab: i32,
    token: i32,
    pos: i32,
    eps: f32,
}

// Each struct is exactly the sum of its fields: no padding byte is read as an argument.
const _: () = assert!(size_of::<StepWeight>() == 16);
const _: () = assert!(size_of::<StepLayer>() == 7 * 16 + 4 * 8);
const _: () =
    assert!(size_of::<StepArgs>() == 13 * 8 + 2 * 16 + size_of::<AttnShape>() + size_of::<AttnRope>() + 8 * 4);

/// The kernel, the grid it runs as (one block per multiprocessor, all resident at once), and
/// the state it keeps between steps.
pub(super) struct WholeStep {
    kernel: CudaFunction,
    blocks: u32,
    /// Whether decode steps use it.
    pub(super) on: bool,
    /// Whether each step's phases are timed (`REALM_CUDA_STEP_TIMING=1`; the host then waits
    /// for every step).
    timed: bool,
    state: Mutex<StepState>,
}

/// Phase times summed over the timed steps, in nanoseconds.
#[derive(Default, Clone, Copy)]
struct PhaseTimes {
    steps: u64,
    /// The two bare barriers at the start.
    barrier: u64,
    embed: u64,
    /// Q/K/V, attention, O, gate/up, down: summed over the layers.
    layer: [u64; 5],
    head: u64,
}

#[derive(Default)]
struct StepState {
    /// The layer table last uploaded (weights and caches; a cache moves when it grows).
    table: Vec<StepLayer>,
    table_dev: Option<CudaSlice<u8>>,
    /// The grid barrier's word: zero at first; each barrier adds 2^31 to it in all.
    barrier: Option<CudaSlice<u32>>,
    /// Where block 0 stamps the phase boundaries when timed.
    stamps: Option<CudaSlice<u64>>,
    times: PhaseTimes,
}

impl WholeStep {
    /// The whole-step kernel where this GPU can run it: cooperative launch, and one block of
    /// `STEP_THREADS` per multiprocessor resident at once.
    pub(super) fn new(kernel: CudaFunction, cooperative: bool, sm_count: usize) -> Option<Self> {
        let resident = kernel.occupancy_max_active_blocks_per_multiprocessor(STEP_THREADS, 0, None).unwrap_or(0);
        (cooperative && resident >= 1).then(|| Self {
            kernel,
            blocks: u32::try_from(sm_count).unwrap_or(1),
            on: std::env::var("REALM_CUDA_WHOLE_STEP").is_ok_and(|v| v == "1"),
            timed: std::env::var("REALM_CUDA_STEP_TIMING").is_ok_and(|v| v == "1"),
            state: Mutex::default(),
        })
    }
}

fn step_weight(
    op: &'static str,
    w: &CudaWeight,
    stream: &cudarc::driver::CudaStream,
) -> Result<StepWeight, KernelError> {
    let (p, _) = w.bytes.device_ptr(stream);
    let ty = match w.ty {
        GgmlType::F32 => 0,
        GgmlType::Q4_0 => 1,
        GgmlType::Q4_1 => 2,
        GgmlType::Q8_0 => 3,
        GgmlType::Q4K => 4,
        GgmlType::Q5K => 5,
        GgmlType::Q6K => 6,
        other => return Err(device_err(format!("{op}: no kernel for {other}"))),
    };
    Ok(StepWeight { w: p, ty, row_bytes: to_i32(op, w.row_bytes)? })
}

/// The model's sizes when `decode_step` can run it: (dim, kv_dim, ffn, vocab).
fn fits(m: &LlamaWeights<'_, CudaWeight>) -> Option<(usize, usize, usize, usize)> {
    let first = m.layers.first()?;
    let (dim, kv_dim, ffn, vocab) = (first.wq.cols, first.wk.rows, first.w_gate.rows, m.output.rows);
    let s = m.shape;
    let group = s.n_head.checked_div(s.n_kv_head)?;
    let attention = s.n_kv_head * group == s.n_head
        && s.n_head * s.head_dim == dim
        && s.n_kv_head * s.head_dim == kv_dim
        && s.head_dim.is_multiple_of(4)
        && group <= AT_MAX_GROUP
        && group * s.head_dim <= AT_MAX_GD
        && m.rope.n_rot <= s.head_dim
        && m.rope.n_rot.is_multiple_of(2);
    let vector = |w: &CudaWeight, len: usize| w.ty == GgmlType::F32 && w.rows == 1 && w.cols == len;
    let matrix = |w: &CudaWeight, rows: usize, cols: usize| w.rows == rows && w.cols == cols;
    let layers = m.layers.iter().all(|l| {
        vector(l.attn_norm, dim)
            && vector(l.ffn_norm, dim)
            && matrix(l.wq, dim, dim)
            && matrix(l.wk, kv_dim, dim)
            && matrix(l.wv, kv_dim, dim)
            && matrix(l.wo, dim, dim)
            && matrix(l.w_gate, ffn, dim)
            && matrix(l.w_up, ffn, dim)
            && matrix(l.w_down, dim, ffn)
            && l.w_gate.ty == l.w_up.ty
            && l.w_gate.row_bytes == l.w_up.row_bytes
    });
    let sizes = [dim, kv_dim, ffn].iter().all(|&n| n > 0 && n.is_multiple_of(32) && i32::try_from(n).is_ok());
    let ends =
        vector(m.output_norm, dim) && matrix(m.token_embd, m.token_embd.rows, dim) && matrix(m.output, vocab, dim);
    (attention && layers && sizes && ends && i32::try_from(vocab).is_ok()).then_some((dim, kv_dim, ffn, vocab))
}

impl Cuda {
    /// Turns one-launch decode steps on or off; returns whether they are on (never where the
    /// GPU cannot run them).
    pub fn set_whole_steps(&mut self, on: bool) -> bool {
        self.whole_step.as_mut().is_some_and(|w| {
            w.on = on;
            on
        })
    }

    /// [`crate::Backend::llama_decode_one`] on this GPU.
    pub(super) fn decode_whole_step(
        &self,
        m: &LlamaWeights<'_, CudaWeight>,
        token: u32,
        position: usize,
        cache: &mut [KvLayer<&mut CudaTensor>],
    ) -> Result<Option<CudaTensor>, KernelError> {
        const OP: &str = "decode_step";
        let Some(whole) = self.one_launch_step() else { return Ok(None) };
        let Some((dim, kv_dim, ffn, vocab)) = fits(m) else { return Ok(None) };
        let (Ok(pos), Ok(tok)) = (i32::try_from(position), i32::try_from(token)) else { return Ok(None) };
        if cache.len() != m.layers.len() || token as usize >= m.token_embd.rows || pos == i32::MAX {
            return Ok(None);
        }
        for c in cache.iter_mut() {
            self.reserve(c.k, (position + 1) * kv_dim)?;
            self.reserve(c.v, (position + 1) * kv_dim)?;
        }
        let stream = &self.stream;
        let layer = |l: &LlamaLayer<&CudaWeight>, c: &KvLayer<&mut CudaTensor>| -> Result<StepLayer, KernelError> {
            Ok(StepLayer {
                q: step_weight(OP, l.wq, stream)?,
                k: step_weight(OP, l.wk, stream)?,
                v: step_weight(OP, l.wv, stream)?,
                o: step_weight(OP, l.wo, stream)?,
                gate: step_weight(OP, l.w_gate, stream)?,
                up: step_weight(OP, l.w_up, stream)?,
                down: step_weight(OP, l.w_down, stream)?,
                attn_norm: step_weight(OP, l.attn_norm, stream)?.w,
                ffn_norm: step_weight(OP, l.ffn_norm, stream)?.w,
                k_cache: buf(OP, c.k)?.device_ptr(stream).0,
                v_cache: buf(OP, c.v)?.device_ptr(stream).0,
            })
        };
        let table = m.layers.iter().zip(cache.iter()).map(|(l, c)| layer(l, c)).collect::<Result<Vec<_>, _>>()?;

        let mut state = whole.state.lock().map_err(|_| device_err("whole-step state poisoned"))?;
        if state.table != table || state.table_dev.is_none() {
            // SAFETY: plain old data without padding (asserted above), read as bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(table.as_ptr().cast::<u8>(), table.len() * size_of::<StepLayer>())
            };
            let dev = self.flushed()?.clone_htod(bytes).map_err(|e| driver_err("copying the layer table", e))?;
            state.table_dev = Some(dev);
            state.table = table;
        }
        if state.barrier.is_none() {
            let zeroed = self.flushed()?.alloc_zeros::<u32>(1).map_err(|e| driver_err("allocating the barrier", e))?;
            state.barrier = Some(zeroed);
        }
        let stamps_len = 5 * m.layers.len() + 5;
        if whole.timed && state.stamps.as_ref().is_none_or(|b| b.len() != stamps_len) {
            let zeroed = self.flushed()?.alloc_zeros::<u64>(stamps_len);
            state.stamps = Some(zeroed.map_err(|e| driver_err("allocating the phase stamps", e))?);
        }

        let s = m.shape;
        let group = s.n_head / s.n_kv_head;
        let (split_len, splits) = attention_splits(position + 1, s.n_kv_head, s.head_dim, whole.blocks as usize);
        let x = self.pooled(dim, false)?;
        let q = self.pooled(dim, false)?;
        let k = self.pooled(kv_dim, false)?;
        let v = self.pooled(kv_dim, false)?;
        let att = self.pooled(dim, false)?;
        let h = self.pooled(ffn, false)?;
        let logits = self.pooled(vocab, false)?;
        let partial = self.pooled(s.n_kv_head * splits * (group * s.head_dim + 2 * group), false)?;
        let arrived = self.arrival_counters(s.n_kv_head)?;
        let ptr = |t: &CudaTensor| -> Result<u64, KernelError> { Ok(buf(OP, t)?.device_ptr(stream).0) };
        let (Some(table_dev), Some(barrier), Some(arrived)) = (&state.table_dev, &state.barrier, arrived.as_ref())
        else {
            return Err(device_err("whole-step buffers missing"));
        };
        let timing = match (&state.stamps, whole.timed) {
            (Some(stamps), true) => stamps.device_ptr(stream).0,
            _ => 0,
        };
        let args = StepArgs {
            layers: table_dev.device_ptr(stream).0,
            out_norm: step_weight(OP, m.output_norm, stream)?.w,
            x: ptr(&x)?,
            q: ptr(&q)?,
            k: ptr(&k)?,
            v: ptr(&v)?,
            att: ptr(&att)?,
            h: ptr(&h)?,
            logits: ptr(&logits)?,
            partial: ptr(&partial)?,
            arrived: arrived.device_ptr(stream).0,
            barrier: barrier.device_ptr(stream).0,
            timing,
            embd: step_weight(OP, m.token_embd, stream)?,
            head: step_weight(OP, m.output, stream)?,
            sh: AttnShape {
                n_head: to_i32(OP, s.n_head)?,
                n_kv_head: to_i32(OP, s.n_kv_head)?,
                head_dim: to_i32(OP, s.head_dim)?,
                splits: to_i32(OP, splits)?,
                split_len: to_i32(OP, split_len)?,
                scale: 1.0 / (s.head_dim as f32).sqrt(),
            },
            rope: AttnRope {
                k_new: ptr(&k)?,
                v_new: ptr(&v)?,
                n_rot: to_i32(OP, m.rope.n_rot)?,
                neox: i32::from(m.rope.layout == RopeLayout::Neox),
                log2_base: f64::from(m.rope.freq_base).log2(),
            },
            n_layer: to_i32(OP, m.layers.len())?,
            dim: to_i32(OP, dim)?,
            kv_dim: to_i32(OP, kv_dim)?,
            ffn: to_i32(OP, ffn)?,
            vocab: to_i32(OP, vocab)?,
            token: tok,
            pos,
            eps: m.eps,
        };
        let cfg = LaunchConfig { grid_dim: (whole.blocks, 1, 1), block_dim: (STEP_THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut launch_args = super::graphs::Args::default();
        args.push_to(stream, &mut launch_args);
        self.queue()?
            .launch_cooperative(&whole.kernel, cfg, launch_args)
            .map_err(|e| driver_err("whole-step launch", e))?;
        if timing != 0 {
            let mut stamps = vec![0u64; stamps_len];
            if let Some(dev) = &state.stamps {
                self.flushed()?.memcpy_dtoh(dev, &mut stamps).map_err(|e| driver_err("reading the stamps", e))?;
            }
            Backend::synchronize(self)?;
            state.times.add(&stamps, m.layers.len());
        }
        Ok(Some(logits))
    }

    /// The timed steps' phases (`REALM_CUDA_STEP_TIMING=1`), in microseconds per step, for a
    /// benchmark's log; `None` when none were timed.
    pub fn whole_step_timing(&self) -> Option<String> {
        let t = self.whole_step.as_ref()?.state.lock().ok()?.times;
        let us = |ns: u64| ns as f64 / t.steps as f64 / 1e3;
        let [qkv, attention, o, gate_up, down] = t.layer.map(us);
        (t.steps > 0).then(|| {
            format!(
                "one-launch decode step phases over {} steps, µs per step (each up to the barrier that ends \
                 it): bare barrier {:.2}, embedding {:.1}, all layers' Q/K/V {qkv:.1}, attention {attention:.1}, \
                 O {o:.1}, gate/up {gate_up:.1}, down {down:.1}, head {:.1}",
                t.steps,
                us(t.barrier) / 2.0,
                us(t.embed),
                us(t.head)
            )
        })
    }
}

impl PhaseTimes {
    /// Adds one step's stamps: start, two bare barriers, embedding, 5 per layer, head.
    fn add(&mut self, stamps: &[u64], layers: usize) {
        let d = |i: usize| stamps[i + 1].saturating_sub(stamps[i]);
        self.steps += 1;
        self.barrier += d(0) + d(1);
        self.embed += d(2);
        for l in 0..layers {
            for (p, sum) in self.layer.iter_mut().enumerate() {
                *sum += d(3 + 5 * l + p);
            }
        }
        self.head += d(3 + 5 * layers);
    }
}

/// Whether the device can launch cooperative kernels.
pub(super) fn cooperative_capable(ctx: &cudarc::driver::CudaContext) -> bool {
    ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH).is_ok_and(|v| v == 1)
}
