package conformance

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

// checkNext sends one more request on c and checks that it is answered
// intact: what came before was framed right on both sides.
func checkNext(t *testing.T, c *client) {
	t.Helper()
	c.send("GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n")
	if r := c.final("GET"); r.StatusCode != 200 || string(r.body) != "GET /next " {
		t.Errorf("next request on the connection = %d %.80q, want 200 %q", r.StatusCode, r.body, "GET /next ")
	}
}

func TestRequestBody(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	var big strings.Builder // 1 MiB in chunks of 1000 bytes
	var bigBody []byte
	for i := 0; len(bigBody) < 1<<20; i++ {
		chunk := bytes.Repeat([]byte{byte('a' + i%26)}, 1000)
		fmt.Fprintf(&big, "%x\r\n%s\r\n", len(chunk), chunk)
		bigBody = append(bigBody, chunk...)
	}
	big.WriteString("0\r\n\r\n")

	const chunkedHead = "POST /body HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
	cases := []struct {
		name, raw string
		body      string
	}{
		// RFC 9112 §6.2: Content-Length gives the length of the content.
		{"content-length", "POST /body HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\nhello world", "hello world"},
		{"content-length zero", "POST /body HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n", ""},
		{"content-length binary", "PUT /body HTTP/1.1\r\nHost: example.com\r\nContent-Length: 256\r\n\r\n" + string(binary), string(binary)},
		// RFC 9112 §7.1: chunked transfer coding.
		{"chunked", chunkedHead + "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"},
		{"chunked hex sizes", chunkedHead + "000B\r\nhello world\r\na\r\n0123456789\r\n0\r\n\r\n", "hello world0123456789"},
		// RFC 9112 §7.1.1: chunk extensions, with BWS around ';' and '='.
		{"chunk extensions", chunkedHead + "5;name=value\r\nhello\r\n6;a;b=\"q s\"\r\n world\r\n0;last\r\n\r\n", "hello world"},
		{"chunk extension after whitespace", chunkedHead + "5 ; a = b\r\nhello\r\n6\t;a\r\n world\r\n0\r\n\r\n", "hello world"},
		// RFC 9112 §7.1.2: a trailer section after the last chunk.
		{"chunked with trailer", chunkedHead + "5\r\nhello\r\n0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n", "hello"},
		{"chunked empty", chunkedHead + "0\r\n\r\n", ""},
		{"chunked 1 MiB", chunkedHead + big.String(), string(bigBody)},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w.backend.reset(echo)
			// A path of its own, so that a late request of another case
			// cannot be taken for this one's.
			target := fmt.Sprintf("/body%d", i)
			c, res := w.roundTrip(t, "POST", strings.Replace(tc.raw, "/body", target, 1))
			method, _, _ := strings.Cut(tc.raw, " ")
			if want := method + " " + target + " " + tc.body; res.StatusCode != 200 || string(res.body) != want {
				t.Errorf("response = %d %.80q, want 200 %.80q", res.StatusCode, res.body, want)
			}
			reqs := w.backend.requestsFor(target)
			if len(reqs) != 1 {
				t.Fatalf("backend got %d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if !r.complete {
				t.Errorf("backend got a badly framed request %v", r)
			}
			if string(r.body) != tc.body {
				t.Errorf("backend got a body of %d bytes %.80q, want %d bytes %.80q", len(r.body), r.body, len(tc.body), tc.body)
			}
			if strings.Contains(tc.name, "trailer") {
				t.Logf("trailer at the backend: %q", r.trailer)
			}
			checkNext(t, c)
		})
	}
}

// RFC 9112 §9.3.2: pipelined requests are answered in the order received.
func TestPipelining(t *testing.T) {
	t.Parallel()
	for _, workers := range []int{1, 2} {
		t.Run(fmt.Sprintf("workers=%d", workers), func(t *testing.T) {
			w := start(t, workers)
			t.Run("pipelined", func(t *testing.T) {
				w.backend.reset(echo)
				c := w.dial(t)
				c.send("GET /p1 HTTP/1.1\r\nHost: example.com\r\n\r\n" +
					"POST /p2 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc" +
					"POST /p3 HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" +
					"HEAD /p4 HTTP/1.1\r\nHost: example.com\r\n\r\n" +
					"DELETE /p5 HTTP/1.1\r\nHost: example.com\r\n\r\n")
				want := []struct{ method, body string }{
					{"GET", "GET /p1 "}, {"POST", "POST /p2 abc"}, {"POST", "POST /p3 hello"}, {"HEAD", ""}, {"DELETE", "DELETE /p5 "},
				}
				for i, x := range want {
					r := c.final(x.method)
					if r.StatusCode != 200 || string(r.body) != x.body {
						t.Errorf("response %d = %d %q, want 200 %q", i+1, r.StatusCode, r.body, x.body)
					}
				}
				var got []string
				for _, r := range w.backend.requests() {
					got = append(got, r.method+" "+r.target)
				}
				if want := "GET /p1,POST /p2,POST /p3,HEAD /p4,DELETE /p5"; strings.Join(got, ",") != want {
					t.Errorf("backend got %q, want %s", got, want)
				}
			})
			// RFC 9112 §9.3: HTTP/1.1 connections are persistent by default.
			t.Run("sequential keep-alive", func(t *testing.T) {
				w.backend.reset(echo)
				c := w.dial(t)
				for i := range 5 {
					c.send(fmt.Sprintf("POST /k%d HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\n\r\n%d", i, i))
					want := fmt.Sprintf("POST /k%d %d", i, i)
					if r := c.final("POST"); r.StatusCode != 200 || string(r.body) != want {
						t.Fatalf("request %d = %d %q, want 200 %q", i, r.StatusCode, r.body, want)
					}
				}
			})
		})
	}
}

// RFC 9110 §10.1.1: a client that sends Expect: 100-continue waits for
// 100 (Continue) before sending the content.
func TestExpectContinue(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	w.backend.reset(echo)
	c := w.dial(t)
	c.send("POST /expect HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	r, err := c.tryRead("POST")
	if err != nil {
		t.Fatalf("reading an interim response before sending the body: %v", err)
	}
	if r.StatusCode != 100 {
		t.Fatalf("first response = %d, want 100 Continue before the body is sent", r.StatusCode)
	}
	c.send("hello")
	if r := c.final("POST"); r.StatusCode != 200 || string(r.body) != "POST /expect hello" {
		t.Errorf("final response = %d %q, want 200 %q", r.StatusCode, r.body, "POST /expect hello")
	}
	if reqs := w.backend.requests(); len(reqs) != 1 || string(reqs[0].body) != "hello" {
		t.Errorf("backend got %v, want one request with body hello", reqs)
	}
	checkNext(t, c)
}

// RFC 9110 §9.3.2, §15.3.5, §15.4.5 and RFC 9112 §6.3: responses to HEAD
// and 204 and 304 responses end at the empty line after the header
// fields, whatever Content-Length says.
func TestNoBodyResponses(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	script := func(c *backendConn, r *request) bool {
		switch r.target {
		case "/head":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n")
		case "/204":
			io.WriteString(c, "HTTP/1.1 204 No Content\r\nContent-Length: 11\r\n\r\n")
		case "/304":
			io.WriteString(c, "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 11\r\n\r\n")
		default:
			return echo(c, r)
		}
		return true
	}
	cases := []struct {
		name, method, target string
		status               int
	}{
		{"HEAD", "HEAD", "/head", 200},
		{"204", "GET", "/204", 204},
		{"304", "GET", "/304", 304},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w.backend.reset(script)
			c := w.dial(t)
			c.send(tc.method + " " + tc.target + " HTTP/1.1\r\nHost: example.com\r\n\r\n" +
				"GET /after HTTP/1.1\r\nHost: example.com\r\n\r\n")
			if r := c.final(tc.method); r.StatusCode != tc.status {
				t.Errorf("%s %s = %d, want %d", tc.method, tc.target, r.StatusCode, tc.status)
			}
			// Body bytes after the first response would spoil this one.
			if r := c.final("GET"); r.StatusCode != 200 || string(r.body) != "GET /after " {
				t.Errorf("pipelined GET /after = %d %q, want 200 %q", r.StatusCode, r.body, "GET /after ")
			}
		})
	}
}

// RFC 9110 §15.2: a proxy forwards 1xx responses it did not ask for, but
// never to an HTTP/1.0 client.
func TestInterimResponses(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	w.backend.reset(func(c *backendConn, r *request) bool {
		if r.target != "/hints" {
			return echo(c, r)
		}
		io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")
		return true
	})
	t.Run("HTTP/1.1", func(t *testing.T) {
		c := w.dial(t)
		c.send("GET /hints HTTP/1.1\r\nHost: example.com\r\n\r\n")
		r := c.read("GET")
		if r.StatusCode != 103 || r.Header.Get("Link") != "</style.css>; rel=preload" {
			t.Errorf("first response = %s %v, want the backend's 103 with its Link", r.Status, r.Header)
		}
		if r := c.final("GET"); r.StatusCode != 200 || string(r.body) != "final" {
			t.Errorf("final response = %s %q, want 200 final", r.Status, r.body)
		}
		checkNext(t, c)
	})
	t.Run("HTTP/1.0", func(t *testing.T) {
		c := w.dial(t)
		c.send("GET /hints HTTP/1.0\r\nHost: example.com\r\n\r\n")
		if r := c.read("GET"); r.StatusCode != 200 || string(r.body) != "final" {
			t.Errorf("first response = %s %q, want 200 final and no 1xx", r.Status, r.body)
		}
	})
}

// RFC 9112 §9.3.1 and §9.6: a server may close an idle connection at any
// time without saying so. weldr must not send a request on a pooled
// backend connection the backend has already closed (and, having sent
// nothing yet, may use another one): the client gets the answer, not 502.
func TestStaleBackendConnection(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	w.backend.reset(func(c *backendConn, r *request) bool {
		echo(c, r)
		return false // close, without Connection: close
	})
	for i, raw := range []string{
		"GET /stale0 HTTP/1.1\r\nHost: example.com\r\n\r\n",
		"GET /stale1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
		"POST /stale2 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi",
		"POST /stale3 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi",
	} {
		closed := w.backend.closedConns()
		method, _, _ := strings.Cut(raw, " ")
		_, r := w.roundTrip(t, method, raw)
		if r.StatusCode != 200 {
			t.Fatalf("request %d after the backend closed its connection = %s %q, want 200", i, r.Status, r.body)
		}
		// The FIN reaches weldr before the next request does.
		waitFor(t, 5*time.Second, "the backend to close its connection", func() bool { return w.backend.closedConns() > closed })
	}
}

// RFC 9112 §9.3 and §9.6: persistence and closing.
func TestConnectionPersistence(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	t.Run("connection close from client", func(t *testing.T) {
		w.backend.reset(echo)
		c, r := w.roundTrip(t, "GET", "GET /close HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
		if r.StatusCode != 200 || string(r.body) != "GET /close " {
			t.Errorf("response = %d %q, want 200", r.StatusCode, r.body)
		}
		// §9.6: the server SHOULD send close in its final response.
		if !hasToken(r.Header.Values("Connection"), "close") {
			t.Logf("response carries Connection %q, no close", r.Header.Values("Connection"))
		}
		c.expectClosed()
	})
	t.Run("HTTP/1.0 without keep-alive", func(t *testing.T) {
		w.backend.reset(echo)
		c, r := w.roundTrip(t, "GET", "GET /h10 HTTP/1.0\r\nHost: example.com\r\n\r\n")
		if r.StatusCode != 200 || string(r.body) != "GET /h10 " {
			t.Errorf("response = %d %q, want 200", r.StatusCode, r.body)
		}
		c.expectClosed()
	})
	t.Run("HTTP/1.0 with keep-alive", func(t *testing.T) {
		w.backend.reset(echo)
		c, r := w.roundTrip(t, "GET", "GET /h10ka HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n")
		if r.StatusCode != 200 || string(r.body) != "GET /h10ka " {
			t.Errorf("response = %d %q, want 200", r.StatusCode, r.body)
		}
		if !hasToken(r.Header.Values("Connection"), "keep-alive") {
			t.Logf("weldr answers without Connection: keep-alive, so the connection must close")
			c.expectClosed()
			return
		}
		t.Logf("weldr keeps the HTTP/1.0 connection alive")
		c.send("GET /again HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n")
		if r := c.final("GET"); r.StatusCode != 200 || string(r.body) != "GET /again " {
			t.Errorf("second request = %d %q, want 200", r.StatusCode, r.body)
		}
	})
	// RFC 9112 §6.1: no Transfer-Encoding in a response to HTTP/1.0.
	t.Run("HTTP/1.0 gets no chunked response", func(t *testing.T) {
		w.backend.reset(answerClose("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"))
		c := w.dial(t)
		c.send("GET /h10chunked HTTP/1.0\r\nHost: example.com\r\n\r\n")
		raw, err := c.readAll(ioTimeout)
		if err != nil {
			t.Fatalf("reading the response: %v (got %q)", err, raw)
		}
		head, body, _ := strings.Cut(string(raw), "\r\n\r\n")
		if strings.Contains(strings.ToLower(head), "transfer-encoding") || body != "hello world" {
			t.Errorf("response = %q, want hello world without Transfer-Encoding", raw)
		}
	})
}

// RFC 9112 §3.2.2: absolute-form is forwarded as origin-form, with a Host
// taken from the request target rather than the received Host field.
func TestAbsoluteForm(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	cases := []struct{ name, raw, line, host string }{
		{"path and query", "GET http://example.com/path?q HTTP/1.1\r\nHost: example.com\r\n\r\n", "GET /path?q HTTP/1.1", "example.com"},
		{"host differs from target", "GET http://example.com:8080/p HTTP/1.1\r\nHost: other.example\r\n\r\n", "GET /p HTTP/1.1", "example.com:8080"},
		{"empty path", "GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", "GET / HTTP/1.1", "example.com"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w.backend.reset(echo)
			_, r := w.roundTrip(t, "GET", tc.raw)
			if r.StatusCode != 200 {
				t.Errorf("response = %d %q, want 200", r.StatusCode, r.body)
			}
			reqs := w.backend.requests()
			if len(reqs) != 1 {
				t.Fatalf("backend got %d requests, want 1", len(reqs))
			}
			line, _, _ := strings.Cut(string(reqs[0].head), "\r\n")
			if line != tc.line {
				t.Errorf("backend request line = %q, want %q", line, tc.line)
			}
			if h := reqs[0].values("Host"); len(h) != 1 || h[0] != tc.host {
				t.Errorf("backend Host = %q, want exactly [%s]", h, tc.host)
			}
		})
	}
}

// RFC 9110 §7.8 and §15.2.2: after 101 the connection is a tunnel.
func TestUpgrade(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	w.backend.reset(func(c *backendConn, r *request) bool {
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nhello from backend")
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		ping := make([]byte, 4)
		if _, err := io.ReadFull(c.br, ping); err == nil {
			io.WriteString(c, "pong:"+string(ping))
		}
		io.Copy(io.Discard, c.br) // until the client goes
		return false
	})
	c := w.dial(t)
	c.send("GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	r, err := c.tryRead("GET")
	if err != nil {
		t.Fatalf("reading the 101: %v", err)
	}
	if r.StatusCode != 101 || !hasToken(r.Header.Values("Upgrade"), "websocket") || !hasToken(r.Header.Values("Connection"), "upgrade") {
		t.Fatalf("response = %d %v, want 101 with Upgrade: websocket and Connection: Upgrade", r.StatusCode, r.Header)
	}
	greeting := make([]byte, len("hello from backend"))
	c.c.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := io.ReadFull(c.br, greeting); err != nil || string(greeting) != "hello from backend" {
		t.Fatalf("tunnel from backend: %q, %v, want %q", greeting, err, "hello from backend")
	}
	c.send("ping")
	pong := make([]byte, len("pong:ping"))
	if _, err := io.ReadFull(c.br, pong); err != nil || string(pong) != "pong:ping" {
		t.Fatalf("tunnel round trip: %q, %v, want %q", pong, err, "pong:ping")
	}
	reqs := w.backend.requests()
	if len(reqs) != 1 || !hasToken(reqs[0].values("Upgrade"), "websocket") || !hasToken(reqs[0].values("Connection"), "upgrade") {
		t.Errorf("backend got %v, want one request with Upgrade: websocket and Connection: upgrade", reqs)
	}
}

// RFC 9112 §6.3 rule 8: a response without Content-Length or chunked
// coding ends when the server closes. The proxy passes the whole body on,
// then closes too, or re-frames it as chunked.
func TestUnframedResponse(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	body := strings.Repeat("0123456789abcdef", 64<<10/16) + "end"
	w.backend.reset(func(c *backendConn, r *request) bool {
		if r.target != "/unframed" {
			return echo(c, r)
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"+body)
		return false
	})
	c, r := w.roundTrip(t, "GET", "GET /unframed HTTP/1.1\r\nHost: example.com\r\n\r\n")
	if r.StatusCode != 200 || string(r.body) != body {
		t.Fatalf("response = %d with %d bytes, want 200 with the %d bytes sent", r.StatusCode, len(r.body), len(body))
	}
	if len(r.TransferEncoding) > 0 || r.ContentLength >= 0 {
		t.Logf("weldr re-frames the body (Transfer-Encoding %v, Content-Length %d)", r.TransferEncoding, r.ContentLength)
		checkNext(t, c)
	} else {
		t.Logf("weldr passes the body on unframed and closes")
	}
}
