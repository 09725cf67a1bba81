package realm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"mime"
	"sync"
	"time"
)

// ErrStreamTruncated is returned (wrapped) when a stream's connection ends before the
// server's "data: [DONE]": the server or a proxy went away mid-answer.
var ErrStreamTruncated = errors.New("realm: the stream ended before [DONE]")

// doneMarker is the data of the server's last frame.
var doneMarker = []byte("[DONE]")

// Stream is a streamed answer, one chunk per server-sent event: ChatCompletionChunk for chat,
// Completion for completions.
//
// Range over All, or call Next, Current and Err in a loop; either way call Close when done
// (All closes it when the loop ends). Closing the stream or cancelling its context closes
// the connection, which the server counts as a cancelled request and stops generating.
// A Stream is read by one goroutine; Close may be called from any.
type Stream[T any] struct {
	body   io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	events *sseReader

	cur  T
	err  error
	done bool
	once sync.Once
	stop func() bool // unregisters the context watcher
}

// errClosed is the cause given to the stream's context by Close.
var errClosed = errors.New("realm: stream closed")

func newStream[T any](ctx context.Context, cancel context.CancelCauseFunc, body io.ReadCloser) *Stream[T] {
	s := &Stream[T]{
		body:   body,
		ctx:    ctx,
		cancel: cancel,
		events: newSSEReader(body),
	}
	// The transport also drops the connection when the context ends; closing the body here
	// makes sure a blocked Read returns at once whatever the transport does.
	s.stop = context.AfterFunc(ctx, func() { body.Close() })
	return s
}

// Next advances to the next chunk and reports whether there is one. It returns false at the
// end of the stream ("data: [DONE]"), after an error (see Err) and after Close. Keep-alive
// comments are skipped; an error frame from the server ends the stream with an *APIError.
func (s *Stream[T]) Next() bool {
	if s.done {
		return false
	}
	for {
		ev, err := s.events.next()
		if err != nil {
			s.finish(s.readError(err))
			return false
		}
		if bytes.Equal(ev.data, doneMarker) {
			s.finish(nil)
			return false
		}
		if apiErr := errorFrame(ev.data); apiErr != nil {
			s.finish(apiErr)
			return false
		}
		var chunk T
		if err := json.Unmarshal(ev.data, &chunk); err != nil {
			s.finish(fmt.Errorf("realm: decoding a stream chunk: %w (data: %s)", err, bodySnippet(ev.data)))
			return false
		}
		s.cur = chunk
		return true
	}
}

// readError explains why reading the body failed: Close, the caller's context, or the
// connection.
func (s *Stream[T]) readError(err error) error {
	if errors.Is(context.Cause(s.ctx), errClosed) {
		return nil
	}
	if s.ctx.Err() != nil {
		return fmt.Errorf("realm: stream: %w", context.Cause(s.ctx))
	}
	if err == io.EOF || errors.Is(err, errTruncated) {
		return ErrStreamTruncated
	}
	return fmt.Errorf("%w: %w", ErrStreamTruncated, err)
}

// errorFrame decodes a `data: {"error": {...}}` frame, the server's way of failing a stream
// that has already begun; nil when data is not one.
func errorFrame(data []byte) *APIError {
	if !bytes.Contains(data, []byte(`"error"`)) {
		return nil
	}
	var env errorBody
	if json.Unmarshal(data, &env) != nil || env.Error == nil {
		return nil
	}
	return env.Error.apiError(0)
}

func (s *Stream[T]) finish(err error) {
	s.done = true
	s.err = err
	var zero T
	s.cur = zero
	s.Close()
}

// Current is the chunk Next advanced to.
func (s *Stream[T]) Current() T { return s.cur }

// Err is the error that ended the stream: nil after "[DONE]" or Close, an *APIError for an
// error frame, the context's error when it was cancelled, ErrStreamTruncated (wrapping the
// cause) when the connection ended early.
func (s *Stream[T]) Err() error { return s.err }

// Close closes the connection, so the server stops generating. It is safe to call more than
// once and from another goroutine than the reader; it always returns nil.
func (s *Stream[T]) Close() error {
	s.once.Do(func() {
		s.cancel(errClosed)
		s.stop()
		s.body.Close()
	})
	return nil
}

// All returns an iterator over the stream's chunks for a range loop. Each chunk comes with a
// nil error; an error ends the loop as a last (zero chunk, error) pair. The stream is closed
// when the loop ends, by break or otherwise. A stream can be ranged over once.
func (s *Stream[T]) All() iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		defer s.Close()
		for s.Next() {
			if !yield(s.cur, nil) {
				return
			}
		}
		if err := s.Err(); err != nil {
			var zero T
			yield(zero, err)
		}
	}
}

// openStream sends r and returns its event stream once the response has begun. Until then
// the call is retried like any other; after, never. The client's timeout bounds only the wait
// for the response to begin.
func openStream[T any](ctx context.Context, c *Client, r *request) (*Stream[T], error) {
	sctx, cancel := context.WithCancelCause(ctx)
	var timer *time.Timer
	if c.timeout > 0 {
		timer = time.AfterFunc(c.timeout, func() {
			cancel(fmt.Errorf("realm: no response within %v: %w", c.timeout, context.DeadlineExceeded))
		})
	}
	resp, err := c.send(sctx, r)
	if timer != nil && !timer.Stop() && err == nil {
		// The timeout fired as the response arrived: the context is already cancelled.
		resp.Body.Close()
		err = fmt.Errorf("realm: %s %s: %w", r.method, r.path, context.Cause(sctx))
	}
	if err != nil {
		cancel(err)
		return nil, err
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		cancel(nil)
		if apiErr := errorFrame(body); apiErr != nil {
			apiErr.Status = resp.StatusCode
			return nil, apiErr
		}
		return nil, fmt.Errorf("realm: %s %s: expected text/event-stream, got %q: %s",
			r.method, r.path, resp.Header.Get("Content-Type"), bodySnippet(body))
	}
	return newStream[T](sctx, cancel, resp.Body), nil
}

// chatBody and completionBody are request bodies with "stream" set by the method called
// rather than by a field the caller could get wrong.
type chatBody struct {
	*ChatCompletionRequest
	Stream bool `json:"stream"`
}

type completionBody struct {
	*CompletionRequest
	Stream bool `json:"stream"`
}

// ChatCompletion sends a chat request and waits for the whole answer.
func (c *Client) ChatCompletion(ctx context.Context, req *ChatCompletionRequest) (*ChatCompletion, error) {
	if req == nil {
		return nil, errors.New("realm: ChatCompletion: nil request")
	}
	r, err := jsonRequest(pathChat, chatBody{ChatCompletionRequest: req}, "application/json")
	if err != nil {
		return nil, err
	}
	var out ChatCompletion
	if err := c.doJSON(ctx, r, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ChatCompletionStream sends a chat request and returns its answer as a stream of chunks,
// token by token. Errors before the stream begins (a bad field, a wrong key, an overloaded
// server past its retries) are returned here; errors after, by the stream.
func (c *Client) ChatCompletionStream(ctx context.Context, req *ChatCompletionRequest) (*Stream[ChatCompletionChunk], error) {
	if req == nil {
		return nil, errors.New("realm: ChatCompletionStream: nil request")
	}
	r, err := jsonRequest(pathChat, chatBody{ChatCompletionRequest: req, Stream: true}, "text/event-stream")
	if err != nil {
		return nil, err
	}
	return openStream[ChatCompletionChunk](ctx, c, r)
}

// Completion sends a completions request and waits for the whole answer.
func (c *Client) Completion(ctx context.Context, req *CompletionRequest) (*Completion, error) {
	if req == nil {
		return nil, errors.New("realm: Completion: nil request")
	}
	r, err := jsonRequest(pathCompletions, completionBody{CompletionRequest: req}, "application/json")
	if err != nil {
		return nil, err
	}
	var out Completion
	if err := c.doJSON(ctx, r, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CompletionStream sends a completions request and returns its answer as a stream of chunks.
// Errors before the stream begins are returned here; errors after, by the stream.
func (c *Client) CompletionStream(ctx context.Context, req *CompletionRequest) (*Stream[Completion], error) {
	if req == nil {
		return nil, errors.New("realm: CompletionStream: nil request")
	}
	r, err := jsonRequest(pathCompletions, completionBody{CompletionRequest: req, Stream: true}, "text/event-stream")
	if err != nil {
		return nil, err
	}
	return openStream[Completion](ctx, c, r)
}
