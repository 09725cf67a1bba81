//! Work split for a parallel section over a range of equal items (a matmul call's 16-row
//! groups): one contiguous run per thread, which its thread takes from the front a chunk at a
//! time, and a thread whose run is done takes chunks from the back of the others'. So each
//! thread streams one stretch of weights from memory in order (restarting a stream costs more
//! than a few items of imbalance), yet no thread idles at the end of the section for longer
//! than one chunk takes, however unevenly the host shares the cores.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// Each run's unclaimed items, `front | back << 32`.
pub struct Runs {
    runs: Vec<Run>,
    chunk: usize,
}

/// A run's bounds on cache lines of their own: an owner claiming from its run would
/// otherwise take the line from the thread claiming from the next one, every chunk (this
/// was 3% of a batched decode step's samples). 128 bytes, as the adjacent-line prefetcher
/// pairs lines.
#[repr(align(128))]
struct Run(AtomicU64);

/// Chunks per run: enough that the last chunk is a small part of a thread's work, few enough
/// that claiming one (an uncontended compare-and-swap) stays far below the chunk's work.
const CHUNKS_PER_RUN: usize = 16;

/// The most items a chunk holds: a section ends at most one chunk after its first thread runs
/// out of work, and the output head's 3,072 groups in sixteenths per run made that chunk tens
/// of microseconds.
const MAX_CHUNK: usize = 8;

impl Runs {
    /// Items `0..total` in `threads` runs of nearly equal length.
    pub fn new(total: usize, threads: usize) -> Self {
        let threads = threads.max(1);
        let total = u32::try_from(total).unwrap_or(u32::MAX) as usize;
        let runs = (0..threads)
            .map(|r| {
                let (front, back) = (total * r / threads, total * (r + 1) / threads);
                Run(AtomicU64::new(front as u64 | (back as u64) << 32))
            })
            .collect();
        Self { runs, chunk: total.div_ceil(threads * CHUNKS_PER_RUN).clamp(1, MAX_CHUNK) }
    }

    /// How many runs (one task of the section each).
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// Task `run`'s work: its run's chunks in order, then the others' chunks from their
    /// backs, each passed to `work`.
    pub fn work_through(&self, run: usize, work: impl Fn(Range<usize>)) {
        while let Some(items) = self.claim(run, true) {
            work(items);
        }
        for other in (1..self.runs.len()).map(|k| (run + k) % self.runs.len()) {
            while let Some(items) = self.claim(other, false) {
                work(items);
            }
        }
    }

    /// The next chunk of run `r`, from its front or its back; `None` once it is all claimed.
    fn claim(&self, r: usize, front: bool) -> Option<Range<usize>> {
        let run = &self.runs[r].0;
        let mut now = run.load(Ordering::Relaxed);
        loop {
            let (f, b) = ((now & u64::from(u32::MAX)) as usize, (now >> 32) as usize);
            if f >= b {
                return None;
            }
            let (items, next) = if front {
                let end = (f + self.chunk).min(b);
                (f..end, end as u64 | (b as u64) << 32)
            } else {
                let start = b.saturating_sub(self.chunk).max(f);
                (start..b, f as u64 | (start as u64) << 32)
            };
            match run.compare_exchange_weak(now, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(items),
                Err(seen) => now = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_item_is_claimed_exactly_once() {
        for (total, threads) in [(0, 2), (1, 2), (5, 3), (60, 2), (96, 2), (3072, 4), (1000, 7)] {
            let runs = Runs::new(total, threads);
            let seen = Mutex::new(vec![0u32; total]);
            std::thread::scope(|s| {
                for r in 0..runs.len() {
                    let (runs, seen) = (&runs, &seen);
                    s.spawn(move || {
                        runs.work_through(r, |items| {
                            let mut seen = seen.lock().expect("lock");
                            items.for_each(|i| seen[i] += 1);
                        })
                    });
                }
            });
            let seen = seen.into_inner().expect("lock");
            assert!(seen.iter().all(|&c| c == 1), "{total} items over {threads} threads: {seen:?}");
        }
    }

    #[test]
    fn a_thread_alone_takes_its_run_in_order_then_the_others_from_their_backs() {
        let runs = Runs::new(64, 2);
        let order = Mutex::new(Vec::new());
        runs.work_through(0, |items| order.lock().expect("lock").push(items));
        let order = order.into_inner().expect("lock");
        let firsts: Vec<usize> = order.iter().map(|r| r.start).collect();
        // Chunks of 64 / (2 · CHUNKS_PER_RUN) = 2 items.
        let want: Vec<usize> = (0..32).step_by(2).chain((32..64).step_by(2).rev()).collect();
        assert_eq!(firsts, want);
        assert!(runs.claim(1, true).is_none(), "run 1 is all taken");
    }
}
