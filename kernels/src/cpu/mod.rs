//! CPU backend. Two precisions: the exact reference path (weights dequantized row by row as
//! they are used, f32 activations) and the fast path (activations quantized on the fly,
//! integer dots against the quantized blocks: `q8`, `q16`, `kquant` on the file's rows, or
//! `packed` on rows repacked for AVX-512 or AVX2). Attention is softmax over the KV cache
//! (bf16 in the fast path), split into runs of positions and merged.

/// The entry points every SIMD module of the integer kernels exposes, around its
/// `dot_blocks::<FORMAT, N>`: one instantiation per weight format, picked once per call.
macro_rules! entry_points {
    ($features:literal, $quant:ty) => {
        const Q4_0: u8 = 0;
        const Q4_1: u8 = 1;
        const Q8_0: u8 = 2;
        const Q5_0: u8 = 3;
        const Q5_1: u8 = 4;

        /// # Safety
        /// The module's CPU features must be available; every `q[k]` holds the same whole
        /// number of blocks (even, for kernels that take two at a time), which `w`, `d[k]` and
        /// `sum[k]` cover, and `ty` is a format `q8::supported` accepts.
        #[target_feature(enable = $features)]
        pub unsafe fn dot_many<const N: usize>(
            ty: GgmlType,
            w: &[u8],
            d: [&[f32]; N],
            sum: [&[f32]; N],
            q: [&[$quant]; N],
        ) -> [f32; N] {
            // SAFETY: forwarded from the caller.
            unsafe {
                match ty {
                    GgmlType::Q4_0 => dot_blocks::<Q4_0, N>(w, d, sum, q),
                    GgmlType::Q4_1 => dot_blocks::<Q4_1, N>(w, d, sum, q),
                    GgmlType::Q5_0 => dot_blocks::<Q5_0, N>(w, d, sum, q),
                    GgmlType::Q5_1 => dot_blocks::<Q5_1, N>(w, d, sum, q),
                    _ => dot_blocks::<Q8_0, N>(w, d, sum, q),
                }
            }
        }

        /// # Safety
        /// As [`dot_many`] with `N = 1`, for each of the `out.len()` rows in `rows`.
        #[target_feature(enable = $features)]
        pub unsafe fn dot_rows_single(
            ty: GgmlType,
            rows: &[u8],
            d: &[f32],
            sum: &[f32],
            q: &[$quant],
            out: &mut [f32],
        ) {
            let row_bytes = rows.len() / out.len().max(1);
            for (r, o) in out.iter_mut().enumerate() {
                // SAFETY: forwarded from the caller, row by row.
                let [v] = unsafe { dot_many::<1>(ty, &rows[r * row_bytes..(r + 1) * row_bytes], [d], [sum], [q]) };
                *o = v;
            }
        }
    };
}

mod actquant;
mod attention;
pub mod huge;
mod kquant;
mod ops;
mod packed;
mod pool;
mod q16;
mod q8;
mod runs;
mod topology;
mod vexp;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::backend::{
    AttentionShape, Backend, BackendKind, Inputs, KernelError, KvLayer, QTensor, Rope, SeqRows, argmax, check_len,
    rope_kv_write_then_attention, shape_err, written,
};
use crate::quant::dequantize_row;

use half::bf16;
use ops::{add_into, rms_norm_rows};
use runs::Runs;

pub use attention::{HeadRows, KvElem, attend_partial, blocked_key, merge_partials, paired_value};
pub use ops::{axpy, dot, rms_norm_row, rope_angles, rope_apply, rope_row, silu};
pub use packed::PREFETCH_BYTES;
pub use q8::Isa;
pub use topology::physical_cores;

/// A weight on the CPU: the quantized rows, plus an f32 copy for small 1-D tensors (norm
/// weights) that are read whole on every call.
pub struct CpuWeight {
    pub q: QTensor,
    dense: Option<Vec<f32>>,
    /// Whether matmuls repack the rows for the AVX-512 kernels (this machine has them, and
    /// the format and shape fit).
    packable: bool,
    /// The repacked rows, made on first use: the embedding table is never repacked, and
    /// start-up stays a mapping of the file.
    packed: OnceLock<Option<packed::Packed>>,
    inputs: Inputs,
}

/// Vectors this short are kept dequantized: they are norm weights, read whole every step.
const DENSE_MAX: usize = 1 << 16;

/// How matmuls treat activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// f32 activations against exactly dequantized weights: the reference path.
    F32,
    /// Activations quantized to 8 bits, integer dot products against quantized weights.
    Q8,
}

pub struct Cpu {
    pool: pool::Pool,
    /// The packed matmuls' quantized activations, kept between calls: a prefill's are
    /// megabytes, which fresh allocations would fault in page by page on every call. Boxed,
    /// so `Cpu` stays small next to the GPU backends in `Device`.
    packed_acts: Box<Mutex<(q8::Q8Acts, q16::Q16Acts)>>,
    /// Where repacked weights live (huge pages where the kernel has them).
    packed_weights: Arc<huge::Arena>,
    /// A thread is moving `packed_weights` to huge pages.
    settling: Arc<AtomicBool>,
    /// Boxed, like `packed_acts`.
    rope_table: Box<Mutex<RopeTable>>,
    /// `attention_many`'s tasks and partial results, kept between calls as `packed_acts` is.
    attention_scratch: Box<Mutex<AttentionScratch>>,
    activations: Activations,
    /// KV caches hold bf16 (with quantized activations; the exact path keeps f32). The
    /// backend's tensors are f32 vectors, so a cache stores two bf16 per slot.
    kv_bf16: bool,
    isa: q8::Isa,
    /// The packed kernels' instruction set.
    simd: packed::Simd,
}

impl Cpu {
    /// A backend running on `threads` threads (0 means one per physical core).
    pub fn new(threads: usize, activations: Activations) -> Result<Self, KernelError> {
        let threads = match threads {
            0 => physical_cores(),
            n => n,
        };
        let pool =
            pool::Pool::new(threads).map_err(|e| KernelError::Shape { op: "thread pool", reason: e.to_string() })?;
        let Features { isa, avx_vnni } =
            features().clone().map_err(|reason| KernelError::Device { backend: BackendKind::Cpu, reason })?;
        Ok(Self {
            pool,
            packed_acts: Box::default(),
            packed_weights: Arc::default(),
            settling: Arc::default(),
            rope_table: Box::default(),
            attention_scratch: Box::default(),
            activations,
            kv_bf16: activations == Activations::Q8,
            isa,
            simd: packed::Simd::of(isa, avx_vnni),
        })
    }

    /// The instruction sets the kernels use, as `REALM_CPU_ISA` names them.
    pub fn isa_name(&self) -> &'static str {
        match self.simd {
            packed::Simd::Avx512 => "avx512",
            packed::Simd::Avx2Vnni => "avxvnni",
            packed::Simd::Avx2 => "avx2",
            packed::Simd::Scalar => "baseline",
        }
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    pub fn activations(&self) -> Activations {
        self.activations
    }

    /// Cache elements (bf16 or f32) per f32 slot of a cache tensor.
    fn elems_per_slot(&self) -> usize {
        if self.kv_bf16 { 2 } else { 1 }
    }

    /// Elements a layer's key and value caches need for positions `0..positions` of
    /// `row_len`-element rows, in the layout `kv_write` writes.
    fn cache_elems(&self, positions: usize, row_len: usize) -> (usize, usize) {
        if self.kv_bf16 {
            (<bf16 as KvElem>::key_slots(positions, row_len), <bf16 as KvElem>::value_slots(positions, row_len))
        } else {
            (<f32 as KvElem>::key_slots(positions, row_len), <f32 as KvElem>::value_slots(positions, row_len))
        }
    }

    /// Few enough tasks that scheduling stays cheap next to a small decode matmul, enough that
    /// no thread waits long on the last one.
    fn rows_per_task(&self, rows: usize) -> usize {
        const TASKS_PER_THREAD: usize = 4;
        const MIN_ROWS: usize = 16;
        rows.div_ceil(self.threads() * TASKS_PER_THREAD).max(MIN_ROWS)
    }

    /// `w`'s repacked rows, packed now (in parallel) if this is their first use.
    fn packed<'w>(&self, w: &'w CpuWeight) -> Option<&'w packed::Packed> {
        if !w.packable {
            return None;
        }
        w.packed
            .get_or_init(|| packed::Packed::new(&w.q, &self.packed_weights, |tasks, task| self.pool.run(tasks, task)))
            .as_ref()
    }

    /// [`Backend::matmuls`] of the `n` rows of `x` for weights that are all packed (`packed[j]`
    /// is job `j`'s): `norm`'s norm inside the activations' quantization, then tasks that own
    /// runs of 16-row groups, write their rows of every activation row straight into the
    /// outputs, and do `fuse`'s work on those rows.
    fn matmuls_packed(
        &self,
        x: &[f32],
        n: usize,
        jobs: &mut [(&CpuWeight, &mut Vec<f32>)],
        packed: &[&packed::Packed],
        fuse: Fuse,
        mut norm: Option<Norm>,
    ) {
        let cols = x.len() / n;
        let mut acts = self.packed_acts.lock().unwrap_or_else(|e| e.into_inner());
        let (q8, q16) = &mut *acts;
        let parallel = |tasks: usize, task: &q8::Parallel| self.pool.run(tasks, task);
        let robust = jobs.iter().any(|(w, _)| w.inputs == Inputs::Robust);
        let sensitive = jobs.iter().any(|(w, _)| w.inputs == Inputs::Sensitive);
        let halves =
            jobs.iter().zip(packed).any(|((w, _), p)| w.inputs == Inputs::Sensitive && packed::per_half(p.ty()));
        // One kind of activations is quantized in the matmuls' own section. Both kinds (the
        // second reads the rows the first normalised), or half sums after the 16-bit ones,
        // take sections of their own first.
        let plan = match (robust, sensitive, halves) {
            (true, false, _) => Some(Plan::Q8(q8.plan(Norm::input(x, &mut norm, false), n, cols))),
            (false, true, false) => Some(Plan::Q16(q16.plan(Norm::input(x, &mut norm, false), n, cols, true))),
            _ => {
                // The first quantization normalises the rows (if asked); a second reads them
                // normalised.
                let mut normalised = false;
                if robust {
                    q8.quantize_with(Norm::input(x, &mut norm, normalised), n, cols, parallel);
                    normalised = true;
                }
                if sensitive {
                    q16.quantize_with(Norm::input(x, &mut norm, normalised), n, cols, true, parallel);
                    if halves {
                        q16.sum_halves();
                    }
                }
                None
            }
        };
        // Each thread streams one contiguous run of the call's groups (across its weights)
        // and then helps finish the others' (`Runs`). SwiGLU's runs are of the gate's groups,
        // each chunk taken with the same groups of the up weight.
        let lockstep = matches!(fuse, Fuse::SiluMul);
        let mut targets = Vec::new();
        let mut firsts = Vec::new();
        let mut total = 0;
        for ((w, out), &p) in jobs.iter_mut().zip(packed) {
            let acts = match w.inputs {
                Inputs::Robust => packed::Acts::Q8(q8),
                Inputs::Sensitive => packed::Acts::Q16(q16),
            };
            targets.push((p, acts, OutPtr(out.as_mut_ptr())));
            firsts.push(total);
            total += p.groups();
        }
        let runs = Runs::new(if lockstep { packed[0].groups() } else { total }, self.threads());
        let simd = self.simd;
        let vector_exp = self.activations == Activations::Q8;
        let rows_of = |j: usize, groups: &std::ops::Range<usize>| {
            let (p, acts, out) = &targets[j];
            // SAFETY: each output holds `n` rows of `p.rows()` floats (checked by `matmuls`),
            // chunks cover disjoint groups, the activations hold `n` rows of `cols`, and the
            // pool joins every task before the outputs are touched again. `self.simd` was
            // detected.
            unsafe { p.matmul_groups(simd, *acts, n, groups.clone(), out.0, p.rows()) };
            if let (Fuse::AddTo(sum), 0) = (fuse, j) {
                for t in 0..n {
                    let span = rows_span(p.rows(), t, groups);
                    // SAFETY: this chunk alone touches these rows of job 0's output and of
                    // `sum` (both `n * rows`, checked by the caller) during the section.
                    let (product, sum) = unsafe { (out.slice(span.clone()), sum.slice(span)) };
                    add_into(sum, product);
                }
            }
        };
        let matmul = |r: usize| {
            runs.work_through(r, |chunk| {
                if lockstep {
                    rows_of(0, &chunk);
                    rows_of(1, &chunk);
                    let (p, (_, _, gate), (_, _, up)) = (targets[0].0, targets[0], targets[1]);
                    for t in 0..n {
                        let span = rows_span(p.rows(), t, &chunk);
                        // SAFETY: as for the sums above, for the two outputs' rows.
                        let (gate, up) = unsafe { (gate.slice(span.clone()), up.slice(span)) };
                        swiglu(vector_exp, gate, up);
                    }
                    return;
                }
                // The chunk's groups of each weight it straddles.
                for (j, (&first, (p, _, _))) in firsts.iter().zip(&targets).enumerate() {
                    let (start, end) = (chunk.start.max(first), chunk.end.min(first + p.groups()));
                    if start < end {
                        rows_of(j, &(start - first..end - first));
                    }
                }
            })
        };
        match &plan {
            // SAFETY: the planned activations are only read by the matmul tasks, which run
            // after every quantization task has finished, and stay put until the section ends.
            Some(plan) => self.pool.run_then((plan.tasks(), &|i| unsafe { plan.run(i) }), (runs.len(), &matmul)),
            None => self.pool.run(runs.len(), &matmul),
        }
    }

    /// [`Backend::matmuls`] of `x`, RMS-normalised first where `norm` asks, then `fuse`'s
    /// work: the norm inside the activations' quantization and `fuse` inside the packed
    /// kernels' tasks where the weights are packed, each in a pass of its own otherwise.
    fn matmuls_fused(
        &self,
        x: &[f32],
        n: usize,
        jobs: &mut [(&CpuWeight, &mut Vec<f32>)],
        fuse: Fuse,
        norm: Option<Norm>,
    ) -> Result<(), KernelError> {
        let Some(cols) = jobs.first().map(|(w, _)| w.q.cols) else { return Ok(()) };
        if matches!(fuse, Fuse::SiluMul) && !matches!(jobs, [(gate, _), (up, _)] if gate.q.rows == up.q.rows) {
            return Err(swiglu_shape_err());
        }
        check_len("matmul", "input", x.len(), n * cols)?;
        for (w, out) in jobs.iter() {
            if w.q.cols != cols {
                return Err(shape_err(
                    "matmul",
                    format!("weights sharing an input have {} and {cols} columns", w.q.cols),
                ));
            }
            check_len("matmul", "output", out.len(), n * w.q.rows)?;
        }
        if let Some(norm) = &norm {
            check_len("rms_norm", "weight", norm.weight.len(), cols)?;
            check_len("rms_norm", "output", norm.normed.len(), x.len())?;
        }
        if n == 0 {
            return Ok(());
        }
        let x = &x[..n * cols];
        if let Some(packed) = jobs.iter().map(|(w, _)| self.packed(w)).collect::<Option<Vec<_>>>() {
            self.matmuls_packed(x, n, jobs, &packed, fuse, norm);
            return Ok(());
        }
        let x = match norm {
            Some(Norm { weight, eps, normed }) => {
                rms_norm_rows(x, weight, eps, normed);
                &normed[..n * cols]
            }
            None => x,
        };
        self.matmuls_by_rows(x, n, cols, jobs)?;
        let len = n * jobs[0].0.q.rows;
        match (fuse, jobs) {
            (Fuse::AddTo(sum), [(_, product), ..]) => {
                // SAFETY: `sum` holds the job's `n * rows` (checked by the caller), and no task
                // is running.
                add_into(unsafe { sum.slice(0..len) }, product);
            }
            (Fuse::SiluMul, [(_, gate), (_, up)]) => {
                swiglu(self.activations == Activations::Q8, &mut gate[..len], &up[..len])
            }
            _ => {}
        }
        Ok(())
    }

    /// [`Backend::matmuls`] without packed weights: a weight row at a time against every
    /// activation row.
    fn matmuls_by_rows(
        &self,
        x: &[f32],
        n: usize,
        cols: usize,
        jobs: &mut [(&CpuWeight, &mut Vec<f32>)],
    ) -> Result<(), KernelError> {
        let kernels: Vec<RowKernel> = jobs.iter().map(|(w, _)| self.row_kernel(w)).collect();
        let mut acts = StepActs { x, cols, q8: q8::Q8Acts::default(), q16: q16::Q16Acts::default() };
        if kernels.contains(&RowKernel::Q8) {
            acts.q8.quantize(x, n, cols);
        }
        if kernels.contains(&RowKernel::Q16) {
            acts.q16.quantize(x, n, cols);
        }
        // Results are computed as [rows, n] so each task owns whole weight rows, then
        // transposed into [n, rows]. One parallel region covers every weight of the call.
        let total_rows: usize = jobs.iter().map(|(w, _)| w.q.rows).sum();
        let rows_per_task = self.rows_per_task(total_rows);
        // With one activation row, [rows, n] is [n, rows]: tasks write the outputs directly
        // (decode allocates nothing per weight).
        let weights: Vec<&QTensor> = jobs.iter().map(|(w, _)| &w.q).collect();
        let mut out_t: Vec<Vec<f32>> =
            if n == 1 { Vec::new() } else { jobs.iter().map(|(w, _)| vec![0.0f32; w.q.rows * n]).collect() };
        let mut tasks = Vec::new();
        let targets: Vec<&mut [f32]> = if n == 1 {
            jobs.iter_mut().map(|(w, out)| &mut out[..w.q.rows]).collect()
        } else {
            out_t.iter_mut().map(|b| b.as_mut_slice()).collect()
        };
        for (j, buf) in targets.into_iter().enumerate() {
            for (c, chunk) in buf.chunks_mut(rows_per_task * n).enumerate() {
                tasks.push((j, c * rows_per_task, chunk));
            }
        }
        let isa = self.isa;
        let tasks: Vec<Mutex<Option<RowTask>>> = tasks.into_iter().map(|t| Mutex::new(Some(t))).collect();
        let failure = Mutex::new(None);
        self.pool.run(tasks.len(), &|i| {
            let Some((j, first_row, dst)) = tasks[i].lock().ok().and_then(|mut t| t.take()) else { return };
            if n == 1 && kernels[j] != RowKernel::F32 {
                // Decode: the whole run of rows goes to the kernel in one call.
                let rows = weights[j].rows(first_row..first_row + dst.len());
                match kernels[j] {
                    RowKernel::Q8 => {
                        q8::dot_rows_single(isa, weights[j].ty, rows, &acts.q8.d, &acts.q8.sum, &acts.q8.q, dst)
                    }
                    _ => q16::dot_rows_single(isa, weights[j].ty, rows, &acts.q16.d, &acts.q16.sum, &acts.q16.q, dst),
                }
                return;
            }
            let mut scratch = vec![0.0f32; if kernels[j] == RowKernel::F32 { cols } else { 0 }];
            for (r, dst_row) in dst.chunks_exact_mut(n).enumerate() {
                if let Err(e) = acts.row_times_all(isa, kernels[j], weights[j], first_row + r, &mut scratch, dst_row) {
                    *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    return;
                }
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        for ((w, out), buf) in jobs.iter_mut().zip(&out_t) {
            // Blocks of rows keep both sides of the transpose in cache.
            const BLOCK: usize = 16;
            let rows = w.q.rows;
            for r0 in (0..rows).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(rows);
                for t in 0..n {
                    for r in r0..r1 {
                        out[t * rows + r] = buf[r * n + t];
                    }
                }
            }
        }
        Ok(())
    }

    /// Grows `cache` to hold positions up to `rows.first_pos + rows.n` of `row_len`-element
    /// rows, in the layout [`Cpu::write_rows`] writes.
    fn grow_cache(&self, cache: KvLayer<&mut Vec<f32>>, rows: SeqRows, row_len: usize) -> Result<(), KernelError> {
        if self.kv_bf16 && !row_len.is_multiple_of(2) {
            return Err(shape_err("kv_write", format!("a bf16 cache pairs up elements: rows of {row_len} cannot")));
        }
        let (key_elems, value_elems) = self.cache_elems(rows.first_pos + rows.n, row_len);
        for (cached, elems) in [(cache.k, key_elems), (cache.v, value_elems)] {
            let slots = elems.div_ceil(self.elems_per_slot());
            if cached.len() < slots {
                cached.resize(slots, 0.0);
            }
        }
        Ok(())
    }

    /// Writes the key and value rows `k` and `v` (`row_len` each) to positions `first_pos..`
    /// of a cache [grown](Cpu::grow_cache) to hold them.
    fn write_rows(&self, cache: KvLayer<&mut [f32]>, k: &[f32], v: &[f32], first_pos: usize, row_len: usize) {
        if self.kv_bf16 {
            let keys = bf16s_mut(cache.k);
            for (i, new) in k.chunks_exact(row_len).enumerate() {
                let p = first_pos + i;
                for (j, pair) in new.chunks_exact(2).enumerate() {
                    let at = blocked_key(p, 2 * j, row_len);
                    keys[at] = bf16::from_f32(pair[0]);
                    keys[at + 1] = bf16::from_f32(pair[1]);
                }
            }
            let values = bf16s_mut(cache.v);
            for (i, new) in v.chunks_exact(row_len).enumerate() {
                let p = first_pos + i;
                for (j, &x) in new.iter().enumerate() {
                    values[paired_value(p, j, row_len)] = bf16::from_f32(x);
                }
            }
        } else {
            let dst = first_pos * row_len..first_pos * row_len + k.len();
            cache.k[dst.clone()].copy_from_slice(k);
            cache.v[dst].copy_from_slice(v);
        }
    }

    /// [`Backend::attention_many`], after `before`'s tasks (`before.1(i)` for each `i` in
    /// `0..before.0`) where given, in the same section: they write the queries and caches
    /// it reads.
    // The queries as a `&Vec`, not a slice: `before`'s tasks write them until the section
    // reaches attention's, and a slice would borrow their memory from the start.
    #[allow(clippy::ptr_arg)]
    fn attention_section(
        &self,
        q: &Vec<f32>,
        seqs: &[(KvLayer<&Vec<f32>>, SeqRows)],
        shape: AttentionShape,
        out: &mut [f32],
        before: Option<(usize, &(dyn Fn(usize) + Sync))>,
    ) -> Result<(), KernelError> {
        let AttentionShape { n_head, n_kv_head, head_dim } = shape;
        if n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
            return Err(shape_err("attention", format!("{n_head} heads cannot share {n_kv_head} kv heads")));
        }
        if self.kv_bf16 && !head_dim.is_multiple_of(2) {
            return Err(shape_err("attention", format!("a bf16 cache pairs up elements: heads of {head_dim} cannot")));
        }
        let q_len = n_head * head_dim;
        let kv_len = n_kv_head * head_dim;
        for (cache, rows) in seqs {
            let SeqRows { row: q_row, n, first_pos } = *rows;
            let n_ctx = first_pos + n;
            check_len("attention", "q", q.len(), (q_row + n) * q_len)?;
            let (key_elems, value_elems) = self.cache_elems(n_ctx, kv_len);
            check_len("attention", "k cache", cache.k.len() * self.elems_per_slot(), key_elems)?;
            check_len("attention", "v cache", cache.v.len() * self.elems_per_slot(), value_elems)?;
            check_len("attention", "output", out.len(), (q_row + n) * q_len)?;
        }
        let group = n_head / n_kv_head;
        let scale = 1.0 / (head_dim as f32).sqrt();
        // One task per (sequence, token, KV head, run of positions), every sequence of the step
        // in one parallel section: the query heads sharing a KV head read its keys and values
        // once, and long contexts split over every thread (flash-decoding); the last task of a
        // (sequence, token, KV head) to finish merges its partial softmaxes, in chunk order
        // whatever else the step holds, so a sequence gets the same numbers batched as alone.
        let part_len = group * (head_dim + 2);
        let chunks_of = |first_pos: usize, t: usize| (first_pos + t + 1).div_ceil(ATTENTION_CHUNK);
        let mut scratch = self.attention_scratch.lock().unwrap_or_else(|e| e.into_inner());
        let AttentionScratch { tasks, partials, finished } = &mut *scratch;
        tasks.clear();
        for (s, (_, rows)) in seqs.iter().enumerate() {
            for t in 0..rows.n {
                for g in 0..n_kv_head {
                    for c in 0..chunks_of(rows.first_pos, t) {
                        tasks.push((s, t, g, c));
                    }
                }
            }
        }
        // Every task writes the whole of its record.
        if partials.len() < tasks.len() * part_len {
            partials.resize(tasks.len() * part_len, 0.0);
        }
        finished.iter_mut().for_each(|f| *f.get_mut() = 0);
        finished.resize_with(tasks.len().max(finished.len()), AtomicUsize::default);
        let (records, outputs) = (OutPtr(partials.as_mut_ptr()), OutPtr(out.as_mut_ptr()));
        let (task_list, done) = (&tasks[..], &finished[..]);
        // Runs of neighbouring tasks per thread: claims stay on each thread's own line, and
        // a thread reads one sequence's cache after another's.
        let runs = Runs::new(task_list.len(), self.threads());
        let task = |i: usize| {
            // SAFETY: task `i` alone writes record `i`, inside `partials` (sized above), which
            // nothing else touches during the parallel section.
            let part = unsafe { std::slice::from_raw_parts_mut(records.at(i * part_len), part_len) };
            let (s, t, g, c) = task_list[i];
            let (cache, SeqRows { row: q_row, first_pos, .. }) = seqs[s];
            let visible = first_pos + t + 1;
            let positions = c * ATTENTION_CHUNK..((c + 1) * ATTENTION_CHUNK).min(visible);
            let qg = &q[(q_row + t) * q_len + g * group * head_dim..][..group * head_dim];
            let (stride, offset, len) = (kv_len, g * head_dim, head_dim);
            if self.kv_bf16 {
                let (k, v) = (bf16s(cache.k), bf16s(cache.v));
                attend_partial(qg, &HeadRows { k, v, stride, offset, len }, positions, scale, part);
            } else {
                let (k, v) = (cache.k.as_slice(), cache.v.as_slice());
                attend_partial(qg, &HeadRows { k, v, stride, offset, len }, positions, scale, part);
            }
            // The last of the (sequence, token, KV head)'s tasks to finish merges their records
            // in chunk order (the same numbers whichever finished last); the counter's
            // acquire-release makes the others' records visible to it.
            let (first, chunks) = (i - c, chunks_of(first_pos, t));
            if chunks > 1 && done[first].fetch_add(1, Ordering::AcqRel) + 1 < chunks {
                return;
            }
            // SAFETY: records `first..first + chunks` are written (above); nothing writes them
            // or this (token, KV head)'s output rows during the section but this task.
            let parts = unsafe { std::slice::from_raw_parts(records.at(first * part_len), chunks * part_len) };
            for j in 0..group {
                let at = (q_row + t) * q_len + (g * group + j) * head_dim;
                // SAFETY: as above; `out` holds the row (checked before the section).
                let head = unsafe { outputs.slice(at..at + head_dim) };
                merge_partials(parts, part_len, j * (head_dim + 2), head);
            }
        };
        let attend = |r: usize| runs.work_through(r, |chunk| chunk.for_each(task));
        match before {
            Some(before) => self.pool.run_then(before, (runs.len(), &attend)),
            None => self.pool.run(runs.len(), &attend),
        }
        // A long prompt's step needs far more than a decode step: not kept.
        if size_of_val(&partials[..]) > ATTENTION_SCRATCH_KEPT {
            *partials = Vec::new();
            *tasks = Vec::new();
            *finished = Vec::new();
        }
        Ok(())
    }

    /// The step's per-sequence RoPE and KV writes as tasks, each cache grown first; `None`
    /// when the sequences do not own the rows in order (the ops then go one at a time).
    #[allow(clippy::too_many_arguments)]
    fn plan_rope_writes<'a>(
        &'a self,
        q: &mut [f32],
        k: &mut [f32],
        v: &'a [f32],
        head_dim: usize,
        positions: &'a [u32],
        rope: &'a Rope,
        writes: &mut [(KvLayer<&mut Vec<f32>>, SeqRows)],
        row_len: usize,
    ) -> Result<Option<RopeWrites<'a>>, KernelError> {
        check_rope(head_dim, rope)?;
        let n = positions.len();
        let q_len = q.len() / n.max(1);
        if n == 0 || !q_len.is_multiple_of(head_dim) || !row_len.is_multiple_of(head_dim) {
            return Err(shape_err(
                "rope",
                format!("rows of {q_len} and {row_len} do not split into heads of {head_dim}"),
            ));
        }
        check_len("rope", "keys", k.len(), n * row_len)?;
        check_len("kv_write", "values", v.len(), n * row_len)?;
        let covered = writes.iter().try_fold(0, |next, (_, rows)| (rows.row == next).then_some(next + rows.n));
        if covered != Some(n) {
            return Ok(None);
        }
        let mut seqs = Vec::with_capacity(writes.len());
        for (cache, rows) in writes.iter_mut() {
            self.grow_cache(KvLayer { k: &mut *cache.k, v: &mut *cache.v }, *rows, row_len)?;
            seqs.push(SeqWrite {
                cache: KvLayer {
                    k: (OutPtr(cache.k.as_mut_ptr()), cache.k.len()),
                    v: (OutPtr(cache.v.as_mut_ptr()), cache.v.len()),
                },
                rows: *rows,
            });
        }
        let table = self.rope_table_for(positions, rope);
        Ok(Some(RopeWrites {
            q: OutPtr(q.as_mut_ptr()),
            k: OutPtr(k.as_mut_ptr()),
            v,
            seqs,
            positions,
            rope,
            table,
            q_len,
            row_len,
            head_dim,
        }))
    }

    /// The angle table, grown to cover `positions`, or `None` when one lies past what it
    /// keeps (the angles are then computed per row).
    fn rope_table_for(&self, positions: &[u32], rope: &Rope) -> Option<std::sync::MutexGuard<'_, RopeTable>> {
        let end = positions.iter().max().map_or(0, |&p| p as usize + 1);
        if end > ROPE_TABLE_POSITIONS {
            return None;
        }
        let mut table = self.rope_table.lock().unwrap_or_else(|e| e.into_inner());
        table.cover(rope, end);
        Some(table)
    }

    /// How `w` meets this backend's activations.
    fn row_kernel(&self, w: &CpuWeight) -> RowKernel {
        let integer = self.activations == Activations::Q8 && q8::supported(w.q.ty) && w.q.cols.is_multiple_of(q8::QB);
        match (integer, w.inputs) {
            (true, Inputs::Robust) => RowKernel::Q8,
            (true, Inputs::Sensitive) => RowKernel::Q16,
            (false, _) => RowKernel::F32,
        }
    }
}

/// The instruction sets the CPU kernels use.
#[derive(Debug, Clone, Copy)]
struct Features {
    isa: q8::Isa,
    avx_vnni: bool,
}

/// [`instruction_sets`], read once: every kernel's dispatch follows it.
fn features() -> &'static Result<Features, String> {
    static FEATURES: OnceLock<Result<Features, String>> = OnceLock::new();
    FEATURES.get_or_init(instruction_sets)
}

/// The instruction set the kernels dispatch on ([`Cpu::new`] reports a `REALM_CPU_ISA` it
/// cannot honour; here such a request leaves the CPU's own).
pub(crate) fn isa() -> q8::Isa {
    features().as_ref().map_or_else(|_| q8::Isa::detect(), |f| f.isa)
}

/// What the CPU has (`q8::Isa` and AVX-VNNI), or less where `REALM_CPU_ISA` asks for less:
/// `avx512`, `avxvnni` (AVX2 with AVX-VNNI), `avx2` or `baseline`, to compare the paths on one
/// machine or to reproduce another's.
fn instruction_sets() -> Result<Features, String> {
    let detected = q8::Isa::detect();
    #[cfg(target_arch = "x86_64")]
    let avx_vnni = std::arch::is_x86_feature_detected!("avxvnni");
    #[cfg(not(target_arch = "x86_64"))]
    let avx_vnni = false;
    let Some(wanted) = std::env::var_os("REALM_CPU_ISA") else {
        return Ok(Features { isa: detected, avx_vnni });
    };
    let rank = |isa: q8::Isa| match isa {
        q8::Isa::Baseline => 0,
        #[cfg(target_arch = "x86_64")]
        q8::Isa::Avx2 => 1,
        #[cfg(target_arch = "x86_64")]
        q8::Isa::Avx512 => 2,
    };
    let name = wanted.to_string_lossy();
    let asked = match &*name {
        "baseline" => Some((q8::Isa::Baseline, false)),
        #[cfg(target_arch = "x86_64")]
        "avx2" => Some((q8::Isa::Avx2, false)),
        #[cfg(target_arch = "x86_64")]
        "avxvnni" => Some((q8::Isa::Avx2, true)),
        #[cfg(target_arch = "x86_64")]
        "avx512" => Some((q8::Isa::Avx512, avx_vnni)),
        _ => None,
    };
    match asked {
        None => Err(format!("REALM_CPU_ISA={name:?} is not one of avx512, avxvnni, avx2, baseline")),
        Some((isa, vnni)) if rank(isa) <= rank(detected) && (avx_vnni || !vnni) => Ok(Features { isa, avx_vnni: vnni }),
        Some(_) => Err(format!("REALM_CPU_ISA={name}: this CPU does not have it")),
    }
}

/// Positions the RoPE table holds at most (8 MiB of angles for 128-dimension heads); later
/// ones are computed per call.
const ROPE_TABLE_POSITIONS: usize = 1 << 15;

/// RoPE's cosines and sines for positions `0..len`, computed once: every layer of every step
/// turns its queries and keys by the same angles.
#[derive(Default)]
struct RopeTable {
    /// The frequency base and rotated width the angles are for.
    rope: Option<(f32, usize)>,
    /// `n_rot / 2` pairs per position.
    angles: Vec<(f32, f32)>,
}

impl RopeTable {
    /// Makes the table hold positions `0..len` for `rope`.
    fn cover(&mut self, rope: &Rope, len: usize) {
        let key = (rope.freq_base, rope.n_rot);
        if self.rope != Some(key) {
            self.rope = Some(key);
            self.angles.clear();
        }
        let per = rope.n_rot / 2;
        let mut pos_angles = Vec::with_capacity(per);
        for pos in self.angles.len() / per.max(1)..len {
            rope_angles(pos as u32, rope, &mut pos_angles);
            self.angles.extend_from_slice(&pos_angles);
        }
    }

    fn at(&self, pos: usize) -> &[(f32, f32)] {
        let per = self.rope.map_or(0, |(_, n_rot)| n_rot / 2);
        &self.angles[pos * per..(pos + 1) * per]
    }
}

/// Whether RoPE of `rope.n_rot` dimensions fits heads of `head_dim`.
fn check_rope(head_dim: usize, rope: &Rope) -> Result<(), KernelError> {
    if head_dim == 0 || rope.n_rot > head_dim || !rope.n_rot.is_multiple_of(2) {
        return Err(shape_err("rope", format!("n_rot {} does not fit head_dim {head_dim}", rope.n_rot)));
    }
    Ok(())
}

/// Turns each head of each `row_len`-element row of `x` by its position's angles, from
/// `table` where it covers them.
fn rope_rows(
    x: &mut [f32],
    row_len: usize,
    head_dim: usize,
    positions: &[u32],
    rope: &Rope,
    table: Option<&RopeTable>,
) {
    let mut computed = Vec::with_capacity(if table.is_some() { 0 } else { rope.n_rot / 2 });
    // One set of angles per position serves every head of the row.
    for (row, &pos) in x.chunks_exact_mut(row_len).zip(positions) {
        let angles = match table {
            Some(table) => table.at(pos as usize),
            None => {
                rope_angles(pos, rope, &mut computed);
                &computed
            }
        };
        for head in row.chunks_exact_mut(head_dim) {
            rope_apply(head, angles, rope.layout);
        }
    }
}

/// A KV cache tensor's bf16 elements, two to each f32 slot (see `Cpu::kv_bf16`).
fn bf16s(slots: &[f32]) -> &[bf16] {
    // SAFETY: bf16 is two plain bytes with half f32's alignment; any bits are a valid bf16.
    unsafe { std::slice::from_raw_parts(slots.as_ptr().cast::<bf16>(), slots.len() * 2) }
}

fn bf16s_mut(slots: &mut [f32]) -> &mut [bf16] {
    // SAFETY: as in `bf16s`, through the only borrow of `slots`.
    unsafe { std::slice::from_raw_parts_mut(slots.as_mut_ptr().cast::<bf16>(), slots.len() * 2) }
}

/// An output that the tasks of a parallel section write disjoint parts of: the packed
/// matmuls' rows, attention's partial results. A lock per part would bounce its cache line
/// between the cores on every task.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: shared only within a parallel section (`matmuls_packed`, `attention_many`), where
// every task writes its own part and the section ends before the output is used again.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The float `offset` on (a method, so that a closure captures the whole `OutPtr`).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }

    /// The floats `range` of the output.
    ///
    /// # Safety
    /// `range` lies inside the output, which outlives `'a`, and nothing else reads or writes
    /// those floats meanwhile.
    unsafe fn slice<'a>(self, range: std::ops::Range<usize>) -> &'a mut [f32] {
        // SAFETY: the caller's guarantee.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(range.start), range.len()) }
    }
}

/// A step's per-sequence RoPE and KV writes ([`Cpu::plan_rope_writes`]): pointers to the
/// rows and caches they write, so that attention can read those in the same section.
struct RopeWrites<'a> {
    q: OutPtr,
    k: OutPtr,
    v: &'a [f32],
    seqs: Vec<SeqWrite>,
    positions: &'a [u32],
    rope: &'a Rope,
    table: Option<std::sync::MutexGuard<'a, RopeTable>>,
    q_len: usize,
    row_len: usize,
    head_dim: usize,
}

/// One sequence's cache (each tensor's slots and their count) and rows.
struct SeqWrite {
    cache: KvLayer<(OutPtr, usize)>,
    rows: SeqRows,
}

impl RopeWrites<'_> {
    /// Turns sequence `i`'s queries and keys and writes its keys and values to its cache.
    ///
    /// # Safety
    /// The planned queries, keys and caches are neither moved, resized nor read meanwhile,
    /// and each task runs once.
    unsafe fn run(&self, cpu: &Cpu, i: usize) {
        let SeqWrite { cache, rows } = &self.seqs[i];
        let (q_len, row_len) = (self.q_len, self.row_len);
        // SAFETY: the caller's guarantee; sequences own disjoint rows (checked by the plan)
        // and caches, and each pointer's count is its tensor's length.
        let (q, k, cache) = unsafe {
            (
                self.q.slice(rows.row * q_len..(rows.row + rows.n) * q_len),
                self.k.slice(rows.row * row_len..(rows.row + rows.n) * row_len),
                KvLayer { k: cache.k.0.slice(0..cache.k.1), v: cache.v.0.slice(0..cache.v.1) },
            )
        };
        let at = &self.positions[rows.row..rows.row + rows.n];
        let table = self.table.as_deref();
        rope_rows(q, q_len, self.head_dim, at, self.rope, table);
        rope_rows(k, row_len, self.head_dim, at, self.rope, table);
        let values = &self.v[rows.row * row_len..(rows.row + rows.n) * row_len];
        cpu.write_rows(cache, k, values, rows.first_pos, row_len);
    }
}

/// A packed matmul call's quantization, run in the matmuls' section.
enum Plan<'a> {
    Q8(q8::Q8Plan<'a>),
    Q16(q16::Q16Plan<'a>),
}

impl Plan<'_> {
    fn tasks(&self) -> usize {
        match self {
            Plan::Q8(p) => p.tasks(),
            Plan::Q16(p) => p.tasks(),
        }
    }

    /// # Safety
    /// As [`q8::Q8Plan::run`].
    unsafe fn run(&self, i: usize) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match self {
                Plan::Q8(p) => p.run(i),
                Plan::Q16(p) => p.run(i),
            }
        }
    }
}

/// Work on a packed matmul task's own rows once its products are made: fused into the task,
/// it costs no parallel section of its own and finds the rows in cache.
#[derive(Clone, Copy)]
enum Fuse {
    Nothing,
    /// Job 0's products are added into this `n × rows` tensor (the residual stream).
    AddTo(OutPtr),
    /// Jobs 0 and 1 (gate and up, the same rows) become `silu(gate) * up` in job 0's output;
    /// each task takes the same groups of both.
    SiluMul,
}

/// Where the rows of `groups` (16-row groups of a weight of `rows` rows) lie among a product's
/// floats for activation row `t`.
fn rows_span(rows: usize, t: usize, groups: &std::ops::Range<usize>) -> std::ops::Range<usize> {
    t * rows + groups.start * packed::GROUP..t * rows + groups.end * packed::GROUP
}

/// An RMS norm before a call's matmuls: the rows of the input normalised by `weight` (with
/// `eps`) into `normed`.
struct Norm<'a> {
    weight: &'a [f32],
    eps: f32,
    normed: &'a mut [f32],
}

impl Norm<'_> {
    /// What a quantization of `x` reads: `x` normalised by `norm` the first time, the
    /// normalised rows once `normalised`, `x` itself without a norm.
    fn input<'s>(x: &'s [f32], norm: &'s mut Option<Norm>, normalised: bool) -> q8::Input<'s> {
        match (norm, normalised) {
            (Some(Norm { weight, eps, normed }), false) => {
                q8::Input::Normed { x, weight, eps: *eps, normed: &mut normed[..x.len()] }
            }
            (Some(norm), true) => q8::Input::Rows(&norm.normed[..x.len()]),
            (None, _) => q8::Input::Rows(x),
        }
    }
}

fn norm_weight(w: &CpuWeight) -> Result<&[f32], KernelError> {
    w.dense.as_deref().ok_or_else(|| shape_err("rms_norm", "weight is not a vector".into()))
}

fn swiglu_shape_err() -> KernelError {
    shape_err("matmul_swiglu", "a fused SwiGLU needs a gate and an up weight of as many rows".into())
}

/// `gate = silu(gate) * up`, with the 16-lane `exp` in the fast precision.
fn swiglu(vector_exp: bool, gate: &mut [f32], up: &[f32]) {
    if vector_exp {
        vexp::silu_mul(gate, up);
    } else {
        ops::silu_mul(gate, up);
    }
}

/// A run of one weight's rows: which weight, its first row, and where its results go
/// (`rows × n`, row-major).
type RowTask<'a> = (usize, usize, &'a mut [f32]);

/// How a weight row is multiplied with the activations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RowKernel {
    /// Dequantize the row, f32 dot products (exact).
    F32,
    Q8,
    Q16,
}

/// Bytes of partial results `attention_many` keeps for the next call: more than a decode step
/// of 64 sequences at 2,048 positions needs (2.4 MB with the default model's heads).
const ATTENTION_SCRATCH_KEPT: usize = 4 << 20;

/// One task of `attention_many`: (sequence, token, KV head, run of positions).
type AttentionTask = (usize, usize, usize, usize);

#[derive(Default)]
struct AttentionScratch {
    tasks: Vec<AttentionTask>,
    /// One record per task, laid out as `attend_partial` writes them.
    partials: Vec<f32>,
    /// At the index of each (sequence, token, KV head)'s first task: how many of its tasks
    /// have written their records (the last one merges them).
    finished: Vec<AtomicUsize>,
}

/// Positions per attention task: long enough to amortise a task, short enough that one
/// decode step's attention spreads over every thread.
const ATTENTION_CHUNK: usize = 128;

/// Activation rows per tile of the integer kernels: each weight block is unpacked once per
/// tile. Measured best of 1, 4 and 8 for prefill on the default model.
const TILE: usize = 4;

/// Fills `dst` (one value per activation row) a tile of rows at a time, then the remainder
/// row by row.
fn tiled(dst: &mut [f32], mut tile: impl FnMut(usize, &mut [f32; TILE]), mut one: impl FnMut(usize) -> f32) {
    let done = dst.len() / TILE * TILE;
    let mut tiles = dst.chunks_exact_mut(TILE);
    for (i, chunk) in (&mut tiles).enumerate() {
        if let Ok(chunk) = <&mut [f32; TILE]>::try_from(chunk) {
            tile(i * TILE, chunk);
        }
    }
    for (k, d) in tiles.into_remainder().iter_mut().enumerate() {
        *d = one(done + k);
    }
}

/// The step's activations in every form some weight of the call needs, made once.
struct StepActs<'a> {
    x: &'a [f32],
    cols: usize,
    q8: q8::Q8Acts,
    q16: q16::Q16Acts,
}

impl StepActs<'_> {
    /// Row `r` of `w` times every activation row, into `dst` (one value per activation row).
    fn row_times_all(
        &self,
        isa: q8::Isa,
        kernel: RowKernel,
        w: &QTensor,
        r: usize,
        scratch: &mut [f32],
        dst: &mut [f32],
    ) -> Result<(), KernelError> {
        let cols = self.cols;
        let row = w.row(r);
        match kernel {
            RowKernel::F32 => {
                dequantize_row(w.ty, row, scratch)?;
                for (t, d) in dst.iter_mut().enumerate() {
                    *d = dot(scratch, &self.x[t * cols..(t + 1) * cols]);
                }
            }
            RowKernel::Q8 => tiled(
                dst,
                |t, out: &mut [f32; TILE]| *out = self.q8.dot_rows(isa, w.ty, row, t, cols),
                |t| {
                    let [r] = self.q8.dot_rows::<1>(isa, w.ty, row, t, cols);
                    r
                },
            ),
            RowKernel::Q16 => tiled(
                dst,
                |t, out: &mut [f32; TILE]| *out = self.q16.dot_rows(isa, w.ty, row, t, cols),
                |t| {
                    let [r] = self.q16.dot_rows::<1>(isa, w.ty, row, t, cols);
                    r
                },
            ),
        }
        Ok(())
    }
}

impl Backend for Cpu {
    type Tensor = Vec<f32>;
    type Weight = CpuWeight;

    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn load_weight(&self, w: &QTensor, inputs: Inputs) -> Result<CpuWeight, KernelError> {
        let dense = if w.rows == 1 && w.cols <= DENSE_MAX {
            let mut v = vec![0.0; w.cols];
            dequantize_row(w.ty, w.row(0), &mut v)?;
            Some(v)
        } else {
            None
        };
        let packable = self.simd != packed::Simd::Scalar
            && self.activations == Activations::Q8
            && self.simd.takes(w.ty, inputs == Inputs::Sensitive)
            && packed::Packed::fits(w);
        Ok(CpuWeight { q: w.clone(), dense, packable, packed: OnceLock::new(), inputs })
    }

    fn weight_rows(&self, w: &CpuWeight) -> usize {
        w.q.rows
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>, KernelError> {
        Ok(vec![0.0; len])
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>, KernelError> {
        Ok(data.to_vec())
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32], out: &mut Vec<f32>) -> Result<(), KernelError> {
        let dim = table.q.cols;
        check_len("embed", "output", out.len(), ids.len() * dim)?;
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= table.q.rows {
                return Err(shape_err("embed", format!("token id {id} is outside the {}-row table", table.q.rows)));
            }
            dequantize_row(table.q.ty, table.q.row(id), &mut out[i * dim..(i + 1) * dim])?;
        }
        Ok(())
    }

    fn rms_norm(&self, x: &Vec<f32>, weight: &CpuWeight, eps: f32, out: &mut Vec<f32>) -> Result<(), KernelError> {
        let w = norm_weight(weight)?;
        check_len("rms_norm", "output", out.len(), x.len())?;
        rms_norm_rows(x, w, eps, out);
        Ok(())
    }

    fn matmuls(&self, x: &Vec<f32>, n: usize, jobs: &mut [(&CpuWeight, &mut Vec<f32>)]) -> Result<(), KernelError> {
        self.matmuls_fused(x, n, jobs, Fuse::Nothing, None)
    }

    fn matmul_add(
        &self,
        w: &CpuWeight,
        x: &Vec<f32>,
        n: usize,
        out: &mut Vec<f32>,
        scratch: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        check_len("matmul_add", "output", out.len(), n * w.q.rows)?;
        self.matmuls_fused(x, n, &mut [(w, scratch)], Fuse::AddTo(OutPtr(out.as_mut_ptr())), None)
    }

    fn matmul_swiglu(
        &self,
        x: &Vec<f32>,
        n: usize,
        gate: &CpuWeight,
        up: &CpuWeight,
        out: &mut Vec<f32>,
        scratch: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        self.matmuls_fused(x, n, &mut [(gate, out), (up, scratch)], Fuse::SiluMul, None)
    }

    /// The norm runs in the quantization's parallel section (packed weights), not serially.
    fn norm_matmuls(
        &self,
        x: &Vec<f32>,
        norm: &CpuWeight,
        eps: f32,
        n: usize,
        jobs: &mut [(&CpuWeight, &mut Vec<f32>)],
        normed: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        let weight = norm_weight(norm)?;
        self.matmuls_fused(x, n, jobs, Fuse::Nothing, Some(Norm { weight, eps, normed }))
    }

    fn norm_matmul_swiglu(
        &self,
        x: &Vec<f32>,
        norm: &CpuWeight,
        eps: f32,
        n: usize,
        gate: &CpuWeight,
        up: &CpuWeight,
        out: &mut Vec<f32>,
        scratch: &mut Vec<f32>,
        normed: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        let weight = norm_weight(norm)?;
        let norm = Some(Norm { weight, eps, normed });
        self.matmuls_fused(x, n, &mut [(gate, out), (up, scratch)], Fuse::SiluMul, norm)
    }

    fn rope(&self, x: &mut Vec<f32>, head_dim: usize, positions: &[u32], rope: &Rope) -> Result<(), KernelError> {
        check_rope(head_dim, rope)?;
        let row_len = x.len() / positions.len().max(1);
        if !row_len.is_multiple_of(head_dim) {
            return Err(shape_err("rope", format!("row length {row_len} is not a multiple of head_dim {head_dim}")));
        }
        let table = self.rope_table_for(positions, rope);
        rope_rows(x, row_len, head_dim, positions, rope, table.as_deref());
        Ok(())
    }

    /// One task per sequence (its rows rotated, then written to its cache), so a batched
    /// step's sequences go in parallel; the trait's default does each op over every row on
    /// the calling thread.
    fn rope_kv_write(
        &self,
        q: &mut Vec<f32>,
        k: &mut Vec<f32>,
        v: &Vec<f32>,
        head_dim: usize,
        positions: &[u32],
        rope: &Rope,
        writes: &mut [(KvLayer<&mut Vec<f32>>, SeqRows)],
        row_len: usize,
    ) -> Result<(), KernelError> {
        match self.plan_rope_writes(q, k, v, head_dim, positions, rope, writes, row_len)? {
            // SAFETY: the tasks run in this section alone, while every buffer stays borrowed.
            Some(plan) => self.pool.run(plan.seqs.len(), &|i| unsafe { plan.run(self, i) }),
            None => {
                self.rope_qk(q, k, head_dim, positions, rope)?;
                self.kv_write_many(writes, k, v, row_len)?;
            }
        }
        Ok(())
    }

    /// The per-sequence RoPE and KV writes in the attention's own section, ahead of its
    /// tasks: one section a layer fewer.
    fn rope_kv_write_attention(
        &self,
        q: &mut Vec<f32>,
        k: &mut Vec<f32>,
        v: &Vec<f32>,
        positions: &[u32],
        rope: &Rope,
        writes: &mut [(KvLayer<&mut Vec<f32>>, SeqRows)],
        shape: AttentionShape,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        let row_len = shape.n_kv_head * shape.head_dim;
        let Some(plan) = self.plan_rope_writes(q, k, v, shape.head_dim, positions, rope, writes, row_len)? else {
            return rope_kv_write_then_attention(self, q, k, v, positions, rope, writes, shape, out);
        };
        // SAFETY: attention reads the queries and caches only once every write task has
        // finished (`run_then`), and the buffers stay borrowed until the section ends.
        let first = |i: usize| unsafe { plan.run(self, i) };
        self.attention_section(q, &written(writes), shape, out, Some((plan.seqs.len(), &first)))
    }

    fn kv_write(
        &self,
        cache: KvLayer<&mut Vec<f32>>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        rows: SeqRows,
        row_len: usize,
    ) -> Result<(), KernelError> {
        let SeqRows { row, n, first_pos } = rows;
        let src = row * row_len..(row + n) * row_len;
        check_len("kv_write", "source", k.len().min(v.len()), src.end)?;
        self.grow_cache(KvLayer { k: &mut *cache.k, v: &mut *cache.v }, rows, row_len)?;
        self.write_rows(
            KvLayer { k: &mut cache.k[..], v: &mut cache.v[..] },
            &k[src.clone()],
            &v[src],
            first_pos,
            row_len,
        );
        Ok(())
    }

    fn kv_row_bytes(&self, row_len: usize) -> usize {
        2 * row_len * if self.kv_bf16 { size_of::<bf16>() } else { size_of::<f32>() }
    }

    /// Weights packed during the step move to huge pages on a thread of their own: the next
    /// steps read them faster (decode +12%), and the first request did not wait for it.
    fn step_done(&self) {
        if !self.packed_weights.has_unsettled() || self.settling.swap(true, Ordering::AcqRel) {
            return;
        }
        let (arena, settling) = (Arc::clone(&self.packed_weights), Arc::clone(&self.settling));
        let spawned = std::thread::Builder::new().name("realm-huge-pages".into()).spawn(move || {
            arena.settle();
            settling.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            // No thread to be had: the weights stay on small pages, which only costs speed.
            self.settling.store(false, Ordering::Release);
        }
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        cache: KvLayer<&Vec<f32>>,
        rows: SeqRows,
        shape: AttentionShape,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        self.attention_many(q, &[(cache, rows)], shape, out)
    }

    fn attention_many(
        &self,
        q: &Vec<f32>,
        seqs: &[(KvLayer<&Vec<f32>>, SeqRows)],
        shape: AttentionShape,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        self.attention_section(q, seqs, shape, out, None)
    }

    fn gather_rows(
        &self,
        src: &Vec<f32>,
        rows: &[usize],
        row_len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        check_len("gather_rows", "output", out.len(), rows.len() * row_len)?;
        for (i, &r) in rows.iter().enumerate() {
            check_len("gather_rows", "source", src.len(), (r + 1) * row_len)?;
            out[i * row_len..(i + 1) * row_len].copy_from_slice(&src[r * row_len..(r + 1) * row_len]);
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) -> Result<(), KernelError> {
        check_len("silu_mul", "gate", gate.len(), len)?;
        check_len("silu_mul", "up", up.len(), len)?;
        swiglu(self.activations == Activations::Q8, &mut gate[..len], &up[..len]);
        Ok(())
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) -> Result<(), KernelError> {
        check_len("add", "x", x.len(), len)?;
        check_len("add", "y", y.len(), len)?;
        add_into(&mut x[..len], &y[..len]);
        Ok(())
    }

    fn read_row(&self, t: &Vec<f32>, row: usize, row_len: usize, out: &mut Vec<f32>) -> Result<(), KernelError> {
        check_len("read_row", "tensor", t.len(), (row + 1) * row_len)?;
        out.clear();
        out.extend_from_slice(&t[row * row_len..(row + 1) * row_len]);
        Ok(())
    }

    /// In place: the rows are already host memory, so none is copied first.
    fn argmax_rows(&self, t: &Vec<f32>, rows: usize, row_len: usize) -> Result<Vec<Option<u32>>, KernelError> {
        check_len("argmax_rows", "tensor", t.len(), rows * row_len)?;
        if row_len == 0 {
            return Ok(vec![None; rows]);
        }
        Ok(t[..rows * row_len].chunks_exact(row_len).map(argmax).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: f32 = 1e-5;
    /// Attention over a bf16 cache whose softmax weights `vdpbf16ps` rounds to bf16, on
    /// values of at most 1.
    const BF16_TOL: f32 = 1.0 / 256.0;

    #[test]
    fn argmax_rows_is_each_rows_argmax_and_checks_the_length() {
        let cpu = Cpu::new(1, Activations::F32).expect("cpu");
        let t = vec![1.0, 3.0, 3.0, f32::NAN, f32::NEG_INFINITY, f32::NEG_INFINITY, -2.0, f32::NAN, -1.0];
        assert_eq!(cpu.argmax_rows(&t, 3, 3).expect("argmax"), vec![Some(1), None, Some(2)]);
        assert_eq!(cpu.argmax_rows(&t, 2, 0).expect("empty rows"), vec![None, None]);
        assert!(cpu.argmax_rows(&t, 4, 3).is_err());
    }

    fn backend() -> Cpu {
        Cpu::new(2, Activations::F32).expect("pool")
    }

    /// Attention written out the slow, obvious way: per head, softmax over visible positions.
    fn naive_attention(q: &[f32], k: &[f32], v: &[f32], n: usize, first: usize, s: AttentionShape) -> Vec<f32> {
        let (hd, kvl) = (s.head_dim, s.n_kv_head * s.head_dim);
        let mut out = vec![0.0; n * s.n_head * hd];
        for t in 0..n {
            for h in 0..s.n_head {
                let kvh = h * s.n_kv_head / s.n_head;
                let qv = &q[(t * s.n_head + h) * hd..][..hd];
                let scores: Vec<f32> = (0..=first + t)
                    .map(|p| {
                        qv.iter().zip(&k[p * kvl + kvh * hd..][..hd]).map(|(a, b)| a * b).sum::<f32>()
                            / (hd as f32).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f32 = e.iter().sum();
                for (p, w) in e.iter().enumerate() {
                    for d in 0..hd {
                        out[(t * s.n_head + h) * hd + d] += w / z * v[p * kvl + kvh * hd + d];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn gqa_attention_matches_the_naive_form() {
        // Short, and long enough to be split into several runs of positions and merged; heads
        // of 64 and 128 take the AVX-512 code where the CPU has it, 4 the portable one; groups
        // of 3 and 5 query heads per KV head (the AVX-512 code takes up to 4 or 2 per pass).
        for head_dim in [4, 64, 128] {
            for (first, n) in [(3, 2), (0, 37), (ATTENTION_CHUNK * 2 + 5, 3)] {
                for (n_head, n_kv_head) in [(6, 2), (5, 1), (9, 3)] {
                    let shape = AttentionShape { n_head, n_kv_head, head_dim };
                    gqa_attention_case(&backend(), first, n, shape, |x| x, TOL);
                    // The fast path's cache holds bf16: the naive form on rounded rows, within
                    // what rounding the softmax weights to bf16 (AVX512_BF16) gives.
                    let fast = Cpu::new(2, Activations::Q8).expect("pool");
                    gqa_attention_case(&fast, first, n, shape, |x| bf16::from_f32(x).to_f32(), BF16_TOL);
                }
            }
        }
    }

    /// `b`'s attention against the naive form on queries, keys and values passed through
    /// `stored` (what the cache keeps of them), the cache filled by `kv_write`.
    fn gqa_attention_case(b: &Cpu, first: usize, n: usize, shape: AttentionShape, stored: fn(f32) -> f32, tol: f32) {
        let (q_len, kv_len) = (shape.n_head * shape.head_dim, shape.n_kv_head * shape.head_dim);
        let ctx = first + n;
        let f = |i: usize, m: f32| ((i as f32) * m).sin();
        let q: Vec<f32> = (0..n * q_len).map(|i| stored(f(i, 0.7))).collect();
        let k: Vec<f32> = (0..ctx * kv_len).map(|i| 30.0 * f(i, 1.3)).collect();
        let v: Vec<f32> = (0..ctx * kv_len).map(|i| f(i, 0.4)).collect();
        let mut out = vec![0.0; n * q_len];
        let mut cache = KvLayer { k: Vec::new(), v: Vec::new() };
        let all = SeqRows { row: 0, n: ctx, first_pos: 0 };
        b.kv_write(KvLayer { k: &mut cache.k, v: &mut cache.v }, &k, &v, all, kv_len).expect("kv_write");
        let rows = SeqRows { row: 0, n, first_pos: first };
        b.attention(&q, cache.as_ref(), rows, shape, &mut out).expect("attention");
        let (k, v): (Vec<f32>, Vec<f32>) =
            (k.iter().map(|&x| stored(x)).collect(), v.iter().map(|&x| stored(x)).collect());
        let want = naive_attention(&q, &k, &v, n, first, shape);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < tol, "{shape:?}: {a} vs {b}");
        }
    }

    #[test]
    fn rope_turns_each_head_as_rope_row_does_inside_and_beyond_the_angle_table() {
        let b = backend();
        let (head_dim, heads) = (8, 3);
        for layout in [crate::RopeLayout::Normal, crate::RopeLayout::Neox] {
            let rope = Rope { layout, freq_base: 10_000.0, n_rot: 6 };
            for positions in [vec![0, 7, 3], vec![5, ROPE_TABLE_POSITIONS as u32 + 9]] {
                let x: Vec<f32> = (0..positions.len() * heads * head_dim).map(|i| (i as f32 * 0.3).sin()).collect();
                let mut got = x.clone();
                b.rope(&mut got, head_dim, &positions, &rope).expect("rope");
                let mut want = x;
                for (row, &pos) in want.chunks_exact_mut(heads * head_dim).zip(&positions) {
                    for head in row.chunks_exact_mut(head_dim) {
                        rope_row(head, pos, &rope);
                    }
                }
                assert_eq!(got, want, "{layout:?} at {positions:?}");
            }
        }
    }

    #[test]
    fn attention_rejects_short_caches() {
        let shape = AttentionShape { n_head: 2, n_kv_head: 1, head_dim: 2 };
        let mut out = vec![0.0; 4];
        let cache = KvLayer { k: vec![0.0; 2], v: vec![0.0; 2] };
        let rows = SeqRows { row: 0, n: 1, first_pos: 5 };
        let err = backend().attention(&vec![0.0; 4], cache.as_ref(), rows, shape, &mut out);
        assert!(matches!(err, Err(KernelError::Shape { op: "attention", .. })));
    }

    #[test]
    fn matmul_matches_dense_math_for_any_batch() {
        use std::sync::Arc;
        let (rows, cols) = (5, 64);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0).collect();
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        let len = bytes.len();
        let owner: Arc<dyn crate::Backing> = Arc::new(bytes);
        let q = QTensor::new(crate::GgmlType::F32, rows, cols, crate::SharedBytes::new(owner, 0, len).expect("bytes"))
            .expect("tensor");
        let b = backend();
        let weight = b.load_weight(&q, Inputs::Robust).expect("load");
        for n in [1, 3] {
            let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.05).cos()).collect();
            let mut out = vec![0.0; n * rows];
            b.matmul(&weight, &x, n, &mut out).expect("matmul");
            for t in 0..n {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
                    assert!((out[t * rows + r] - want).abs() < 1e-4, "n {n} t {t} r {r}");
                }
            }
        }
    }

    /// A Q4_1 matrix of `rows × cols` with varied values.
    fn q4_1(rows: usize, cols: usize, seed: usize) -> QTensor {
        use std::sync::Arc;
        let ty = crate::GgmlType::Q4_1;
        let row_bytes = ty.byte_size(cols as u64).expect("size").expect("whole blocks") as usize;
        let mut bytes = vec![0u8; rows * row_bytes];
        for (r, row) in bytes.chunks_mut(row_bytes).enumerate() {
            let values: Vec<f32> = (0..cols).map(|c| ((r * 31 + c * 17 + seed) % 23) as f32 / 11.0 - 1.0).collect();
            crate::quant::quantize_row(ty, &values, row).expect("quantize");
        }
        let len = bytes.len();
        let owner: Arc<dyn crate::Backing> = Arc::new(bytes);
        QTensor::new(ty, rows, cols, crate::SharedBytes::new(owner, 0, len).expect("bytes")).expect("tensor")
    }

    #[test]
    fn packed_calls_of_several_weights_give_each_weights_own_products() {
        // Group counts that split unevenly, so tasks straddle the weights.
        let cols = 64;
        for inputs in [Inputs::Robust, Inputs::Sensitive] {
            let b = Cpu::new(2, Activations::Q8).expect("cpu");
            let weights: Vec<CpuWeight> = [(48, 1), (16, 2), (80, 3)]
                .iter()
                .map(|&(rows, seed)| b.load_weight(&q4_1(rows, cols, seed), inputs).expect("load"))
                .collect();
            for n in [1, 3, 8, 20] {
                let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.37).sin()).collect();
                let mut outs: Vec<Vec<f32>> = weights.iter().map(|w| vec![f32::NAN; n * w.q.rows]).collect();
                let mut jobs: Vec<_> = weights.iter().zip(outs.iter_mut()).collect();
                b.matmuls(&x, n, &mut jobs).expect("matmuls");
                for (w, together) in weights.iter().zip(&outs) {
                    let mut alone = vec![f32::NAN; n * w.q.rows];
                    b.matmul(w, &x, n, &mut alone).expect("matmul");
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(together), bits(&alone), "{inputs:?}, {n} rows, weight of {} rows", w.q.rows);
                }
            }
        }
    }

    /// An F32 matrix (the row kernels' path) of `rows × cols`.
    fn dense(rows: usize, cols: usize, seed: usize) -> QTensor {
        use std::sync::Arc;
        let bytes: Vec<u8> =
            (0..rows * cols).flat_map(|i| ((((i + seed) * 7 % 13) as f32 - 6.0) / 4.0).to_le_bytes()).collect();
        let len = bytes.len();
        let owner: Arc<dyn crate::Backing> = Arc::new(bytes);
        QTensor::new(crate::GgmlType::F32, rows, cols, crate::SharedBytes::new(owner, 0, len).expect("bytes"))
            .expect("tensor")
    }

    #[test]
    fn fused_residual_adds_and_swiglu_equal_the_ops_apart() {
        let cols = 64;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let b = Cpu::new(2, Activations::Q8).expect("cpu");
        for (what, make) in [("packed", q4_1 as fn(usize, usize, usize) -> QTensor), ("row kernels", dense)] {
            let (gate, up) = (make(80, cols, 1), make(80, cols, 2));
            let gate = b.load_weight(&gate, Inputs::Robust).expect("load");
            let up = b.load_weight(&up, Inputs::Robust).expect("load");
            let rows = gate.q.rows;
            for n in [1, 3, 8, 20] {
                let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.37).sin()).collect();
                let (mut g, mut u) = (vec![0.0; n * rows], vec![0.0; n * rows]);
                b.matmul(&gate, &x, n, &mut g).expect("gate");
                b.matmul(&up, &x, n, &mut u).expect("up");

                let residual: Vec<f32> = (0..n * rows).map(|i| (i as f32 * 0.11).cos()).collect();
                let mut summed = residual.clone();
                b.matmul_add(&gate, &x, n, &mut summed, &mut vec![0.0; n * rows]).expect("matmul_add");
                let want: Vec<f32> = residual.iter().zip(&g).map(|(r, p)| r + p).collect();
                assert_eq!(bits(&summed), bits(&want), "{what}: residual add, {n} rows");

                let mut fused = vec![f32::NAN; n * rows];
                b.matmul_swiglu(&x, n, &gate, &up, &mut fused, &mut vec![0.0; n * rows]).expect("swiglu");
                b.silu_mul(&mut g, &u, n * rows).expect("silu_mul");
                assert_eq!(bits(&fused), bits(&g), "{what}: SwiGLU, {n} rows");
            }
            let shorter = b.load_weight(&make(48, cols, 3), Inputs::Robust).expect("load");
            let x = vec![0.5; cols];
            let mismatched = b.matmul_swiglu(&x, 1, &gate, &shorter, &mut vec![0.0; 80], &mut vec![0.0; 80]);
            assert!(mismatched.is_err(), "{what}: gate and up of different rows");
        }
    }

    #[test]
    fn norms_fused_into_the_quantization_equal_the_norm_then_the_matmuls() {
        // Three blocks a row, so runs of whole rows differ from runs of blocks; 40 rows make
        // more than one run.
        let cols = 96;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let b = Cpu::new(2, Activations::Q8).expect("cpu");
        let norm = b.load_weight(&dense(1, cols, 5), Inputs::Robust).expect("norm");
        let eps = 1e-5;
        for (what, make) in [("packed", q4_1 as fn(usize, usize, usize) -> QTensor), ("row kernels", dense)] {
            // One weight on 8-bit and one on 16-bit activations: both quantizations, the
            // second reading the rows the first normalised.
            let robust = b.load_weight(&make(48, cols, 1), Inputs::Robust).expect("load");
            let sensitive = b.load_weight(&make(32, cols, 2), Inputs::Sensitive).expect("load");
            let up = b.load_weight(&make(48, cols, 3), Inputs::Robust).expect("load");
            for n in [1, 3, 8, 40] {
                // Rows of different magnitudes, so a row normalised by another's scale shows.
                let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.37).sin() * (1 + i / cols) as f32).collect();
                let mut normed = vec![0.0; n * cols];
                b.rms_norm(&x, &norm, eps, &mut normed).expect("rms_norm");
                let (mut r, mut s) = (vec![0.0; n * 48], vec![0.0; n * 32]);
                b.matmuls(&normed, n, &mut [(&robust, &mut r), (&sensitive, &mut s)]).expect("matmuls");
                let mut g = vec![0.0; n * 48];
                b.matmul_swiglu(&normed, n, &robust, &up, &mut g, &mut vec![0.0; n * 48]).expect("swiglu");

                let mut fused_normed = vec![f32::NAN; n * cols];
                let (mut fr, mut fs) = (vec![f32::NAN; n * 48], vec![f32::NAN; n * 32]);
                b.norm_matmuls(&x, &norm, eps, n, &mut [(&robust, &mut fr), (&sensitive, &mut fs)], &mut fused_normed)
                    .expect("norm_matmuls");
                assert_eq!(bits(&fused_normed), bits(&normed), "{what}: normalised rows, {n} rows");
                assert_eq!(bits(&fr), bits(&r), "{what}: 8-bit activations, {n} rows");
                assert_eq!(bits(&fs), bits(&s), "{what}: 16-bit activations, {n} rows");

                let mut fused_normed = vec![f32::NAN; n * cols];
                let mut fg = vec![f32::NAN; n * 48];
                b.norm_matmul_swiglu(
                    &x,
                    &norm,
                    eps,
                    n,
                    &robust,
                    &up,
                    &mut fg,
                    &mut vec![0.0; n * 48],
                    &mut fused_normed,
                )
                .expect("norm_matmul_swiglu");
                assert_eq!(bits(&fused_normed), bits(&normed), "{what}: normalised rows before SwiGLU, {n} rows");
                assert_eq!(bits(&fg), bits(&g), "{what}: SwiGLU, {n} rows");
            }
            let short_norm = b.load_weight(&dense(1, cols - 32, 5), Inputs::Robust).expect("norm");
            let x = vec![0.5; cols];
            let refused =
                b.norm_matmuls(&x, &short_norm, eps, 1, &mut [(&robust, &mut vec![0.0; 48])], &mut vec![0.0; cols]);
            assert!(refused.is_err(), "{what}: a norm weight shorter than the rows");
        }
    }

    #[test]
    fn rope_kv_write_per_sequence_and_with_attention_equal_the_ops_apart() {
        let (head_dim, q_len, row_len) = (8, 32, 16);
        let rope = Rope { layout: crate::RopeLayout::Neox, freq_base: 10_000.0, n_rot: 8 };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // Three sequences (one past the angle table); in the engine's order, then reversed
        // (the default path).
        let rows = [
            SeqRows { row: 0, n: 1, first_pos: 5 },
            SeqRows { row: 1, n: 3, first_pos: 0 },
            SeqRows { row: 4, n: 2, first_pos: ROPE_TABLE_POSITIONS + 17 },
        ];
        let positions: Vec<u32> =
            rows.iter().flat_map(|r| (r.first_pos..r.first_pos + r.n).map(|p| p as u32)).collect();
        for acts in [Activations::F32, Activations::Q8] {
            let b = Cpu::new(2, acts).expect("cpu");
            for reversed in [false, true] {
                let n = positions.len();
                let q: Vec<f32> = (0..n * q_len).map(|i| (i as f32 * 0.3).sin()).collect();
                let k: Vec<f32> = (0..n * row_len).map(|i| (i as f32 * 0.7).cos()).collect();
                let v: Vec<f32> = (0..n * row_len).map(|i| (i as f32 * 0.2).sin()).collect();

                let (mut q_fused, mut k_fused) = (q.clone(), k.clone());
                let (mut q_one, mut k_one) = (q.clone(), k.clone());
                let mut caches_fused: Vec<(Vec<f32>, Vec<f32>)> = rows.iter().map(|_| (vec![], vec![])).collect();
                let mut writes: Vec<_> =
                    caches_fused.iter_mut().zip(rows).map(|((k, v), r)| (KvLayer { k, v }, r)).collect();
                if reversed {
                    writes.reverse();
                }
                b.rope_kv_write(&mut q_fused, &mut k_fused, &v, head_dim, &positions, &rope, &mut writes, row_len)
                    .expect("rope_kv_write");

                let (mut q_apart, mut k_apart) = (q, k);
                b.rope(&mut q_apart, head_dim, &positions, &rope).expect("rope q");
                b.rope(&mut k_apart, head_dim, &positions, &rope).expect("rope k");
                let mut caches_apart: Vec<(Vec<f32>, Vec<f32>)> = rows.iter().map(|_| (vec![], vec![])).collect();
                for ((kc, vc), r) in caches_apart.iter_mut().zip(rows) {
                    b.kv_write(KvLayer { k: kc, v: vc }, &k_apart, &v, r, row_len).expect("kv_write");
                }

                let shape = AttentionShape { n_head: q_len / head_dim, n_kv_head: row_len / head_dim, head_dim };
                let mut att_apart = vec![0.0; n * q_len];
                let seqs: Vec<_> = caches_apart.iter().zip(rows).map(|((k, v), r)| (KvLayer { k, v }, r)).collect();
                b.attention_many(&q_apart, &seqs, shape, &mut att_apart).expect("attention");

                // All of it in one call (the writes ahead of attention in its section).
                let mut caches_one: Vec<(Vec<f32>, Vec<f32>)> = rows.iter().map(|_| (vec![], vec![])).collect();
                let mut writes: Vec<_> =
                    caches_one.iter_mut().zip(rows).map(|((k, v), r)| (KvLayer { k, v }, r)).collect();
                if reversed {
                    writes.reverse();
                }
                let mut att_one = vec![0.0; n * q_len];
                b.rope_kv_write_attention(
                    &mut q_one,
                    &mut k_one,
                    &v,
                    &positions,
                    &rope,
                    &mut writes,
                    shape,
                    &mut att_one,
                )
                .expect("rope_kv_write_attention");

                let case = format!("{acts:?}, reversed {reversed}");
                for (q, k, caches, what) in [
                    (&q_fused, &k_fused, &caches_fused, "per sequence"),
                    (&q_one, &k_one, &caches_one, "with attention"),
                ] {
                    assert_eq!(bits(q), bits(&q_apart), "{case}, {what}: queries");
                    assert_eq!(bits(k), bits(&k_apart), "{case}, {what}: keys");
                    for (fused, apart) in caches.iter().zip(&caches_apart) {
                        assert_eq!(bits(&fused.0), bits(&apart.0), "{case}, {what}: key cache");
                        assert_eq!(bits(&fused.1), bits(&apart.1), "{case}, {what}: value cache");
                    }
                }
                assert_eq!(bits(&att_one), bits(&att_apart), "{case}: attention");
                assert!(att_apart.iter().any(|&x| x != 0.0), "{case}: attention is not all zeros");
            }
        }
    }

    #[test]
    fn embed_rejects_ids_outside_the_table() {
        use std::sync::Arc;
        let owner: Arc<dyn crate::Backing> = Arc::new(vec![0u8; 2 * 32 * 4]);
        let q = QTensor::new(crate::GgmlType::F32, 2, 32, crate::SharedBytes::new(owner, 0, 256).expect("bytes"))
            .expect("tensor");
        let b = backend();
        let w = b.load_weight(&q, Inputs::Robust).expect("load");
        let mut out = vec![0.0; 32];
        assert!(b.embed(&w, &[2], &mut out).is_err());
        assert!(b.embed(&w, &[1], &mut out).is_ok());
    }
}
