package realm

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Error types the server sends in the "type" field of an error body (docs/openai-compat.md).
const (
	ErrorTypeInvalidRequest     = "invalid_request_error"
	ErrorTypeAuthentication     = "authentication_error"
	ErrorTypeRateLimit          = "rate_limit_error"
	ErrorTypeServiceUnavailable = "service_unavailable"
	ErrorTypeServer             = "server_error"
)

// Error codes the server sends in the "code" field of an error body (docs/openai-compat.md).
const (
	CodeInvalidJSON           = "invalid_json"
	CodeContextLengthExceeded = "context_length_exceeded"
	CodeRequestTooLarge       = "request_too_large"
	CodeMissingAPIKey         = "missing_api_key"
	CodeInvalidAPIKey         = "invalid_api_key"
	CodeModelNotFound         = "model_not_found"
	CodeRateLimitExceeded     = "rate_limit_exceeded"
	CodeOverloaded            = "overloaded"
	CodeModelLoading          = "model_loading"
	CodeShuttingDown          = "shutting_down"
)

// maxErrorBody bounds how much of an error response is read: enough for any error the server
// sends, and a proxy's HTML error page is cut rather than held whole.
const maxErrorBody = 64 << 10

// APIError is an error answered by the server, either as an HTTP error response or as an error
// frame inside a stream that had already started. Its fields are those of OpenAI's error body.
type APIError struct {
	// Status is the HTTP status code; 0 for an error frame that arrived mid-stream (the
	// stream's own status was 200).
	Status int
	// Type is the error's "type": one of the ErrorType constants, or empty when the body was
	// not an OpenAI error (a proxy's error page, say).
	Type string
	// Code is the error's "code" (one of the Code constants), empty when null.
	Code string
	// Param names the request field at fault, with its path (e.g. "messages[0].content"),
	// empty when null.
	Param string
	// Message is the server's explanation, or the start of the body when it was not JSON.
	Message string
	// RetryAfter is the server's Retry-After, zero when it sent none.
	RetryAfter time.Duration
}

// Error formats the error as "realm: STATUS TYPE (CODE, param PARAM): MESSAGE", leaving out
// what is empty.
func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("realm: ")
	if e.Status != 0 {
		fmt.Fprintf(&b, "%d ", e.Status)
	} else {
		b.WriteString("stream error ")
	}
	if e.Type != "" {
		b.WriteString(e.Type)
	} else if e.Status != 0 {
		b.WriteString(http.StatusText(e.Status))
	}
	var notes []string
	if e.Code != "" {
		notes = append(notes, e.Code)
	}
	if e.Param != "" {
		notes = append(notes, "param "+e.Param)
	}
	if len(notes) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(notes, ", "))
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

// errorBody is OpenAI's error envelope.
type errorBody struct {
	Error *errorDetail `json:"error"`
}

type errorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func (d *errorDetail) apiError(status int) *APIError {
	e := &APIError{Status: status, Type: d.Type, Message: d.Message}
	if d.Param != nil {
		e.Param = *d.Param
	}
	if d.Code != nil {
		e.Code = *d.Code
	}
	return e
}

// decodeError builds the error for a non-2xx response from its status, headers and (at most
// maxErrorBody of) its body.
func decodeError(status int, header http.Header, body []byte) *APIError {
	var env errorBody
	var e *APIError
	var plain struct {
		Message string `json:"message"`
	}
	switch {
	case json.Unmarshal(body, &env) == nil && env.Error != nil:
		e = env.Error.apiError(status)
	case json.Unmarshal(body, &plain) == nil && plain.Message != "":
		// JSON, not OpenAI's shape, but with a message (the answer to an event, say).
		e = &APIError{Status: status, Message: plain.Message}
	default:
		e = &APIError{Status: status, Message: bodySnippet(body)}
	}
	e.RetryAfter, _ = parseRetryAfter(header.Get("Retry-After"), time.Now())
	return e
}

// bodySnippet is a non-JSON error body made fit for an error message: trimmed, cut at 512
// bytes on a rune boundary.
func bodySnippet(body []byte) string {
	s := strings.TrimSpace(string(body))
	const max = 512
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
// The boolean is false when the header is absent or unreadable.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		// Past a day the header is nonsense; cap rather than overflow.
		if secs > 86400 {
			secs = 86400
		}
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}

// AsAPIError returns the *APIError in err's chain, or nil.
func AsAPIError(err error) *APIError {
	var e *APIError
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// IsRateLimited reports whether err is a 429 from the server: a per-key rate limit
// (CodeRateLimitExceeded) or a full queue (CodeOverloaded).
func IsRateLimited(err error) bool {
	e := AsAPIError(err)
	return e != nil && (e.Status == http.StatusTooManyRequests || e.Type == ErrorTypeRateLimit)
}

// IsOverloaded reports whether err says the server's queue is full (429 CodeOverloaded):
// another replica, or the same one a little later, may take the request.
func IsOverloaded(err error) bool {
	e := AsAPIError(err)
	return e != nil && e.Code == CodeOverloaded
}

// IsUnavailable reports whether err is a 503: the model is still loading (CodeModelLoading),
// failed to load, or the server is draining (CodeShuttingDown).
func IsUnavailable(err error) bool {
	e := AsAPIError(err)
	return e != nil && (e.Status == http.StatusServiceUnavailable || e.Type == ErrorTypeServiceUnavailable)
}

// IsAuth reports whether err is a 401: an API key was needed and none or a wrong one was sent.
func IsAuth(err error) bool {
	e := AsAPIError(err)
	return e != nil && (e.Status == http.StatusUnauthorized || e.Type == ErrorTypeAuthentication)
}

// IsNotFound reports whether err is a 404: an unknown model or route.
func IsNotFound(err error) bool {
	e := AsAPIError(err)
	return e != nil && e.Status == http.StatusNotFound
}

// IsModelNotFound reports whether err names a model the server does not serve.
func IsModelNotFound(err error) bool {
	e := AsAPIError(err)
	return e != nil && e.Code == CodeModelNotFound
}

// IsBadRequest reports whether err is a 400: malformed JSON, or an unknown, refused or
// out-of-range field (APIError.Param names it), or a prompt past the context.
func IsBadRequest(err error) bool {
	e := AsAPIError(err)
	return e != nil && e.Status == http.StatusBadRequest
}

// IsContextLengthExceeded reports whether err says the prompt plus max_tokens does not fit the
// model's context.
func IsContextLengthExceeded(err error) bool {
	e := AsAPIError(err)
	return e != nil && e.Code == CodeContextLengthExceeded
}

// IsTooLarge reports whether err is a 413: the request body exceeded the server's limit.
func IsTooLarge(err error) bool {
	e := AsAPIError(err)
	return e != nil && e.Status == http.StatusRequestEntityTooLarge
}

// IsServerError reports whether err is a failure inside the server: a 5xx other than 503, or
// a server_error frame mid-stream.
func IsServerError(err error) bool {
	e := AsAPIError(err)
	return e != nil && ((e.Status >= 500 && e.Status != http.StatusServiceUnavailable) || e.Type == ErrorTypeServer)
}
