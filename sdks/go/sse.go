package realm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// maxEventBytes bounds one server-sent event (and so one line): far above any chunk the
// server sends, small enough that a broken peer cannot make the client hold unbounded memory.
const maxEventBytes = 8 << 20

// sseEvent is one dispatched server-sent event.
type sseEvent struct {
	event string
	data  []byte
}

// sseReader parses a text/event-stream as the WHATWG HTML standard (§9.2 "Server-sent
// events") says: lines end with CRLF, LF or CR; a line starting with ":" is a comment (the
// server's ": keep-alive"); "field: value" lines with one optional space after the colon;
// "data" lines of one event are joined with "\n"; a blank line dispatches the event, and an
// event whose data is empty is not dispatched. Frames may arrive split across reads in any
// way: the reader works on lines, not on reads.
type sseReader struct {
	lines *bufio.Scanner
	data  bytes.Buffer
	event string
}

func newSSEReader(r io.Reader) *sseReader {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 4096), maxEventBytes)
	s.Split(scanSSELines)
	return &sseReader{lines: s}
}

// errTruncated is returned when the body ends inside an event (no blank line after it).
var errTruncated = errors.New("the stream ended in the middle of an event")

// next returns the next event, io.EOF at a clean end of the body, or the read error.
func (r *sseReader) next() (sseEvent, error) {
	for r.lines.Scan() {
		line := r.lines.Bytes()
		if len(line) == 0 {
			if r.data.Len() == 0 {
				r.event = ""
				continue
			}
			data := bytes.TrimSuffix(r.data.Bytes(), []byte("\n"))
			ev := sseEvent{event: r.event, data: append([]byte(nil), data...)}
			r.data.Reset()
			r.event = ""
			return ev, nil
		}
		if line[0] == ':' {
			continue // a comment: the server's keep-alive
		}
		field, value, found := bytes.Cut(line, []byte(":"))
		if found {
			value = bytes.TrimPrefix(value, []byte(" "))
		}
		switch string(field) {
		case "data":
			if r.data.Len()+len(value)+1 > maxEventBytes {
				return sseEvent{}, fmt.Errorf("an event exceeds %d bytes", maxEventBytes)
			}
			r.data.Write(value)
			r.data.WriteByte('\n')
		case "event":
			r.event = string(value)
		default:
			// "id" and "retry" steer a browser's reconnection, which a completion stream
			// cannot use (it is never resumed); unknown fields are ignored by the standard.
		}
	}
	if err := r.lines.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return sseEvent{}, fmt.Errorf("a line of the stream exceeds %d bytes", maxEventBytes)
		}
		return sseEvent{}, err
	}
	if r.data.Len() > 0 {
		return sseEvent{}, errTruncated
	}
	return sseEvent{}, io.EOF
}

// scanSSELines is a bufio.SplitFunc for lines ending in "\r\n", "\n" or "\r". A "\r" at the
// end of the buffered data waits for one more byte, since a "\n" may follow in the next read.
func scanSSELines(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if atEOF && len(data) == 0 {
		return 0, nil, nil
	}
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		if data[i] == '\n' {
			return i + 1, data[:i], nil
		}
		if i+1 < len(data) {
			if data[i+1] == '\n' {
				return i + 2, data[:i], nil
			}
			return i + 1, data[:i], nil
		}
		if atEOF {
			return i + 1, data[:i], nil
		}
		return 0, nil, nil // a lone "\r" at the end: see whether "\n" follows
	}
	if atEOF {
		// The last line had no terminator; the event it belongs to is incomplete, which
		// next reports once it sees no blank line follows.
		return len(data), data, nil
	}
	return 0, nil, nil
}
