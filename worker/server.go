package worker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// frontend is weldr's HTTP/1.1 server: one goroutine per client connection,
// which reads a request, forwards it on a pooled backend connection, relays
// the answer and goes on to the next request on the same connection, so
// pipelined requests are answered in order.
type frontend struct {
	w         *worker
	lim       limits
	readSize  int // client read buffer: holds the longest line accepted
	up        upstreams
	accessLog *slog.Logger // nil: no access log

	readHeaderTimeout time.Duration
	idleTimeout       time.Duration
	hold              time.Duration // longest wait on a backend with answers held (pipelineHold)
	maxBody           int64         // 0: no limit
	maxConns          int           // per worker; 0: no limit
	preserveHost      bool

	bufs *buffers // read buffers of readSize; shared with the backend connections

	mu    sync.Mutex // guards conns
	conns map[*clientConn]struct{}
	// open counts the open client connections: in the worker's seat on
	// the board if it has one, where the others read it, or in ownOpen.
	open    *atomic.Int64
	ownOpen atomic.Int64
	pacer   *acceptPacer   // nil without a board
	done    sync.WaitGroup // one per connection goroutine
	zero    chan struct{}  // signalled when open drops to zero while draining
	epoch   time.Time      // when the front end began: idle times count from it
	cut     atomic.Bool    // a drain's deadline closed what was left
	// dials holds the connections to backends being made; the drain's
	// deadline ends it with endDials.
	dials    context.Context
	endDials context.CancelFunc
}

func newFrontend(w *worker, set frontendConfig, sh Shared) *frontend {
	f := &frontend{
		w:                 w,
		lim:               limits{headerBytes: set.maxHeaderBytes, lineBytes: set.maxRequestLine},
		readHeaderTimeout: set.readHeaderTimeout,
		idleTimeout:       set.idleTimeout,
		maxBody:           set.maxBody,
		maxConns:          set.maxConns,
		preserveHost:      set.preserveHost,
		hold:              pipelineHold,
		conns:             make(map[*clientConn]struct{}),
		zero:              make(chan struct{}, 1),
		epoch:             time.Now(),
	}
	f.dials, f.endDials = context.WithCancel(context.Background())
	f.open = &f.ownOpen
	if sh.Board != nil {
		f.pacer = newAcceptPacer(sh.Board, sh.Seat)
		f.open = &f.pacer.mine.Open
		f.open.Store(0)
	}
	f.readSize = max(16<<10, set.maxRequestLine+2)
	f.bufs = newBuffers(f.readSize)
	f.up.init(set.connectTimeout, set.responseHeaderTimeout, f.bufs)
	return f
}

// frontendConfig is what the front end needs of the settings, with defaults applied.
type frontendConfig struct {
	connectTimeout, responseHeaderTimeout, readHeaderTimeout, idleTimeout time.Duration
	maxHeaderBytes, maxRequestLine, maxConns                              int
	maxBody                                                               int64
	preserveHost                                                          bool
}

// serve accepts connections until ln is closed.
func (f *frontend) serve(ln net.Listener) error {
	var backoff time.Duration
	for {
		if f.pacer != nil {
			f.pacer.pause(f.w.draining.Load)
		}
		c, err := ln.Accept()
		if err != nil {
			if f.w.draining.Load() || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EINVAL) {
				// EINVAL: the manager shut the socket down as weldr
				// stops (its Drain message follows, if not here yet).
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of file descriptors: wait for some to close.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				f.w.log.Warn("accept failed, retrying", "error", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if f.maxConns > 0 && f.open.Load() >= int64(f.maxConns) {
			// Over the limit: a short answer, never a silent close.
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write(tooManyConns)
			c.Close()
			f.w.stats.generated(http.StatusServiceUnavailable)
			continue
		}
		cc := f.newConn(c)
		f.done.Add(1)
		go cc.serve()
	}
}

var tooManyConns = []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 21\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n")

// clientConn is one client connection.
type clientConn struct {
	f      *frontend
	c      net.Conn
	raw    syscall.RawConn
	sio    sockIO
	rw     io.ReadWriter // the connection's reads and writes: sio, or c
	remote string        // RemoteAddr, kept for logs and X-Forwarded-For
	ip     string

	br  *bufio.Reader // nil while idle
	bw  *bufio.Writer // nil while idle
	req message
	res message
	// idleSince is when the connection began to wait for a request, in
	// nanoseconds since f.epoch; 0 while it does not wait. A drain closes
	// connections idle long enough.
	idleSince atomic.Int64
	// upstream is the backend connection a request uses, until forward
	// returns: the drain's deadline closes it.
	upstream atomic.Pointer[upConn]

	ready   int // what serveReady leaves to serve
	readyFn func(fd uintptr) bool

	// idleFrom is when the connection last began to wait for a request:
	// its idle deadline is idleFrom plus the idle timeout (waitLimit).
	// Zero while a request is under way until forward's answer sets it.
	idleFrom time.Time
	fresh    bool // no request yet
}

func (f *frontend) newConn(c net.Conn) *clientConn {
	cc := &clientConn{f: f, c: c, remote: c.RemoteAddr().String()}
	cc.ip = cc.remote
	if host, _, err := net.SplitHostPort(cc.remote); err == nil {
		cc.ip = host
	}
	if sc, ok := c.(syscall.Conn); ok {
		cc.raw, _ = sc.SyscallConn()
	}
	cc.rw = newReadWriter(c, &cc.sio)
	cc.readyFn = cc.doReady
	cc.fresh = true
	f.open.Add(1)
	f.mu.Lock()
	f.conns[cc] = struct{}{}
	f.mu.Unlock()
	return cc
}

// extendIdleDeadline sets the idle deadline from cc.idleFrom, lazily (see
// sockIO.extendReadDeadline): a busy connection moves it on every request.
func (cc *clientConn) extendIdleDeadline() {
	cc.sio.extendReadDeadline(cc.idleFrom.Add(cc.waitLimit()))
}

// waitLimit is how long the connection may wait for its next request: the
// idle timeout, or for the first request the read header timeout if
// shorter, as nginx's client_header_timeout (a client that connects and
// sends nothing holds a slot no longer than one that sends a head slowly).
func (cc *clientConn) waitLimit() time.Duration {
	if cc.fresh {
		return min(cc.f.readHeaderTimeout, cc.f.idleTimeout)
	}
	return cc.f.idleTimeout
}

func (cc *clientConn) close() {
	cc.c.Close()
	cc.release()
	f := cc.f
	f.mu.Lock()
	delete(f.conns, cc)
	f.mu.Unlock()
	if f.open.Add(-1) == 0 && f.w.draining.Load() {
		select {
		case f.zero <- struct{}{}:
		default:
		}
	}
	f.done.Done()
}

// acquire takes buffers from the pools; release gives them back. Only
// connections with a request under way hold buffers, so ten thousand idle
// keep-alive connections cost a goroutine each and no buffer.
func (cc *clientConn) acquire() {
	if cc.br == nil {
		cc.br = cc.f.bufs.reader(cc.rw)
	}
	if cc.bw == nil {
		cc.bw = cc.f.bufs.writer(cc.rw)
	}
}

func (cc *clientConn) release() {
	if cc.br != nil && cc.br.Buffered() == 0 {
		cc.f.bufs.putReader(cc.br)
		cc.br = nil
	}
	if cc.bw != nil && cc.bw.Buffered() == 0 {
		cc.f.bufs.putWriter(cc.bw)
		cc.bw = nil
	}
}

// buffers pools the buffered readers and writers that client and backend
// connections hold only while they carry a request.
type buffers struct {
	readers, writers sync.Pool
}

// newBuffers returns pools of readers of readSize and 16 KiB writers.
func newBuffers(readSize int) *buffers {
	p := &buffers{}
	p.readers.New = func() any { return bufio.NewReaderSize(nil, readSize) }
	p.writers.New = func() any { return bufio.NewWriterSize(nil, 16<<10) }
	return p
}

func (p *buffers) reader(r io.Reader) *bufio.Reader {
	br := p.readers.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func (p *buffers) writer(w io.Writer) *bufio.Writer {
	bw := p.writers.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

// putReader and putWriter take back buffers that hold no byte.
func (p *buffers) putReader(br *bufio.Reader) {
	br.Reset(nil)
	p.readers.Put(br)
}

func (p *buffers) putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	p.writers.Put(bw)
}

// lightLoad is the number of open connections up to which an idle
// connection keeps its buffers (32 KiB) while it waits. Above it, idle
// connections give their buffers back, which keeps 10,000 of them cheap;
// outside serveReady (TLS), they then wait with a peek, a system call more
// per request.
const lightLoad = 256

// pipelineHold bounds how long answers to pipelined requests are held back
// while weldr waits on a backend for the next one (see relayResponse): too
// short to notice, long enough for most answers under load (with wrk
// pipelining 16 deep on two cores, 10–15 % of the waits ran out).
// A variable for the tests.
var pipelineHold = 2 * time.Millisecond

// serve reads and answers requests until the connection ends.
func (cc *clientConn) serve() {
	defer cc.close()
	f := cc.f
	ready := cc.rw == io.ReadWriter(&cc.sio)
	for {
		if ready {
			switch cc.serveReady() {
			case readyEnd:
				return
			case readyParsed:
				if !cc.proceed(false) {
					return
				}
				continue
			}
			// readyPartial: the rest of the head is read below.
		} else if cc.br == nil || cc.br.Buffered() == 0 {
			now := time.Now()
			cc.markIdle(now)
			cc.sio.setReadDeadline(now.Add(cc.waitLimit()))
			var err error
			if f.open.Load() > lightLoad {
				// Many connections: hold no buffer while waiting.
				cc.release()
				err = cc.waitReadable()
				cc.acquire()
			} else {
				// Few: keep the buffers and read, one system call less.
				cc.acquire()
				_, err = cc.br.Peek(1)
			}
			cc.markBusy()
			if err != nil {
				return
			}
		}
		cc.acquire()
		// A head that arrived whole is parsed without a read, so needs no
		// deadline: each one set costs a timer update, and this is the
		// common case.
		headerDeadline := !headBuffered(cc.br)
		if headerDeadline {
			from := time.Now()
			if cc.fresh && !cc.idleFrom.IsZero() {
				// The first head has the read header timeout from when
				// the connection began to wait, not from its first byte.
				from = cc.idleFrom
			}
			cc.sio.setReadDeadline(from.Add(f.readHeaderTimeout))
		}
		if err := readRequest(cc.br, &cc.req, f.lim); err != nil {
			cc.requestFailed(err)
			return
		}
		if !cc.proceed(headerDeadline) {
			return
		}
	}
}

// proceed forwards the request just read, whose head was read under a
// deadline if headerDeadline. It reports whether the connection may carry
// another request.
func (cc *clientConn) proceed(headerDeadline bool) bool {
	readsMore := cc.req.readsMore()
	// The client may wait for the answers held for its earlier requests
	// before it sends the body or starts the tunnel.
	if readsMore && cc.flushHeld() != nil {
		cc.f.w.stats.clientFailed.Add(1)
		return false
	}
	if headerDeadline || readsMore {
		// The body, or a tunnel, is read without a deadline. Otherwise
		// nothing is read from the client until the next request, which
		// sets its own.
		cc.sio.setReadDeadline(time.Time{})
	}
	return cc.forward()
}

// readsMore reports whether a request needs more of its client than its
// head: a body, or a tunnel.
func (m *message) readsMore() bool {
	return m.contentLength > 0 || m.chunked || m.upgrade != nil
}

// What serveReady leaves to serve.
const (
	readyEnd     = iota // the connection is done
	readyPartial        // cc.br holds part of a request head
	readyParsed         // cc.req needs more of the client than its head
)

// serveReady answers, from inside one call of the socket's RawConn.Read,
// the requests that need nothing of the client but a head that arrived
// whole, and waits for the next ones there. It returns when a request
// needs more (serve reads it as usual) or the connection is done.
//
// The point is the read that would fail. The runtime's poller forgets a
// socket's readiness whenever a read starts, so each ordinary read must try
// the system call before it may wait, and the read of the next request,
// made right after an answer went out, nearly always fails. Within one
// RawConn.Read nothing is forgotten: the poller calls the callback again
// for whatever comes after the readiness it last took (the reset when
// the Read began, or its latest wake-up). So the callback may wait without
// reading once a read since then has left the socket empty, which TCP_INQ
// tells (sockIO.askInq): no byte and no FIN behind it. Otherwise it reads
// first, and that read may fail, as every one did before.
//
// The callback holds the socket's read lock, so reads of the client in it
// go straight to the system call (sockIO.inPoll) and anything that reads
// more than a buffered head is left to serve. Close waits for the
// callback to return (see closeConns).
func (cc *clientConn) serveReady() int {
	cc.ready = readyEnd // until the callback leaves otherwise
	if cc.br == nil || cc.br.Buffered() == 0 {
		cc.idleFrom = time.Now()
		cc.markIdle(cc.idleFrom)
		cc.extendIdleDeadline()
	}
	// An error (idle timeout, closed) ends the connection, but for the
	// timeout of a deadline the idle one has moved past (rearm).
	err := cc.sio.Raw.Read(cc.readyFn)
	for err != nil && cc.sio.rearm(err) {
		err = cc.sio.Raw.Read(cc.readyFn)
	}
	cc.markBusy()
	return cc.ready
}

// doReady is serveReady's callback: true ends the call with cc.ready set,
// false waits for the client's next bytes.
func (cc *clientConn) doReady(fd uintptr) bool {
	cc.markBusy()
	cc.acquire()
	cc.sio.inPoll, cc.sio.fd = true, fd
	emptied := false // by a read since the poller's readiness was taken
	for {
		if cc.br.Buffered() == 0 {
			if emptied {
				return cc.waitNext()
			}
			if _, err := cc.br.Peek(1); err == errAgain {
				return cc.waitNext()
			} else if err != nil {
				return cc.leave(readyEnd) // closed or reset between requests: no answer
			}
			emptied = cc.sio.inq == 0
		}
		if !headBuffered(cc.br) {
			return cc.leave(readyPartial)
		}
		// Whole, the head is parsed without a read (errAgain cannot come).
		if err := readRequest(cc.br, &cc.req, cc.f.lim); err != nil {
			cc.sio.inPoll = false
			cc.requestFailed(err)
			return cc.leave(readyEnd)
		}
		if cc.req.readsMore() {
			return cc.leave(readyParsed)
		}
		if !cc.forward() {
			return cc.leave(readyEnd)
		}
		if cc.idleFrom.IsZero() { // forward's answer did not say when it ended
			cc.idleFrom = time.Now()
		}
	}
}

func (cc *clientConn) leave(ready int) bool {
	cc.sio.inPoll = false
	cc.ready = ready
	return true
}

// waitNext readies the connection for the wait in doReady's caller.
func (cc *clientConn) waitNext() bool {
	cc.sio.askInq() // from now on, reads say what they leave
	cc.sio.inPoll = false
	cc.extendIdleDeadline()
	if cc.f.open.Load() > lightLoad {
		cc.release() // many connections: hold no buffer while waiting
	}
	cc.markIdle(cc.idleFrom)
	return false
}

// markIdle records that the connection waits for a request since t, and
// markBusy that it does not.
func (cc *clientConn) markIdle(t time.Time) {
	cc.idleSince.Store(max(1, int64(t.Sub(cc.f.epoch))))
}

func (cc *clientConn) markBusy() { cc.idleSince.Store(0) }

// flushHeld sends the answers held back for pipelined requests, if any
// (see relayResponse). Its error sticks in bw: callers that go on anyway
// fail at the answer's next write, or at writeErr.
func (cc *clientConn) flushHeld() error {
	if cc.bw != nil && cc.bw.Buffered() > 0 {
		return cc.bw.Flush()
	}
	return nil
}

// writeErr returns the error bw met writing to its connection, if any: a
// bufio.Writer keeps it, and an empty write returns it.
func writeErr(bw *bufio.Writer) error {
	_, err := bw.Write(nil)
	return err
}

// headBuffered reports whether br holds a whole request head.
func headBuffered(br *bufio.Reader) bool {
	p, _ := br.Peek(br.Buffered())
	return bytes.Contains(p, []byte("\r\n\r\n"))
}

// waitReadable blocks until the connection has data (or EOF, or an error)
// without reading any of it. It peeks with MSG_PEEK|MSG_DONTWAIT before
// waiting, since readiness may have been signalled already.
func (cc *clientConn) waitReadable() error {
	if cc.raw == nil {
		return nil // not a socket: just read
	}
	var one byte
	var werr error
	err := cc.raw.Read(func(fd uintptr) bool {
		_, e := peekRaw(fd, &one)
		if e == syscall.EAGAIN || e == syscall.EINTR {
			return false
		}
		werr = nil
		if e != 0 {
			werr = e
		}
		return true
	})
	if err != nil {
		return err
	}
	return werr
}

// requestFailed answers a request weldr could not read, then the
// connection closes: after a malformed message the stream cannot be
// trusted (RFC 9112 §9.3).
func (cc *clientConn) requestFailed(err error) {
	var pe *parseError
	var ne net.Error
	switch {
	case errors.As(err, &pe):
		cc.f.w.log.Debug("rejected request", "client", cc.remote, "status", pe.status, "reason", pe.msg)
		cc.refuse(time.Now(), pe.status, pe.msg+"\n", nil)
	case errors.As(err, &ne) && ne.Timeout() && cc.req.headBytes > 0:
		cc.refuse(time.Now(), http.StatusRequestTimeout, "request header timeout\n", nil)
	case errors.Is(err, io.ErrUnexpectedEOF) && cc.req.headBytes > 0:
		cc.refuse(time.Now(), http.StatusBadRequest, "incomplete request\n", nil)
	}
	// A clean EOF or reset between requests needs no answer.
}

// refuse answers a request weldr will not forward (read since start, and
// sent to b if not nil) with code and msg, counts it, logs it, and marks
// the connection for closing.
func (cc *clientConn) refuse(start time.Time, code int, msg string, b *backend) {
	cc.f.w.stats.generated(code)
	cc.writeError(code, msg)
	cc.logAccess(start, code, int64(len(msg)), b)
}

// writeError writes a response weldr makes itself and marks the
// connection for closing.
func (cc *clientConn) writeError(code int, msg string) {
	bw := cc.bw
	if bw == nil {
		cc.acquire()
		bw = cc.bw
	}
	cc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	writeStatusLine(bw, code, nil)
	bw.WriteString("Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(msg)))
	bw.WriteString("\r\n\r\n")
	bw.WriteString(msg)
	bw.Flush()
}

func writeStatusLine(bw *bufio.Writer, code int, reason []byte) {
	bw.WriteString("HTTP/1.1 ")
	bw.WriteByte(byte('0' + code/100)) // a local array written whole would escape
	bw.WriteByte(byte('0' + code/10%10))
	bw.WriteByte(byte('0' + code%10))
	bw.WriteByte(' ')
	if reason == nil {
		bw.WriteString(http.StatusText(code))
	} else {
		bw.Write(reason)
	}
	bw.WriteString("\r\n")
}
