//! Kernel launches queued and replayed as CUDA graphs.
//!
//! A decode step is about 180 small launches, and each launch costs the host a driver call and
//! the GPU a gap before the next kernel starts. Their arguments are the same step after step
//! (the same buffers; positions are read from device memory), so the launches are queued, and
//! the queue is submitted when anything else is about to touch the stream (a copy, a memset,
//! an allocation, a free, a wait) or a step ends. A run of launches whose shapes (kernels and
//! grids) were submitted before is built into a graph once, kept, and replayed from then on;
//! only the nodes whose arguments changed are updated before a replay. A run seen for the first
//! time, a short run, or any run when graphs are off (`REALM_CUDA_GRAPHS=0`) is launched kernel
//! by kernel.
//!
//! On sm_90 and later each launch also allows programmatic dependent launch (a stream
//! attribute for direct launches, programmatic edges in a graph): a kernel starts while the one
//! before it finishes and prefetches its weights until it must wait (kernels.cu, `step_wait`).
//! `REALM_CUDA_PDL=0` turns that off.

use std::collections::HashMap;
use std::ffi::c_void;
use std::ops::Range;
use std::ptr::null_mut;
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, CudaStream, DriverError, LaunchConfig, result, sys};

/// Runs shorter than this are launched directly: a graph would not pay for its bookkeeping.
const MIN_GRAPH_LAUNCHES: usize = 16;
/// Graphs kept, one per run shape (batch size, context bucket...); the least recently replayed
/// goes first.
const MAX_GRAPHS: usize = 32;

/// What must match for a graph to replay a run of launches: kernels, grids and argument sizes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Shape {
    func: usize,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    smem: u32,
    params: usize,
    words: usize,
}

/// A queued launch: its shape and where its arguments sit in the queue's words and offsets.
struct Queued {
    func: sys::CUfunction,
    shape: Shape,
    words: Range<usize>,
    params: Range<usize>,
}

/// One kernel's arguments as the driver takes them: each in its own run of 8-byte words (so
/// every argument is aligned), read through a pointer per argument.
#[derive(Default)]
pub(super) struct Args {
    words: Vec<u64>,
    /// The word each argument starts at.
    starts: Vec<usize>,
}

impl Args {
    pub(super) fn push(&mut self, bytes: &[u8]) {
        let start = self.words.len();
        self.starts.push(start);
        self.words.resize(start + bytes.len().div_ceil(8), 0);
        // SAFETY: the words from `start` hold at least `bytes.len()` bytes, and u64 storage
        // accepts any bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.words.as_mut_ptr().add(start).cast(), bytes.len());
        }
    }
}

/// Counts a caller can check that graphs are built and replayed (tests, bench logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Graphs built.
    pub built: u64,
    /// Runs submitted as a replay of a kept graph.
    pub replays: u64,
    /// Kernels launched one by one.
    pub direct: u64,
    /// Whole decode steps launched as one cooperative kernel.
    pub whole_steps: u64,
}

/// A built graph and the arguments its nodes hold now.
struct Built {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    nodes: Vec<sys::CUgraphNode>,
    words: Vec<u64>,
    ranges: Vec<Range<usize>>,
}

/// A run shape seen before: built into a graph the second time it is submitted.
struct Kept {
    built: Option<Built>,
    last_used: u64,
}

pub(super) struct Queue {
    stream: Arc<CudaStream>,
    /// The kernels' module, kept loaded while launches or graphs that name its kernels are.
    _module: Arc<CudaModule>,
    graphs_on: bool,
    /// Programmatic dependent launch between consecutive kernels.
    pdl: bool,
    queued: Vec<Queued>,
    /// Every queued argument, and the word each starts at.
    words: Vec<u64>,
    starts: Vec<usize>,
    kept: HashMap<Vec<Shape>, Kept>,
    clock: u64,
    stats: GraphStats,
    /// A submission's failure seen where it could not be returned (a free, the end of a
    /// step), returned by the next flush.
    failed: Option<DriverError>,
}

// SAFETY: the graph handles are only used under the mutex that holds the queue, and CUDA graph
// objects may be used from any thread when calls on them are serialised.
unsafe impl Send for Queue {}

impl Queue {
    /// A queue for `stream` and the kernels of `module`; `pdl_capable` says the GPU has
    /// programmatic dependent launch.
    pub(super) fn new(stream: Arc<CudaStream>, module: Arc<CudaModule>, pdl_capable: bool) -> Self {
        let on = |var: &str| std::env::var(var).map_or(true, |v| v != "0");
        Self {
            stream,
            _module: module,
            graphs_on: on("REALM_CUDA_GRAPHS"),
            pdl: pdl_capable && on("REALM_CUDA_PDL"),
            queued: Vec::new(),
            words: Vec::new(),
            starts: Vec::new(),
            kept: HashMap::new(),
            clock: 0,
            stats: GraphStats::default(),
            failed: None,
        }
    }

    pub(super) fn stats(&self) -> GraphStats {
        self.stats
    }

    /// How launches are submitted, for the start-up log line.
    pub(super) fn describe(&self) -> String {
        let on_off = |b: bool| if b { "on" } else { "off" };
        format!("CUDA graphs {}, programmatic launch {}", on_off(self.graphs_on), on_off(self.pdl))
    }

    /// Queues a launch of `func` (or launches it now when graphs are off).
    pub(super) fn launch(&mut self, func: &CudaFunction, cfg: LaunchConfig, args: Args) -> Result<(), DriverError> {
        let base = self.words.len();
        let first = self.starts.len();
        self.starts.extend(args.starts.iter().map(|s| base + s));
        self.words.extend_from_slice(&args.words);
        let shape = Shape {
            func: func.cu_function() as usize,
            grid: cfg.grid_dim,
            block: cfg.block_dim,
            smem: cfg.shared_mem_bytes,
            params: args.starts.len(),
            words: args.words.len(),
        };
        let queued =
            Queued { func: func.cu_function(), shape, words: base..self.words.len(), params: first..self.starts.len() };
        self.queued.push(queued);
        if !self.graphs_on {
            return self.flush();
        }
        Ok(())
    }

    /// Launches `func` now as a cooperative kernel (every block resident at once, so they may
    /// wait on each other), after the queued launches.
    pub(super) fn launch_cooperative(
        &mut self,
        func: &CudaFunction,
        cfg: LaunchConfig,
        mut args: Args,
    ) -> Result<(), DriverError> {
        self.flush()?;
        let mut pointers = Vec::new();
        argument_pointers(&mut args.words, &args.starts, &mut pointers);
        let mut cooperative = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue { cooperative: 1 },
        };
        let shape = (cfg.grid_dim, cfg.block_dim, cfg.shared_mem_bytes);
        self.stream.context().bind_to_thread()?;
        // SAFETY: `func` is a kernel of the loaded module, and the pointers point at its
        // arguments, in order, as the caller checked them.
        unsafe { launch_now(&self.stream, func.cu_function(), shape, &mut cooperative, 1, &mut pointers)? };
        self.stats.whole_steps += 1;
        Ok(())
    }

    /// Submits every queued launch to the stream, in order.
    pub(super) fn flush(&mut self) -> Result<(), DriverError> {
        if !self.queued.is_empty() {
            let result = self.stream.context().bind_to_thread().and_then(|()| {
                if self.graphs_on && self.queued.len() >= MIN_GRAPH_LAUNCHES {
                    self.submit_as_graph()
                } else {
                    self.submit_directly()
                }
            });
            self.queued.clear();
            self.words.clear();
            self.starts.clear();
            result?;
        }
        self.failed.take().map_or(Ok(()), Err)
    }

    /// [`Queue::flush`] where an error cannot be returned: it is kept for the next flush.
    pub(super) fn flush_or_keep_error(&mut self) {
        if let Err(e) = self.flush() {
            self.failed = Some(e);
        }
    }

    fn submit_directly(&mut self) -> Result<(), DriverError> {
        let mut pointers = Vec::new();
        let mut pdl = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue { programmaticStreamSerializationAllowed: 1 },
        };
        for q in &self.queued {
            argument_pointers(&mut self.words, &self.starts[q.params.clone()], &mut pointers);
            let Shape { grid, block, smem, .. } = q.shape;
            // SAFETY: `func` is a kernel of the loaded module, and the pointers point at its
            // arguments, in order, as the caller that queued it checked them.
            unsafe {
                launch_now(&self.stream, q.func, (grid, block, smem), &mut pdl, u32::from(self.pdl), &mut pointers)?
            };
        }
        self.stats.direct += self.queued.len() as u64;
        Ok(())
    }

    fn submit_as_graph(&mut self) -> Result<(), DriverError> {
        self.clock += 1;
        let shapes: Vec<Shape> = self.queued.iter().map(|q| q.shape.clone()).collect();
        let Some(kept) = self.kept.get_mut(&shapes) else {
            if self.kept.len() >= MAX_GRAPHS
                && let Some(oldest) = self.kept.iter().min_by_key(|(_, k)| k.last_used).map(|(s, _)| s.clone())
            {
                self.kept.remove(&oldest);
            }
            self.kept.insert(shapes, Kept { built: None, last_used: self.clock });
            return self.submit_directly();
        };
        kept.last_used = self.clock;
        let built = match &mut kept.built {
            Some(built) => {
                update(built, &self.queued, &mut self.words, &self.starts)?;
                built
            }
            None => {
                self.stats.built += 1;
                kept.built.insert(build(&self.queued, &mut self.words, &self.starts, self.pdl)?)
            }
        };
        // SAFETY: the graph was built for this context and the stream is the backend's.
        unsafe { result::graph::launch(built.exec, self.stream.cu_stream())? };
        self.stats.replays += 1;
        Ok(())
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Nothing is left to report an error to. The kept graphs are destroyed here, with the
        // context current: the fields are dropped after this body in declaration order, and
        // `stream` and `_module` may hold the context's last references. Destroying a graph
        // after its context was released hung the process at exit (seen on an H200).
        let _ = self.flush();
        let _ = self.stream.context().bind_to_thread();
        self.kept.clear();
    }
}

impl Drop for Built {
    fn drop(&mut self) {
        // A failure leaks the graph, which is all that could be done.
        // SAFETY: made by `build` and owned here alone; a replay already launched keeps its own
        // reference until it completes.
        unsafe {
            let _ = result::graph::exec_destroy(self.exec);
            let _ = result::graph::destroy(self.graph);
        }
    }
}

/// Launches `func` on `stream` now with grid, block and shared memory `shape`, under the first
/// `attrs` of `attr` (0 or 1).
///
/// # Safety
/// `func` is a kernel of a module loaded in the stream's context, and `pointers` point at its
/// arguments, in order.
unsafe fn launch_now(
    stream: &CudaStream,
    func: sys::CUfunction,
    (grid, block, smem): ((u32, u32, u32), (u32, u32, u32), u32),
    attr: &mut sys::CUlaunchAttribute,
    attrs: u32,
    pointers: &mut [*mut c_void],
) -> Result<(), DriverError> {
    let config = sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block.0,
        blockDimY: block.1,
        blockDimZ: block.2,
        sharedMemBytes: smem,
        hStream: stream.cu_stream(),
        attrs: attr,
        numAttrs: attrs,
    };
    // SAFETY: as the caller promises; the driver copies the configuration and arguments.
    unsafe { sys::cuLaunchKernelEx(&config, func, pointers.as_mut_ptr(), null_mut()).result() }
}

/// Fills `pointers` with a pointer to each argument starting at `starts`.
fn argument_pointers(words: &mut [u64], starts: &[usize], pointers: &mut Vec<*mut c_void>) {
    pointers.clear();
    let base = words.as_mut_ptr();
    // SAFETY: every start is inside `words` (pushed with its argument's words).
    pointers.extend(starts.iter().map(|&s| unsafe { base.add(s) }.cast::<c_void>()));
}

/// The node parameters of a queued launch; `pointers` must outlive their use.
fn node_params(q: &Queued, pointers: &mut [*mut c_void]) -> sys::CUDA_KERNEL_NODE_PARAMS {
    let Shape { grid, block, smem, .. } = q.shape;
    sys::CUDA_KERNEL_NODE_PARAMS {
        func: q.func,
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block.0,
        blockDimY: block.1,
        blockDimZ: block.2,
        sharedMemBytes: smem,
        kernelParams: pointers.as_mut_ptr(),
        extra: null_mut(),
        kern: null_mut(),
        ctx: null_mut(),
    }
}

/// A graph of the queued launches, each depending on the one before (one stream's order; a
/// programmatic edge with `pdl`).
fn build(queued: &[Queued], words: &mut [u64], starts: &[usize], pdl: bool) -> Result<Built, DriverError> {
    let mut graph = null_mut();
    // SAFETY: creates an empty graph, destroyed below on failure or with the `Built`.
    unsafe { sys::cuGraphCreate(&mut graph, 0).result()? };
    let mut nodes: Vec<sys::CUgraphNode> = Vec::with_capacity(queued.len());
    let mut pointers = Vec::new();
    let mut add = || -> Result<sys::CUgraphExec, DriverError> {
        for q in queued {
            argument_pointers(words, &starts[q.params.clone()], &mut pointers);
            let params = node_params(q, &mut pointers);
            let mut node = null_mut();
            // SAFETY: the driver copies the parameters and the arguments they point at.
            unsafe { sys::cuGraphAddKernelNode_v2(&mut node, graph, std::ptr::null(), 0, &params).result()? };
            if let Some(last) = nodes.last() {
                let edge = sys::CUgraphEdgeData {
                    from_port: if pdl { sys::CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC as u8 } else { 0 },
                    to_port: 0,
                    type_: if pdl {
                        sys::CUgraphDependencyType::CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC as u8
                    } else {
                        0
                    },
                    reserved: [0; 5],
                };
                // SAFETY: both nodes belong to this graph.
                unsafe { sys::cuGraphAddDependencies_v2(graph, last, &node, &edge, 1).result()? };
            }
            nodes.push(node);
        }
        // SAFETY: the graph was just built.
        unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) }
    };
    match add() {
        Ok(exec) => Ok(Built {
            graph,
            exec,
            nodes,
            words: words.to_vec(),
            ranges: queued.iter().map(|q| q.words.clone()).collect(),
        }),
        Err(e) => {
            // SAFETY: created above and not used elsewhere.
            unsafe {
                let _ = result::graph::destroy(graph);
            }
            Err(e)
        }
    }
}

/// Gives the nodes whose arguments differ from the queued launches' the new arguments.
fn update(built: &mut Built, queued: &[Queued], words: &mut [u64], starts: &[usize]) -> Result<(), DriverError> {
    let mut pointers = Vec::new();
    for ((q, node), held) in queued.iter().zip(&built.nodes).zip(&built.ranges) {
        if words[q.words.clone()] == built.words[held.clone()] {
            continue;
        }
        argument_pointers(words, &starts[q.params.clone()], &mut pointers);
        let params = node_params(q, &mut pointers);
        // SAFETY: the node belongs to this graph and keeps its kernel and grid.
        unsafe { sys::cuGraphExecKernelNodeSetParams_v2(built.exec, *node, &params).result()? };
        built.words[held.clone()].copy_from_slice(&words[q.words.clone()]);
    }
    Ok(())
}
