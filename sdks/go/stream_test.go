package realm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// chunkJSON is a chat chunk carrying one piece of text.
func chunkJSON(i int, text string) string {
	return fmt.Sprintf(`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":%q},"logprobs":null,"finish_reason":null}]}`, text)
}

// sseServer serves a stream written by write, flushing after each piece, and counts requests.
func sseServer(t *testing.T, write func(w http.ResponseWriter, r *http.Request, send func(string))) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		flusher := w.(http.Flusher)
		flusher.Flush()
		write(w, r, func(s string) {
			_, _ = w.Write([]byte(s))
			flusher.Flush()
		})
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func testClient(srv *httptest.Server, opts ...Option) *Client {
	base := []Option{WithBaseURL(srv.URL), WithAPIKey("k"), WithBackoff(time.Millisecond, 5*time.Millisecond)}
	return New(append(base, opts...)...)
}

func chatReq() *ChatCompletionRequest {
	return &ChatCompletionRequest{Model: "m", Messages: []ChatMessage{UserMessage("hi")}}
}

// collect ranges over a stream, returning the text and the error that ended it.
func collect(s *Stream[ChatCompletionChunk]) (string, int, error) {
	var b strings.Builder
	n := 0
	for chunk, err := range s.All() {
		if err != nil {
			return b.String(), n, err
		}
		n++
		b.WriteString(chunk.Text())
	}
	return b.String(), n, nil
}

func TestStreamTokensKeepAlivesAndSplitFrames(t *testing.T) {
	srv, _ := sseServer(t, func(w http.ResponseWriter, r *http.Request, send func(string)) {
		if r.Header.Get("Accept") != "text/event-stream" {
			t.Errorf("Accept = %q", r.Header.Get("Accept"))
		}
		send(": keep-alive\n\n")
		send(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}` + "\n\n")
		frame := "data: " + chunkJSON(0, "Hel") + "\n\n"
		// One frame split over three writes, across its JSON and its blank line.
		send(frame[:10])
		time.Sleep(5 * time.Millisecond)
		send(frame[10 : len(frame)-1])
		time.Sleep(5 * time.Millisecond)
		send(frame[len(frame)-1:])
		send(": keep-alive\n\n")
		// Two frames in one write.
		send("data: " + chunkJSON(0, "lo") + "\n\n" + "data: " + chunkJSON(0, ", world") + "\r\n\r\n")
		send(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}` + "\n\n")
		send("data: [DONE]\n\n")
	})
	s, err := testClient(srv).ChatCompletionStream(context.Background(), chatReq())
	if err != nil {
		t.Fatal(err)
	}
	var roles, finish []string
	var text strings.Builder
	for chunk, err := range s.All() {
		if err != nil {
			t.Fatal(err)
		}
		c := chunk.Choices[0]
		if c.Delta.Role != "" {
			roles = append(roles, c.Delta.Role)
		}
		if c.FinishReason != "" {
			finish = append(finish, c.FinishReason)
		}
		text.WriteString(chunk.Text())
	}
	if text.String() != "Hello, world" || len(roles) != 1 || roles[0] != "assistant" || len(finish) != 1 || finish[0] != FinishStop {
		t.Fatalf("text %q roles %v finish %v", text.String(), roles, finish)
	}
	if s.Err() != nil {
		t.Fatalf("Err after [DONE] = %v", s.Err())
	}
}

func TestStreamErrorFrameMidStream(t *testing.T) {
	srv, _ := sseServer(t, func(w http.ResponseWriter, r *http.Request, send func(string)) {
		send("data: " + chunkJSON(0, "a") + "\n\n")
		send(`data: {"error":{"message":"internal error: engine stopped","type":"server_error","param":null,"code":null}}` + "\n\n")
	})
	s, err := testClient(srv).ChatCompletionStream(context.Background(), chatReq())
	if err != nil {
		t.Fatal(err)
	}
	text, n, err := collect(s)
	if text != "a" || n != 1 {
		t.Fatalf("got %q in %d chunks before the error", text, n)
	}
	apiErr := AsAPIError(err)
	if apiErr == nil || apiErr.Type != ErrorTypeServer || apiErr.Status != 0 || !strings.Contains(apiErr.Message, "engine stopped") {
		t.Fatalf("want a server_error *APIError, got %#v", err)
	}
	if !IsServerError(err) || IsRateLimited(err) {
		t.Fatalf("helpers misread %v", err)
	}
}

func TestStreamEndingBeforeDoneIsAnError(t *testing.T) {
	for name, tail := range map[string]string{
		"after a whole frame":   "",
		"inside a frame":        `data: {"id":"chatcmpl-1","cho`,
		"before the blank line": "data: " + chunkJSON(0, "b") + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			srv, hits := sseServer(t, func(w http.ResponseWriter, r *http.Request, send func(string)) {
				send("data: " + chunkJSON(0, "a") + "\n\n")
				send(tail)
			})
			s, err := testClient(srv).ChatCompletionStream(context.Background(), chatReq())
			if err != nil {
				t.Fatal(err)
			}
			text, _, err := collect(s)
			if text != "a" || !errors.Is(err, ErrStreamTruncated) {
				t.Fatalf("text %q err %v; want \"a\" then ErrStreamTruncated", text, err)
			}
			// A stream that had begun is never retried.
			if hits.Load() != 1 {
				t.Fatalf("%d requests; a begun stream must not be retried", hits.Load())
			}
		})
	}
}

func TestStreamBadChunkIsAnError(t *testing.T) {
	srv, _ := sseServer(t, func(w http.ResponseWriter, r *http.Request, send func(string)) {
		send("data: {not json}\n\n")
	})
	s, err := testClient(srv).ChatCompletionStream(context.Background(), chatReq())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := collect(s); err == nil || !strings.Contains(err.Error(), "decoding a stream chunk") {
		t.Fatalf("got %v", err)
	}
}

// endlessServer streams chunks until the client goes away, and reports when it noticed.
func endlessServer(t *testing.T) (*httptest.Server, chan struct{}) {
	gone := make(chan struct{}, 1)
	srv, _ := sseServer(t, func(w http.ResponseWriter, r *http.Request, send func(string)) {
		for {
			select {
			case <-r.Context().Done():
				gone <- struct{}{}
				return
			case <-time.After(2 * time.Millisecond):
				send("data: " + chunkJSON(0, "x") + "\n\n")
			}
		}
	})
	return srv, gone
}

func waitGone(t *testing.T, gone chan struct{}) {
	t.Helper()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the server never saw the connection close")
	}
}

func TestBreakingTheLoopClosesTheConnection(t *testing.T) {
	srv, gone := endlessServer(t)
	s, err := testClient(srv).ChatCompletionStream(context.Background(), chatReq())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, err := range s.All() {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 3 {
			break
		}
	}
	waitGone(t, gone)
	if s.Next() || s.Err() != nil {
		t.Fatalf("after the loop: Next true or Err %v", s.Err())
	}
}

func TestCancellingTheContextClosesTheConnection(t *testing.T) {
	srv, gone := endlessServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := testClient(srv).ChatCompletionStream(ctx, chatReq())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var last error
	for _, err := range s.All() {
		if err != nil {
			last = err
			break
		}
		if n++; n == 3 {
			cancel()
		}
	}
	if !errors.Is(last, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", last)
	}
	waitGone(t, gone)
}

func TestCloseFromAnotherGoroutineUnblocksNext(t *testing.T) {
	block := make(chan struct{})
	srv, _ := sseServer(t, func(w http.ResponseWriter, r *http.Request, send func(string)) {
		send("data: " + chunkJSON(0, "a") + "\n\n")
		select {
		case <-r.Context().Done():
		case <-block:
		}
	})
	defer close(block)
	s, err := testClient(srv).ChatCompletionStream(context.Background(), chatReq())
	if err != nil {
		t.Fatal(err)
	}
	if !s.Next() || s.Current().Text() != "a" {
		t.Fatalf("first chunk: %v", s.Err())
	}
	time.AfterFunc(20*time.Millisecond, func() { s.Close() })
	done := make(chan bool)
	go func() { done <- s.Next() }()
	select {
	case more := <-done:
		if more || s.Err() != nil {
			t.Fatalf("after Close: Next %v, Err %v; want false, nil", more, s.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Next")
	}
	if err := s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}

func TestStreamRetriedBeforeItBegins(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":{"message":"the model is still loading","type":"service_unavailable","param":null,"code":"model_loading"}}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("data: " + chunkJSON(0, "ok") + "\n\ndata: [DONE]\n\n"))
	}))
	defer srv.Close()
	s, err := testClient(srv).ChatCompletionStream(context.Background(), chatReq())
	if err != nil {
		t.Fatal(err)
	}
	if text, _, err := collect(s); text != "ok" || err != nil || hits.Load() != 2 {
		t.Fatalf("text %q err %v hits %d", text, err, hits.Load())
	}
}

func TestStreamErrorBeforeItBegins(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("WWW-Authenticate", "Bearer")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":{"message":"incorrect API key","type":"authentication_error","param":null,"code":"invalid_api_key"}}`))
	}))
	defer srv.Close()
	_, err := testClient(srv).ChatCompletionStream(context.Background(), chatReq())
	if !IsAuth(err) || AsAPIError(err).Code != CodeInvalidAPIKey {
		t.Fatalf("want an auth error, got %v", err)
	}
}

func TestStreamWrongContentType(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte("<html>proxy</html>"))
	}))
	defer srv.Close()
	_, err := testClient(srv).ChatCompletionStream(context.Background(), chatReq())
	if err == nil || !strings.Contains(err.Error(), "expected text/event-stream") {
		t.Fatalf("got %v", err)
	}
}

func TestTimeoutBoundsOnlyTheStartOfAStream(t *testing.T) {
	srv, _ := sseServer(t, func(w http.ResponseWriter, r *http.Request, send func(string)) {
		for range 5 {
			time.Sleep(30 * time.Millisecond)
			send("data: " + chunkJSON(0, "x") + "\n\n")
		}
		send("data: [DONE]\n\n")
	})
	s, err := testClient(srv, WithTimeout(50*time.Millisecond)).ChatCompletionStream(context.Background(), chatReq())
	if err != nil {
		t.Fatal(err)
	}
	if text, _, err := collect(s); text != "xxxxx" || err != nil {
		t.Fatalf("a stream outliving the timeout: text %q err %v", text, err)
	}

	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The server notices a closed connection once it has read the body.
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
	}))
	defer slow.Close()
	start := time.Now()
	_, err = testClient(slow, WithTimeout(50*time.Millisecond), WithRetries(0)).ChatCompletionStream(context.Background(), chatReq())
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Fatalf("want a timeout within a second, got %v after %v", err, time.Since(start))
	}
}

func TestCompletionStream(t *testing.T) {
	srv, _ := sseServer(t, func(w http.ResponseWriter, r *http.Request, send func(string)) {
		if r.URL.Path != "/v1/completions" {
			t.Errorf("path %s", r.URL.Path)
		}
		for _, piece := range []string{"Once", " upon", " a time"} {
			send(fmt.Sprintf(`data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"text":%q,"logprobs":null,"finish_reason":null}],"usage":null}`+"\n\n", piece))
		}
		send(`data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","system_fingerprint":"fp","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}` + "\n\n")
		send("data: [DONE]\n\n")
	})
	req := &CompletionRequest{Model: "m", Prompt: "Tell me", Sampling: Sampling{StreamOptions: &StreamOptions{IncludeUsage: true}}}
	s, err := testClient(srv).CompletionStream(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var text strings.Builder
	var usage *Usage
	for s.Next() {
		c := s.Current()
		text.WriteString(c.Text())
		if c.Usage != nil {
			usage = c.Usage
		}
	}
	if s.Err() != nil || text.String() != "Once upon a time" || usage == nil || usage.TotalTokens != 5 {
		t.Fatalf("text %q usage %+v err %v", text.String(), usage, s.Err())
	}
}
