package worker

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRequestLimits(t *testing.T) {
	echo, hits := echoOrigin(t)
	set := testSettings()
	set.MaxRequestLine = 256
	set.MaxHeaderBytes = 2048
	set.MaxBodyBytes = 10
	h := startWorker(t, set, echo)
	tests := []struct {
		name string
		raw  string
		code int
	}{
		{"request line over max_request_line", "GET /" + strings.Repeat("a", 300) + " HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusRequestURITooLong},
		{"head over max_header_bytes", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 3000) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		{"many small headers over max_header_bytes", "GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-A: 0123456789\r\n", 200) + "\r\n", http.StatusRequestHeaderFieldsTooLarge},
		{"Content-Length over max_body_bytes", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n01234567890", http.StatusRequestEntityTooLarge},
		{"chunked body over max_body_bytes", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n6\r\n012345\r\n0\r\n\r\n", http.StatusRequestEntityTooLarge},
		{"HTTP/2.0 request line", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", http.StatusHTTPVersionNotSupported},
		{"unsupported expectation", "POST / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx", http.StatusExpectationFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := hits.Load()
			res, body := exchange(t, h.addr, "GET", tc.raw)
			if res.StatusCode != tc.code || !res.Close {
				t.Errorf("%s = %d %q (close %v), want %d and the connection closed", tc.name, res.StatusCode, body, res.Close, tc.code)
			}
			// The chunked case may have sent its first chunk on before the
			// limit was crossed; nothing else reaches the backend.
			if n := hits.Load() - before; n != 0 && !strings.HasPrefix(tc.name, "chunked") {
				t.Errorf("%s reached the backend %d times, want never", tc.name, n)
			}
		})
	}
	// Within the limits all is well.
	if res, _ := exchange(t, h.addr, "POST", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"); res.StatusCode != http.StatusOK {
		t.Errorf("a 10-byte body with max_body_bytes = 10 = %d, want 200", res.StatusCode)
	}
}

func TestMaxConnections(t *testing.T) {
	echo, _ := echoOrigin(t)
	set := testSettings()
	set.MaxConnections = 2
	h := startWorker(t, set, echo)
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	// The two held connections are open in the worker once a request on
	// each has been answered.
	for _, c := range held {
		c.SetDeadline(time.Now().Add(waitLimit))
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		buf := make([]byte, 1)
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("request on a held connection: %v", err)
		}
	}
	res, body := exchange(t, h.addr, "GET", "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if res.StatusCode != http.StatusServiceUnavailable || !res.Close || res.Header.Get("Retry-After") == "" {
		t.Errorf("a third connection with max_connections = 2 = %d %q (close %v), want 503 with Retry-After, closed", res.StatusCode, body, res.Close)
	}
	held[0].Close()
	waitFor(t, "a slot to free up", func() bool {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitLimit))
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
		buf := make([]byte, 12)
		n, _ := c.Read(buf)
		return strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200")
	})
}
