//! Reading a [`TokenizerSpec`] from GGUF metadata.

use super::{Tokenizer, TokenizerError, TokenizerSpec};
use crate::gguf::{Array, GgufFile, Value};

impl Tokenizer {
    /// Reads the `tokenizer.ggml.*` keys and builds the tokenizer.
    pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_parts(spec_from_gguf(f)?)
    }

    /// As [`Tokenizer::from_gguf`], moving the vocabulary and merges out of `f` instead of
    /// copying them (they are left empty there).
    pub fn from_gguf_taking(f: &mut GgufFile) -> Result<Tokenizer, TokenizerError> {
        let (tokens, merges) = (f.take_strings("tokenizer.ggml.tokens"), f.take_strings("tokenizer.ggml.merges"));
        let mut spec = spec_from_gguf(f);
        if let Ok(spec) = &mut spec {
            spec.tokens = tokens.unwrap_or_default();
            spec.merges = merges;
        }
        Tokenizer::from_parts(spec?)
    }
}

fn wrong(key: &str, expected: &'static str, found: &Value) -> TokenizerError {
    match found {
        Value::Array(a) => wrong_array(key, expected, a),
        v => TokenizerError::WrongType { key: key.to_string(), expected, found: format!("a {}", v.value_type()) },
    }
}

fn wrong_array(key: &str, expected: &'static str, found: &Array) -> TokenizerError {
    let found = format!("an array of {}", found.element_type());
    TokenizerError::WrongType { key: key.to_string(), expected, found }
}

fn opt_str(f: &GgufFile, key: &str) -> Result<Option<String>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(wrong(key, "a string", v)),
    }
}

fn opt_bool(f: &GgufFile, key: &str) -> Result<Option<bool>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| wrong(key, "a bool", v)),
    }
}

fn opt_id(f: &GgufFile, key: &'static str) -> Result<Option<u32>, TokenizerError> {
    let Some(v) = f.get(key) else { return Ok(None) };
    let id = v.as_u64().ok_or_else(|| wrong(key, "a non-negative integer", v))?;
    let n_tokens = match f.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    u32::try_from(id).map(Some).map_err(|_| TokenizerError::TokenIdOutOfRange { key, id, n_tokens })
}

fn opt_strings(f: &GgufFile, key: &str) -> Result<Option<Vec<String>>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::Array(Array::String(v))) => Ok(Some(v.clone())),
        Some(v) => Err(wrong(key, "an array of strings", v)),
    }
}

fn spec_from_gguf(f: &GgufFile) -> Result<TokenizerSpec, TokenizerError> {
    let model = f.get_str("tokenizer.ggml.model")?.to_string();
    let tokens = match f.get_array("tokenizer.ggml.tokens")? {
        Array::String(v) => v.clone(),
        a => return Err(wrong_array("tokenizer.ggml.tokens", "an array of strings", a)),
    };
    let scores = match f.get("tokenizer.ggml.scores") {
        None => None,
        Some(Value::Array(Array::F32(v))) => Some(v.clone()),
        // llama.cpp also accepts integer scores.
        Some(Value::Array(Array::I32(v))) => Some(v.iter().map(|&s| s as f32).collect()),
        Some(v) => return Err(wrong("tokenizer.ggml.scores", "an array of f32 or i32", v)),
    };
    let token_types = match f.get("tokenizer.ggml.token_type") {
        None => None,
        Some(Value::Array(Array::I32(v))) => Some(v.clone()),
        Some(v) => return Err(wrong("tokenizer.ggml.token_type", "an array of i32", v)),
    };
    Ok(TokenizerSpec {
        pre: opt_str(f, "tokenizer.ggml.pre")?,
        merges: opt_strings(f, "tokenizer.ggml.merges")?,
        bos: opt_id(f, "tokenizer.ggml.bos_token_id")?,
        eos: opt_id(f, "tokenizer.ggml.eos_token_id")?,
        eot: opt_id(f, "tokenizer.ggml.eot_token_id")?,
        eom: opt_id(f, "tokenizer.ggml.eom_token_id")?,
        unk: opt_id(f, "tokenizer.ggml.unknown_token_id")?,
        fim_pad: opt_id(f, "tokenizer.ggml.fim_pad_token_id")?,
        fim_rep: opt_id(f, "tokenizer.ggml.fim_rep_token_id")?,
        fim_sep: opt_id(f, "tokenizer.ggml.fim_sep_token_id")?,
        add_bos: opt_bool(f, "tokenizer.ggml.add_bos_token")?,
        add_space_prefix: opt_bool(f, "tokenizer.ggml.add_space_prefix")?,
        model,
        tokens,
        scores,
        token_types,
    })
}
