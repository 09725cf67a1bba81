// Command stream prints a chat answer token by token as a running `realm serve` generates it.
// Ctrl-C cancels the request: the connection closes and the server stops generating.
//
//	go run ./examples/stream -url http://localhost:8080 "Tell me about rivers."
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"

	realm "github.com/realm-run/realm/sdks/go"
)

func main() {
	url := flag.String("url", realm.DefaultBaseURL, "the server's base URL")
	model := flag.String("model", "default", "the model id or alias")
	maxTokens := flag.Int("max-tokens", 256, "the most tokens to generate")
	flag.Parse()
	prompt := strings.Join(flag.Args(), " ")
	if prompt == "" {
		prompt = "Tell me about rivers."
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	client := realm.New(realm.WithBaseURL(*url))
	stream, err := client.ChatCompletionStream(ctx, &realm.ChatCompletionRequest{
		Model:    *model,
		Messages: []realm.ChatMessage{realm.UserMessage(prompt)},
		Sampling: realm.Sampling{
			MaxTokens:     realm.Ptr(*maxTokens),
			StreamOptions: &realm.StreamOptions{IncludeUsage: true},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer stream.Close()

	for chunk, err := range stream.All() {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "\n(cancelled)")
			return
		}
		if err != nil {
			log.Fatalf("\nstream failed: %v", err)
		}
		fmt.Print(chunk.Text())
		if chunk.Usage != nil {
			fmt.Fprintf(os.Stderr, "\n%d tokens\n", chunk.Usage.CompletionTokens)
		}
	}
	fmt.Println()
}
