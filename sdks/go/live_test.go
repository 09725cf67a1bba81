package realm_test

// Integration tests against a live `realm serve` on a real model. They start the server from
// $REALM_BIN (the Rust suite's tests/go_sdk.rs passes its own build) with $REALM_TEST_MODEL
// (default: "default", which the server fetches into its cache), and are skipped when
// REALM_BIN is unset so that a plain `go test` needs nothing but Go.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	realm "github.com/realm-run/realm/sdks/go"
)

const liveKey = "sk-realm-go-test"

// question is answered with a clear margin at every token up to "Paris" in both precisions
// (the more usual "What is ...?" starts at a near-tie in fast precision).
const question = "Name the capital of France."

// liveServer is one `realm serve` shared by the tests of this file.
type liveServer struct {
	cmd   *exec.Cmd
	base  string
	model string
	// batchDir is where events may name local files (--batch-local-root).
	batchDir string
	mu       sync.Mutex
	log      bytes.Buffer
	done     chan struct{}
}

var (
	live     *liveServer
	liveErr  error
	liveOnce sync.Once
)

func TestMain(m *testing.M) {
	code := m.Run()
	if live != nil {
		live.stop()
	}
	os.Exit(code)
}

// server starts the shared server on first use, or skips the test when REALM_BIN is unset.
func server(t *testing.T) *liveServer {
	t.Helper()
	bin := os.Getenv("REALM_BIN")
	if bin == "" {
		t.Skip("REALM_BIN is unset: no realm binary to test against")
	}
	liveOnce.Do(func() { live, liveErr = startServer(bin) })
	if liveErr != nil {
		t.Fatal(liveErr)
	}
	return live
}

func startServer(bin string) (*liveServer, error) {
	model := os.Getenv("REALM_TEST_MODEL")
	if model == "" {
		model = "default"
	}
	batchDir, err := os.MkdirTemp("", "realm-go-batch")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
		"--api-keys", liveKey, "--threads", "2", "--batch-local-root", batchDir)
	cmd.Env = append(os.Environ(), "REALM_LOG=info")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	s := &liveServer{cmd: cmd, done: make(chan struct{}), batchDir: batchDir}
	addr := make(chan string, 1)
	go func() {
		defer close(s.done)
		lines := bufio.NewScanner(stderr)
		lines.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for lines.Scan() {
			s.mu.Lock()
			s.log.Write(lines.Bytes())
			s.log.WriteByte('\n')
			s.mu.Unlock()
			// The server logs JSON lines on a non-terminal stderr; the "listening" one names
			// the port it bound.
			var rec struct {
				Fields struct {
					Message string `json:"message"`
					Addr    string `json:"addr"`
				} `json:"fields"`
			}
			if json.Unmarshal(lines.Bytes(), &rec) == nil && rec.Fields.Message == "listening" {
				select {
				case addr <- rec.Fields.Addr:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	select {
	case a := <-addr:
		s.base = "http://" + a
	case <-s.done:
		s.stop()
		return nil, fmt.Errorf("realm serve exited before listening:\n%s", s.logText())
	case <-time.After(60 * time.Second):
		s.stop()
		return nil, fmt.Errorf("realm serve did not listen within 60 s:\n%s", s.logText())
	}
	c := s.client()
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, 50*time.Millisecond); err != nil {
		s.stop()
		return nil, fmt.Errorf("realm serve never became ready: %v\n%s", err, s.logText())
	}
	models, err := c.Models(ctx)
	if err != nil || len(models.Data) == 0 {
		s.stop()
		return nil, fmt.Errorf("GET /v1/models: %v %+v", err, models)
	}
	s.model = models.Data[0].ID
	return s, nil
}

func (s *liveServer) logText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// stop sends SIGTERM (the server drains and exits), then kills it if it lingers.
func (s *liveServer) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-exited
	}
}

func (s *liveServer) client(opts ...realm.Option) *realm.Client {
	return realm.New(append([]realm.Option{realm.WithBaseURL(s.base), realm.WithAPIKey(liveKey)}, opts...)...)
}

// metric reads one sample of /metrics, 0 when absent.
func (s *liveServer) metric(t *testing.T, sample string) float64 {
	t.Helper()
	resp, err := http.Get(s.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return f
		}
	}
	return 0
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func greedyChat(model string, maxTokens int) *realm.ChatCompletionRequest {
	return &realm.ChatCompletionRequest{
		Model:    model,
		Messages: []realm.ChatMessage{realm.UserMessage(question)},
		Sampling: realm.Sampling{MaxTokens: realm.Ptr(maxTokens), Temperature: realm.Ptr(0.0)},
	}
}

func TestLiveProbesAndModels(t *testing.T) {
	s := server(t)
	c := s.client()
	ctx := ctxFor(t)
	if err := c.Health(ctx); err != nil {
		t.Fatal("health:", err)
	}
	if err := c.Ready(ctx); err != nil {
		t.Fatal("ready:", err)
	}
	models, err := c.Models(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := models.Data[0]
	if models.Object != "list" || m.Object != "model" || m.OwnedBy != "realm" || m.MaxModelLen <= 0 {
		t.Fatalf("models %+v", models)
	}
}

func TestLiveChat(t *testing.T) {
	s := server(t)
	resp, err := s.client().ChatCompletion(ctxFor(t), greedyChat(s.model, 16))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(resp.Text(), "Paris") {
		t.Fatalf("answer %q does not name Paris", resp.Text())
	}
	if !strings.HasPrefix(resp.ID, "chatcmpl-") || resp.Model != s.model || resp.Choices[0].Message.Role != realm.RoleAssistant ||
		resp.Usage.CompletionTokens == 0 || resp.Usage.TotalTokens != resp.Usage.PromptTokens+resp.Usage.CompletionTokens {
		t.Fatalf("response %+v", resp)
	}
}

// A greedy stream arrives token by token and says what the whole answer says.
func TestLiveStreamTokenByToken(t *testing.T) {
	s := server(t)
	c := s.client()
	ctx := ctxFor(t)
	whole, err := c.ChatCompletion(ctx, greedyChat(s.model, 24))
	if err != nil {
		t.Fatal(err)
	}
	req := greedyChat(s.model, 24)
	req.StreamOptions = &realm.StreamOptions{IncludeUsage: true}
	stream, err := c.ChatCompletionStream(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var text strings.Builder
	var pieces int
	var finish string
	var usage *realm.Usage
	var arrivals []time.Time
	for chunk, err := range stream.All() {
		if err != nil {
			t.Fatal(err)
		}
		if chunk.Usage != nil {
			usage = chunk.Usage
		}
		for _, ch := range chunk.Choices {
			if ch.Delta.Content != "" {
				pieces++
				arrivals = append(arrivals, time.Now())
				text.WriteString(ch.Delta.Content)
			}
			if ch.FinishReason != "" {
				finish = ch.FinishReason
			}
		}
	}
	if pieces < 3 {
		t.Fatalf("%d content chunks: the answer did not arrive token by token", pieces)
	}
	if text.String() != whole.Text() {
		t.Fatalf("streamed %q, whole answer %q", text.String(), whole.Text())
	}
	if finish != whole.Choices[0].FinishReason || usage == nil || usage.CompletionTokens != whole.Usage.CompletionTokens {
		t.Fatalf("finish %q usage %+v; whole: %q %+v", finish, usage, whole.Choices[0].FinishReason, whole.Usage)
	}
	if !arrivals[len(arrivals)-1].After(arrivals[0]) {
		t.Fatal("every chunk arrived at once")
	}
}

func TestLiveCompletions(t *testing.T) {
	s := server(t)
	c := s.client()
	ctx := ctxFor(t)
	req := &realm.CompletionRequest{
		Model:    s.model,
		Prompt:   "The capital of France is",
		Sampling: realm.Sampling{MaxTokens: realm.Ptr(8), Temperature: realm.Ptr(0.0)},
	}
	whole, err := c.Completion(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := c.CompletionStream(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	for chunk, err := range stream.All() {
		if err != nil {
			t.Fatal(err)
		}
		text.WriteString(chunk.Text())
	}
	if whole.Text() == "" || text.String() != whole.Text() {
		t.Fatalf("streamed %q, whole %q", text.String(), whole.Text())
	}
}

// Cancelling the context mid-stream closes the connection, and the server counts the request
// as cancelled and frees its slot.
func TestLiveCancelledStream(t *testing.T) {
	s := server(t)
	const cancelled = `realm_request_finished_total{finished_reason="cancelled"}`
	before := s.metric(t, cancelled)
	ctx, cancel := context.WithCancel(ctxFor(t))
	defer cancel()
	req := &realm.ChatCompletionRequest{
		Model:    s.model,
		Messages: []realm.ChatMessage{realm.UserMessage("Count to a thousand.")},
		Sampling: realm.Sampling{MaxTokens: realm.Ptr(4000), Temperature: realm.Ptr(0.0), IgnoreEOS: realm.Ptr(true)},
	}
	stream, err := s.client().ChatCompletionStream(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	chunks := 0
	var end error
	for _, err := range stream.All() {
		if err != nil {
			end = err
			break
		}
		if chunks++; chunks == 4 {
			cancel()
		}
	}
	if !errors.Is(end, context.Canceled) {
		t.Fatalf("the stream ended with %v, want context.Canceled", end)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && s.metric(t, cancelled) <= before {
		time.Sleep(50 * time.Millisecond)
	}
	if got := s.metric(t, cancelled); got != before+1 {
		t.Fatalf("%s went from %v to %v, want +1", cancelled, before, got)
	}
	for time.Now().Before(deadline) && s.metric(t, "realm_num_requests_running") != 0 {
		time.Sleep(50 * time.Millisecond)
	}
	if running := s.metric(t, "realm_num_requests_running"); running != 0 {
		t.Fatalf("%v requests still running after the cancel", running)
	}
}

func TestLiveAuthErrors(t *testing.T) {
	s := server(t)
	ctx := ctxFor(t)
	wrong := s.client(realm.WithAPIKey("sk-wrong"))
	_, err := wrong.ChatCompletion(ctx, greedyChat(s.model, 4))
	if !realm.IsAuth(err) || realm.AsAPIError(err).Code != realm.CodeInvalidAPIKey || realm.AsAPIError(err).Status != http.StatusUnauthorized {
		t.Fatalf("wrong key: %v", err)
	}
	_, err = wrong.ChatCompletionStream(ctx, greedyChat(s.model, 4))
	if !realm.IsAuth(err) {
		t.Fatalf("wrong key, streamed: %v", err)
	}
	_, err = s.client(realm.WithAPIKey("")).Models(ctx)
	if !realm.IsAuth(err) || realm.AsAPIError(err).Code != realm.CodeMissingAPIKey {
		t.Fatalf("no key: %v", err)
	}
}

func TestLiveRequestErrors(t *testing.T) {
	s := server(t)
	c := s.client()
	ctx := ctxFor(t)
	_, err := c.ChatCompletion(ctx, greedyChat("no-such-model", 4))
	if !realm.IsNotFound(err) || !realm.IsModelNotFound(err) || realm.AsAPIError(err).Param != "model" {
		t.Fatalf("unknown model: %v", err)
	}
	req := greedyChat(s.model, 4)
	req.Temperature = realm.Ptr(3.0)
	_, err = c.ChatCompletion(ctx, req)
	if !realm.IsBadRequest(err) || realm.AsAPIError(err).Param != "temperature" {
		t.Fatalf("temperature 3: %v", err)
	}
	req = greedyChat(s.model, 1<<20)
	_, err = c.ChatCompletion(ctx, req)
	if !realm.IsBadRequest(err) {
		t.Fatalf("max_tokens past the context: %v", err)
	}
}

// A batch submitted as a CloudEvent runs to completion and its status reads back.
func TestLiveBatch(t *testing.T) {
	s := server(t)
	c := s.client()
	ctx := ctxFor(t)
	dir, err := os.MkdirTemp(s.batchDir, "job")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for i := 0; i < 3; i++ {
		lines = append(lines, fmt.Sprintf(`{"custom_id":"c%d","method":"POST","url":"/v1/completions","body":{"model":%q,"prompt":"Count to %d:","max_tokens":4,"temperature":0}}`, i, s.model, i))
	}
	lines = append(lines, "not json")
	if err := os.WriteFile(dir+"/in.jsonl", []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sub, err := c.SubmitBatch(ctx, &realm.BatchRequest{Input: "file://" + dir + "/in.jsonl", Output: "file://" + dir + "/out/"})
	if err != nil {
		t.Fatal(err)
	}
	if sub.Batch == nil || sub.Batch.ID == "" {
		t.Fatalf("submission %+v carries no batch", sub)
	}
	b, err := c.WaitBatch(ctx, sub.Batch.ID, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if b.Status != realm.BatchCompleted || b.RequestCounts.Total != 4 || b.RequestCounts.Completed != 3 || b.RequestCounts.Failed != 1 {
		t.Fatalf("batch %+v", b)
	}
	out, err := os.ReadFile(dir + "/out/output.jsonl")
	if err != nil || strings.Count(string(out), "\n") != 3 {
		t.Fatalf("output.jsonl: %v %q", err, out)
	}
	if _, err := c.Batch(ctx, "batch_missing"); !realm.IsNotFound(err) {
		t.Fatalf("a missing batch: %v", err)
	}
}
