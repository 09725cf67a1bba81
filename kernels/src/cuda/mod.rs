//! The CUDA backend: `kernels.cu` compiled at start by NVRTC for the device's architecture
//! (PTX cached on disk), run through the driver API on one stream. The CUDA libraries are
//! loaded at run time; every entry point first checks they are there, because cudarc panics
//! instead of failing when one is missing.
//!
//! Weights stay in their GGML blocks in device memory (F32, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and
//! Q6_K have kernels; other types are dequantized to f32 at load). Activations and the KV cache
//! are f32, so the GPU computes what the exact CPU path computes, up to summation order.

mod cache;
mod graphs;
mod whole_step;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, DriverError, LaunchConfig,
};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use crate::backend::{
    AttentionShape, Backend, BackendKind, Inputs, KernelError, KvLayer, LlamaWeights, QTensor, Rope, SeqRows,
    argmax_ids, argmax_without_kernel, check_len, rope_kv_write_then_attention, shape_err, written,
};
use crate::quant::{GgmlType, dequantize_row};
pub use graphs::GraphStats;
use graphs::{Args, Queue};
use whole_step::{StepArgs, WholeStep};

/// The kernels' source, as NVRTC compiles it: the op kernels, then the whole-step kernel built
/// from their parts.
pub const KERNELS_CU: &str = concat!(include_str!("kernels.cu"), include_str!("decode_step.cu"));

/// Every `extern "C"` kernel of [`KERNELS_CU`] the backend launches.
pub const KERNEL_NAMES: &[&str] = &[
    "matmul_f32",
    "matmul_q4_0",
    "matmul_q4_1",
    "matmul_q8_0",
    "matmul_q4_k",
    "matmul_q5_k",
    "matmul_q6_k",
    "matmul_norm_f32",
    "matmul_norm_q4_0",
    "matmul_norm_q4_1",
    "matmul_norm_q8_0",
    "matmul_norm_q4_k",
    "matmul_norm_q5_k",
    "matmul_norm_q6_k",
    "embed_f32",
    "embed_q4_0",
    "embed_q4_1",
    "embed_q8_0",
    "embed_q4_k",
    "embed_q5_k",
    "embed_q6_k",
    "rms_norm",
    "silu_mul",
    "add",
    "rope",
    "attention",
    "attention_f16",
    "kv_write",
    "kv_write_f16",
    "rope_kv_write",
    "rope_kv_write_f16",
    "argmax_rows",
    "decode_step",
];

/// Weight formats with a fused dequantize kernel, in the order of the `matmul_*`,
/// `matmul_norm_*` and `embed_*` names above.
const KERNEL_TYPES: [GgmlType; 7] =
    [GgmlType::F32, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K];

/// Warps (weight rows) per matmul block and input rows per matmul block (`MM_WARPS`,
/// `MM_TILE` in kernels.cu). The RMSNorm is fused into a matmul only for up to `MM_TILE` input
/// rows: every warp recomputes its rows' sum of squares, which is free while a launch waits on
/// memory (decode) but doubles the input-side arithmetic of the wide tiles of prefill and large
/// batches, where the separate norm launch costs little.
const MM_WARPS: u32 = 4;
const MM_TILE: u32 = 8;
/// Attention (kernels.cu's `AT_*`): threads per block, the most positions and floats of keys
/// per staged tile, sequences per launch, and the most query heads (and their dims) sharing one
/// KV head.
const AT_THREADS: u32 = 128;
const AT_TILE: usize = 64;
const AT_TILE_FLOATS: usize = 4096;
const AT_MAX_SEQS: usize = 32;
const AT_MAX_GROUP: usize = 8;
const AT_MAX_GD: usize = 1024;
/// Threads per row of `argmax_rows` (kernels.cu's `ARGMAX_THREADS`).
const ARGMAX_THREADS: u32 = 1024;

/// kernels.cu's `MatmulJobs`: up to three weights of one format sharing the input, and what
/// to do with the products (`MM_STORE`, `MM_ADD`, `MM_SWIGLU`).
#[repr(C)]
#[derive(Clone, Copy)]
struct MatmulJobs {
    w: [u64; 3],
    out: [u64; 3],
    norm: u64,
    rows: [i32; 3],
    count: i32,
    mode: i32,
    row_bytes: i32,
    cols: i32,
    n: i32,
    eps: f32,
    /// The C struct's trailing padding, spelled out: arguments are compared byte for byte.
    pad: i32,
}

// SAFETY: plain old data laid out as the kernel's struct.
unsafe impl DeviceRepr for MatmulJobs {}

const MM_STORE: i32 = 0;
const MM_ADD: i32 = 1;
const MM_SWIGLU: i32 = 2;

/// kernels.cu's `AttnSeqs`: one launch's sequences, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct AttnSeqs {
    k: [u64; AT_MAX_SEQS],
    v: [u64; AT_MAX_SEQS],
    first_pos: [u32; AT_MAX_SEQS],
    row: [u32; AT_MAX_SEQS],
    n: [u32; AT_MAX_SEQS],
    count: u32,
    /// The C struct's trailing padding, spelled out: arguments are compared byte for byte.
    pad: u32,
}

// SAFETY: plain old data laid out as the kernel's struct (repr(C), same field order and types).
unsafe impl DeviceRepr for AttnSeqs {}

impl AttnSeqs {
    fn empty(count: usize) -> Self {
        Self {
            k: [0; AT_MAX_SEQS],
            v: [0; AT_MAX_SEQS],
            first_pos: [0; AT_MAX_SEQS],
            row: [0; AT_MAX_SEQS],
            n: [0; AT_MAX_SEQS],
            count: count as u32,
            pad: 0,
        }
    }

    /// Sequence `i`: its caches and rows. Callers have checked positions fit in u32; rows are
    /// bounded by tensor lengths.
    fn set(&mut self, i: usize, k: u64, v: u64, rows: &SeqRows) {
        self.k[i] = k;
        self.v[i] = v;
        self.first_pos[i] = rows.first_pos as u32;
        self.row[i] = rows.row as u32;
        self.n[i] = rows.n as u32;
    }
}

/// kernels.cu's `AttnShape`.
#[repr(C)]
#[derive(Clone, Copy)]
struct AttnShape {
    n_head: i32,
    n_kv_head: i32,
    head_dim: i32,
    splits: i32,
    split_len: i32,
    scale: f32,
}

/// Attention blocks a launch aims for per multiprocessor: a decode step has few (row, KV head)
/// pairs, so its context is cut into runs until the GPU is busy.
const AT_BLOCKS_PER_SM: usize = 4;

/// Positions per run of one attention block: enough runs that the launch fills the GPU, each a
/// whole number of staged tiles of at least one tile. Returns (run length, runs).
fn attention_splits(max_ctx: usize, row_heads: usize, head_dim: usize, sm_count: usize) -> (usize, usize) {
    let tile = AT_TILE.min(AT_TILE_FLOATS / head_dim).max(1);
    let wanted = (AT_BLOCKS_PER_SM * sm_count).div_ceil(row_heads.max(1)).max(1);
    let split_len = max_ctx.div_ceil(wanted).max(AT_TILE).next_multiple_of(tile);
    (split_len, max_ctx.div_ceil(split_len).max(1))
}

// SAFETY: as above.
unsafe impl DeviceRepr for AttnShape {}

/// kernels.cu's `AttnRope`: a decode step's new key and value rows and the rotation, for RoPE
/// and the KV append inside the attention launch; `k_new == 0` leaves them out.
#[repr(C)]
#[derive(Clone, Copy)]
struct AttnRope {
    k_new: u64,
    v_new: u64,
    n_rot: i32,
    neox: i32,
    log2_base: f64,
}

impl AttnRope {
    const NONE: Self = Self { k_new: 0, v_new: 0, n_rot: 0, neox: 0, log2_base: 0.0 };
}

fn device_err(reason: impl Into<String>) -> KernelError {
    KernelError::Device { backend: BackendKind::Cuda, reason: reason.into() }
}

fn driver_err(what: &str, e: DriverError) -> KernelError {
    device_err(format!("{what}: {e}"))
}

fn to_i32(op: &'static str, v: usize) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| shape_err(op, format!("{v} is too large for a kernel argument")))
}

/// Whether the CUDA driver library can be loaded here.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC can be loaded here.
pub fn nvrtc_present() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles [`KERNELS_CU`] to PTX for `arch` (`sm_90`, `compute_80`...). Needs NVRTC only,
/// no GPU: CI checks every kernel compiles this way.
pub fn compile_ptx(arch: &str) -> Result<String, KernelError> {
    if !nvrtc_present() {
        return Err(device_err("NVRTC (libnvrtc) is not installed or not on the library path"));
    }
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some("kernels.cu".into()),
        ..CompileOptions::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(KERNELS_CU, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, .. }) => {
            Err(device_err(format!("NVRTC failed to compile kernels.cu for {arch}:\n{}", log.to_string_lossy())))
        }
        Err(e) => Err(device_err(format!("NVRTC: {e:?}"))),
    }
}

struct Kernels {
    matmul: Vec<CudaFunction>,
    /// The matmuls that RMS-normalise their input on the fly.
    matmul_norm: Vec<CudaFunction>,
    embed: Vec<CudaFunction>,
    rms_norm: CudaFunction,
    silu_mul: CudaFunction,
    add: CudaFunction,
    rope: CudaFunction,
    f32_cache: CacheKernels,
    f16_cache: CacheKernels,
    argmax_rows: CudaFunction,
}

/// The kernels that read or write KV caches, for one cache element type.
struct CacheKernels {
    attention: CudaFunction,
    kv_write: CudaFunction,
    rope_kv_write: CudaFunction,
}

pub struct Cuda {
    stream: Arc<CudaStream>,
    kernels: Kernels,
    description: String,
    /// Multiprocessors, for sizing launches that would otherwise leave most of them idle.
    sm_count: usize,
    /// The positions last uploaded, and the device buffer holding them (grown as needed, never
    /// moved otherwise, so the launches that read it replay unchanged).
    positions: Mutex<Option<(Vec<u32>, CudaSlice<u32>)>>,
    /// Where the token ids of a step are uploaded for `embed`, grown as needed.
    ids: Mutex<Option<CudaSlice<u32>>>,
    /// Attention's arrival counters, one per (query row, KV head) of a launch: zero between
    /// launches (each launch's last blocks put theirs back), grown as needed.
    arrived: Mutex<Option<CudaSlice<u32>>>,
    /// Where `argmax_rows` leaves its ids, grown as needed.
    argmax_ids: Mutex<Option<CudaSlice<u32>>>,
    /// The one-launch decode step, where this GPU can run it.
    whole_step: Option<WholeStep>,
    /// KV caches hold f16, two to each f32 slot of their tensors (see [`Cuda::with_f16_kv`]).
    kv_f16: bool,
    shared: Arc<Shared>,
}

/// What the backend shares with its tensors and weights: a tensor goes back to the pool when
/// dropped, and anything freed first submits the queued launches that may still use it (a
/// free is ordered on the stream after what was submitted before it).
struct Shared {
    pool: Mutex<HashMap<usize, Vec<CudaSlice<f32>>>>,
    queue: Mutex<Queue>,
}

impl Shared {
    /// Submits the queued launches where errors cannot be returned (before memory is freed,
    /// at the end of a step): the next call that waits on the queue returns them.
    fn flush_quietly(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.flush_or_keep_error();
        }
    }
}

/// The rotation's kernel arguments: head dim, rotated dims, log2 of the base, NeoX pairing.
struct RopeArgs {
    hd: i32,
    nr: i32,
    log2_base: f64,
    neox: i32,
}

impl RopeArgs {
    fn new(head_dim: usize, rope: &Rope) -> Result<Self, KernelError> {
        Ok(Self {
            hd: to_i32("rope", head_dim)?,
            nr: to_i32("rope", rope.n_rot)?,
            log2_base: f64::from(rope.freq_base).log2(),
            neox: i32::from(rope.layout == crate::backend::RopeLayout::Neox),
        })
    }
}

/// The positions cache, locked.
type PositionsGuard<'a> = std::sync::MutexGuard<'a, Option<(Vec<u32>, CudaSlice<u32>)>>;

/// Device buffers of activations are kept by length for the next step: a decode step asks
/// for the same dozen sizes every time, and an allocation, a free and their driver calls per
/// tensor cost more than the small kernels that use them. Getting the same buffers back also
/// keeps the step's launches identical, so its graph replays unchanged.
const POOL_PER_LEN: usize = 8;

/// An f32 tensor in device memory. `len` elements are in use; a KV cache keeps spare
/// capacity beyond them so appending rarely reallocates. Activations go back to the pool
/// when dropped.
pub struct CudaTensor {
    buf: Option<CudaSlice<f32>>,
    len: usize,
    shared: Option<Arc<Shared>>,
    pooled: bool,
}

impl Drop for CudaTensor {
    fn drop(&mut self) {
        let (Some(shared), Some(buf)) = (&self.shared, self.buf.take()) else { return };
        let mut buf = Some(buf);
        if self.pooled
            && let Ok(mut pool) = shared.pool.lock()
        {
            let kept = pool.entry(buf.as_ref().map_or(0, |b| b.len())).or_default();
            if kept.len() < POOL_PER_LEN {
                kept.extend(buf.take());
            }
        }
        if buf.is_some() {
            shared.flush_quietly();
        }
    }
}

pub struct CudaWeight {
    /// The format the bytes are in on the device (f32 where the file's has no kernel).
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    bytes: CudaSlice<u8>,
    shared: Arc<Shared>,
}

impl Drop for CudaWeight {
    fn drop(&mut self) {
        self.shared.flush_quietly();
    }
}

impl CudaWeight {
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Device pointers of one matmul launch's weights and outputs (`count` of them used), and the
/// RMSNorm weight and epsilon applied to the input on the fly, if any.
struct MatmulTargets {
    ws: [u64; 3],
    outs: [u64; 3],
    rows: [i32; 3],
    count: usize,
    norm: Option<(u64, f32)>,
}

fn kernel_index(ty: GgmlType) -> Option<usize> {
    KERNEL_TYPES.iter().position(|&t| t == ty)
}

/// A kernel argument as the launch queue takes it: its bytes, or a buffer's device pointer.
trait KernelArg {
    fn push_to(&self, stream: &CudaStream, args: &mut Args);
}

macro_rules! value_args {
    ($($t:ty),+) => {$(
        impl KernelArg for $t {
            fn push_to(&self, _: &CudaStream, args: &mut Args) {
                // SAFETY: a plain value without padding bytes (the kernel structs spell theirs
                // out), read as the bytes the kernel receives.
                let bytes = unsafe { std::slice::from_raw_parts((self as *const $t).cast::<u8>(), size_of::<$t>()) };
                args.push(bytes);
            }
        }
    )+};
}

value_args!(i32, u32, f32, f64, u64, MatmulJobs, AttnSeqs, AttnShape, AttnRope, StepArgs);

// Each kernel struct is exactly the sum of its fields: no padding byte is read as an argument.
const _: () = assert!(size_of::<MatmulJobs>() == 7 * 8 + 3 * 4 + 7 * 4);
const _: () = assert!(size_of::<AttnSeqs>() == 2 * AT_MAX_SEQS * 8 + 3 * AT_MAX_SEQS * 4 + 2 * 4);
const _: () = assert!(size_of::<AttnShape>() == 6 * 4);
const _: () = assert!(size_of::<AttnRope>() == 2 * 8 + 2 * 4 + 8);

impl<T> KernelArg for CudaSlice<T> {
    fn push_to(&self, stream: &CudaStream, args: &mut Args) {
        let (p, _guard) = self.device_ptr(stream);
        args.push(&p.to_ne_bytes());
    }
}

/// Queues kernel `$f` with its arguments, in the order the kernel declares them. Every caller
/// passes the arguments its kernel declares and has checked the buffers hold what the launch
/// reads and writes.
macro_rules! launch {
    ($self:expr, $f:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let mut args = Args::default();
        $( KernelArg::push_to(&*$arg, &$self.stream, &mut args); )+
        $self.queue()?.launch($f, $cfg, args).map_err(|e| driver_err("kernel launch", e))
    }};
}

impl Cuda {
    /// Opens GPU `ordinal`, compiling (or loading cached) kernels for its architecture.
    pub fn new(ordinal: usize) -> Result<Self, KernelError> {
        if !driver_present() {
            return Err(device_err("the CUDA driver (libcuda) is not installed or not on the library path"));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_err(&format!("opening GPU {ordinal}"), e))?;
        // One stream orders everything, so cudarc's per-buffer event tracking only costs time.
        // SAFETY: no buffer is shared with another stream.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability().map_err(|e| driver_err("reading the compute capability", e))?;
        let name = ctx.name().map_err(|e| driver_err("reading the device name", e))?;
        let arch = format!("sm_{major}{minor}");
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver_err("reading the multiprocessor count", e))?;
        let (ptx, cached) = cache::ptx_for(&arch, || compile_ptx(&arch))?;
        let module = ctx.load_module(Ptx::from_src(ptx)).map_err(|e| driver_err("loading the kernels' PTX", e))?;
        let load = |n: &str| module.load_function(n).map_err(|e| driver_err(&format!("kernel {n}"), e));
        let kernels = Kernels {
            matmul: KERNEL_NAMES[..7].iter().map(|n| load(n)).collect::<Result<_, _>>()?,
            matmul_norm: KERNEL_NAMES[7..14].iter().map(|n| load(n)).collect::<Result<_, _>>()?,
            embed: KERNEL_NAMES[14..21].iter().map(|n| load(n)).collect::<Result<_, _>>()?,
            rms_norm: load("rms_norm")?,
            silu_mul: load("silu_mul")?,
            add: load("add")?,
            rope: load("rope")?,
            f32_cache: CacheKernels {
                attention: load("attention")?,
                kv_write: load("kv_write")?,
                rope_kv_write: load("rope_kv_write")?,
            },
            f16_cache: CacheKernels {
                attention: load("attention_f16")?,
                kv_write: load("kv_write_f16")?,
                rope_kv_write: load("rope_kv_write_f16")?,
            },
            argmax_rows: load("argmax_rows")?,
        };
        let sm_count = usize::try_from(sm_count).unwrap_or(1).max(1);
        let whole_step = WholeStep::new(load("decode_step")?, whole_step::cooperative_capable(&ctx), sm_count);
        let stream = ctx.default_stream();
        let queue = Queue::new(stream.clone(), module.clone(), major >= 9);
        let description = format!(
            "{name} (sm_{major}{minor}, kernels {}, {}, one-launch decode steps {})",
            if cached { "from the PTX cache" } else { "compiled by NVRTC" },
            queue.describe(),
            match &whole_step {
                Some(w) if w.on => "on",
                Some(_) => "off (REALM_CUDA_WHOLE_STEP=1 turns them on)",
                None => "unavailable",
            }
        );
        Ok(Self {
            stream,
            kernels,
            description,
            sm_count,
            positions: Mutex::new(None),
            ids: Mutex::new(None),
            arrived: Mutex::new(None),
            argmax_ids: Mutex::new(None),
            whole_step,
            kv_f16: false,
            shared: Arc::new(Shared { pool: Mutex::default(), queue: Mutex::new(queue) }),
        })
    }

    /// KV caches in f16 (`on`) or f32: f16 halves the cache's memory and the bytes attention
    /// reads; attention still computes in f32. Rows whose length is not a multiple of 4 stay
    /// f32, and so does the one-launch decode step's cache (it falls back to op-by-op steps).
    pub fn with_f16_kv(mut self, on: bool) -> Self {
        self.kv_f16 = on;
        self
    }

    /// Whether caches of `row_len`-element rows hold f16.
    fn f16_rows(&self, row_len: usize) -> bool {
        self.kv_f16 && row_len.is_multiple_of(4)
    }

    /// The kernels for caches of `row_len`-element rows.
    fn cache_kernels(&self, row_len: usize) -> &CacheKernels {
        if self.f16_rows(row_len) { &self.kernels.f16_cache } else { &self.kernels.f32_cache }
    }

    /// The one-launch decode step, where it is on and the caches are the f32 ones it reads.
    fn one_launch_step(&self) -> Option<&WholeStep> {
        self.whole_step.as_ref().filter(|w| w.on && !self.kv_f16)
    }

    /// f32 slots a cache of `row_len`-element rows needs for `elems` elements.
    fn cache_slots(&self, elems: usize, row_len: usize) -> usize {
        if self.f16_rows(row_len) { elems / 2 } else { elems }
    }

    /// How many CUDA graphs were built and replayed, and kernels launched one by one.
    pub fn graph_stats(&self) -> Result<GraphStats, KernelError> {
        Ok(self.queue()?.stats())
    }

    fn queue(&self) -> Result<std::sync::MutexGuard<'_, Queue>, KernelError> {
        self.shared.queue.lock().map_err(|_| device_err("launch queue poisoned"))
    }

    /// The stream, once every queued launch is submitted: for anything but a launch (copies,
    /// memsets, allocations, waits), which must come after the launches queued before it.
    fn flushed(&self) -> Result<&Arc<CudaStream>, KernelError> {
        self.queue()?.flush().map_err(|e| driver_err("kernel launch", e))?;
        Ok(&self.stream)
    }

    /// The device and how its kernels were obtained, for the start-up log line.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Device-to-device copy bandwidth, counting bytes read and written, of the fastest of
    /// `passes` copies of `bytes`: the ceiling a decode step's weight reads can reach.
    pub fn copy_bandwidth(&self, bytes: usize, passes: usize) -> Result<f64, KernelError> {
        let src = self.flushed()?.alloc_zeros::<u8>(bytes).map_err(|e| driver_err("allocating the probe", e))?;
        let mut dst = self.flushed()?.alloc_zeros::<u8>(bytes).map_err(|e| driver_err("allocating the probe", e))?;
        let mut best = f64::INFINITY;
        // The first copy warms clocks and page mappings and is not counted.
        for pass in 0..=passes {
            self.flushed()?.synchronize().map_err(|e| driver_err("synchronize", e))?;
            let t = std::time::Instant::now();
            self.flushed()?.memcpy_dtod(&src, &mut dst).map_err(|e| driver_err("probe copy", e))?;
            self.flushed()?.synchronize().map_err(|e| driver_err("synchronize", e))?;
            if pass > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        Ok(2.0 * bytes as f64 / best.max(1e-9))
    }

    /// Grows a KV cache to hold `len` elements (doubling, so appends stay amortised O(1)),
    /// keeping its contents, and marks them in use.
    fn reserve(&self, cached: &mut CudaTensor, len: usize) -> Result<(), KernelError> {
        let capacity = cached.buf.as_ref().map_or(0, |b| b.len());
        if capacity < len {
            let mut grown = self.alloc(len.max(2 * capacity))?;
            if let (Some(old), Some(g)) = (cached.buf.as_ref(), grown.as_mut())
                && cached.len > 0
            {
                let (src, mut dst) = (old.try_slice(..cached.len), g.try_slice_mut(..cached.len));
                if let (Some(src), Some(dst)) = (src, dst.as_mut()) {
                    self.flushed()?.memcpy_dtod(&src, dst).map_err(|e| driver_err("growing the KV cache", e))?;
                }
            }
            cached.buf = grown;
            cached.shared = Some(self.shared.clone());
        }
        cached.len = cached.len.max(len);
        Ok(())
    }

    /// Checks a tensor `rope` rotates and returns its device pointer.
    fn rope_target<'a>(
        &'a self,
        x: &'a mut CudaTensor,
        head_dim: usize,
        rows: usize,
        rope: &Rope,
    ) -> Result<((u64, i32), cudarc::driver::SyncOnDrop<'a>), KernelError> {
        let row_len = rope_row_len(x.len, head_dim, rows, rope)?;
        let (p, guard) = buf_mut("rope", x)?.device_ptr_mut(&self.stream);
        Ok(((p, row_len), guard))
    }

    /// One rope launch over `tensors` tensors (1 or 2: pointer and row length each) of
    /// `positions.len()` rows each.
    fn launch_rope(
        &self,
        targets: [(u64, i32); 2],
        positions: &[u32],
        head_dim: usize,
        rope: &Rope,
        tensors: u32,
    ) -> Result<(), KernelError> {
        let rows = positions.len();
        let last = self.positions_on_device(positions)?;
        let Some((_, pos)) = last.as_ref() else { return Err(device_err("positions cache empty")) };
        let RopeArgs { hd, nr, log2_base, neox } = RopeArgs::new(head_dim, rope)?;
        let cfg = LaunchConfig { grid_dim: (rows as u32, tensors, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        let [(p0, l0), (p1, l1)] = targets;
        launch!(self, &self.kernels.rope, cfg, &p0, &l0, &p1, &l1, &hd, &nr, pos, &log2_base, &neox)
    }

    /// `positions` on the device. Every layer rotates by the same positions: one upload per step.
    fn positions_on_device(&self, positions: &[u32]) -> Result<PositionsGuard<'_>, KernelError> {
        let mut last = self.positions.lock().map_err(|_| device_err("positions cache poisoned"))?;
        if last.as_ref().is_none_or(|(_, dev)| dev.len() < positions.len()) {
            *last = Some((Vec::new(), self.upload_u32(&vec![0; positions.len().next_power_of_two()])?));
        }
        if let Some((host, dev)) = last.as_mut()
            && host.as_slice() != positions
        {
            let mut head =
                dev.try_slice_mut(..positions.len()).ok_or_else(|| device_err("positions buffer too short"))?;
            self.flushed()?
                .memcpy_htod(positions, &mut head)
                .map_err(|e| driver_err("copying positions to the GPU", e))?;
            host.clear();
            host.extend_from_slice(positions);
        }
        Ok(last)
    }

    /// For a RoPE and KV append of every row in one launch (`rows_at_positions` holds): checks
    /// the shapes, makes room in the caches and uploads the positions.
    #[allow(clippy::too_many_arguments)]
    fn prepare_rope_kv_write(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        head_dim: usize,
        positions: &[u32],
        rope: &Rope,
        writes: &mut [(KvLayer<&mut CudaTensor>, SeqRows)],
        row_len: usize,
    ) -> Result<(), KernelError> {
        if k.len != positions.len() * row_len {
            return Err(shape_err("rope_kv_write", format!("{} key elements are not rows of {row_len}", k.len)));
        }
        rope_row_len(q.len, head_dim, positions.len(), rope)?;
        rope_row_len(k.len, head_dim, positions.len(), rope)?;
        self.prepare_kv_writes(writes, k, v, row_len)?;
        drop(self.positions_on_device(positions)?);
        Ok(())
    }

    /// Checks the shapes of KV writes and makes room in their caches.
    fn prepare_kv_writes(
        &self,
        writes: &mut [(KvLayer<&mut CudaTensor>, SeqRows)],
        k: &CudaTensor,
        v: &CudaTensor,
        row_len: usize,
    ) -> Result<(), KernelError> {
        for (cache, rows) in writes.iter_mut() {
            check_len("kv_write", "source", k.len, (rows.row + rows.n) * row_len)?;
            check_len("kv_write", "source", v.len, (rows.row + rows.n) * row_len)?;
            u32::try_from(rows.first_pos + rows.n)
                .map_err(|_| shape_err("kv_write", format!("position {}", rows.first_pos + rows.n)))?;
            if rows.n > 0 && row_len > 0 {
                let end = self.cache_slots((rows.first_pos + rows.n) * row_len, row_len);
                self.reserve(cache.k, end)?;
                self.reserve(cache.v, end)?;
            }
        }
        Ok(())
    }

    /// Calls `launch` with the caches and rows of up to `AT_MAX_SEQS` writes at a time, and the
    /// number of new rows they hold.
    fn for_each_kv_chunk(
        &self,
        writes: &mut [(KvLayer<&mut CudaTensor>, SeqRows)],
        row_len: usize,
        mut launch: impl FnMut(&AttnSeqs, u32) -> Result<(), KernelError>,
    ) -> Result<(), KernelError> {
        let live: Vec<_> = writes.iter_mut().filter(|(_, r)| r.n > 0 && row_len > 0).collect();
        for chunk in live.chunks(AT_MAX_SEQS) {
            let mut desc = AttnSeqs::empty(chunk.len());
            let mut guards = Vec::with_capacity(chunk.len());
            let mut total = 0;
            for (i, (cache, rows)) in chunk.iter().enumerate() {
                let (kp, kg) = buf("kv_write", cache.k)?.device_ptr(&self.stream);
                let (vp, vg) = buf("kv_write", cache.v)?.device_ptr(&self.stream);
                guards.push((kg, vg));
                desc.set(i, kp, vp, rows);
                total += rows.n;
            }
            let total = u32::try_from(total).map_err(|_| shape_err("kv_write", format!("{total} rows")))?;
            launch(&desc, total)?;
            drop(guards);
        }
        Ok(())
    }

    /// Shapes of a matmul over `n` rows of `x` into outputs of the given lengths.
    fn check_matmul<'a>(
        &self,
        x: &CudaTensor,
        n: usize,
        jobs: impl Iterator<Item = (&'a CudaWeight, usize)>,
    ) -> Result<(), KernelError> {
        let mut cols = None;
        for (w, out_len) in jobs {
            let c = *cols.get_or_insert(w.cols);
            if w.cols != c {
                return Err(shape_err("matmul", format!("weights sharing an input have {} and {c} columns", w.cols)));
            }
            if kernel_index(w.ty).is_none() {
                return Err(shape_err("matmul", format!("no kernel for {}", w.ty)));
            }
            check_len("matmul", "output", out_len, n * w.rows)?;
        }
        check_len("matmul", "input", x.len, n * cols.unwrap_or(0))
    }

    /// One matmul launch over the weights of `targets`, all in `w`'s format.
    fn launch_matmul(
        &self,
        w: &CudaWeight,
        x: &CudaTensor,
        n: usize,
        targets: MatmulTargets,
        mode: i32,
    ) -> Result<(), KernelError> {
        let k = kernel_index(w.ty).ok_or_else(|| shape_err("matmul", format!("no kernel for {}", w.ty)))?;
        let MatmulTargets { ws, outs, rows, count, norm } = targets;
        let jobs = MatmulJobs {
            w: ws,
            out: outs,
            norm: norm.map_or(0, |(p, _)| p),
            eps: norm.map_or(0.0, |(_, e)| e),
            rows,
            count: count as i32,
            mode,
            row_bytes: to_i32("matmul", w.row_bytes)?,
            cols: to_i32("matmul", w.cols)?,
            n: to_i32("matmul", n)?,
            pad: 0,
        };
        let blocks: usize = rows[..count].iter().map(|&r| (r as usize).div_ceil(MM_WARPS as usize)).sum();
        let grid_y = u32::try_from(n.div_ceil(MM_TILE as usize))
            .ok()
            .filter(|&g| g <= 65_535)
            .ok_or_else(|| shape_err("matmul", format!("{n} input rows are too many for one launch")))?;
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, grid_y, 1),
            block_dim: (MM_WARPS * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        let xb = buf("matmul", x)?;
        let kernels = if norm.is_some() { &self.kernels.matmul_norm } else { &self.kernels.matmul };
        launch!(self, &kernels[k], cfg, &jobs, xb)
    }

    /// The device pointer and epsilon of a fused matmul's RMSNorm, and the guard to hold
    /// across its launch.
    fn norm_pointer<'a>(
        &'a self,
        norm: Option<(&'a CudaWeight, f32)>,
    ) -> (Option<(u64, f32)>, Option<cudarc::driver::SyncOnDrop<'a>>) {
        match norm {
            Some((w, eps)) => {
                let (p, g) = w.bytes.device_ptr(&self.stream);
                (Some((p, eps)), Some(g))
            }
            None => (None, None),
        }
    }

    /// `matmuls`, of `x` RMS-normalised by `norm` when given: Q, K and V (one format) go in
    /// one launch, anything else one launch per weight.
    fn normed_matmuls(
        &self,
        x: &CudaTensor,
        norm: Option<(&CudaWeight, f32)>,
        n: usize,
        jobs: &mut [(&CudaWeight, &mut CudaTensor)],
    ) -> Result<(), KernelError> {
        let Some(&(first, _)) = jobs.first() else { return Ok(()) };
        self.check_matmul(x, n, jobs.iter().map(|(w, o)| (*w, o.len)))?;
        let norm = check_norm(norm, first.cols)?;
        if n == 0 {
            return Ok(());
        }
        let together = jobs.len() <= 3 && jobs.iter().all(|(w, _)| w.ty == first.ty && w.row_bytes == first.row_bytes);
        let groups: Vec<&mut [(&CudaWeight, &mut CudaTensor)]> =
            if together { vec![jobs] } else { jobs.chunks_mut(1).collect() };
        let (norm_ptr, norm_guard) = self.norm_pointer(norm);
        for group in groups {
            let (format, count) = (group[0].0, group.len());
            let mut guards = Vec::new();
            let mut ws = [0u64; 3];
            let mut outs = [0u64; 3];
            let mut rows = [0i32; 3];
            for (i, (w, out)) in group.iter_mut().enumerate() {
                let (wp, wg) = w.bytes.device_ptr(&self.stream);
                let (op, og) = buf_mut("matmul", out)?.device_ptr_mut(&self.stream);
                guards.push((wg, og));
                ws[i] = wp;
                outs[i] = op;
                rows[i] = to_i32("matmul", w.rows)?;
            }
            let targets = MatmulTargets { ws, outs, rows, count, norm: norm_ptr };
            self.launch_matmul(format, x, n, targets, MM_STORE)?;
            drop(guards);
        }
        drop(norm_guard);
        Ok(())
    }

    /// `matmul_swiglu`, of `x` RMS-normalised by `norm` when given.
    #[allow(clippy::too_many_arguments)]
    fn normed_swiglu(
        &self,
        x: &CudaTensor,
        norm: Option<(&CudaWeight, f32)>,
        n: usize,
        gate: &CudaWeight,
        up: &CudaWeight,
        out: &mut CudaTensor,
        scratch: &mut CudaTensor,
    ) -> Result<(), KernelError> {
        if gate.ty != up.ty || gate.rows != up.rows || gate.row_bytes != up.row_bytes {
            self.normed_matmuls(x, norm, n, &mut [(gate, &mut *out), (up, &mut *scratch)])?;
            return self.silu_mul(out, scratch, n * gate.rows);
        }
        self.check_matmul(x, n, [(gate, out.len), (up, out.len)].into_iter())?;
        let norm = check_norm(norm, gate.cols)?;
        if n == 0 {
            return Ok(());
        }
        let (gp, gg) = gate.bytes.device_ptr(&self.stream);
        let (up_ptr, ug) = up.bytes.device_ptr(&self.stream);
        let (op, og) = buf_mut("matmul", out)?.device_ptr_mut(&self.stream);
        let (norm_ptr, norm_guard) = self.norm_pointer(norm);
        let rows = [to_i32("matmul", gate.rows)?, 0, 0];
        let targets = MatmulTargets { ws: [gp, up_ptr, 0], outs: [op, 0, 0], rows, count: 1, norm: norm_ptr };
        self.launch_matmul(gate, x, n, targets, MM_SWIGLU)?;
        drop((gg, ug, og, norm_guard));
        Ok(())
    }

    /// `attention_many`, with a decode step's RoPE and KV append inside the launch when `fused`
    /// is given (the caller has made room in the caches and uploaded the positions).
    fn attention_launches(
        &self,
        q: &CudaTensor,
        seqs: &[(KvLayer<&CudaTensor>, SeqRows)],
        shape: AttentionShape,
        out: &mut CudaTensor,
        fused: Option<AttnRope>,
    ) -> Result<(), KernelError> {
        let AttentionShape { n_head, n_kv_head, head_dim } = shape;
        if n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
            return Err(shape_err("attention", format!("{n_head} heads cannot share {n_kv_head} kv heads")));
        }
        let group = n_head / n_kv_head;
        if head_dim == 0 || !head_dim.is_multiple_of(4) || group > AT_MAX_GROUP || group * head_dim > AT_MAX_GD {
            return Err(shape_err(
                "attention",
                format!(
                    "{group} heads of {head_dim} per KV head (the kernel takes {AT_MAX_GROUP} heads, \
                     {AT_MAX_GD} dims, head dims a multiple of 4)"
                ),
            ));
        }
        let (q_len, kv_len) = (n_head * head_dim, n_kv_head * head_dim);
        for (cache, rows) in seqs {
            let n_ctx = rows.first_pos + rows.n;
            check_len("attention", "q", q.len, (rows.row + rows.n) * q_len)?;
            let slots = self.cache_slots(n_ctx * kv_len, kv_len);
            check_len("attention", "k cache", cache.k.len, slots)?;
            check_len("attention", "v cache", cache.v.len, slots)?;
            check_len("attention", "output", out.len, (rows.row + rows.n) * q_len)?;
            u32::try_from(n_ctx).map_err(|_| shape_err("attention", format!("context of {n_ctx} positions")))?;
        }
        let live: Vec<_> = seqs.iter().filter(|(_, r)| r.n > 0).collect();
        let scale = 1.0 / (head_dim as f32).sqrt();
        let qb = buf("attention", q)?;
        // When the positions last uploaded are these rows' positions (a forward step's), the
        // kernel reads each row's position there, so its arguments stay the same from step to
        // step; otherwise it takes them from the sequences' first positions.
        let uploaded = self.positions.lock().map_err(|_| device_err("positions cache poisoned"))?;
        let at_positions = uploaded.as_ref().filter(|(host, _)| {
            live.iter()
                .all(|(_, r)| (0..r.n).all(|i| host.get(r.row + i).is_some_and(|&p| p as usize == r.first_pos + i)))
        });
        let no_positions = 0u64;
        for chunk in live.chunks(AT_MAX_SEQS) {
            let mut desc = AttnSeqs::empty(chunk.len());
            let mut guards = Vec::with_capacity(chunk.len());
            let (mut total, mut max_ctx) = (0usize, 0usize);
            for (i, (cache, rows)) in chunk.iter().enumerate() {
                let (k, kg) = buf("attention", cache.k)?.device_ptr(&self.stream);
                let (v, vg) = buf("attention", cache.v)?.device_ptr(&self.stream);
                guards.push((kg, vg));
                desc.set(i, k, v, rows);
                total += rows.n;
                max_ctx = max_ctx.max(rows.first_pos + rows.n);
            }
            if at_positions.is_some() {
                desc.first_pos = [0; AT_MAX_SEQS];
            }
            // Sized for the context rounded up to a power of two: a decode step keeps its grid
            // (and its graph) while the context grows, at the cost of a few empty runs.
            let bucket = max_ctx.next_power_of_two();
            let (split_len, splits) = attention_splits(bucket, total * n_kv_head, head_dim, self.sm_count);
            let sh = AttnShape {
                n_head: to_i32("attention", n_head)?,
                n_kv_head: to_i32("attention", n_kv_head)?,
                head_dim: to_i32("attention", head_dim)?,
                splits: to_i32("attention", splits)?,
                split_len: to_i32("attention", split_len)?,
                scale,
            };
            let grid_x = u32::try_from(total).map_err(|_| shape_err("attention", format!("{total} query rows")))?;
            let grid = |z: usize| LaunchConfig {
                grid_dim: (grid_x, n_kv_head as u32, z as u32),
                block_dim: (AT_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let part_len = total * n_kv_head * splits * (group * head_dim + 2 * group);
            // With one run of positions the kernel writes the output itself and the partial
            // buffer is not touched; with several, the merging block reads only runs written in
            // this launch: no zeroing either way.
            let mut workspace = self.pooled(if splits > 1 { part_len } else { 1 }, false)?;
            let partial = buf_mut("attention", &mut workspace)?;
            let ob = buf_mut("attention", out)?;
            let mut arrived = self.arrival_counters(total * n_kv_head)?;
            let Some(counters) = arrived.as_mut() else { return Err(device_err("attention counters missing")) };
            let kernel = &self.cache_kernels(kv_len).attention;
            match (at_positions, fused) {
                (Some((_, pos)), fused) => {
                    let rope = fused.unwrap_or(AttnRope::NONE);
                    launch!(self, kernel, grid(splits), qb, &desc, &sh, ob, partial, counters, pos, &rope)?;
                }
                (None, None) => {
                    let none = AttnRope::NONE;
                    launch!(self, kernel, grid(splits), qb, &desc, &sh, ob, partial, counters, &no_positions, &none)?;
                }
                (None, Some(_)) => return Err(device_err("fused attention needs the step's positions on the GPU")),
            }
            drop(guards);
        }
        Ok(())
    }

    /// Attention's arrival counters, locked, holding at least `n` (grown zeroed as needed).
    fn arrival_counters(&self, n: usize) -> Result<std::sync::MutexGuard<'_, Option<CudaSlice<u32>>>, KernelError> {
        let mut arrived = self.arrived.lock().map_err(|_| device_err("attention counters poisoned"))?;
        if arrived.as_ref().is_none_or(|a| a.len() < n) {
            let zeroed = self.flushed()?.alloc_zeros::<u32>(n.next_power_of_two());
            *arrived = Some(zeroed.map_err(|e| driver_err("allocating attention counters", e))?);
        }
        Ok(arrived)
    }

    fn alloc(&self, len: usize) -> Result<Option<CudaSlice<f32>>, KernelError> {
        if len == 0 {
            return Ok(None);
        }
        self.flushed()?.alloc_zeros(len).map(Some).map_err(|e| driver_err(&format!("allocating {len} floats"), e))
    }

    /// An activation tensor of `len` elements from the pool (zeroed when `zero`).
    fn pooled(&self, len: usize, zero: bool) -> Result<CudaTensor, KernelError> {
        if len == 0 {
            return Ok(CudaTensor { buf: None, len: 0, shared: None, pooled: false });
        }
        let kept =
            self.shared.pool.lock().map_err(|_| device_err("buffer pool poisoned"))?.get_mut(&len).and_then(Vec::pop);
        let mut buf = match kept {
            Some(b) => b,
            // SAFETY: zeroed below when asked; otherwise every caller writes before it reads.
            None => unsafe { self.flushed()?.alloc::<f32>(len) }
                .map_err(|e| driver_err(&format!("allocating {len} floats"), e))?,
        };
        if zero {
            self.flushed()?.memset_zeros(&mut buf).map_err(|e| driver_err("zeroing a buffer", e))?;
        }
        Ok(CudaTensor { buf: Some(buf), len, shared: Some(self.shared.clone()), pooled: true })
    }

    fn upload_u32(&self, data: &[u32]) -> Result<CudaSlice<u32>, KernelError> {
        self.flushed()?.clone_htod(data).map_err(|e| driver_err("copying to the GPU", e))
    }
}

fn buf<'a>(op: &'static str, t: &'a CudaTensor) -> Result<&'a CudaSlice<f32>, KernelError> {
    t.buf.as_ref().ok_or_else(|| shape_err(op, "tensor is empty".into()))
}

fn buf_mut<'a>(op: &'static str, t: &'a mut CudaTensor) -> Result<&'a mut CudaSlice<f32>, KernelError> {
    t.buf.as_mut().ok_or_else(|| shape_err(op, "tensor is empty".into()))
}

/// The row length of a tensor of `len` elements that `rope` rotates: `rows` rows of whole
/// `head_dim`-wide heads, with `n_rot` fitting a head.
fn rope_row_len(len: usize, head_dim: usize, rows: usize, rope: &Rope) -> Result<i32, KernelError> {
    if head_dim == 0 || rope.n_rot > head_dim || !rope.n_rot.is_multiple_of(2) {
        return Err(shape_err("rope", format!("n_rot {} does not fit heads of {head_dim}", rope.n_rot)));
    }
    if rows == 0 || !len.is_multiple_of(rows) || !(len / rows).is_multiple_of(head_dim) {
        return Err(shape_err("rope", format!("{len} elements are not {rows} rows of {head_dim}-wide heads")));
    }
    to_i32("rope", len / rows)
}

/// Whether `writes` cover rows `0..positions.len()` in order, each row going to the cache row
/// of its position: then one launch can rotate every row once and append it where its position
/// says (reading positions from the device keeps its arguments the same from step to step).
fn rows_at_positions<T>(writes: &[(KvLayer<T>, SeqRows)], positions: &[u32]) -> bool {
    let mut next = 0;
    let in_order = writes.iter().all(|(_, r)| {
        let at_positions = (0..r.n).all(|i| positions.get(r.row + i).is_some_and(|&p| p as usize == r.first_pos + i));
        let ok = r.row == next && at_positions;
        next += r.n;
        ok
    });
    !positions.is_empty() && in_order && next == positions.len()
}

/// The length of the rows an RMSNorm weight normalises: it must be an f32 vector.
fn norm_dim(weight: &CudaWeight) -> Result<usize, KernelError> {
    if weight.rows != 1 || weight.ty != GgmlType::F32 {
        return Err(shape_err("rms_norm", "weight is not a vector".into()));
    }
    Ok(weight.cols)
}

/// The RMSNorm weight of a fused matmul must be as long as the input rows.
fn check_norm(norm: Option<(&CudaWeight, f32)>, cols: usize) -> Result<Option<(&CudaWeight, f32)>, KernelError> {
    if let Some((w, _)) = norm
        && norm_dim(w)? != cols
    {
        return Err(shape_err("rms_norm", format!("weight of {} does not normalise rows of {cols}", w.cols)));
    }
    Ok(norm)
}

fn grid_1d(len: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (len.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

impl Backend for Cuda {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;

    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn load_weight(&self, w: &QTensor, _inputs: Inputs) -> Result<CudaWeight, KernelError> {
        let native = kernel_index(w.ty).is_some() && w.rows > 1 && w.cols.is_multiple_of(32);
        let (ty, host): (GgmlType, std::borrow::Cow<'_, [u8]>) = if native {
            (w.ty, w.bytes.as_slice().into())
        } else {
            // Vectors (norm weights) and formats without a kernel go up as f32.
            let mut row = vec![0.0f32; w.cols];
            let mut bytes = Vec::with_capacity(w.rows * w.cols * 4);
            for r in 0..w.rows {
                dequantize_row(w.ty, w.row(r), &mut row)?;
                bytes.extend(row.iter().flat_map(|v| v.to_le_bytes()));
            }
            (GgmlType::F32, bytes.into())
        };
        if w.rows > 1 && !w.cols.is_multiple_of(32) {
            return Err(shape_err(
                "load_weight",
                format!("{} columns: the CUDA kernels need a multiple of 32", w.cols),
            ));
        }
        let bytes =
            self.flushed()?.clone_htod(host.as_ref()).map_err(|e| driver_err("copying a weight to the GPU", e))?;
        let row_bytes = host.len() / w.rows.max(1);
        Ok(CudaWeight { ty, rows: w.rows, cols: w.cols, row_bytes, bytes, shared: self.shared.clone() })
    }

    fn weight_rows(&self, w: &CudaWeight) -> usize {
        w.rows
    }

    fn zeros(&self, len: usize) -> Result<CudaTensor, KernelError> {
        // Empty tensors are KV caches, which grow on their own and are not pooled.
        self.pooled(len, true)
    }

    fn upload(&self, data: &[f32]) -> Result<CudaTensor, KernelError> {
        if data.is_empty() {
            return Ok(CudaTensor { buf: None, len: 0, shared: None, pooled: false });
        }
        let buf = self.flushed()?.clone_htod(data).map_err(|e| driver_err("copying to the GPU", e))?;
        Ok(CudaTensor { buf: Some(buf), len: data.len(), shared: Some(self.shared.clone()), pooled: false })
    }

    fn embed(&self, table: &CudaWeight, ids: &[u32], out: &mut CudaTensor) -> Result<(), KernelError> {
        let dim = table.cols;
        check_len("embed", "output", out.len, ids.len() * dim)?;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(shape_err("embed", format!("token id {id} is outside the {}-row table", table.rows)));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let k = kernel_index(table.ty).ok_or_else(|| shape_err("embed", format!("no kernel for {}", table.ty)))?;
        let mut ids_buf = self.ids.lock().map_err(|_| device_err("ids buffer poisoned"))?;
        if ids_buf.as_ref().is_none_or(|b| b.len() < ids.len()) {
            *ids_buf = Some(self.upload_u32(&vec![0; ids.len().next_power_of_two()])?);
        }
        let Some(ids_dev) = ids_buf.as_mut() else { return Err(device_err("ids buffer missing")) };
        let mut head = ids_dev.try_slice_mut(..ids.len()).ok_or_else(|| device_err("ids buffer too short"))?;
        self.flushed()?.memcpy_htod(ids, &mut head).map_err(|e| driver_err("copying token ids to the GPU", e))?;
        let ids_dev = &*ids_dev;
        let (cols, row_bytes) = (to_i32("embed", dim)?, to_i32("embed", table.row_bytes)?);
        let out = buf_mut("embed", out)?;
        let cfg = LaunchConfig { grid_dim: (ids.len() as u32, 1, 1), block_dim: (64, 1, 1), shared_mem_bytes: 0 };
        launch!(self, &self.kernels.embed[k], cfg, &table.bytes, &cols, &row_bytes, ids_dev, out)
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaWeight, eps: f32, out: &mut CudaTensor) -> Result<(), KernelError> {
        let dim = norm_dim(weight)?;
        if dim == 0 || !x.len.is_multiple_of(dim) {
            return Err(shape_err("rms_norm", format!("input of {} elements is not rows of {dim}", x.len)));
        }
        check_len("rms_norm", "output", out.len, x.len)?;
        let rows = x.len / dim;
        if rows == 0 {
            return Ok(());
        }
        let cols = to_i32("rms_norm", dim)?;
        let (xb, ob) = (buf("rms_norm", x)?, buf_mut("rms_norm", out)?);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        launch!(self, &self.kernels.rms_norm, cfg, xb, &weight.bytes, &cols, &eps, ob)
    }

    fn matmuls(
        &self,
        x: &CudaTensor,
        n: usize,
        jobs: &mut [(&CudaWeight, &mut CudaTensor)],
    ) -> Result<(), KernelError> {
        self.normed_matmuls(x, None, n, jobs)
    }

    fn norm_matmuls(
        &self,
        x: &CudaTensor,
        norm: &CudaWeight,
        eps: f32,
        n: usize,
        jobs: &mut [(&CudaWeight, &mut CudaTensor)],
        normed: &mut CudaTensor,
    ) -> Result<(), KernelError> {
        if n > MM_TILE as usize {
            self.rms_norm(x, norm, eps, normed)?;
            return self.normed_matmuls(normed, None, n, jobs);
        }
        self.normed_matmuls(x, Some((norm, eps)), n, jobs)
    }

    fn matmul_add(
        &self,
        w: &CudaWeight,
        x: &CudaTensor,
        n: usize,
        out: &mut CudaTensor,
        _scratch: &mut CudaTensor,
    ) -> Result<(), KernelError> {
        self.check_matmul(x, n, [(w, out.len)].into_iter())?;
        if n == 0 {
            return Ok(());
        }
        let (wp, wg) = w.bytes.device_ptr(&self.stream);
        let (op, og) = buf_mut("matmul", out)?.device_ptr_mut(&self.stream);
        let rows = [to_i32("matmul", w.rows)?, 0, 0];
        let targets = MatmulTargets { ws: [wp, 0, 0], outs: [op, 0, 0], rows, count: 1, norm: None };
        self.launch_matmul(w, x, n, targets, MM_ADD)?;
        drop((wg, og));
        Ok(())
    }

    fn matmul_swiglu(
        &self,
        x: &CudaTensor,
        n: usize,
        gate: &CudaWeight,
        up: &CudaWeight,
        out: &mut CudaTensor,
        scratch: &mut CudaTensor,
    ) -> Result<(), KernelError> {
        self.normed_swiglu(x, None, n, gate, up, out, scratch)
    }

    fn norm_matmul_swiglu(
        &self,
        x: &CudaTensor,
        norm: &CudaWeight,
        eps: f32,
        n: usize,
        gate: &CudaWeight,
        up: &CudaWeight,
        out: &mut CudaTensor,
        scratch: &mut CudaTensor,
        normed: &mut CudaTensor,
    ) -> Result<(), KernelError> {
        if n > MM_TILE as usize {
            self.rms_norm(x, norm, eps, normed)?;
            return self.normed_swiglu(normed, None, n, gate, up, out, scratch);
        }
        self.normed_swiglu(x, Some((norm, eps)), n, gate, up, out, scratch)
    }

    fn rope(&self, x: &mut CudaTensor, head_dim: usize, positions: &[u32], rope: &Rope) -> Result<(), KernelError> {
        if positions.is_empty() {
            return Ok(());
        }
        let (t, guard) = self.rope_target(x, head_dim, positions.len(), rope)?;
        self.launch_rope([t, t], positions, head_dim, rope, 1)?;
        drop(guard);
        Ok(())
    }

    fn rope_qk(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        head_dim: usize,
        positions: &[u32],
        rope: &Rope,
    ) -> Result<(), KernelError> {
        if positions.is_empty() {
            return Ok(());
        }
        let (qp, qg) = self.rope_target(q, head_dim, positions.len(), rope)?;
        let (kp, kg) = self.rope_target(k, head_dim, positions.len(), rope)?;
        self.launch_rope([qp, kp], positions, head_dim, rope, 2)?;
        drop((qg, kg));
        Ok(())
    }

    fn kv_write(
        &self,
        cache: KvLayer<&mut CudaTensor>,
        k: &CudaTensor,
        v: &CudaTensor,
        rows: SeqRows,
        row_len: usize,
    ) -> Result<(), KernelError> {
        self.kv_write_many(&mut [(cache, rows)], k, v, row_len)
    }

    fn kv_write_many(
        &self,
        writes: &mut [(KvLayer<&mut CudaTensor>, SeqRows)],
        k: &CudaTensor,
        v: &CudaTensor,
        row_len: usize,
    ) -> Result<(), KernelError> {
        self.prepare_kv_writes(writes, k, v, row_len)?;
        let (kb, vb, len) = (buf("kv_write", k)?, buf("kv_write", v)?, to_i32("kv_write", row_len)?);
        let kernel = &self.cache_kernels(row_len).kv_write;
        self.for_each_kv_chunk(writes, row_len, |desc, total| {
            let cfg = LaunchConfig { grid_dim: (total, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            launch!(self, kernel, cfg, desc, kb, vb, &len)
        })
    }

    fn rope_kv_write(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        v: &CudaTensor,
        head_dim: usize,
        positions: &[u32],
        rope: &Rope,
        writes: &mut [(KvLayer<&mut CudaTensor>, SeqRows)],
        row_len: usize,
    ) -> Result<(), KernelError> {
        // One launch rotates every row once and appends it at its position, as a forward
        // step's writes allow. Anything else takes two launches.
        if !rows_at_positions(writes, positions) || row_len == 0 {
            self.rope_qk(q, k, head_dim, positions, rope)?;
            return self.kv_write_many(writes, k, v, row_len);
        }
        self.prepare_rope_kv_write(q, k, v, head_dim, positions, rope, writes, row_len)?;
        let rows = positions.len();
        let ((qp, q_len), qg) = self.rope_target(q, head_dim, rows, rope)?;
        let ((kp, kv_len), kg) = self.rope_target(k, head_dim, rows, rope)?;
        let vb = buf("rope_kv_write", v)?;
        let pos = self.positions_on_device(positions)?;
        let Some((_, pos)) = pos.as_ref() else { return Err(device_err("positions cache empty")) };
        let RopeArgs { hd, nr, log2_base, neox } = RopeArgs::new(head_dim, rope)?;
        let result = self.for_each_kv_chunk(writes, row_len, |desc, total| {
            let cfg = LaunchConfig { grid_dim: (total, 3, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            let kernel = &self.cache_kernels(row_len).rope_kv_write;
            let desc = AttnSeqs { first_pos: [0; AT_MAX_SEQS], ..*desc };
            launch!(self, kernel, cfg, &desc, &qp, &q_len, &kp, vb, &kv_len, &hd, &nr, pos, &log2_base, &neox)
        });
        drop((qg, kg));
        result
    }

    fn attention(
        &self,
        q: &CudaTensor,
        cache: KvLayer<&CudaTensor>,
        rows: SeqRows,
        shape: AttentionShape,
        out: &mut CudaTensor,
    ) -> Result<(), KernelError> {
        self.attention_many(q, &[(cache, rows)], shape, out)
    }

    fn attention_many(
        &self,
        q: &CudaTensor,
        seqs: &[(KvLayer<&CudaTensor>, SeqRows)],
        shape: AttentionShape,
        out: &mut CudaTensor,
    ) -> Result<(), KernelError> {
        self.attention_launches(q, seqs, shape, out, None)
    }

    fn rope_kv_write_attention(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        v: &CudaTensor,
        positions: &[u32],
        rope: &Rope,
        writes: &mut [(KvLayer<&mut CudaTensor>, SeqRows)],
        shape: AttentionShape,
        out: &mut CudaTensor,
    ) -> Result<(), KernelError> {
        let (head_dim, row_len) = (shape.head_dim, shape.n_kv_head * shape.head_dim);
        // One launch for a decode step: one new row per sequence, each going to the cache row
        // of its position. Anything else rotates and appends first.
        if !writes.iter().all(|(_, r)| r.n == 1) || !rows_at_positions(writes, positions) || row_len == 0 {
            return rope_kv_write_then_attention(self, q, k, v, positions, rope, writes, shape, out);
        }
        self.prepare_rope_kv_write(q, k, v, head_dim, positions, rope, writes, row_len)?;
        let RopeArgs { nr, log2_base, neox, .. } = RopeArgs::new(head_dim, rope)?;
        let (kp, kg) = buf("rope_kv_write", k)?.device_ptr(&self.stream);
        let (vp, vg) = buf("rope_kv_write", v)?.device_ptr(&self.stream);
        let fused = AttnRope { k_new: kp, v_new: vp, n_rot: nr, neox, log2_base };
        let result = self.attention_launches(q, &written(writes), shape, out, Some(fused));
        drop((kg, vg));
        result
    }

    fn gather_rows(
        &self,
        src: &CudaTensor,
        rows: &[usize],
        row_len: usize,
        out: &mut CudaTensor,
    ) -> Result<(), KernelError> {
        check_len("gather_rows", "output", out.len, rows.len() * row_len)?;
        if let Some(&r) = rows.iter().find(|&&r| (r + 1) * row_len > src.len) {
            return Err(shape_err("gather_rows", format!("row {r} is outside the source")));
        }
        if row_len == 0 || rows.is_empty() {
            return Ok(());
        }
        let sb = buf("gather_rows", src)?;
        let ob = buf_mut("gather_rows", out)?;
        for (i, &r) in rows.iter().enumerate() {
            let s = sb.try_slice(r * row_len..(r + 1) * row_len);
            let mut d = ob.try_slice_mut(i * row_len..(i + 1) * row_len);
            if let (Some(s), Some(d)) = (s, d.as_mut()) {
                self.flushed()?.memcpy_dtod(&s, d).map_err(|e| driver_err("gather_rows", e))?;
            }
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &mut CudaTensor, up: &CudaTensor, len: usize) -> Result<(), KernelError> {
        check_len("silu_mul", "gate", gate.len, len)?;
        check_len("silu_mul", "up", up.len, len)?;
        if len == 0 {
            return Ok(());
        }
        let l = to_i32("silu_mul", len)?;
        let (gb, ub) = (buf_mut("silu_mul", gate)?, buf("silu_mul", up)?);
        launch!(self, &self.kernels.silu_mul, grid_1d(len), gb, ub, &l)
    }

    fn add(&self, x: &mut CudaTensor, y: &CudaTensor, len: usize) -> Result<(), KernelError> {
        check_len("add", "x", x.len, len)?;
        check_len("add", "y", y.len, len)?;
        if len == 0 {
            return Ok(());
        }
        let l = to_i32("add", len)?;
        let (xb, yb) = (buf_mut("add", x)?, buf("add", y)?);
        launch!(self, &self.kernels.add, grid_1d(len), xb, yb, &l)
    }

    fn step_done(&self) {
        self.shared.flush_quietly();
    }

    fn synchronize(&self) -> Result<(), KernelError> {
        self.flushed()?.synchronize().map_err(|e| driver_err("synchronize", e))
    }

    fn read_rows(
        &self,
        t: &CudaTensor,
        rows: std::ops::Range<usize>,
        row_len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        check_len("read_rows", "tensor", t.len, rows.end * row_len)?;
        let len = rows.len() * row_len;
        out.clear();
        out.resize(len, 0.0);
        if len == 0 {
            return Ok(());
        }
        let src = buf("read_rows", t)?
            .try_slice(rows.start * row_len..rows.end * row_len)
            .ok_or_else(|| shape_err("read_rows", "rows outside the tensor".into()))?;
        self.flushed()?.memcpy_dtoh(&src, out.as_mut_slice()).map_err(|e| driver_err("copying from the GPU", e))?;
        self.synchronize()
    }

    fn argmax_rows(&self, t: &CudaTensor, rows: usize, row_len: usize) -> Result<Vec<Option<u32>>, KernelError> {
        if let Some(ids) = argmax_without_kernel(t.len, rows, row_len)? {
            return Ok(ids);
        }
        let grid = u32::try_from(rows).map_err(|_| shape_err("argmax_rows", format!("{rows} rows")))?;
        let len = to_i32("argmax_rows", row_len)?;
        let mut ids = self.argmax_ids.lock().map_err(|_| device_err("argmax buffer poisoned"))?;
        if ids.as_ref().is_none_or(|b| b.len() < rows) {
            let zeroed = self.flushed()?.alloc_zeros::<u32>(rows.next_power_of_two());
            *ids = Some(zeroed.map_err(|e| driver_err("allocating the argmax ids", e))?);
        }
        let Some(ids) = ids.as_mut() else { return Err(device_err("argmax buffer missing")) };
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (ARGMAX_THREADS, 1, 1), shared_mem_bytes: 0 };
        launch!(self, &self.kernels.argmax_rows, cfg, buf("argmax_rows", t)?, &len, &*ids)?;
        let mut host = vec![0u32; rows];
        let head = ids.try_slice(..rows).ok_or_else(|| device_err("argmax buffer too short"))?;
        self.flushed()?.memcpy_dtoh(&head, host.as_mut_slice()).map_err(|e| driver_err("copying from the GPU", e))?;
        self.synchronize()?;
        Ok(argmax_ids(host, row_len))
    }

    fn decodes_whole_steps(&self) -> bool {
        self.one_launch_step().is_some()
    }

    fn llama_decode_one(
        &self,
        model: &LlamaWeights<'_, CudaWeight>,
        token: u32,
        position: usize,
        cache: &mut [KvLayer<&mut CudaTensor>],
    ) -> Result<Option<CudaTensor>, KernelError> {
        self.decode_whole_step(model, token, position, cache)
    }

    fn kv_row_bytes(&self, row_len: usize) -> usize {
        2 * row_len * if self.f16_rows(row_len) { 2 } else { 4 }
    }

    fn read_row(&self, t: &CudaTensor, row: usize, row_len: usize, out: &mut Vec<f32>) -> Result<(), KernelError> {
        check_len("read_row", "tensor", t.len, (row + 1) * row_len)?;
        out.clear();
        out.resize(row_len, 0.0);
        if row_len == 0 {
            return Ok(());
        }
        let src = buf("read_row", t)?
            .try_slice(row * row_len..(row + 1) * row_len)
            .ok_or_else(|| shape_err("read_row", "row outside the tensor".into()))?;
        self.flushed()?.memcpy_dtoh(&src, out.as_mut_slice()).map_err(|e| driver_err("copying from the GPU", e))?;
        self.synchronize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_runs_cover_the_context_in_whole_tiles() {
        for head_dim in [32, 64, 80, 128, 256, 1024] {
            let tile = AT_TILE.min(AT_TILE_FLOATS / head_dim);
            for max_ctx in [1, 63, 64, 65, 140, 640, 4096, 100_000] {
                for row_heads in [1, 3, 96, 1536, 100_000] {
                    let (len, splits) = attention_splits(max_ctx, row_heads, head_dim, 132);
                    assert!(len.is_multiple_of(tile) && len >= AT_TILE, "{len} for {head_dim}");
                    assert!(splits * len >= max_ctx && (splits - 1) * len < max_ctx, "{splits} x {len} for {max_ctx}");
                    let wanted = (AT_BLOCKS_PER_SM * 132).div_ceil(row_heads);
                    assert!(splits <= wanted.max(1) || len == AT_TILE.next_multiple_of(tile), "{splits} runs");
                }
            }
        }
        // A decode step of one sequence cuts its context into single tiles; a long prompt is one run.
        assert_eq!(attention_splits(140, 3, 64, 132), (64, 3));
        assert_eq!(attention_splits(512, 1536, 64, 132), (512, 1));
    }
}
