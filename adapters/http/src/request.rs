//! OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`) and their checks.
//!
//! Every field of OpenAI's API is named here: supported ones are parsed and range-checked, the
//! rest are refused with a 400 naming them when present (docs/openai-compat.md lists each), and
//! a field OpenAI does not have is refused by name too. Nothing is silently ignored.

use std::collections::HashMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// Parses a body, naming the offending field (with its path) when it does not fit.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(ApiError::InvalidJson { message: inner.to_string() });
            }
            let message = inner.to_string();
            if let Some(field) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
                // The path already ends with the unknown field.
                let param = if path == "." || path.is_empty() { field.to_string() } else { path };
                return Err(ApiError::invalid(
                    param.clone(),
                    format!("unknown field `{param}` (docs/openai-compat.md lists the supported fields)"),
                ));
            }
            if let Some(field) = message.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
                let param = if path == "." { field.to_string() } else { format!("{path}.{field}") };
                return Err(ApiError::invalid(param.clone(), format!("`{param}` is required")));
            }
            let message = message.split(" at line ").next().unwrap_or(&message).to_string();
            Err(ApiError::invalid(path.clone(), format!("`{path}`: {message}")))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub json_schema: Option<Value>,
}

/// Sampling and stopping fields shared by both endpoints.
#[derive(Debug, Default, Clone)]
pub struct Common {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Value>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub n: Option<i64>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub include_usage: bool,
    pub ignore_eos: Option<bool>,
}

/// Declares a request struct with its own fields plus the [`Common`] ones, flat, so unknown
/// fields are refused by name (serde cannot deny unknown fields through `flatten`).
macro_rules! request_with_common_fields {
    ($(#[$meta:meta])* pub struct $name:ident { $($field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub model: String,
            $(#[serde(default)] pub $field: $ty,)*
            #[serde(default)] pub max_tokens: Option<i64>,
            #[serde(default)] pub temperature: Option<f32>,
            #[serde(default)] pub top_p: Option<f32>,
            #[serde(default)] pub top_k: Option<i64>,
            #[serde(default)] pub min_p: Option<f32>,
            #[serde(default)] pub seed: Option<i64>,
            #[serde(default)] pub stop: Option<Value>,
            #[serde(default)] pub presence_penalty: Option<f32>,
            #[serde(default)] pub frequency_penalty: Option<f32>,
            #[serde(default)] pub repetition_penalty: Option<f32>,
            #[serde(default)] pub logit_bias: Option<HashMap<String, f32>>,
            #[serde(default)] pub n: Option<i64>,
            #[serde(default)] pub user: Option<String>,
            #[serde(default)] pub stream: Option<bool>,
            #[serde(default)] pub stream_options: Option<StreamOptions>,
            #[serde(default)] pub ignore_eos: Option<bool>,
        }

        impl $name {
            pub fn common(&self) -> Common {
                Common {
                    max_tokens: self.max_tokens,
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    min_p: self.min_p,
                    seed: self.seed,
                    stop: self.stop.clone(),
                    presence_penalty: self.presence_penalty,
                    frequency_penalty: self.frequency_penalty,
                    repetition_penalty: self.repetition_penalty,
                    logit_bias: self.logit_bias.clone(),
                    n: self.n,
                    user: self.user.clone(),
                    stream: self.stream,
                    include_usage: self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false),
                    ignore_eos: self.ignore_eos,
                }
            }
        }
    };
}

request_with_common_fields! {
    pub struct ChatRequest {
        messages: Vec<Message>,
        max_completion_tokens: Option<i64>,
        logprobs: Option<bool>,
        top_logprobs: Option<i64>,
        response_format: Option<ResponseFormat>,
        tools: Option<Value>,
        tool_choice: Option<Value>,
        parallel_tool_calls: Option<Value>,
        functions: Option<Value>,
        function_call: Option<Value>,
        audio: Option<Value>,
        modalities: Option<Value>,
        prediction: Option<Value>,
        reasoning_effort: Option<Value>,
        web_search_options: Option<Value>,
        metadata: Option<Value>,
        store: Option<Value>,
        service_tier: Option<Value>,
    }
}

request_with_common_fields! {
    pub struct CompletionRequest {
        prompt: Option<Value>,
        echo: Option<bool>,
        logprobs: Option<i64>,
        best_of: Option<i64>,
        suffix: Option<Value>,
    }
}

impl ChatRequest {
    /// Refuses OpenAI chat fields Realm does not implement when present and not null.
    pub fn check_unsupported(&self) -> Result<(), ApiError> {
        let fields = [
            ("tools", &self.tools),
            ("tool_choice", &self.tool_choice),
            ("parallel_tool_calls", &self.parallel_tool_calls),
            ("functions", &self.functions),
            ("function_call", &self.function_call),
            ("audio", &self.audio),
            ("modalities", &self.modalities),
            ("prediction", &self.prediction),
            ("reasoning_effort", &self.reasoning_effort),
            ("web_search_options", &self.web_search_options),
            ("metadata", &self.metadata),
        ];
        for (name, value) in fields {
            if value.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(ApiError::unsupported(name));
            }
        }
        // Harmless when they ask for what the server does anyway.
        if self.store.as_ref().is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false))) {
            return Err(ApiError::invalid("store", "`store` must be false: this server stores nothing"));
        }
        if let Some(tier) = self.service_tier.as_ref().filter(|v| !v.is_null())
            && !matches!(tier.as_str(), Some("auto" | "default"))
        {
            return Err(ApiError::invalid("service_tier", "`service_tier` must be \"auto\" or \"default\""));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
    #[serde(default)]
    pub name: Option<Value>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
    #[serde(default)]
    pub tool_call_id: Option<Value>,
    #[serde(default)]
    pub refusal: Option<Value>,
}

/// A chat message reduced to what a template needs.
pub fn message_text(i: usize, m: &Message) -> Result<(String, String), ApiError> {
    let role = match m.role.as_str() {
        "system" | "user" | "assistant" => m.role.clone(),
        "developer" => "system".to_string(),
        "tool" | "function" => return Err(ApiError::unsupported(&format!("messages[{i}].role = {}", m.role))),
        other => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!("`messages[{i}].role` is `{other}`; expected system, developer, user or assistant"),
            ));
        }
    };
    for (name, v) in [("name", &m.name), ("tool_calls", &m.tool_calls), ("tool_call_id", &m.tool_call_id)] {
        if v.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::unsupported(&format!("messages[{i}].{name}")));
        }
    }
    let content = match &m.content {
        None | Some(Value::Null) if role == "assistant" => String::new(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                format!("`messages[{i}].content` is required"),
            ));
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let param = format!("messages[{i}].content[{j}]");
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some("text"), None) => {
                        return Err(ApiError::invalid(
                            format!("{param}.text"),
                            format!("`{param}.text` must be a string"),
                        ));
                    }
                    (Some(other), _) => {
                        return Err(ApiError::invalid(
                            format!("{param}.type"),
                            format!("content parts of type `{other}` are not supported (only `text`)"),
                        ));
                    }
                    (None, _) => {
                        return Err(ApiError::invalid(format!("{param}.type"), format!("`{param}.type` is required")));
                    }
                }
            }
            text
        }
        Some(_) => {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                format!("`messages[{i}].content` must be a string or an array of text parts"),
            ));
        }
    };
    Ok((role, content))
}

/// `stop`: a string or up to four strings.
pub fn stop_strings(stop: &Option<Value>) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::invalid("stop", "`stop` must be a string or an array of up to 4 strings");
    match stop {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.len() <= 4 => {
            items.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(bad)).collect()
        }
        Some(_) => Err(bad()),
    }
}

/// A completions prompt: text, or token ids, one or many.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

pub fn prompts(v: &Value) -> Result<Vec<Prompt>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "`prompt` must be a string, an array of strings, an array of token ids or an array of such arrays",
        )
    };
    let tokens = |items: &[Value]| -> Result<Vec<u32>, ApiError> {
        items.iter().map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(bad)).collect()
    };
    let list = match v {
        Value::String(s) => vec![Prompt::Text(s.clone())],
        Value::Array(items) if items.is_empty() => return Err(bad()),
        Value::Array(items) if items.iter().all(Value::is_number) => vec![Prompt::Tokens(tokens(items)?)],
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(Prompt::Text(s.clone())),
                Value::Array(t) => Ok(Prompt::Tokens(tokens(t)?)),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    if list.len() > 16 {
        return Err(ApiError::invalid("prompt", "at most 16 prompts per request"));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let e = parse::<ChatRequest>(br#"{"model":"m","messages":[],"frobnicate":1}"#).expect_err("should fail");
        assert_eq!(e.param(), Some("frobnicate"));
        let e = parse::<ChatRequest>(br#"{"model":"m","messages":[{"role":"user","content":"x","colour":1}]}"#)
            .expect_err("should fail");
        assert_eq!(e.param(), Some("messages[0].colour"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse::<ChatRequest>(br#"{"model":"m","messages":[],"temperature":"hot"}"#).expect_err("should fail");
        assert_eq!(e.param(), Some("temperature"), "{e}");
        let e = parse::<ChatRequest>(br#"{"messages":[]}"#).expect_err("should fail");
        assert_eq!(e.param(), Some("model"), "{e}");
        let e = parse::<ChatRequest>(br#"{"model":"m","messages":[}"#).expect_err("should fail");
        assert!(matches!(e, ApiError::InvalidJson { .. }), "{e:?}");
    }

    #[test]
    fn prompts_in_every_shape() {
        let p = |s: &str| prompts(&serde_json::from_str(s).expect("should succeed"));
        assert_eq!(p(r#""hi""#).expect("should succeed"), vec![Prompt::Text("hi".into())]);
        assert_eq!(p("[1,2]").expect("should succeed"), vec![Prompt::Tokens(vec![1, 2])]);
        assert_eq!(p(r#"["a",[3]]"#).expect("should succeed"), vec![Prompt::Text("a".into()), Prompt::Tokens(vec![3])]);
        assert!(p("[-1]").is_err());
        assert!(p("[]").is_err());
        assert!(p("7").is_err());
    }

    #[test]
    fn message_content_parts() {
        let m: Message = serde_json::from_str(
            r#"{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}"#,
        )
        .expect("should succeed");
        assert_eq!(message_text(0, &m).expect("should succeed"), ("user".into(), "ab".into()));
        let m: Message = serde_json::from_str(r#"{"role":"user","content":[{"type":"image_url","image_url":{}}]}"#)
            .expect("should succeed");
        assert_eq!(message_text(2, &m).expect_err("should fail").param(), Some("messages[2].content[0].type"));
        let m: Message = serde_json::from_str(r#"{"role":"wizard","content":"x"}"#).expect("should succeed");
        assert_eq!(message_text(1, &m).expect_err("should fail").param(), Some("messages[1].role"));
    }
}
