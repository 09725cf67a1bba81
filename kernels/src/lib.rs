//! Realm kernels: the GGML tensor block formats (as laid out in GGUF files by llama.cpp's
//! `ggml-common.h`), their reference dequantization, and the compute backends behind the
//! [`Backend`] seam. Kernels know memory layouts and math, nothing about models.

pub mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod quant;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use backend::{
    AttentionShape, Backend, BackendKind, Backing, Inputs, KernelError, KvLayer, LlamaLayer, LlamaWeights, QTensor,
    Rope, RopeLayout, SeqRows, SharedBytes, argmax,
};
pub use device::{Device, DeviceTensor, DeviceWeight};
pub use quant::{GgmlType, QuantError};
