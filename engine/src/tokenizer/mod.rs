//! Tokenizers built from GGUF metadata (`tokenizer.ggml.*`), matching llama.cpp's
//! `llama_vocab` token for token: SentencePiece (`llama`) and GPT-2 byte-level BPE (`gpt2`) with
//! llama.cpp's pre-tokenizer regexes.
//!
//! Not replicated: the WordPiece, Unigram, RWKV and PLaMo-2 vocabularies, and llama.cpp's
//! per-model attribute tweaks (phi-3 `rstrip`, gpt-oss `<|channel|>` etc.). Decoded text is
//! exact: llama.cpp's optional `clean_spaces` post-processing is not applied.

mod bpe;
mod decode;
mod gguf;
mod pretok;
mod special;
mod spm;
mod unicode;
mod unicode_data;

use std::collections::HashMap;

/// Token text → id. Keys come from the model file and are only looked up afterwards, so a fast
/// non-keyed hash is safe, and it halves the tokenizer's share of a cold start.
pub(crate) type TokenIds = HashMap<String, u32, rustc_hash::FxBuildHasher>;

pub use decode::{Special, StreamDecoder};

use crate::gguf::GgufError;
use bpe::Bpe;
use decode::Pieces;
use special::Fragment;

/// Token attributes, from `tokenizer.ggml.token_type` (llama.cpp's `llama_token_attr`).
pub(crate) mod attr {
    pub const UNDEFINED: u8 = 1;
    pub const NORMAL: u8 = 2;
    pub const UNKNOWN: u8 = 4;
    pub const CONTROL: u8 = 8;
    pub const USER_DEFINED: u8 = 16;
    pub const UNUSED: u8 = 32;
    pub const BYTE: u8 = 64;

    /// GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub fn from_token_type(t: i32) -> u8 {
        match t {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => UNDEFINED,
        }
    }
}

/// Why a vocabulary cannot be used. Messages name the metadata key and the offending value.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer.ggml.model = {model:?} is not supported (supported: \"llama\", \"gpt2\")")]
    UnsupportedModel { model: String },
    #[error("tokenizer.ggml.pre = {pre:?} is not a known pre-tokenizer (supported: {supported})")]
    UnknownPreTokenizer { pre: String, supported: String },
    #[error(transparent)]
    Metadata(#[from] GgufError),
    #[error("metadata key {key:?} holds {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: String },
    #[error("tokenizer.ggml.tokens is empty")]
    EmptyVocab,
    #[error("tokenizer.ggml.tokens has {n_tokens} entries, more than 32-bit ids can number")]
    TooManyTokens { n_tokens: usize },
    #[error("{key} has {len} entries but tokenizer.ggml.tokens has {n_tokens}")]
    LengthMismatch { key: &'static str, len: usize, n_tokens: usize },
    #[error("tokenizer.ggml.tokens holds {text:?} twice, at ids {first} and {second}")]
    DuplicateToken { text: String, first: u32, second: u32 },
    #[error("{key} = {id} is outside the vocabulary of {n_tokens} tokens")]
    TokenIdOutOfRange { key: &'static str, id: u64, n_tokens: usize },
    #[error("tokenizer.ggml.merges is missing; a gpt2 (BPE) vocabulary needs it")]
    MissingMerges,
    #[error("tokenizer.ggml.merges[{index}] = {merge:?} is not two parts separated by a space")]
    MalformedMerge { index: usize, merge: String },
    #[error("pre-tokenizer {pre:?}: a regex does not compile: {source}")]
    Regex { pre: String, source: Box<fancy_regex::Error> },
}

/// A vocabulary in plain parts, as the `tokenizer.ggml.*` keys hold it. `None` means the key is
/// absent and llama.cpp's default applies.
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `"llama"` (SentencePiece) or `"gpt2"` (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`; a BPE vocabulary without it uses `"default"`, as llama.cpp does.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    /// `"left right"` pairs, highest priority first.
    pub merges: Option<Vec<String>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_space_prefix: Option<bool>,
}

enum Model {
    Spm { byte_tokens: Box<[Option<u32>; 256]> },
    Bpe(Box<Bpe>),
}

/// A vocabulary with its encoder and decoder.
pub struct Tokenizer {
    model: Model,
    tokens: Vec<String>,
    token_to_id: TokenIds,
    scores: Vec<f32>,
    attrs: Vec<u8>,
    pieces: Pieces,
    /// CONTROL / USER_DEFINED / UNKNOWN ids, in the order `encode` looks for them.
    partition_order: Vec<u32>,
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field(
                "model",
                &match self.model {
                    Model::Spm { .. } => "llama",
                    Model::Bpe(_) => "gpt2",
                },
            )
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds a tokenizer from plain parts, applying llama.cpp's defaults for what is absent.
    pub fn from_parts(spec: TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        let TokenizerSpec { model, pre, mut tokens, scores, token_types, merges, .. } = spec;
        let is_spm = match model.as_str() {
            "llama" => true,
            "gpt2" => false,
            _ => return Err(TokenizerError::UnsupportedModel { model }),
        };
        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        let n_u32 = u32::try_from(n).map_err(|_| TokenizerError::TooManyTokens { n_tokens: n })?;
        let check_len = |key, len: usize| {
            if len < n { Err(TokenizerError::LengthMismatch { key, len, n_tokens: n }) } else { Ok(()) }
        };
        let scores = match scores {
            Some(s) => {
                check_len("tokenizer.ggml.scores", s.len())?;
                s[..n].to_vec()
            }
            None => vec![0.0; n],
        };
        let mut attrs = match &token_types {
            Some(t) => {
                check_len("tokenizer.ggml.token_type", t.len())?;
                t[..n].iter().map(|&t| attr::from_token_type(t)).collect()
            }
            None => vec![attr::NORMAL; n],
        };

        let mut token_to_id = TokenIds::with_capacity_and_hasher(n, Default::default());
        for (i, text) in tokens.iter_mut().enumerate() {
            let id = i as u32; // i < n fits in u32
            if text.is_empty() {
                *text = format!("[EMPTY_{i}]");
            }
            if let Some(first) = token_to_id.insert(text.clone(), id) {
                return Err(TokenizerError::DuplicateToken { text: text.clone(), first, second: id });
            }
        }

        let check_id = |key: &'static str, id: Option<u32>| match id {
            Some(id) if id >= n_u32 => Err(TokenizerError::TokenIdOutOfRange { key, id: id.into(), n_tokens: n }),
            _ => Ok(id),
        };
        // llama.cpp's defaults: SentencePiece bos 1, eos 2, unk 0; BPE bos = eos = 11. A default
        // outside the vocabulary is dropped.
        let default = |id: u32| Some(id).filter(|&id| id < n_u32);
        let (def_bos, def_eos, def_unk) =
            if is_spm { (default(1), default(2), default(0)) } else { (default(11), default(11), None) };
        let bos = check_id("tokenizer.ggml.bos_token_id", spec.bos)?.or(def_bos);
        let eos = check_id("tokenizer.ggml.eos_token_id", spec.eos)?.or(def_eos);
        let unk = check_id("tokenizer.ggml.unknown_token_id", spec.unk)?.or(def_unk);
        let given = special::Given {
            eos,
            eot: check_id("tokenizer.ggml.eot_token_id", spec.eot)?,
            eom: check_id("tokenizer.ggml.eom_token_id", spec.eom)?,
            fim_pad: check_id("tokenizer.ggml.fim_pad_token_id", spec.fim_pad)?,
            fim_rep: check_id("tokenizer.ggml.fim_rep_token_id", spec.fim_rep)?,
            fim_sep: check_id("tokenizer.ggml.fim_sep_token_id", spec.fim_sep)?,
        };
        let detected = special::detect(&tokens, &mut attrs, given);

        let (model, default_add_bos) = if is_spm {
            let mut byte_tokens = Box::new([None; 256]);
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                let hex = format!("<0x{b:02X}>");
                let plain = if b < 0x80 { Some((b as u8 as char).to_string()) } else { None };
                *slot = token_to_id
                    .get(&hex)
                    .or_else(|| plain.and_then(|p| token_to_id.get(&p)))
                    .copied()
                    // llama.cpp aborts on a missing byte token; the unknown token is kinder.
                    .or(unk);
            }
            (Model::Spm { byte_tokens }, true)
        } else {
            let pre_name = pre.unwrap_or_else(|| "default".to_string());
            let cfg = pretok::lookup(&pre_name).ok_or_else(|| TokenizerError::UnknownPreTokenizer {
                pre: pre_name.clone(),
                supported: pretok::supported_names(),
            })?;
            let pre_tok = pretok::PreTokenizer::new(cfg.regexes)
                .map_err(|source| TokenizerError::Regex { pre: pre_name.clone(), source })?;
            let merges = merges.ok_or(TokenizerError::MissingMerges)?;
            let bpe = Bpe::new(pre_tok, cfg.ignore_merges, &merges, &token_to_id, n_u32)?;
            (Model::Bpe(Box::new(bpe)), cfg.add_bos)
        };

        let pieces = Pieces::build(&tokens, &attrs, !is_spm);
        let partition_order = special::partition_order(&tokens, &attrs);
        Ok(Tokenizer {
            model,
            tokens,
            token_to_id,
            scores,
            attrs,
            pieces,
            partition_order,
            eog: detected.eog,
            bos,
            eos,
            eot: detected.eot,
            add_bos: spec.add_bos.unwrap_or(default_add_bos),
            add_space_prefix: spec.add_space_prefix.unwrap_or(is_spm),
        })
    }

    /// A prompt's tokens: BOS first when the model asks for it, special tokens parsed.
    pub fn encode_prompt(&self, text: &str) -> Vec<u32> {
        let mut ids: Vec<u32> = self.bos_id().filter(|_| self.add_bos()).into_iter().collect();
        ids.extend(self.encode(text, true));
        ids
    }

    /// Encodes text without adding BOS (see [`Tokenizer::add_bos`]). With `parse_special`,
    /// the texts of CONTROL and UNKNOWN tokens (`<|im_start|>`) become those tokens;
    /// USER_DEFINED tokens are matched either way, as in llama.cpp.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let frags = special::partition(text, &self.partition_order, &self.tokens, &self.attrs, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        match &self.model {
            Model::Spm { byte_tokens } => {
                let spm = spm::Spm { token_to_id: &self.token_to_id, scores: &self.scores, byte_tokens };
                // A space goes before the text at the start and after every special token.
                let mut prev_special = true;
                let mut buf = String::new();
                for frag in frags {
                    match frag {
                        Fragment::Text(t) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            buf.extend(t.chars().map(|c| if c == ' ' { '\u{2581}' } else { c }));
                            spm.encode(&buf, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Bpe(bpe) => {
                for frag in frags {
                    match frag {
                        Fragment::Text(t) => bpe.encode(t, &self.token_to_id, &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        out
    }

    /// Whether a prompt should start with BOS (`tokenizer.ggml.add_bos_token`; by default true
    /// for SentencePiece and Llama-3-style BPE, false for other BPE vocabularies).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-turn token: `tokenizer.ggml.eot_token_id`, else the first token named like
    /// one (`<|eot_id|>`, `<|im_end|>`, `<|endoftext|>`, ...).
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// Whether generation stops at `id`: EOS, EOT, EOM, FIM pad/repo/separator tokens and
    /// every token whose text llama.cpp treats as end of generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// The token's text as stored in the vocabulary (byte-encoded for GPT-2 BPE, with U+2581
    /// for spaces in SentencePiece).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a vocabulary text, exactly as stored.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}

#[cfg(test)]
mod tests;
