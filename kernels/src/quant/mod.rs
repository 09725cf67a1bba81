//! GGML block formats, their reference dequantization, and reference quantization.

mod blocks;
mod dequant;
mod quantize;
mod types;

pub use blocks::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8K,
    K_SCALE_SIZE, QK, QK_K, f16_bits_to_f32, scale_min_k4,
};
pub use dequant::dequantize_row;
pub use quantize::{quantize_row, quantize_row_parallel};
pub use types::{GgmlType, ROW_FORMATS};

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
    #[error("{ty}: the byte size of {elements} elements overflows u64")]
    TooLarge { ty: GgmlType, elements: u64 },
    #[error("{ty}: element {index} is {value}; only finite values can be quantized")]
    NonFinite { ty: GgmlType, index: u64, value: f32 },
    #[error("{ty}: block {block} (largest magnitude {max_abs:e}) does not fit: its 16-bit scale or value overflows")]
    Overflow { ty: GgmlType, block: u64, max_abs: f32 },
}
