//! The GGUF reader against malformed files: every case must come back as a `Malformed`
//! error naming the right field and reason, never as a panic, a hang or a huge allocation.
//! Also: random mutations of valid files, writer round trips on random content, and the
//! real default model.

mod common;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use realm_engine::gguf::{Array, GgufError, GgufFile, GgufWriter, MAX_ARRAY_DEPTH, Value};
use realm_kernels::GgmlType;

// `gguf_metadata_value_type` ids.
const T_U8: u32 = 0;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
// `ggml_type` ids.
const G_F32: u32 = 0;
const G_Q8_0: u32 = 8;
const G_F64: u32 = 28;

const U64_MAX: &str = "18446744073709551615";
const TWO_POW_40: u64 = 1 << 40;

/// Little-endian bytes for files the writer would refuse to make.
#[derive(Clone, Default)]
struct Raw(Vec<u8>);

impl Raw {
    /// Magic, version 3 and the two counts.
    fn gguf(tensors: u64, kvs: u64) -> Self {
        Raw::default().bytes(b"GGUF").u32(3).u64(tensors).u64(kvs)
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(self, v: u8) -> Self {
        self.bytes(&[v])
    }
    fn u32(self, v: u32) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A metadata key and its value type; the value follows.
    fn key(self, key: &str, ty: u32) -> Self {
        self.str(key).u32(ty)
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    fn pad(mut self, alignment: usize) -> Self {
        self.0.resize(self.0.len().next_multiple_of(alignment), 0);
        self
    }
    fn fill(mut self, n: usize, byte: u8) -> Self {
        self.0.resize(self.0.len() + n, byte);
        self
    }
    fn done(self) -> Vec<u8> {
        self.0
    }
}

/// One tensor `t` at data offset `offset`, with `data_len` bytes of data after the padding.
fn one_tensor(dims: &[u64], ty: u32, offset: u64, data_len: usize) -> Vec<u8> {
    Raw::gguf(1, 0).tensor("t", dims, ty, offset).pad(32).fill(data_len, 0).done()
}

/// Parses `bytes` expecting a `Malformed` error whose field contains `field` and whose reason
/// contains every one of `reason`; returns the error's offset.
#[track_caller]
fn refuse(bytes: &[u8], field: &str, reason: &[&str]) -> u64 {
    match GgufFile::from_vec(bytes.to_vec()) {
        Err(GgufError::Malformed { field: f, offset, reason: r }) => {
            assert!(f.contains(field), "field {f:?} does not name {field:?} (reason: {r})");
            for word in reason {
                assert!(r.contains(word), "reason {r:?} lacks {word:?} (field {f:?})");
            }
            offset
        }
        Err(e) => panic!("expected a Malformed error about {field}, got: {e}"),
        Ok(_) => panic!("a malformed file parsed (expected {field}: {reason:?})"),
    }
}

#[track_caller]
fn accept(bytes: &[u8]) -> GgufFile {
    match GgufFile::from_vec(bytes.to_vec()) {
        Ok(f) => f,
        Err(e) => panic!("a valid file was refused: {e}"),
    }
}

/// Parses, and on success reads every tensor: the parser promised their data are in the file.
fn parse_and_touch(bytes: Vec<u8>) {
    if let Ok(f) = GgufFile::from_vec(bytes) {
        for t in &f.tensors {
            let data = f.tensor_data(t).expect("a parsed tensor's data lie in the file");
            assert_eq!(data.len() as u64, t.byte_size);
            assert_eq!(t.file_offset % f.alignment, 0);
        }
    }
}

/// A small valid file with metadata of several kinds and two tensors; the last tensor's size
/// is a multiple of the alignment, so the file has no trailing padding and every strict
/// prefix of it is incomplete.
fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("llama.block_count", Value::U32(2))
        .set("t.flag", Value::Bool(true))
        .set("t.scores", Value::Array(Array::F32(vec![0.5, -1.0])))
        .set("t.tokens", Value::Array(Array::String(vec!["a".into(), "bc".into()])))
        .set("t.nested", Value::Array(Array::Array(vec![Array::U8(vec![1]), Array::U8(vec![])])))
        .set("t.i64", Value::I64(-5));
    w.add_tensor("a", &[32, 2], GgmlType::Q8_0, vec![1u8; 68]).expect("tensor a");
    w.add_tensor("b", &[8], GgmlType::F32, vec![2u8; 32]).expect("tensor b");
    w.to_bytes()
}

#[test]
fn raw_builder_makes_valid_files() {
    // The controls: if these fail, the cases below fail for the wrong reason.
    let f = accept(&one_tensor(&[8], G_F32, 0, 32));
    assert_eq!(f.tensors[0].dims, [8]);
    let f = accept(&Raw::gguf(0, 1).key("k", T_BOOL).u8(1).done());
    assert!(f.get_bool("k").expect("bool"));
    let f = accept(&small_file());
    assert_eq!(f.tensors.len(), 2);
    assert_eq!(f.tensors[1].file_offset + 32, small_file().len() as u64);
}

#[test]
fn bad_magic() {
    refuse(b"GGUX\x03\0\0\0", "magic", &["expected \"GGUF\""]);
    refuse(b"", "magic", &["needs 4 bytes"]);
    let mut lower = small_file();
    lower[..4].copy_from_slice(b"gguf");
    refuse(&lower, "magic", &["expected \"GGUF\""]);
}

#[test]
fn unsupported_versions() {
    let with_version = |v: &[u8]| Raw::default().bytes(b"GGUF").bytes(v).u64(0).u64(0).done();
    refuse(&with_version(&0u32.to_le_bytes()), "version", &["version 0 is not supported"]);
    refuse(&with_version(&1u32.to_le_bytes()), "version", &["version 1 is not supported", "v1"]);
    refuse(&with_version(&4u32.to_le_bytes()), "version", &["version 4 is not supported"]);
    refuse(&with_version(&3u32.to_be_bytes()), "version", &["version 50331648", "big-endian"]);
    refuse(&with_version(&2u32.to_be_bytes()), "version", &["big-endian"]);
    // Version 0 is not mistaken for a big-endian file.
    match GgufFile::from_vec(with_version(&0u32.to_le_bytes())) {
        Err(e) => assert!(!e.to_string().contains("big-endian"), "{e}"),
        Ok(_) => panic!("version 0 parsed"),
    }
    // Both supported versions parse.
    accept(&with_version(&2u32.to_le_bytes()));
    accept(&with_version(&3u32.to_le_bytes()));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = small_file();
    accept(&bytes);
    for len in 0..bytes.len() {
        match GgufFile::from_vec(bytes[..len].to_vec()) {
            Err(GgufError::Malformed { field, offset, reason }) => {
                assert!(offset <= len as u64, "prefix {len}: offset {offset} is past the end ({field}: {reason})");
                assert!(!field.is_empty() && !reason.is_empty());
            }
            Err(e) => panic!("prefix {len}: unexpected error kind: {e}"),
            Ok(_) => panic!("prefix {len} of {} bytes parsed", bytes.len()),
        }
    }
}

#[test]
fn huge_counts() {
    for (n, words) in [(u64::MAX, U64_MAX), (TWO_POW_40, "1099511627776")] {
        refuse(&Raw::gguf(n, 0).done(), "tensor_count", &[&format!("count {words}"), "bytes remain"]);
        refuse(&Raw::gguf(0, n).done(), "metadata_kv_count", &[&format!("count {words}"), "bytes remain"]);
        // Claimed counts are refused before anything is read, even with bytes after them.
        let padded = Raw::gguf(0, n).fill(4096, 0).done();
        refuse(&padded, "metadata_kv_count", &[&format!("count {words}")]);
    }
}

#[test]
fn huge_string_lengths() {
    refuse(
        &Raw::gguf(0, 1).u64(u64::MAX).fill(16, b'a').done(),
        "metadata[0].key",
        &[&format!("string length {U64_MAX}")],
    );
    let value = Raw::gguf(0, 1).key("k", T_STRING).u64(TWO_POW_40).bytes(b"abc").done();
    refuse(&value, "metadata \"k\"", &["string length 1099511627776", "remain"]);
    let name = Raw::gguf(1, 0).u64(u64::MAX - 7).fill(64, b'a').done();
    refuse(&name, "tensor[0].name", &["string length"]);
    // A string in an array.
    let in_array = Raw::gguf(0, 1).key("k", T_ARRAY).u32(T_STRING).u64(1).u64(u64::MAX).done();
    refuse(&in_array, "metadata \"k\"", &[&format!("string length {U64_MAX}")]);
}

#[test]
fn huge_array_counts() {
    let arr = |ty: u32, n: u64| Raw::gguf(0, 1).key("k", T_ARRAY).u32(ty).u64(n).fill(64, 0).done();
    refuse(&arr(T_U32, u64::MAX), "metadata \"k\"", &[&format!("count {U64_MAX}"), "4 bytes each"]);
    refuse(&arr(T_U32, TWO_POW_40), "metadata \"k\"", &["count 1099511627776", "4 bytes each"]);
    refuse(&arr(T_STRING, TWO_POW_40), "metadata \"k\"", &["count 1099511627776", "8 bytes each"]);
    refuse(&arr(T_ARRAY, TWO_POW_40), "metadata \"k\"", &["count 1099511627776", "12 bytes each"]);
    refuse(&arr(T_BOOL, 65), "metadata \"k\"", &["count 65", "only 64 bytes remain"]);
    // Exactly the bytes that are there is fine.
    let f = accept(&arr(T_BOOL, 64));
    assert_eq!(f.get_array("k").expect("array").len(), 64);
}

/// `depth` arrays nested one inside the other around a single u8.
fn nested(depth: usize) -> Vec<u8> {
    let mut r = Raw::gguf(0, 1).key("k", T_ARRAY);
    for _ in 1..depth {
        r = r.u32(T_ARRAY).u64(1);
    }
    r.u32(T_U8).u64(1).u8(7).done()
}

#[test]
fn nested_array_bombs() {
    // The deepest allowed nesting parses...
    let f = accept(&nested(MAX_ARRAY_DEPTH));
    let mut a = f.get_array("k").expect("array");
    let mut depth = 1;
    while let Array::Array(inner) = a {
        a = &inner[0];
        depth += 1;
    }
    assert_eq!((depth, a), (MAX_ARRAY_DEPTH, &Array::U8(vec![7])));
    // ...one more level does not, nor does a deep chain that would exhaust the stack.
    let words = format!("nested deeper than {MAX_ARRAY_DEPTH}");
    refuse(&nested(MAX_ARRAY_DEPTH + 1), "metadata \"k\"", &[&words]);
    refuse(&nested(200_000), "metadata \"k\"", &[&words]);

    // Wide: many valid small arrays, then one that claims far more than the file holds.
    let mut r = Raw::gguf(0, 1).key("k", T_ARRAY).u32(T_ARRAY).u64(1000);
    for _ in 0..999 {
        r = r.u32(T_U8).u64(0);
    }
    let wide = r.u32(T_U64).u64(TWO_POW_40).fill(1024, 0).done();
    refuse(&wide, "metadata \"k\"", &["count 1099511627776"]);

    // Every level claims as many inner arrays as the remaining bytes could hold: refused at
    // the depth limit, with memory bounded by the bytes actually read.
    let body = 1 << 20;
    let mut r = Raw::gguf(0, 1).key("k", T_ARRAY);
    for level in 0..MAX_ARRAY_DEPTH + 1 {
        let remaining = body - level * 12;
        r = r.u32(T_ARRAY).u64((remaining / 12) as u64);
    }
    refuse(&r.fill(body, 0xAB).done(), "metadata \"k\"", &[&words]);
}

#[test]
fn unknown_value_type_ids() {
    for id in [13, 99, u32::MAX] {
        let scalar = Raw::gguf(0, 1).key("k", id).fill(16, 0).done();
        refuse(&scalar, "metadata \"k\"", &[&format!("unknown value type id {id}")]);
        let element = Raw::gguf(0, 1).key("k", T_ARRAY).u32(id).u64(1).fill(16, 0).done();
        refuse(&element, "metadata \"k\"", &[&format!("unknown value type id {id}")]);
    }
}

#[test]
fn unknown_ggml_type_ids() {
    // 4 and 5 were Q4_2 and Q4_3, long removed; 36 and up are not assigned.
    for id in [4, 5, 31, 36, u32::MAX] {
        refuse(&one_tensor(&[32], id, 0, 128), "tensor \"t\" type", &[&format!("unknown ggml type id {id}")]);
    }
}

#[test]
fn bad_dimension_counts() {
    for n in [0u32, 5, u32::MAX] {
        let bytes = Raw::gguf(1, 0).str("t").u32(n).fill(256, 0).done();
        refuse(&bytes, "tensor \"t\" n_dims", &[&format!("{n} dimensions"), "1..=4"]);
    }
}

#[test]
fn dimension_overflow() {
    let overflow = ["element count", "overflows"];
    refuse(&one_tensor(&[1 << 32, 1 << 32], G_F32, 0, 32), "tensor \"t\" dims", &overflow);
    refuse(&one_tensor(&[1 << 40, 1 << 23], G_F32, 0, 32), "tensor \"t\" dims", &overflow);
    refuse(&one_tensor(&[2, 2, 1 << 31, 1 << 31], G_F32, 0, 32), "tensor \"t\" dims", &overflow);
    refuse(&one_tensor(&[u64::MAX], G_F32, 0, 32), "tensor \"t\" dims", &["larger than i64::MAX"]);
    refuse(&one_tensor(&[0, 1 << 63], G_F32, 0, 32), "tensor \"t\" dims", &["larger than i64::MAX"]);
    // Elements fit, bytes do not: 2^62 f64 values.
    refuse(&one_tensor(&[1 << 62], G_F64, 0, 32), "tensor \"t\" dims", &["byte size overflows"]);
    // Fits in u64 but not in the file.
    refuse(&one_tensor(&[1 << 30, 1 << 30], G_F32, 0, 32), "tensor \"t\" offset", &["past the end"]);
}

#[test]
fn row_not_a_block_multiple() {
    refuse(&one_tensor(&[33], G_Q8_0, 0, 64), "tensor \"t\" dims", &["row length 33", "Q8_0 block size 32"]);
    refuse(&one_tensor(&[16, 2], G_Q8_0, 0, 64), "tensor \"t\" dims", &["row length 16"]);
    accept(&one_tensor(&[32, 2], G_Q8_0, 0, 68));
}

#[test]
fn misaligned_offsets() {
    for off in [1, 4, 31, 33] {
        refuse(&one_tensor(&[8], G_F32, off, 128), "tensor \"t\" offset", &[&format!("offset {off}"), "alignment 32"]);
    }
    let custom = Raw::gguf(1, 1).key("general.alignment", T_U32).u32(64).tensor("t", &[8], G_F32, 32);
    refuse(&custom.pad(64).fill(128, 0).done(), "tensor \"t\" offset", &["offset 32", "alignment 64"]);
}

#[test]
fn data_past_end_of_file() {
    refuse(&one_tensor(&[8], G_F32, 0, 31), "tensor \"t\" offset", &["32 bytes", "past the end"]);
    refuse(&one_tensor(&[8], G_F32, 32, 32), "tensor \"t\" offset", &["at data offset 32", "past the end"]);
    refuse(&one_tensor(&[8], G_F32, !31, 32), "tensor \"t\" offset", &["past the end"]);
    // The header ends short of the data section's alignment.
    refuse(&Raw::gguf(1, 0).tensor("t", &[8], G_F32, 0).done(), "tensor data", &["past the end"]);
    // Offsets within the file are fine even when tensors share bytes.
    accept(&Raw::gguf(2, 0).tensor("a", &[8], G_F32, 0).tensor("b", &[8], G_F32, 0).pad(32).fill(32, 0).done());
}

#[test]
fn duplicate_names() {
    let tensors = Raw::gguf(2, 0).tensor("t", &[8], G_F32, 0).tensor("t", &[8], G_F32, 32).pad(32).fill(64, 0);
    refuse(&tensors.done(), "tensor \"t\" name", &["duplicate tensor name"]);
    let keys = Raw::gguf(0, 2).key("k", T_U8).u8(1).key("k", T_U8).u8(2).done();
    refuse(&keys, "metadata \"k\"", &["duplicate metadata key"]);
}

#[test]
fn non_utf8_strings() {
    let key = Raw::gguf(0, 1).u64(2).bytes(&[0xff, 0xfe]).u32(T_U8).u8(0).done();
    refuse(&key, "metadata[0].key", &["not UTF-8"]);
    let value = Raw::gguf(0, 1).key("k", T_STRING).u64(3).bytes(b"a\xc3(").done();
    refuse(&value, "metadata \"k\"", &["not UTF-8"]);
    let name = Raw::gguf(1, 0).u64(1).bytes(&[0x80]).u32(1).u64(8).u32(G_F32).u64(0).pad(32).fill(32, 0);
    refuse(&name.done(), "tensor[0].name", &["not UTF-8"]);
}

#[test]
fn bad_alignment() {
    let with = |ty: u32, value: &[u8]| {
        Raw::gguf(1, 1).key("general.alignment", ty).bytes(value).tensor("t", &[8], G_F32, 0).pad(32).fill(32, 0).done()
    };
    let words = ["must be a u32 power of two"];
    refuse(&with(T_U32, &0u32.to_le_bytes()), "general.alignment", &[words[0], "u32 0"]);
    refuse(&with(T_U32, &3u32.to_le_bytes()), "general.alignment", &[words[0], "u32 3"]);
    refuse(&with(T_U32, &48u32.to_le_bytes()), "general.alignment", &words);
    refuse(&with(T_U64, &32u64.to_le_bytes()), "general.alignment", &[words[0], "u64 32"]);
    refuse(&with(T_I32, &32i32.to_le_bytes()), "general.alignment", &[words[0], "i32 32"]);
    refuse(&with(T_STRING, &Raw::default().str("32").done()), "general.alignment", &[words[0], "string"]);
    let f = accept(&with(T_U32, &16u32.to_le_bytes()));
    assert_eq!(f.alignment, 16);
}

#[test]
fn bool_bytes() {
    refuse(&Raw::gguf(0, 1).key("k", T_BOOL).u8(2).done(), "metadata \"k\"", &["bool byte is 2"]);
    refuse(&Raw::gguf(0, 1).key("k", T_BOOL).u8(0xff).done(), "metadata \"k\"", &["bool byte is 255"]);
    let array = Raw::gguf(0, 1).key("k", T_ARRAY).u32(T_BOOL).u64(3).u8(1).u8(0).u8(2).done();
    refuse(&array, "metadata \"k\"", &["bool byte is 2"]);
}

#[test]
fn default_model_parses() {
    let path = common::default_model_path();
    let f = GgufFile::open(&path).expect("the default model parses");
    assert_eq!(f.version, 3);
    assert_eq!(f.tensors.len(), 272);
    assert_eq!(f.architecture().expect("architecture"), "llama");
    assert_eq!(f.get_u64("llama.block_count").expect("block_count"), 30);
    let embd = f.require_tensor("token_embd.weight").expect("token_embd.weight");
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);
    assert_eq!(embd.dims, [576, 49152]);
    assert_eq!(f.tensors.iter().filter(|t| t.ggml_type == GgmlType::Q4_1).count(), 210);
    for t in &f.tensors {
        assert_eq!(f.tensor_data(t).expect("tensor data").len() as u64, t.byte_size, "{}", t.name);
    }

    // Our writer, given the model's metadata and tensors, reproduces the file byte for byte:
    // its layout is the one llama.cpp's tools write.
    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        w.set(k.clone(), v.clone());
    }
    for t in &f.tensors {
        w.add_tensor(t.name.clone(), &t.dims, t.ggml_type, f.tensor_data(t).expect("data")).expect("tensor");
    }
    let original = std::fs::read(&path).expect("read the model");
    assert!(w.to_bytes() == original, "the rewritten model differs from the original");
}

// ---- Property tests ------------------------------------------------------------------------

fn arb_array() -> impl Strategy<Value = Array> {
    let small = || 0..4usize;
    let finite_f32 = || -1e6f32..1e6f32;
    let leaf = prop_oneof![
        vec(any::<u8>(), small()).prop_map(Array::U8),
        vec(any::<i8>(), small()).prop_map(Array::I8),
        vec(any::<u16>(), small()).prop_map(Array::U16),
        vec(any::<i16>(), small()).prop_map(Array::I16),
        vec(any::<u32>(), small()).prop_map(Array::U32),
        vec(any::<i32>(), small()).prop_map(Array::I32),
        vec(finite_f32(), small()).prop_map(Array::F32),
        vec(any::<bool>(), small()).prop_map(Array::Bool),
        vec(vec(any::<char>(), 0..4).prop_map(String::from_iter), small()).prop_map(Array::String),
        vec(any::<u64>(), small()).prop_map(Array::U64),
        vec(any::<i64>(), small()).prop_map(Array::I64),
        vec(-1e300f64..1e300, small()).prop_map(Array::F64),
    ];
    // Depth 3 plus the top-level array stays within MAX_ARRAY_DEPTH.
    leaf.prop_recursive(3, 24, 3, |inner| vec(inner, 0..3).prop_map(Array::Array))
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        (-1e6f32..1e6f32).prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        vec(any::<char>(), 0..8).prop_map(|c| Value::String(String::from_iter(c))),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        (-1e300f64..1e300).prop_map(Value::F64),
        arb_array().prop_map(Value::Array),
    ]
}

/// (type, rows blocks, other dims) → a tensor with random bytes of exactly its size.
fn arb_tensor() -> impl Strategy<Value = (Vec<u64>, GgmlType, Vec<u8>)> {
    let ty = prop_oneof![
        Just(GgmlType::F32),
        Just(GgmlType::F16),
        Just(GgmlType::Q4_0),
        Just(GgmlType::Q4_1),
        Just(GgmlType::Q8_0),
        Just(GgmlType::Q4K),
        Just(GgmlType::Q6K),
    ];
    (ty, 0..3u64, vec(1..4u64, 0..4)).prop_flat_map(|(ty, blocks, rest)| {
        let dims: Vec<u64> = std::iter::once(blocks * ty.block_size()).chain(rest).collect();
        let elements: u64 = dims.iter().product();
        let size = ty.byte_size(elements).expect("whole blocks").expect("small") as usize;
        (Just(dims), Just(ty), vec(any::<u8>(), size))
    })
}

fn arb_writer() -> impl Strategy<Value = GgufWriter<'static>> {
    let alignment = prop_oneof![Just(None), Just(Some(1u32)), Just(Some(8)), Just(Some(32)), Just(Some(64))];
    (alignment, vec(arb_value(), 0..6), vec(arb_tensor(), 0..4)).prop_map(|(alignment, values, tensors)| {
        let mut w = GgufWriter::new();
        if let Some(a) = alignment {
            w.set_alignment(a).expect("power of two");
        }
        for (i, v) in values.into_iter().enumerate() {
            w.set(format!("k{i}"), v);
        }
        for (i, (dims, ty, data)) in tensors.into_iter().enumerate() {
            w.add_tensor(format!("t{i}"), &dims, ty, data).expect("valid tensor");
        }
        w
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random byte changes and truncations of a valid file never panic; whatever parses has
    /// its tensor data in the file.
    #[test]
    fn mutations_never_panic(
        flips in vec((any::<Index>(), any::<u8>()), 0..8),
        cut in option::of(any::<Index>()),
    ) {
        let mut bytes = small_file();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        parse_and_touch(bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random valid content survives write → parse unchanged, and mutations of it never panic.
    #[test]
    fn writer_round_trips_random_files(
        w in arb_writer(),
        flips in vec((any::<Index>(), any::<u8>()), 1..6),
    ) {
        let bytes = w.to_bytes();
        let f = GgufFile::from_vec(bytes.clone()).expect("the writer's output parses");
        prop_assert_eq!(f.alignment, w.alignment());
        prop_assert_eq!(&f.metadata[..], w.metadata());
        prop_assert_eq!(f.tensors.len(), w.tensor_count());
        for (i, t) in f.tensors.iter().enumerate() {
            prop_assert_eq!(&t.name, &format!("t{i}"));
            prop_assert_eq!(f.tensor_data(t).expect("data").len() as u64, t.byte_size);
        }
        let mut mutated = bytes;
        for (i, b) in flips {
            let i = i.index(mutated.len());
            mutated[i] = b;
        }
        parse_and_touch(mutated);
    }
}
