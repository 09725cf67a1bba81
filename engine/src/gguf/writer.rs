//! GGUF v3 writer, laid out the way ggml's `gguf_write_to_buf` and gguf-py's `GGUFWriter`
//! lay a file out, so that llama.cpp, gguf-py and [`super::GgufFile`] all read what it writes.
//!
//! Layout (ggml `docs/gguf.md`): magic, version, tensor count, metadata count, the metadata,
//! the tensor infos; zero padding up to the alignment; then each tensor's data, each padded
//! with zeros to the alignment. Tensor offsets are relative to the start of the data section
//! and are the running sum of the padded sizes, which llama.cpp checks exactly.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use realm_kernels::GgmlType;

use super::parse::MAX_DIMS;
use super::value::{Array, Value, ValueType};

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the alignment (a `u32` power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// llama.cpp refuses tensor names of `GGML_MAX_NAME` (64) bytes or more.
pub const MAX_TENSOR_NAME_BYTES: usize = 63;

/// Errors from building or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    #[error("tensor {name:?}: {reason}")]
    InvalidTensor { name: String, reason: String },
    #[error("alignment {alignment} is not a non-zero power of two")]
    InvalidAlignment { alignment: u32 },
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: io::Error },
}

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Cow<'a, [u8]>,
}

impl std::fmt::Debug for GgufWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tensor data are summarised: they can be gigabytes.
        let tensors: Vec<_> = self
            .tensors
            .iter()
            .map(|t| format!("{} {:?} {} ({} bytes)", t.name, t.dims, t.ggml_type, t.data.len()))
            .collect();
        f.debug_struct("GgufWriter")
            .field("alignment", &self.alignment())
            .field("metadata", &self.metadata.len())
            .field("tensors", &tensors)
            .finish()
    }
}

/// Collects metadata and tensors, then writes a GGUF v3 file.
///
/// Metadata keep insertion order; setting a key twice replaces the value in place, so a file
/// never holds a key twice. Tensor data may be borrowed (a tensor copied unchanged from a
/// memory-mapped source file) or owned.
///
/// Tensors are checked when added, so writing cannot fail except on I/O. Metadata are written
/// as given: a `general.alignment` that is not a `u32` power of two is written (tests use it
/// to make malformed files) and the default alignment is used for the padding.
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor<'a>>,
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata value, replacing an earlier value of the same key in place.
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Sets `general.alignment`, which aligns the data section and every tensor.
    pub fn set_alignment(&mut self, alignment: u32) -> Result<&mut Self, GgufWriteError> {
        if !alignment.is_power_of_two() {
            return Err(GgufWriteError::InvalidAlignment { alignment });
        }
        Ok(self.set(ALIGNMENT_KEY, Value::U32(alignment)))
    }

    /// The alignment the file will be padded to: `general.alignment` when it is a `u32`
    /// power of two, else [`DEFAULT_ALIGNMENT`].
    pub fn alignment(&self) -> u64 {
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            _ => DEFAULT_ALIGNMENT,
        }
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// Adds a tensor. `dims` are innermost first, as GGML stores them; `data` must be exactly
    /// the tensor's size in `ggml_type`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<&mut Self, GgufWriteError> {
        let name = name.into();
        let data = data.into();
        let invalid = |reason: String| GgufWriteError::InvalidTensor { name: name.clone(), reason };
        if name.len() > MAX_TENSOR_NAME_BYTES {
            return Err(invalid(format!(
                "name is {} bytes; llama.cpp allows at most {MAX_TENSOR_NAME_BYTES}",
                name.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(invalid("duplicate tensor name".to_string()));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS as usize {
            return Err(invalid(format!("{} dimensions (1..={MAX_DIMS} allowed)", dims.len())));
        }
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&e| e <= i64::MAX as u64 && dims.iter().all(|&d| d <= i64::MAX as u64))
            .ok_or_else(|| invalid(format!("element count of {dims:?} overflows")))?;
        if !dims[0].is_multiple_of(ggml_type.block_size()) {
            return Err(invalid(format!(
                "row length {} is not a multiple of the {ggml_type} block size {}",
                dims[0],
                ggml_type.block_size()
            )));
        }
        let byte_size = ggml_type
            .byte_size(elements)
            .map_err(|e| invalid(e.to_string()))?
            .ok_or_else(|| invalid("byte size overflows".to_string()))?;
        if data.len() as u64 != byte_size {
            return Err(invalid(format!("{} bytes of data, but {dims:?} {ggml_type} takes {byte_size}", data.len())));
        }
        self.tensors.push(PendingTensor { name, dims: dims.to_vec(), ggml_type, data });
        Ok(self)
    }

    /// Everything up to the start of the data section, padding included.
    fn header(&self) -> Vec<u8> {
        let alignment = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        put_u32(&mut out, VERSION);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            put_u32(&mut out, type_id(value.value_type()));
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.dims.len() as u32);
            for &d in &t.dims {
                put_u64(&mut out, d);
            }
            put_u32(&mut out, t.ggml_type.id());
            put_u64(&mut out, offset);
            offset += (t.data.len() as u64).next_multiple_of(alignment);
        }
        pad(&mut out, alignment);
        out
    }

    /// The whole file in memory (fixtures, tests).
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self.alignment();
        let mut out = self.header();
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            pad(&mut out, alignment);
        }
        out
    }

    /// Streams the file to `w` without building it in memory.
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let alignment = self.alignment();
        w.write_all(&self.header())?;
        const ZEROS: [u8; 4096] = [0; 4096];
        for t in &self.tensors {
            w.write_all(&t.data)?;
            let len = t.data.len() as u64;
            let mut padding = len.next_multiple_of(alignment) - len;
            while padding > 0 {
                let n = padding.min(ZEROS.len() as u64);
                w.write_all(&ZEROS[..n as usize])?;
                padding -= n;
            }
        }
        Ok(())
    }

    /// Writes the file to `path`, through a `.partial` sibling renamed into place, so a
    /// failed write never leaves a truncated file under the final name.
    pub fn write_to(&self, path: &Path) -> Result<(), GgufWriteError> {
        let mut partial = OsString::from(path.as_os_str());
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let io_err = |p: &Path| {
            let p = p.display().to_string();
            move |source| GgufWriteError::Io { path: p, source }
        };
        let result = File::create(&partial)
            .and_then(|f| {
                let mut w = BufWriter::with_capacity(1 << 20, f);
                self.write(&mut w)?;
                w.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()
            })
            .map_err(io_err(&partial))
            .and_then(|()| fs::rename(&partial, path).map_err(io_err(path)));
        if result.is_err() {
            // Best effort: the error being returned is the one that matters.
            let _ = fs::remove_file(&partial);
        }
        result
    }
}

/// The `gguf_metadata_value_type` id, the inverse of [`ValueType::from_id`].
pub(super) fn type_id(ty: ValueType) -> u32 {
    match ty {
        ValueType::U8 => 0,
        ValueType::I8 => 1,
        ValueType::U16 => 2,
        ValueType::I16 => 3,
        ValueType::U32 => 4,
        ValueType::I32 => 5,
        ValueType::F32 => 6,
        ValueType::Bool => 7,
        ValueType::String => 8,
        ValueType::Array => 9,
        ValueType::U64 => 10,
        ValueType::I64 => 11,
        ValueType::F64 => 12,
    }
}

fn pad(out: &mut Vec<u8>, alignment: u64) {
    let len = (out.len() as u64).next_multiple_of(alignment);
    out.resize(len as usize, 0);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// An array value: element type, count, then the elements without type tags (an inner
/// array carries its own element type and count).
fn put_array(out: &mut Vec<u8>, array: &Array) {
    fn each<T: Copy, const N: usize>(out: &mut Vec<u8>, v: &[T], le: fn(T) -> [u8; N]) {
        for &x in v {
            out.extend_from_slice(&le(x));
        }
    }
    put_u32(out, type_id(array.element_type()));
    put_u64(out, array.len() as u64);
    match array {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each(out, v, i8::to_le_bytes),
        Array::U16(v) => each(out, v, u16::to_le_bytes),
        Array::I16(v) => each(out, v, i16::to_le_bytes),
        Array::U32(v) => each(out, v, u32::to_le_bytes),
        Array::I32(v) => each(out, v, i32::to_le_bytes),
        Array::F32(v) => each(out, v, f32::to_le_bytes),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(out, a)),
        Array::U64(v) => each(out, v, u64::to_le_bytes),
        Array::I64(v) => each(out, v, i64::to_le_bytes),
        Array::F64(v) => each(out, v, f64::to_le_bytes),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use serde_json::json;

    use super::*;
    use crate::gguf::GgufFile;

    /// One key per value type, plus every array element type, empty and nested arrays.
    fn every_type_metadata() -> Vec<(String, Value)> {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        vec![
            ("general.architecture", Value::String("llama".into())),
            ("t.u8", Value::U8(200)),
            ("t.i8", Value::I8(-100)),
            ("t.u16", Value::U16(60_000)),
            ("t.i16", Value::I16(-30_000)),
            ("t.u32", Value::U32(4_000_000_000)),
            ("t.i32", Value::I32(-2_000_000_000)),
            ("t.f32", Value::F32(1.5)),
            ("t.true", Value::Bool(true)),
            ("t.false", Value::Bool(false)),
            ("t.string", Value::String("héllo ✓ \"quoted\"\n".into())),
            ("t.empty_string", Value::String(String::new())),
            ("t.u64", Value::U64(u64::MAX)),
            ("t.i64", Value::I64(i64::MIN)),
            ("t.f64", Value::F64(-2.25e300)),
            ("t.arr_u8", Value::Array(Array::U8(vec![0, 1, 255]))),
            ("t.arr_i8", Value::Array(Array::I8(vec![-128, 0, 127]))),
            ("t.arr_u16", Value::Array(Array::U16(vec![0, 65_535]))),
            ("t.arr_i16", Value::Array(Array::I16(vec![-32_768, 32_767]))),
            ("t.arr_u32", Value::Array(Array::U32(vec![0, u32::MAX]))),
            ("t.arr_i32", Value::Array(Array::I32(vec![-1, 2, -3]))),
            ("t.arr_f32", Value::Array(Array::F32(vec![0.5, -1.0, 3.25]))),
            ("t.arr_bool", Value::Array(Array::Bool(vec![true, false, true]))),
            ("t.arr_str", Value::Array(Array::String(strings(&["a", "", "ü✓", "<|im_end|>"])))),
            ("t.arr_u64", Value::Array(Array::U64(vec![1, u64::MAX]))),
            ("t.arr_i64", Value::Array(Array::I64(vec![i64::MIN, i64::MAX]))),
            ("t.arr_f64", Value::Array(Array::F64(vec![0.125, -8.0]))),
            ("t.arr_empty", Value::Array(Array::U32(Vec::new()))),
            ("t.nested_i32", Value::Array(Array::Array(vec![Array::I32(vec![1, 2]), Array::I32(vec![3])]))),
            (
                "t.nested_str",
                Value::Array(Array::Array(vec![Array::String(strings(&["x"])), Array::String(strings(&["y", "z"]))])),
            ),
            ("t.nested3", Value::Array(Array::Array(vec![Array::Array(vec![Array::Bool(vec![true, false])])]))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
        v.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    /// Tensors of several types whose sizes are not multiples of the alignment.
    fn fixture(alignment: Option<u32>) -> GgufWriter<'static> {
        let mut w = GgufWriter::new();
        if let Some(a) = alignment {
            w.set_alignment(a).expect("valid alignment");
        }
        for (k, v) in every_type_metadata() {
            w.set(k, v);
        }
        w.add_tensor("f32", &[4, 3], GgmlType::F32, f32_bytes((0..12).map(|i| i as f32))).expect("f32 tensor");
        w.add_tensor("q8_0", &[64, 2], GgmlType::Q8_0, (0..136).map(|i| i as u8).collect::<Vec<_>>())
            .expect("q8_0 tensor");
        w.add_tensor("q4_1", &[32], GgmlType::Q4_1, vec![7u8; 20]).expect("q4_1 tensor");
        w.add_tensor("f16", &[2, 1, 1, 3], GgmlType::F16, vec![1u8; 12]).expect("f16 tensor");
        w
    }

    fn check_round_trip(w: &GgufWriter<'_>) -> GgufFile {
        let bytes = w.to_bytes();
        let mut streamed = Vec::new();
        w.write(&mut streamed).expect("write to a Vec");
        assert_eq!(streamed, bytes, "write() and to_bytes() differ");
        let f = GgufFile::from_vec(bytes.clone()).expect("the writer's output parses");
        assert_eq!(f.version, 3);
        assert_eq!(f.alignment, w.alignment());
        assert_eq!(f.metadata, w.metadata);
        assert_eq!(f.data_offset % f.alignment, 0);
        assert_eq!(f.tensors.len(), w.tensors.len());
        let mut expected_offset = f.data_offset;
        for (info, t) in f.tensors.iter().zip(&w.tensors) {
            assert_eq!(info.name, t.name);
            assert_eq!(info.dims, t.dims);
            assert_eq!(info.ggml_type, t.ggml_type);
            // Tensors are packed in order, each padded to the alignment, as llama.cpp demands.
            assert_eq!(info.file_offset, expected_offset, "{}", t.name);
            expected_offset += info.byte_size.next_multiple_of(f.alignment);
            assert_eq!(f.tensor_data(info).expect("data in file"), &t.data[..]);
        }
        assert_eq!(bytes.len() as u64, expected_offset, "the last tensor is padded too");
        f
    }

    #[test]
    fn round_trip_default_alignment() {
        let f = check_round_trip(&fixture(None));
        assert_eq!(f.alignment, DEFAULT_ALIGNMENT);
        assert_eq!(f.get_str("general.architecture").expect("arch"), "llama");
    }

    #[test]
    fn round_trip_custom_alignment() {
        for a in [1, 8, 64, 4096] {
            let f = check_round_trip(&fixture(Some(a)));
            assert_eq!(f.alignment, u64::from(a));
            assert!(f.tensors.iter().all(|t| t.file_offset % u64::from(a) == 0));
        }
    }

    #[test]
    fn round_trip_metadata_only_and_empty() {
        let w = GgufWriter::new();
        let f = check_round_trip(&w);
        assert!(f.metadata.is_empty() && f.tensors.is_empty());
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::String("llama".into()));
        check_round_trip(&w);
    }

    #[test]
    fn borrowed_tensor_data() {
        let data = f32_bytes([1.0, 2.0]);
        let mut w = GgufWriter::new();
        w.add_tensor("borrowed", &[2], GgmlType::F32, &data[..]).expect("tensor");
        let f = check_round_trip(&w);
        assert_eq!(f.tensor_data(&f.tensors[0]).expect("data"), &data[..]);
    }

    #[test]
    fn write_to_file_matches_to_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fixture.gguf");
        let w = fixture(Some(64));
        w.write_to(&path).expect("write file");
        assert_eq!(fs::read(&path).expect("read back"), w.to_bytes());
        assert!(!dir.path().join("fixture.gguf.partial").exists());
        let f = GgufFile::open(&path).expect("open");
        assert_eq!(f.metadata, w.metadata);

        let missing = dir.path().join("no/such/dir/x.gguf");
        let err = w.write_to(&missing).expect_err("no such directory");
        assert!(err.to_string().contains("cannot write"), "{err}");
    }

    #[test]
    fn set_replaces_in_place() {
        let mut w = GgufWriter::new();
        w.set("a", Value::U32(1)).set("b", Value::U32(2)).set("a", Value::U32(3));
        assert_eq!(w.metadata(), &[("a".to_string(), Value::U32(3)), ("b".to_string(), Value::U32(2))]);
    }

    #[test]
    fn alignment_key_is_honoured_only_when_valid() {
        let mut w = GgufWriter::new();
        assert_eq!(w.alignment(), 32);
        w.set(ALIGNMENT_KEY, Value::U32(16));
        assert_eq!(w.alignment(), 16);
        w.set(ALIGNMENT_KEY, Value::U32(3));
        assert_eq!(w.alignment(), 32);
        w.set(ALIGNMENT_KEY, Value::U64(16));
        assert_eq!(w.alignment(), 32);
        for bad in [0, 3, 48] {
            let err = w.set_alignment(bad).expect_err("not a power of two");
            assert!(err.to_string().contains("power of two"), "{err}");
        }
    }

    #[test]
    fn bad_tensors_are_refused() {
        let mut w = GgufWriter::new();
        w.add_tensor("t", &[1], GgmlType::F32, vec![0u8; 4]).expect("valid");
        let long_name = "n".repeat(64);
        let cases: Vec<(&str, Vec<u64>, GgmlType, usize, &str)> = vec![
            ("t", vec![1], GgmlType::F32, 4, "duplicate"),
            ("none", vec![], GgmlType::F32, 4, "0 dimensions"),
            ("five", vec![1; 5], GgmlType::F32, 4, "5 dimensions"),
            ("big", vec![u64::MAX, 2], GgmlType::F32, 4, "overflows"),
            ("neg", vec![0, 1u64 << 63], GgmlType::F32, 0, "overflows"),
            ("row", vec![33], GgmlType::Q8_0, 34, "block size"),
            ("size", vec![32], GgmlType::Q8_0, 33, "takes 34"),
            (&long_name, vec![1], GgmlType::F32, 4, "at most 63"),
        ];
        for (name, dims, ty, len, words) in cases {
            let err = w.add_tensor(name, &dims, ty, vec![0u8; len]).expect_err(name);
            assert!(err.to_string().contains(words), "{name}: {err}");
        }
        assert_eq!(w.tensor_count(), 1);
    }

    #[test]
    fn type_ids_invert_from_id() {
        for id in 0..13 {
            let ty = ValueType::from_id(id).expect("known id");
            assert_eq!(type_id(ty), id);
        }
    }

    // ---- Cross-checks against gguf-py, the reference implementation -----------------------

    fn python() -> PathBuf {
        if let Some(p) = std::env::var_os("REALM_PYTHON").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
        assert!(
            p.is_file(),
            "{} is missing: run scripts/setup.sh to create the venv with gguf-py (or set REALM_PYTHON)",
            p.display()
        );
        p
    }

    fn run_python(script: &str, arg: &Path) -> String {
        let out = Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(arg)
            .output()
            .expect("run the Python interpreter (run scripts/setup.sh)");
        assert!(
            out.status.success(),
            "gguf-py failed (run scripts/setup.sh if `gguf` is missing):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    const PY_READ: &str = r#"
import json, sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
out = {"alignment": int(r.alignment), "data_offset": int(r.data_offset), "fields": [], "tensors": []}
for name, f in r.fields.items():
    if name.startswith("GGUF."):
        continue
    out["fields"].append({"key": name, "types": [t.name for t in f.types], "value": f.contents()})
for t in r.tensors:
    out["tensors"].append({
        "name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in t.shape],
        "n_bytes": int(t.n_bytes), "data_offset": int(t.data_offset), "data": t.data.tobytes().hex(),
    })
print(json.dumps(out))
"#;

    fn py_type(ty: ValueType) -> &'static str {
        match ty {
            ValueType::U8 => "UINT8",
            ValueType::I8 => "INT8",
            ValueType::U16 => "UINT16",
            ValueType::I16 => "INT16",
            ValueType::U32 => "UINT32",
            ValueType::I32 => "INT32",
            ValueType::F32 => "FLOAT32",
            ValueType::Bool => "BOOL",
            ValueType::String => "STRING",
            ValueType::Array => "ARRAY",
            ValueType::U64 => "UINT64",
            ValueType::I64 => "INT64",
            ValueType::F64 => "FLOAT64",
        }
    }

    /// gguf-py's `ReaderField.types`: the value's type, then for a non-empty array the types
    /// of its first element (gguf-py only looks at the first).
    fn py_types(v: &Value) -> Vec<&'static str> {
        fn array(a: &Array, out: &mut Vec<&'static str>) {
            out.push("ARRAY");
            match a {
                Array::Array(inner) => {
                    if let Some(first) = inner.first() {
                        array(first, out);
                    }
                }
                _ if !a.is_empty() => out.push(py_type(a.element_type())),
                _ => {}
            }
        }
        let mut out = Vec::new();
        match v {
            Value::Array(a) => array(a, &mut out),
            _ => out.push(py_type(v.value_type())),
        }
        out
    }

    /// gguf-py's `ReaderField.contents()`: scalars as they are, arrays flattened.
    fn py_contents(v: &Value) -> serde_json::Value {
        fn flatten(a: &Array, out: &mut Vec<serde_json::Value>) {
            match a {
                Array::U8(v) => out.extend(v.iter().map(|x| json!(x))),
                Array::I8(v) => out.extend(v.iter().map(|x| json!(x))),
                Array::U16(v) => out.extend(v.iter().map(|x| json!(x))),
                Array::I16(v) => out.extend(v.iter().map(|x| json!(x))),
                Array::U32(v) => out.extend(v.iter().map(|x| json!(x))),
                Array::I32(v) => out.extend(v.iter().map(|x| json!(x))),
                Array::F32(v) => out.extend(v.iter().map(|&x| json!(f64::from(x)))),
                Array::Bool(v) => out.extend(v.iter().map(|x| json!(x))),
                Array::String(v) => out.extend(v.iter().map(|x| json!(x))),
                Array::Array(v) => v.iter().for_each(|a| flatten(a, out)),
                Array::U64(v) => out.extend(v.iter().map(|x| json!(x))),
                Array::I64(v) => out.extend(v.iter().map(|x| json!(x))),
                Array::F64(v) => out.extend(v.iter().map(|x| json!(x))),
            }
        }
        match v {
            Value::U8(x) => json!(x),
            Value::I8(x) => json!(x),
            Value::U16(x) => json!(x),
            Value::I16(x) => json!(x),
            Value::U32(x) => json!(x),
            Value::I32(x) => json!(x),
            Value::F32(x) => json!(f64::from(*x)),
            Value::Bool(x) => json!(x),
            Value::String(x) => json!(x),
            Value::U64(x) => json!(x),
            Value::I64(x) => json!(x),
            Value::F64(x) => json!(x),
            Value::Array(a) => {
                let mut out = Vec::new();
                flatten(a, &mut out);
                serde_json::Value::Array(out)
            }
        }
    }

    #[test]
    fn gguf_py_reads_what_we_write() {
        for alignment in [None, Some(64)] {
            let w = fixture(alignment);
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("ours.gguf");
            w.write_to(&path).expect("write");
            let ours = GgufFile::open(&path).expect("we read our own file");
            let got: serde_json::Value = serde_json::from_str(&run_python(PY_READ, &path)).expect("JSON from gguf-py");

            let fields: Vec<_> = w
                .metadata()
                .iter()
                .map(|(k, v)| json!({"key": k, "types": py_types(v), "value": py_contents(v)}))
                .collect();
            let tensors: Vec<_> = ours
                .tensors
                .iter()
                .map(|t| {
                    let data = ours.tensor_data(t).expect("data");
                    json!({
                        "name": t.name,
                        "type": t.ggml_type.name(),
                        "shape": t.dims,
                        "n_bytes": t.byte_size,
                        "data_offset": t.file_offset,
                        "data": data.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                    })
                })
                .collect();
            let expected = json!({
                "alignment": w.alignment(),
                "data_offset": ours.data_offset,
                "fields": fields,
                "tensors": tensors,
            });
            assert_eq!(got, expected, "alignment {alignment:?}");
        }
    }

    const PY_WRITE: &str = r#"
import sys
import numpy as np
from gguf import GGUFWriter, GGUFValueType as T, GGMLQuantizationType as Q
w = GGUFWriter(sys.argv[1], "llama")
w.add_custom_alignment(64)
w.add_uint8("t.u8", 200)
w.add_int8("t.i8", -100)
w.add_uint16("t.u16", 60000)
w.add_int16("t.i16", -30000)
w.add_uint32("t.u32", 4000000000)
w.add_int32("t.i32", -2000000000)
w.add_float32("t.f32", 1.5)
w.add_bool("t.true", True)
w.add_bool("t.false", False)
w.add_string("t.string", "héllo ✓")
w.add_uint64("t.u64", 2**64 - 1)
w.add_int64("t.i64", -2**63)
w.add_float64("t.f64", -2.25e300)
w.add_array("t.arr_str", ["a", "", "ü✓"])
w.add_array("t.arr_i32", [1, -2, 3])
w.add_array("t.arr_f32", [0.5, -1.0])
w.add_array("t.arr_bool", [True, False, True])
w.add_array("t.nested", [[1, 2], [3]])
w.add_array("t.nested_str", [["x"], ["y", "z"]])
for key, ty, vals in [
    ("t.arr_u8", T.UINT8, [0, 255]), ("t.arr_i8", T.INT8, [-128, 127]),
    ("t.arr_u16", T.UINT16, [0, 65535]), ("t.arr_i16", T.INT16, [-32768, 32767]),
    ("t.arr_u32", T.UINT32, [0, 2**32 - 1]), ("t.arr_u64", T.UINT64, [1, 2**64 - 1]),
    ("t.arr_i64", T.INT64, [-2**63, 2**63 - 1]), ("t.arr_f64", T.FLOAT64, [0.125, -8.0]),
]:
    w.add_key_value(key, vals, T.ARRAY, sub_type=ty)
w.add_tensor("f32", np.arange(12, dtype=np.float32).reshape(3, 4))
w.add_tensor("f16", np.array([1, 2, 3, 4, 5], dtype=np.float16))
w.add_tensor("q8_0", np.arange(68, dtype=np.uint8).reshape(2, 34), raw_dtype=Q.Q8_0)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
"#;

    #[test]
    fn we_read_what_gguf_py_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("py.gguf");
        run_python(PY_WRITE, &path);
        let f = GgufFile::open(&path).expect("we read gguf-py's file");
        assert_eq!(f.version, 3);
        assert_eq!(f.alignment, 64);
        assert_eq!(f.data_offset % 64, 0);
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let expected = [
            ("general.architecture", Value::String("llama".into())),
            ("general.alignment", Value::U32(64)),
            ("t.u8", Value::U8(200)),
            ("t.i8", Value::I8(-100)),
            ("t.u16", Value::U16(60_000)),
            ("t.i16", Value::I16(-30_000)),
            ("t.u32", Value::U32(4_000_000_000)),
            ("t.i32", Value::I32(-2_000_000_000)),
            ("t.f32", Value::F32(1.5)),
            ("t.true", Value::Bool(true)),
            ("t.false", Value::Bool(false)),
            ("t.string", Value::String("héllo ✓".into())),
            ("t.u64", Value::U64(u64::MAX)),
            ("t.i64", Value::I64(i64::MIN)),
            ("t.f64", Value::F64(-2.25e300)),
            ("t.arr_str", Value::Array(Array::String(s(&["a", "", "ü✓"])))),
            ("t.arr_i32", Value::Array(Array::I32(vec![1, -2, 3]))),
            ("t.arr_f32", Value::Array(Array::F32(vec![0.5, -1.0]))),
            ("t.arr_bool", Value::Array(Array::Bool(vec![true, false, true]))),
            ("t.nested", Value::Array(Array::Array(vec![Array::I32(vec![1, 2]), Array::I32(vec![3])]))),
            ("t.nested_str", Value::Array(Array::Array(vec![Array::String(s(&["x"])), Array::String(s(&["y", "z"]))]))),
            ("t.arr_u8", Value::Array(Array::U8(vec![0, 255]))),
            ("t.arr_i8", Value::Array(Array::I8(vec![-128, 127]))),
            ("t.arr_u16", Value::Array(Array::U16(vec![0, 65_535]))),
            ("t.arr_i16", Value::Array(Array::I16(vec![-32_768, 32_767]))),
            ("t.arr_u32", Value::Array(Array::U32(vec![0, u32::MAX]))),
            ("t.arr_u64", Value::Array(Array::U64(vec![1, u64::MAX]))),
            ("t.arr_i64", Value::Array(Array::I64(vec![i64::MIN, i64::MAX]))),
            ("t.arr_f64", Value::Array(Array::F64(vec![0.125, -8.0]))),
        ];
        let expected: Vec<(String, Value)> = expected.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(f.metadata, expected);

        let names: Vec<_> = f.tensors.iter().map(|t| (t.name.as_str(), t.dims.clone(), t.ggml_type)).collect();
        assert_eq!(
            names,
            [
                ("f32", vec![4, 3], GgmlType::F32),
                ("f16", vec![5], GgmlType::F16),
                ("q8_0", vec![32, 2], GgmlType::Q8_0),
            ]
        );
        let data = |name: &str| f.tensor_data(f.require_tensor(name).expect("tensor")).expect("data");
        assert_eq!(data("f32"), &f32_bytes((0..12).map(|i| i as f32))[..]);
        let f16_one = 0x3c00u16; // 1.0 in IEEE half precision
        assert_eq!(&data("f16")[..2], &f16_one.to_le_bytes());
        assert_eq!(data("q8_0"), &(0..68).map(|i| i as u8).collect::<Vec<_>>()[..]);
        for t in &f.tensors {
            assert_eq!(t.file_offset % 64, 0, "{}", t.name);
        }

        // Writing gguf-py's file back out with our writer reproduces it byte for byte.
        let mut w = GgufWriter::new();
        for (k, v) in &f.metadata {
            w.set(k.clone(), v.clone());
        }
        for t in &f.tensors {
            w.add_tensor(t.name.clone(), &t.dims, t.ggml_type, f.tensor_data(t).expect("data")).expect("tensor");
        }
        assert_eq!(w.to_bytes(), fs::read(&path).expect("read"));
    }
}
