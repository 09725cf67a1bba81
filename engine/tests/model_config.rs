//! Loading llama-family models from tiny GGUF files written here: hyperparameters, tensor
//! shapes and what is refused.

use realm_engine::gguf::{GgufFile, GgufWriter, Value};
use realm_engine::model::{Llama, Logits, ModelError, SeqStep};
use realm_kernels::GgmlType;
use realm_kernels::cpu::{Activations, Cpu};

const DIM: u64 = 32;
const FFN: u64 = 64;
const VOCAB: u64 = 16;
const HEADS: u32 = 4;
const KV_HEADS: u32 = 2;

fn f32_bytes(n: u64, seed: u64) -> Vec<u8> {
    (0..n).flat_map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5).to_le_bytes()).collect()
}

/// A one-layer llama with deterministic weights; `edit` changes it before it is written.
fn tiny_model(edit: impl FnOnce(&mut GgufWriter<'static>)) -> Result<Llama<Cpu>, ModelError> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("llama.context_length", Value::U32(64))
        .set("llama.embedding_length", Value::U32(DIM as u32))
        .set("llama.block_count", Value::U32(1))
        .set("llama.feed_forward_length", Value::U32(FFN as u32))
        .set("llama.attention.head_count", Value::U32(HEADS))
        .set("llama.attention.head_count_kv", Value::U32(KV_HEADS))
        .set("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .set("llama.rope.freq_base", Value::F32(10_000.0));
    let kv = DIM / u64::from(HEADS) * u64::from(KV_HEADS);
    let tensors: [(&str, &[u64]); 12] = [
        ("token_embd.weight", &[DIM, VOCAB]),
        ("output_norm.weight", &[DIM]),
        ("blk.0.attn_norm.weight", &[DIM]),
        ("blk.0.attn_q.weight", &[DIM, DIM]),
        ("blk.0.attn_k.weight", &[DIM, kv]),
        ("blk.0.attn_v.weight", &[DIM, kv]),
        ("blk.0.attn_output.weight", &[DIM, DIM]),
        ("blk.0.ffn_norm.weight", &[DIM]),
        ("blk.0.ffn_gate.weight", &[DIM, FFN]),
        ("blk.0.ffn_up.weight", &[DIM, FFN]),
        ("blk.0.ffn_down.weight", &[FFN, DIM]),
        ("unused.weight", &[DIM]),
    ];
    for (i, (name, dims)) in tensors.iter().enumerate() {
        let n = dims.iter().product();
        w.add_tensor(*name, dims, GgmlType::F32, f32_bytes(n, i as u64)).expect("tensor");
    }
    edit(&mut w);
    let file = GgufFile::from_vec(w.to_bytes()).expect("parse");
    Llama::load(&file, Cpu::new(1, Activations::F32).expect("cpu"))
}

fn logits(m: &Llama<Cpu>, tokens: &[u32]) -> Vec<f32> {
    let mut cache = m.new_cache().expect("cache");
    m.forward(&mut [SeqStep { cache: &mut cache, tokens, logits: Logits::Last }]).expect("forward").concat()
}

#[test]
fn a_tiny_model_loads_and_runs() {
    let m = tiny_model(|_| {}).expect("load");
    assert_eq!((m.config.n_head, m.config.n_kv_head, m.config.head_dim), (4, 2, 8));
    assert_eq!(m.config.vocab_size, VOCAB as usize);
    let l = logits(&m, &[1, 2, 3]);
    assert_eq!(l.len(), VOCAB as usize);
    assert!(l.iter().all(|v| v.is_finite()));
}

#[test]
fn a_separate_output_head_is_used_when_present() {
    let tied = logits(&tiny_model(|_| {}).expect("tied"), &[1, 2]);
    let separate = tiny_model(|w| {
        w.add_tensor("output.weight", &[DIM, VOCAB], GgmlType::F32, f32_bytes(DIM * VOCAB, 99)).expect("tensor");
    })
    .expect("separate");
    assert_ne!(logits(&separate, &[1, 2]), tied);
}

#[test]
fn rope_scaling_is_refused() {
    let err = tiny_model(|w| {
        w.set("llama.rope.scaling.type", Value::String("yarn".into()))
            .set("llama.rope.scaling.factor", Value::F32(4.0));
    })
    .err()
    .expect("refused");
    assert!(matches!(&err, ModelError::UnsupportedRopeScaling { kind, .. } if kind == "yarn"), "{err}");
    assert!(err.to_string().contains("yarn") && err.to_string().contains('4'), "{err}");
    // Scaling type "none" (or a factor of 1) is plain rope.
    tiny_model(|w| {
        w.set("llama.rope.scaling.type", Value::String("none".into()));
    })
    .expect("none is fine");
}

#[test]
fn other_architectures_are_refused_by_name() {
    let err = tiny_model(|w| {
        w.set("general.architecture", Value::String("qwen2".into()));
    })
    .err()
    .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("qwen2") && msg.contains("llama"), "{msg}");
}

#[test]
fn wrong_shapes_and_bad_hyperparameters_name_what_is_wrong() {
    let err = tiny_model(|w| {
        w.set("llama.feed_forward_length", Value::U32(48));
    })
    .err()
    .expect("refused");
    assert!(matches!(&err, ModelError::TensorShape { name, .. } if name == "blk.0.ffn_gate.weight"), "{err}");

    let err = tiny_model(|w| {
        w.set("llama.attention.head_count", Value::U32(5));
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("llama.attention.head_count"), "{err}");

    let err = tiny_model(|w| {
        w.set("llama.block_count", Value::U32(2));
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("blk.1.attn_norm.weight"), "{err}");

    let err = tiny_model(|w| {
        w.set("llama.attention.layer_norm_rms_epsilon", Value::String("small".into()));
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("layer_norm_rms_epsilon"), "{err}");
}
