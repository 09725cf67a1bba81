// Package realm is a client for Realm's HTTP API: the OpenAI-compatible chat completions,
// completions and models endpoints of `realm serve`, its health and readiness probes, and
// batch jobs submitted as CloudEvents.
//
// It uses only the standard library. The wire format it implements is the one
// docs/openai-compat.md and docs/serving.md in the Realm repository describe: OpenAI's request
// and response bodies, server-sent events for streams, and OpenAI's error body
// {"error": {"message", "type", "param", "code"}}.
//
// A client is safe for concurrent use:
//
//	c := realm.New(realm.WithBaseURL("http://localhost:8080"), realm.WithAPIKey(key))
//	resp, err := c.ChatCompletion(ctx, &realm.ChatCompletionRequest{
//		Model:    "default",
//		Messages: []realm.ChatMessage{realm.UserMessage("What is the capital of France?")},
//	})
//
// Streams are ranged over with Go 1.23 iterators; breaking out of the loop, calling Close or
// cancelling the context closes the connection, which the server sees as a cancelled request:
//
//	stream, err := c.ChatCompletionStream(ctx, req)
//	if err != nil { ... }
//	defer stream.Close()
//	for chunk, err := range stream.All() {
//		if err != nil { ... }
//		fmt.Print(chunk.Text())
//	}
//
// Failed calls return an *APIError (see IsRateLimited, IsAuth, IsNotFound and the other
// helpers). Calls are retried on 429, 5xx and connection errors with exponential backoff and
// jitter, honouring Retry-After; a stream is never retried once its response has begun.
package realm
