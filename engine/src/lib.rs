//! Realm engine: reads GGUF models (memory-mapped), tokenizes with the vocabulary stored in
//! the file, renders chat templates, runs the llama-family forward pass over a KV cache
//! through a [`realm_kernels::Backend`], and samples tokens.

pub mod chat;
pub mod engine;
pub mod gguf;
pub mod model;
pub mod sampler;
pub mod scheduler;
pub mod stop;
pub mod tokenizer;
pub mod worker;

pub use engine::{
    BackendChoice, Engine, EngineError, EngineOptions, FinishReason, GenerateParams, Generation, Precision, TokenEvent,
};
