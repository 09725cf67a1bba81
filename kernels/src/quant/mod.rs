//! GGML block formats and their reference dequantization.

mod types;

pub use types::GgmlType;

/// Errors from quantized data handling.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("unknown ggml type id {id}")]
    UnknownType { id: u32 },
    #[error("ggml type {ty} is not supported for {what}")]
    Unsupported { ty: GgmlType, what: &'static str },
    #[error("{ty}: {elements} elements is not a multiple of the block size {block}")]
    NotBlockMultiple { ty: GgmlType, elements: u64, block: u64 },
    #[error("{ty}: expected {expected} bytes for {elements} elements, got {got}")]
    WrongByteLength { ty: GgmlType, elements: u64, expected: u64, got: u64 },
}
