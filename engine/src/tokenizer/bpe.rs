//! GPT-2 byte-level BPE (`tokenizer.ggml.model = "gpt2"`), as llama.cpp's
//! `llm_tokenizer_bpe_session`: each pre-token is byte-encoded (every byte becomes one printable
//! code point), split into those code points, and the adjacent pair with the lowest merge rank
//! (ties: the leftmost) is merged until no pair has a rank.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::pretok::PreTokenizer;
use super::{TokenIds, TokenizerError};

/// The GPT-2 byte-to-code-point table: printable Latin-1 bytes map to themselves, the other 68
/// bytes to U+0100.. in byte order.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let cp = if is_printable(b as u8) {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        // All values are below U+0144, so they are valid scalar values.
        *slot = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

const fn is_printable(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The bytes that GPT-2 moves to U+0100.., in order.
const NON_PRINTABLE: [u8; 68] = {
    let mut out = [0u8; 68];
    let (mut b, mut n) = (0usize, 0usize);
    while b < 256 {
        if !is_printable(b as u8) {
            out[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    out
};

/// The inverse of [`byte_to_char_table`] for decoding; `None` for code points outside it.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    match cp {
        0..=0xFF if is_printable(cp as u8) => Some(cp as u8),
        0x100..=0x143 => NON_PRINTABLE.get((cp - 0x100) as usize).copied(),
        _ => None,
    }
}

/// A fast hasher for the `(u32, u32)` merge keys; the keys come from the model file, whose
/// author cannot gain anything by making lookups collide.
#[derive(Default)]
pub(crate) struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type PairMap<V> = HashMap<(u32, u32), V, BuildHasherDefault<PairHasher>>;

const NO_SYMBOL: u32 = u32::MAX;

/// Merge tables over symbol ids: a string that is a vocabulary token has its token id; merge
/// parts that are not tokens get ids from `n_vocab` on.
pub(crate) struct Bpe {
    pre: PreTokenizer,
    ignore_merges: bool,
    byte_chars: [char; 256],
    /// Symbol id of each byte's code point, `NO_SYMBOL` if no token or merge mentions it.
    byte_symbols: [u32; 256],
    /// `(left, right) -> (rank, merged)`.
    merges: PairMap<(u32, u32)>,
    n_vocab: u32,
    /// Texts of symbols `n_vocab..`.
    extra: Vec<String>,
}

impl Bpe {
    pub fn new(
        pre: PreTokenizer,
        ignore_merges: bool,
        merges: &[String],
        token_to_id: &TokenIds,
        n_vocab: u32,
    ) -> Result<Self, TokenizerError> {
        let mut extra: Vec<String> = Vec::new();
        let mut extra_ids = TokenIds::default();
        let mut intern = |s: &str| -> u32 {
            if let Some(&id) = token_to_id.get(s) {
                return id;
            }
            if let Some(&id) = extra_ids.get(s) {
                return id;
            }
            let id = n_vocab.saturating_add(extra.len() as u32);
            extra.push(s.to_string());
            extra_ids.insert(s.to_string(), id);
            id
        };
        let mut table: PairMap<(u32, u32)> = PairMap::default();
        table.reserve(merges.len());
        let mut merged = String::new();
        for (rank, merge) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte, so a left part may
            // itself start with a space.
            let split = merge.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|i| i + 1);
            let (left, right) = match split {
                Some(i) if i + 1 < merge.len() => (&merge[..i], &merge[i + 1..]),
                _ => return Err(TokenizerError::MalformedMerge { index: rank, merge: merge.clone() }),
            };
            merged.clear();
            merged.push_str(left);
            merged.push_str(right);
            let key = (intern(left), intern(right));
            let value = (rank as u32, intern(&merged));
            // The first (lowest-rank) occurrence of a pair wins, as with `emplace`.
            table.entry(key).or_insert(value);
        }
        let byte_chars = byte_to_char_table();
        let mut byte_symbols = [NO_SYMBOL; 256];
        for (b, c) in byte_chars.iter().enumerate() {
            let mut buf = [0u8; 4];
            let s: &str = c.encode_utf8(&mut buf);
            byte_symbols[b] = token_to_id.get(s).copied().or_else(|| extra_ids.get(s).copied()).unwrap_or(NO_SYMBOL);
        }
        Ok(Self { pre, ignore_merges, byte_chars, byte_symbols, merges: table, n_vocab, extra })
    }

    pub fn encode(&self, text: &str, token_to_id: &TokenIds, out: &mut Vec<u32>) {
        let mut encoded = String::new();
        let mut work = Work::default();
        for word in self.pre.split(text) {
            if self.ignore_merges {
                encoded.clear();
                encoded.extend(word.bytes().map(|b| self.byte_chars[usize::from(b)]));
                if let Some(&id) = token_to_id.get(encoded.as_str()) {
                    out.push(id);
                    continue;
                }
            }
            self.encode_word(word.as_bytes(), token_to_id, &mut work, out);
        }
    }

    fn encode_word(&self, word: &[u8], token_to_id: &TokenIds, w: &mut Work, out: &mut Vec<u32>) {
        w.syms.clear();
        w.queue.clear();
        let n = word.len();
        w.syms.extend(word.iter().enumerate().map(|(i, &b)| Sym {
            id: self.byte_symbols[usize::from(b)],
            byte: b,
            prev: i.wrapping_sub(1),
            next: if i + 1 < n { i + 1 } else { usize::MAX },
            alive: true,
        }));
        for i in 1..n {
            self.push_pair(w, i - 1, i);
        }
        while let Some(Reverse(Candidate { left, right, left_id, right_id, .. })) = w.queue.pop() {
            let (l, r) = (&w.syms[left], &w.syms[right]);
            if !l.alive || !r.alive || l.next != right || l.id != left_id || r.id != right_id {
                continue; // outdated
            }
            let Some(&(_, merged)) = self.merges.get(&(left_id, right_id)) else { continue };
            let next = r.next;
            w.syms[right].alive = false;
            w.syms[left].id = merged;
            w.syms[left].next = next;
            if next != usize::MAX {
                w.syms[next].prev = left;
            }
            let prev = w.syms[left].prev;
            if prev != usize::MAX {
                self.push_pair(w, prev, left);
            }
            if next != usize::MAX {
                self.push_pair(w, left, next);
            }
        }
        let mut i = 0;
        while i != usize::MAX && i < w.syms.len() {
            let s = &w.syms[i];
            self.emit(s.id, s.byte, token_to_id, out);
            i = s.next;
        }
    }

    fn push_pair(&self, w: &mut Work, left: usize, right: usize) {
        let (l, r) = (w.syms[left].id, w.syms[right].id);
        if l == NO_SYMBOL || r == NO_SYMBOL {
            return;
        }
        if let Some(&(rank, _)) = self.merges.get(&(l, r)) {
            w.queue.push(Reverse(Candidate { rank, left, right, left_id: l, right_id: r }));
        }
    }

    /// Emits a final symbol: its token, or, when the merged text is not in the vocabulary, the
    /// tokens of its single code points (llama.cpp emits what it finds and drops the rest).
    fn emit(&self, id: u32, byte: u8, token_to_id: &TokenIds, out: &mut Vec<u32>) {
        if id < self.n_vocab {
            out.push(id);
            return;
        }
        let text = match id.checked_sub(self.n_vocab).and_then(|i| self.extra.get(i as usize)) {
            Some(t) => t.clone(),
            None => self.byte_chars[usize::from(byte)].to_string(),
        };
        let mut buf = [0u8; 4];
        out.extend(text.chars().filter_map(|c| token_to_id.get(&*c.encode_utf8(&mut buf)).copied()));
    }
}

#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    /// The first byte of the symbol, for a symbol that never got an id.
    byte: u8,
    prev: usize,
    next: usize,
    alive: bool,
}

/// Per-call scratch space.
#[derive(Default)]
struct Work {
    syms: Vec<Sym>,
    /// Lowest rank, then leftmost, first.
    queue: BinaryHeap<Reverse<Candidate>>,
}

/// A mergeable pair; the ids tell whether it is still current when it comes off the queue.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    rank: u32,
    left: usize,
    right: usize,
    left_id: u32,
    right_id: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_round_trips() {
        let table = byte_to_char_table();
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'a' as usize], 'a');
        for (b, &c) in table.iter().enumerate() {
            assert_eq!(char_to_byte(c), Some(b as u8));
        }
        assert_eq!(char_to_byte('\u{144}'), None);
    }
}
