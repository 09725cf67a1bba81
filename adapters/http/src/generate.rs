//! What both completion endpoints share: request fields → generation settings, submitting one
//! sequence per prompt and choice, timing metrics, collecting results and the SSE plumbing.

use std::convert::Infallible;
use std::time::Instant;

use axum::http::header;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, SelectAll, Stream, StreamExt};
use realm_engine::sampler::SamplingParams;
use realm_engine::tokenizer::{Special, Tokenizer};
use std::sync::Arc;

use realm_engine::worker::{Event, EventStream, ModelInfo, Request, TokenLogprob};
use realm_engine::{FinishReason, GenerateParams};
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::request::Common;
use crate::{AppState, body_bytes, note_first_token};

pub const MAX_N: i64 = 8;
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// A request past authentication, model loading and parsing.
pub struct Accepted<T> {
    pub start: Instant,
    pub caller: Caller,
    pub info: Arc<ModelInfo>,
    pub req: T,
}

/// What both endpoints do first: read the body, admit the caller (key, loading, draining),
/// parse the request.
pub async fn accept<T: serde::de::DeserializeOwned>(
    state: &AppState,
    internal: bool,
    headers: &axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Accepted<T>, ApiError> {
    let start = Instant::now();
    let body = body_bytes(body, state.config().max_body_bytes)?;
    let (caller, info) = state.admit(headers, internal).await?;
    let req = crate::request::parse(&body)?;
    Ok(Accepted { start, caller, info, req })
}

/// Sampling and stopping settings from the request's fields and the server's defaults.
pub fn sampling(state: &AppState, c: &Common, info: &ModelInfo) -> Result<SamplingParams, ApiError> {
    let d = &state.config().defaults;
    let temperature = c.temperature.unwrap_or(d.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature", format!("`temperature` is {temperature}; it must be in [0, 2]")));
    }
    let top_k = match c.top_k {
        None => d.top_k,
        Some(-1 | 0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid("top_k", format!("`top_k` is {k}; it must be -1, 0 (off) or positive")));
        }
    };
    for (name, value) in [("presence_penalty", c.presence_penalty), ("frequency_penalty", c.frequency_penalty)] {
        if let Some(v) = value.filter(|v| !(-2.0..=2.0).contains(v)) {
            return Err(ApiError::invalid(name, format!("`{name}` is {v}; it must be in [-2, 2]")));
        }
    }
    let mut logit_bias = Vec::new();
    for (key, &bias) in c.logit_bias.iter().flatten() {
        let param = format!("logit_bias.{key}");
        let id: u32 =
            key.parse().map_err(|_| ApiError::invalid(&param, format!("`{param}`: keys must be token ids")))?;
        if id as usize >= info.vocab_size {
            return Err(ApiError::invalid(
                &param,
                format!("token {id} is outside the vocabulary of {}", info.vocab_size),
            ));
        }
        if !(-100.0..=100.0).contains(&bias) {
            return Err(ApiError::invalid(&param, format!("`{param}` is {bias}; biases must be in [-100, 100]")));
        }
        logit_bias.push((id, bias));
    }
    logit_bias.sort_by_key(|&(id, _)| id);
    let sampling = SamplingParams {
        temperature,
        top_k,
        top_p: c.top_p.unwrap_or(d.top_p),
        min_p: c.min_p.unwrap_or(d.min_p),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        logit_bias,
        seed: c.seed.map(|s| s as u64),
        ..SamplingParams::default()
    };
    sampling.validate().map_err(ApiError::from_sampler)?;
    Ok(sampling)
}

/// `max_tokens` for a prompt of `prompt_len` tokens: the request's, else the server default,
/// else the rest of the context.
pub fn max_tokens(
    state: &AppState,
    requested: Option<i64>,
    prompt_len: usize,
    info: &ModelInfo,
    zero_ok: bool,
) -> Result<usize, ApiError> {
    let context = info.context_length;
    let max = match requested {
        Some(m) if m < 0 || (m == 0 && !zero_ok) => {
            return Err(ApiError::invalid("max_tokens", format!("`max_tokens` is {m}; it must be at least 1")));
        }
        Some(m) => m as usize,
        None => {
            let rest = context.saturating_sub(prompt_len);
            if rest == 0 {
                return Err(ApiError::ContextLength { prompt: prompt_len, max_tokens: 1, context });
            }
            state.config().defaults.max_tokens.map_or(rest, |d| d.min(rest))
        }
    };
    if let Some(limit) = state.config().max_tokens_limit.filter(|&l| max > l) {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("`max_tokens` is {max}; this server allows at most {limit}"),
        ));
    }
    if prompt_len + max > context {
        return Err(ApiError::ContextLength { prompt: prompt_len, max_tokens: max, context });
    }
    Ok(max)
}

pub fn choices_per_prompt(c: &Common) -> Result<usize, ApiError> {
    match c.n.unwrap_or(1) {
        n @ 1..=MAX_N => Ok(n as usize),
        n => Err(ApiError::invalid("n", format!("`n` is {n}; it must be in [1, {MAX_N}]"))),
    }
}

/// One sequence being generated: choice `index` (prompt `index / n`, choice `index % n`).
pub struct Running {
    pub index: usize,
    pub stream: EventStream,
}

/// A prompt with its own generation settings (they differ in `max_tokens`).
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
}

pub struct Plan {
    pub jobs: Vec<Job>,
    pub n: usize,
    pub logprobs: Option<usize>,
    pub prompt_logprobs: Option<usize>,
}

/// Charges the caller and hands every (prompt, choice) to the engine; all or nothing.
pub fn submit(state: &AppState, caller: Caller, plan: &Plan) -> Result<Vec<Running>, ApiError> {
    let cost: usize = plan.jobs.iter().map(|j| (j.prompt.len() + j.params.max_tokens) * plan.n).sum();
    state.inner.limiter.charge(caller, cost, Instant::now())?;
    let deadline = state.config().request_timeout.map(|t| Instant::now() + t);
    let mut running = Vec::with_capacity(plan.jobs.len() * plan.n);
    for (p, job) in plan.jobs.iter().enumerate() {
        for j in 0..plan.n {
            let mut params = job.params.clone();
            // Distinct choices need distinct draws; a given seed still repeats exactly.
            params.sampling.seed = Some(match params.sampling.seed {
                Some(seed) => seed.wrapping_add(j as u64),
                None => state.next_id(),
            });
            let req = Request {
                prompt: job.prompt.clone(),
                params,
                logprobs: plan.logprobs,
                prompt_logprobs: plan.prompt_logprobs,
                deadline,
            };
            let stream = state.engine().submit(req)?;
            running.push(Running { index: p * plan.n + j, stream });
        }
    }
    Ok(running)
}

/// Latency metrics of one sequence, fed its events as they arrive.
pub struct Timing {
    start: Instant,
    last: Option<Instant>,
}

impl Timing {
    pub fn new(start: Instant) -> Self {
        Self { start, last: None }
    }

    pub fn observe(&mut self, state: &AppState, event: &Event) {
        let now = Instant::now();
        let m = state.metrics();
        match event {
            Event::Token { .. } => {
                match self.last {
                    None => {
                        m.ttft.observe(now.duration_since(self.start).as_secs_f64());
                        note_first_token(state);
                    }
                    Some(last) => m.itl.observe(now.duration_since(last).as_secs_f64()),
                }
                self.last = Some(now);
            }
            Event::Done { finish_reason, completion_tokens, .. } => {
                m.e2e.observe(now.duration_since(self.start).as_secs_f64());
                m.generation_tokens.inc_by(*completion_tokens as u64);
                m.finished(finish_reason_str(*finish_reason));
            }
            _ => {}
        }
    }
}

pub fn finish_reason_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
    }
}

/// Everything one sequence produced.
#[derive(Default)]
pub struct Outcome {
    pub text: String,
    pub tokens: Vec<(u32, Option<TokenLogprob>)>,
    pub prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    pub finish_reason: Option<FinishReason>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Outcome {
    /// Folds one event in; a failure becomes the error.
    pub fn absorb(&mut self, event: Event) -> Result<(), ApiError> {
        match event {
            Event::PromptLogprobs(lp) => self.prompt_logprobs = Some(lp),
            Event::Token { id, text, logprob } => {
                self.text.push_str(&text);
                self.tokens.push((id, logprob));
            }
            Event::Text(text) => self.text.push_str(&text),
            Event::Done { finish_reason, prompt_tokens, completion_tokens } => {
                self.finish_reason = Some(finish_reason);
                self.prompt_tokens = prompt_tokens;
                self.completion_tokens = completion_tokens;
            }
            Event::Failed(message) => return Err(ApiError::Internal { message }),
        }
        Ok(())
    }
}

pub type TaggedEvents = std::pin::Pin<Box<dyn Stream<Item = (usize, Event)> + Send>>;

/// Every sequence's events, interleaved as they come, tagged with the choice index.
pub fn merged(running: Vec<Running>) -> SelectAll<TaggedEvents> {
    stream::select_all(running.into_iter().map(|r| {
        let s = stream::unfold(r, |mut r| async move {
            let event = r.stream.events.recv().await?;
            Some(((r.index, event), r))
        });
        Box::pin(s) as TaggedEvents
    }))
}

/// Waits for every sequence to finish; results in choice order.
pub async fn collect(state: &AppState, running: Vec<Running>, start: Instant) -> Result<Vec<Outcome>, ApiError> {
    let count = running.len();
    let mut outcomes: Vec<Outcome> = (0..count).map(|_| Outcome::default()).collect();
    let mut timings: Vec<Timing> = (0..count).map(|_| Timing::new(start)).collect();
    let mut events = merged(running);
    while let Some((i, event)) = events.next().await {
        timings[i].observe(state, &event);
        outcomes[i].absorb(event)?;
    }
    if outcomes.iter().any(|o| o.finish_reason.is_none()) {
        return Err(ApiError::Internal { message: "the engine ended a sequence without finishing it".into() });
    }
    Ok(outcomes)
}

/// Prompt tokens counted once per prompt, however many choices it has.
pub fn prompt_tokens(jobs: &[Job]) -> usize {
    jobs.iter().map(|j| j.prompt.len()).sum()
}

/// A token as text (lossy where it holds part of a UTF-8 sequence) and as bytes.
pub fn token_piece(tokenizer: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tokenizer.token_bytes(id, Special::Render).unwrap_or_default().to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Turns frames sent on a channel into an SSE response with keep-alives and headers that keep
/// proxies from buffering. The producer sees the client leave as a closed channel.
pub fn sse_response(state: &AppState, frames: mpsc::Receiver<SseEvent>) -> Response {
    let stream = stream::unfold(frames, |mut rx| async move { rx.recv().await.map(|f| (Ok::<_, Infallible>(f), rx)) });
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(state.config().keep_alive).text("keep-alive"));
    ([(header::CACHE_CONTROL, "no-cache"), (header::HeaderName::from_static("x-accel-buffering"), "no")], sse)
        .into_response()
}

pub fn data(json: String) -> SseEvent {
    SseEvent::default().data(json)
}

pub fn done_frame() -> SseEvent {
    SseEvent::default().data("[DONE]")
}

/// Sends a frame unless the client is gone; false means stop.
pub async fn send(tx: &mpsc::Sender<SseEvent>, frame: SseEvent) -> bool {
    tx.send(frame).await.is_ok()
}

/// The next event, or `None` when all sequences ended or the client left (then everything is
/// dropped, which cancels the sequences in the engine).
pub async fn next_or_gone<S>(events: &mut S, tx: &mpsc::Sender<SseEvent>) -> Option<(usize, Event)>
where
    S: Stream<Item = (usize, Event)> + Unpin,
{
    tokio::select! {
        next = events.next() => next,
        () = tx.closed() => None,
    }
}
