package worker

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weldr-proxy/weldr/ipc"
)

// echoed is what the echo backend saw of a request.
type echoed struct {
	Method           string
	RequestURI       string
	Host             string
	Proto            string
	Header           http.Header
	TransferEncoding []string
	ContentLength    int64
	BodyLen          int
	BodySHA          string
}

// echoOrigin starts a backend that answers every request with what it saw,
// as JSON, and counts the requests it got.
func echoOrigin(t *testing.T) (ipc.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		hash := sha256.New()
		size, err := io.Copy(hash, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(echoed{
			Method: r.Method, RequestURI: r.RequestURI, Host: r.Host, Proto: r.Proto,
			Header: r.Header, TransferEncoding: r.TransferEncoding, ContentLength: r.ContentLength,
			BodyLen: int(size), BodySHA: hex.EncodeToString(hash.Sum(nil)),
		})
	})
	return s, &n
}

// exchange sends raw request bytes to addr over a new connection and reads
// one response to a request with the given method.
func exchange(t *testing.T, addr, method, raw string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitLimit))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the response to %q: %v", raw, err)
	}
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading the response body to %q: %v", raw, err)
	}
	return res, body
}

// readEcho reads a response of the echo backend from br and decodes what
// it saw.
func readEcho(br *bufio.Reader) (echoed, error) {
	var e echoed
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		return e, err
	}
	defer res.Body.Close()
	err = json.NewDecoder(res.Body).Decode(&e)
	return e, err
}

// echoExchange sends a raw GET with the given request line target and
// header lines through the proxy and returns what the echo backend saw.
func echoExchange(t *testing.T, h *harness, target string, headers ...string) echoed {
	t.Helper()
	raw := "GET " + target + " HTTP/1.1\r\n" + strings.Join(headers, "\r\n")
	if len(headers) > 0 {
		raw += "\r\n"
	}
	res, body := exchange(t, h.addr, "GET", raw+"\r\n")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d %q, want 200", target, res.StatusCode, body)
	}
	var e echoed
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("decoding the echo %q: %v", body, err)
	}
	return e
}

func TestRequestHeaders(t *testing.T) {
	echo, _ := echoOrigin(t)
	h := startWorker(t, testSettings(), echo)

	// want maps a header to its expected values; nil means absent.
	tests := []struct {
		name    string
		headers []string
		want    map[string][]string
	}{
		{"forwarding headers set", []string{"Host: shop.example"}, map[string][]string{
			"X-Forwarded-For":   {"127.0.0.1"},
			"X-Forwarded-Host":  {"shop.example"},
			"X-Forwarded-Proto": {"http"},
			"Via":               {"1.1 weldr"},
		}},
		{"x-forwarded-for appended", []string{"Host: x", "X-Forwarded-For: 203.0.113.7"}, map[string][]string{
			"X-Forwarded-For": {"203.0.113.7, 127.0.0.1"},
		}},
		{"x-forwarded-for over several lines", []string{"Host: x", "X-Forwarded-For: 203.0.113.7, 198.51.100.1", "X-Forwarded-For: 192.0.2.9"}, map[string][]string{
			"X-Forwarded-For": {"203.0.113.7, 198.51.100.1, 192.0.2.9, 127.0.0.1"},
		}},
		{"client's forwarded host and proto replaced", []string{"Host: real.example", "X-Forwarded-Host: evil.example", "X-Forwarded-Proto: https"}, map[string][]string{
			"X-Forwarded-Host":  {"real.example"},
			"X-Forwarded-Proto": {"http"},
		}},
		{"via appended", []string{"Host: x", "Via: 1.0 fred"}, map[string][]string{
			"Via": {"1.0 fred", "1.1 weldr"},
		}},
		{"hop-by-hop headers dropped", []string{
			"Host: x",
			"Connection: keep-alive, X-Hop, x-other-hop",
			"X-Hop: 1",
			"X-Other-Hop: 2",
			"Keep-Alive: timeout=5",
			"Proxy-Authorization: Basic eDp5",
			"Proxy-Connection: keep-alive",
			"Proxy-Whatever: 1",
			"Upgrade: h2c",
			"TE: gzip",
			"Trailer: X-T",
			"X-Kept: yes",
		}, map[string][]string{
			"Connection": nil, "X-Hop": nil, "X-Other-Hop": nil, "Keep-Alive": nil,
			"Proxy-Authorization": nil, "Proxy-Connection": nil, "Proxy-Whatever": nil,
			"Upgrade": nil, "Te": nil, "Trailer": nil,
			"X-Kept": {"yes"},
		}},
		{"headers named by connection close dropped", []string{"Host: x", "Connection: close, X-Hop", "X-Hop: 1"}, map[string][]string{
			"Connection": nil, "X-Hop": nil,
		}},
		{"te trailers kept", []string{"Host: x", "TE: trailers, deflate;q=0.5"}, map[string][]string{
			"Te": {"trailers"},
		}},
		{"unknown and repeated headers forwarded", []string{"Host: x", "X-Custom: a b  c", "X-Multi: 1", "X-Multi: 2", "Cookie: a=1", "Authorization: Bearer t"}, map[string][]string{
			"X-Custom":      {"a b  c"},
			"X-Multi":       {"1", "2"},
			"Cookie":        {"a=1"},
			"Authorization": {"Bearer t"},
		}},
		{"no user agent added", []string{"Host: x"}, map[string][]string{
			"User-Agent": nil,
		}},
		{"user agent forwarded", []string{"Host: x", "User-Agent: curl/8.5.0"}, map[string][]string{
			"User-Agent": {"curl/8.5.0"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := echoExchange(t, h, "/", tc.headers...)
			for k, want := range tc.want {
				got, ok := e.Header[k]
				if want == nil {
					if ok {
						t.Errorf("backend got %s: %q, want no such header", k, got)
					}
					continue
				}
				if strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("backend got %s: %q, want %q", k, got, want)
				}
			}
		})
	}
}

// An HTTP/1.0 request may come without a Host: the backend then gets no
// X-Forwarded-Host rather than an empty one.
func TestNoHostNoForwardedHost(t *testing.T) {
	echo, _ := echoOrigin(t)
	h := startWorker(t, testSettings(), echo)
	res, body := exchange(t, h.addr, "GET", "GET / HTTP/1.0\r\n\r\n")
	var e echoed
	if err := json.Unmarshal(body, &e); res.StatusCode != http.StatusOK || err != nil {
		t.Fatalf("HTTP/1.0 GET without Host = %d %q (%v), want 200 and the echo", res.StatusCode, body, err)
	}
	if got, ok := e.Header["X-Forwarded-Host"]; ok {
		t.Errorf("backend got X-Forwarded-Host: %q, want no such header", got)
	}
	if got := e.Header["X-Forwarded-For"]; len(got) != 1 || got[0] != "127.0.0.1" {
		t.Errorf("backend got X-Forwarded-For: %q, want 127.0.0.1", got)
	}
}

func TestRequestTarget(t *testing.T) {
	echo, _ := echoOrigin(t)
	h := startWorker(t, testSettings(), echo)
	for _, target := range []string{
		"/",
		"/plain/path",
		"/a%2Fb/c",
		"/sp%20ace/%E2%82%AC?x=%2F",
		"/q?a=1&b=%20x&a=2&empty=&flag",
		"/q?semi;colon=1&plus=a+b",
		"/trailing/",
		"//double//slash",
	} {
		t.Run(target, func(t *testing.T) {
			if e := echoExchange(t, h, target, "Host: x"); e.RequestURI != target {
				t.Errorf("backend got request target %q, want %q", e.RequestURI, target)
			}
		})
	}
}

func TestHostHeader(t *testing.T) {
	tests := []struct {
		name         string
		preserveHost bool
		wantBackend  bool // the backend's host:port rather than the client's Host
	}{
		{"preserved", true, false},
		{"backend's", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			echo, _ := echoOrigin(t)
			set := testSettings()
			set.PreserveHost = tc.preserveHost
			h := startWorker(t, set, echo)
			e := echoExchange(t, h, "/", "Host: shop.example:8443")
			want := "shop.example:8443"
			if tc.wantBackend {
				want = echo.ID
			}
			if e.Host != want {
				t.Errorf("backend got Host %q, want %q", e.Host, want)
			}
			if got := e.Header.Get("X-Forwarded-Host"); got != "shop.example:8443" {
				t.Errorf("backend got X-Forwarded-Host %q, want %q", got, "shop.example:8443")
			}
		})
	}
}

func TestResponseHeaders(t *testing.T) {
	tests := []struct {
		name       string
		connection string
	}{
		{"connection names headers", "Connection: X-Hop"},
		{"connection close names headers", "Connection: close, X-Hop"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			backend := rawOrigin(t, func(c net.Conn, br *bufio.Reader) {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\n"+
					tc.connection+"\r\n"+
					"X-Hop: 1\r\n"+
					"Keep-Alive: timeout=5\r\n"+
					"Proxy-Authenticate: Basic\r\n"+
					"Proxy-Other: 1\r\n"+
					"Upgrade: foo\r\n"+
					"X-Custom: c\r\n"+
					"X-Multi: 1\r\n"+
					"X-Multi: 2\r\n"+
					"Set-Cookie: a=1\r\n"+
					"Set-Cookie: b=2\r\n"+
					"Via: 1.1 origin\r\n"+
					"Content-Length: 2\r\n"+
					"\r\n"+
					"ok")
			})
			h := startWorker(t, testSettings(), backend)
			res, err := h.client.Get(h.url + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil || string(body) != "ok" {
				t.Fatalf("GET / body = %q, %v; want \"ok\"", body, err)
			}
			for _, k := range []string{"Keep-Alive", "Proxy-Authenticate", "Proxy-Other", "Upgrade"} {
				if v, ok := res.Header[k]; ok {
					t.Errorf("client got %s: %q, want no such header", k, v)
				}
			}
			if v, ok := res.Header["X-Hop"]; ok {
				// net/http's client deletes the whole Connection header of
				// a response that holds "close" (shouldClose in
				// transfer.go): the proxy must learn the names it lists
				// some other way.
				t.Errorf("client got X-Hop: %q after the backend sent %q, want it dropped", v, tc.connection)
			}
			if hasToken(res.Header["Connection"], "x-hop") {
				t.Errorf("client got Connection: %q, want the backend's Connection dropped", res.Header["Connection"])
			}
			for k, want := range map[string][]string{
				"X-Custom":   {"c"},
				"X-Multi":    {"1", "2"},
				"Set-Cookie": {"a=1", "b=2"},
				"Via":        {"1.1 origin", "1.1 weldr"},
			} {
				if got := res.Header[k]; strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("client got %s: %q, want %q", k, got, want)
				}
			}
		})
	}
}

func TestViaOnResponse(t *testing.T) {
	h := startWorker(t, testSettings(), named(t, "a"))
	res, err := h.client.Get(h.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if got := res.Header.Values("Via"); len(got) != 1 || got[0] != "1.1 weldr" {
		t.Errorf("client got Via: %q, want [\"1.1 weldr\"]", got)
	}
}

func TestMethods(t *testing.T) {
	echo, _ := echoOrigin(t)
	h := startWorker(t, testSettings(), echo)
	for _, method := range []string{"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"} {
		t.Run(method, func(t *testing.T) {
			var body io.Reader
			wantLen := 0
			if method == "POST" || method == "PUT" || method == "PATCH" {
				body = strings.NewReader("payload")
				wantLen = len("payload")
			}
			req, err := http.NewRequest(method, h.url+"/m", body)
			if err != nil {
				t.Fatal(err)
			}
			res, err := h.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var e echoed
			if err := json.NewDecoder(res.Body).Decode(&e); err != nil {
				t.Fatalf("%s /m: decoding the echo: %v (status %d)", method, err, res.StatusCode)
			}
			if e.Method != method || e.BodyLen != wantLen {
				t.Errorf("backend got %s with a %d-byte body, want %s with %d", e.Method, e.BodyLen, method, wantLen)
			}
		})
	}
}

// testData returns n deterministic pseudo-random bytes and their sha256.
func testData(n int, seed uint64) ([]byte, string) {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed)})
	r.Read(b)
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

func TestChunkedUpload(t *testing.T) {
	echo, _ := echoOrigin(t)
	h := startWorker(t, testSettings(), echo)
	data, sum := testData(3<<20, 1)

	pr, pw := io.Pipe()
	written := make(chan error, 1)
	go func() {
		var err error
		for rest := data; len(rest) > 0 && err == nil; {
			n := min(len(rest), 50_000)
			_, err = pw.Write(rest[:n])
			rest = rest[n:]
		}
		pw.CloseWithError(err)
		written <- err
	}()
	t.Cleanup(func() {
		pr.CloseWithError(io.ErrClosedPipe) // ends the writer if the request broke off
		<-written
	})

	req, err := http.NewRequest("POST", h.url+"/upload", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1 // unknown: the client sends it chunked
	res, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var e echoed
	if err := json.NewDecoder(res.Body).Decode(&e); err != nil {
		t.Fatalf("decoding the echo: %v (status %d)", err, res.StatusCode)
	}
	if e.BodyLen != len(data) || e.BodySHA != sum {
		t.Errorf("backend got %d bytes with sha256 %s, want %d bytes with %s", e.BodyLen, e.BodySHA, len(data), sum)
	}
	if len(e.TransferEncoding) != 1 || e.TransferEncoding[0] != "chunked" {
		t.Errorf("backend got Transfer-Encoding %q, want chunked", e.TransferEncoding)
	}
}

func TestUploadWithContentLength(t *testing.T) {
	echo, _ := echoOrigin(t)
	h := startWorker(t, testSettings(), echo)
	data, sum := testData(1<<20, 2)
	res, err := h.client.Post(h.url+"/upload", "application/octet-stream", strings.NewReader(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var e echoed
	if err := json.NewDecoder(res.Body).Decode(&e); err != nil {
		t.Fatalf("decoding the echo: %v (status %d)", err, res.StatusCode)
	}
	if e.BodyLen != len(data) || e.BodySHA != sum || e.ContentLength != int64(len(data)) {
		t.Errorf("backend got %d bytes (Content-Length %d) with sha256 %s, want %d bytes with %s",
			e.BodyLen, e.ContentLength, e.BodySHA, len(data), sum)
	}
}

func TestLargeResponse(t *testing.T) {
	data, sum := testData(1<<20, 3)
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Write(data)
	})
	h := startWorker(t, testSettings(), s)
	res, err := h.client.Get(h.url + "/large")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	hash := sha256.New()
	n, err := io.Copy(hash, res.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	if got := hex.EncodeToString(hash.Sum(nil)); n != int64(len(data)) || got != sum {
		t.Errorf("client got %d bytes with sha256 %s, want %d with %s", n, got, len(data), sum)
	}
	if res.ContentLength != int64(len(data)) {
		t.Errorf("client got Content-Length %d, want %d", res.ContentLength, len(data))
	}
}

func TestStreamingResponseIsFlushed(t *testing.T) {
	readFirst := make(chan struct{})
	var once sync.Once
	letGo := func() { once.Do(func() { close(readFirst) }) }
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-readFirst: // the client got the first chunk through the proxy
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second\n")
	})
	t.Cleanup(letGo)
	h := startWorker(t, testSettings(), s)

	res, err := h.client.Get(h.url + "/stream")
	if err != nil {
		letGo()
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.ContentLength != -1 {
		t.Errorf("client got Content-Length %d, want a chunked response", res.ContentLength)
	}
	first := make(chan string, 1)
	go func() {
		b := make([]byte, len("first\n"))
		n, _ := io.ReadFull(res.Body, b)
		first <- string(b[:n])
	}()
	select {
	case got := <-first:
		if got != "first\n" {
			t.Errorf("first chunk = %q, want %q", got, "first\n")
		}
	case <-time.After(waitLimit):
		t.Errorf("the first chunk did not arrive while the backend held the rest back: the proxy did not flush it")
		letGo()
		<-first
	}
	letGo()
	rest, err := io.ReadAll(res.Body)
	if err != nil || string(rest) != "second\n" {
		t.Errorf("rest of the stream = %q, %v; want %q", rest, err, "second\n")
	}
}

func TestResponsesWithoutBody(t *testing.T) {
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/not-modified":
			w.Header().Set("ETag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
		case "/no-content":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Content-Length", "11")
			w.Header().Set("X-Path", r.URL.Path)
			if r.Method != "HEAD" {
				io.WriteString(w, "Hello World")
			}
		}
	})
	h := startWorker(t, testSettings(), s)

	// Pipelined on one connection: a body where none belongs would be read
	// as the start of the next response and break it.
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitLimit))
	io.WriteString(c, "HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n"+
		"GET /not-modified HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"v1\"\r\n\r\n"+
		"GET /no-content HTTP/1.1\r\nHost: x\r\n\r\n"+
		"GET /get HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	tests := []struct {
		method, path string
		code         int
		body         string
	}{
		{"HEAD", "/head", http.StatusOK, ""},
		{"GET", "/not-modified", http.StatusNotModified, ""},
		{"GET", "/no-content", http.StatusNoContent, ""},
		{"GET", "/get", http.StatusOK, "Hello World"},
	}
	for _, tc := range tests {
		res, err := http.ReadResponse(br, &http.Request{Method: tc.method})
		if err != nil {
			t.Fatalf("reading the response to %s %s: %v", tc.method, tc.path, err)
		}
		body, err := io.ReadAll(res.Body)
		if err != nil || res.StatusCode != tc.code || string(body) != tc.body {
			t.Errorf("%s %s = %d %q, %v; want %d %q", tc.method, tc.path, res.StatusCode, body, err, tc.code, tc.body)
		}
		if tc.method == "HEAD" && (res.Header.Get("Content-Length") != "11" || res.Header.Get("X-Path") != "/head") {
			t.Errorf("HEAD %s headers = %v, want Content-Length 11 and X-Path /head", tc.path, res.Header)
		}
	}
}

func TestPipelinedRequestsAnsweredInOrder(t *testing.T) {
	echo, _ := echoOrigin(t)
	h := startWorker(t, testSettings(), echo)
	c, br := dialRaw(t, h)
	var raw strings.Builder
	for i := 0; i < 5; i++ {
		fmt.Fprintf(&raw, "GET /%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
	}
	fmt.Fprintf(&raw, "POST /5 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
	fmt.Fprintf(&raw, "GET /6 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	io.WriteString(c, raw.String())
	for i := 0; i <= 6; i++ {
		e, err := readEcho(br)
		if err != nil || e.RequestURI != "/"+strconv.Itoa(i) {
			t.Errorf("response %d answers %q (%v), want /%d", i, e.RequestURI, err, i)
		}
	}
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after the Connection: close request, read = %d, %v; want EOF", n, err)
	}
}

// One kept-alive connection gets requests in every shape, with pauses in
// which the worker waits for the rest: whole heads, a head in two parts, a
// body that comes later, two pipelined requests and part of a third. The
// answers come in order, each restarts the idle timeout, and the
// connection closes when it stays idle.
func TestKeptAliveConnectionTakesRequestsInEveryShape(t *testing.T) {
	echo, _ := echoOrigin(t)
	set := testSettings()
	set.IdleTimeout = 300 * time.Millisecond
	h := startWorker(t, set, echo)
	c, br := dialRaw(t, h)
	pause := func() { time.Sleep(20 * time.Millisecond) }
	answer := func(uri string, bodyLen int) {
		t.Helper()
		if e, err := readEcho(br); err != nil || e.RequestURI != uri || e.BodyLen != bodyLen {
			t.Fatalf("answer to %s: %+v (%v); want %s with a body of %d", uri, e, err, uri, bodyLen)
		}
	}
	for _, part := range [][]string{
		{"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"GET /2 HTTP/1.1\r\nHo", "st: x\r\n\r\n"},
		{"POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n", "abc"},
		{"GET /4 HTTP/1.1\r\nHost: x\r\n\r\nGET /5 HTTP/1.1\r\nHost: x\r\n\r\nGET /6 HTTP/1.1\r\nHo", "st: x\r\n\r\n"},
		{"GET /7 HTTP/1.1\r\nHost: x\r\n\r\n"},
	} {
		for _, p := range part {
			pause()
			io.WriteString(c, p)
		}
	}
	answer("/1", 0)
	answer("/2", 0)
	answer("/3", 3)
	for _, uri := range []string{"/4", "/5", "/6", "/7"} {
		answer(uri, 0)
	}
	// Each answer restarts the idle timeout: requests a third of it apart
	// keep the connection open well past it.
	for i := 8; i < 14; i++ {
		time.Sleep(set.IdleTimeout / 3)
		fmt.Fprintf(c, "GET /%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
		answer("/"+strconv.Itoa(i), 0)
	}
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("past the idle timeout, read = %d, %v; want EOF", n, err)
	}
}

// Bytes that arrive while the worker waits on a backend are read once the
// answer is out, though the poller may have seen them come already: the
// worker waits for a client only after a read that left its socket empty,
// FIN included. Each case sends first, then more while /slow is under way,
// and wants the answers in order; a half-closing client wants the
// connection closed right after them.
func TestBytesArrivingDuringABackendWaitAreRead(t *testing.T) {
	cases := []struct {
		name, first, during string
		halfClose           bool
		answers             []string
	}{
		// /slow has a body: the worker read it the ordinary way.
		{name: "after a request with a body",
			first:   "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
			during:  "GET /next HTTP/1.1\r\nHost: x\r\n\r\n",
			answers: []string{"/slow", "/next"}},
		// ... and a whole request was buffered behind it.
		{name: "with a request buffered",
			first:   "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /a HTTP/1.1\r\nHost: x\r\n\r\n",
			during:  "GET /b HTTP/1.1\r\nHost: x\r\n\r\n",
			answers: []string{"/slow", "/a", "/b"}},
		// A client that half-closes after its last request.
		{name: "then EOF",
			first:     "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n",
			during:    "GET /next HTTP/1.1\r\nHost: x\r\n\r\n",
			halfClose: true,
			answers:   []string{"/slow", "/next"}},
	}
	// Pipelined requests that fill the 16 KiB read buffer exactly, and one
	// more: the read that takes the first ones leaves it in the socket.
	req := "GET /p HTTP/1.1\r\nHost: x\r\nX-Pad: "
	req += strings.Repeat("p", 64-len(req)-4) + "\r\n\r\n"
	const n = 16<<10/64 + 1
	burst := struct {
		name, first, during string
		halfClose           bool
		answers             []string
	}{name: "a burst over the read buffer",
		first:   "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n",
		during:  strings.Repeat(req, n),
		answers: []string{"/slow"}}
	for range n {
		burst.answers = append(burst.answers, "/p")
	}
	cases = append(cases, burst)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			arrived := make(chan struct{}, 1)
			_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				if r.URL.Path == "/slow" {
					arrived <- struct{}{}
					time.Sleep(100 * time.Millisecond)
				}
				io.WriteString(w, r.URL.Path)
			})
			h := startWorker(t, testSettings(), s) // idle timeout: longer than the read deadline
			c, br := dialRaw(t, h)
			// A first request and its answer, after which the worker
			// waits for the next: its reads now tell what they leave
			// (TCP_INQ), as on any connection kept alive.
			io.WriteString(c, "GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
			readAnswer(t, br, "/warm", "/warm")
			time.Sleep(20 * time.Millisecond)
			io.WriteString(c, tc.first)
			select {
			case <-arrived:
			case <-time.After(waitLimit):
				t.Fatal("the request never reached the backend")
			}
			go func() {
				io.WriteString(c, tc.during)
				if tc.halfClose {
					c.(*net.TCPConn).CloseWrite()
				}
			}()
			for _, want := range tc.answers {
				readAnswer(t, br, want, want)
			}
			if tc.halfClose {
				if n, err := br.Read(make([]byte, 1)); err != io.EOF {
					t.Errorf("after the last answer to a half-closed client, read = %d, %v; want EOF", n, err)
				}
			}
		})
	}
}

func TestHTTP10Client(t *testing.T) {
	h := startWorker(t, testSettings(), named(t, "a"))
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitLimit))
	io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
	all, err := io.ReadAll(c) // the proxy closes after answering HTTP/1.0
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(all))), nil)
	if err != nil {
		t.Fatalf("reading %q: %v", all, err)
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK || string(body) != "a" {
		t.Errorf("HTTP/1.0 GET / = %d %q, want 200 \"a\"", res.StatusCode, body)
	}
}

func TestNoServer(t *testing.T) {
	tests := []struct {
		name    string
		servers func(t *testing.T) []ipc.Server
	}{
		{"empty pool", func(t *testing.T) []ipc.Server { return nil }},
		{"all down", func(t *testing.T) []ipc.Server {
			a := named(t, "a")
			a.Down = true
			return []ipc.Server{a}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := startWorker(t, testSettings(), tc.servers(t)...)
			res, err := h.client.Get(h.url + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("GET / = %d, want 503", res.StatusCode)
			}
			if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("503 Content-Type = %q, want text/plain", ct)
			}
			if len(body) == 0 || len(body) > 100 {
				t.Errorf("503 body = %q, want a short message", body)
			}
			checkClients(t, h.finish(t), 0, 1)
		})
	}
}

func TestNoServerAfterRemovals(t *testing.T) {
	a, b := named(t, "a"), named(t, "b")
	h := startWorker(t, testSettings(), a, b)
	h.send(t, ipc.Message{Kind: ipc.RemoveServer, ID: a.ID})
	h.send(t, ipc.Message{Kind: ipc.MarkServerDown, ID: b.ID})
	waitFor(t, "503 once no server is up", func() bool {
		code, _ := h.get(t, "/")
		return code == http.StatusServiceUnavailable
	})
	h.send(t, ipc.Message{Kind: ipc.MarkServerActive, ID: b.ID})
	h.waitRouting(t, "b")
}

func TestRetryOnRefusedConnection(t *testing.T) {
	echo, _ := echoOrigin(t)
	bad := refusing(t)
	h := startWorker(t, testSettings(), bad, echo)
	const n = 10
	for i := 0; i < n; i++ {
		// Half are POSTs: a body not yet sent does not stop a retry.
		method, body := "GET", io.Reader(nil)
		if i%2 == 1 {
			method, body = "POST", strings.NewReader("payload")
		}
		req, err := http.NewRequest(method, h.url+"/", body)
		if err != nil {
			t.Fatal(err)
		}
		res, err := h.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e echoed
		err = json.NewDecoder(res.Body).Decode(&e)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || err != nil || e.Method != method {
			t.Fatalf("%s #%d = %d (%v), want 200 from the server that is up", method, i, res.StatusCode, err)
		}
		if method == "POST" && e.BodyLen != len("payload") {
			t.Errorf("POST #%d reached the backend with %d body bytes, want %d", i, e.BodyLen, len("payload"))
		}
	}
	sum := h.finish(t)
	checkClients(t, sum, n, 0)
	checkServer(t, sum, ipc.ServerStats{ID: echo.ID, Success: n})
	// Round robin picks the refusing server for every other request.
	checkServer(t, sum, ipc.ServerStats{ID: bad.ID, Failed: n / 2, ConnectFailed: n / 2})
}

func TestAllServersRefuse(t *testing.T) {
	bad1, bad2 := refusing(t), refusing(t)
	h := startWorker(t, testSettings(), bad1, bad2)
	const n = 3
	for i := 0; i < n; i++ {
		res, err := h.client.Get(h.url + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusBadGateway {
			t.Errorf("GET / = %d %q, want 502", res.StatusCode, body)
		}
		if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || len(body) == 0 {
			t.Errorf("502 = Content-Type %q, body %q; want a short text/plain body", ct, body)
		}
	}
	sum := h.finish(t)
	checkClients(t, sum, 0, n)
	// Each request tries each server once.
	checkServer(t, sum, ipc.ServerStats{ID: bad1.ID, Failed: n, ConnectFailed: n})
	checkServer(t, sum, ipc.ServerStats{ID: bad2.ID, Failed: n, ConnectFailed: n})
}

func TestResponseHeaderTimeout(t *testing.T) {
	so := newSlowOrigin(t, "slow")
	set := testSettings()
	set.ResponseHeaderTimeout = 200 * time.Millisecond
	h := startWorker(t, set, so.server)
	res, err := h.client.Get(h.url + "/slow")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("GET /slow = %d %q, want 504", res.StatusCode, body)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || len(body) == 0 {
		t.Errorf("504 = Content-Type %q, body %q; want a short text/plain body", ct, body)
	}
	sum := h.finish(t)
	checkClients(t, sum, 0, 1)
	checkServer(t, sum, ipc.ServerStats{ID: so.server.ID, Failed: 1})
}

func TestBackendError(t *testing.T) {
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	})
	h := startWorker(t, testSettings(), s)
	code, body := h.get(t, "/")
	if code != http.StatusInternalServerError || body != "boom\n" {
		t.Errorf("GET / = %d %q, want the backend's 500 \"boom\\n\"", code, body)
	}
	sum := h.finish(t)
	checkClients(t, sum, 1, 0)
	checkServer(t, sum, ipc.ServerStats{ID: s.ID, Failed: 1})
}

func TestBackendBreaksOffBody(t *testing.T) {
	tests := []struct {
		name     string
		response string
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + strings.Repeat("x", 100)},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + strings.Repeat("x", 100) + "\r\n"},
		{"chunked, no chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"},
		// Past the read buffer, the rest is spliced (copyFixed).
		{"content-length, spliced", "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n" + strings.Repeat("x", 512<<10)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := rawOrigin(t, func(c net.Conn, br *bufio.Reader) {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, tc.response) // and close
			})
			h := startWorker(t, testSettings(), s)
			res, err := h.client.Get(h.url + "/")
			if err != nil {
				// Aborting the handler without a flush throws away the
				// buffered status line and body: the client then sees a
				// socket closed without any response.
				t.Errorf("GET / = %v, want the response headers and then an error reading the body", err)
			} else if res.StatusCode == http.StatusBadGateway {
				// Nothing of the body had arrived: weldr may still answer
				// with a clean 502 instead of a broken 200.
				res.Body.Close()
			} else {
				body, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err == nil {
					t.Errorf("reading a body the backend broke off = %d bytes, no error; want an error (or a 502)", len(body))
				}
			}
			sum := h.finish(t)
			checkClients(t, sum, 0, 1)
			checkServer(t, sum, ipc.ServerStats{ID: s.ID, Failed: 1})
		})
	}
}

// A client that goes away during a large answer, which weldr splices, is
// the client's failure, not the backend's.
func TestClientLeavesDuringALargeAnswer(t *testing.T) {
	data, _ := testData(16<<20, 4)
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Write(data)
	})
	h := startWorker(t, testSettings(), s)
	c, br := dialRaw(t, h)
	io.WriteString(c, "GET /large HTTP/1.1\r\nHost: x\r\n\r\n")
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(res.Body, make([]byte, 256<<10)); err != nil {
		t.Fatalf("reading the first 256 KiB: %v", err)
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close() // a reset, with most of the body to come
	sum := h.finish(t)
	checkClients(t, sum, 0, 1)
	checkServer(t, sum, ipc.ServerStats{ID: s.ID, Success: 1})
}

func TestBackendClosesBeforeBody(t *testing.T) {
	// Nothing of the body came: the status line is not committed yet, so
	// the client gets a clean 502 rather than a broken 200.
	s := rawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n") // and close
	})
	h := startWorker(t, testSettings(), s)
	res, err := h.client.Get(h.url + "/")
	if err != nil {
		t.Fatalf("GET / = %v, want a 502", err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusBadGateway || err != nil {
		t.Errorf("GET / = %d %q, %v; want 502", res.StatusCode, body, err)
	}
	sum := h.finish(t)
	checkClients(t, sum, 0, 1)
	checkServer(t, sum, ipc.ServerStats{ID: s.ID, Failed: 1})
}

// upgradeOrigin is a backend that switches to the "echo" protocol and echoes
// bytes until its peer closes.
func upgradeOrigin(t *testing.T) (ipc.Server, *sync.WaitGroup) {
	t.Helper()
	var (
		echoing sync.WaitGroup
		mu      sync.Mutex // guards conns
		conns   []net.Conn
	)
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" || !hasToken(r.Header["Connection"], "upgrade") {
			http.Error(w, "want Connection: Upgrade and Upgrade: echo", http.StatusBadRequest)
			return
		}
		echoing.Add(1)
		defer echoing.Done()
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		io.Copy(c, brw)
	})
	t.Cleanup(func() {
		// The server's Close does not track hijacked connections.
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		echoing.Wait()
	})
	return s, &echoing
}

// dialUpgrade opens a connection through the proxy and switches it to echo.
func dialUpgrade(t *testing.T, h *harness) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, br := dialRaw(t, h)
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	res, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatalf("reading the upgrade response: %v", err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("upgrade request = %d %q, want 101", res.StatusCode, b)
	}
	if res.Header.Get("Upgrade") != "echo" || !hasToken(res.Header["Connection"], "upgrade") {
		t.Errorf("101 headers = %v, want Connection: Upgrade and Upgrade: echo", res.Header)
	}
	if !hasToken(res.Header["Via"], "1.1 weldr") {
		t.Errorf("101 Via = %q, want 1.1 weldr", res.Header["Via"])
	}
	for _, k := range []string{"Content-Length", "Transfer-Encoding"} {
		if v, ok := res.Header[k]; ok {
			t.Errorf("101 carries %s: %q, want none (RFC 9110 §8.6, RFC 9112 §6.1)", k, v)
		}
	}
	return c, br
}

// echoes writes msg through a tunnel and reads it back.
func echoes(c net.Conn, br *bufio.Reader, msg string) (string, error) {
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	b := make([]byte, len(msg))
	n, err := io.ReadFull(br, b)
	return string(b[:n]), err
}

func TestUpgradeTunnel(t *testing.T) {
	s, echoing := upgradeOrigin(t)
	h := startWorker(t, testSettings(), s)
	c, br := dialUpgrade(t, h)
	for _, msg := range []string{"hello", strings.Repeat("tunnel ", 10000), "\x00\x01\xff bytes"} {
		if got, err := echoes(c, br, msg); err != nil || got != msg {
			t.Fatalf("echo of %d bytes through the tunnel = %d bytes, %v; want them back", len(msg), len(got), err)
		}
	}
	c.Close()
	done := make(chan struct{})
	go func() { echoing.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitLimit):
		t.Fatalf("the backend's side of the tunnel was not closed within %v of the client closing", waitLimit)
	}
	sum := h.finish(t)
	checkClients(t, sum, 1, 0)
	checkServer(t, sum, ipc.ServerStats{ID: s.ID, Success: 1})
}

func TestDrainEndsTunnels(t *testing.T) {
	s, _ := upgradeOrigin(t)
	h := startWorker(t, testSettings(), s)
	c, br := dialUpgrade(t, h)
	if got, err := echoes(c, br, "before"); err != nil || got != "before" {
		t.Fatalf("echo through the tunnel = %q, %v; want \"before\"", got, err)
	}
	h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: 300 * time.Millisecond})
	h.mustReturn(t)
	// Run has returned: nothing of the worker may still be serving.
	if got, err := echoes(c, br, "after"); err == nil {
		// http.Server.Shutdown neither waits for nor closes hijacked
		// connections: Run must track its tunnels itself.
		t.Errorf("echo through the tunnel after Run returned = %q, want the tunnel closed by the drain", got)
	}
}

// At the drain's deadline every connection is closed, while a request
// waits on its backend. Closing that request's connection waits for its
// serveReady callback, which ends only when the cut of its backend
// connection reaches it; the closes run apart (closeConns), so the others
// do not wait for it. (Since the cut, this no longer fails if they did.)
func TestDrainDeadlineClosesAllDespiteARequestUnderWay(t *testing.T) {
	so := newSlowOrigin(t, "a")
	set := testSettings()
	set.ResponseHeaderTimeout = time.Minute // past waitLimit: only the release ends /slow
	h := startWorker(t, set, so.server)
	slow := h.getAsync("/slow")
	so.waitArrived(t)
	// Connections sending a body that never ends: not idle, so closed only
	// at the deadline.
	var uploads []net.Conn
	for range 9 { // the closes go in map order: most come after /slow's
		c, _ := dialRaw(t, h)
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
		uploads = append(uploads, c)
	}
	h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: 300 * time.Millisecond})
	for i, c := range uploads {
		if _, err := io.ReadAll(c); isTimeout(err) {
			t.Errorf("upload %d: not closed by the drain's deadline while /slow was under way (%v)", i+1, err)
		}
	}
	so.free()
	waitResult(t, slow)
	h.mustReturn(t)
}

// At the drain's deadline a request still waiting for its backend's answer
// is cut too: the worker ends at the deadline, not when the backend answers
// or the response header timeout runs out.
func TestDrainDeadlineCutsARequestWaitingOnItsBackend(t *testing.T) {
	so := newSlowOrigin(t, "a")
	set := testSettings()
	set.ResponseHeaderTimeout = time.Minute // past waitLimit
	h := startWorker(t, set, so.server)
	slow := h.getAsync("/slow")
	so.waitArrived(t)
	h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: 300 * time.Millisecond})
	h.mustReturn(t)
	if r := waitResult(t, slow); r.err == nil && r.code != http.StatusServiceUnavailable {
		t.Errorf("GET /slow cut by the drain's deadline = %d %q, want 503 or a closed connection", r.code, r.body)
	}
	// The backend did nothing wrong.
	checkServer(t, h.totals(), ipc.ServerStats{ID: so.server.ID})
}

// At the drain's deadline a request still connecting to its backend is cut
// as well, without counting against the server.
func TestDrainDeadlineCutsARequestStillConnecting(t *testing.T) {
	silent := unanswering(t)
	set := testSettings()
	set.ConnectTimeout = time.Minute // past waitLimit
	h := startWorker(t, set, silent)
	res := h.getAsync("/")
	waitConnecting(t, silent.ID)
	h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: 300 * time.Millisecond})
	h.mustReturn(t)
	if r := waitResult(t, res); r.err == nil && r.code != http.StatusServiceUnavailable {
		t.Errorf("GET / cut while connecting = %d %q, want 503 or a closed connection", r.code, r.body)
	}
	checkServer(t, h.totals(), ipc.ServerStats{ID: silent.ID})
}

// waitConnecting waits until a connection to addr (127.0.0.1:port) has sent
// its SYN and waits for the answer, as /proc/net/tcp shows.
func waitConnecting(t *testing.T, addr string) {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	remote := fmt.Sprintf("0100007F:%04X", p)
	for deadline := time.Now().Add(waitLimit); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 3 && f[2] == remote && f[3] == "02" { // SYN_SENT
				return
			}
		}
	}
	t.Fatalf("no connection to %s began within %v", addr, waitLimit)
}

// At the drain's deadline an answer whose backend stalled in the middle of
// the body is cut too, without counting against the backend.
func TestDrainDeadlineCutsAnAnswerStalledMidBody(t *testing.T) {
	s, _ := pausedOrigin(t) // resumed only when the test ends
	h := startWorker(t, testSettings(), s)
	_, res := beginDownload(t, h)
	h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: 300 * time.Millisecond})
	h.mustReturn(t)
	if _, err := io.ReadAll(res.Body); err == nil {
		t.Error("the body cut by the drain's deadline read whole, want it cut short")
	}
	checkServer(t, h.totals(), ipc.ServerStats{ID: s.ID})
}

// A request that reaches its backend connection while answers before it
// are held (see relayResponse) is cut at the drain's deadline as well.
func TestDrainDeadlineCutsARequestBehindHeldAnswers(t *testing.T) {
	so := newSlowOrigin(t, "a")
	h := startWorker(t, holdFor(t, time.Minute), so.server) // past waitLimit
	c, br := dialRaw(t, h)
	io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	so.waitArrived(t)
	h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: 300 * time.Millisecond})
	h.mustReturn(t)
	// The held answer to /fast goes out before the cut one, or with the
	// connection closed.
	if res, err := http.ReadResponse(br, nil); err == nil && res.StatusCode != http.StatusOK {
		t.Errorf("GET /fast before the cut = %d, want 200", res.StatusCode)
	}
}

func TestDrainAnswersKeptAliveConnection(t *testing.T) {
	so := newSlowOrigin(t, "a")
	h := startWorker(t, testSettings(), so.server)

	// A client connection kept alive after one request.
	c, br := dialRaw(t, h)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()

	// A slow request keeps the drain going while the client sends again.
	slow := h.getAsync("/slow")
	so.waitArrived(t)
	h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: 5 * time.Second})
	h.waitListenerClosed(t)

	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	res, err = http.ReadResponse(br, nil)
	if err != nil {
		// http.Server.Shutdown closes idle keep-alive connections at
		// once, racing with clients that send on them (SPEC "Lifecycle
		// and signals").
		t.Errorf("request on a kept-alive connection right after the drain began: %v; want a response with Connection: close", err)
	} else {
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK || string(body) != "a" || !res.Close {
			t.Errorf("request on a kept-alive connection during the drain = %d %q (close %v), want 200 \"a\" with Connection: close", res.StatusCode, body, res.Close)
		}
	}
	so.free()
	if r := waitResult(t, slow); r.err != nil || r.code != http.StatusOK {
		t.Errorf("in-flight GET /slow = %d, %v; want 200", r.code, r.err)
	}
	h.mustReturn(t)
}

// A connection whose answer began before the drain was kept alive by it,
// and goes idle only once its body is through. The drain closes it once it
// has been idle for idleGrace, not at the drain's deadline: a download
// under way at a reload does not hold the old worker for the whole drain
// timeout.
func TestDrainClosesAConnectionThatGoesIdleLater(t *testing.T) {
	s, resume := pausedOrigin(t)
	h := startWorker(t, testSettings(), s)
	br, res := beginDownload(t, h)
	h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: time.Minute})
	h.waitListenerClosed(t)
	// Past the drain's first sweep of idle connections, which finds this
	// one busy.
	time.Sleep(idleGrace + idleGrace/2)
	resume()
	if rest, err := io.ReadAll(res.Body); err != nil || string(rest) != "-last" {
		t.Fatalf("rest of the body = %q, %v; want \"-last\"", rest, err)
	}
	if res.Close {
		t.Fatal("the answer begun before the drain says Connection: close; this test needs one kept alive")
	}
	// waitLimit is far inside the drain's minute.
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("read on the connection idle after its answer = %v, want EOF: the drain should close it after idleGrace", err)
	}
	h.mustReturn(t)
}

// pausedOrigin is a backend whose answers have a 10-byte body: "first" at
// once, "-last" once resume is called (when the test ends at the latest).
func pausedOrigin(t *testing.T) (s ipc.Server, resume func()) {
	release := make(chan struct{})
	var once sync.Once
	resume = func() { once.Do(func() { close(release) }) }
	_, s = origin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "-last")
	})
	t.Cleanup(resume) // before the backend's Close, which waits for the handler
	return s, resume
}

// beginDownload sends a GET through h on a new connection and reads the
// answer's head and the first part of its body from a pausedOrigin.
func beginDownload(t *testing.T, h *harness) (*bufio.Reader, *http.Response) {
	t.Helper()
	c, br := dialRaw(t, h)
	io.WriteString(c, "GET /download HTTP/1.1\r\nHost: x\r\n\r\n")
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 5)
	if _, err := io.ReadFull(res.Body, first); err != nil || string(first) != "first" {
		t.Fatalf("first part of the body = %q, %v; want \"first\"", first, err)
	}
	return br, res
}

func TestRejectsAmbiguousRequests(t *testing.T) {
	echo, hits := echoOrigin(t)
	h := startWorker(t, testSettings(), echo)
	tests := []struct {
		name string
		raw  string
	}{
		{"content-length and transfer-encoding", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
		{"differing content-lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"},
		{"content-length list", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := hits.Load()
			res, body := exchange(t, h.addr, "POST", tc.raw)
			if res.StatusCode != http.StatusBadRequest {
				// net/http's server accepts both Transfer-Encoding and
				// Content-Length (dropping the latter) and unfolds
				// obs-fold: the proxy must reject these itself (SPEC
				// "Proxying").
				t.Errorf("%s = %d %q, want 400", tc.name, res.StatusCode, body)
			}
			if n := hits.Load() - before; n != 0 {
				t.Errorf("%s reached the backend %d times, want never", tc.name, n)
			}
		})
	}
}

func TestHeaderLimits(t *testing.T) {
	echo, hits := echoOrigin(t)
	set := testSettings()
	set.MaxHeaderBytes = 4096
	h := startWorker(t, set, echo)
	res, _ := exchange(t, h.addr, "GET", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("b", 64<<10)+"\r\n\r\n")
	if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("GET with a 64 KiB header = %d, want 431", res.StatusCode)
	}
	if hits.Load() != 0 {
		t.Errorf("an oversized request reached the backend")
	}
}

// The response header timeout bounds the wait for the head only: a body
// that takes longer streams through, and a kept-alive connection whose
// deadline passed while it was idle serves the next request.
func TestResponseHeaderTimeoutBoundsTheHeadOnly(t *testing.T) {
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			w.Header().Set("Content-Length", "10")
			w.Write([]byte("hello"))
			w.(http.Flusher).Flush()
			time.Sleep(400 * time.Millisecond)
			w.Write([]byte("world"))
			return
		}
		w.Write([]byte("quick"))
	})
	set := testSettings()
	set.ResponseHeaderTimeout = 200 * time.Millisecond
	h := startWorker(t, set, s)
	if code, body := h.get(t, "/stream"); code != http.StatusOK || body != "helloworld" {
		t.Errorf("GET /stream = %d %q, want 200 \"helloworld\"", code, body)
	}
	for i := range 3 {
		if code, body := h.get(t, "/quick"); code != http.StatusOK || body != "quick" {
			t.Errorf("GET /quick #%d = %d %q, want 200 \"quick\"", i+1, code, body)
		}
		time.Sleep(300 * time.Millisecond) // past the last exchange's deadline
	}
	sum := h.finish(t)
	checkClients(t, sum, 4, 0)
}

// A connection kept busy for longer than the idle and response header
// timeouts is not cut by them: each request moves both deadlines on, though
// the poller keeps the first until it passes (extendReadDeadline). Both
// still hold: an answer slower than the header timeout is a 504, and the
// client connection closes once it stays idle.
func TestBusyConnectionOutlivesItsTimeouts(t *testing.T) {
	var mu sync.Mutex
	backendConns := map[string]bool{} // by the remote address
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		backendConns[r.RemoteAddr] = true
		mu.Unlock()
		switch r.URL.Path {
		case "/stall":
			select {
			case <-time.After(2 * time.Second):
			case <-r.Context().Done():
			}
		default:
			time.Sleep(80 * time.Millisecond)
		}
		io.WriteString(w, "ok")
	})
	set := testSettings()
	set.IdleTimeout = 300 * time.Millisecond
	set.ResponseHeaderTimeout = 300 * time.Millisecond
	h := startWorker(t, set, s)
	var c net.Conn
	var br *bufio.Reader
	dial := func() {
		t.Helper()
		var err error
		if c, err = net.Dial("tcp", strings.TrimPrefix(h.url, "http://")); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(20 * time.Second))
		br = bufio.NewReader(c)
	}
	get := func(path string) (int, string) {
		t.Helper()
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return res.StatusCode, string(body)
	}
	dial()
	start := time.Now()
	n := 0
	for time.Since(start) < time.Second { // over three times both timeouts
		if code, body := get("/busy"); code != http.StatusOK || body != "ok" {
			t.Fatalf("GET /busy #%d, %v in = %d %q; want 200 \"ok\"", n+1, time.Since(start), code, body)
		}
		n++
	}
	mu.Lock()
	if got := len(backendConns); got != 1 {
		t.Errorf("%d connections to the backend for %d requests in a row, want 1", got, n)
	}
	mu.Unlock()
	if code, _ := get("/stall"); code != http.StatusGatewayTimeout {
		t.Errorf("GET /stall = %d, want 504 after the response header timeout", code)
	}
	dial() // after a 504 weldr closes the connection
	if code, body := get("/busy"); code != http.StatusOK || body != "ok" {
		t.Fatalf("GET /busy after the 504 = %d %q; want 200 \"ok\"", code, body)
	}
	if _, err := br.ReadByte(); err != io.EOF { // the idle timeout closes it
		t.Errorf("an idle connection: read %v, want EOF", err)
	}
	h.answered.Add(int64(n) + 1)
	sum := h.finish(t)
	checkClients(t, sum, uint64(n)+1, 1)
}

// A request that found its first server not answering the connection goes
// to the next server's pooled connection, and the response header timeout
// runs from then: the connect timeout does not eat into it.
func TestHeaderTimeoutRunsFromAfterAFailedConnect(t *testing.T) {
	silent := unanswering(t)
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(500 * time.Millisecond)
		io.WriteString(w, "ok")
	})
	set := testSettings()
	set.ConnectTimeout = 300 * time.Millisecond
	set.ResponseHeaderTimeout = 700 * time.Millisecond // over 500 ms, under 300 + 500
	h := startWorker(t, set, silent, s)
	// Round robin: two of the four go to the silent server first, and at
	// least one of those finds a pooled connection to the other.
	for i := range 4 {
		if code, body := h.get(t, "/"); code != http.StatusOK || body != "ok" {
			t.Fatalf("GET / #%d = %d %q, want 200 \"ok\"", i+1, code, body)
		}
	}
	sum := h.finish(t)
	checkClients(t, sum, 4, 0)
	checkServer(t, sum, ipc.ServerStats{ID: silent.ID, Failed: 2, ConnectFailed: 2})
}

// A request body is read without the idle or header deadlines, however
// long it takes, when its head arrived whole.
func TestSlowBodyOutlastsIdleTimeout(t *testing.T) {
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	set := testSettings()
	set.IdleTimeout = 300 * time.Millisecond
	set.ReadHeaderTimeout = 100 * time.Millisecond
	h := startWorker(t, set, s)
	c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello"))
	time.Sleep(500 * time.Millisecond) // past both timeouts
	c.Write([]byte("world"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK || string(body) != "helloworld" {
		t.Fatalf("slow POST = %d %q, want 200 \"helloworld\"", res.StatusCode, body)
	}
	h.answered.Add(1)
	h.finish(t)
}

// A connection that has sent nothing yet waits under the read header
// timeout, as nginx's client_header_timeout: one that never sends holds a
// slot for that long, not for the idle timeout. Kept alive after a request,
// it waits for the idle timeout.
func TestSilentConnectionClosedAfterReadHeaderTimeout(t *testing.T) {
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "a") })
	set := testSettings()
	set.ReadHeaderTimeout = 200 * time.Millisecond
	set.IdleTimeout = time.Minute // past waitLimit
	h := startWorker(t, set, s)

	silent, br := dialRaw(t, h)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("read on a connection that sent nothing = %v, want EOF after the read header timeout", err)
	}
	silent.Close()

	c, br := dialRaw(t, h)
	for i := range 2 {
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		readAnswer(t, br, fmt.Sprintf("request %d", i+1), "a")
		if i == 0 {
			time.Sleep(2 * set.ReadHeaderTimeout) // idle, past the read header timeout
		}
	}
}

// The first head of a connection is bounded by the read header timeout from
// when the connection came, not from its first byte: a client cannot hold
// it for twice the timeout by sending a byte just in time.
func TestFirstHeadWithinReadHeaderTimeoutOfTheConnection(t *testing.T) {
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "a") })
	set := testSettings()
	set.ReadHeaderTimeout = 2 * time.Second
	set.IdleTimeout = time.Minute
	h := startWorker(t, set, s)
	c, br := dialRaw(t, h)
	connected := time.Now()
	time.Sleep(3 * set.ReadHeaderTimeout / 4) // letting time pass: the byte comes late
	io.WriteString(c, "GET / HTTP/1.1\r\n")   // and the rest never
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("a head begun late and never finished = %v, %v; want 408", res, err)
	}
	// From the connection: 2 s. From the first byte it would be 3.5 s.
	if took := time.Since(connected); took > 3*time.Second {
		t.Errorf("408 came %v after the connection, want the read header timeout (%v) from it, not from its first byte", took, set.ReadHeaderTimeout)
	}
}

// After refused connections a request tries each server that is up once,
// removed servers still listed (not yet compacted) included in none.
func TestRetriesTryEachLiveServerOnce(t *testing.T) {
	var servers []ipc.Server
	for range 16 {
		servers = append(servers, refusing(t))
	}
	h := startWorker(t, testSettings(), servers...)
	h.send(t, ipc.Message{Kind: ipc.RemoveServer, ID: servers[0].ID, Version: 100})
	h.send(t, ipc.Message{Kind: ipc.RemoveServer, ID: servers[1].ID, Version: 101})
	h.waitApplied(t, 101)
	res, err := h.client.Get(h.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadGateway {
		t.Errorf("GET / = %d, want 502", res.StatusCode)
	}
	sum := h.finish(t)
	for _, s := range servers[2:] {
		checkServer(t, sum, ipc.ServerStats{ID: s.ID, Failed: 1, ConnectFailed: 1})
	}
}

// A kept-alive backend connection the server closed while it sat idle
// fails on reuse: at the first read (closed, or half-closed by a server
// that lingers reading, as on a graceful restart) or already at the write
// (reset). Either way the bodyless request goes again on a new connection,
// also when it is not the first on its client connection.
func TestStaleBackendConnectionRetried(t *testing.T) {
	for _, how := range []string{"close", "reset", "half-close"} {
		t.Run(how, func(t *testing.T) {
			closed := make(chan struct{}, 4)
			s := rawOrigin(t, func(c net.Conn, br *bufio.Reader) {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				switch how {
				case "reset":
					c.(*net.TCPConn).SetLinger(0)
				case "half-close":
					// Past the worker's response header timeout: a
					// request waiting for an answer here fails.
					c.(*net.TCPConn).CloseWrite()
					closed <- struct{}{}
					c.SetReadDeadline(time.Now().Add(2 * time.Second))
					io.Copy(io.Discard, c)
					c.Close()
					return
				}
				c.Close() // without saying so
				closed <- struct{}{}
			})
			h := startWorker(t, testSettings(), s)
			for i := range 2 {
				if code, body := h.get(t, "/"); code != http.StatusOK || body != "ok" {
					t.Fatalf("request %d on one client connection = %d %q, want 200 \"ok\"", i+1, code, body)
				}
				select {
				case <-closed:
				case <-time.After(waitLimit):
					t.Fatal("the backend did not close its connection")
				}
			}
		})
	}
}
