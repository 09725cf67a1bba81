//! Chat templates: the Jinja template in `tokenizer.chat_template` rendered with minijinja the
//! way Hugging Face `transformers` renders it (`trim_blocks`, `lstrip_blocks`, loop controls,
//! `raise_exception`, Python string methods), or ChatML when the file has none.

use std::fmt;

use minijinja::{Environment, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// The metadata key holding the model's template.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// ChatML, used when a model has no template; most instruction-tuned models that lack one
/// were trained on it.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat_template";

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat template does not parse: {source}")]
    Syntax { source: minijinja::Error },
    /// The template called `raise_exception(message)`, usually to reject a conversation shape
    /// it does not support (roles out of order, a system message it cannot place).
    #[error("chat template rejected the conversation: {message}")]
    Raised { message: String },
    #[error("chat template failed to render: {source}")]
    Render { source: minijinja::Error },
    #[error("{CHAT_TEMPLATE_KEY} holds a {found}, expected a string")]
    WrongType { found: String },
}

/// One turn of a conversation, as templates see it (`message['role']`, `message.content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template with the special-token texts it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// Carries the message of `raise_exception` through minijinja's error as its source.
#[derive(Debug)]
struct RaisedException(String);

impl fmt::Display for RaisedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

impl ChatTemplate {
    /// The model's template, or ChatML if the file has none; `bos_token` and `eos_token` are
    /// the texts of the tokenizer's BOS and EOS tokens.
    pub fn from_gguf(f: &GgufFile, tok: &Tokenizer) -> Result<ChatTemplate, ChatError> {
        let source = match f.get(CHAT_TEMPLATE_KEY) {
            None => CHATML_TEMPLATE.to_string(),
            Some(v) => match v.as_str() {
                Some(s) => s.to_string(),
                None => return Err(ChatError::WrongType { found: v.value_type().to_string() }),
            },
        };
        let text = |id: Option<u32>| id.and_then(|id| tok.token_text(id)).unwrap_or_default().to_string();
        ChatTemplate::new(source, text(tok.bos_id()), text(tok.eos_id()))
    }

    /// ChatML with the given special-token texts.
    pub fn chatml(bos_token: impl Into<String>, eos_token: impl Into<String>) -> Result<ChatTemplate, ChatError> {
        ChatTemplate::new(CHATML_TEMPLATE, bos_token, eos_token)
    }

    /// Compiles `source`; a syntax error is reported here rather than at the first request.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate, ChatError> {
        let source = source.into();
        let mut env = Environment::new();
        // transformers renders with these; without them most templates emit stray newlines.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.clone()).map_err(|source| ChatError::Syntax { source })?;
        Ok(ChatTemplate { env, source, bos_token: bos_token.into(), eos_token: eos_token.into() })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, ChatError> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|source| ChatError::Render { source })?;
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        template.render(ctx).map_err(|err| match raised_message(&err) {
            Some(message) => ChatError::Raised { message },
            None => ChatError::Render { source: err },
        })
    }
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, "raise_exception was called")
        .with_source(RaisedException(message)))
}

fn raised_message(err: &minijinja::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return Some(raised.0.clone());
        }
        cause = e.source();
    }
    None
}

/// `strftime_now(format)`: the current UTC time. Supports `%Y %y %m %d %e %B %b %A %a %H %I
/// %M %S %p %j %%`; anything else is copied as is.
fn strftime_now(format: String) -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    format_time(secs, &format)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

fn format_time(unix_secs: u64, format: &str) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let month_idx = (month - 1).clamp(0, 11) as usize;
    let yday = before[month_idx] + day + i64::from(leap && month > 2);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[((days + 3).rem_euclid(7)) as usize];
    let month_name = MONTHS[month_idx];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        // 2024-02-29T13:05:09Z, a Thursday and the 60th day of the year.
        assert_eq!(format_time(1_709_211_909, "%Y-%m-%d %H:%M:%S %a %j"), "2024-02-29 13:05:09 Thu 060");
        assert_eq!(format_time(0, "%d %b %Y %A %I%p %%"), "01 Jan 1970 Thursday 12AM %");
        assert_eq!(format_time(951_782_400, "%B %e, %y"), "February 29, 00");
    }
}
