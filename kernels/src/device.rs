//! One [`Backend`] that is whichever backend was chosen at start, so the engine is written
//! once and the choice (`--backend`) is made at run time. Each op dispatches with one `match`
//! per call, which is nothing next to the op itself.

use crate::backend::{
    AttentionShape, Backend, BackendKind, Inputs, KernelError, KvLayer, LlamaWeights, QTensor, Rope, SeqRows,
};
use crate::cpu::{Cpu, CpuWeight};
#[cfg(feature = "cuda")]
use crate::cuda::{Cuda, CudaTensor, CudaWeight};
#[cfg(feature = "wgpu")]
use crate::wgpu::{Wgpu, WgpuTensor, WgpuWeight};

pub enum Device {
    Cpu(Cpu),
    // Boxed: a GPU backend's handles and kernel table dwarf the CPU's.
    #[cfg(feature = "cuda")]
    Cuda(Box<Cuda>),
    #[cfg(feature = "wgpu")]
    Wgpu(Box<Wgpu>),
}

pub enum DeviceTensor {
    Cpu(Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(CudaTensor),
    #[cfg(feature = "wgpu")]
    Wgpu(WgpuTensor),
}

pub enum DeviceWeight {
    Cpu(CpuWeight),
    #[cfg(feature = "cuda")]
    Cuda(CudaWeight),
    #[cfg(feature = "wgpu")]
    Wgpu(WgpuWeight),
}

impl Device {
    /// The CPU kernels' instruction set (`REALM_CPU_ISA`'s names), on the CPU backend.
    pub fn cpu_isa(&self) -> Option<&'static str> {
        match self {
            Device::Cpu(c) => Some(c.isa_name()),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => None,
            #[cfg(feature = "wgpu")]
            Device::Wgpu(_) => None,
        }
    }

    /// CPU threads the backend runs on (a GPU backend's host side counts as one).
    pub fn threads(&self) -> usize {
        match self {
            Device::Cpu(c) => c.threads(),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => 1,
            #[cfg(feature = "wgpu")]
            Device::Wgpu(_) => 1,
        }
    }
}

/// The part of a `DeviceTensor`/`DeviceWeight` that belongs to one backend, or an error when
/// a tensor of another backend is passed in (which the engine never does).
trait Part<T> {
    fn part(self) -> Result<T, KernelError>;
}

macro_rules! parts {
    ($variant:ident, $kind:expr, $tensor:ty, $weight:ty) => {
        impl<'a> Part<&'a $tensor> for &'a DeviceTensor {
            fn part(self) -> Result<&'a $tensor, KernelError> {
                match self {
                    DeviceTensor::$variant(t) => Ok(t),
                    #[allow(unreachable_patterns)]
                    _ => Err(foreign($kind)),
                }
            }
        }
        impl<'a> Part<&'a mut $tensor> for &'a mut DeviceTensor {
            fn part(self) -> Result<&'a mut $tensor, KernelError> {
                match self {
                    DeviceTensor::$variant(t) => Ok(t),
                    #[allow(unreachable_patterns)]
                    _ => Err(foreign($kind)),
                }
            }
        }
        impl<'a> Part<&'a $weight> for &'a DeviceWeight {
            fn part(self) -> Result<&'a $weight, KernelError> {
                match self {
                    DeviceWeight::$variant(w) => Ok(w),
                    #[allow(unreachable_patterns)]
                    _ => Err(foreign($kind)),
                }
            }
        }
    };
}

/// One backend's parts of matmul jobs (weight, output).
fn job_parts<'a, W, T>(
    jobs: &'a mut [(&DeviceWeight, &mut DeviceTensor)],
) -> Result<Vec<(&'a W, &'a mut T)>, KernelError>
where
    &'a DeviceWeight: Part<&'a W>,
    &'a mut DeviceTensor: Part<&'a mut T>,
{
    jobs.iter_mut().map(|(w, out)| Ok(((*w).part()?, (&mut **out).part()?))).collect()
}

/// One backend's parts of KV writes (a layer's caches, the rows to write).
fn kv_parts<'a, T>(
    writes: &'a mut [(KvLayer<&mut DeviceTensor>, SeqRows)],
) -> Result<Vec<(KvLayer<&'a mut T>, SeqRows)>, KernelError>
where
    &'a mut DeviceTensor: Part<&'a mut T>,
{
    writes
        .iter_mut()
        .map(|(cache, rows)| Ok((KvLayer { k: (&mut *cache.k).part()?, v: (&mut *cache.v).part()? }, *rows)))
        .collect()
}

fn foreign(backend: BackendKind) -> KernelError {
    KernelError::Device { backend, reason: "a tensor of another backend was passed in".into() }
}

parts!(Cpu, BackendKind::Cpu, Vec<f32>, CpuWeight);
#[cfg(feature = "cuda")]
parts!(Cuda, BackendKind::Cuda, CudaTensor, CudaWeight);
#[cfg(feature = "wgpu")]
parts!(Wgpu, BackendKind::Wgpu, WgpuTensor, WgpuWeight);

/// Runs `$body` with `$b` bound to the chosen backend.
macro_rules! dispatch {
    ($self:expr, |$b:ident| $body:expr) => {
        match $self {
            Device::Cpu($b) => $body,
            #[cfg(feature = "cuda")]
            Device::Cuda($b) => $body,
            #[cfg(feature = "wgpu")]
            Device::Wgpu($b) => $body,
        }
    };
}

impl Backend for Device {
    type Tensor = DeviceTensor;
    type Weight = DeviceWeight;

    fn kind(&self) -> BackendKind {
        dispatch!(self, |b| b.kind())
    }

    fn load_weight(&self, w: &QTensor, inputs: Inputs) -> Result<DeviceWeight, KernelError> {
        match self {
            Device::Cpu(b) => b.load_weight(w, inputs).map(DeviceWeight::Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.load_weight(w, inputs).map(DeviceWeight::Cuda),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(b) => b.load_weight(w, inputs).map(DeviceWeight::Wgpu),
        }
    }

    fn kv_row_bytes(&self, row_len: usize) -> usize {
        dispatch!(self, |b| b.kv_row_bytes(row_len))
    }

    fn step_done(&self) {
        dispatch!(self, |b| b.step_done())
    }

    fn weight_rows(&self, w: &DeviceWeight) -> usize {
        match w {
            DeviceWeight::Cpu(w) => w.q.rows,
            #[cfg(feature = "cuda")]
            DeviceWeight::Cuda(w) => w.rows(),
            #[cfg(feature = "wgpu")]
            DeviceWeight::Wgpu(w) => w.rows(),
        }
    }

    fn zeros(&self, len: usize) -> Result<DeviceTensor, KernelError> {
        match self {
            Device::Cpu(b) => b.zeros(len).map(DeviceTensor::Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.zeros(len).map(DeviceTensor::Cuda),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(b) => b.zeros(len).map(DeviceTensor::Wgpu),
        }
    }

    fn upload(&self, data: &[f32]) -> Result<DeviceTensor, KernelError> {
        match self {
            Device::Cpu(b) => b.upload(data).map(DeviceTensor::Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.upload(data).map(DeviceTensor::Cuda),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(b) => b.upload(data).map(DeviceTensor::Wgpu),
        }
    }

    fn embed(&self, table: &DeviceWeight, ids: &[u32], out: &mut DeviceTensor) -> Result<(), KernelError> {
        dispatch!(self, |b| b.embed(table.part()?, ids, out.part()?))
    }

    fn rms_norm(
        &self,
        x: &DeviceTensor,
        w: &DeviceWeight,
        eps: f32,
        out: &mut DeviceTensor,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| b.rms_norm(x.part()?, w.part()?, eps, out.part()?))
    }

    fn matmul(&self, w: &DeviceWeight, x: &DeviceTensor, n: usize, out: &mut DeviceTensor) -> Result<(), KernelError> {
        dispatch!(self, |b| b.matmul(w.part()?, x.part()?, n, out.part()?))
    }

    fn matmuls(
        &self,
        x: &DeviceTensor,
        n: usize,
        jobs: &mut [(&DeviceWeight, &mut DeviceTensor)],
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| {
            let mut own = job_parts(jobs)?;
            b.matmuls(x.part()?, n, &mut own)
        })
    }

    fn matmul_add(
        &self,
        w: &DeviceWeight,
        x: &DeviceTensor,
        n: usize,
        out: &mut DeviceTensor,
        scratch: &mut DeviceTensor,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| b.matmul_add(w.part()?, x.part()?, n, out.part()?, scratch.part()?))
    }

    fn matmul_swiglu(
        &self,
        x: &DeviceTensor,
        n: usize,
        gate: &DeviceWeight,
        up: &DeviceWeight,
        out: &mut DeviceTensor,
        scratch: &mut DeviceTensor,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| b.matmul_swiglu(x.part()?, n, gate.part()?, up.part()?, out.part()?, scratch.part()?))
    }

    fn norm_matmuls(
        &self,
        x: &DeviceTensor,
        norm: &DeviceWeight,
        eps: f32,
        n: usize,
        jobs: &mut [(&DeviceWeight, &mut DeviceTensor)],
        normed: &mut DeviceTensor,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| {
            let mut own = job_parts(jobs)?;
            b.norm_matmuls(x.part()?, norm.part()?, eps, n, &mut own, normed.part()?)
        })
    }

    fn norm_matmul_swiglu(
        &self,
        x: &DeviceTensor,
        norm: &DeviceWeight,
        eps: f32,
        n: usize,
        gate: &DeviceWeight,
        up: &DeviceWeight,
        out: &mut DeviceTensor,
        scratch: &mut DeviceTensor,
        normed: &mut DeviceTensor,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| {
            let (x, norm, gate, up) = (x.part()?, norm.part()?, gate.part()?, up.part()?);
            b.norm_matmul_swiglu(x, norm, eps, n, gate, up, out.part()?, scratch.part()?, normed.part()?)
        })
    }

    fn rope_kv_write(
        &self,
        q: &mut DeviceTensor,
        k: &mut DeviceTensor,
        vv: &DeviceTensor,
        head_dim: usize,
        positions: &[u32],
        rope: &Rope,
        writes: &mut [(KvLayer<&mut DeviceTensor>, SeqRows)],
        row_len: usize,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| {
            let mut own = kv_parts(writes)?;
            b.rope_kv_write(q.part()?, k.part()?, vv.part()?, head_dim, positions, rope, &mut own, row_len)
        })
    }

    fn rope_kv_write_attention(
        &self,
        q: &mut DeviceTensor,
        k: &mut DeviceTensor,
        vv: &DeviceTensor,
        positions: &[u32],
        rope: &Rope,
        writes: &mut [(KvLayer<&mut DeviceTensor>, SeqRows)],
        shape: AttentionShape,
        out: &mut DeviceTensor,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| {
            let mut own = kv_parts(writes)?;
            b.rope_kv_write_attention(q.part()?, k.part()?, vv.part()?, positions, rope, &mut own, shape, out.part()?)
        })
    }

    fn rope(&self, x: &mut DeviceTensor, head_dim: usize, positions: &[u32], rope: &Rope) -> Result<(), KernelError> {
        dispatch!(self, |b| b.rope(x.part()?, head_dim, positions, rope))
    }

    fn kv_write(
        &self,
        cache: KvLayer<&mut DeviceTensor>,
        k: &DeviceTensor,
        vv: &DeviceTensor,
        rows: SeqRows,
        row_len: usize,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| {
            let cache = KvLayer { k: cache.k.part()?, v: cache.v.part()? };
            b.kv_write(cache, k.part()?, vv.part()?, rows, row_len)
        })
    }

    fn kv_write_many(
        &self,
        writes: &mut [(KvLayer<&mut DeviceTensor>, SeqRows)],
        k: &DeviceTensor,
        vv: &DeviceTensor,
        row_len: usize,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| {
            let mut own = kv_parts(writes)?;
            b.kv_write_many(&mut own, k.part()?, vv.part()?, row_len)
        })
    }

    fn rope_qk(
        &self,
        q: &mut DeviceTensor,
        k: &mut DeviceTensor,
        head_dim: usize,
        positions: &[u32],
        rope: &Rope,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| b.rope_qk(q.part()?, k.part()?, head_dim, positions, rope))
    }

    fn attention(
        &self,
        q: &DeviceTensor,
        cache: KvLayer<&DeviceTensor>,
        rows: SeqRows,
        shape: AttentionShape,
        out: &mut DeviceTensor,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| {
            let cache = KvLayer { k: cache.k.part()?, v: cache.v.part()? };
            b.attention(q.part()?, cache, rows, shape, out.part()?)
        })
    }

    fn attention_many(
        &self,
        q: &DeviceTensor,
        seqs: &[(KvLayer<&DeviceTensor>, SeqRows)],
        shape: AttentionShape,
        out: &mut DeviceTensor,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| {
            let mut own = Vec::with_capacity(seqs.len());
            for (cache, rows) in seqs {
                own.push((KvLayer { k: cache.k.part()?, v: cache.v.part()? }, *rows));
            }
            b.attention_many(q.part()?, &own, shape, out.part()?)
        })
    }

    fn gather_rows(
        &self,
        src: &DeviceTensor,
        rows: &[usize],
        row_len: usize,
        out: &mut DeviceTensor,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| b.gather_rows(src.part()?, rows, row_len, out.part()?))
    }

    fn silu_mul(&self, gate: &mut DeviceTensor, up: &DeviceTensor, len: usize) -> Result<(), KernelError> {
        dispatch!(self, |b| b.silu_mul(gate.part()?, up.part()?, len))
    }

    fn add(&self, x: &mut DeviceTensor, y: &DeviceTensor, len: usize) -> Result<(), KernelError> {
        dispatch!(self, |b| b.add(x.part()?, y.part()?, len))
    }

    fn synchronize(&self) -> Result<(), KernelError> {
        dispatch!(self, |b| b.synchronize())
    }

    fn read_rows(
        &self,
        t: &DeviceTensor,
        rows: std::ops::Range<usize>,
        row_len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        dispatch!(self, |b| b.read_rows(t.part()?, rows, row_len, out))
    }

    fn argmax_rows(&self, t: &DeviceTensor, rows: usize, row_len: usize) -> Result<Vec<Option<u32>>, KernelError> {
        dispatch!(self, |b| b.argmax_rows(t.part()?, rows, row_len))
    }

    fn decodes_whole_steps(&self) -> bool {
        dispatch!(self, |b| b.decodes_whole_steps())
    }

    fn llama_decode_one(
        &self,
        model: &LlamaWeights<'_, DeviceWeight>,
        token: u32,
        position: usize,
        cache: &mut [KvLayer<&mut DeviceTensor>],
    ) -> Result<Option<DeviceTensor>, KernelError> {
        macro_rules! forward {
            ($b:ident, $variant:ident) => {{
                let layers = model.layers.iter().map(|l| l.try_map(|w| (*w).part())).collect::<Result<_, _>>()?;
                let own = LlamaWeights {
                    token_embd: model.token_embd.part()?,
                    layers,
                    output_norm: model.output_norm.part()?,
                    output: model.output.part()?,
                    shape: model.shape,
                    rope: model.rope,
                    eps: model.eps,
                };
                let mut caches = cache
                    .iter_mut()
                    .map(|c| Ok(KvLayer { k: (&mut *c.k).part()?, v: (&mut *c.v).part()? }))
                    .collect::<Result<Vec<_>, KernelError>>()?;
                Ok($b.llama_decode_one(&own, token, position, &mut caches)?.map(DeviceTensor::$variant))
            }};
        }
        if !self.decodes_whole_steps() {
            return Ok(None);
        }
        match self {
            Device::Cpu(b) => forward!(b, Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => forward!(b, Cuda),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(b) => forward!(b, Wgpu),
        }
    }

    fn read_row(&self, t: &DeviceTensor, row: usize, row_len: usize, out: &mut Vec<f32>) -> Result<(), KernelError> {
        dispatch!(self, |b| b.read_row(t.part()?, row, row_len, out))
    }
}

#[cfg(test)]
mod tests {
    /// Names of the `fn`s declared one indent in, from the line starting `start` to the next
    /// line that is a lone `}`.
    fn methods(source: &str, start: &str) -> Vec<String> {
        let mut names: Vec<String> = source
            .lines()
            .skip_while(|l| !l.starts_with(start))
            .take_while(|l| *l != "}")
            .filter_map(|l| l.strip_prefix("    fn "))
            .filter_map(|l| l.split(['(', '<']).next())
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }

    /// A trait method with a default body that `Device` does not forward runs the default for
    /// every backend, silently: the CUDA backend's fused kernels were once skipped that way.
    #[test]
    fn device_forwards_every_backend_method() {
        let trait_methods = methods(include_str!("backend.rs"), "pub trait Backend");
        let forwarded = methods(include_str!("device.rs"), "impl Backend for Device");
        assert!(trait_methods.len() > 20, "parsed {trait_methods:?}");
        assert_eq!(trait_methods, forwarded);
    }
}
