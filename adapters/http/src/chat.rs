//! `POST /v1/chat/completions`.

use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use realm_engine::GenerateParams;
use realm_engine::chat::{ChatError, ChatMessage};
use realm_engine::tokenizer::Tokenizer;
use realm_engine::worker::{Event, TokenLogprob};
use tokio::sync::mpsc;

use crate::AppState;
use crate::auth::Internal;
use crate::error::ApiError;
use crate::generate::{self, Job, MAX_TOP_LOGPROBS, Outcome, Plan, Timing};
use crate::request::{self, ChatRequest};
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

async fn run(state: AppState, accepted: generate::Accepted<ChatRequest>) -> Result<Response, ApiError> {
    let generate::Accepted { start, caller, info, req } = accepted;
    state.check_model(&req.model)?;
    req.check_unsupported()?;
    if let Some(format) = &req.response_format {
        match format.kind.as_str() {
            "text" => {}
            "json_object" | "json_schema" => {
                return Err(ApiError::invalid(
                    "response_format",
                    format!(
                        "`response_format` {} needs constrained decoding, which this server does not do yet",
                        format.kind
                    ),
                ));
            }
            other => {
                return Err(ApiError::invalid(
                    "response_format.type",
                    format!("unknown response_format type `{other}`"),
                ));
            }
        }
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must hold at least one message"));
    }
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| request::message_text(i, m).map(|(role, content)| ChatMessage { role, content }))
        .collect::<Result<Vec<_>, _>>()?;
    let text = info.chat_template.render(&messages, true).map_err(|e| match e {
        ChatError::Raised { message } => {
            ApiError::invalid("messages", format!("the model's chat template refused the conversation: {message}"))
        }
        other => ApiError::Internal { message: other.to_string() },
    })?;
    let prompt = info.tokenizer.encode_prompt(&text);
    let common = req.common();
    let max_tokens =
        generate::max_tokens(&state, req.max_completion_tokens.or(common.max_tokens), prompt.len(), &info, false)?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (_, Some(k)) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("`top_logprobs` is {k}; it must be in [0, {MAX_TOP_LOGPROBS}]"),
            ));
        }
        (false, Some(_)) => return Err(ApiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`")),
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, None) => None,
    };
    let params = GenerateParams {
        max_tokens,
        sampling: generate::sampling(&state, &common, &info)?,
        stop: request::stop_strings(&common.stop)?,
        ignore_eos: common.ignore_eos.unwrap_or(false),
    };
    let plan = Plan {
        jobs: vec![Job { prompt, params }],
        n: generate::choices_per_prompt(&common)?,
        logprobs,
        prompt_logprobs: None,
    };
    let running = generate::submit(&state, caller, &plan)?;
    state.metrics().prompt_tokens.inc_by(generate::prompt_tokens(&plan.jobs) as u64);
    let header = Header {
        id: format!("chatcmpl-{:016x}", state.next_id()),
        object: "chat.completion",
        created: AppState::created(),
        model: state.config().model_id.clone(),
        system_fingerprint: state.inner.fingerprint.clone(),
    };
    if common.stream.unwrap_or(false) {
        let (tx, rx) = mpsc::channel(64);
        let header = Header { object: "chat.completion.chunk", ..header };
        tokio::spawn(stream(state.clone(), running, header, common.include_usage, plan, start, tx));
        return Ok(generate::sse_response(&state, rx));
    }
    let outcomes = generate::collect(&state, running, start).await?;
    let completion_tokens = outcomes.iter().map(|o| o.completion_tokens).sum();
    let choices = outcomes
        .into_iter()
        .enumerate()
        .map(|(index, o)| ChatChoice {
            index,
            logprobs: logprobs.map(|_| chat_logprobs(&info.tokenizer, &o.tokens)),
            finish_reason: o.finish_reason.map(generate::finish_reason_str),
            message: AssistantMessage { role: "assistant", content: o.text },
        })
        .collect();
    let usage = Usage::new(generate::prompt_tokens(&plan.jobs), completion_tokens);
    Ok(axum::Json(ChatCompletion { header, choices, usage }).into_response())
}

fn chat_logprob(tokenizer: &Tokenizer, lp: &TokenLogprob) -> ChatTokenLogprob {
    let (token, bytes) = generate::token_piece(tokenizer, lp.id);
    let top_logprobs = lp
        .top
        .iter()
        .map(|&(id, logprob)| {
            let (token, bytes) = generate::token_piece(tokenizer, id);
            TopLogprob { token, logprob, bytes }
        })
        .collect();
    ChatTokenLogprob { token, logprob: lp.logprob, bytes, top_logprobs }
}

fn chat_logprobs(tokenizer: &Tokenizer, tokens: &[(u32, Option<TokenLogprob>)]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens.iter().filter_map(|(_, lp)| lp.as_ref()).map(|lp| chat_logprob(tokenizer, lp)).collect(),
    }
}

/// Writes the SSE frames of a streamed chat completion until every choice has finished or the
/// client has gone.
async fn stream(
    state: AppState,
    running: Vec<generate::Running>,
    header: Header,
    include_usage: bool,
    plan: Plan,
    start: Instant,
    tx: mpsc::Sender<axum::response::sse::Event>,
) {
    let Ok(info) = state.engine().info() else { return };
    let count = running.len();
    let usage_field = include_usage.then_some(None);
    let chunk = |choices: Vec<ChatChunkChoice>| {
        let c = ChatChunk { header: header.clone(), choices, usage: usage_field };
        generate::data(serde_json::to_string(&c).unwrap_or_default())
    };
    let choice = |index: usize, delta: Delta, logprobs: Option<ChatLogprobs>, finish_reason: Option<&'static str>| {
        ChatChunkChoice { index, delta, logprobs, finish_reason }
    };
    for index in 0..count {
        let delta = Delta { role: Some("assistant"), content: Some(String::new()) };
        if !generate::send(&tx, chunk(vec![choice(index, delta, None, None)])).await {
            return;
        }
    }
    let mut timings: Vec<Timing> = (0..count).map(|_| Timing::new(start)).collect();
    let mut outcomes: Vec<Outcome> = (0..count).map(|_| Outcome::default()).collect();
    let mut events = generate::merged(running);
    while let Some((i, event)) = generate::next_or_gone(&mut events, &tx).await {
        timings[i].observe(&state, &event);
        let frame = match &event {
            Event::Token { text, logprob, .. } => {
                let logprobs =
                    logprob.as_ref().map(|lp| ChatLogprobs { content: vec![chat_logprob(&info.tokenizer, lp)] });
                (!text.is_empty() || logprobs.is_some())
                    .then(|| chunk(vec![choice(i, Delta { role: None, content: Some(text.clone()) }, logprobs, None)]))
            }
            Event::Text(text) => {
                Some(chunk(vec![choice(i, Delta { role: None, content: Some(text.clone()) }, None, None)]))
            }
            Event::Done { finish_reason, .. } => {
                Some(chunk(vec![choice(i, Delta::default(), None, Some(generate::finish_reason_str(*finish_reason)))]))
            }
            Event::PromptLogprobs(_) => None,
            Event::Failed(message) => Some(generate::data(ApiError::Internal { message: message.clone() }.body())),
        };
        let failed = matches!(event, Event::Failed(_));
        let _ = outcomes[i].absorb(event);
        if let Some(frame) = frame
            && !generate::send(&tx, frame).await
        {
            return;
        }
        if failed {
            return;
        }
    }
    if tx.is_closed() {
        return;
    }
    if include_usage {
        let completion = outcomes.iter().map(|o| o.completion_tokens).sum();
        let c = ChatChunk {
            header: header.clone(),
            choices: Vec::new(),
            usage: Some(Some(Usage::new(generate::prompt_tokens(&plan.jobs), completion))),
        };
        if !generate::send(&tx, generate::data(serde_json::to_string(&c).unwrap_or_default())).await {
            return;
        }
    }
    let _ = generate::send(&tx, generate::done_frame()).await;
}
