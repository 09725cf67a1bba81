package realm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// BatchEventType is the CloudEvents type of Realm's own batch trigger; its data is
// {"input": URI, "output": URI}.
const BatchEventType = "dev.realm.batch.v1.requested"

// DefaultEventSource is the CloudEvents "source" SubmitBatch sends when the request names none.
const DefaultEventSource = "/realm-go"

// Batch statuses, as in OpenAI's batch object.
const (
	BatchValidating = "validating"
	BatchFailed     = "failed"
	BatchInProgress = "in_progress"
	BatchFinalizing = "finalizing"
	BatchCompleted  = "completed"
	BatchExpired    = "expired"
	BatchCancelling = "cancelling"
	BatchCancelled  = "cancelled"
)

// BatchRequest asks the server to run a batch job: every line of the OpenAI Batch JSONL file
// at Input goes through the model, the results to Output.
type BatchRequest struct {
	// Input is the URI of the input JSONL (s3://, gs://, az://, https://, file://): lines
	// {custom_id, method, url, body}.
	Input string `json:"input"`
	// Output is the URI the results (and the error file) are written under.
	Output string `json:"output"`
	// EventID is the CloudEvents "id"; empty picks a random one. Source and ID identify the
	// event, so a retried submission carries the same pair and the server can tell it is one.
	EventID string `json:"-"`
	// Source is the CloudEvents "source" (a URI reference naming the sender); empty means
	// DefaultEventSource.
	Source string `json:"-"`
	// Subject is the optional CloudEvents "subject".
	Subject string `json:"-"`
}

// BatchRequestCounts counts a batch's lines.
type BatchRequestCounts struct {
	// Total is the number of lines.
	Total int `json:"total"`
	// Completed counts lines answered.
	Completed int `json:"completed"`
	// Failed counts lines that went to the error file.
	Failed int `json:"failed"`
}

// BatchError is one entry of a batch's errors.
type BatchError struct {
	// Code names the failure.
	Code string `json:"code"`
	// Message explains it.
	Message string `json:"message"`
	// Param names the input field at fault, if any.
	Param string `json:"param,omitempty"`
	// Line is the input line at fault, if any.
	Line *int `json:"line,omitempty"`
}

// BatchErrors is a batch's errors list.
type BatchErrors struct {
	// Object is "list".
	Object string `json:"object"`
	// Data holds the errors.
	Data []BatchError `json:"data"`
}

// Batch is a batch job's status, in the shape of OpenAI's batch object. Times are Unix
// seconds, 0 when the event has not happened.
type Batch struct {
	// ID names the batch in Client.Batch.
	ID string `json:"id"`
	// Object is "batch".
	Object string `json:"object"`
	// Endpoint is the route the lines go to.
	Endpoint string `json:"endpoint"`
	// Errors lists failures of the batch as a whole.
	Errors *BatchErrors `json:"errors,omitempty"`
	// InputFileID is the input's URI.
	InputFileID string `json:"input_file_id"`
	// CompletionWindow is the time the batch is allowed.
	CompletionWindow string `json:"completion_window"`
	// Status is one of the Batch* status constants.
	Status string `json:"status"`
	// OutputFileID is where the results are, once there are some.
	OutputFileID string `json:"output_file_id,omitempty"`
	// ErrorFileID is where the failed lines are, once there are some.
	ErrorFileID string `json:"error_file_id,omitempty"`
	// CreatedAt is when the batch was accepted.
	CreatedAt int64 `json:"created_at"`
	// InProgressAt is when it started running.
	InProgressAt int64 `json:"in_progress_at,omitempty"`
	// ExpiresAt is when it will expire.
	ExpiresAt int64 `json:"expires_at,omitempty"`
	// FinalizingAt is when its last line was answered.
	FinalizingAt int64 `json:"finalizing_at,omitempty"`
	// CompletedAt is when its output was committed.
	CompletedAt int64 `json:"completed_at,omitempty"`
	// FailedAt is when it failed.
	FailedAt int64 `json:"failed_at,omitempty"`
	// ExpiredAt is when it expired.
	ExpiredAt int64 `json:"expired_at,omitempty"`
	// CancellingAt is when its cancellation was asked.
	CancellingAt int64 `json:"cancelling_at,omitempty"`
	// CancelledAt is when it was cancelled.
	CancelledAt int64 `json:"cancelled_at,omitempty"`
	// RequestCounts counts its lines.
	RequestCounts BatchRequestCounts `json:"request_counts"`
	// Metadata is the caller's key-value tags.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// Done reports whether the batch has reached a final status: completed, failed, expired or
// cancelled.
func (b *Batch) Done() bool {
	switch b.Status {
	case BatchCompleted, BatchFailed, BatchExpired, BatchCancelled:
		return true
	}
	return false
}

// BatchSubmission is the server's acknowledgement of a batch event.
type BatchSubmission struct {
	// EventID is the CloudEvents id the event was sent with.
	EventID string
	// Status is the server's word on the event (its answer's "status"), empty when it gave
	// none.
	Status string
	// Message is the server's explanation, if any.
	Message string
	// Batch is the batch object the server answered with (the answer itself, or its "batch"
	// field), nil when the answer had none.
	Batch *Batch
}

// receipt is the answer to an event: either an OpenAI batch object, or an acknowledgement
// naming the event ({id, type, source, status, message}) that may carry the batch.
type receipt struct {
	Object  string `json:"object"`
	Status  string `json:"status"`
	Message string `json:"message"`
	Batch   *Batch `json:"batch"`
}

// SubmitBatch sends a BatchEventType CloudEvent in binary content mode (CloudEvents HTTP
// protocol binding §3.1: the attributes as ce-* headers, the data as the JSON body) to
// POST /events. The server answers 202 at once and runs the job in the background; follow it
// with Batch or WaitBatch. Retries resend the same event id.
func (c *Client) SubmitBatch(ctx context.Context, req *BatchRequest) (*BatchSubmission, error) {
	if req == nil {
		return nil, errors.New("realm: SubmitBatch: nil request")
	}
	if req.Input == "" || req.Output == "" {
		return nil, errors.New("realm: SubmitBatch: Input and Output are required")
	}
	data, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("realm: encoding the batch event: %w", err)
	}
	id := req.EventID
	if id == "" {
		id = newEventID()
	}
	source := req.Source
	if source == "" {
		source = DefaultEventSource
	}
	h := http.Header{}
	h.Set("Ce-Specversion", "1.0")
	h.Set("Ce-Type", BatchEventType)
	h.Set("Ce-Source", source)
	h.Set("Ce-Id", id)
	h.Set("Ce-Time", time.Now().UTC().Format(time.RFC3339Nano))
	if req.Subject != "" {
		h.Set("Ce-Subject", req.Subject)
	}
	h.Set("Content-Type", "application/json")
	r := &request{method: http.MethodPost, path: pathEvents, body: data, accept: "application/json", header: h}

	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.send(ctx, r)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err != nil {
		return nil, fmt.Errorf("realm: reading the answer to POST %s: %w", pathEvents, err)
	}
	sub := &BatchSubmission{EventID: id}
	var rc receipt
	if len(body) == 0 || json.Unmarshal(body, &rc) != nil {
		return sub, nil
	}
	sub.Status, sub.Message = rc.Status, rc.Message
	if rc.Object == "batch" {
		var b Batch
		if json.Unmarshal(body, &b) == nil {
			sub.Batch = &b
		}
	} else if rc.Batch != nil && rc.Batch.ID != "" {
		sub.Batch = rc.Batch
	}
	return sub, nil
}

// Batch reads a batch job's status (GET /v1/batches/{id}).
func (c *Client) Batch(ctx context.Context, id string) (*Batch, error) {
	if id == "" {
		return nil, errors.New("realm: Batch: empty id")
	}
	var out Batch
	r := &request{method: http.MethodGet, path: pathBatches + url.PathEscape(id), accept: "application/json"}
	if err := c.doJSON(ctx, r, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// WaitBatch polls Batch every interval until the batch is Done or ctx ends. An interval of 0
// polls every 2 s.
func (c *Client) WaitBatch(ctx context.Context, id string, interval time.Duration) (*Batch, error) {
	if interval <= 0 {
		interval = 2 * time.Second
	}
	for {
		b, err := c.Batch(ctx, id)
		if err != nil {
			return nil, err
		}
		if b.Done() {
			return b, nil
		}
		if err := sleep(ctx, interval); err != nil {
			return b, fmt.Errorf("realm: waiting for batch %s (%s): %w", id, b.Status, err)
		}
	}
}

// newEventID is a random UUID (version 4), the usual CloudEvents id.
func newEventID() string {
	var u [16]byte
	// crypto/rand.Read never fails on the platforms Go supports (and panics where it would).
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
