//! The engine thread: it owns the model, the KV caches and the scheduler, and runs one forward
//! step at a time over every active sequence. Callers hold a cloneable [`EngineHandle`]; each
//! request brings its own bounded event channel, and a request whose receiver is dropped is
//! cancelled and its blocks freed before the next step.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use realm_kernels::Device;
use tokio::sync::{mpsc, watch};

use crate::chat::ChatTemplate;
use crate::engine::{Engine, FinishReason, GenerateParams};
use crate::model::{KvCache, Logits, ModelError, SeqStep};
use crate::sampler::{Sampler, SamplerError};
use crate::scheduler::{AdmitError, BatchItem, Scheduler, SchedulerConfig, SeqId};
use crate::stop::StopMatcher;
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// How the engine thread batches and how much KV cache it may hold.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Tokens per forward step (decodes plus prompt chunks).
    pub step_tokens: usize,
    /// KV positions per block.
    pub block_size: usize,
    /// KV cache budget in bytes.
    pub kv_cache_bytes: usize,
    /// Requests that may wait for a slot; more are refused as overload.
    pub max_waiting: usize,
    /// Caps prompt + generated tokens below the model's context length.
    pub context_limit: Option<usize>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            max_batch: 16,
            step_tokens: 512,
            block_size: 16,
            kv_cache_bytes: 1 << 30,
            max_waiting: 256,
            context_limit: None,
        }
    }
}

/// What the model is, once it has loaded.
pub struct ModelInfo {
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Arc<ChatTemplate>,
    pub context_length: usize,
    pub vocab_size: usize,
    /// Positions the KV cache holds across all sequences.
    pub kv_capacity: usize,
    pub load_time: Duration,
}

#[derive(Clone)]
pub enum LoadState {
    Loading,
    Ready(Arc<ModelInfo>),
    Failed(Arc<str>),
}

/// One generation request, already tokenized.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// Log-probabilities of generated tokens with this many alternatives each.
    pub logprobs: Option<usize>,
    /// Log-probabilities of the prompt's own tokens (scoring), with this many alternatives.
    pub prompt_logprobs: Option<usize>,
    /// Generation ends (finish reason `Length`) at this instant.
    pub deadline: Option<Instant>,
}

/// A token's log-probability and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What a request's channel receives, in this order: `PromptLogprobs` (when asked for), then a
/// `Token` per generated token, possibly a `Text` with held-back text released at the end,
/// then `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    /// One entry per prompt token; the first has none.
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Text(String),
    Done {
        finish_reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the model is still loading")]
    Loading,
    #[error("the model failed to load: {0}")]
    LoadFailed(Arc<str>),
    #[error("the engine has stopped")]
    Stopped,
    #[error("the server is overloaded ({in_flight} requests in flight)")]
    Overloaded { in_flight: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("{prompt} prompt tokens plus max_tokens {max_tokens} exceed the context of {context} tokens")]
    ContextExceeded { prompt: usize, max_tokens: usize, context: usize },
    #[error(transparent)]
    Admit(#[from] AdmitError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
}

/// Counters the engine thread keeps current for metrics.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub blocks_in_use: AtomicUsize,
    pub blocks_total: AtomicUsize,
    pub preemptions: AtomicUsize,
    /// Requests whose caller went away before they finished.
    pub cancelled: AtomicUsize,
    pub steps: AtomicUsize,
}

enum Command {
    Submit { req: Request, events: mpsc::Sender<Event> },
}

struct Shared {
    commands: SyncSender<Command>,
    state: watch::Receiver<LoadState>,
    in_flight: Arc<AtomicUsize>,
    limit: usize,
    stats: Arc<WorkerStats>,
    stopped: AtomicBool,
}

/// A cloneable handle on the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

/// Receives a request's events; dropping it cancels the request.
pub struct EventStream {
    pub events: mpsc::Receiver<Event>,
    _slot: Slot,
}

struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EngineHandle {
    /// Starts the engine thread; `load` runs on it (fetching and loading the model), and the
    /// outcome shows in [`EngineHandle::state`].
    pub fn spawn<F>(load: F, cfg: WorkerConfig) -> std::io::Result<Self>
    where
        F: FnOnce() -> Result<Engine, String> + Send + 'static,
    {
        // Admission is counted in `in_flight`; the channel and the scheduler's queue hold as
        // many, so neither refuses what admission let in.
        let limit = cfg.max_batch.max(1) + cfg.max_waiting;
        let (tx, rx) = std::sync::mpsc::sync_channel(limit);
        let (state_tx, state_rx) = watch::channel(LoadState::Loading);
        let stats = Arc::new(WorkerStats::default());
        let shared = Arc::new(Shared {
            commands: tx,
            state: state_rx,
            in_flight: Arc::new(AtomicUsize::new(0)),
            limit,
            stats: stats.clone(),
            stopped: AtomicBool::new(false),
        });
        let thread_shared = Arc::downgrade(&shared);
        std::thread::Builder::new().name("realm-engine".into()).spawn(move || {
            let start = Instant::now();
            match load() {
                Ok(engine) => {
                    let worker = Worker::new(&engine, &cfg, stats, start.elapsed());
                    state_tx.send_replace(LoadState::Ready(worker.info.clone()));
                    worker.run(rx);
                }
                Err(e) => {
                    state_tx.send_replace(LoadState::Failed(e.into()));
                }
            }
            if let Some(shared) = thread_shared.upgrade() {
                shared.stopped.store(true, Ordering::Release);
            }
        })?;
        Ok(Self { shared })
    }

    pub fn state(&self) -> LoadState {
        self.shared.state.borrow().clone()
    }

    /// Waits until loading has finished either way.
    pub async fn loaded(&self) -> LoadState {
        let mut rx = self.shared.state.clone();
        let state = rx.wait_for(|s| !matches!(s, LoadState::Loading)).await.map(|s| s.clone());
        state.unwrap_or_else(|_| LoadState::Failed("the engine thread ended while loading".into()))
    }

    pub fn info(&self) -> Result<Arc<ModelInfo>, SubmitError> {
        match self.state() {
            LoadState::Loading => Err(SubmitError::Loading),
            LoadState::Failed(e) => Err(SubmitError::LoadFailed(e)),
            LoadState::Ready(info) => Ok(info),
        }
    }

    pub fn stats(&self) -> &WorkerStats {
        &self.shared.stats
    }

    /// Requests queued or running.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Checks `req` against the model and the queue and hands it to the engine thread.
    pub fn submit(&self, req: Request) -> Result<EventStream, SubmitError> {
        let info = self.info()?;
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(SubmitError::Stopped);
        }
        validate(&req, &info)?;
        let in_flight = self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.shared.in_flight.clone());
        if in_flight >= self.shared.limit {
            return Err(SubmitError::Overloaded { in_flight });
        }
        // Room for every event the request can produce, so the engine thread never blocks.
        let (tx, rx) = mpsc::channel(req.params.max_tokens + 4);
        match self.shared.commands.try_send(Command::Submit { req, events: tx }) {
            Ok(()) => Ok(EventStream { events: rx, _slot: slot }),
            Err(TrySendError::Full(_)) => Err(SubmitError::Overloaded { in_flight }),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }
}

fn validate(req: &Request, info: &ModelInfo) -> Result<(), SubmitError> {
    if req.prompt.is_empty() {
        return Err(SubmitError::EmptyPrompt);
    }
    if let Some(&id) = req.prompt.iter().find(|&&id| id as usize >= info.vocab_size) {
        return Err(SubmitError::BadToken { id, vocab: info.vocab_size });
    }
    let (prompt, max_tokens) = (req.prompt.len(), req.params.max_tokens);
    if prompt + max_tokens > info.context_length {
        return Err(SubmitError::ContextExceeded { prompt, max_tokens, context: info.context_length });
    }
    if prompt + max_tokens > info.kv_capacity {
        return Err(AdmitError::TooLong { positions: prompt + max_tokens, capacity: info.kv_capacity }.into());
    }
    req.params.sampling.validate_for(info.vocab_size)?;
    Ok(())
}

/// One sequence on the engine thread.
struct Seq<'t> {
    req: Request,
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    cache: KvCache<Device>,
    sampler: Sampler,
    stops: StopMatcher,
    decoder: StreamDecoder<'t>,
    events: mpsc::Sender<Event>,
    generated: usize,
    /// Prompt logprobs gathered so far (only while they are wanted and not yet sent).
    prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
}

enum Outcome {
    Continue,
    Finished,
    Gone,
}

struct Worker<'e> {
    engine: &'e Engine,
    info: Arc<ModelInfo>,
    scheduler: Scheduler,
    seqs: HashMap<SeqId, Seq<'e>>,
    next_id: SeqId,
    stats: Arc<WorkerStats>,
    /// Caches of finished sequences, kept for reuse so steady serving does not allocate.
    spare_caches: Vec<KvCache<Device>>,
}

impl<'e> Worker<'e> {
    fn new(engine: &'e Engine, cfg: &WorkerConfig, stats: Arc<WorkerStats>, load_time: Duration) -> Self {
        let per_block = engine.kv_bytes_per_position().max(1) * cfg.block_size.max(1);
        let total_blocks = (cfg.kv_cache_bytes / per_block).max(1);
        let scheduler = Scheduler::new(SchedulerConfig {
            max_running: cfg.max_batch,
            step_tokens: cfg.step_tokens,
            block_size: cfg.block_size,
            total_blocks,
            max_waiting: cfg.max_batch.max(1) + cfg.max_waiting,
        });
        stats.blocks_total.store(total_blocks, Ordering::Relaxed);
        let c = engine.config();
        let info = Arc::new(ModelInfo {
            tokenizer: engine.tokenizer.clone(),
            chat_template: engine.chat_template.clone(),
            context_length: cfg.context_limit.map_or(c.context_length, |l| l.min(c.context_length)),
            vocab_size: c.vocab_size,
            kv_capacity: scheduler.capacity(),
            load_time,
        });
        Self { engine, info, scheduler, seqs: HashMap::new(), next_id: 0, stats, spare_caches: Vec::new() }
    }

    fn run(mut self, commands: Receiver<Command>) {
        let mut open = true;
        loop {
            if self.scheduler.is_idle() {
                if !open {
                    return;
                }
                match commands.recv() {
                    Ok(cmd) => self.accept(cmd),
                    Err(_) => return,
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(cmd) => self.accept(cmd),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.drop_abandoned();
            self.step();
            self.publish_stats();
        }
    }

    fn accept(&mut self, Command::Submit { req, events }: Command) {
        let sampler = match Sampler::new(req.params.sampling.clone(), self.info.vocab_size) {
            Ok(s) => s,
            Err(e) => {
                let _ = events.try_send(Event::Failed(e.to_string()));
                return;
            }
        };
        let cache = match self.new_cache() {
            Ok(c) => c,
            Err(e) => {
                let _ = events.try_send(Event::Failed(e.to_string()));
                return;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        if let Err(e) = self.scheduler.add(id, req.prompt.len(), req.prompt.len() + req.params.max_tokens) {
            let _ = events.try_send(Event::Failed(e.to_string()));
            return;
        }
        let seq = Seq {
            tokens: req.prompt.clone(),
            stops: StopMatcher::new(&req.params.stop),
            decoder: self.engine.tokenizer.stream_decoder(),
            prompt_logprobs: req.prompt_logprobs.map(|_| vec![None]),
            cache,
            sampler,
            events,
            generated: 0,
            req,
        };
        self.seqs.insert(id, seq);
    }

    fn new_cache(&mut self) -> Result<KvCache<Device>, ModelError> {
        match self.spare_caches.pop() {
            Some(c) => Ok(c),
            None => self.engine.model().new_cache(),
        }
    }

    fn retire(&mut self, id: SeqId) {
        self.scheduler.remove(id);
        if let Some(mut seq) = self.seqs.remove(&id) {
            seq.cache.truncate(0);
            // Enough for the next batch; a burst's extra caches are freed.
            if self.spare_caches.len() < self.scheduler.config().max_running {
                self.spare_caches.push(seq.cache);
            }
        }
    }

    /// Cancels requests whose receiver is gone and ends those past their deadline.
    fn drop_abandoned(&mut self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut late = Vec::new();
        for (&id, seq) in &self.seqs {
            if seq.events.is_closed() {
                self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                gone.push(id);
            } else if seq.req.deadline.is_some_and(|d| now >= d) {
                late.push(id);
            }
        }
        for id in late {
            if let Some(seq) = self.seqs.get_mut(&id) {
                finish(seq, FinishReason::Length);
            }
            gone.push(id);
        }
        for id in gone {
            self.retire(id);
        }
    }

    fn step(&mut self) {
        let batch = self.scheduler.next_batch();
        for id in &batch.preempted {
            if let Some(seq) = self.seqs.get_mut(id) {
                seq.cache.truncate(0);
                self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
            }
        }
        if batch.items.is_empty() {
            return;
        }
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let mut taken: Vec<(BatchItem, Seq<'e>)> =
            batch.items.into_iter().filter_map(|item| self.seqs.remove(&item.id).map(|s| (item, s))).collect();
        let modes: Vec<Logits> = taken.iter().map(|(item, seq)| logits_mode(item, seq)).collect();
        // A step whose every sequence takes its token as the plain argmax gets ids back instead
        // of logits (on a GPU, the argmax runs there and only the ids cross to the host).
        let greedy = modes.iter().all(|&m| m == Logits::Last)
            && taken.iter().all(|(_, seq)| seq.req.logprobs.is_none() && seq.sampler.params().is_plain_greedy());
        let result = {
            let mut steps: Vec<SeqStep<'_, Device>> = taken
                .iter_mut()
                .zip(&modes)
                .map(|((item, seq), &logits)| SeqStep {
                    cache: &mut seq.cache,
                    tokens: &seq.tokens[item.start..item.start + item.len],
                    logits,
                })
                .collect();
            let model = self.engine.model();
            if greedy {
                model.forward_greedy(&mut steps).map(|ids| ids.into_iter().map(Next::Argmax).collect::<Vec<_>>())
            } else {
                model.forward(&mut steps).map(|l| l.into_iter().map(Next::Logits).collect())
            }
        };
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(e) => {
                let message = e.to_string();
                for (item, seq) in taken {
                    let _ = seq.events.try_send(Event::Failed(message.clone()));
                    self.seqs.insert(item.id, seq);
                    self.retire(item.id);
                }
                return;
            }
        };
        let vocab = self.info.vocab_size;
        for (((item, mut seq), mode), mut next) in taken.into_iter().zip(modes).zip(outputs) {
            if let (Logits::All, Next::Logits(rows)) = (mode, &mut next) {
                record_prompt_logprobs(&mut seq, &item, rows, vocab);
                let last = rows.len().saturating_sub(vocab);
                rows.drain(..last);
            }
            let outcome = if item.completes { self.advance(&mut seq, next) } else { Outcome::Continue };
            let id = item.id;
            self.seqs.insert(id, seq);
            match outcome {
                Outcome::Continue if item.completes => self.scheduler.push_token(id),
                Outcome::Continue => {}
                Outcome::Finished => self.retire(id),
                Outcome::Gone => {
                    self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    self.retire(id);
                }
            }
        }
    }

    /// Samples the next token of an up-to-date sequence and tells its caller.
    fn advance(&self, seq: &mut Seq<'e>, next: Next) -> Outcome {
        if let Some(lp) = seq.prompt_logprobs.take()
            && seq.events.try_send(Event::PromptLogprobs(lp)).is_err()
        {
            return Outcome::Gone;
        }
        if seq.req.params.max_tokens == 0 {
            // Scoring only (echo with logprobs): the prompt's logprobs were the whole answer.
            return finish(seq, FinishReason::Length);
        }
        let logprob_top = seq.req.logprobs;
        let (sampled, dist) = match next {
            Next::Logits(mut logits) => {
                let dist = logprob_top.map(|_| LogSoftmax::new(&logits));
                (seq.sampler.sample(&mut logits, &seq.tokens), dist)
            }
            Next::Argmax(id) => (id.ok_or(SamplerError::NothingToSample), None),
        };
        let id = match sampled {
            Ok(id) => id,
            Err(e) => {
                let _ = seq.events.try_send(Event::Failed(e.to_string()));
                return Outcome::Finished;
            }
        };
        let logprob = dist.zip(logprob_top).map(|(d, n)| d.token(id, n));
        seq.tokens.push(id);
        seq.generated += 1;
        let tokenizer = &self.engine.tokenizer;
        if !seq.req.params.ignore_eos && tokenizer.is_eog(id) {
            return finish(seq, FinishReason::Stop);
        }
        let released = seq.stops.push(&seq.decoder.push(id));
        if seq.events.try_send(Event::Token { id, text: released.text, logprob }).is_err() {
            return Outcome::Gone;
        }
        if released.stopped {
            return finish(seq, FinishReason::Stop);
        }
        if seq.generated >= seq.req.params.max_tokens {
            return finish(seq, FinishReason::Length);
        }
        Outcome::Continue
    }

    fn publish_stats(&self) {
        let s = &self.stats;
        s.running.store(self.scheduler.running(), Ordering::Relaxed);
        s.waiting.store(self.scheduler.waiting(), Ordering::Relaxed);
        s.blocks_in_use.store(self.scheduler.blocks_in_use(), Ordering::Relaxed);
    }
}

/// Ends a sequence: releases held-back text (unless a stop string matched) and sends `Done`.
fn finish(seq: &mut Seq<'_>, finish_reason: FinishReason) -> Outcome {
    if finish_reason == FinishReason::Length {
        let tail = seq.stops.push(&seq.decoder.finish()).text + &seq.stops.finish();
        if !tail.is_empty() && seq.events.try_send(Event::Text(tail)).is_err() {
            return Outcome::Gone;
        }
    }
    let done = Event::Done { finish_reason, prompt_tokens: seq.req.prompt.len(), completion_tokens: seq.generated };
    let _ = seq.events.try_send(done);
    Outcome::Finished
}

/// What a step gives a sequence to pick its next token from.
enum Next {
    /// Its logits (the last row's `vocab_size` floats, or every row's with `Logits::All`).
    Logits(Vec<f32>),
    /// The argmax of its last row, computed where the logits are; `None` if none is finite.
    Argmax(Option<u32>),
}

fn logits_mode(item: &BatchItem, seq: &Seq<'_>) -> Logits {
    // Prompt logprobs are gathered on the first pass over the prompt only (a recompute after
    // preemption finds them already collected).
    let collecting = seq.prompt_logprobs.as_ref().is_some_and(|lp| lp.len() < seq.req.prompt.len());
    if collecting && item.start < seq.req.prompt.len() {
        Logits::All
    } else if item.completes {
        Logits::Last
    } else {
        Logits::None
    }
}

/// Logprobs of the prompt tokens that the rows of this chunk predict.
fn record_prompt_logprobs(seq: &mut Seq<'_>, item: &BatchItem, rows: &[f32], vocab: usize) {
    let top = seq.req.prompt_logprobs.unwrap_or(0);
    let prompt_len = seq.req.prompt.len();
    let Some(lp) = seq.prompt_logprobs.as_mut() else { return };
    for (r, row) in rows.chunks_exact(vocab).enumerate() {
        let next = item.start + r + 1;
        if next < prompt_len && next == lp.len() {
            lp.push(Some(LogSoftmax::new(row).token(seq.req.prompt[next], top)));
        }
    }
}

/// `log_softmax` of one row of logits (a copy: sampling modifies the row in place).
struct LogSoftmax {
    logits: Vec<f32>,
    log_sum: f32,
}

impl LogSoftmax {
    fn new(row: &[f32]) -> Self {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&l| f64::from((l - max).exp())).sum();
        Self { logits: row.to_vec(), log_sum: max + sum.ln() as f32 }
    }

    fn token(&self, id: u32, top: usize) -> TokenLogprob {
        let logprob = self.logits.get(id as usize).map_or(f32::NEG_INFINITY, |&l| l - self.log_sum);
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        if top > 0 {
            for (i, &l) in self.logits.iter().enumerate() {
                if best.len() < top || l > best[best.len() - 1].1 {
                    let at = best.partition_point(|&(_, b)| b >= l);
                    best.insert(at, (i as u32, l));
                    best.truncate(top);
                }
            }
        }
        TokenLogprob { id, logprob, top: best.into_iter().map(|(i, l)| (i, l - self.log_sum)).collect() }
    }
}
