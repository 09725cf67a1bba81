//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`), as llama.cpp's
//! `llm_tokenizer_spm_session`: the text (spaces already escaped to U+2581) is split into code
//! points, and the adjacent pair whose concatenation is the vocabulary token with the highest
//! score (ties: the leftmost) is merged until no concatenation is a token. Pieces that are not
//! tokens fall back to byte tokens `<0xXX>`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::TokenIds;

pub(crate) struct Spm<'a> {
    pub token_to_id: &'a TokenIds,
    pub scores: &'a [f32],
    /// Token of each byte for the fallback; `None` where the vocabulary has none.
    pub byte_tokens: &'a [Option<u32>; 256],
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The heap's top is the highest score, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

const NONE: usize = usize::MAX;

impl Spm<'_> {
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let len = c.len_utf8();
            let next = if start + len == text.len() { NONE } else { i + 1 };
            syms.push(Sym { start, len, prev: i.wrapping_sub(1), next });
        }
        let mut queue = BinaryHeap::new();
        for i in 1..syms.len() {
            self.try_add(text, &syms, i - 1, i, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue; // one side already merged into something else
            }
            syms[b.left].len += r.len;
            syms[b.right].len = 0;
            syms[b.left].next = r.next;
            if r.next != NONE {
                syms[r.next].prev = b.left;
            }
            if l.prev != NONE {
                self.try_add(text, &syms, l.prev, b.left, &mut queue);
            }
            if r.next != NONE {
                self.try_add(text, &syms, b.left, r.next, &mut queue);
            }
        }
        let mut i = if syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            let s = syms[i];
            let piece = &text[s.start..s.start + s.len];
            match self.token_to_id.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.byte_tokens[usize::from(b)])),
            }
            i = s.next;
        }
    }

    fn try_add(&self, text: &str, syms: &[Sym], left: usize, right: usize, queue: &mut BinaryHeap<Bigram>) {
        let start = syms[left].start;
        let size = syms[left].len + syms[right].len;
        let Some(&id) = text.get(start..start + size).and_then(|piece| self.token_to_id.get(piece)) else {
            return;
        };
        let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
        queue.push(Bigram { score, left, right, size });
    }
}
