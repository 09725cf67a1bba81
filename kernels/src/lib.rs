//! Realm kernels: the GGML tensor block formats (as laid out in GGUF files by llama.cpp's
//! `ggml-common.h`), their reference dequantization, and the compute backends behind the
//! [`Backend`] seam. Kernels know memory layouts and math, nothing about models.

pub mod backend;
pub mod cpu;
pub mod quant;

pub use backend::{
    AttentionShape, Backend, BackendKind, Inputs, KernelError, KvLayer, QTensor, Rope, RopeLayout, SeqRows, SharedBytes,
};
pub use quant::{GgmlType, QuantError};
