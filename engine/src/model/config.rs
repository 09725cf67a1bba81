//! Llama-family hyperparameters read from GGUF metadata.

use realm_kernels::RopeLayout;

use super::ModelError;
use crate::gguf::GgufFile;

/// Architectures this forward pass runs, with their RoPE layout (llama.cpp's
/// `llama_model_rope_type`). Models of these architectures share the llama tensor names.
const ARCHITECTURES: &[(&str, RopeLayout)] = &[("llama", RopeLayout::Normal), ("mistral", RopeLayout::Normal)];

#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub architecture: String,
    pub context_length: usize,
    pub dim: usize,
    pub n_layer: usize,
    pub ffn_dim: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub rope_freq_base: f32,
    pub rope_layout: RopeLayout,
    pub rms_eps: f32,
    pub vocab_size: usize,
}

fn positive(f: &GgufFile, key: &str) -> Result<usize, ModelError> {
    let v = f.get_u64(key)?;
    usize::try_from(v).ok().filter(|&v| v > 0).ok_or_else(|| ModelError::BadHyperparameter {
        key: key.to_string(),
        value: v.to_string(),
        reason: "must be a positive size".into(),
    })
}

impl LlamaConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<Self, ModelError> {
        let arch = f.architecture()?.to_string();
        let rope_layout =
            ARCHITECTURES.iter().find(|(name, _)| *name == arch).map(|(_, layout)| *layout).ok_or_else(|| {
                ModelError::UnsupportedArchitecture {
                    architecture: arch.clone(),
                    supported: ARCHITECTURES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
                }
            })?;
        let key = |k: &str| format!("{arch}.{k}");
        let dim = positive(f, &key("embedding_length"))?;
        let n_head = positive(f, &key("attention.head_count"))?;
        let n_kv_head = match f.get(&key("attention.head_count_kv")) {
            Some(_) => positive(f, &key("attention.head_count_kv"))?,
            None => n_head,
        };
        let bad = |k: &str, value: String, reason: &str| ModelError::BadHyperparameter {
            key: key(k),
            value,
            reason: reason.into(),
        };
        if !dim.is_multiple_of(n_head) {
            return Err(bad("attention.head_count", n_head.to_string(), "does not divide the embedding length"));
        }
        if !n_head.is_multiple_of(n_kv_head) {
            return Err(bad("attention.head_count_kv", n_kv_head.to_string(), "does not divide the head count"));
        }
        let head_dim = dim / n_head;
        let n_rot = match f.get(&key("rope.dimension_count")) {
            Some(_) => positive(f, &key("rope.dimension_count"))?,
            None => head_dim,
        };
        if n_rot > head_dim || !n_rot.is_multiple_of(2) {
            return Err(bad("rope.dimension_count", n_rot.to_string(), "must be even and at most the head size"));
        }
        let rope_freq_base = match f.get(&key("rope.freq_base")) {
            Some(_) => f.get_f64(&key("rope.freq_base"))? as f32,
            None => 10_000.0,
        };
        if !(rope_freq_base.is_finite() && rope_freq_base > 0.0) {
            return Err(bad("rope.freq_base", rope_freq_base.to_string(), "must be a positive number"));
        }
        check_rope_scaling(f, &arch)?;
        let rms_eps = f.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32;
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(bad("attention.layer_norm_rms_epsilon", rms_eps.to_string(), "must be a non-negative number"));
        }
        let vocab_size = f.require_tensor("token_embd.weight")?.dims.get(1).copied().unwrap_or(0) as usize;
        Ok(Self {
            context_length: positive(f, &key("context_length"))?,
            n_layer: positive(f, &key("block_count"))?,
            ffn_dim: positive(f, &key("feed_forward_length"))?,
            architecture: arch,
            dim,
            n_head,
            n_kv_head,
            head_dim,
            n_rot,
            rope_freq_base,
            rope_layout,
            rms_eps,
            vocab_size,
        })
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
}

/// Rope scaling changes the positions' frequencies; running a model that needs it without it
/// gives plausible-looking garbage, so anything but "none" (or a factor of 1) is refused.
fn check_rope_scaling(f: &GgufFile, arch: &str) -> Result<(), ModelError> {
    let type_key = format!("{arch}.rope.scaling.type");
    let factor_key = format!("{arch}.rope.scaling.factor");
    let kind = match f.get(&type_key) {
        Some(_) => f.get_str(&type_key)?.to_string(),
        None => "none".to_string(),
    };
    let factor = match f.get(&factor_key) {
        Some(_) => f.get_f64(&factor_key)?,
        None => 1.0,
    };
    if kind != "none" && factor != 1.0 && factor != 0.0 {
        return Err(ModelError::UnsupportedRopeScaling { kind, factor });
    }
    if kind == "none" && factor != 1.0 && factor != 0.0 {
        return Err(ModelError::UnsupportedRopeScaling { kind: "linear".into(), factor });
    }
    Ok(())
}
