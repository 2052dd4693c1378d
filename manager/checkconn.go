package manager

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/weldr-proxy/weldr/internal/sockio"
)

// Health checks of plain-HTTP servers use this small client rather than
// http.Transport: a kept-alive connection there costs two goroutines and two
// buffers, about 35 KiB, which is 350 MB for 10,000 servers. Here a
// connection waiting for its next check is a file descriptor and nothing
// else; buffers are pooled and taken only while a check runs. HTTPS servers
// go through the manager's http.Client.

// checkReaders are the pooled read buffers of running checks.
var checkReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// maxCheckBody is how much of a check's answer is read; a longer body makes
// the connection not worth keeping.
const maxCheckBody = 64 << 10

// checkHTTP runs one check of http://host+path on conn (nil: dial one) and
// returns the connection to keep for the next check, or nil.
func checkHTTP(ctx context.Context, conn net.Conn, host, path string, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: weldr-health-check/" + Version + "\r\nAccept: */*\r\n\r\n"
	if conn != nil {
		next, err, stale := checkOn(ctx, conn, req, deadline, timeout)
		if !stale || time.Now().After(deadline) {
			return next, err
		}
		// The server closed the kept-alive connection while it was idle:
		// that says nothing about its health. Try once on a new one.
	}
	d := net.Dialer{Deadline: deadline}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Timeout() {
			return nil, fmt.Errorf("timed out after %s", timeout)
		}
		if errors.As(err, &oe) {
			return nil, oe.Err
		}
		return nil, err
	}
	next, err, _ := checkOn(ctx, conn, req, deadline, timeout)
	return next, err
}

// checkOn sends the check request on conn and reads the answer. stale
// reports a failure before any byte of an answer arrived, which on a reused
// connection means the server had closed it.
func checkOn(ctx context.Context, conn net.Conn, req string, deadline time.Time, timeout time.Duration) (next net.Conn, err error, stale bool) {
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	defer func() {
		if next == nil {
			conn.Close()
		}
	}()

	// Raw system calls (internal/sockio): through net.Conn, each check's
	// write, which on loopback runs the server's side too, kept the
	// runtime's sysmon thread waking to take the manager's one processor
	// from it (1,540 wake-ups a second at 10,000 checks a second, 98 with).
	var rw io.ReadWriter = conn
	if sc := new(sockio.Conn); sc.Init(conn) {
		rw = sc
	}
	if _, err := io.WriteString(rw, req); err != nil {
		return nil, checkError(err, timeout), true
	}
	br := checkReaders.Get().(*bufio.Reader)
	br.Reset(rw)
	defer func() {
		br.Reset(nil)
		checkReaders.Put(br)
	}()
	if _, err := br.Peek(1); err != nil {
		return nil, checkError(err, timeout), isStale(err)
	}
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, checkError(err, timeout), false
	}
	n, err := io.Copy(io.Discard, io.LimitReader(res.Body, maxCheckBody+1))
	res.Body.Close()
	if err != nil {
		return nil, checkError(err, timeout), false
	}
	if res.StatusCode < 200 || res.StatusCode > 299 {
		err = fmt.Errorf("status %d", res.StatusCode)
	}
	if res.Close || n > maxCheckBody || br.Buffered() > 0 {
		return nil, err, false
	}
	conn.SetDeadline(time.Time{})
	return conn, err, false
}

// isStale reports whether a read error before any answer byte means the
// server had closed the connection.
func isStale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// checkError words a failed read for the server's last_error.
func checkError(err error, timeout time.Duration) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("timed out after %s", timeout)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("connection closed before a complete answer")
	}
	return err
}
