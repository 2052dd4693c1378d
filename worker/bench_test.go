package worker

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weldr-proxy/weldr/internal/weldrtest"
	"github.com/weldr-proxy/weldr/ipc"
)

// The benchmarks of the request path. They report allocations so that a
// regression shows in `go test -bench . -benchmem ./worker/`.

var benchRequest = []byte("GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: wrk\r\n" +
	"Accept: */*\r\nAccept-Encoding: gzip\r\nX-Request-Id: 0123456789abcdef\r\nConnection: keep-alive\r\n\r\n")

var benchResponse = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n" +
	"Date: Sun, 22 Nov 2026 12:00:00 GMT\r\nServer: origin\r\n\r\nhello")

func BenchmarkReadRequest(b *testing.B) {
	rd := bytes.NewReader(benchRequest)
	br := bufio.NewReaderSize(rd, 16<<10)
	var m message
	lim := limits{headerBytes: 64 << 10, lineBytes: 8192}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchRequest)))
	for b.Loop() {
		rd.Reset(benchRequest)
		br.Reset(rd)
		if err := readRequest(br, &m, lim); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadResponse(b *testing.B) {
	rd := bytes.NewReader(benchResponse)
	br := bufio.NewReaderSize(rd, 16<<10)
	var m message
	lim := limits{headerBytes: 64 << 10, lineBytes: 8192}
	b.ReportAllocs()
	for b.Loop() {
		rd.Reset(benchResponse)
		br.Reset(rd)
		if err := readResponse(br, &m, lim); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteRequestHead(b *testing.B) {
	f := &frontend{preserveHost: true}
	cc := &clientConn{f: f, ip: "127.0.0.1"}
	br := bufio.NewReader(bytes.NewReader(benchRequest))
	if err := readRequest(br, &cc.req, limits{headerBytes: 64 << 10, lineBytes: 8192}); err != nil {
		b.Fatal(err)
	}
	be := &backend{id: "10.0.0.5:8080", scheme: "http", weight: 1}
	bw := bufio.NewWriterSize(io.Discard, 16<<10)
	path, host := requestTarget(&cc.req)
	b.ReportAllocs()
	for b.Loop() {
		cc.writeRequestHead(bw, be, path, host)
		bw.Flush()
	}
}

// BenchmarkProxyRoundTrip sends requests on one kept-alive connection
// through a real worker (Run, real sockets) to a minimal backend. The
// allocation count covers the whole process: client, worker and backend.
func BenchmarkProxyRoundTrip(b *testing.B) {
	get, _ := keptAliveGet(b, startBenchWorker(b, fixedOrigin(b, benchResponse)))
	b.ReportAllocs()
	for b.Loop() {
		if err := get(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRequestPathAllocatesNothing: a kept-alive GET forwarded by a real
// worker, and its answer read, allocate nothing in the whole process
// (client, worker and origin). One allocation per request costs the
// allocator's time, and the collector's later.
func TestRequestPathAllocatesNothing(t *testing.T) {
	if weldrtest.RaceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	get, m := keptAliveGet(t, startBenchWorker(t, fixedOrigin(t, benchResponse)))
	var failed error
	roundTrip := func() {
		if failed == nil {
			failed = get()
		}
	}
	for range 10 { // the connections to the origin, the buffers' pools
		roundTrip()
	}
	allocs := testing.AllocsPerRun(500, roundTrip)
	if failed != nil {
		t.Fatal(failed)
	}
	if m.status != 200 {
		t.Fatalf("status %d, want 200", m.status)
	}
	if allocs != 0 {
		t.Errorf("%v allocations per request, want none (see go test -bench ProxyRoundTrip -memprofile)", allocs)
	}
}

// keptAliveGet connects to addr and returns get, which sends a GET on the
// connection and reads the whole answer, its head into m.
func keptAliveGet(tb testing.TB, addr string) (get func() error, m *message) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	br := bufio.NewReader(c)
	req := []byte("GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: bench\r\n\r\n")
	m = new(message)
	lim := limits{headerBytes: 64 << 10, lineBytes: 8192}
	return func() error {
		if _, err := c.Write(req); err != nil {
			return err
		}
		if err := readResponse(br, m, lim); err != nil {
			return err
		}
		_, err := br.Discard(int(m.contentLength))
		return err
	}, m
}

func BenchmarkCopyChunked(b *testing.B) {
	var body bytes.Buffer
	for range 16 {
		body.WriteString("1000\r\n" + strings.Repeat("x", 4096) + "\r\n")
	}
	body.WriteString("0\r\n\r\n")
	raw := body.Bytes()
	rd := bytes.NewReader(raw)
	br := bufio.NewReaderSize(rd, 16<<10)
	bw := bufio.NewWriterSize(io.Discard, 16<<10)
	b.ReportAllocs()
	b.SetBytes(16 * 4096)
	for b.Loop() {
		rd.Reset(raw)
		br.Reset(rd)
		if _, err := copyChunked(bw, br, true, false, 16<<10, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// fixedOrigin answers every request on every connection with resp.
func fixedOrigin(b testing.TB, resp []byte) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				var m message
				lim := limits{headerBytes: 64 << 10, lineBytes: 8192}
				for readRequest(br, &m, lim) == nil {
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// startBenchWorker runs a worker with origin as its only server and returns
// the address it serves on.
func startBenchWorker(b testing.TB, origin string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "ipc")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	mgr := ipc.NewConn(conns[0])
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	_, bell := newBell(b) // read on every request, as in the real worker
	go func() { done <- Run(ctx, ln, conns[1], Shared{Bell: bell}, io.Discard) }()
	b.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			b.Error("worker did not stop")
		}
		conns[0].Close()
	})
	snap := ipc.Message{Kind: ipc.Snapshot, Version: 1, Settings: &ipc.Settings{StatsInterval: time.Hour, DrainTimeout: time.Second},
		Servers: ipc.Servers{{ID: origin, URL: "http://" + origin, Weight: 1}}}
	if err := mgr.Send(&snap); err != nil {
		b.Fatal(err)
	}
	var ready ipc.Message
	if err := mgr.Receive(&ready); err != nil || ready.Kind != ipc.Ready {
		b.Fatalf("waiting for Ready: %v %v", ready.Kind, err)
	}
	go func() { // keep reading what the worker reports
		var m ipc.Message
		for mgr.Receive(&m) == nil {
		}
	}()
	return ln.Addr().String()
}
