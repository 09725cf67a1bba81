//! wgpu backend: the ops of a transformer step as WGSL compute shaders on whichever Vulkan,
//! Metal or DX12 adapter wgpu finds (the WebGPU compute model).
//!
//! Activations are f32 storage buffers. Weights keep their GGML blocks as they are in the
//! file, padded to whole u32 words plus one spare word: blocks are not repacked, the shaders
//! read bytes at any offset (Q4_0, Q8_0 and Q6_K blocks do not start on a word) and
//! dequantize 32 elements at a time in registers inside the matmul. Formats without a kernel,
//! and 1-D weights (norms), are dequantized to f32 at load.
//!
//! Ops are recorded into one command encoder and submitted every [`FLUSH_EVERY`] dispatches
//! without waiting; only reading back ([`Backend::read_rows`]) and [`Backend::synchronize`] wait for the device. Host data an op needs
//! (ids, RoPE angles, parameters) goes into fresh buffers written at creation, so it can never
//! be reordered against commands already recorded.

mod source;

use std::sync::{Arc, Mutex, mpsc};

use wgpu::util::DeviceExt;

use crate::backend::{
    AttentionShape, Backend, BackendKind, Inputs, KernelError, KvLayer, QTensor, Rope, SeqRows, argmax_ids,
    argmax_without_kernel, check_len, shape_err,
};
use crate::cpu::rope_angles;
use crate::quant::{GgmlType, dequantize_row};

pub use source::{BYTES, shader_modules};

/// Dispatches recorded before the encoder is submitted: the device starts on a long step
/// while the rest is recorded, and per-dispatch parameter buffers are freed as it goes.
const FLUSH_EVERY: usize = 64;
/// Threads per workgroup of every kernel (`WG` in the shaders).
const WG: usize = 64;
/// Input rows per matmul workgroup (`TILE` in matmul.wgsl).
const MATMUL_TILE: usize = 8;
/// Elements a matmul `unit` dequantizes: weight and embedding rows are whole units.
const UNIT: usize = 32;
/// The longest head attention.wgsl handles (`WG * DIMS`).
const MAX_HEAD_DIM: usize = 256;
/// Tensor buffers are whole vec4s, so a matmul may bind any of them as `array<vec4<f32>>`.
const TENSOR_ALIGN: u64 = 16;

fn device_err(reason: impl Into<String>) -> KernelError {
    KernelError::Device { backend: BackendKind::Wgpu, reason: reason.into() }
}

/// A shader operand that must fit the shaders' u32 arithmetic.
fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32, KernelError> {
    u32::try_from(v).map_err(|_| shape_err(op, format!("{what} {v} does not fit in 32 bits")))
}

/// How a weight's rows are stored, one matmul kernel each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    F32,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl Format {
    const ALL: [Format; 7] =
        [Format::F32, Format::Q4_0, Format::Q4_1, Format::Q8_0, Format::Q4K, Format::Q5K, Format::Q6K];

    /// The kernel reading `ty` as stored, if there is one.
    fn of(ty: GgmlType) -> Option<Format> {
        Some(match ty {
            GgmlType::F32 => Format::F32,
            GgmlType::Q4_0 => Format::Q4_0,
            GgmlType::Q4_1 => Format::Q4_1,
            GgmlType::Q8_0 => Format::Q8_0,
            GgmlType::Q4K => Format::Q4K,
            GgmlType::Q5K => Format::Q5K,
            GgmlType::Q6K => Format::Q6K,
            _ => return None,
        })
    }
}

/// Activations on the device: `len` f32s at the start of `buf` (which may hold more, so a
/// KV cache grows without a copy every step).
pub struct WgpuTensor {
    buf: wgpu::Buffer,
    len: usize,
}

impl WgpuTensor {
    fn capacity(&self) -> usize {
        (self.buf.size() / 4) as usize
    }
}

/// A weight on the device: `rows` rows of `row_bytes` bytes in `format`.
pub struct WgpuWeight {
    buf: wgpu::Buffer,
    format: Format,
    rows: usize,
    cols: usize,
    row_bytes: usize,
}

impl WgpuWeight {
    pub fn rows(&self) -> usize {
        self.rows
    }
}

struct Kernels {
    /// By `Format as usize`.
    matmul: Vec<wgpu::ComputePipeline>,
    embed: Vec<wgpu::ComputePipeline>,
    rms_norm: wgpu::ComputePipeline,
    rope: wgpu::ComputePipeline,
    silu_mul: wgpu::ComputePipeline,
    add: wgpu::ComputePipeline,
    attention: wgpu::ComputePipeline,
    argmax: wgpu::ComputePipeline,
    /// Where the adapter has WGSL's f16 packing (`DownlevelFlags::SHADER_F16_IN_F32`, which
    /// every WebGPU-compliant adapter has).
    f16_cache: Option<F16CacheKernels>,
}

/// The kernels of an f16 KV cache.
struct F16CacheKernels {
    attention: wgpu::ComputePipeline,
    kv_write: wgpu::ComputePipeline,
}

fn pipeline(device: &wgpu::Device, module: &wgpu::ShaderModule, entry: &str, label: &str) -> wgpu::ComputePipeline {
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: None,
        module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    })
}

fn module(device: &wgpu::Device, src: &str, label: &str) -> wgpu::ShaderModule {
    device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    })
}

impl Kernels {
    /// Compiles every kernel (the f16 cache's where `f16_in_f32`); compilation errors surface
    /// through the caller's error scope.
    fn new(device: &wgpu::Device, f16_in_f32: bool) -> Result<Self, KernelError> {
        let mut matmul = Vec::new();
        let mut embed = Vec::new();
        for format in Format::ALL {
            let src = source::matmul_module(format)
                .ok_or_else(|| device_err(format!("matmul shader for {format:?} lacks its unit markers")))?;
            let m = module(device, &src, "matmul");
            matmul.push(pipeline(device, &m, "matmul", "matmul"));
            embed.push(pipeline(device, &m, "embed", "embed"));
        }
        let single = |src: &str, label: &str| pipeline(device, &module(device, src, label), "main", label);
        let f16_cache = if f16_in_f32 {
            let attention =
                source::attention_f16_module().ok_or_else(|| device_err("attention shader lacks its cache markers"))?;
            Some(F16CacheKernels {
                attention: single(&attention, "attention f16"),
                kv_write: single(source::KV_WRITE_F16, "kv_write f16"),
            })
        } else {
            None
        };
        Ok(Self {
            matmul,
            embed,
            rms_norm: single(source::RMS_NORM, "rms_norm"),
            rope: single(source::ROPE, "rope"),
            silu_mul: single(source::SILU_MUL, "silu_mul"),
            add: single(source::ADD, "add"),
            attention: single(source::ATTENTION, "attention"),
            argmax: single(source::ARGMAX, "argmax"),
            f16_cache,
        })
    }
}

/// The command encoder being recorded, if any.
#[derive(Default)]
struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    recorded: usize,
}

pub struct Wgpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    kernels: Kernels,
    rec: Mutex<Recorder>,
    /// The first validation or device error wgpu reported outside an error scope; it would
    /// panic by default, this backend returns it from the next op that waits.
    error: Arc<Mutex<Option<String>>>,
    /// KV caches hold f16, two to a word (see [`Wgpu::with_f16_kv`]).
    kv_f16: bool,
}

impl Wgpu {
    /// The high-performance adapter wgpu finds first (`WGPU_BACKEND` and the other `WGPU_*`
    /// variables narrow the search), with every kernel compiled.
    pub fn new() -> Result<Self, KernelError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| device_err(format!("no adapter: {e}")))?;
        // Everything the adapter offers: the default limits cap storage buffers at 128 MiB,
        // less than an output head.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("realm"),
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        }))
        .map_err(|e| device_err(format!("device request failed: {e}")))?;
        let error = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&error);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }));
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let f16_in_f32 = adapter.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32);
        let kernels = Kernels::new(&device, f16_in_f32);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(device_err(format!("kernel compilation failed: {e}")));
        }
        Ok(Self {
            device,
            queue,
            info: adapter.get_info(),
            limits,
            kernels: kernels?,
            rec: Mutex::new(Recorder::default()),
            error,
            kv_f16: false,
        })
    }

    /// KV caches in f16 (`on`, where the adapter can) or f32: f16 halves the cache's memory
    /// and the bytes attention reads, and attention still computes in f32. The halves are
    /// packed two to a word by WGSL's `pack2x16float`, which needs no `shader-f16` feature,
    /// only the downlevel flag every WebGPU-compliant adapter has. Rows of an odd length stay
    /// f32.
    pub fn with_f16_kv(mut self, on: bool) -> Self {
        self.kv_f16 = on && self.kernels.f16_cache.is_some();
        self
    }

    /// Whether KV caches hold f16 (see [`Wgpu::with_f16_kv`]).
    pub fn kv_f16(&self) -> bool {
        self.kv_f16
    }

    /// The f16 cache's kernels when caches of `row_len`-element rows hold f16.
    fn f16_cache(&self, row_len: usize) -> Option<&F16CacheKernels> {
        self.kernels.f16_cache.as_ref().filter(|_| self.kv_f16 && row_len.is_multiple_of(2))
    }

    /// Whether caches of `row_len`-element rows hold f16.
    fn f16_rows(&self, row_len: usize) -> bool {
        self.f16_cache(row_len).is_some()
    }

    /// Elements a cache tensor of `row_len`-element rows holds: its words, or twice them.
    fn cache_elems(&self, t: &WgpuTensor, row_len: usize) -> usize {
        if self.f16_rows(row_len) { 2 * t.len } else { t.len }
    }

    /// The adapter for a log line: name, graphics API and device type.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?}, {:?})", self.info.name, self.info.backend, self.info.device_type)
    }

    /// Whether the adapter is a CPU implementation (lavapipe, WARP): correct, but slower than
    /// the CPU backend, so automatic backend choice skips it.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    fn check_error(&self) -> Result<(), KernelError> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(device_err(e)),
            None => Ok(()),
        }
    }

    /// A buffer of `bytes` (rounded up to whole vec4s, at least one), checked against the
    /// adapter's limits.
    fn buffer_size(&self, what: &str, bytes: u64) -> Result<u64, KernelError> {
        let size = bytes.max(1).next_multiple_of(TENSOR_ALIGN);
        let max = self.limits.max_buffer_size.min(self.limits.max_storage_buffer_binding_size);
        if size > max {
            return Err(device_err(format!("{what} of {size} bytes exceeds the adapter's {max}-byte buffers")));
        }
        Ok(size)
    }

    fn tensor(&self, len: usize) -> Result<WgpuTensor, KernelError> {
        let size = self.buffer_size("tensor", (len as u64).saturating_mul(4))?;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(WgpuTensor { buf, len })
    }

    /// A read-only storage buffer holding `words`.
    fn words(&self, words: &[u32]) -> wgpu::Buffer {
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.resize(bytes.len().max(4).next_multiple_of(4), 0);
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &bytes,
            usage: wgpu::BufferUsages::STORAGE,
        })
    }

    /// Runs `f` on the encoder being recorded; submits it every [`FLUSH_EVERY`] calls.
    fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut rec = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        let encoder = rec.encoder.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        f(encoder);
        rec.recorded += 1;
        if rec.recorded >= FLUSH_EVERY {
            self.submit(&mut rec);
        }
    }

    fn submit(&self, rec: &mut Recorder) {
        if let Some(encoder) = rec.encoder.take() {
            self.queue.submit([encoder.finish()]);
        }
        rec.recorded = 0;
    }

    /// Records `groups` workgroups of `pipeline`, laid out on a 2-D grid when they exceed one
    /// dimension (the shaders number them `x + y * num_workgroups.x`). `params` is binding 0.
    fn dispatch(
        &self,
        op: &'static str,
        pipeline: &wgpu::ComputePipeline,
        params: &[u32],
        buffers: &[(u32, &wgpu::Buffer)],
        groups: usize,
    ) -> Result<(), KernelError> {
        if groups == 0 {
            return Ok(());
        }
        let max = self.limits.max_compute_workgroups_per_dimension as usize;
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(shape_err(op, format!("{groups} workgroups exceed the adapter's {max} x {max} grid")));
        }
        let mut bytes: Vec<u8> = params.iter().flat_map(|p| p.to_le_bytes()).collect();
        bytes.resize(bytes.len().max(1).next_multiple_of(16), 0);
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &bytes,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        entries.extend(
            buffers.iter().map(|&(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() }),
        );
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(op),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.record(|encoder| {
            let mut pass =
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(op), timestamp_writes: None });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(x as u32, y as u32, 1);
        });
        Ok(())
    }

    /// Workgroups for `len` elements, one thread each.
    fn elementwise_groups(len: usize) -> usize {
        len.div_ceil(WG)
    }
}

impl Backend for Wgpu {
    type Tensor = WgpuTensor;
    type Weight = WgpuWeight;

    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }

    fn load_weight(&self, w: &QTensor, _inputs: Inputs) -> Result<WgpuWeight, KernelError> {
        // Kernels read every weight at full precision, so `inputs` changes nothing here.
        let (format, mut bytes, row_bytes) = match Format::of(w.ty).filter(|_| w.rows > 1) {
            Some(format) => (format, w.bytes.as_slice().to_vec(), w.row(0).len()),
            None => {
                let mut dense = vec![0.0f32; w.rows * w.cols];
                for (r, out) in dense.chunks_exact_mut(w.cols.max(1)).enumerate() {
                    dequantize_row(w.ty, w.row(r), out)?;
                }
                (Format::F32, dense.iter().flat_map(|v| v.to_le_bytes()).collect(), w.cols * 4)
            }
        };
        // Whole words, and a spare one so an unaligned read of the last word stays inside.
        bytes.resize(bytes.len().next_multiple_of(4) + 4, 0);
        let size = self.buffer_size("weight", bytes.len() as u64)?;
        if size > u64::from(u32::MAX) {
            return Err(device_err(format!("weight of {size} bytes is past the shaders' 32-bit offsets")));
        }
        bytes.resize(size as usize, 0);
        let buf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &bytes,
            usage: wgpu::BufferUsages::STORAGE,
        });
        Ok(WgpuWeight { buf, format, rows: w.rows, cols: w.cols, row_bytes })
    }

    fn weight_rows(&self, w: &WgpuWeight) -> usize {
        w.rows
    }

    fn zeros(&self, len: usize) -> Result<WgpuTensor, KernelError> {
        // wgpu zero-initialises new buffers.
        self.tensor(len)
    }

    fn upload(&self, data: &[f32]) -> Result<WgpuTensor, KernelError> {
        let size = self.buffer_size("tensor", data.len() as u64 * 4)?;
        let mut bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes.resize(size as usize, 0);
        let buf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        });
        Ok(WgpuTensor { buf, len: data.len() })
    }

    fn embed(&self, table: &WgpuWeight, ids: &[u32], out: &mut WgpuTensor) -> Result<(), KernelError> {
        let dim = table.cols;
        if !dim.is_multiple_of(UNIT) {
            return Err(shape_err("embed", format!("row length {dim} is not a multiple of {UNIT}")));
        }
        check_len("embed", "output", out.len, ids.len() * dim)?;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(shape_err("embed", format!("token id {id} is outside the {}-row table", table.rows)));
        }
        let n = u32_of("embed", "ids", ids.len())?;
        let params = [table.rows as u32, dim as u32, n, table.row_bytes as u32, n];
        let ids = self.words(ids);
        let bindings = [(1, &table.buf), (2, &out.buf), (4, &ids)];
        self.dispatch("embed", &self.kernels.embed[table.format as usize], &params, &bindings, n as usize)
    }

    fn rms_norm(&self, x: &WgpuTensor, weight: &WgpuWeight, eps: f32, out: &mut WgpuTensor) -> Result<(), KernelError> {
        if weight.rows != 1 || weight.format != Format::F32 || weight.cols == 0 {
            return Err(shape_err("rms_norm", "weight is not a vector".into()));
        }
        let dim = weight.cols;
        check_len("rms_norm", "output", out.len, x.len)?;
        let rows = x.len / dim;
        let params = [u32_of("rms_norm", "dim", dim)?, u32_of("rms_norm", "rows", rows)?, eps.to_bits()];
        let bindings = [(1, &x.buf), (2, &weight.buf), (3, &out.buf)];
        self.dispatch("rms_norm", &self.kernels.rms_norm, &params, &bindings, rows)
    }

    fn matmuls(
        &self,
        x: &WgpuTensor,
        n: usize,
        jobs: &mut [(&WgpuWeight, &mut WgpuTensor)],
    ) -> Result<(), KernelError> {
        let Some(cols) = jobs.first().map(|(w, _)| w.cols) else { return Ok(()) };
        check_len("matmul", "input", x.len, n * cols)?;
        if !cols.is_multiple_of(UNIT) {
            return Err(shape_err("matmul", format!("{cols} columns is not a multiple of {UNIT}")));
        }
        for (w, out) in jobs.iter() {
            if w.cols != cols {
                return Err(shape_err(
                    "matmul",
                    format!("weights sharing an input have {} and {cols} columns", w.cols),
                ));
            }
            check_len("matmul", "output", out.len, n * w.rows)?;
        }
        let n32 = u32_of("matmul", "rows", n)?;
        for (w, out) in jobs.iter_mut() {
            let groups = w.rows * n.div_ceil(MATMUL_TILE);
            let params = [w.rows as u32, cols as u32, n32, w.row_bytes as u32, u32_of("matmul", "workgroups", groups)?];
            let bindings = [(1, &w.buf), (2, &out.buf), (3, &x.buf)];
            self.dispatch("matmul", &self.kernels.matmul[w.format as usize], &params, &bindings, groups)?;
        }
        Ok(())
    }

    fn rope(&self, x: &mut WgpuTensor, head_dim: usize, positions: &[u32], rope: &Rope) -> Result<(), KernelError> {
        if head_dim == 0 || rope.n_rot > head_dim || !rope.n_rot.is_multiple_of(2) {
            return Err(shape_err("rope", format!("n_rot {} does not fit head_dim {head_dim}", rope.n_rot)));
        }
        if positions.is_empty() {
            return Ok(());
        }
        let row_len = x.len / positions.len();
        if !row_len.is_multiple_of(head_dim) {
            return Err(shape_err("rope", format!("row length {row_len} is not a multiple of head_dim {head_dim}")));
        }
        let pairs = rope.n_rot / 2;
        let count = positions.len() * (row_len / head_dim) * pairs;
        if count == 0 {
            return Ok(());
        }
        // The same angles as the CPU backend's, in f64 then rounded.
        let mut angles = Vec::with_capacity(pairs);
        let mut table = Vec::with_capacity(positions.len() * pairs * 2);
        for &pos in positions {
            rope_angles(pos, rope, &mut angles);
            table.extend(angles.iter().flat_map(|&(cos, sin)| [cos.to_bits(), sin.to_bits()]));
        }
        let table = self.words(&table);
        let params = [
            u32_of("rope", "row length", row_len)?,
            head_dim as u32,
            pairs as u32,
            u32::from(rope.layout == crate::backend::RopeLayout::Neox),
            u32_of("rope", "pairs", count)?,
        ];
        let bindings = [(1, &x.buf), (2, &table)];
        self.dispatch("rope", &self.kernels.rope, &params, &bindings, Self::elementwise_groups(count))
    }

    fn kv_write(
        &self,
        cache: KvLayer<&mut WgpuTensor>,
        k: &WgpuTensor,
        v: &WgpuTensor,
        rows: SeqRows,
        row_len: usize,
    ) -> Result<(), KernelError> {
        let SeqRows { row, n, first_pos } = rows;
        let src = row * row_len..(row + n) * row_len;
        let dst = first_pos * row_len..(first_pos + n) * row_len;
        check_len("kv_write", "source", k.len.min(v.len), src.end)?;
        // An f16 cache's tensor counts words of two elements; rows of even length start on one.
        let f16 = self.f16_cache(row_len);
        let words = |elems: usize| if f16.is_some() { elems / 2 } else { elems };
        let (src_words, dst_words) = (words(src.start)..words(src.end), words(dst.start)..words(dst.end));
        for cached in [&mut *cache.k, &mut *cache.v] {
            if cached.capacity() < dst_words.end {
                // Doubling keeps the copies of a growing cache linear in its final length.
                let max = (self.limits.max_storage_buffer_binding_size / 4) as usize;
                let want = dst_words.end.max(cached.capacity().saturating_mul(2).min(max));
                let grown = self.tensor(want)?;
                let old = (cached.len * 4) as u64;
                if old > 0 {
                    self.record(|e| e.copy_buffer_to_buffer(&cached.buf, 0, &grown.buf, 0, old));
                }
                cached.buf = grown.buf;
            }
            cached.len = cached.len.max(dst_words.end);
        }
        if src.is_empty() {
            return Ok(());
        }
        if let Some(kernels) = f16 {
            let params = [
                u32_of("kv_write", "source element", src.start)?,
                u32_of("kv_write", "cache word", dst_words.start)?,
                u32_of("kv_write", "words", dst_words.len())?,
            ];
            let bindings = [(1, &k.buf), (2, &v.buf), (3, &cache.k.buf), (4, &cache.v.buf)];
            let groups = Self::elementwise_groups(dst_words.len());
            return self.dispatch("kv_write", &kernels.kv_write, &params, &bindings, groups);
        }
        let bytes = (src_words.len() * 4) as u64;
        let (from, to) = ((src_words.start * 4) as u64, (dst_words.start * 4) as u64);
        for (cached, new) in [(&*cache.k, k), (&*cache.v, v)] {
            self.record(|e| e.copy_buffer_to_buffer(&new.buf, from, &cached.buf, to, bytes));
        }
        Ok(())
    }

    fn kv_row_bytes(&self, row_len: usize) -> usize {
        2 * row_len * if self.f16_rows(row_len) { 2 } else { 4 }
    }

    fn attention(
        &self,
        q: &WgpuTensor,
        cache: KvLayer<&WgpuTensor>,
        rows: SeqRows,
        shape: AttentionShape,
        out: &mut WgpuTensor,
    ) -> Result<(), KernelError> {
        self.attention_many(q, &[(cache, rows)], shape, out)
    }

    /// One dispatch per sequence (their caches are separate buffers), all in one encoder.
    fn attention_many(
        &self,
        q: &WgpuTensor,
        seqs: &[(KvLayer<&WgpuTensor>, SeqRows)],
        shape: AttentionShape,
        out: &mut WgpuTensor,
    ) -> Result<(), KernelError> {
        let AttentionShape { n_head, n_kv_head, head_dim } = shape;
        if n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
            return Err(shape_err("attention", format!("{n_head} heads cannot share {n_kv_head} kv heads")));
        }
        if head_dim == 0 || head_dim > MAX_HEAD_DIM {
            return Err(shape_err("attention", format!("head_dim {head_dim} is outside 1..={MAX_HEAD_DIM}")));
        }
        let q_len = n_head * head_dim;
        let kv_len = n_kv_head * head_dim;
        for (cache, rows) in seqs {
            let SeqRows { row: q_row, n, first_pos } = *rows;
            let n_ctx = first_pos + n;
            check_len("attention", "q", q.len, (q_row + n) * q_len)?;
            check_len("attention", "k cache", self.cache_elems(cache.k, kv_len), n_ctx * kv_len)?;
            check_len("attention", "v cache", self.cache_elems(cache.v, kv_len), n_ctx * kv_len)?;
            check_len("attention", "output", out.len, (q_row + n) * q_len)?;
        }
        let scale = 1.0 / (head_dim as f32).sqrt();
        let kernel = self.f16_cache(kv_len).map_or(&self.kernels.attention, |k| &k.attention);
        for (cache, rows) in seqs {
            let params = [
                u32_of("attention", "row", rows.row)?,
                u32_of("attention", "rows", rows.n)?,
                u32_of("attention", "first position", rows.first_pos)?,
                n_head as u32,
                n_kv_head as u32,
                head_dim as u32,
                scale.to_bits(),
            ];
            let bindings = [(1, &q.buf), (2, &cache.k.buf), (3, &cache.v.buf), (4, &out.buf)];
            self.dispatch("attention", kernel, &params, &bindings, rows.n * n_head)?;
        }
        Ok(())
    }

    fn gather_rows(
        &self,
        src: &WgpuTensor,
        rows: &[usize],
        row_len: usize,
        out: &mut WgpuTensor,
    ) -> Result<(), KernelError> {
        check_len("gather_rows", "output", out.len, rows.len() * row_len)?;
        for &r in rows {
            check_len("gather_rows", "source", src.len, (r + 1) * row_len)?;
        }
        if row_len == 0 || rows.is_empty() {
            return Ok(());
        }
        // Runs of consecutive source rows become one copy each.
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for (i, &r) in rows.iter().enumerate() {
            match runs.last_mut() {
                Some((start, at, len)) if *start + *len == r && *at + *len == i => *len += 1,
                _ => runs.push((r, i, 1)),
            }
        }
        let row_bytes = (row_len * 4) as u64;
        self.record(|e| {
            for &(start, at, len) in &runs {
                e.copy_buffer_to_buffer(
                    &src.buf,
                    start as u64 * row_bytes,
                    &out.buf,
                    at as u64 * row_bytes,
                    len as u64 * row_bytes,
                );
            }
        });
        Ok(())
    }

    fn silu_mul(&self, gate: &mut WgpuTensor, up: &WgpuTensor, len: usize) -> Result<(), KernelError> {
        check_len("silu_mul", "gate", gate.len, len)?;
        check_len("silu_mul", "up", up.len, len)?;
        let params = [u32_of("silu_mul", "length", len)?];
        let bindings = [(1, &gate.buf), (2, &up.buf)];
        self.dispatch("silu_mul", &self.kernels.silu_mul, &params, &bindings, Self::elementwise_groups(len))
    }

    fn add(&self, x: &mut WgpuTensor, y: &WgpuTensor, len: usize) -> Result<(), KernelError> {
        check_len("add", "x", x.len, len)?;
        check_len("add", "y", y.len, len)?;
        let params = [u32_of("add", "length", len)?];
        let bindings = [(1, &x.buf), (2, &y.buf)];
        self.dispatch("add", &self.kernels.add, &params, &bindings, Self::elementwise_groups(len))
    }

    fn synchronize(&self) -> Result<(), KernelError> {
        {
            let mut rec = self.rec.lock().unwrap_or_else(|p| p.into_inner());
            self.submit(&mut rec);
        }
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| device_err(format!("waiting: {e}")))?;
        self.check_error()
    }

    fn argmax_rows(&self, t: &WgpuTensor, rows: usize, row_len: usize) -> Result<Vec<Option<u32>>, KernelError> {
        if let Some(ids) = argmax_without_kernel(t.len, rows, row_len)? {
            return Ok(ids);
        }
        let ids = self.tensor(rows)?;
        let params = [u32_of("argmax_rows", "row length", row_len)?, u32_of("argmax_rows", "rows", rows)?];
        self.dispatch("argmax_rows", &self.kernels.argmax, &params, &[(1, &t.buf), (2, &ids.buf)], rows)?;
        // The ids come back through the f32 read-back, bit for bit.
        let mut bits = Vec::new();
        self.read_rows(&ids, 0..1, rows, &mut bits)?;
        Ok(argmax_ids(bits.into_iter().map(f32::to_bits), row_len))
    }

    fn read_row(&self, t: &WgpuTensor, row: usize, row_len: usize, out: &mut Vec<f32>) -> Result<(), KernelError> {
        self.read_rows(t, row..row + 1, row_len, out)
    }

    fn read_rows(
        &self,
        t: &WgpuTensor,
        rows: std::ops::Range<usize>,
        row_len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        check_len("read_rows", "tensor", t.len, rows.end * row_len)?;
        out.clear();
        let len = rows.len() * row_len;
        if len == 0 {
            return Ok(());
        }
        let bytes = (len * 4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read_rows"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut rec = self.rec.lock().unwrap_or_else(|p| p.into_inner());
            let encoder = rec.encoder.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
            encoder.copy_buffer_to_buffer(&t.buf, (rows.start * row_len * 4) as u64, &staging, 0, bytes);
            self.submit(&mut rec);
        }
        let (tx, rx) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            // The receiver waits below; a send can only fail once it has given up.
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| device_err(format!("waiting: {e}")))?;
        self.check_error()?;
        rx.recv()
            .map_err(|_| device_err("the read-back callback never ran"))?
            .map_err(|e| device_err(format!("read-back mapping failed: {e}")))?;
        {
            let view = staging.get_mapped_range(..).map_err(|e| device_err(format!("read-back view: {e}")))?;
            out.extend(view.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        }
        staging.unmap();
        Ok(())
    }
}
