package realm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"time"
)

// Version is this SDK's version, sent in the User-Agent header.
const Version = "0.1.0"

// DefaultBaseURL is where New points a client when neither WithBaseURL nor REALM_BASE_URL
// says otherwise: `realm serve --port 8080` on this machine.
const DefaultBaseURL = "http://localhost:8080"

// Routes of `realm serve`, relative to the base URL.
const (
	pathHealth      = "/health"
	pathReady       = "/ready"
	pathModels      = "/v1/models"
	pathChat        = "/v1/chat/completions"
	pathCompletions = "/v1/completions"
	pathEvents      = "/events"
	pathBatches     = "/v1/batches/"
)

// RetryPolicy says which failed calls are tried again and how long to wait in between.
//
// A call is retried on a 429 or 5xx answer and on a connection error (nothing came back).
// The n-th wait is InitialBackoff·2ⁿ⁻¹ capped at MaxBackoff, less a random jitter of up to
// half, so clients that failed together do not come back together; a Retry-After from the
// server replaces it. A stream is retried only until its response has begun.
type RetryPolicy struct {
	// MaxRetries is how many times a call is retried after its first try; 0 disables retries.
	MaxRetries int
	// InitialBackoff is the wait before the first retry.
	InitialBackoff time.Duration
	// MaxBackoff caps the exponential wait; 0 means an hour.
	MaxBackoff time.Duration
	// MaxRetryAfter is the longest Retry-After the client will wait for; a longer one ends the
	// retries and the call returns the server's error. 0 means no cap.
	MaxRetryAfter time.Duration
}

// DefaultRetryPolicy is what New uses: two retries, 0.5 s then 1 s (less jitter), and a
// Retry-After of up to a minute honoured.
var DefaultRetryPolicy = RetryPolicy{
	MaxRetries:     2,
	InitialBackoff: 500 * time.Millisecond,
	MaxBackoff:     8 * time.Second,
	MaxRetryAfter:  time.Minute,
}

// Client calls one Realm server. It is safe for concurrent use; create it once with New.
type Client struct {
	baseURL   string
	apiKey    string
	http      *http.Client
	timeout   time.Duration
	retry     RetryPolicy
	header    http.Header
	userAgent string
}

// Option configures a Client in New.
type Option func(*Client)

// WithBaseURL sets the server's root URL (scheme, host, port and any path prefix a proxy adds,
// without "/v1": the client appends "/v1/chat/completions", "/health" and so on).
func WithBaseURL(u string) Option {
	return func(c *Client) { c.baseURL = strings.TrimRight(u, "/") }
}

// WithAPIKey sets the key sent as "Authorization: Bearer KEY". Empty sends no header.
func WithAPIKey(key string) Option {
	return func(c *Client) { c.apiKey = key }
}

// WithHTTPClient sets the *http.Client the calls go through (for a custom transport, proxy or
// TLS set-up). Its Timeout, if set, also bounds streams; prefer WithTimeout.
func WithHTTPClient(h *http.Client) Option {
	return func(c *Client) {
		if h != nil {
			c.http = h
		}
	}
}

// WithTimeout bounds each call, its retries and waits included. For a stream it bounds the
// wait for the response to begin, not the stream itself, which lives as long as its context.
// 0 (the default) leaves calls bounded by their context alone.
func WithTimeout(d time.Duration) Option {
	return func(c *Client) { c.timeout = d }
}

// WithRetries sets how many times a failed call is retried (see RetryPolicy); 0 disables
// retries.
func WithRetries(n int) Option {
	return func(c *Client) { c.retry.MaxRetries = max(n, 0) }
}

// WithBackoff sets the exponential backoff between retries: the first wait and its cap.
func WithBackoff(initial, maxBackoff time.Duration) Option {
	return func(c *Client) {
		c.retry.InitialBackoff = initial
		c.retry.MaxBackoff = maxBackoff
	}
}

// WithRetryPolicy replaces the whole retry policy.
func WithRetryPolicy(p RetryPolicy) Option {
	return func(c *Client) { c.retry = p }
}

// WithHeader adds a header to every request (a tracing header, a gateway's own key).
func WithHeader(key, value string) Option {
	return func(c *Client) { c.header.Add(key, value) }
}

// WithUserAgent replaces the User-Agent ("realm-go/VERSION").
func WithUserAgent(ua string) Option {
	return func(c *Client) { c.userAgent = ua }
}

// New returns a client. Without options it calls REALM_BASE_URL (else DefaultBaseURL) with the
// key in REALM_API_KEY (else none), through its own *http.Client, with DefaultRetryPolicy.
func New(opts ...Option) *Client {
	c := &Client{
		baseURL:   DefaultBaseURL,
		apiKey:    os.Getenv("REALM_API_KEY"),
		http:      &http.Client{},
		retry:     DefaultRetryPolicy,
		header:    http.Header{},
		userAgent: "realm-go/" + Version,
	}
	if u := os.Getenv("REALM_BASE_URL"); u != "" {
		c.baseURL = strings.TrimRight(u, "/")
	}
	for _, opt := range opts {
		opt(c)
	}
	return c
}

// BaseURL returns the root URL the client calls.
func (c *Client) BaseURL() string { return c.baseURL }

// request is one call, described so that it can be sent again on a retry.
type request struct {
	method string
	path   string
	body   []byte // nil: no body
	accept string
	header http.Header // per-call headers (CloudEvents attributes)
}

// jsonRequest describes a POST of v as JSON.
func jsonRequest(path string, v any, accept string) (*request, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("realm: encoding the request for %s: %w", path, err)
	}
	return &request{method: http.MethodPost, path: path, body: body, accept: accept}, nil
}

func (c *Client) newHTTPRequest(ctx context.Context, r *request) (*http.Request, error) {
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, c.baseURL+r.path, body)
	if err != nil {
		return nil, fmt.Errorf("realm: %w", err)
	}
	for k, vs := range c.header {
		req.Header[k] = append([]string(nil), vs...)
	}
	for k, vs := range r.header {
		req.Header[k] = append([]string(nil), vs...)
	}
	if r.body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if r.accept != "" {
		req.Header.Set("Accept", r.accept)
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	req.Header.Set("User-Agent", c.userAgent)
	return req, nil
}

// send makes the call, retrying per the policy, and returns the first 2xx response with its
// body unread. Any other outcome is an error: *APIError for an answer, a wrapped transport or
// context error otherwise.
func (c *Client) send(ctx context.Context, r *request) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		req, err := c.newHTTPRequest(ctx, r)
		if err != nil {
			return nil, err
		}
		resp, err := c.http.Do(req)
		var retryAfter time.Duration
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("realm: %s %s: %w", r.method, r.path, context.Cause(ctx))
			}
			err = fmt.Errorf("realm: %s %s: %w", r.method, r.path, err)
		} else if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return resp, nil
		} else {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
			resp.Body.Close()
			apiErr := decodeError(resp.StatusCode, resp.Header, body)
			if !retryableStatus(resp.StatusCode) {
				return nil, apiErr
			}
			err, retryAfter = apiErr, apiErr.RetryAfter
		}
		if attempt >= c.retry.MaxRetries {
			return nil, err
		}
		wait := c.retry.backoff(attempt)
		if retryAfter > 0 {
			if c.retry.MaxRetryAfter > 0 && retryAfter > c.retry.MaxRetryAfter {
				return nil, err
			}
			wait = retryAfter
		}
		// Waiting past the deadline only to fail then helps nobody.
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			return nil, err
		}
		if werr := sleep(ctx, wait); werr != nil {
			return nil, errors.Join(err, fmt.Errorf("realm: gave up waiting to retry: %w", context.Cause(ctx)))
		}
	}
}

// retryableStatus: rate limits and server-side failures may pass; the rest will not.
func retryableStatus(status int) bool {
	return status == http.StatusTooManyRequests || (status >= 500 && status != http.StatusNotImplemented)
}

// backoff is the wait before retry number attempt+1: exponential, capped at MaxBackoff (at an
// hour when that is 0), with "equal jitter" (half fixed, half random) so it never collapses
// to zero.
func (p RetryPolicy) backoff(attempt int) time.Duration {
	limit := p.MaxBackoff
	if limit <= 0 {
		limit = time.Hour
	}
	d := p.InitialBackoff
	for i := 0; i < attempt && d > 0 && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	if d <= 0 {
		return 0
	}
	half := d / 2
	return half + rand.N(half+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// withTimeout applies the client's per-call timeout to ctx.
func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	return context.WithCancel(ctx)
}

// doJSON makes a call and decodes its JSON answer into out.
func (c *Client) doJSON(ctx context.Context, r *request, out any) error {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.send(ctx, r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = ctxErr
		}
		return fmt.Errorf("realm: decoding the answer to %s %s: %w", r.method, r.path, err)
	}
	return nil
}

// probe GETs a plain-text probe route once (probes are not retried: their answer is the
// point) and returns nil on 200.
func (c *Client) probe(ctx context.Context, path string) error {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	req, err := c.newHTTPRequest(ctx, &request{method: http.MethodGet, path: path})
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = ctxErr
		}
		return fmt.Errorf("realm: GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	return decodeError(resp.StatusCode, resp.Header, body)
}

// Health checks liveness (GET /health): nil once the server's socket answers, before the model
// has loaded.
func (c *Client) Health(ctx context.Context) error {
	return c.probe(ctx, pathHealth)
}

// Ready checks readiness (GET /ready): nil once the model has loaded; an *APIError with
// status 503 and the server's reason ("loading", "draining", a load failure) before that.
func (c *Client) Ready(ctx context.Context) error {
	return c.probe(ctx, pathReady)
}

// WaitReady polls Ready every interval until the server is ready or ctx ends; it returns the
// last error when ctx ends first. An interval of 0 polls every 100 ms.
func (c *Client) WaitReady(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	for {
		err := c.Ready(ctx)
		if err == nil {
			return nil
		}
		if werr := sleep(ctx, interval); werr != nil {
			return errors.Join(err, werr)
		}
	}
}

// Models lists the served model (GET /v1/models). Its ID, or "default", names it in requests.
func (c *Client) Models(ctx context.Context) (*ModelList, error) {
	var out ModelList
	if err := c.doJSON(ctx, &request{method: http.MethodGet, path: pathModels, accept: "application/json"}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
