package realm

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const chatAnswer = `{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"m","system_fingerprint":"fp",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},` +
	`"logprobs":{"content":[{"token":"Paris","logprob":-0.5,"bytes":[80,97,114,105,115],"top_logprobs":[{"token":"Paris","logprob":-0.5,"bytes":[80,97,114,105,115]}]}]},` +
	`"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}`

func TestChatCompletionSendsTheRequestAndDecodesTheAnswer(t *testing.T) {
	var body map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/chat/completions" {
			t.Errorf("%s %s", r.Method, r.URL.Path)
		}
		for k, want := range map[string]string{
			"Authorization": "Bearer sk-test",
			"Content-Type":  "application/json",
			"Accept":        "application/json",
			"User-Agent":    "realm-go/" + Version,
			"X-Trace":       "t1",
		} {
			if got := r.Header.Get(k); got != want {
				t.Errorf("header %s = %q, want %q", k, got, want)
			}
		}
		raw, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Errorf("body %s: %v", raw, err)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(chatAnswer))
	}))
	defer srv.Close()
	c := New(WithBaseURL(srv.URL+"/"), WithAPIKey("sk-test"), WithHeader("X-Trace", "t1"))
	req := &ChatCompletionRequest{
		Model:       "default",
		Messages:    []ChatMessage{SystemMessage("Be brief."), UserMessage("Capital of France?")},
		Logprobs:    Ptr(true),
		TopLogprobs: Ptr(1),
		Sampling: Sampling{
			MaxTokens:   Ptr(8),
			Temperature: Ptr(0.0),
			Seed:        Ptr[int64](7),
			Stop:        []string{"\n"},
			LogitBias:   map[string]float64{"42": -100},
			IgnoreEOS:   Ptr(false),
		},
	}
	resp, err := c.ChatCompletion(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Text() != "Paris." || resp.Choices[0].FinishReason != FinishStop || resp.Usage.TotalTokens != 12 {
		t.Fatalf("decoded %+v", resp)
	}
	lp := resp.Choices[0].Logprobs.Content[0]
	if string(lp.Bytes) != "Paris" || string(lp.TopLogprobs[0].Bytes) != "Paris" || lp.Logprob != -0.5 {
		t.Fatalf("logprobs %+v", lp)
	}
	// Exactly the fields set, flat, with "stream": false and a zero temperature kept.
	want := map[string]any{
		"model": "default", "stream": false, "max_tokens": 8.0, "temperature": 0.0, "seed": 7.0,
		"stop": []any{"\n"}, "logit_bias": map[string]any{"42": -100.0}, "ignore_eos": false,
		"logprobs": true, "top_logprobs": 1.0,
		"messages": []any{
			map[string]any{"role": "system", "content": "Be brief."},
			map[string]any{"role": "user", "content": "Capital of France?"},
		},
	}
	gotJSON, _ := json.Marshal(body)
	wantJSON, _ := json.Marshal(want)
	if string(gotJSON) != string(wantJSON) {
		t.Fatalf("body\n got %s\nwant %s", gotJSON, wantJSON)
	}
}

func TestCompletionPromptShapes(t *testing.T) {
	var prompts []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Prompt json.RawMessage `json:"prompt"`
			Echo   *bool           `json:"echo"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		prompts = append(prompts, string(body.Prompt))
		_, _ = w.Write([]byte(`{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","system_fingerprint":"fp",` +
			`"choices":[{"index":0,"text":"hi","logprobs":{"tokens":["a","b"],"token_logprobs":[null,-1.5],"top_logprobs":[null,{"b":-1.5}],"text_offset":[0,1]},"finish_reason":"length"}],` +
			`"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}`))
	}))
	defer srv.Close()
	c := New(WithBaseURL(srv.URL))
	for _, p := range []any{"text", []string{"a", "b"}, []int{1, 2}, [][]int{{1}, {2, 3}}} {
		resp, err := c.Completion(context.Background(), &CompletionRequest{Model: "m", Prompt: p, Echo: Ptr(true), Logprobs: Ptr(1)})
		if err != nil {
			t.Fatal(err)
		}
		lp := resp.Choices[0].Logprobs
		if resp.Text() != "hi" || lp.TokenLogprobs[0] != nil || *lp.TokenLogprobs[1] != -1.5 || lp.TopLogprobs[1]["b"] != -1.5 || resp.Usage.TotalTokens != 3 {
			t.Fatalf("decoded %+v", resp)
		}
	}
	if strings.Join(prompts, " ") != `"text" ["a","b"] [1,2] [[1],[2,3]]` {
		t.Fatalf("prompts sent: %v", prompts)
	}
}

func TestErrorDecoding(t *testing.T) {
	cases := []struct {
		status  int
		header  map[string]string
		body    string
		check   func(error) bool
		typ     string
		code    string
		param   string
		message string
	}{
		{400, nil, `{"error":{"message":"unknown field ` + "`messages[0].colour`" + `","type":"invalid_request_error","param":"messages[0].colour","code":null}}`,
			IsBadRequest, ErrorTypeInvalidRequest, "", "messages[0].colour", "unknown field"},
		{400, nil, `{"error":{"message":"the prompt (9 tokens) plus max_tokens (9000)...","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}`,
			IsContextLengthExceeded, ErrorTypeInvalidRequest, CodeContextLengthExceeded, "messages", "plus max_tokens"},
		{401, map[string]string{"WWW-Authenticate": "Bearer"}, `{"error":{"message":"missing API key","type":"authentication_error","param":null,"code":"missing_api_key"}}`,
			IsAuth, ErrorTypeAuthentication, CodeMissingAPIKey, "", "missing API key"},
		{404, nil, `{"error":{"message":"the model ` + "`gpt-4`" + ` does not exist","type":"invalid_request_error","param":"model","code":"model_not_found"}}`,
			func(e error) bool { return IsNotFound(e) && IsModelNotFound(e) }, ErrorTypeInvalidRequest, CodeModelNotFound, "model", "does not exist"},
		{413, nil, `{"error":{"message":"too big","type":"invalid_request_error","param":null,"code":"request_too_large"}}`,
			IsTooLarge, ErrorTypeInvalidRequest, CodeRequestTooLarge, "", "too big"},
		{502, nil, "<html><body>Bad Gateway</body></html>\n",
			IsServerError, "", "", "", "<html><body>Bad Gateway</body></html>"},
	}
	for _, tc := range cases {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for k, v := range tc.header {
				w.Header().Set(k, v)
			}
			w.WriteHeader(tc.status)
			_, _ = w.Write([]byte(tc.body))
		}))
		_, err := New(WithBaseURL(srv.URL), WithRetries(0)).ChatCompletion(context.Background(), chatReq())
		srv.Close()
		e := AsAPIError(err)
		if e == nil {
			t.Fatalf("%d: not an *APIError: %v", tc.status, err)
		}
		if e.Status != tc.status || e.Type != tc.typ || e.Code != tc.code || e.Param != tc.param || !strings.Contains(e.Message, tc.message) {
			t.Fatalf("%d: decoded %#v", tc.status, e)
		}
		if !tc.check(err) {
			t.Fatalf("%d: helper says no for %v", tc.status, err)
		}
		// Wrapped errors are still recognised.
		if !tc.check(errors.Join(errors.New("ctx"), err)) {
			t.Fatalf("%d: helper misses the wrapped error", tc.status)
		}
		if !strings.HasPrefix(e.Error(), "realm: ") {
			t.Fatalf("message %q", e.Error())
		}
	}
}

func TestErrorHelpersSayNoToOtherErrors(t *testing.T) {
	for _, err := range []error{nil, errors.New("x"), &APIError{Status: 400}} {
		if IsRateLimited(err) || IsAuth(err) || IsNotFound(err) || IsOverloaded(err) || IsUnavailable(err) || IsServerError(err) {
			t.Fatalf("a helper said yes to %v", err)
		}
	}
	e := &APIError{Status: 429, Type: ErrorTypeRateLimit, Code: CodeOverloaded, Message: "full"}
	if !IsRateLimited(e) || !IsOverloaded(e) || IsBadRequest(e) {
		t.Fatal("overloaded 429 misread")
	}
	if got := e.Error(); got != "realm: 429 rate_limit_error (overloaded): full" {
		t.Fatalf("Error() = %q", got)
	}
}

func TestRetriesOn5xxAnd429ThenSucceeds(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch hits.Add(1) {
		case 1:
			w.WriteHeader(http.StatusBadGateway)
		case 2:
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(`{"error":{"message":"busy","type":"rate_limit_error","param":null,"code":"overloaded"}}`))
		default:
			_, _ = w.Write([]byte(chatAnswer))
		}
	}))
	defer srv.Close()
	resp, err := testClient(srv).ChatCompletion(context.Background(), chatReq())
	if err != nil || resp.Text() != "Paris." || hits.Load() != 3 {
		t.Fatalf("resp %v err %v hits %d", resp, err, hits.Load())
	}
}

func TestRetriesGiveUpWithTheLastError(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte(`{"error":{"message":"internal error: boom","type":"server_error","param":null,"code":null}}`))
	}))
	defer srv.Close()
	_, err := testClient(srv, WithRetries(3)).ChatCompletion(context.Background(), chatReq())
	if !IsServerError(err) || hits.Load() != 4 {
		t.Fatalf("err %v after %d tries; want a server error after 4", err, hits.Load())
	}
	hits.Store(0)
	_, err = testClient(srv, WithRetries(0)).ChatCompletion(context.Background(), chatReq())
	if !IsServerError(err) || hits.Load() != 1 {
		t.Fatalf("WithRetries(0): %d tries", hits.Load())
	}
}

func TestClientErrorsAreNotRetried(t *testing.T) {
	for _, status := range []int{400, 401, 404, 413, 501} {
		var hits atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			w.WriteHeader(status)
		}))
		_, err := testClient(srv).ChatCompletion(context.Background(), chatReq())
		srv.Close()
		if AsAPIError(err) == nil || AsAPIError(err).Status != status || hits.Load() != 1 {
			t.Fatalf("%d: err %v after %d tries", status, err, hits.Load())
		}
	}
}

func TestConnectionErrorsAreRetried(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			// Drop the connection without an answer.
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		_, _ = w.Write([]byte(chatAnswer))
	}))
	defer srv.Close()
	resp, err := testClient(srv).ChatCompletion(context.Background(), chatReq())
	if err != nil || resp.Text() != "Paris." || hits.Load() != 2 {
		t.Fatalf("err %v hits %d", err, hits.Load())
	}

	// Nothing listening: every try fails to connect, and the error says so.
	srv.Close()
	_, err = testClient(srv).ChatCompletion(context.Background(), chatReq())
	if err == nil || AsAPIError(err) != nil || !strings.Contains(err.Error(), "POST /v1/chat/completions") {
		t.Fatalf("got %v", err)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	var hits atomic.Int32
	var first time.Time
	var gap time.Duration
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			first = time.Now()
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(`{"error":{"message":"rate limit reached","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}`))
			return
		}
		gap = time.Since(first)
		_, _ = w.Write([]byte(chatAnswer))
	}))
	defer srv.Close()
	// The backoff alone would retry after a millisecond; Retry-After says one second.
	if _, err := testClient(srv).ChatCompletion(context.Background(), chatReq()); err != nil {
		t.Fatal(err)
	}
	if gap < 900*time.Millisecond {
		t.Fatalf("retried after %v despite Retry-After: 1", gap)
	}
}

func TestRetryAfterBeyondTheCapOrTheDeadlineIsNotWaitedFor(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":{"message":"the model is still loading","type":"service_unavailable","param":null,"code":"model_loading"}}`))
	}))
	defer srv.Close()
	start := time.Now()
	p := DefaultRetryPolicy
	p.MaxRetryAfter = 10 * time.Second
	_, err := testClient(srv, WithRetryPolicy(p)).ChatCompletion(context.Background(), chatReq())
	if !IsUnavailable(err) || AsAPIError(err).RetryAfter != 30*time.Second || AsAPIError(err).Code != CodeModelLoading || hits.Load() != 1 {
		t.Fatalf("err %v hits %d", err, hits.Load())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = testClient(srv).ChatCompletion(ctx, chatReq())
	if !IsUnavailable(err) || time.Since(start) > 2*time.Second {
		t.Fatalf("waited %v for a Retry-After past the deadline: %v", time.Since(start), err)
	}
}

func TestCancelDuringBackoff(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	c := New(WithBaseURL(srv.URL), WithBackoff(10*time.Second, 10*time.Second))
	start := time.Now()
	_, err := c.ChatCompletion(ctx, chatReq())
	if !errors.Is(err, context.Canceled) || !IsUnavailable(err) || time.Since(start) > 2*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
}

func TestTimeoutCoversTheWholeCall(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The server notices a closed connection once it has read the body.
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
	}))
	defer srv.Close()
	start := time.Now()
	_, err := testClient(srv, WithTimeout(50*time.Millisecond)).ChatCompletion(context.Background(), chatReq())
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"5":                             5 * time.Second,
		" 0 ":                           0,
		"Fri, 02 Jan 2026 03:04:15 GMT": 10 * time.Second,
		"Fri, 02 Jan 2026 03:00:00 GMT": 0,
		"99999999":                      24 * time.Hour,
	} {
		got, ok := parseRetryAfter(in, now)
		if !ok || got != want {
			t.Errorf("%q: %v %v, want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "soon", "-1", "1.5"} {
		if _, ok := parseRetryAfter(in, now); ok {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestBackoffGrowsWithJitterAndIsCapped(t *testing.T) {
	p := RetryPolicy{InitialBackoff: 100 * time.Millisecond, MaxBackoff: 400 * time.Millisecond}
	for attempt, full := range []time.Duration{100, 200, 400, 400, 400} {
		full *= time.Millisecond
		seen := map[time.Duration]bool{}
		for range 200 {
			d := p.backoff(attempt)
			if d < full/2 || d > full {
				t.Fatalf("attempt %d: %v outside [%v, %v]", attempt, d, full/2, full)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Fatalf("attempt %d: only %d distinct waits: no jitter", attempt, len(seen))
		}
	}
	if d := (RetryPolicy{}).backoff(3); d != 0 {
		t.Fatalf("zero policy waits %v", d)
	}
	// No cap given: it still grows, and a huge attempt number neither overflows nor exceeds
	// an hour.
	uncapped := RetryPolicy{InitialBackoff: time.Second}
	if d := uncapped.backoff(3); d < 4*time.Second || d > 8*time.Second {
		t.Fatalf("uncapped attempt 3 waits %v", d)
	}
	if d := uncapped.backoff(1000); d < 30*time.Minute || d > time.Hour {
		t.Fatalf("uncapped attempt 1000 waits %v", d)
	}
}

func TestModelsHealthReady(t *testing.T) {
	var ready atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			_, _ = w.Write([]byte("ok"))
		case "/ready":
			if !ready.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte("loading"))
				return
			}
			_, _ = w.Write([]byte("ready"))
		case "/v1/models":
			_, _ = w.Write([]byte(`{"object":"list","data":[{"id":"SmolLM2","object":"model","created":1,"owned_by":"realm","max_model_len":8192}]}`))
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer srv.Close()
	c := testClient(srv)
	ctx := context.Background()
	if err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	err := c.Ready(ctx)
	if !IsUnavailable(err) || AsAPIError(err).Message != "loading" {
		t.Fatalf("Ready while loading: %v", err)
	}
	time.AfterFunc(30*time.Millisecond, func() { ready.Store(true) })
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.WaitReady(wctx, 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	models, err := c.Models(ctx)
	if err != nil || len(models.Data) != 1 || models.Data[0].ID != "SmolLM2" || models.Data[0].MaxModelLen != 8192 {
		t.Fatalf("models %+v err %v", models, err)
	}
}

func TestNewReadsTheEnvironment(t *testing.T) {
	t.Setenv("REALM_BASE_URL", "http://example.invalid:9/")
	t.Setenv("REALM_API_KEY", "from-env")
	c := New()
	if c.BaseURL() != "http://example.invalid:9" || c.apiKey != "from-env" {
		t.Fatalf("base %q key %q", c.BaseURL(), c.apiKey)
	}
	c = New(WithBaseURL("http://other"), WithAPIKey(""))
	if c.BaseURL() != "http://other" || c.apiKey != "" {
		t.Fatal("options must win over the environment")
	}
}

func TestNilRequests(t *testing.T) {
	c := New(WithBaseURL("http://127.0.0.1:1"))
	ctx := context.Background()
	if _, err := c.ChatCompletion(ctx, nil); err == nil {
		t.Fatal("nil chat request accepted")
	}
	if _, err := c.ChatCompletionStream(ctx, nil); err == nil {
		t.Fatal("nil stream request accepted")
	}
	if _, err := c.Completion(ctx, nil); err == nil {
		t.Fatal("nil completion request accepted")
	}
	if _, err := c.CompletionStream(ctx, nil); err == nil {
		t.Fatal("nil completion stream request accepted")
	}
}

func TestBytesJSON(t *testing.T) {
	var b Bytes
	if err := json.Unmarshal([]byte("[104,105]"), &b); err != nil || string(b) != "hi" {
		t.Fatalf("%q %v", b, err)
	}
	if err := json.Unmarshal([]byte("[256]"), &b); err == nil {
		t.Fatal("256 accepted as a byte")
	}
	out, _ := json.Marshal(Bytes("hi"))
	if string(out) != "[104,105]" {
		t.Fatalf("marshal: %s", out)
	}
}
