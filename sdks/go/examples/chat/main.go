// Command chat asks a running `realm serve` one question and prints the answer.
//
//	go run ./examples/chat -url http://localhost:8080 "What is the capital of France?"
//
// The API key, if the server wants one, comes from REALM_API_KEY.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	realm "github.com/realm-run/realm/sdks/go"
)

func main() {
	url := flag.String("url", realm.DefaultBaseURL, "the server's base URL")
	model := flag.String("model", "default", "the model id or alias")
	maxTokens := flag.Int("max-tokens", 128, "the most tokens to generate")
	flag.Parse()
	question := strings.Join(flag.Args(), " ")
	if question == "" {
		question = "What is the capital of France?"
	}

	client := realm.New(realm.WithBaseURL(*url), realm.WithTimeout(2*time.Minute))
	resp, err := client.ChatCompletion(context.Background(), &realm.ChatCompletionRequest{
		Model: *model,
		Messages: []realm.ChatMessage{
			realm.SystemMessage("Answer in one sentence."),
			realm.UserMessage(question),
		},
		Sampling: realm.Sampling{MaxTokens: realm.Ptr(*maxTokens), Temperature: realm.Ptr(0.0)},
	})
	switch {
	case realm.IsAuth(err):
		log.Fatalf("the server wants an API key: set REALM_API_KEY (%v)", err)
	case realm.IsModelNotFound(err):
		log.Fatalf("no such model: %v", err)
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println(resp.Text())
	fmt.Fprintf(os.Stderr, "%s: %d prompt + %d completion tokens, finish %s\n",
		resp.Model, resp.Usage.PromptTokens, resp.Usage.CompletionTokens, resp.Choices[0].FinishReason)
}
