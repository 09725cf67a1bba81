//! The wgpu backend: the CUDA backend's kernel set in WGSL (`kernels.wgsl`), run through
//! `wgpu` on Vulkan (Linux, Android), Metal (macOS, iOS) and DX12, and the path to browsers'
//! WebGPU. Weights keep their GGML blocks (rows padded to whole u32 words, as WGSL reads words)
//! and are dequantized in the shaders; activations and the KV cache are f32 storage buffers.
//!
//! Work is queued without waiting; only reading back (`read_row`, `read_rows`) waits for the
//! device.

use std::sync::mpsc;

use wgpu::util::DeviceExt;

use crate::backend::{AttentionShape, Backend, BackendKind, Inputs, KernelError, KvLayer, QTensor, Rope, SeqRows};
use crate::quant::{GgmlType, dequantize_row};

/// The shaders' source: every kernel is an entry point of it.
pub const KERNELS_WGSL: &str = include_str!("kernels.wgsl");

/// The entry points, named as the CUDA kernels they mirror.
pub const KERNEL_NAMES: &[&str] = &["matmul", "embed", "rms_norm", "silu_mul", "add", "rope", "attention"];

/// Formats the shaders dequantize, numbered as `T_*` in kernels.wgsl (others go up as f32).
const NATIVE: [(GgmlType, u32); 7] = [
    (GgmlType::F32, 0),
    (GgmlType::Q4_0, 1),
    (GgmlType::Q4_1, 2),
    (GgmlType::Q8_0, 3),
    (GgmlType::Q4K, 4),
    (GgmlType::Q5K, 5),
    (GgmlType::Q6K, 6),
];

/// Invocations per workgroup (`WG`) and input rows per matmul workgroup.
const WG: u32 = 64;
const MM_ROWS: usize = 4;
/// The most workgroups one dispatch dimension takes (WebGPU's default limit).
const MAX_GROUPS: usize = 65_535;

fn device_err(reason: impl Into<String>) -> KernelError {
    KernelError::Device { backend: BackendKind::Wgpu, reason: reason.into() }
}

fn shape_err(op: &'static str, reason: String) -> KernelError {
    KernelError::Shape { op, reason }
}

fn check_len(op: &'static str, what: &str, have: usize, need: usize) -> Result<(), KernelError> {
    if have < need {
        return Err(shape_err(op, format!("{what} holds {have} elements, needs {need}")));
    }
    Ok(())
}

fn to_u32(op: &'static str, v: usize) -> Result<u32, KernelError> {
    u32::try_from(v).map_err(|_| shape_err(op, format!("{v} is too large for a shader")))
}

/// kernels.wgsl's `Params`.
#[derive(Clone, Copy, Default)]
struct Params {
    ty: u32,
    rows: u32,
    cols: u32,
    row_words: u32,
    n: u32,
    row_offset: u32,
    eps: f32,
    scale: f32,
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    n_rot: u32,
    first_pos: u32,
    q_row: u32,
    neox: u32,
    ctx: u32,
}

impl Params {
    fn bytes(&self) -> Vec<u8> {
        let words = [
            self.ty,
            self.rows,
            self.cols,
            self.row_words,
            self.n,
            self.row_offset,
            self.eps.to_bits(),
            self.scale.to_bits(),
            self.n_head,
            self.n_kv_head,
            self.head_dim,
            self.n_rot,
            self.first_pos,
            self.q_row,
            self.neox,
            self.ctx,
        ];
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
}

pub struct Wgpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    layout: wgpu::BindGroupLayout,
    pipelines: Vec<(&'static str, wgpu::ComputePipeline)>,
    /// Bound where an entry point does not use a binding (read-only and writable ones apart,
    /// since one buffer may not be both in a dispatch).
    dummy_ro: wgpu::Buffer,
    dummy_rw: wgpu::Buffer,
    info: wgpu::AdapterInfo,
}

/// An f32 tensor in a storage buffer: `len` elements in use, capacity beyond them for a
/// growing KV cache.
pub struct WgpuTensor {
    buf: wgpu::Buffer,
    len: usize,
}

impl WgpuTensor {
    fn capacity(&self) -> usize {
        (self.buf.size() / 4) as usize
    }
}

pub struct WgpuWeight {
    /// `T_*` of kernels.wgsl.
    ty: u32,
    rows: usize,
    cols: usize,
    row_words: usize,
    buf: wgpu::Buffer,
}

impl WgpuWeight {
    pub fn rows(&self) -> usize {
        self.rows
    }
}

const STORAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// The seven bindings every entry point may use: params, weights, input, output, aux, scratch.
fn layout_entries() -> Vec<wgpu::BindGroupLayoutEntry> {
    let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    vec![
        wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        },
        storage(1, true),
        storage(2, true),
        storage(3, false),
        storage(4, true),
        storage(5, false),
    ]
}

/// What one dispatch binds; `None` takes the matching dummy.
#[derive(Default)]
struct Binds<'a> {
    w: Option<&'a wgpu::Buffer>,
    x: Option<&'a wgpu::Buffer>,
    out: Option<&'a wgpu::Buffer>,
    aux: Option<&'a wgpu::Buffer>,
    scratch: Option<&'a wgpu::Buffer>,
}

impl Wgpu {
    /// Opens the highest-performance adapter wgpu finds (Vulkan, Metal or DX12).
    pub fn new() -> Result<Self, KernelError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
        let instance = wgpu::Instance::new(desc);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| device_err(format!("no GPU adapter (Vulkan, Metal or DX12): {e}")))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("realm"),
            required_limits: wgpu::Limits {
                max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
                max_buffer_size: limits.max_buffer_size,
                max_storage_buffers_per_shader_stage: 5,
                ..wgpu::Limits::downlevel_defaults()
            },
            ..Default::default()
        }))
        .map_err(|e| device_err(format!("opening {}: {e}", info.name)))?;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("kernels.wgsl"),
            source: wgpu::ShaderSource::Wgsl(KERNELS_WGSL.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("realm kernels"),
            entries: &layout_entries(),
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("realm kernels"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipelines = KERNEL_NAMES
            .iter()
            .map(|&name| {
                let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(name),
                    compilation_options: Default::default(),
                    cache: None,
                });
                (name, p)
            })
            .collect();
        let dummy = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: STORAGE,
                mapped_at_creation: false,
            })
        };
        let (dummy_ro, dummy_rw) = (dummy("unused (read)"), dummy("unused (write)"));
        Ok(Self { device, queue, layout, pipelines, dummy_ro, dummy_rw, info })
    }

    /// Adapter, driver backend and device type, for the start-up log line.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?}, {:?})", self.info.name, self.info.backend, self.info.device_type)
    }

    /// A CPU adapter (lavapipe, WARP): correct but slower than the CPU backend.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    fn pipeline(&self, name: &str) -> Result<&wgpu::ComputePipeline, KernelError> {
        self.pipelines
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p)
            .ok_or_else(|| device_err(format!("no kernel {name}")))
    }

    fn storage(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        // Zero-length bindings are invalid: an empty tensor still owns one word.
        let contents: &[u8] = if bytes.is_empty() { &[0; 4] } else { bytes };
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: STORAGE,
        })
    }

    fn empty(&self, len: usize) -> Result<wgpu::Buffer, KernelError> {
        let size = (len.max(1) * 4) as u64;
        if size > self.device.limits().max_storage_buffer_binding_size {
            return Err(device_err(format!("{len} floats exceed the device's largest storage buffer")));
        }
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tensor"),
            size,
            usage: STORAGE,
            mapped_at_creation: false,
        }))
    }

    /// Queues entry point `name` over `groups` workgroups, split into dispatches of at most
    /// `MAX_GROUPS` rows of `groups.0` (each gets its `row_offset`).
    fn dispatch(
        &self,
        name: &str,
        mut params: Params,
        groups: (usize, u32),
        binds: Binds<'_>,
    ) -> Result<(), KernelError> {
        let pipeline = self.pipeline(name)?;
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(name) });
        let mut start = 0;
        while start < groups.0 {
            let count = (groups.0 - start).min(MAX_GROUPS);
            params.row_offset = to_u32(name_static(name), start)?;
            let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: &params.bytes(),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(name),
                layout: &self.layout,
                entries: &[
                    entry(0, &uniform),
                    entry(1, binds.w.unwrap_or(&self.dummy_ro)),
                    entry(2, binds.x.unwrap_or(&self.dummy_ro)),
                    entry(3, binds.out.unwrap_or(&self.dummy_rw)),
                    entry(4, binds.aux.unwrap_or(&self.dummy_ro)),
                    entry(5, binds.scratch.unwrap_or(&self.dummy_rw)),
                ],
            });
            {
                let mut pass = encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(name), timestamp_writes: None });
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(count as u32, groups.1, 1);
            }
            start += count;
        }
        self.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// An element-wise op over `len` elements (one invocation each): `out` op= `x`.
    fn elementwise(&self, name: &str, out: &WgpuTensor, x: &WgpuTensor, len: usize) -> Result<(), KernelError> {
        let params = Params { n: to_u32(name_static(name), len)?, ..Params::default() };
        let binds = Binds { x: Some(&x.buf), out: Some(&out.buf), ..Binds::default() };
        self.dispatch(name, params, (len.div_ceil(WG as usize), 1), binds)
    }

    fn copy(&self, src: &wgpu::Buffer, src_elem: usize, dst: &wgpu::Buffer, dst_elem: usize, len: usize) {
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("copy") });
        encoder.copy_buffer_to_buffer(src, (src_elem * 4) as u64, dst, (dst_elem * 4) as u64, (len * 4) as u64);
        self.queue.submit([encoder.finish()]);
    }

    /// Grows `t` to hold `len` elements (doubling), keeping what it holds.
    fn reserve(&self, t: &mut WgpuTensor, len: usize) -> Result<(), KernelError> {
        if t.capacity() < len {
            let grown = self.empty(len.max(2 * t.capacity()))?;
            if t.len > 0 {
                self.copy(&t.buf, 0, &grown, 0, t.len);
            }
            t.buf = grown;
        }
        t.len = t.len.max(len);
        Ok(())
    }
}

fn entry(binding: u32, b: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() }
}

/// Kernel names as `'static` op names for errors.
fn name_static(name: &str) -> &'static str {
    KERNEL_NAMES.iter().copied().find(|n| *n == name).unwrap_or("wgpu")
}

impl Backend for Wgpu {
    type Tensor = WgpuTensor;
    type Weight = WgpuWeight;

    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }

    fn load_weight(&self, w: &QTensor, _inputs: Inputs) -> Result<WgpuWeight, KernelError> {
        let native = NATIVE.iter().find(|(t, _)| *t == w.ty).map(|&(_, id)| id);
        let mut bytes = Vec::new();
        let (ty, row_words) = match native {
            Some(id) => {
                let row_bytes = w.row(0).len();
                let row_words = row_bytes.div_ceil(4);
                for r in 0..w.rows {
                    bytes.extend_from_slice(w.row(r));
                    bytes.resize((r + 1) * row_words * 4, 0);
                }
                (id, row_words)
            }
            None => {
                let mut row = vec![0.0f32; w.cols];
                for r in 0..w.rows {
                    dequantize_row(w.ty, w.row(r), &mut row)?;
                    bytes.extend(row.iter().flat_map(|v| v.to_le_bytes()));
                }
                (0, w.cols)
            }
        };
        if bytes.len() as u64 > self.device.limits().max_storage_buffer_binding_size {
            return Err(device_err(format!(
                "a weight of {} bytes exceeds the device's largest storage buffer",
                bytes.len()
            )));
        }
        Ok(WgpuWeight { ty, rows: w.rows, cols: w.cols, row_words, buf: self.storage("weight", &bytes) })
    }

    fn weight_rows(&self, w: &WgpuWeight) -> usize {
        w.rows
    }

    fn zeros(&self, len: usize) -> Result<WgpuTensor, KernelError> {
        // New buffers are zero-initialised by wgpu.
        Ok(WgpuTensor { buf: self.empty(len)?, len })
    }

    fn upload(&self, data: &[f32]) -> Result<WgpuTensor, KernelError> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(WgpuTensor { buf: self.storage("tensor", &bytes), len: data.len() })
    }

    fn embed(&self, table: &WgpuWeight, ids: &[u32], out: &mut WgpuTensor) -> Result<(), KernelError> {
        check_len("embed", "output", out.len, ids.len() * table.cols)?;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(shape_err("embed", format!("token id {id} is outside the {}-row table", table.rows)));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let ids_buf = self.storage("ids", &ids.iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<_>>());
        let params = Params {
            ty: table.ty,
            rows: to_u32("embed", table.rows)?,
            cols: to_u32("embed", table.cols)?,
            row_words: to_u32("embed", table.row_words)?,
            ..Params::default()
        };
        let binds = Binds { w: Some(&table.buf), out: Some(&out.buf), aux: Some(&ids_buf), ..Binds::default() };
        self.dispatch("embed", params, (ids.len(), 1), binds)
    }

    fn rms_norm(&self, x: &WgpuTensor, weight: &WgpuWeight, eps: f32, out: &mut WgpuTensor) -> Result<(), KernelError> {
        if weight.rows != 1 || weight.ty != 0 {
            return Err(shape_err("rms_norm", "weight is not an f32 vector".into()));
        }
        let dim = weight.cols;
        if dim == 0 || !x.len.is_multiple_of(dim) {
            return Err(shape_err("rms_norm", format!("input of {} elements is not rows of {dim}", x.len)));
        }
        check_len("rms_norm", "output", out.len, x.len)?;
        let params = Params { cols: to_u32("rms_norm", dim)?, eps, ..Params::default() };
        let binds = Binds { w: Some(&weight.buf), x: Some(&x.buf), out: Some(&out.buf), ..Binds::default() };
        self.dispatch("rms_norm", params, (x.len / dim, 1), binds)
    }

    fn matmuls(
        &self,
        x: &WgpuTensor,
        n: usize,
        jobs: &mut [(&WgpuWeight, &mut WgpuTensor)],
    ) -> Result<(), KernelError> {
        let Some(cols) = jobs.first().map(|(w, _)| w.cols) else { return Ok(()) };
        check_len("matmul", "input", x.len, n * cols)?;
        for (w, out) in jobs.iter() {
            if w.cols != cols {
                return Err(shape_err(
                    "matmul",
                    format!("weights sharing an input have {} and {cols} columns", w.cols),
                ));
            }
            check_len("matmul", "output", out.len, n * w.rows)?;
        }
        if n == 0 {
            return Ok(());
        }
        let tiles = to_u32("matmul", n.div_ceil(MM_ROWS))?;
        if tiles as usize > MAX_GROUPS {
            return Err(shape_err("matmul", format!("{n} input rows are too many for one dispatch")));
        }
        for (w, out) in jobs.iter() {
            let params = Params {
                ty: w.ty,
                rows: to_u32("matmul", w.rows)?,
                cols: to_u32("matmul", w.cols)?,
                row_words: to_u32("matmul", w.row_words)?,
                n: to_u32("matmul", n)?,
                ..Params::default()
            };
            let binds = Binds { w: Some(&w.buf), x: Some(&x.buf), out: Some(&out.buf), ..Binds::default() };
            self.dispatch("matmul", params, (w.rows, tiles), binds)?;
        }
        Ok(())
    }

    fn rope(&self, x: &mut WgpuTensor, head_dim: usize, positions: &[u32], rope: &Rope) -> Result<(), KernelError> {
        let rows = positions.len();
        if rows == 0 {
            return Ok(());
        }
        if head_dim == 0 || rope.n_rot > head_dim || !rope.n_rot.is_multiple_of(2) {
            return Err(shape_err("rope", format!("n_rot {} does not fit heads of {head_dim}", rope.n_rot)));
        }
        if !x.len.is_multiple_of(rows) || !(x.len / rows).is_multiple_of(head_dim) {
            return Err(shape_err("rope", format!("{} elements are not {rows} rows of {head_dim}-wide heads", x.len)));
        }
        // The CPU's angles (f64, then rounded), so both backends rotate by the same numbers;
        // WGSL has no f64.
        let mut table = Vec::with_capacity(rows * rope.n_rot);
        let mut angles = Vec::new();
        for &p in positions {
            crate::cpu::ops::rope_angles(p, rope, &mut angles);
            table.extend(angles.iter().flat_map(|&(c, s)| [c, s]));
        }
        let aux = self.storage("rope angles", &table.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
        let params = Params {
            cols: to_u32("rope", x.len / rows)?,
            head_dim: to_u32("rope", head_dim)?,
            n_rot: to_u32("rope", rope.n_rot)?,
            neox: u32::from(rope.layout == crate::backend::RopeLayout::Neox),
            ..Params::default()
        };
        self.dispatch("rope", params, (rows, 1), Binds { out: Some(&x.buf), aux: Some(&aux), ..Binds::default() })
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
        for (cached, new) in [(cache.k, k), (cache.v, v)] {
            check_len("kv_write", "source", new.len, (row + n) * row_len)?;
            if n == 0 || row_len == 0 {
                continue;
            }
            self.reserve(cached, (first_pos + n) * row_len)?;
            self.copy(&new.buf, row * row_len, &cached.buf, first_pos * row_len, n * row_len);
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &WgpuTensor,
        cache: KvLayer<&WgpuTensor>,
        rows: SeqRows,
        shape: AttentionShape,
        out: &mut WgpuTensor,
    ) -> Result<(), KernelError> {
        let AttentionShape { n_head, n_kv_head, head_dim } = shape;
        if n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
            return Err(shape_err("attention", format!("{n_head} heads cannot share {n_kv_head} kv heads")));
        }
        let SeqRows { row, n, first_pos } = rows;
        let (q_len, kv_len, ctx) = (n_head * head_dim, n_kv_head * head_dim, first_pos + n);
        check_len("attention", "q", q.len, (row + n) * q_len)?;
        check_len("attention", "k cache", cache.k.len, ctx * kv_len)?;
        check_len("attention", "v cache", cache.v.len, ctx * kv_len)?;
        check_len("attention", "output", out.len, (row + n) * q_len)?;
        if n == 0 {
            return Ok(());
        }
        let scratch = self.empty(n * n_head * ctx)?;
        let params = Params {
            scale: 1.0 / (head_dim as f32).sqrt(),
            n_head: to_u32("attention", n_head)?,
            n_kv_head: to_u32("attention", n_kv_head)?,
            head_dim: to_u32("attention", head_dim)?,
            first_pos: to_u32("attention", first_pos)?,
            q_row: to_u32("attention", row)?,
            ctx: to_u32("attention", ctx)?,
            ..Params::default()
        };
        let binds = Binds {
            w: Some(&cache.k.buf),
            x: Some(&q.buf),
            out: Some(&out.buf),
            aux: Some(&cache.v.buf),
            scratch: Some(&scratch),
        };
        self.dispatch("attention", params, (n, to_u32("attention", n_head)?), binds)
    }

    fn gather_rows(
        &self,
        src: &WgpuTensor,
        rows: &[usize],
        row_len: usize,
        out: &mut WgpuTensor,
    ) -> Result<(), KernelError> {
        check_len("gather_rows", "output", out.len, rows.len() * row_len)?;
        if let Some(&r) = rows.iter().find(|&&r| (r + 1) * row_len > src.len) {
            return Err(shape_err("gather_rows", format!("row {r} is outside the source")));
        }
        for (i, &r) in rows.iter().enumerate() {
            if row_len > 0 {
                self.copy(&src.buf, r * row_len, &out.buf, i * row_len, row_len);
            }
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &mut WgpuTensor, up: &WgpuTensor, len: usize) -> Result<(), KernelError> {
        check_len("silu_mul", "gate", gate.len, len)?;
        check_len("silu_mul", "up", up.len, len)?;
        if len == 0 {
            return Ok(());
        }
        self.elementwise("silu_mul", gate, up, len)
    }

    fn add(&self, x: &mut WgpuTensor, y: &WgpuTensor, len: usize) -> Result<(), KernelError> {
        check_len("add", "x", x.len, len)?;
        check_len("add", "y", y.len, len)?;
        if len == 0 {
            return Ok(());
        }
        self.elementwise("add", x, y, len)
    }

    fn synchronize(&self) -> Result<(), KernelError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| device_err(format!("waiting for the GPU: {e}")))
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
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read back"),
            size: (len * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read back") });
        encoder.copy_buffer_to_buffer(&t.buf, (rows.start * row_len * 4) as u64, &staging, 0, (len * 4) as u64);
        self.queue.submit([encoder.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.synchronize()?;
        rx.recv()
            .map_err(|_| device_err("the read-back was dropped"))?
            .map_err(|e| device_err(format!("mapping the read-back: {e}")))?;
        {
            let data = slice.get_mapped_range().map_err(|e| device_err(format!("reading the read-back: {e}")))?;
            out.extend(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        }
        staging.unmap();
        Ok(())
    }

    fn read_row(&self, t: &WgpuTensor, row: usize, row_len: usize, out: &mut Vec<f32>) -> Result<(), KernelError> {
        self.read_rows(t, row..row + 1, row_len, out)
    }
}
