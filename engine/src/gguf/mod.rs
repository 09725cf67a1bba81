//! GGUF reader (format versions 2 and 3, as specified in ggml's `docs/gguf.md`).
//!
//! The file is memory-mapped and never copied: tensor data are slices of the map. Everything
//! read from the file is untrusted: every count, length, offset and dimension is checked
//! against the bytes that are actually there before it is used or allocated for.

mod parse;
mod value;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, UncheckedAdvice};
use realm_kernels::{Backing, GgmlType, QTensor, SharedBytes};

pub use parse::{MAX_ARRAY_DEPTH, MAX_DIMS};
pub use value::{Array, Value, ValueType};
pub use writer::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GgufWriteError, GgufWriter, MAX_TENSOR_NAME_BYTES};

/// Errors from reading a GGUF file. Parse errors name the field and its byte offset.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("bad GGUF file at offset {offset} ({field}): {reason}")]
    Malformed { field: String, offset: u64, reason: String },
    #[error("metadata key {key:?} is missing")]
    MissingKey { key: String },
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: String },
    #[error("tensor {name:?} is missing")]
    MissingTensor { name: String },
}

/// One tensor's description from the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as GGML stores them.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the file (already checked to lie in the file).
    pub file_offset: u64,
    pub byte_size: u64,
}

impl TensorInfo {
    pub fn element_count(&self) -> u64 {
        // Checked not to overflow while parsing.
        self.dims.iter().product()
    }
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Backing for Bytes {
    fn release(&self, range: std::ops::Range<usize>) {
        if let Bytes::Mapped(m) = self {
            // SAFETY: the map is private and read-only, so dropped pages hold nothing that is
            // not in the file: a later read faults them back in from it. The result is only
            // advice, and a failure leaves the pages where they were.
            let _ = unsafe { m.unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, range.len()) };
        }
    }
}

/// A parsed GGUF file: header, metadata and tensor table, with the data left in the map.
pub struct GgufFile {
    bytes: Arc<Bytes>,
    pub version: u32,
    pub alignment: u64,
    /// Where the tensor data section starts.
    pub data_offset: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Opens and memory-maps a file.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let open_err = |source| GgufError::Open { path: path.display().to_string(), source };
        let file = File::open(path).map_err(open_err)?;
        // SAFETY: the map is read-only; a model file changed underneath a running process is
        // outside what any mmap-based loader (llama.cpp included) can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(open_err)?;
        Self::from_bytes_inner(Bytes::Mapped(map))
    }

    /// Parses a file already in memory (tests, fuzzing).
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::from_bytes_inner(Bytes::Owned(bytes))
    }

    fn from_bytes_inner(bytes: Bytes) -> Result<Self, GgufError> {
        let header = parse::parse(bytes.as_slice())?;
        let key_index = header.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Self {
            bytes: Arc::new(bytes),
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata: header.metadata,
            tensors: header.tensors,
            key_index,
            tensor_index,
        })
    }

    pub fn file_size(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Moves a string array out of the metadata (leaving it empty) when the caller is its last
    /// reader: a vocabulary is ~100k strings, and copying them is a tenth of a cold start.
    pub fn take_strings(&mut self, key: &str) -> Option<Vec<String>> {
        let i = *self.key_index.get(key)?;
        match &mut self.metadata[i].1 {
            Value::Array(Array::String(v)) => Some(std::mem::take(v)),
            _ => None,
        }
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey { key: key.to_string() })
    }

    fn wrong(key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongType { key: key.to_string(), expected, found: v.value_type().to_string() }
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| Self::wrong(key, "non-negative integer", v))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| Self::wrong(key, "number", v))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "string", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| Self::wrong(key, "bool", v))
    }

    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| Self::wrong(key, "array", v))
    }

    /// `general.architecture`, which prefixes the model's hyperparameter keys.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor { name: name.to_string() })
    }

    /// The tensor's bytes, borrowed from the map.
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8], GgufError> {
        let bytes = self.bytes.as_slice();
        usize::try_from(info.file_offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(usize::try_from(info.byte_size).ok()?)?))
            .and_then(|range| bytes.get(range))
            .ok_or_else(|| GgufError::Malformed {
                field: format!("tensor {:?} data", info.name),
                offset: info.file_offset,
                reason: format!("{} bytes do not lie inside the {}-byte file", info.byte_size, bytes.len()),
            })
    }

    /// A 2-D (or 1-D) tensor as a matrix sharing the file's memory: `dims[0]` columns and
    /// `dims[1]` rows.
    pub fn qtensor(&self, name: &str) -> Result<QTensor, GgufError> {
        let info = self.require_tensor(name)?;
        let bad = |reason: String| GgufError::Malformed {
            field: format!("tensor {name:?}"),
            offset: info.file_offset,
            reason,
        };
        if info.dims.len() > 2 || info.dims.iter().skip(2).any(|&d| d != 1) {
            return Err(bad(format!("expected a matrix, found dims {:?}", info.dims)));
        }
        let cols = usize::try_from(info.dims[0]).map_err(|e| bad(e.to_string()))?;
        let rows = usize::try_from(info.dims.get(1).copied().unwrap_or(1)).map_err(|e| bad(e.to_string()))?;
        let owner: Arc<dyn Backing> = self.bytes.clone();
        let bytes = SharedBytes::new(owner, info.file_offset as usize, info.byte_size as usize)
            .ok_or_else(|| bad("data lies outside the file".into()))?;
        QTensor::new(info.ggml_type, rows, cols, bytes).map_err(|e| bad(e.to_string()))
    }
}
