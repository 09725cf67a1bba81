//! Token ids back to text: each token's bytes (llama.cpp's `token_to_piece`), whole sequences,
//! and a streaming decoder that only hands out complete UTF-8.

use super::{Tokenizer, attr, bpe};

/// Whether CONTROL and UNKNOWN tokens (`<|im_end|>`, `<unk>`) appear in decoded text.
/// User-defined tokens always do, as in llama.cpp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Special {
    /// Write their text, like llama.cpp's `token_to_piece(.., special = true)`.
    #[default]
    Render,
    /// Leave them out, like `special = false`.
    Skip,
}

/// All tokens' bytes, concatenated, with `offsets[id]..offsets[id + 1]` for each id.
pub(crate) struct Pieces {
    bytes: Vec<u8>,
    offsets: Vec<usize>,
}

impl Pieces {
    /// `byte_level`: GPT-2 BPE texts hold byte-encoded code points; otherwise (SentencePiece)
    /// U+2581 stands for a space.
    pub fn build(tokens: &[String], attrs: &[u8], byte_level: bool) -> Self {
        let mut bytes = Vec::with_capacity(tokens.iter().map(String::len).sum());
        let mut offsets = Vec::with_capacity(tokens.len() + 1);
        offsets.push(0);
        for (text, &a) in tokens.iter().zip(attrs) {
            if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
                bytes.extend_from_slice(text.as_bytes());
            } else if a & attr::NORMAL != 0 {
                if byte_level {
                    for c in text.chars() {
                        match bpe::char_to_byte(c) {
                            Some(b) => bytes.push(b),
                            // llama.cpp writes an "[UNK_BYTE_..]" marker; the code point itself
                            // is more useful.
                            None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                } else {
                    bytes.extend_from_slice(text.replace('\u{2581}', " ").as_bytes());
                }
            } else if a & attr::BYTE != 0 {
                match parse_byte_token(text) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(text.as_bytes()),
                }
            }
            // UNUSED and UNDEFINED tokens decode to nothing.
            offsets.push(bytes.len());
        }
        Self { bytes, offsets }
    }

    pub fn get(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let (&start, &end) = (self.offsets.get(i)?, self.offsets.get(i + 1)?);
        self.bytes.get(start..end)
    }
}

/// `<0xAB>` → `0xAB`.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    /// One token's bytes, or `None` for an id outside the vocabulary. A token may hold part of
    /// a UTF-8 sequence (byte tokens, byte-level BPE), hence bytes rather than text.
    pub fn token_bytes(&self, id: u32, special: Special) -> Option<&[u8]> {
        let a = *self.attrs.get(id as usize)?;
        if special == Special::Skip && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return Some(&[]);
        }
        self.pieces.get(id)
    }

    /// Decodes a whole sequence, rendering special tokens as their text. Ids outside the
    /// vocabulary are skipped; bytes that do not form UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, Special::Render)
    }

    /// Decodes a whole sequence. When `add_space_prefix` is set the space that encoding put
    /// before the text is removed from the first token, as llama.cpp's `detokenize` does.
    pub fn decode_with(&self, ids: &[u32], special: Special) -> String {
        let mut bytes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let mut piece = self.token_bytes(id, special).unwrap_or_default();
            if i == 0 && self.add_space_prefix {
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
            }
            bytes.extend_from_slice(piece);
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// A decoder for tokens as they are generated (see [`StreamDecoder`]).
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }
}

/// Turns tokens into text one at a time, holding back the bytes of a code point that a token
/// left incomplete until a later token completes it, so every returned string is valid UTF-8
/// and the concatenation equals decoding all tokens at once.
///
/// It decodes a continuation: no leading space is stripped (unlike [`Tokenizer::decode`] with
/// `add_space_prefix`), as in llama.cpp's generation loops.
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    special: Special,
    pending: Vec<u8>,
}

impl<'t> StreamDecoder<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        Self::with_special(tokenizer, Special::Render)
    }

    pub fn with_special(tokenizer: &'t Tokenizer, special: Special) -> Self {
        Self { tokenizer, special, pending: Vec::new() }
    }

    /// Adds one token and returns the text that became complete (often empty mid-code point).
    pub fn push(&mut self, id: u32) -> String {
        if let Some(piece) = self.tokenizer.token_bytes(id, self.special) {
            self.pending.extend_from_slice(piece);
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Flushes bytes still held back; an unfinished code point becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
