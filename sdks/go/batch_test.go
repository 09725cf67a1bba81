package realm

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync/atomic"
	"testing"
	"time"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// The event goes out in CloudEvents binary content mode: attributes as ce-* headers, the
// data as the body, its media type as Content-Type; a retry resends the same event id.
func TestSubmitBatchSendsABinaryModeCloudEvent(t *testing.T) {
	var hits atomic.Int32
	var ids []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/events" {
			t.Errorf("%s %s", r.Method, r.URL.Path)
		}
		ids = append(ids, r.Header.Get("ce-id"))
		for k, want := range map[string]string{
			"ce-specversion": "1.0",
			"ce-type":        "dev.realm.batch.v1.requested",
			"ce-source":      "/billing/nightly",
			"ce-subject":     "invoices",
			"Content-Type":   "application/json",
			"Authorization":  "Bearer k",
		} {
			if got := r.Header.Get(k); got != want {
				t.Errorf("%s = %q, want %q", k, got, want)
			}
		}
		if _, err := time.Parse(time.RFC3339Nano, r.Header.Get("ce-time")); err != nil {
			t.Errorf("ce-time %q: %v", r.Header.Get("ce-time"), err)
		}
		raw, _ := io.ReadAll(r.Body)
		if string(raw) != `{"input":"s3://in/batch.jsonl","output":"s3://out/run1/"}` {
			t.Errorf("data %s", raw)
		}
		if hits.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte(`{"id":"batch_1","object":"batch","endpoint":"/v1/chat/completions","input_file_id":"s3://in/batch.jsonl","completion_window":"24h","status":"validating","created_at":1700000000,"request_counts":{"total":0,"completed":0,"failed":0}}`))
	}))
	defer srv.Close()
	sub, err := testClient(srv).SubmitBatch(context.Background(), &BatchRequest{
		Input: "s3://in/batch.jsonl", Output: "s3://out/run1/", Source: "/billing/nightly", Subject: "invoices",
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 || ids[0] != ids[1] || !uuidV4.MatchString(ids[0]) {
		t.Fatalf("event ids %q: want one UUIDv4 sent twice", ids)
	}
	if sub.EventID != ids[0] || sub.Batch == nil || sub.Batch.ID != "batch_1" || sub.Batch.Status != BatchValidating || sub.Batch.Done() {
		t.Fatalf("submission %+v", sub)
	}
}

func TestSubmitBatchDefaultsAndAnEmptyAnswer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("ce-source") != DefaultEventSource || r.Header.Get("ce-id") != "evt-7" || r.Header.Get("ce-subject") != "" {
			t.Errorf("headers %v", r.Header)
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	sub, err := testClient(srv).SubmitBatch(context.Background(), &BatchRequest{Input: "gs://a/in.jsonl", Output: "gs://a/out/", EventID: "evt-7"})
	if err != nil || sub.EventID != "evt-7" || sub.Batch != nil {
		t.Fatalf("sub %+v err %v", sub, err)
	}
}

// Today's server answers an event with {id, type, source, status, message}; an answer like
// that is read as an acknowledgement, never mistaken for a batch object.
func TestSubmitBatchAcknowledgementShapes(t *testing.T) {
	var answer string
	var status int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(answer))
	}))
	defer srv.Close()
	c := testClient(srv)
	ctx := context.Background()
	req := &BatchRequest{Input: "s3://a/in.jsonl", Output: "s3://a/out/", EventID: "e1"}

	status, answer = http.StatusAccepted, `{"id":"e1","type":"dev.realm.batch.v1.requested","source":"/realm-go","status":"accepted","message":"queued"}`
	sub, err := c.SubmitBatch(ctx, req)
	if err != nil || sub.Batch != nil || sub.Status != "accepted" || sub.Message != "queued" {
		t.Fatalf("sub %+v err %v", sub, err)
	}
	status, answer = http.StatusAccepted, `{"id":"e1","status":"accepted","batch":{"id":"batch_9","object":"batch","status":"validating"}}`
	sub, err = c.SubmitBatch(ctx, req)
	if err != nil || sub.Batch == nil || sub.Batch.ID != "batch_9" {
		t.Fatalf("sub %+v err %v", sub, err)
	}
	status, answer = http.StatusNotImplemented, `{"id":"e1","type":"dev.realm.batch.v1.requested","source":"/realm-go","status":"not_processed","message":"batch jobs started by events are not built yet; the event was not processed"}`
	_, err = c.SubmitBatch(ctx, req)
	e := AsAPIError(err)
	if e == nil || e.Status != http.StatusNotImplemented || e.Message != "batch jobs started by events are not built yet; the event was not processed" {
		t.Fatalf("501: %v", err)
	}
}

func TestSubmitBatchRefusals(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":{"message":"bad URI","type":"invalid_request_error","param":"input","code":null}}`))
	}))
	defer srv.Close()
	c := testClient(srv)
	ctx := context.Background()
	if _, err := c.SubmitBatch(ctx, &BatchRequest{Input: "x"}); err == nil {
		t.Fatal("a batch with no output accepted")
	}
	if _, err := c.SubmitBatch(ctx, nil); err == nil {
		t.Fatal("nil batch request accepted")
	}
	_, err := c.SubmitBatch(ctx, &BatchRequest{Input: "ftp://x", Output: "s3://y/"})
	if !IsBadRequest(err) || AsAPIError(err).Param != "input" {
		t.Fatalf("got %v", err)
	}
}

func TestBatchStatusAndWait(t *testing.T) {
	var polls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.EscapedPath() != "/v1/batches/batch%2F1" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		b := Batch{ID: "batch/1", Object: "batch", Status: BatchInProgress, RequestCounts: BatchRequestCounts{Total: 3, Completed: 1}}
		if polls.Add(1) >= 3 {
			b.Status, b.OutputFileID, b.CompletedAt = BatchCompleted, "s3://out/run1/output.jsonl", 1700000100
			b.RequestCounts.Completed = 3
		}
		_ = json.NewEncoder(w).Encode(b)
	}))
	defer srv.Close()
	c := testClient(srv)
	ctx := context.Background()
	b, err := c.Batch(ctx, "batch/1")
	if err != nil || b.Status != BatchInProgress || b.Done() {
		t.Fatalf("batch %+v err %v", b, err)
	}
	b, err = c.WaitBatch(ctx, "batch/1", time.Millisecond)
	if err != nil || !b.Done() || b.RequestCounts.Completed != 3 || b.OutputFileID == "" || polls.Load() != 3 {
		t.Fatalf("batch %+v err %v polls %d", b, err, polls.Load())
	}
	if _, err := c.Batch(ctx, ""); err == nil {
		t.Fatal("empty id accepted")
	}
	_, err = c.Batch(ctx, "batch1")
	if !IsNotFound(err) {
		t.Fatalf("unknown batch: %v", err)
	}
}
