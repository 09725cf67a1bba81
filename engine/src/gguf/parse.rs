//! The byte-level GGUF header parser.

use realm_kernels::GgmlType;

use super::value::{Array, Value, ValueType};
use super::{GgufError, TensorInfo};

/// GGML tensors have at most four dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused: no real model nests past two levels, and
/// the limit keeps a crafted file from exhausting the stack.
pub const MAX_ARRAY_DEPTH: usize = 8;
const DEFAULT_ALIGNMENT: u64 = 32;
/// Elements reserved up front for a string or array list. Counts are bounded by the bytes
/// left, but a `String` or a nested `Array` takes more memory than its smallest encoding, so
/// a crafted count could still reserve several times the file size; past this the vector
/// grows as elements actually parse.
const MAX_PREALLOC: usize = 1 << 16;

pub(super) struct Header {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, field: &str, offset: usize, reason: impl Into<String>) -> GgufError {
        GgufError::Malformed { field: field.to_string(), offset: offset as u64, reason: reason.into() }
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], GgufError> {
        let start = self.pos;
        let end = start.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            self.err(field, start, format!("needs {n} bytes but the file ends after {}", self.remaining()))
        })?;
        self.pos = end;
        Ok(&self.bytes[start..end])
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], GgufError> {
        let b = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, field: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A count that will drive a loop or an allocation: it must fit in the bytes left,
    /// given the least each item takes.
    fn count(&mut self, field: &str, min_item_size: u64) -> Result<usize, GgufError> {
        let at = self.pos;
        let n = self.u64(field)?;
        let fits = n.checked_mul(min_item_size).is_some_and(|b| b <= self.remaining());
        if !fits {
            return Err(self.err(
                field,
                at,
                format!(
                    "count {n} needs at least {min_item_size} bytes each but only {} bytes remain",
                    self.remaining()
                ),
            ));
        }
        usize::try_from(n).map_err(|_| self.err(field, at, format!("count {n} does not fit in memory")))
    }

    fn string(&mut self, field: &str) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.u64(field)?;
        let len = usize::try_from(len).ok().filter(|&l| l as u64 <= self.remaining()).ok_or_else(|| {
            self.err(field, at, format!("string length {len} but only {} bytes remain", self.remaining()))
        })?;
        let raw = self.take(len, field)?;
        String::from_utf8(raw.to_vec()).map_err(|e| self.err(field, at, format!("string is not UTF-8: {e}")))
    }

    fn value_type(&mut self, field: &str) -> Result<ValueType, GgufError> {
        let at = self.pos;
        let id = self.u32(field)?;
        ValueType::from_id(id).ok_or_else(|| self.err(field, at, format!("unknown value type id {id}")))
    }

    fn value(&mut self, ty: ValueType, field: &str, depth: usize) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(field)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(field)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(field)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(field)?)),
            ValueType::U32 => Value::U32(self.u32(field)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            ValueType::Bool => Value::Bool(self.bool(field)?),
            ValueType::String => Value::String(self.string(field)?),
            ValueType::Array => Value::Array(self.array_value(field, depth + 1)?),
            ValueType::U64 => Value::U64(self.u64(field)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(field)?)),
        })
    }

    fn bool(&mut self, field: &str) -> Result<bool, GgufError> {
        let at = self.pos;
        match self.array::<1>(field)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(field, at, format!("bool byte is {b}, not 0 or 1"))),
        }
    }

    fn array_value(&mut self, field: &str, depth: usize) -> Result<Array, GgufError> {
        let at = self.pos;
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.err(field, at, format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels")));
        }
        let ty = self.value_type(field)?;
        let n = self.count(field, ty.min_encoded_size())?;
        fn fixed<'a, T, const N: usize>(
            c: &mut Cursor<'a>,
            n: usize,
            field: &str,
            conv: fn([u8; N]) -> T,
        ) -> Result<Vec<T>, GgufError> {
            // The count was bounded by the bytes left, so this allocation is at most the file.
            let raw = c.take(n * N, field)?;
            Ok(raw
                .chunks_exact(N)
                .map(|ch| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(ch);
                    conv(a)
                })
                .collect())
        }
        Ok(match ty {
            ValueType::U8 => Array::U8(fixed(self, n, field, u8::from_le_bytes)?),
            ValueType::I8 => Array::I8(fixed(self, n, field, i8::from_le_bytes)?),
            ValueType::U16 => Array::U16(fixed(self, n, field, u16::from_le_bytes)?),
            ValueType::I16 => Array::I16(fixed(self, n, field, i16::from_le_bytes)?),
            ValueType::U32 => Array::U32(fixed(self, n, field, u32::from_le_bytes)?),
            ValueType::I32 => Array::I32(fixed(self, n, field, i32::from_le_bytes)?),
            ValueType::F32 => Array::F32(fixed(self, n, field, f32::from_le_bytes)?),
            ValueType::U64 => Array::U64(fixed(self, n, field, u64::from_le_bytes)?),
            ValueType::I64 => Array::I64(fixed(self, n, field, i64::from_le_bytes)?),
            ValueType::F64 => Array::F64(fixed(self, n, field, f64::from_le_bytes)?),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n.min(MAX_PREALLOC));
                for _ in 0..n {
                    v.push(self.bool(field)?);
                }
                Array::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n.min(MAX_PREALLOC));
                for _ in 0..n {
                    v.push(self.string(field)?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n.min(MAX_PREALLOC));
                for _ in 0..n {
                    v.push(self.array_value(field, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

pub(super) fn parse(bytes: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.array::<4>("magic")?;
    if &magic != b"GGUF" {
        return Err(c.err("magic", 0, format!("expected \"GGUF\", found {magic:?}")));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        let hint = if (2..=3).contains(&version.swap_bytes()) {
            " (a big-endian file? only little-endian GGUF is supported)"
        } else if version == 1 {
            " (GGUF v1 is obsolete; convert the model again)"
        } else {
            ""
        };
        return Err(c.err("version", 4, format!("version {version} is not supported (2 or 3){hint}")));
    }
    // Least bytes per tensor info: name length, one dim count, type, offset.
    let tensor_count = c.count("tensor_count", 8 + 4 + 4 + 8)?;
    // Least bytes per key/value: key length, type, one-byte value.
    let kv_count = c.count("metadata_kv_count", 8 + 4 + 1)?;

    let mut metadata = Vec::with_capacity(kv_count.min(MAX_PREALLOC));
    let mut keys = std::collections::HashSet::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..kv_count {
        let key_at = c.pos;
        let key = c.string(&format!("metadata[{i}].key"))?;
        let field = format!("metadata {key:?}");
        // llama.cpp refuses a repeated key too; accepting it would leave lookups ambiguous.
        if !keys.insert(key.clone()) {
            return Err(c.err(&field, key_at, "duplicate metadata key"));
        }
        let ty = c.value_type(&field)?;
        let value_at = c.pos;
        let value = c.value(ty, &field, 0)?;
        if key == "general.alignment" {
            alignment = match value {
                Value::U32(a) if a.is_power_of_two() => u64::from(a),
                ref v => {
                    return Err(c.err(
                        "general.alignment",
                        value_at,
                        format!("must be a u32 power of two, found {} {v}", v.value_type()),
                    ));
                }
            };
        }
        metadata.push((key, value));
    }

    let mut raw_tensors = Vec::with_capacity(tensor_count.min(MAX_PREALLOC));
    for i in 0..tensor_count {
        let at = c.pos;
        let name = c.string(&format!("tensor[{i}].name"))?;
        let field = |what: &str| format!("tensor {name:?} {what}");
        let n_dims_at = c.pos;
        let n_dims = c.u32(&field("n_dims"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.err(&field("n_dims"), n_dims_at, format!("{n_dims} dimensions (1..={MAX_DIMS} allowed)")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let dim_at = c.pos;
            let dim = c.u64(&field("dims"))?;
            // GGML holds dimensions as int64_t.
            if dim > i64::MAX as u64 {
                return Err(c.err(&field("dims"), dim_at, format!("dimension {dim} is larger than i64::MAX")));
            }
            dims.push(dim);
        }
        let type_at = c.pos;
        let type_id = c.u32(&field("type"))?;
        let ggml_type = GgmlType::from_id(type_id).map_err(|e| c.err(&field("type"), type_at, e.to_string()))?;
        let offset_at = c.pos;
        let offset = c.u64(&field("offset"))?;
        raw_tensors.push((at, name, dims, ggml_type, offset_at, offset));
    }

    let data_offset = (c.pos as u64).next_multiple_of(alignment);
    let file_len = bytes.len() as u64;
    // A file with no tensors may end right after its header, without padding.
    if data_offset > file_len && !raw_tensors.is_empty() {
        return Err(c.err(
            "tensor data",
            c.pos,
            format!("data section at {data_offset} is past the end of the {file_len}-byte file"),
        ));
    }

    let mut tensors = Vec::with_capacity(raw_tensors.len());
    let mut names = std::collections::HashSet::new();
    for (at, name, dims, ggml_type, offset_at, offset) in raw_tensors {
        let field = |what: &str| format!("tensor {name:?} {what}");
        if !names.insert(name.clone()) {
            return Err(c.err(&field("name"), at, "duplicate tensor name"));
        }
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or_else(|| c.err(&field("dims"), at, format!("element count of {dims:?} overflows")))?;
        if !dims[0].is_multiple_of(ggml_type.block_size()) {
            return Err(c.err(
                &field("dims"),
                at,
                format!(
                    "row length {} is not a multiple of the {ggml_type} block size {}",
                    dims[0],
                    ggml_type.block_size()
                ),
            ));
        }
        let byte_size = ggml_type
            .byte_size(elements)
            .map_err(|e| c.err(&field("dims"), at, e.to_string()))?
            .ok_or_else(|| c.err(&field("dims"), at, "byte size overflows"))?;
        if !offset.is_multiple_of(alignment) {
            return Err(c.err(
                &field("offset"),
                offset_at,
                format!("offset {offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        let file_offset = data_offset
            .checked_add(offset)
            .filter(|start| start.checked_add(byte_size).is_some_and(|end| end <= file_len))
            .ok_or_else(|| {
                c.err(
                    &field("offset"),
                    offset_at,
                    format!("{byte_size} bytes at data offset {offset} run past the end of the {file_len}-byte file"),
                )
            })?;
        tensors.push(TensorInfo { name, dims, ggml_type, file_offset, byte_size });
    }

    Ok(Header { version, alignment, data_offset, metadata, tensors })
}
