//! `realm quantize IN OUT --type T`: rewrites a GGUF model with its weight matrices in another
//! format, as llama.cpp's `llama-quantize --pure` does (one type for every weight matrix; the
//! `_S`/`_M` mixes that promote some tensors to wider types are not implemented).
//!
//! Which tensors (llama.cpp's `tensor_allows_quantization`): those with two or more dimensions
//! whose names end in `weight`, except norms and a few small special tensors. Everything else
//! (1-D norms, biases) is copied unchanged, and so is a tensor already in the target type.
//! A converted tensor goes through f32: its rows are dequantized, then quantized with
//! llama.cpp's reference quantizers ([`realm_kernels::quant::quantize_row`]).
//!
//! A row length that is not a multiple of the target's block size takes llama.cpp's fallback
//! (`tensor_type_fallback`): Q2_K and Q3_K to Q4_0, Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0,
//! and F16 when even that does not fit. (For the 32-element formats llama.cpp has no fallback
//! and stops; Realm writes F16 there too.)
//!
//! Metadata are copied in order with `general.file_type` set to llama.cpp's
//! `LLAMA_FTYPE_MOSTLY_*` for the type and `general.quantization_version` to 2; split keys are
//! dropped. The output is written through a `.partial` file renamed into place.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use realm_engine::gguf::{GgufFile, GgufWriter, TensorInfo, Value};
use realm_kernels::GgmlType;
use realm_kernels::quant::{dequantize_row, quantize_row_parallel};

use crate::default_model;

/// ggml's `GGML_QNT_VERSION`, which llama.cpp writes as `general.quantization_version`.
const QUANTIZATION_VERSION: u32 = 2;

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// The GGUF file to read, or `default` for the default model.
    input: String,
    /// The GGUF file to write.
    output: PathBuf,
    /// The format of the weight matrices.
    #[arg(long = "type", value_enum)]
    ty: Target,
}

/// A `--type`, named as llama.cpp's `llama-quantize` names it, lower case.
#[derive(Clone, Copy, ValueEnum)]
enum Target {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q6_k")]
    Q6K,
    #[value(name = "q5_k")]
    Q5K,
    #[value(name = "q5_1")]
    Q5_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q4_k")]
    Q4K,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q3_k")]
    Q3K,
    #[value(name = "q2_k")]
    Q2K,
    #[value(name = "f16")]
    F16,
    #[value(name = "bf16")]
    Bf16,
    #[value(name = "f32")]
    F32,
}

impl Target {
    fn ggml_type(self) -> GgmlType {
        match self {
            Target::Q8_0 => GgmlType::Q8_0,
            Target::Q6K => GgmlType::Q6K,
            Target::Q5K => GgmlType::Q5K,
            Target::Q5_1 => GgmlType::Q5_1,
            Target::Q5_0 => GgmlType::Q5_0,
            Target::Q4K => GgmlType::Q4K,
            Target::Q4_1 => GgmlType::Q4_1,
            Target::Q4_0 => GgmlType::Q4_0,
            Target::Q3K => GgmlType::Q3K,
            Target::Q2K => GgmlType::Q2K,
            Target::F16 => GgmlType::F16,
            Target::Bf16 => GgmlType::Bf16,
            Target::F32 => GgmlType::F32,
        }
    }

    /// `general.file_type`: llama.cpp's `enum llama_ftype`. One type everywhere is what the
    /// `_S` ("small") variants of the K-quant mixes name.
    fn file_type(self) -> u32 {
        match self {
            Target::F32 => 0,   // LLAMA_FTYPE_ALL_F32
            Target::F16 => 1,   // LLAMA_FTYPE_MOSTLY_F16
            Target::Q4_0 => 2,  // LLAMA_FTYPE_MOSTLY_Q4_0
            Target::Q4_1 => 3,  // LLAMA_FTYPE_MOSTLY_Q4_1
            Target::Q8_0 => 7,  // LLAMA_FTYPE_MOSTLY_Q8_0
            Target::Q5_0 => 8,  // LLAMA_FTYPE_MOSTLY_Q5_0
            Target::Q5_1 => 9,  // LLAMA_FTYPE_MOSTLY_Q5_1
            Target::Q2K => 10,  // LLAMA_FTYPE_MOSTLY_Q2_K
            Target::Q3K => 11,  // LLAMA_FTYPE_MOSTLY_Q3_K_S
            Target::Q4K => 14,  // LLAMA_FTYPE_MOSTLY_Q4_K_S
            Target::Q5K => 16,  // LLAMA_FTYPE_MOSTLY_Q5_K_S
            Target::Q6K => 18,  // LLAMA_FTYPE_MOSTLY_Q6_K
            Target::Bf16 => 32, // LLAMA_FTYPE_MOSTLY_BF16
        }
    }
}

/// Name parts of tensors llama.cpp never quantizes although they are 2-D `*weight`s (the
/// subset of `tensor_allows_quantization` that applies to text models).
const KEEP: &[&str] = &[
    "_norm.weight",
    "ffn_gate_inp.weight",
    "position_embd.weight",
    "token_types.weight",
    "attn_rel_b.weight",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
];

fn allows_quantization(t: &TensorInfo) -> bool {
    // ggml_n_dims: trailing dimensions of 1 do not count.
    let n_dims = t.dims.iter().rposition(|&d| d != 1).map_or(1, |p| p + 1);
    n_dims >= 2 && t.name.ends_with("weight") && !KEEP.iter().any(|k| t.name.contains(k))
}

/// The type a weight matrix with `cols` columns gets, and why when it is not `target`.
fn choose(target: GgmlType, cols: u64) -> (GgmlType, Option<String>) {
    let fits = |ty: GgmlType| cols.is_multiple_of(ty.block_size());
    if fits(target) {
        return (target, None);
    }
    let fallback = match target {
        GgmlType::Q2K | GgmlType::Q3K => Some(GgmlType::Q4_0),
        GgmlType::Q4K => Some(GgmlType::Q5_0),
        GgmlType::Q5K => Some(GgmlType::Q5_1),
        GgmlType::Q6K => Some(GgmlType::Q8_0),
        _ => None,
    };
    let ty = fallback.filter(|&f| fits(f)).unwrap_or(GgmlType::F16);
    (ty, Some(format!("{cols} columns are not a multiple of {target}'s block of {}", target.block_size())))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let started = Instant::now();
    let input = default_model::resolve(&args.input)?;
    let src = GgufFile::open(&input).with_context(|| format!("reading {}", input.display()))?;
    if args.output.canonicalize().ok().is_some_and(|out| input.canonicalize().ok() == Some(out)) {
        bail!("the output {} is the input file; write to another path", args.output.display());
    }
    let target = args.ty.ggml_type();

    let mut w = GgufWriter::new();
    for (key, value) in &src.metadata {
        // llama.cpp drops split.no, split.count and split.tensors.count: the output is one file.
        if !key.starts_with("split.") {
            w.set(key.clone(), value.clone());
        }
    }
    w.set("general.quantization_version", Value::U32(QUANTIZATION_VERSION));
    w.set("general.file_type", Value::U32(args.ty.file_type()));

    let mut out = std::io::stdout().lock();
    let n = src.tensors.len();
    let (mut converted, mut fell_back, mut bytes_in, mut bytes_out) = (0usize, 0usize, 0u64, 0u64);
    let mut f32_buf: Vec<f32> = Vec::new();
    for (i, t) in src.tensors.iter().enumerate() {
        let data = src.tensor_data(t)?;
        let (ty, note) = if allows_quantization(t) { choose(target, t.dims[0]) } else { (t.ggml_type, None) };
        let dims = t.dims.iter().map(u64::to_string).collect::<Vec<_>>().join(" x ");
        let size = if ty == t.ggml_type {
            w.add_tensor(t.name.clone(), &t.dims, ty, data)?;
            t.byte_size
        } else {
            let q = convert(t, data, ty, &mut f32_buf).with_context(|| format!("tensor {:?} ({dims})", t.name))?;
            let size = q.len() as u64;
            w.add_tensor(t.name.clone(), &t.dims, ty, q)?;
            converted += 1;
            size
        };
        fell_back += usize::from(note.is_some());
        bytes_in += t.byte_size;
        bytes_out += size;
        let how = match (&note, ty == t.ggml_type) {
            (Some(why), _) => format!("  ({why}: {ty})"),
            (None, true) => "  (copied)".to_string(),
            (None, false) => String::new(),
        };
        writeln!(
            out,
            "[{:>w$}/{n}] {:<34} {:<14} {:>5} -> {:<5} {:>8.2} -> {:>8.2} MiB{how}",
            i + 1,
            t.name,
            dims,
            t.ggml_type.name(),
            ty.name(),
            mib(t.byte_size),
            mib(size),
            w = n.to_string().len(),
        )?;
    }
    w.write_to(&args.output).with_context(|| format!("writing {}", args.output.display()))?;
    let out_size = std::fs::metadata(&args.output).with_context(|| format!("{}", args.output.display()))?.len();
    writeln!(
        out,
        "realm: quantized {} ({:.2} MiB) to {} ({:.2} MiB) as {target} in {:.2} s: {converted} of {n} tensors \
         converted ({fell_back} to a fallback type), tensor data {:.2} -> {:.2} MiB",
        input.display(),
        mib(src.file_size()),
        args.output.display(),
        mib(out_size),
        started.elapsed().as_secs_f64(),
        mib(bytes_in),
        mib(bytes_out),
    )?;
    Ok(())
}

/// `data` (a tensor of `t.ggml_type`) as `ty`, through f32.
fn convert(t: &TensorInfo, data: &[u8], ty: GgmlType, f32_buf: &mut Vec<f32>) -> Result<Vec<u8>> {
    let elements = t.element_count();
    let n = usize::try_from(elements).with_context(|| format!("{elements} elements do not fit in memory"))?;
    f32_buf.clear();
    f32_buf.resize(n, 0.0);
    dequantize_row(t.ggml_type, data, f32_buf).with_context(|| format!("reading its {} data", t.ggml_type))?;
    let bytes = ty
        .byte_size(elements)?
        .and_then(|b| usize::try_from(b).ok())
        .with_context(|| format!("{elements} elements of {ty} do not fit in memory"))?;
    let mut q = vec![0u8; bytes];
    quantize_row_parallel(ty, f32_buf, &mut q).with_context(|| format!("quantizing to {ty}"))?;
    Ok(q)
}
