//! `POST /v1/completions`: text or token-id prompts, one or many; `echo` with `logprobs`
//! returns the prompt's own token logprobs (scoring, perplexity), with `max_tokens: 0` allowed.

use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use realm_engine::GenerateParams;
use realm_engine::tokenizer::Tokenizer;
use realm_engine::worker::{Event, TokenLogprob};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::AppState;
use crate::auth::Internal;
use crate::error::ApiError;
use crate::generate::{self, Job, MAX_TOP_LOGPROBS, Outcome, Plan, Timing};
use crate::request::{self, CompletionRequest, Prompt};
use crate::response::*;

pub async fn handle(
    State(state): State<AppState>,
    internal: Option<Extension<Internal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match generate::accept(&state, internal.is_some(), &headers, body).await {
        Ok(accepted) => run(state, accepted).await.unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    }
}

async fn run(state: AppState, accepted: generate::Accepted<CompletionRequest>) -> Result<Response, ApiError> {
    let generate::Accepted { start, caller, info, req } = accepted;
    state.check_model(&req.model)?;
    if req.suffix.as_ref().is_some_and(|s| !s.is_null()) {
        return Err(ApiError::unsupported("suffix"));
    }
    let common = req.common();
    let n = generate::choices_per_prompt(&common)?;
    if let Some(best_of) = req.best_of.filter(|&b| b != n as i64) {
        return Err(ApiError::invalid(
            "best_of",
            format!("`best_of` {best_of} differs from `n` {n}; only best_of = n is supported"),
        ));
    }
    let logprobs = match req.logprobs {
        Some(k) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("`logprobs` is {k}; it must be in [0, {MAX_TOP_LOGPROBS}]"),
            ));
        }
        k => k.map(|k| k as usize),
    };
    let echo = req.echo.unwrap_or(false);
    let prompt = req.prompt.as_ref().ok_or_else(|| ApiError::invalid("prompt", "`prompt` is required"))?;
    let prompts = request::prompts(prompt)?;
    let sampling = generate::sampling(&state, &common, &info)?;
    let stop = request::stop_strings(&common.stop)?;
    let mut jobs = Vec::with_capacity(prompts.len());
    for p in &prompts {
        let ids = match p {
            Prompt::Text(text) => info.tokenizer.encode_prompt(text),
            Prompt::Tokens(ids) => ids.clone(),
        };
        if ids.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt is empty"));
        }
        let max_tokens = generate::max_tokens(&state, common.max_tokens, ids.len(), &info, echo)?;
        let params = GenerateParams {
            max_tokens,
            sampling: sampling.clone(),
            stop: stop.clone(),
            ignore_eos: common.ignore_eos.unwrap_or(false),
        };
        jobs.push(Job { prompt: ids, params });
    }
    let plan = Plan { jobs, n, logprobs, prompt_logprobs: if echo { logprobs } else { None } };
    let running = generate::submit(&state, caller, &plan)?;
    state.metrics().prompt_tokens.inc_by(generate::prompt_tokens(&plan.jobs) as u64);
    let header = Header {
        id: format!("cmpl-{:016x}", state.next_id()),
        object: "text_completion",
        created: AppState::created(),
        model: state.config().model_id.clone(),
        system_fingerprint: state.inner.fingerprint.clone(),
    };
    let echoes: Vec<String> = if echo {
        prompts
            .iter()
            .zip(&plan.jobs)
            .map(|(p, j)| match p {
                Prompt::Text(text) => text.clone(),
                Prompt::Tokens(_) => info.tokenizer.decode(&j.prompt),
            })
            .collect()
    } else {
        vec![String::new(); prompts.len()]
    };
    if common.stream.unwrap_or(false) {
        let (tx, rx) = mpsc::channel(64);
        let job = StreamJob { header, include_usage: common.include_usage, plan, echoes, start };
        tokio::spawn(stream(state.clone(), running, job, tx));
        return Ok(generate::sse_response(&state, rx));
    }
    let outcomes = generate::collect(&state, running, start).await?;
    let completion_tokens = outcomes.iter().map(|o| o.completion_tokens).sum();
    let choices = outcomes
        .into_iter()
        .enumerate()
        .map(|(index, o)| {
            let p = index / n;
            let echoed = &echoes[p];
            let logprobs = logprobs.map(|_| completion_logprobs(&info.tokenizer, &plan.jobs[p].prompt, echo, &o));
            CompletionChoice {
                index,
                text: format!("{echoed}{}", o.text),
                logprobs,
                finish_reason: o.finish_reason.map(generate::finish_reason_str),
            }
        })
        .collect();
    let usage = Some(Some(Usage::new(generate::prompt_tokens(&plan.jobs), completion_tokens)));
    Ok(axum::Json(Completion { header, choices, usage }).into_response())
}

/// The legacy logprobs arrays, the prompt's tokens first when echoed.
fn completion_logprobs(tokenizer: &Tokenizer, prompt: &[u32], echo: bool, o: &Outcome) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = 0;
    let mut push = |id: u32, lp: Option<&TokenLogprob>| {
        let (token, _) = generate::token_piece(tokenizer, id);
        out.text_offset.push(offset);
        offset += token.chars().count();
        out.tokens.push(token);
        out.token_logprobs.push(lp.map(|l| l.logprob));
        out.top_logprobs.push(lp.map(|l| top_map(tokenizer, l)));
    };
    if echo {
        let prompt_lp = o.prompt_logprobs.as_deref().unwrap_or_default();
        for (i, &id) in prompt.iter().enumerate() {
            push(id, prompt_lp.get(i).and_then(Option::as_ref));
        }
    }
    for (id, lp) in &o.tokens {
        push(*id, lp.as_ref());
    }
    out
}

fn top_map(tokenizer: &Tokenizer, lp: &TokenLogprob) -> Map<String, Value> {
    lp.top
        .iter()
        .map(|&(id, logprob)| (generate::token_piece(tokenizer, id).0, Value::from(f64::from(logprob))))
        .collect()
}

struct StreamJob {
    header: Header,
    include_usage: bool,
    plan: Plan,
    echoes: Vec<String>,
    start: Instant,
}

async fn stream(
    state: AppState,
    running: Vec<generate::Running>,
    job: StreamJob,
    tx: mpsc::Sender<axum::response::sse::Event>,
) {
    let Ok(info) = state.engine().info() else { return };
    let count = running.len();
    let n = job.plan.n;
    let usage_field = job.include_usage.then_some(None);
    let chunk = |index: usize, text: String, logprobs: Option<CompletionLogprobs>, finish: Option<&'static str>| {
        let choices = vec![CompletionChoice { index, text, logprobs, finish_reason: finish }];
        let c = Completion { header: job.header.clone(), choices, usage: usage_field };
        generate::data(serde_json::to_string(&c).unwrap_or_default())
    };
    let mut timings: Vec<Timing> = (0..count).map(|_| Timing::new(job.start)).collect();
    let mut outcomes: Vec<Outcome> = (0..count).map(|_| Outcome::default()).collect();
    let mut echoed = vec![false; count];
    let mut events = generate::merged(running);
    while let Some((i, event)) = generate::next_or_gone(&mut events, &tx).await {
        timings[i].observe(&state, &event);
        let p = i / n;
        let mut frames = Vec::new();
        let wants_echo = !job.echoes[p].is_empty() && !echoed[i];
        match &event {
            Event::PromptLogprobs(lp) if wants_echo => {
                let o = Outcome { prompt_logprobs: Some(lp.clone()), ..Outcome::default() };
                let logprobs =
                    job.plan.logprobs.map(|_| completion_logprobs(&info.tokenizer, &job.plan.jobs[p].prompt, true, &o));
                frames.push(chunk(i, job.echoes[p].clone(), logprobs, None));
                echoed[i] = true;
            }
            Event::Token { id, text, logprob } => {
                if wants_echo {
                    frames.push(chunk(i, job.echoes[p].clone(), None, None));
                    echoed[i] = true;
                }
                let logprobs = job.plan.logprobs.map(|_| {
                    let o = Outcome { tokens: vec![(*id, logprob.clone())], ..Outcome::default() };
                    completion_logprobs(&info.tokenizer, &[], false, &o)
                });
                if !text.is_empty() || logprobs.is_some() {
                    frames.push(chunk(i, text.clone(), logprobs, None));
                }
            }
            Event::Text(text) => frames.push(chunk(i, text.clone(), None, None)),
            Event::Done { finish_reason, .. } => {
                if wants_echo {
                    frames.push(chunk(i, job.echoes[p].clone(), None, None));
                    echoed[i] = true;
                }
                frames.push(chunk(i, String::new(), None, Some(generate::finish_reason_str(*finish_reason))));
            }
            Event::PromptLogprobs(_) => {}
            Event::Failed(message) => {
                frames.push(generate::data(ApiError::Internal { message: message.clone() }.body()))
            }
        }
        let failed = matches!(event, Event::Failed(_));
        let _ = outcomes[i].absorb(event);
        for frame in frames {
            if !generate::send(&tx, frame).await {
                return;
            }
        }
        if failed {
            return;
        }
    }
    if tx.is_closed() {
        return;
    }
    if job.include_usage {
        let completion = outcomes.iter().map(|o| o.completion_tokens).sum();
        let c = Completion {
            header: job.header.clone(),
            choices: Vec::new(),
            usage: Some(Some(Usage::new(generate::prompt_tokens(&job.plan.jobs), completion))),
        };
        if !generate::send(&tx, generate::data(serde_json::to_string(&c).unwrap_or_default())).await {
            return;
        }
    }
    let _ = generate::send(&tx, generate::done_frame()).await;
}
