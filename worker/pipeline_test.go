package worker

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weldr-proxy/weldr/ipc"
)

// Answers to pipelined requests wait in the client's buffer while the next
// request is already here, and go out together; they never wait on the
// client, on a new backend connection, or on a slow backend for long.

// holdFor sets how long answers may be held while weldr waits on a backend,
// for one test (the tests of this package do not run in parallel).
func holdFor(t *testing.T, d time.Duration) ipc.Settings {
	t.Helper()
	old := pipelineHold
	pipelineHold = d
	t.Cleanup(func() { pipelineHold = old })
	set := testSettings()
	set.ResponseHeaderTimeout = d // the hold is bounded by it too
	return set
}

// dialRaw opens a client connection to the worker.
func dialRaw(t *testing.T, h *harness) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(waitLimit))
	return c, bufio.NewReader(c)
}

// readAnswer reads one response from br and checks it is 200 with body.
func readAnswer(t *testing.T, br *bufio.Reader, what, body string) {
	t.Helper()
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	got, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || res.StatusCode != http.StatusOK || string(got) != body {
		t.Fatalf("%s = %d %q, %v; want 200 %q", what, res.StatusCode, got, err, body)
	}
}

func TestPipelinedAnswersGoOutInOneWrite(t *testing.T) {
	set := holdFor(t, waitLimit)
	h := startWorker(t, set, named(t, "a"))
	c, _ := dialRaw(t, h)
	const n = 8
	io.WriteString(c, strings.Repeat("GET / HTTP/1.1\r\nHost: x\r\n\r\n", n))

	// One write on loopback arrives whole: the first read gets it all.
	buf := make([]byte, 64<<10)
	k, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(bytes.NewReader(buf[:k]))
	for i := range n {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("the first read held %d of the %d answers (then %v): they were not written together", i, n, err)
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK || string(body) != "a" {
			t.Fatalf("answer %d = %d %q, want 200 \"a\"", i+1, res.StatusCode, body)
		}
	}
	h.answered.Add(n)
	c.Close()
	sum := h.finish(t)
	checkClients(t, sum, n, 0)
}

// A fast answer does not wait for the slow one pipelined behind it, past
// the hold.
func TestPipelinedAnswerNotHeldBySlowBackend(t *testing.T) {
	so := newSlowOrigin(t, "a")
	set := testSettings()
	set.ResponseHeaderTimeout = 2 * waitLimit // not what ends the wait
	h := startWorker(t, set, so.server)
	c, br := dialRaw(t, h)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	readAnswer(t, br, "the answer to the first request, while the second waits on its backend", "a")
	so.free()
	readAnswer(t, br, "the answer to the slow request", "a")
}

// A client may wait for its earlier answers before sending a body.
func TestPipelinedAnswersGoOutBeforeReadingABody(t *testing.T) {
	set := holdFor(t, waitLimit)
	h := startWorker(t, set, named(t, "a"))
	c, br := dialRaw(t, h)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
	readAnswer(t, br, "the answer to the GET, before the POST's body was sent", "a")
	io.WriteString(c, "hello")
	readAnswer(t, br, "the answer to the POST", "a")
}

// Connecting to a backend may take long: held answers go out first.
func TestPipelinedAnswersGoOutBeforeConnecting(t *testing.T) {
	set := holdFor(t, waitLimit)
	so := newSlowOrigin(t, "b")
	h := startWorker(t, set, named(t, "a"), so.server)
	c, br := dialRaw(t, h)
	// Round robin: the first request goes to a, the second to b, on a new
	// connection.
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	readAnswer(t, br, "the answer to the first request, while the second waits on a new connection's backend", "a")
	so.free()
	readAnswer(t, br, "the answer to the slow request", "b")
}

// An interim answer (100, dropped) does not hold the earlier answers until
// the final one.
func TestPipelinedAnswersGoOutAfterInterim(t *testing.T) {
	set := holdFor(t, waitLimit)
	release := make(chan struct{})
	defer close(release)
	s := rawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/slow" {
				io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
				<-release
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
		}
	})
	h := startWorker(t, set, s)
	c, br := dialRaw(t, h)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	readAnswer(t, br, "the answer to the first request, while the second has only its 100", "a")
	release <- struct{}{}
	readAnswer(t, br, "the answer to the slow request", "a")
}

// A client that resets its connection in the middle of a pipeline: weldr
// stops forwarding its requests once a write of held answers fails, not
// after all it had read.
func TestPipelinedClientGoneStopsForwarding(t *testing.T) {
	set := holdFor(t, waitLimit)
	var forwarded atomic.Int64
	release := make(chan struct{})
	big := strings.Repeat("x", 1000) // each answer's head is over 1 KiB
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		forwarded.Add(1)
		if r.URL.Path == "/first" {
			<-release
		}
		w.Header().Set("X-Big", big)
		w.WriteHeader(http.StatusNoContent)
	})
	h := startWorker(t, set, s)
	c, _ := dialRaw(t, h)
	const n = 500 // about 14 KiB of requests: all read at once
	io.WriteString(c, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n"+strings.Repeat("GET / HTTP/1.1\r\nHost: x\r\n\r\n", n))
	waitFor(t, "the first request at the backend", func() bool { return forwarded.Load() == 1 })
	c.(*net.TCPConn).SetLinger(0)
	c.Close() // a reset
	close(release)
	h.waitTotals(t, "a failed client", func(s totals) bool { return s.clientFailed >= 1 })
	if got := forwarded.Load(); got > 100 {
		t.Errorf("the backend got %d of the %d requests, the client having reset its connection after the first; want about one buffer of answers' worth (16 KiB, about 15)", got, n+1)
	}
}
