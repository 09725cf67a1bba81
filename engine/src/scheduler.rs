//! Continuous batching without tensors: which sequences take part in the next forward step and
//! with how many tokens, and the KV cache's block budget.
//!
//! Every step decodes one token for each running sequence and fills what is left of the step's
//! token budget with prompt chunks, so a long prompt is prefilled over several steps while the
//! running streams keep flowing. KV positions are handed out in fixed-size blocks. A sequence is
//! admitted only when its whole prompt fits in the free blocks; when a running sequence needs a
//! block and none is free, the most recently admitted sequence is preempted: its blocks are
//! freed and it goes back to the front of the queue, to be recomputed from its tokens (prompt and
//! what it generated so far) when blocks free up. The oldest sequence is never preempted for a
//! younger one, and no sequence is accepted that could not fit alone, so work always advances.

use std::collections::{HashMap, VecDeque};

pub type SeqId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences that run together in one step.
    pub max_running: usize,
    /// Tokens per step: one per decoding sequence, the rest for prompt chunks.
    pub step_tokens: usize,
    /// KV positions per block.
    pub block_size: usize,
    /// Blocks in the KV cache.
    pub total_blocks: usize,
    /// Sequences that may wait for admission; more are refused.
    pub max_waiting: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("the queue is full ({waiting} requests waiting)")]
    QueueFull { waiting: usize },
    #[error("a sequence of up to {positions} positions does not fit in the KV cache of {capacity} positions")]
    TooLong { positions: usize, capacity: usize },
}

/// One sequence's part of a step: tokens `start..start + len` of its token list go through the
/// model. `completes` is true when that brings it up to date, so the step's logits after its
/// last token choose its next token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    pub id: SeqId,
    pub start: usize,
    pub len: usize,
    pub completes: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub items: Vec<BatchItem>,
    /// Sequences whose KV cache was taken away this step; they start again from position 0.
    pub preempted: Vec<SeqId>,
}

#[derive(Debug)]
struct Entry {
    /// Tokens the sequence has: prompt plus generated.
    known: usize,
    /// Of those, how many are in its KV cache.
    cached: usize,
    blocks: usize,
}

#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    free_blocks: usize,
    waiting: VecDeque<SeqId>,
    /// In admission order, oldest first.
    running: Vec<SeqId>,
    entries: HashMap<SeqId, Entry>,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        let cfg = SchedulerConfig {
            max_running: cfg.max_running.max(1),
            step_tokens: cfg.step_tokens.max(cfg.max_running.max(1)),
            block_size: cfg.block_size.max(1),
            ..cfg
        };
        Self {
            free_blocks: cfg.total_blocks,
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            entries: HashMap::new(),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Positions the KV cache holds in all.
    pub fn capacity(&self) -> usize {
        self.cfg.total_blocks * self.cfg.block_size
    }

    /// Queues a sequence with `prompt_len` tokens that may grow to `max_positions`.
    pub fn add(&mut self, id: SeqId, prompt_len: usize, max_positions: usize) -> Result<(), AdmitError> {
        if max_positions > self.capacity() {
            return Err(AdmitError::TooLong { positions: max_positions, capacity: self.capacity() });
        }
        if self.waiting.len() >= self.cfg.max_waiting {
            return Err(AdmitError::QueueFull { waiting: self.waiting.len() });
        }
        self.entries.insert(id, Entry { known: prompt_len, cached: 0, blocks: 0 });
        self.waiting.push_back(id);
        Ok(())
    }

    /// Records a token generated for `id`; it goes through the model in the next step.
    pub fn push_token(&mut self, id: SeqId) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.known += 1;
        }
    }

    /// Forgets a finished or cancelled sequence and frees its blocks.
    pub fn remove(&mut self, id: SeqId) {
        if let Some(e) = self.entries.remove(&id) {
            self.free_blocks += e.blocks;
        }
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
    }

    pub fn is_idle(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn blocks_in_use(&self) -> usize {
        self.cfg.total_blocks - self.free_blocks
    }

    fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.cfg.block_size)
    }

    /// Plans the next step and counts its tokens as cached.
    pub fn next_batch(&mut self) -> Batch {
        let mut batch = Batch::default();
        let mut budget = self.cfg.step_tokens;
        let mut i = 0;
        while i < self.running.len() {
            let id = self.running[i];
            let Some(e) = self.entries.get(&id) else {
                self.running.remove(i);
                continue;
            };
            let len = (e.known - e.cached).min(budget);
            if len == 0 {
                i += 1;
                continue;
            }
            let need = self.blocks_for(e.cached + len).saturating_sub(e.blocks);
            while self.free_blocks < need {
                let Some(&newest) = self.running.last() else { break };
                self.preempt(newest, &mut batch);
                if newest == id {
                    break;
                }
            }
            if !self.running.contains(&id) {
                break;
            }
            budget -= len;
            self.take(id, len, need, &mut batch);
            i += 1;
        }
        while budget > 0 && self.running.len() < self.cfg.max_running {
            let Some(&id) = self.waiting.front() else { break };
            let Some(e) = self.entries.get(&id) else {
                self.waiting.pop_front();
                continue;
            };
            if self.blocks_for(e.known) > self.free_blocks {
                break;
            }
            let len = (e.known - e.cached).min(budget);
            let need = self.blocks_for(e.cached + len).saturating_sub(e.blocks);
            self.waiting.pop_front();
            self.running.push(id);
            budget -= len;
            self.take(id, len, need, &mut batch);
        }
        batch
    }

    fn take(&mut self, id: SeqId, len: usize, blocks: usize, batch: &mut Batch) {
        if let Some(e) = self.entries.get_mut(&id) {
            self.free_blocks -= blocks;
            e.blocks += blocks;
            batch.items.push(BatchItem { id, start: e.cached, len, completes: e.cached + len == e.known });
            e.cached += len;
        }
    }

    fn preempt(&mut self, id: SeqId, batch: &mut Batch) {
        if let Some(e) = self.entries.get_mut(&id) {
            self.free_blocks += e.blocks;
            e.blocks = 0;
            e.cached = 0;
        }
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
        batch.items.retain(|item| item.id != id);
        batch.preempted.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(max_running: usize, step_tokens: usize, total_blocks: usize) -> Scheduler {
        Scheduler::new(SchedulerConfig { max_running, step_tokens, block_size: 4, total_blocks, max_waiting: 8 })
    }

    fn item(id: SeqId, start: usize, len: usize, completes: bool) -> BatchItem {
        BatchItem { id, start, len, completes }
    }

    #[test]
    fn decodes_one_token_per_running_sequence() {
        let mut s = sched(4, 64, 100);
        s.add(1, 5, 20).expect("should succeed");
        s.add(2, 3, 20).expect("should succeed");
        assert_eq!(s.next_batch().items, vec![item(1, 0, 5, true), item(2, 0, 3, true)]);
        assert!(s.next_batch().items.is_empty(), "nothing new to feed until tokens are pushed");
        s.push_token(1);
        s.push_token(2);
        assert_eq!(s.next_batch().items, vec![item(1, 5, 1, true), item(2, 3, 1, true)]);
    }

    #[test]
    fn long_prompts_are_chunked_while_decodes_keep_running() {
        let mut s = sched(4, 8, 100);
        s.add(1, 2, 40).expect("should succeed");
        assert_eq!(s.next_batch().items, vec![item(1, 0, 2, true)]);
        s.add(2, 20, 40).expect("should succeed");
        s.push_token(1);
        assert_eq!(s.next_batch().items, vec![item(1, 2, 1, true), item(2, 0, 7, false)]);
        s.push_token(1);
        assert_eq!(s.next_batch().items, vec![item(1, 3, 1, true), item(2, 7, 7, false)]);
        s.push_token(1);
        assert_eq!(s.next_batch().items, vec![item(1, 4, 1, true), item(2, 14, 6, true)]);
    }

    #[test]
    fn admission_waits_for_blocks_and_resumes_when_they_free() {
        let mut s = sched(4, 64, 4);
        s.add(1, 12, 16).expect("should succeed");
        s.add(2, 8, 16).expect("should succeed");
        assert_eq!(s.next_batch().items, vec![item(1, 0, 12, true)]);
        assert_eq!(s.blocks_in_use(), 3);
        assert_eq!(s.waiting(), 1);
        s.remove(1);
        assert_eq!(s.blocks_in_use(), 0);
        assert_eq!(s.next_batch().items, vec![item(2, 0, 8, true)]);
    }

    #[test]
    fn the_newest_sequence_is_preempted_and_recomputed_with_its_tokens() {
        let mut s = sched(4, 64, 4);
        s.add(1, 4, 16).expect("should succeed");
        s.add(2, 4, 16).expect("should succeed");
        s.add(3, 4, 16).expect("should succeed");
        s.add(4, 4, 16).expect("should succeed");
        assert_eq!(s.next_batch().items.len(), 4);
        assert_eq!(s.blocks_in_use(), 4);
        for id in 1..=4 {
            s.push_token(id);
        }
        // Sequence 1 needs a fifth block: 4 (the newest) gives way; 2 and 3 then need blocks
        // too, which 4's release and then 3's preemption provide.
        let b = s.next_batch();
        assert_eq!(b.preempted, vec![4, 3]);
        assert_eq!(b.items, vec![item(1, 4, 1, true), item(2, 4, 1, true)]);
        assert_eq!(s.waiting(), 2);
        s.remove(1);
        s.remove(2);
        let b = s.next_batch();
        assert_eq!(b.items, vec![item(3, 0, 5, true), item(4, 0, 5, true)], "recomputed with the generated token");
    }

    #[test]
    fn refuses_what_can_never_fit_and_bounds_the_queue() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_running: 1,
            step_tokens: 8,
            block_size: 4,
            total_blocks: 2,
            max_waiting: 1,
        });
        assert_eq!(s.add(1, 4, 9), Err(AdmitError::TooLong { positions: 9, capacity: 8 }));
        s.add(2, 4, 8).expect("should succeed");
        assert_eq!(s.add(3, 4, 8), Err(AdmitError::QueueFull { waiting: 1 }));
    }

    #[test]
    fn random_workloads_stay_within_the_block_budget_and_finish() {
        use rand_chacha::ChaCha8Rng;
        use rand_core::{RngCore, SeedableRng};
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut s = Scheduler::new(SchedulerConfig {
            max_running: 5,
            step_tokens: 16,
            block_size: 4,
            total_blocks: 12,
            max_waiting: 64,
        });
        let mut remaining: HashMap<SeqId, usize> = HashMap::new();
        for id in 0..40 {
            let prompt = 1 + (rng.next_u32() % 20) as usize;
            let gen_len = 1 + (rng.next_u32() % 20) as usize;
            s.add(id, prompt, prompt + gen_len).expect("should succeed");
            remaining.insert(id, gen_len);
        }
        for _ in 0..10_000 {
            if s.is_idle() {
                break;
            }
            let b = s.next_batch();
            assert!(s.blocks_in_use() <= 12);
            assert!(b.items.iter().map(|i| i.len).sum::<usize>() <= 16);
            for it in b.items.iter().filter(|i| i.completes) {
                let left = remaining.get_mut(&it.id).expect("should succeed");
                *left -= 1;
                if *left == 0 {
                    s.remove(it.id);
                } else {
                    s.push_token(it.id);
                }
            }
        }
        assert!(s.is_idle(), "every sequence finished");
        assert_eq!(s.blocks_in_use(), 0);
    }
}
