package realm_test

import (
	"context"
	"fmt"
	"log"
	"time"

	realm "github.com/realm-run/realm/sdks/go"
)

// A client is made once and shared; options override REALM_BASE_URL and REALM_API_KEY.
func ExampleNew() {
	client := realm.New(
		realm.WithBaseURL("http://localhost:8080"),
		realm.WithAPIKey("sk-..."),
		realm.WithTimeout(time.Minute),
		realm.WithRetries(3),
		realm.WithBackoff(250*time.Millisecond, 4*time.Second),
	)
	_ = client
}

func ExampleClient_ChatCompletion() {
	client := realm.New()
	resp, err := client.ChatCompletion(context.Background(), &realm.ChatCompletionRequest{
		Model:    "default",
		Messages: []realm.ChatMessage{realm.UserMessage("What is the capital of France?")},
		Sampling: realm.Sampling{MaxTokens: realm.Ptr(32), Temperature: realm.Ptr(0.0)},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.Text())
}

func ExampleClient_ChatCompletionStream() {
	client := realm.New()
	stream, err := client.ChatCompletionStream(context.Background(), &realm.ChatCompletionRequest{
		Model:    "default",
		Messages: []realm.ChatMessage{realm.UserMessage("Tell me about rivers.")},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer stream.Close()
	for chunk, err := range stream.All() {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(chunk.Text())
	}
}

func ExampleIsRateLimited() {
	client := realm.New(realm.WithRetries(0))
	_, err := client.Models(context.Background())
	switch {
	case realm.IsRateLimited(err):
		fmt.Println("slow down; retry in", realm.AsAPIError(err).RetryAfter)
	case realm.IsAuth(err):
		fmt.Println("check REALM_API_KEY")
	case err != nil:
		fmt.Println(err)
	}
}

func ExampleClient_SubmitBatch() {
	client := realm.New()
	ctx := context.Background()
	sub, err := client.SubmitBatch(ctx, &realm.BatchRequest{
		Input:  "s3://bucket/batch.jsonl",
		Output: "s3://bucket/results/",
	})
	if err != nil {
		log.Fatal(err)
	}
	if sub.Batch != nil {
		b, err := client.WaitBatch(ctx, sub.Batch.ID, 5*time.Second)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(b.Status, b.OutputFileID)
	}
}
