package worker

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// upstreams dials backends and keeps their idle connections for reuse by
// any client connection of the worker.
type upstreams struct {
	dialer                net.Dialer
	responseHeaderTimeout time.Duration
	bufs                  *buffers // the front end's, shared
}

// Idle backend connections: at most maxIdlePerBackend kept per server,
// none older than upIdleTimeout (servers close idle connections
// themselves, typically after a minute or more).
const (
	maxIdlePerBackend = 256
	upIdleTimeout     = 50 * time.Second
)

// freshIdle is how long a connection may have been idle and still be
// reused for a bodyless request without checking it first (a system call):
// a server rarely closes a connection that soon without saying so, and a
// bodyless request that meets one is retried on a new connection anyway.
const freshIdle = time.Second

func (u *upstreams) init(connectTimeout, responseHeaderTimeout time.Duration, bufs *buffers) {
	u.dialer = net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	u.responseHeaderTimeout = responseHeaderTimeout
	u.bufs = bufs
}

// connectError marks a failure to connect to a backend: nothing of the
// request was sent, so the next server may be tried.
type connectError struct{ err error }

func (e *connectError) Error() string { return "connecting: " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// upConn is a connection to a backend with its buffers, which it holds
// only while in use: an idle kept-alive connection costs no buffer.
type upConn struct {
	c      net.Conn
	raw    syscall.RawConn // nil for TLS
	sio    sockIO
	rw     io.ReadWriter // the connection's reads and writes: sio, or c
	br     *bufio.Reader // nil while idle
	bw     *bufio.Writer // nil while idle
	reused bool          // it carried a request before: the server may have closed it
	idleAt time.Time     // when it was put back
}

// connPool is a backend's idle connections, most recently used on top.
type connPool struct {
	mu   sync.Mutex // guards idle
	idle []*upConn
}

// idle returns an idle connection to b that still looks open at now, or
// nil. A connection idle for less than freshIdle is checked only when the
// request cannot be sent again (replayable false: it has a body).
func (u *upstreams) idle(b *backend, replayable bool, now time.Time) *upConn {
	for {
		b.pool.mu.Lock()
		n := len(b.pool.idle)
		if n == 0 {
			b.pool.mu.Unlock()
			break
		}
		uc := b.pool.idle[n-1]
		b.pool.idle[n-1] = nil
		b.pool.idle = b.pool.idle[:n-1]
		b.pool.mu.Unlock()
		if idle := now.Sub(uc.idleAt); idle < upIdleTimeout && (replayable && idle < freshIdle || uc.open()) {
			uc.reused = true
			u.acquire(uc)
			return uc
		}
		uc.c.Close()
	}
	return nil
}

// put keeps uc for reuse, idle from now, or closes it when the pool is
// full or its buffers hold unread or unsent bytes.
func (u *upstreams) put(b *backend, uc *upConn, now time.Time) {
	if uc.br.Buffered() > 0 || uc.bw.Buffered() > 0 {
		uc.c.Close()
		return
	}
	u.release(uc)
	uc.idleAt = now
	b.pool.mu.Lock()
	if len(b.pool.idle) < maxIdlePerBackend {
		b.pool.idle = append(b.pool.idle, uc)
		uc = nil
	}
	b.pool.mu.Unlock()
	if uc != nil {
		uc.c.Close()
	}
}

// closeIdle closes b's idle connections (b left the pool).
func (p *connPool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, uc := range idle {
		uc.c.Close()
	}
}

// dial connects to b, unless ctx ends first. Failures are connectErrors:
// nothing was sent, so the request may go to another server.
func (u *upstreams) dial(ctx context.Context, b *backend) (*upConn, error) {
	c, err := u.dialer.DialContext(ctx, "tcp", b.id)
	if err != nil {
		return nil, &connectError{err: err}
	}
	uc := &upConn{c: c}
	if b.scheme == "https" {
		host, _, _ := net.SplitHostPort(b.id)
		tc := tls.Client(c, &tls.Config{ServerName: host, NextProtos: []string{"http/1.1"}})
		ctx, cancel := context.WithTimeout(ctx, u.dialer.Timeout+u.responseHeaderTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			c.Close()
			return nil, &connectError{err: err}
		}
		uc.c = tc
	} else if sc, ok := c.(syscall.Conn); ok {
		uc.raw, _ = sc.SyscallConn()
	}
	uc.rw = newReadWriter(uc.c, &uc.sio)
	u.acquire(uc)
	return uc, nil
}

func (u *upstreams) acquire(uc *upConn) {
	uc.br = u.bufs.reader(uc.rw)
	uc.bw = u.bufs.writer(uc.rw)
}

// release gives uc's buffers back; both are empty.
func (u *upstreams) release(uc *upConn) {
	u.bufs.putReader(uc.br)
	u.bufs.putWriter(uc.bw)
	uc.br, uc.bw = nil, nil
}

// open reports whether an idle connection is still usable: a non-blocking
// peek finds neither data nor EOF.
func (uc *upConn) open() bool {
	if uc.raw == nil {
		return true // TLS: found out on use
	}
	return peekOpen(uc.raw, false)
}

// closeAll closes the idle connections of every server the worker knows.
func (u *upstreams) closeAll(w *worker) {
	if s := w.snap.Load(); s != nil {
		for _, b := range s.all {
			b.pool.closeIdle()
		}
	}
}
