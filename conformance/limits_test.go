package conformance

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// requestWithHead returns a GET whose request line and header section
// (through the empty line) are exactly size bytes long.
func requestWithHead(target string, size int) string {
	head := "GET " + target + " HTTP/1.1\r\nHost: example.com\r\nX-Pad: \r\n\r\n"
	return strings.Replace(head, "X-Pad: ", "X-Pad: "+strings.Repeat("p", size-len(head)), 1)
}

// The SPEC: a header size limit, proxy.max_header_bytes (RFC 9110 §15.5.20
// 414, RFC 6585 §5 431). Over it the client gets a clear 4xx, and the
// connection is closed (RFC 9112 §9.6).
func TestHeaderLimits(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	// The limit counts the request line and the fields through the empty
	// line; a head of exactly max_header_bytes passes.
	t.Run("at max_header_bytes", func(t *testing.T) {
		w.backend.reset(echo)
		raw := requestWithHead("/under", maxHeaderBytes)
		_, r := w.roundTrip(t, "GET", raw)
		if r.StatusCode != 200 {
			t.Fatalf("%d-byte head = %d, want 200", len(raw), r.StatusCode)
		}
		reqs := w.backend.requests()
		want := strings.Count(raw, "p") - strings.Count("/under example.com", "p")
		if len(reqs) != 1 || len(reqs[0].get("X-Pad")) != want {
			t.Errorf("backend got %d requests, want one with the whole %d-byte X-Pad", len(reqs), want)
		}
	})
	over := []struct {
		name  string
		raw   string
		codes []int
	}{
		{"one byte over", requestWithHead("/over", maxHeaderBytes+1), []int{431}},
		{"one field far over", requestWithHead("/over", 4*maxHeaderBytes), []int{431}},
		{"many fields over", "GET /over HTTP/1.1\r\nHost: example.com\r\n" +
			strings.Repeat("X-Many: 0123456789abcdef0123456789abcdef\r\n", 2*maxHeaderBytes/40) + "\r\n", []int{431}},
		// RFC 9112 §3: a server that receives a request-target longer than
		// any URI it wishes to parse answers 414; the README: over
		// proxy.max_request_line (default 8192).
		{"request line", "GET /" + strings.Repeat("a", 2*maxHeaderBytes) + " HTTP/1.1\r\nHost: example.com\r\n\r\n", []int{414}},
	}
	for _, tc := range over {
		t.Run(tc.name, func(t *testing.T) {
			w.backend.reset(echo)
			c := w.dial(t)
			c.send(tc.raw)
			r, err := c.tryRead("GET")
			if err != nil {
				t.Fatalf("%d-byte head: reading the response: %v", len(tc.raw), err)
			}
			t.Logf("%d-byte head: %s", len(tc.raw), r.Status)
			if reqs := w.backend.requests(); len(reqs) != 0 {
				t.Errorf("backend got %d requests, want none", len(reqs))
			}
			if !oneOf(r.StatusCode, tc.codes...) {
				t.Errorf("%d-byte head = %d, want one of %v", len(tc.raw), r.StatusCode, tc.codes)
			}
			c.expectClosed()
		})
	}
}

// The SPEC: a read-header timeout against slowloris,
// proxy.read_header_timeout. A client that stalls inside its head gets 408
// (RFC 9110 §15.5.9) or a closed connection.
func TestReadHeaderTimeout(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	w.backend.reset(echo)
	t.Run("stall", func(t *testing.T) {
		for _, tc := range []struct{ name, raw string }{
			{"head", "GET /slow HTTP/1.1\r\nHost: example.com\r\nX-Partial: "},
			{"request line", "GET /slo"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				c := w.dial(t)
				begin := time.Now()
				c.send(tc.raw)
				raw, err := c.readAll(4 * readHeaderTimeout)
				took := time.Since(begin)
				if err != nil {
					t.Fatalf("connection still open %s after a stalled head (read %q: %v), want closed within about %s",
						took.Round(time.Millisecond), raw, err, readHeaderTimeout)
				}
				t.Logf("closed after %s with %q", took.Round(time.Millisecond), firstLine(raw))
				if len(raw) > 0 && !bytes.HasPrefix(raw, []byte("HTTP/1.1 408 ")) {
					t.Errorf("got %q, want 408 or nothing before the close", raw)
				}
			})
		}
	})
	if reqs := w.backend.requests(); len(reqs) != 0 {
		t.Errorf("backend got %v, want nothing", reqs)
	}
}

func firstLine(b []byte) string {
	l, _, _ := bytes.Cut(b, []byte("\r\n"))
	return string(l)
}
