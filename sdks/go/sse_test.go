package realm

import (
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
)

// readAll parses every event of a stream.
func readAll(r io.Reader) ([]sseEvent, error) {
	sr := newSSEReader(r)
	var out []sseEvent
	for {
		ev, err := sr.next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, ev)
	}
}

func TestSSEFraming(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []string // data of each event
	}{
		{"one frame", "data: {\"a\":1}\n\n", []string{`{"a":1}`}},
		{"keep-alive comments skipped", ": keep-alive\n\ndata: x\n\n:\n\n: keep-alive\ndata: y\n\n", []string{"x", "y"}},
		{"multi-line data joined with newline", "data: a\ndata: b\ndata:\ndata: c\n\n", []string{"a\nb\n\nc"}},
		{"no space after colon", "data:x\n\n", []string{"x"}},
		{"only one space stripped", "data:  x\n\n", []string{" x"}},
		{"CRLF endings", "data: a\r\n\r\ndata: b\r\n\r\n", []string{"a", "b"}},
		{"CR endings", "data: a\r\rdata: b\r\r", []string{"a", "b"}},
		{"field without colon", "data\ndata: x\n\n", []string{"\nx"}},
		{"blank lines without data dispatch nothing", "\n\n\nevent: ping\n\ndata: x\n\n", []string{"x"}},
		{"id and retry ignored", "id: 7\nretry: 100\ndata: x\n\n", []string{"x"}},
		{"unknown fields ignored", "colour: red\ndata: x\n\n", []string{"x"}},
		{"done marker", "data: {}\n\ndata: [DONE]\n\n", []string{"{}", "[DONE]"}},
		{"colon inside value kept", "data: {\"t\":\"a: b\"}\n\n", []string{`{"t":"a: b"}`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs, err := readAll(strings.NewReader(tc.in))
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			var got []string
			for _, ev := range evs {
				got = append(got, string(ev.data))
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") || len(got) != len(tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSSEEventName(t *testing.T) {
	evs, err := readAll(strings.NewReader("event: error\ndata: x\n\ndata: y\n\n"))
	if err != nil || len(evs) != 2 || evs[0].event != "error" || evs[1].event != "" {
		t.Fatalf("got %+v, %v", evs, err)
	}
}

func TestSSETruncatedEvent(t *testing.T) {
	for _, in := range []string{"data: x\n\ndata: {\"a\"", "data: x\n\ndata: y\n"} {
		evs, err := readAll(strings.NewReader(in))
		if !errors.Is(err, errTruncated) || len(evs) != 1 {
			t.Fatalf("%q: got %d events, err %v; want 1 and errTruncated", in, len(evs), err)
		}
	}
}

func TestSSEOversizedLine(t *testing.T) {
	in := "data: " + strings.Repeat("x", maxEventBytes+10) + "\n\n"
	if _, err := readAll(strings.NewReader(in)); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("want a size error, got %v", err)
	}
}

// chunkReader returns its input in pieces of random sizes, as a network does.
type chunkReader struct {
	data []byte
	rng  *rand.Rand
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := min(1+r.rng.IntN(7), len(p), len(r.data))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

func TestSSEFramesSplitAcrossReads(t *testing.T) {
	// Every line ending style, so a "\r" split from its "\n" is exercised.
	in := ": keep-alive\r\n\r\ndata: {\"n\":1}\r\n\r\ndata: a\rdata: b\r\rdata: {\"n\":2}\n\ndata: [DONE]\n\n"
	want, err := readAll(strings.NewReader(in))
	if err != nil || len(want) != 4 {
		t.Fatalf("whole: %+v, %v", want, err)
	}
	check := func(name string, r io.Reader) {
		got, err := readAll(r)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d events, want %d", name, len(got), len(want))
		}
		for i := range got {
			if string(got[i].data) != string(want[i].data) {
				t.Fatalf("%s: event %d = %q, want %q", name, i, got[i].data, want[i].data)
			}
		}
	}
	check("one byte at a time", iotest.OneByteReader(strings.NewReader(in)))
	check("half reads", iotest.HalfReader(strings.NewReader(in)))
	for seed := range uint64(50) {
		check("random pieces", &chunkReader{data: []byte(in), rng: rand.New(rand.NewPCG(seed, 1))})
	}
}
