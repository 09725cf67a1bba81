package realm

import (
	"encoding/json"
	"fmt"
)

// Chat roles the server accepts; RoleDeveloper is treated as RoleSystem.
const (
	RoleSystem    = "system"
	RoleDeveloper = "developer"
	RoleUser      = "user"
	RoleAssistant = "assistant"
)

// Finish reasons: FinishStop for an end-of-text token or a stop string, FinishLength for
// max_tokens or the server's wall-time budget.
const (
	FinishStop   = "stop"
	FinishLength = "length"
)

// Ptr returns a pointer to v, for the optional fields of a request:
// Temperature: realm.Ptr(0.0).
func Ptr[T any](v T) *T { return &v }

// ChatMessage is one message of a conversation.
type ChatMessage struct {
	// Role is RoleSystem, RoleDeveloper, RoleUser or RoleAssistant.
	Role string `json:"role"`
	// Content is the message's text.
	Content string `json:"content"`
}

// SystemMessage is a system message with the given text.
func SystemMessage(text string) ChatMessage { return ChatMessage{Role: RoleSystem, Content: text} }

// UserMessage is a user message with the given text.
func UserMessage(text string) ChatMessage { return ChatMessage{Role: RoleUser, Content: text} }

// AssistantMessage is an assistant message with the given text (an earlier answer).
func AssistantMessage(text string) ChatMessage {
	return ChatMessage{Role: RoleAssistant, Content: text}
}

// ResponseFormat is the chat "response_format"; the server accepts only {"type": "text"}.
type ResponseFormat struct {
	// Type is "text".
	Type string `json:"type"`
}

// StreamOptions are the options of a streamed request.
type StreamOptions struct {
	// IncludeUsage asks for a last chunk, with no choices, that carries the usage.
	IncludeUsage bool `json:"include_usage"`
}

// Sampling holds the sampling and stopping fields chat and completions share. A nil pointer
// leaves the server's default (docs/openai-compat.md gives each default and range).
type Sampling struct {
	// MaxTokens caps the generated tokens; by default the rest of the context, or the
	// server's --default-max-tokens.
	MaxTokens *int `json:"max_tokens,omitempty"`
	// Temperature in [0, 2], default 1; 0 is greedy.
	Temperature *float64 `json:"temperature,omitempty"`
	// TopP in (0, 1], default 1.
	TopP *float64 `json:"top_p,omitempty"`
	// TopK keeps the k likeliest tokens (vLLM extension); -1 or 0 is off.
	TopK *int `json:"top_k,omitempty"`
	// MinP in [0, 1] (vLLM extension), default 0.
	MinP *float64 `json:"min_p,omitempty"`
	// RepetitionPenalty > 0 (vLLM extension), default 1.
	RepetitionPenalty *float64 `json:"repetition_penalty,omitempty"`
	// PresencePenalty in [-2, 2].
	PresencePenalty *float64 `json:"presence_penalty,omitempty"`
	// FrequencyPenalty in [-2, 2].
	FrequencyPenalty *float64 `json:"frequency_penalty,omitempty"`
	// LogitBias maps a token id (as a decimal string) to a bias in [-100, 100].
	LogitBias map[string]float64 `json:"logit_bias,omitempty"`
	// Seed makes sampling repeatable: same seed, same request, same tokens; choice i of n
	// uses Seed+i.
	Seed *int64 `json:"seed,omitempty"`
	// Stop holds up to 4 stop strings; the matched text is not returned.
	Stop []string `json:"stop,omitempty"`
	// N is the number of choices, 1..8.
	N *int `json:"n,omitempty"`
	// User is the caller's own tag for the request; the server does not store it.
	User string `json:"user,omitempty"`
	// IgnoreEOS keeps generating past the end-of-text token (vLLM extension).
	IgnoreEOS *bool `json:"ignore_eos,omitempty"`
	// StreamOptions applies to streamed requests only.
	StreamOptions *StreamOptions `json:"stream_options,omitempty"`
}

// ChatCompletionRequest is the body of POST /v1/chat/completions. Whether it streams is
// chosen by the method called (ChatCompletion or ChatCompletionStream), not by a field.
type ChatCompletionRequest struct {
	// Model is the served model's id (Client.Models) or an alias given at start ("default").
	Model string `json:"model"`
	// Messages is the conversation so far, at least one message.
	Messages []ChatMessage `json:"messages"`
	// MaxCompletionTokens caps the generated tokens; it wins over MaxTokens.
	MaxCompletionTokens *int `json:"max_completion_tokens,omitempty"`
	// Logprobs asks for the log-probability of each generated token.
	Logprobs *bool `json:"logprobs,omitempty"`
	// TopLogprobs in [0, 20] asks for that many alternatives per token; needs Logprobs.
	TopLogprobs *int `json:"top_logprobs,omitempty"`
	// ResponseFormat may only be {"type": "text"}.
	ResponseFormat *ResponseFormat `json:"response_format,omitempty"`
	// Store may only be false: the server stores nothing.
	Store *bool `json:"store,omitempty"`
	// ServiceTier may be "auto" or "default".
	ServiceTier string `json:"service_tier,omitempty"`
	Sampling
}

// CompletionRequest is the body of POST /v1/completions. Whether it streams is chosen by the
// method called (Completion or CompletionStream).
type CompletionRequest struct {
	// Model is the served model's id or an alias ("default").
	Model string `json:"model"`
	// Prompt is a string, a []string, a []int of token ids, or a [][]int; up to 16 prompts.
	// Choice index = prompt × n + i.
	Prompt any `json:"prompt"`
	// Echo puts the prompt's text before each choice's text.
	Echo *bool `json:"echo,omitempty"`
	// Logprobs in [0, 20] asks for token log-probabilities with that many alternatives.
	Logprobs *int `json:"logprobs,omitempty"`
	// BestOf is accepted only equal to N.
	BestOf *int `json:"best_of,omitempty"`
	Sampling
}

// Usage counts a request's tokens.
type Usage struct {
	// PromptTokens counts each prompt once however many choices it has.
	PromptTokens int `json:"prompt_tokens"`
	// CompletionTokens counts the generated tokens of every choice.
	CompletionTokens int `json:"completion_tokens"`
	// TotalTokens is their sum.
	TotalTokens int `json:"total_tokens"`
}

// Bytes is a token's UTF-8 bytes, sent by the server as an array of numbers (OpenAI's shape)
// rather than Go's default base64.
type Bytes []byte

// UnmarshalJSON reads an array of numbers in [0, 255], or null.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	var nums []int
	if err := json.Unmarshal(data, &nums); err != nil {
		return err
	}
	if nums == nil {
		*b = nil
		return nil
	}
	out := make([]byte, len(nums))
	for i, n := range nums {
		if n < 0 || n > 255 {
			return fmt.Errorf("realm: byte %d of a token is %d, outside 0..255", i, n)
		}
		out[i] = byte(n)
	}
	*b = out
	return nil
}

// MarshalJSON writes the bytes as an array of numbers.
func (b Bytes) MarshalJSON() ([]byte, error) {
	if b == nil {
		return []byte("null"), nil
	}
	nums := make([]int, len(b))
	for i, x := range b {
		nums[i] = int(x)
	}
	return json.Marshal(nums)
}

// TopLogprob is one alternative for a token.
type TopLogprob struct {
	// Token is the alternative's text (lossy where it holds part of a UTF-8 sequence).
	Token string `json:"token"`
	// Logprob is its log-probability, the model's log-softmax before sampling settings.
	Logprob float64 `json:"logprob"`
	// Bytes is its exact bytes.
	Bytes Bytes `json:"bytes"`
}

// TokenLogprob is a generated token's log-probability and its alternatives.
type TokenLogprob struct {
	// Token is the token's text.
	Token string `json:"token"`
	// Logprob is its log-probability.
	Logprob float64 `json:"logprob"`
	// Bytes is its exact bytes.
	Bytes Bytes `json:"bytes"`
	// TopLogprobs are the likeliest alternatives, as many as TopLogprobs asked for.
	TopLogprobs []TopLogprob `json:"top_logprobs"`
}

// ChatLogprobs are a chat choice's token log-probabilities.
type ChatLogprobs struct {
	// Content has one entry per generated token.
	Content []TokenLogprob `json:"content"`
}

// ChatChoice is one answer of a chat completion.
type ChatChoice struct {
	// Index is the choice's number, 0..n-1.
	Index int `json:"index"`
	// Message is the assistant's answer.
	Message ChatMessage `json:"message"`
	// Logprobs is set when the request asked for them.
	Logprobs *ChatLogprobs `json:"logprobs"`
	// FinishReason is FinishStop or FinishLength.
	FinishReason string `json:"finish_reason"`
}

// ChatCompletion is the answer to a non-streamed chat request.
type ChatCompletion struct {
	// ID is the completion's id ("chatcmpl-…").
	ID string `json:"id"`
	// Object is "chat.completion".
	Object string `json:"object"`
	// Created is the Unix time in seconds.
	Created int64 `json:"created"`
	// Model is the served model's id.
	Model string `json:"model"`
	// SystemFingerprint identifies the server build and model.
	SystemFingerprint string `json:"system_fingerprint"`
	// Choices holds one answer per choice.
	Choices []ChatChoice `json:"choices"`
	// Usage counts the tokens.
	Usage Usage `json:"usage"`
}

// Text is the first choice's content, or "" when there is none.
func (c ChatCompletion) Text() string {
	if len(c.Choices) == 0 {
		return ""
	}
	return c.Choices[0].Message.Content
}

// ChatDelta is what one chunk adds to a choice.
type ChatDelta struct {
	// Role is set on each choice's first chunk ("assistant").
	Role string `json:"role,omitempty"`
	// Content is the new text, possibly empty.
	Content string `json:"content,omitempty"`
}

// ChatChunkChoice is one choice's part of a stream chunk.
type ChatChunkChoice struct {
	// Index is the choice's number.
	Index int `json:"index"`
	// Delta is the new text.
	Delta ChatDelta `json:"delta"`
	// Logprobs covers the tokens of this chunk when the request asked for them.
	Logprobs *ChatLogprobs `json:"logprobs"`
	// FinishReason is set on the choice's last chunk, empty before.
	FinishReason string `json:"finish_reason"`
}

// ChatCompletionChunk is one event of a streamed chat completion.
type ChatCompletionChunk struct {
	// ID is the same for every chunk of a stream.
	ID string `json:"id"`
	// Object is "chat.completion.chunk".
	Object string `json:"object"`
	// Created is the Unix time in seconds.
	Created int64 `json:"created"`
	// Model is the served model's id.
	Model string `json:"model"`
	// SystemFingerprint identifies the server build and model.
	SystemFingerprint string `json:"system_fingerprint"`
	// Choices holds the choices this chunk advances; none on the usage chunk.
	Choices []ChatChunkChoice `json:"choices"`
	// Usage is set on the last chunk when StreamOptions.IncludeUsage was asked, nil otherwise.
	Usage *Usage `json:"usage"`
}

// Text is the first choice's new content in this chunk, or "".
func (c ChatCompletionChunk) Text() string {
	if len(c.Choices) == 0 {
		return ""
	}
	return c.Choices[0].Delta.Content
}

// CompletionLogprobs are the legacy completions log-probabilities: parallel arrays, one entry
// per token.
type CompletionLogprobs struct {
	// Tokens are the tokens' texts.
	Tokens []string `json:"tokens"`
	// TokenLogprobs are their log-probabilities; nil for the first echoed prompt token.
	TokenLogprobs []*float64 `json:"token_logprobs"`
	// TopLogprobs maps each alternative's text to its log-probability; nil where absent.
	TopLogprobs []map[string]float64 `json:"top_logprobs"`
	// TextOffset is each token's byte offset in the choice's text.
	TextOffset []int `json:"text_offset"`
}

// CompletionChoice is one answer of a completion, or its part in a stream chunk.
type CompletionChoice struct {
	// Index is prompt × n + i.
	Index int `json:"index"`
	// Text is the generated text (after the prompt when Echo was asked); in a stream, the new
	// text of this chunk.
	Text string `json:"text"`
	// Logprobs is set when the request asked for them.
	Logprobs *CompletionLogprobs `json:"logprobs"`
	// FinishReason is FinishStop or FinishLength; in a stream, set on the last chunk only.
	FinishReason string `json:"finish_reason"`
}

// Completion is the answer to a completions request, or one chunk of its stream.
type Completion struct {
	// ID is the completion's id ("cmpl-…").
	ID string `json:"id"`
	// Object is "text_completion".
	Object string `json:"object"`
	// Created is the Unix time in seconds.
	Created int64 `json:"created"`
	// Model is the served model's id.
	Model string `json:"model"`
	// SystemFingerprint identifies the server build and model.
	SystemFingerprint string `json:"system_fingerprint"`
	// Choices holds one entry per choice; none on a stream's usage chunk.
	Choices []CompletionChoice `json:"choices"`
	// Usage counts the tokens; in a stream, only on the last chunk and only when
	// StreamOptions.IncludeUsage was asked.
	Usage *Usage `json:"usage"`
}

// Text is the first choice's text, or "".
func (c Completion) Text() string {
	if len(c.Choices) == 0 {
		return ""
	}
	return c.Choices[0].Text
}

// Model describes the served model.
type Model struct {
	// ID names the model in requests.
	ID string `json:"id"`
	// Object is "model".
	Object string `json:"object"`
	// Created is the Unix time in seconds.
	Created int64 `json:"created"`
	// OwnedBy is "realm".
	OwnedBy string `json:"owned_by"`
	// MaxModelLen is the context length in tokens, as vLLM reports it.
	MaxModelLen int `json:"max_model_len"`
}

// ModelList is the answer of GET /v1/models.
type ModelList struct {
	// Object is "list".
	Object string `json:"object"`
	// Data holds the served model.
	Data []Model `json:"data"`
}
