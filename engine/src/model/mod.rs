//! Model forward passes. The llama family first.

mod config;
mod llama;

pub use config::LlamaConfig;
pub use llama::{KvCache, Llama, Logits, SeqStep};

use crate::gguf::GgufError;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Kernel(#[from] realm_kernels::KernelError),
    #[error("architecture {architecture:?} is not supported (supported: {supported})")]
    UnsupportedArchitecture { architecture: String, supported: String },
    #[error("rope scaling {kind:?} with factor {factor} is not supported; only unscaled rope is")]
    UnsupportedRopeScaling { kind: String, factor: f64 },
    #[error("hyperparameter {key} = {value}: {reason}")]
    BadHyperparameter { key: String, value: String, reason: String },
    #[error("tensor {name}: expected {expected} (rows x cols), found {found}")]
    TensorShape { name: String, expected: String, found: String },
    #[error("{tokens} tokens do not fit the context of {context} (sequence already holds {cached})")]
    ContextFull { tokens: usize, cached: usize, context: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("a step needs at least one token")]
    EmptyStep,
}
