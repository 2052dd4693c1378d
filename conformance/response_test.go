package conformance

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
)

// badMark is in every malformed response; it must never reach a client.
const badMark = "BADMARK"

// badResponse is a backend answer weldr must not pass on.
type badResponse struct {
	name   string
	script script
}

// testBadResponses checks that for each backend answer the client gets a
// 502 (RFC 9110 §15.6.3) with none of the backend's bytes.
func testBadResponses(t *testing.T, w *weldr, cases []badResponse) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w.backend.reset(tc.script)
			c := w.dial(t)
			c.send("GET /bad HTTP/1.1\r\nHost: example.com\r\n\r\n")
			res, err := c.tryRead("GET")
			if err != nil {
				t.Fatalf("reading the response: %v; want 502 (the client always gets an answer)", err)
			}
			t.Logf("weldr answers %s", res.Status)
			if res.StatusCode != 502 {
				t.Errorf("response = %s %q, want 502", res.Status, res.body)
			}
			for k, vs := range res.Header {
				if strings.Contains(k+strings.Join(vs, ""), badMark) {
					t.Errorf("client got the backend's field %s: %q", k, vs)
				}
			}
			if bytes.Contains(res.body, []byte(badMark)) || bytes.Contains(res.body, []byte("hello")) {
				t.Errorf("client got the backend's body bytes: %q", res.body)
			}
		})
	}
}

// RFC 9112 §4, §5, §6.3: a response whose status line, fields or framing
// are invalid or ambiguous is replaced by 502, never passed on.
func TestBadResponse(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	const mark = "X-Bad: " + badMark + "\r\n"
	testBadResponses(t, w, []badResponse{
		// RFC 9112 §6.1: CL with TE "ought to be handled as an error".
		{name: "content-length and transfer-encoding", script: answerClose("HTTP/1.1 200 OK\r\n" + mark + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")},
		// RFC 9112 §6.3 rule 5: a proxy answers 502 to differing lengths.
		{name: "differing content-length", script: answerClose("HTTP/1.1 200 OK\r\n" + mark + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")},
		{name: "content-length list", script: answerClose("HTTP/1.1 200 OK\r\n" + mark + "Content-Length: 5, 6\r\n\r\nhello!")},
		{name: "content-length not a number", script: answerClose("HTTP/1.1 200 OK\r\n" + mark + "Content-Length: 5x\r\n\r\nhello")},
		{name: "content-length negative", script: answerClose("HTTP/1.1 200 OK\r\n" + mark + "Content-Length: -5\r\n\r\nhello")},
		// RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ].
		{name: "status not a number", script: answerClose("HTTP/1.1 abc OK\r\n" + mark + "Content-Length: 5\r\n\r\nhello")},
		{name: "status two digits", script: answerClose("HTTP/1.1 20 OK\r\n" + mark + "Content-Length: 5\r\n\r\nhello")},
		{name: "status four digits", script: answerClose("HTTP/1.1 2000 OK\r\n" + mark + "Content-Length: 5\r\n\r\nhello")},
		{name: "version HTTP/2", script: answerClose("HTTP/2 200 OK\r\n" + mark + "Content-Length: 5\r\n\r\nhello")},
		{name: "version garbage", script: answerClose("HTPT/1.1 200 OK\r\n" + mark + "Content-Length: 5\r\n\r\nhello")},
		{name: "garbage", script: answerClose(badMark + " this is not HTTP\r\n\r\nhello")},
		// RFC 9110 §5.5: no CTL but HTAB in a field value.
		{name: "NUL in field value", script: answerClose("HTTP/1.1 200 OK\r\nX-Bad: " + badMark + "\x00x\r\nContent-Length: 5\r\n\r\nhello")},
		{name: "SOH in field value", script: answerClose("HTTP/1.1 200 OK\r\nX-Bad: " + badMark + "\x01x\r\nContent-Length: 5\r\n\r\nhello")},
		{name: "NUL in field name", script: answerClose("HTTP/1.1 200 OK\r\nX-B\x00ad: " + badMark + "\r\nContent-Length: 5\r\n\r\nhello")},
		{name: "field line without colon", script: answerClose("HTTP/1.1 200 OK\r\nX-Bad " + badMark + "\r\nContent-Length: 5\r\n\r\nhello")},
		// weldr applies proxy.max_header_bytes to response heads too.
		{name: "head just over max_header_bytes", script: answerClose("HTTP/1.1 200 OK\r\nX-Bad: " + badMark + strings.Repeat("x", maxHeaderBytes) + "\r\nContent-Length: 5\r\n\r\nhello")},
		{name: "head of 1 MiB", script: answerClose("HTTP/1.1 200 OK\r\nX-Bad: " + badMark + strings.Repeat("x", 1<<20) + "\r\nContent-Length: 5\r\n\r\nhello")},
		{name: "head of 4096 fields", script: answerClose("HTTP/1.1 200 OK\r\n" + strings.Repeat(mark, 4096) + "Content-Length: 5\r\n\r\nhello")},
		// The SPEC: the client always gets an HTTP response.
		{name: "close before any byte", script: func(c *backendConn, r *request) bool { return false }},
		{name: "close inside the status line", script: answerClose("HTTP/1.1 20")},
		{name: "close inside the head", script: answerClose("HTTP/1.1 200 OK\r\n" + mark + "Content-Len")},
	})
}

// A response head under proxy.max_header_bytes passes whole.
func TestLargeResponseHead(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	big := strings.Repeat("x", maxHeaderBytes-200)
	w.backend.reset(answerClose("HTTP/1.1 200 OK\r\nX-Big: " + big + "\r\nContent-Length: 5\r\n\r\nhello"))
	_, r := w.roundTrip(t, "GET", "GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n")
	if r.StatusCode != 200 || r.Header.Get("X-Big") != big || string(r.body) != "hello" {
		t.Errorf("response = %s with a %d-byte X-Big and body %q, want 200 with %d bytes and hello", r.Status, len(r.Header.Get("X-Big")), r.body, len(big))
	}
}

// RFC 9112 §5.2: a proxy either answers 502 to a response with obs-fold
// or replaces each obs-fold by SP. RFC 9112 §5.1: it removes whitespace
// between a field name and the colon. Bare LF (§2.2) may be taken as a
// line end. Whatever it does, the client gets well-formed lines.
func TestTolerableResponse(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	cases := []struct {
		name, raw string
		field     string // the field to look at, if weldr passes the response on
		want      string // its value
	}{
		{"obs-fold", "HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 5\r\n\r\nhello", "X-Fold", "a b"},
		{"space before colon", "HTTP/1.1 200 OK\r\nX-Space : a\r\nContent-Length: 5\r\n\r\nhello", "X-Space", "a"},
		{"bare LF", "HTTP/1.1 200 OK\nX-LF: a\nContent-Length: 5\n\nhello", "X-LF", "a"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w.backend.reset(answerClose(tc.raw))
			c := w.dial(t)
			var raw bytes.Buffer // what the client read, as it came
			c.br = bufio.NewReader(io.TeeReader(c.c, &raw))
			c.send("GET /odd HTTP/1.1\r\nHost: example.com\r\n\r\n")
			res := c.read("GET")
			head, _, _ := strings.Cut(raw.String(), "\r\n\r\n")
			switch res.StatusCode {
			case 502:
				t.Logf("weldr answers 502")
			case 200:
				t.Logf("weldr passes it on: %q", head)
				if bareLineBreak([]byte(head)) || strings.Contains(head, "\r\n ") || strings.Contains(head, " :") {
					t.Errorf("client got a malformed head %q", head)
				}
				if v := fieldValues(parseHeadFields(head), tc.field); len(v) != 1 || v[0] != tc.want {
					t.Errorf("client got %s: %q, want %q", tc.field, v, tc.want)
				}
				if string(res.body) != "hello" {
					t.Errorf("client got body %q, want hello", res.body)
				}
			default:
				t.Errorf("client got %q, want 502 or 200", raw.Bytes())
			}
		})
	}
}

// The README: a backend that breaks off in a body makes weldr close the
// client's connection, so a truncated body is never passed on as complete
// (RFC 9112 §8: an incomplete message must not look complete).
func TestBrokenResponseBody(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	cases := []struct{ name, raw string }{
		{"content-length short", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello"},
		{"chunked without last chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"},
		{"chunked cut in a chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nabc"},
		// RFC 9112 §7.1: an invalid chunk size is a framing error.
		{"invalid chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n" + badMark + "\r\n0\r\n\r\n"},
		{"negative chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n-1\r\n" + badMark + "\r\n0\r\n\r\n"},
		{"huge chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nffffffffffffffffff\r\n" + badMark + "\r\n0\r\n\r\n"},
		{"chunk data without CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX" + badMark + "\r\n0\r\n\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w.backend.reset(answerClose(tc.raw))
			c := w.dial(t)
			c.send("GET /broken HTTP/1.1\r\nHost: example.com\r\n\r\n")
			res, err := c.tryRead("GET")
			if err != nil {
				t.Fatalf("reading the response: %v; want a head", err)
			}
			if res.StatusCode == 502 {
				t.Logf("weldr answers 502")
				return
			}
			t.Logf("weldr answers %s, then the body %q, then %v", res.Status, res.body, res.bodyErr)
			if res.bodyErr == nil {
				t.Errorf("client got a complete %s with body %q, want the connection aborted", res.Status, res.body)
			}
			if bytes.Contains(res.body, []byte(badMark)) {
				t.Errorf("client got the bytes after the fault: %q", res.body)
			}
			if ok, extra := c.closed(ioTimeout); !ok {
				t.Errorf("connection not closed after a broken body (then got %q)", extra)
			}
		})
	}
}

func parseHeadFields(head string) []field {
	lines := strings.Split(head, "\r\n")
	fs, _ := parseFields(lines[1:])
	return fs
}
