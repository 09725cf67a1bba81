//! A persistent thread pool for the forward pass. A decode step is a few hundred small
//! parallel sections of tens of microseconds each; a general-purpose pool that parks its
//! workers pays a futex wake-up per section, which at that size costs as much as the work.
//! Here workers spin on a generation counter for a short while after each section (so the next
//! one starts at once) and only then sleep on a condition variable, so an idle server burns no
//! CPU.
//!
//! Workers join a section only while it is open, and the caller waits only for those that
//! joined: on a machine where other processes hold the cores (a throttled serverless vCPU, a
//! busy host), a descheduled worker never holds a section up; the caller simply does its
//! share of the tasks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const OPEN: usize = 1 << (usize::BITS - 1);
/// Spins between looks at the clock (reading it costs more than a spin).
const SPINS_PER_LOOK: u32 = 64;

/// How long a thread spins before it starts yielding between spins, so a long wait gives its
/// core to whoever waits for it. Longer than the gaps inside a step: a yield is a system
/// call, and one in flight when the next section opens delays its start.
const YIELD_AFTER: Duration = Duration::from_micros(20);

/// How long an idle worker spins before it sleeps: longer than the gap between two sections
/// of a step, far shorter than the gap between requests.
const SPIN: Duration = Duration::from_micros(500);

/// The section being run: a task function and how many tasks it has. The function is a
/// lifetime-erased borrow of the caller's closure, valid while the caller waits in `run`.
#[derive(Clone, Copy)]
struct Section {
    task: *const (dyn Fn(usize) + Sync),
    tasks: usize,
}

// SAFETY: `task` points to a `Sync` closure, only called while `run` keeps it alive.
unsafe impl Send for Section {}

struct Shared {
    /// Bumped once per section; workers compare it with the last one they joined.
    generation: AtomicUsize,
    section: Mutex<Option<Section>>,
    /// Next task index to claim.
    next: AtomicUsize,
    /// [`OPEN`] while workers may join the current section, plus how many are inside it.
    state: AtomicUsize,
    wake: Condvar,
    /// Workers waiting on `wake` (changed under the `section` lock): a section only pays for
    /// the wake-up system call when one sleeps.
    sleepers: AtomicUsize,
    stop: AtomicBool,
    /// A task panicked on a worker: the caller re-raises it rather than lose it.
    panicked: AtomicBool,
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises callers: one section at a time.
    entry: Mutex<()>,
}

impl Pool {
    /// A pool of `threads` threads in all: the caller's plus `threads - 1` workers.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            section: Mutex::new(None),
            next: AtomicUsize::new(0),
            state: AtomicUsize::new(0),
            wake: Condvar::new(),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let shared = Arc::clone(&shared);
            workers.push(std::thread::Builder::new().name(format!("realm-cpu-{i}")).spawn(move || worker(&shared))?);
        }
        Ok(Self { shared, workers, entry: Mutex::new(()) })
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `task(i)` for every `i` in `0..tasks`, spread over the pool, and returns when all
    /// have finished. The calling thread works too.
    pub fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        if self.workers.is_empty() || tasks == 1 {
            (0..tasks).for_each(task);
            return;
        }
        let _one_at_a_time = self.entry.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the erased borrow is only used by workers that joined this section, and this
        // function does not return before the section is closed and every worker that joined
        // has left it.
        let erased = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync + 'static)>(task)
        };
        {
            // Publishing under the lock means a worker that found no new section while holding
            // it is already waiting when the notification comes.
            let mut section = s.section.lock().unwrap_or_else(|e| e.into_inner());
            *section = Some(Section { task: erased, tasks });
            s.next.store(0, Ordering::Relaxed);
            s.state.store(OPEN, Ordering::Relaxed);
            s.generation.fetch_add(1, Ordering::Release);
            // A worker that is not counted here saw the lock free after this section was
            // published, so it will find it without being woken.
            if s.sleepers.load(Ordering::Relaxed) > 0 {
                s.wake.notify_all();
            }
        }
        // A panic here must not unwind past workers still running `task`: it waits below.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| claim_tasks(s, task, tasks)));
        // Every task is claimed: late workers may no longer join; wait for those inside.
        s.state.fetch_and(!OPEN, Ordering::AcqRel);
        let mut spin = Spin::new();
        while s.state.load(Ordering::Acquire) != 0 {
            spin.pause();
        }
        *s.section.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(panic) = mine {
            s.panicked.store(false, Ordering::Release);
            std::panic::resume_unwind(panic);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a CPU kernel task panicked on a pool worker");
        }
    }

    /// Runs `first.1(i)` for every `i` in `0..first.0` and then, once all of those have
    /// finished, `then.1(j)` for every `j` in `0..then.0`, in one section: a short phase whose
    /// output the next one reads (activations quantized for a matmul) costs no section of its
    /// own.
    pub fn run_then(&self, first: (usize, &(dyn Fn(usize) + Sync)), then: (usize, &(dyn Fn(usize) + Sync))) {
        let ((before, first), (after, then)) = (first, then);
        let finished = AtomicUsize::new(0);
        self.run(before + after, &|i| {
            if i < before {
                // Counted even if it panics, so the second phase never waits forever (the
                // panic is raised when the section ends).
                let _count = Finished(&finished);
                first(i);
                return;
            }
            // Tasks are claimed in order: every first-phase task is running or done, and
            // none of them waits on anything. Most tasks find them done (no clock read).
            if finished.load(Ordering::Acquire) < before {
                let mut spin = Spin::new();
                while finished.load(Ordering::Acquire) < before {
                    spin.pause();
                }
            }
            then(i - before);
        });
    }
}

/// Counts a finished first-phase task of [`Pool::run_then`] when dropped.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// A wait by spinning, then by spinning and yielding.
struct Spin {
    spins: u32,
    since: Instant,
}

impl Spin {
    fn new() -> Self {
        Self { spins: 0, since: Instant::now() }
    }

    /// Whether this pause is one to look at the clock at.
    fn looks(&self) -> bool {
        self.spins.is_multiple_of(SPINS_PER_LOOK)
    }

    fn pause(&mut self) {
        self.spins = self.spins.wrapping_add(1);
        if self.looks() && self.since.elapsed() >= YIELD_AFTER {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Enters the open section, if it still is.
fn join(s: &Shared) -> bool {
    let mut state = s.state.load(Ordering::Acquire);
    while state & OPEN != 0 {
        match s.state.compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) => state = now,
        }
    }
    false
}

fn claim_tasks(s: &Shared, task: &(dyn Fn(usize) + Sync), tasks: usize) {
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= tasks {
            break;
        }
        task(i);
    }
}

fn worker(s: &Shared) {
    // Generation 0 is "no section yet".
    let mut seen = 0;
    loop {
        let mut spin = Spin::new();
        while s.generation.load(Ordering::Acquire) == seen {
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            if !spin.looks() || spin.since.elapsed() < SPIN {
                spin.pause();
                continue;
            }
            let guard = s.section.lock().unwrap_or_else(|e| e.into_inner());
            if s.generation.load(Ordering::Acquire) == seen && !s.stop.load(Ordering::Relaxed) {
                s.sleepers.fetch_add(1, Ordering::Relaxed);
                let guard = s.wake.wait_timeout(guard, Duration::from_millis(100)).map(|(g, _)| g);
                s.sleepers.fetch_sub(1, Ordering::Relaxed);
                drop(guard);
            }
        }
        seen = s.generation.load(Ordering::Acquire);
        if !join(s) {
            continue;
        }
        // Joined: the caller keeps this section (and its closure) until this worker leaves.
        let section = *s.section.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(section) = section {
            // SAFETY: `run` keeps the closure alive until every worker that joined has left,
            // which this worker does only after its last call.
            let task = unsafe { &*section.task };
            // A panicking task must still leave the section, or the caller would wait forever.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| claim_tasks(s, task, section.tasks)));
            if run.is_err() {
                s.panicked.store(true, Ordering::Release);
            }
        }
        s.state.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        {
            let _guard = self.shared.section.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        for threads in [1, 2, 4] {
            let pool = Pool::new(threads).expect("pool");
            for tasks in [0, 1, 3, 100] {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(tasks, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{threads} threads, {tasks} tasks");
            }
        }
    }

    #[test]
    fn sections_after_a_sleep_still_run() {
        let pool = Pool::new(2).expect("pool");
        for _ in 0..3 {
            let sum = AtomicUsize::new(0);
            pool.run(10, &|i| {
                sum.fetch_add(i, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 45);
            std::thread::sleep(SPIN * 3);
        }
    }

    #[test]
    fn a_panicking_task_is_raised_not_hung() {
        let pool = Pool::new(2).expect("pool");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Enough tasks that the worker surely claims some of them.
            pool.run(10_000, &|i| {
                if i % 2 == 1 {
                    panic!("task {i}");
                }
            });
        }));
        assert!(caught.is_err());
        // The pool still works afterwards.
        let sum = AtomicUsize::new(0);
        pool.run(4, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn the_second_phase_sees_every_result_of_the_first() {
        for threads in [1, 2, 4] {
            let pool = Pool::new(threads).expect("pool");
            for (before, after) in [(0, 3), (1, 1), (5, 2), (64, 64)] {
                let written: Vec<AtomicUsize> = (0..before).map(|_| AtomicUsize::new(0)).collect();
                let seen = AtomicUsize::new(0);
                pool.run_then(
                    (before, &|i| {
                        written[i].store(i + 1, Ordering::Relaxed);
                    }),
                    (after, &|_| {
                        let sum: usize = written.iter().map(|w| w.load(Ordering::Relaxed)).sum();
                        seen.fetch_add(usize::from(sum == before * (before + 1) / 2), Ordering::Relaxed);
                    }),
                );
                assert_eq!(seen.load(Ordering::Relaxed), after, "{threads} threads, {before} then {after}");
            }
        }
    }

    #[test]
    fn a_panic_in_the_first_phase_is_raised_not_hung() {
        let pool = Pool::new(2).expect("pool");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run_then((100, &|i| assert!(i % 7 != 3, "task {i}")), (10, &|_| {}));
        }));
        assert!(caught.is_err());
    }

    #[test]
    fn many_short_sections_in_a_row() {
        let pool = Pool::new(3).expect("pool");
        let total = AtomicUsize::new(0);
        for _ in 0..2000 {
            pool.run(7, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 14_000);
    }
}
