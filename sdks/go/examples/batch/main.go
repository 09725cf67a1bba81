// Command batch submits a batch job to `realm serve` as a CloudEvent and waits for it to end.
//
//	go run ./examples/batch -url http://localhost:8080 \
//	    -input s3://bucket/batch.jsonl -output s3://bucket/results/
//
// The input is an OpenAI Batch JSONL file: lines {custom_id, method, url, body}.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	realm "github.com/realm-run/realm/sdks/go"
)

func main() {
	url := flag.String("url", realm.DefaultBaseURL, "the server's base URL")
	input := flag.String("input", "", "URI of the input JSONL (s3://, gs://, az://, https://, file://)")
	output := flag.String("output", "", "URI the results are written under")
	wait := flag.Bool("wait", true, "poll the batch until it ends")
	flag.Parse()
	if *input == "" || *output == "" {
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	client := realm.New(realm.WithBaseURL(*url))
	sub, err := client.SubmitBatch(ctx, &realm.BatchRequest{Input: *input, Output: *output})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("event %s: %s %s\n", sub.EventID, sub.Status, sub.Message)
	if sub.Batch == nil || !*wait {
		return
	}
	b, err := client.WaitBatch(ctx, sub.Batch.ID, 2*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("batch %s %s: %d of %d lines done, %d failed; output %s, errors %s\n",
		b.ID, b.Status, b.RequestCounts.Completed, b.RequestCounts.Total, b.RequestCounts.Failed,
		b.OutputFileID, b.ErrorFileID)
}
