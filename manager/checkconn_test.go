package manager

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingServer is a real origin that counts the connections it accepted.
func countingServer(t *testing.T, h http.HandlerFunc, idle ...time.Duration) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	s := httptest.NewUnstartedServer(h)
	if len(idle) > 0 {
		s.Config.IdleTimeout = idle[0]
	}
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s, &conns
}

func host(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

func TestCheckHTTPKeepsConnection(t *testing.T) {
	s, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" || r.Header.Get("User-Agent") == "" {
			http.Error(w, "wrong request", http.StatusBadRequest)
			return
		}
		io.WriteString(w, "ok")
	})
	var conn net.Conn
	for i := range 5 {
		var err error
		conn, err = checkHTTP(context.Background(), conn, host(s), "/health", time.Second)
		if err != nil || conn == nil {
			t.Fatalf("check %d = %v, %v; want a pass and a connection to keep", i, conn, err)
		}
	}
	conn.Close()
	if n := conns.Load(); n != 1 {
		t.Errorf("5 checks used %d connections, want 1", n)
	}
}

func TestCheckHTTPVerdicts(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tests := []struct {
		name     string
		handler  http.HandlerFunc
		wantErr  string // "" passes
		wantKeep bool
	}{
		{"200", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }, "", true},
		{"204", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }, "", true},
		{"chunked", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
			io.WriteString(w, "b")
		}, "", true},
		{"connection close", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			io.WriteString(w, "ok")
		}, "", false},
		{"large body", func(w http.ResponseWriter, r *http.Request) {
			w.Write(make([]byte, maxCheckBody+10))
		}, "", false},
		{"500", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", 500) }, "status 500", true},
		{"redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) }, "status 302", true},
		{"hang", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}, "timed out after 200ms", false},
		{"garbage", func(w http.ResponseWriter, r *http.Request) {
			c, bw, _ := http.NewResponseController(w).Hijack()
			bw.WriteString("SSH-2.0-OpenSSH\r\n\r\n")
			bw.Flush()
			c.Close()
		}, "malformed", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := countingServer(t, tc.handler)
			conn, err := checkHTTP(context.Background(), nil, host(s), "/", 200*time.Millisecond)
			if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("checkHTTP() error = %v, want %q", err, tc.wantErr)
			}
			if (conn != nil) != tc.wantKeep {
				t.Errorf("checkHTTP() kept connection = %v, want %v", conn != nil, tc.wantKeep)
			}
			if conn != nil {
				conn.Close()
			}
		})
	}
}

func TestCheckHTTPRefused(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if _, err := checkHTTP(context.Background(), nil, addr, "/", time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("checkHTTP(closed port) = %v, want connection refused", err)
	}
}

func TestCheckHTTPRetriesStaleConnection(t *testing.T) {
	// The origin closes idle connections at once: every kept connection is
	// stale by the next check, which must still pass on a new one.
	s, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }, time.Millisecond)
	var conn net.Conn
	for i := range 3 {
		var err error
		conn, err = checkHTTP(context.Background(), conn, host(s), "/", time.Second)
		if err != nil {
			t.Fatalf("check %d on a stale connection = %v, want a pass", i, err)
		}
		time.Sleep(20 * time.Millisecond) // let the origin close it
	}
	if conn != nil {
		conn.Close()
	}
	if n := conns.Load(); n < 2 {
		t.Errorf("checks used %d connections, want a new one after each stale one", n)
	}
}
