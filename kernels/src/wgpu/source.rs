//! The WGSL kernels, embedded from `shaders/`, and the modules built from them. Each weight
//! format's matmul module is `matmul.wgsl` with its `unit` region (dequantize 32 elements)
//! replaced by the region of the format's file, plus the byte readers of `bytes.wgsl`, so the
//! tiling, the reduction and the block reads exist once.

use super::Format;

const MATMUL: &str = include_str!("shaders/matmul.wgsl");
/// Byte, word and f16 reads at any offset of `w`, for the formats' `unit` regions.
pub const BYTES: &str = include_str!("shaders/bytes.wgsl");
pub(super) const RMS_NORM: &str = include_str!("shaders/rms_norm.wgsl");
pub(super) const ROPE: &str = include_str!("shaders/rope.wgsl");
pub(super) const SILU_MUL: &str = include_str!("shaders/silu_mul.wgsl");
pub(super) const ADD: &str = include_str!("shaders/add.wgsl");
pub(super) const ATTENTION: &str = include_str!("shaders/attention.wgsl");
pub(super) const ARGMAX: &str = include_str!("shaders/argmax.wgsl");
pub(super) const KV_WRITE_F16: &str = include_str!("shaders/kv_write_f16.wgsl");
const CACHE_F16: &str = include_str!("shaders/cache_f16.wgsl");

const UNIT: (&str, &str) = ("// unit:begin", "// unit:end");
const CACHE: (&str, &str) = ("// cache:begin", "// cache:end");

/// The file whose `unit` region dequantizes `format`.
fn unit_source(format: Format) -> &'static str {
    match format {
        Format::F32 => MATMUL,
        Format::Q4_0 => include_str!("shaders/q4_0.wgsl"),
        Format::Q4_1 => include_str!("shaders/q4_1.wgsl"),
        Format::Q8_0 => include_str!("shaders/q8_0.wgsl"),
        Format::Q4K => include_str!("shaders/q4_k.wgsl"),
        Format::Q5K => include_str!("shaders/q5_k.wgsl"),
        Format::Q6K => include_str!("shaders/q6_k.wgsl"),
    }
}

/// `(before, region, after)` around the `(begin, end)` markers; `None` when they are missing.
fn split<'a>(src: &'a str, (begin, end): (&str, &str)) -> Option<(&'a str, &'a str, &'a str)> {
    let start = src.find(begin)?;
    let stop = start + src[start..].find(end)?;
    Some((&src[..start], &src[start..stop + end.len()], &src[stop + end.len()..]))
}

/// The matmul and embed module of `format`; `None` when a file lacks its markers.
pub(super) fn matmul_module(format: Format) -> Option<String> {
    let (before, _, after) = split(MATMUL, UNIT)?;
    let (_, region, _) = split(unit_source(format), UNIT)?;
    Some(format!("{before}{BYTES}\n{region}{after}"))
}

/// The attention module over an f16 KV cache: `attention.wgsl` with its `cache` region (the
/// cache bindings and their readers) replaced by `cache_f16.wgsl`'s; `None` when a file lacks
/// its markers.
pub(super) fn attention_f16_module() -> Option<String> {
    let (before, _, after) = split(ATTENTION, CACHE)?;
    let (_, region, _) = split(CACHE_F16, CACHE)?;
    Some(format!("{before}{region}{after}"))
}

/// Every module the backend compiles, by name, for validation outside a device.
pub fn shader_modules() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        Format::ALL.iter().filter_map(|&f| matmul_module(f).map(|m| (format!("matmul {f:?}"), m))).collect();
    for (name, src) in [
        ("rms_norm", RMS_NORM),
        ("rope", ROPE),
        ("silu_mul", SILU_MUL),
        ("add", ADD),
        ("attention", ATTENTION),
        ("argmax", ARGMAX),
        ("kv_write_f16", KV_WRITE_F16),
    ] {
        out.push((name.to_string(), src.to_string()));
    }
    out.extend(attention_f16_module().map(|m| ("attention f16".to_string(), m)));
    out
}
