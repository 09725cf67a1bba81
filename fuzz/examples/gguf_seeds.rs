//! Writes the seed corpus for the `gguf_header` fuzz target: small valid GGUF files made by
//! Realm's own writer, so the fuzzer starts past the magic and the counts.
//!
//! `cargo run --example gguf_seeds -- corpus/gguf_header`

use std::path::PathBuf;

use realm_engine::gguf::{Array, GgufWriter, Value};
use realm_kernels::GgmlType;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus/gguf_header".into()));
    std::fs::create_dir_all(&dir)?;

    let mut seeds: Vec<(&str, GgufWriter<'static>)> = Vec::new();

    // Header only.
    seeds.push(("empty", GgufWriter::new()));

    // One key of every value type, arrays of every element type, nested arrays.
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("u8", Value::U8(1))
        .set("i8", Value::I8(-1))
        .set("u16", Value::U16(2))
        .set("i16", Value::I16(-2))
        .set("u32", Value::U32(3))
        .set("i32", Value::I32(-3))
        .set("f32", Value::F32(0.5))
        .set("bool", Value::Bool(true))
        .set("u64", Value::U64(4))
        .set("i64", Value::I64(-4))
        .set("f64", Value::F64(0.25))
        .set("a.u8", Value::Array(Array::U8(vec![1, 2])))
        .set("a.i8", Value::Array(Array::I8(vec![-1])))
        .set("a.u16", Value::Array(Array::U16(vec![1])))
        .set("a.i16", Value::Array(Array::I16(vec![-1])))
        .set("a.u32", Value::Array(Array::U32(vec![1])))
        .set("a.i32", Value::Array(Array::I32(vec![-1, 2])))
        .set("a.f32", Value::Array(Array::F32(vec![0.5])))
        .set("a.bool", Value::Array(Array::Bool(vec![true, false])))
        .set("a.str", Value::Array(Array::String(vec!["a".into(), "bc".into()])))
        .set("a.u64", Value::Array(Array::U64(vec![1])))
        .set("a.i64", Value::Array(Array::I64(vec![-1])))
        .set("a.f64", Value::Array(Array::F64(vec![0.5])))
        .set("a.nested", Value::Array(Array::Array(vec![Array::U8(vec![1]), Array::Array(vec![])])));
    seeds.push(("all_types", w));

    // A tiny llama-shaped file: the keys and tensor types the engine actually reads.
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("llama.block_count", Value::U32(1))
        .set("llama.embedding_length", Value::U32(32))
        .set("tokenizer.ggml.tokens", Value::Array(Array::String(vec!["<s>".into(), "a".into()])))
        .set("tokenizer.ggml.scores", Value::Array(Array::F32(vec![0.0, -1.0])));
    w.add_tensor("token_embd.weight", &[32, 2], GgmlType::Q8_0, vec![0u8; 68])?;
    w.add_tensor("blk.0.attn_q.weight", &[32, 32], GgmlType::Q4_1, vec![0u8; 640])?;
    w.add_tensor("output_norm.weight", &[32], GgmlType::F32, vec![0u8; 128])?;
    seeds.push(("llama_tiny", w));

    // Custom alignment and every tensor layout corner: 1 to 4 dims, K-quants, a 0-sized tensor.
    let mut w = GgufWriter::new();
    w.set_alignment(64)?;
    w.add_tensor("f16", &[2, 1, 1, 3], GgmlType::F16, vec![0u8; 12])?;
    w.add_tensor("q4k", &[256], GgmlType::Q4K, vec![0u8; 144])?;
    w.add_tensor("zero", &[0, 4], GgmlType::F32, Vec::new())?;
    seeds.push(("aligned_64", w));

    for (name, w) in &seeds {
        w.write_to(&dir.join(format!("{name}.gguf")))?;
    }
    println!("wrote {} seeds to {}", seeds.len(), dir.display());
    Ok(())
}
