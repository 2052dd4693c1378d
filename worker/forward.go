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
	"syscall"
	"time"
)

// Plain-text bodies of the responses weldr itself generates.
const (
	msgNoServer   = "no server available\n"
	msgBadGateway = "bad gateway\n"
	msgTimeout    = "gateway timeout\n"
	msgCut        = "shutting down\n"
	msgBadRequest = "bad request\n"
	msgTooLarge   = "request body too large\n"
)

// How a response body is delimited.
const (
	bodyNone = iota
	bodyFixed
	bodyChunked
	bodyUntilClose
)

// maxInterim bounds the 1xx responses read before the final one.
const maxInterim = 8

// forward sends the request in cc.req to a backend and relays its answer.
// It reports whether the connection may carry another request.
func (cc *clientConn) forward() bool {
	keep := cc.forwardOn()
	cc.upstream.Store(nil)
	return keep
}

// forwardOn is forward, but for forgetting the backend connection it used
// (track).
func (cc *clientConn) forwardOn() bool {
	f, w, req := cc.f, cc.f.w, &cc.req
	start := time.Now()
	cc.idleFrom = time.Time{} // until an answer says when it ended
	cc.fresh = false

	path, host := requestTarget(req)
	hasBody := req.chunked || req.contentLength > 0
	if f.maxBody > 0 && req.contentLength > f.maxBody {
		cc.refuse(start, http.StatusRequestEntityTooLarge, msgTooLarge, nil)
		return false
	}

	s := w.route()
	b := w.balancer.pick(s)
	if b == nil {
		return cc.generated(start, http.StatusServiceUnavailable, msgNoServer, nil, hasBody)
	}

	// Connect, trying the next server after a refused connection: nothing
	// was sent yet.
	var up *upConn
	var err error
	first := b
	now := start // one clock reading per request where it will do
	for tries := 1; ; tries++ {
		b.inflight.Add(1)
		if tries > 1 { // a connection failed: that may have taken a while
			now = time.Now()
		}
		if up = f.up.idle(b, !hasBody, now); up != nil {
			break
		}
		if cc.flushHeld() != nil { // before connecting, which may take a while
			b.inflight.Add(-1)
			w.stats.clientFailed.Add(1) // gone: nothing was sent
			return false
		}
		if up, err = f.up.dial(f.dials, b); err == nil {
			break
		}
		b.inflight.Add(-1)
		if f.cut.Load() { // the drain's deadline ended the attempt
			return cc.backendFailed(start, b, err)
		}
		b.stats.fail(&b.stats.connectFailed)
		next := s.after(b)
		if next == nil || next == first || tries >= len(s.up) { // each server once
			w.log.Debug("no server accepted the connection", "last", b.id, "error", err)
			code, msg := http.StatusBadGateway, msgBadGateway
			if isTimeout(err) {
				code, msg = http.StatusGatewayTimeout, msgTimeout
			}
			return cc.generated(start, code, msg, nil, hasBody)
		}
		w.log.Debug("server refused connection, trying the next", "server", b.id, "error", err)
		b = next
	}
	defer b.inflight.Add(-1)
	cc.track(up)

	if req.expect && hasBody {
		// weldr answers the expectation itself once a backend is
		// connected, and does not forward it.
		cc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		cc.bw.Flush()
	}

	res := &cc.res
	for attempt := 0; ; attempt++ {
		err, inBody := cc.exchange(up, b, path, host, hasBody, now)
		if err == nil {
			break
		}
		up.c.Close()
		if inBody {
			return cc.bodyFailed(start, b, err)
		}
		// A kept-alive connection the server closed while idle fails before
		// any byte of an answer: try once on a new one if the request can
		// be sent again (no body was consumed).
		if up.reused && attempt == 0 && !hasBody && res.headBytes == 0 && isStale(err) {
			cc.flushHeld()
			if up, err = f.up.dial(f.dials, b); err == nil {
				cc.track(up)
				continue
			}
		}
		return cc.backendFailed(start, b, err)
	}

	if res.status == http.StatusSwitchingProtocols {
		if req.upgrade == nil || res.upgrade == nil {
			up.c.Close()
			return cc.backendFailed(start, b, errors.New("switching protocols without an upgrade"))
		}
		cc.tunnel(up, b, start)
		return false
	}
	return cc.relayResponse(up, b, start)
}

// track records up as the backend connection the request uses, for the
// drain's deadline to close (frontend.closeAll); if the deadline came
// first, it closes up itself. Either way the request ends without waiting
// on the backend.
func (cc *clientConn) track(up *upConn) {
	cc.upstream.Store(up)
	if cc.f.cut.Load() {
		up.c.Close()
	}
}

// exchange sends the request on up and reads the answer's head. inBody
// reports a failure while forwarding the request body. now is when up was
// taken from the pool.
func (cc *clientConn) exchange(up *upConn, b *backend, path, host []byte, hasBody bool, now time.Time) (err error, inBody bool) {
	cc.res.reset() // no byte of an answer yet, for forward's retry
	cc.writeRequestHead(up.bw, b, path, host)
	if hasBody {
		if err := cc.sendBody(up); err != nil {
			return err, true
		}
	} else if err := up.bw.Flush(); err != nil {
		return err, false
	}
	// The response header timeout runs from when the request went out:
	// now, unless a connection was made or a body sent since.
	sent := now
	if hasBody || !up.reused {
		sent = time.Now()
	}
	return cc.readFinalResponse(up, sent), false
}

// readFinalResponse reads the backend's answer head, skipping or passing on
// interim (1xx) responses, within the response header timeout from sent.
func (cc *clientConn) readFinalResponse(up *upConn, sent time.Time) error {
	f, res := cc.f, &cc.res
	t := f.up.responseHeaderTimeout
	if cc.bw.Buffered() > 0 && up.br.Buffered() == 0 {
		if err := cc.awaitHolding(up, t); err != nil {
			return err
		}
	} else if t > 0 {
		// Cleared by relayResponse or tunnel only if they read more, and
		// set lazily (extendReadDeadline): a deadline costs a timer update
		// each time it is passed to the poller. A pooled connection keeps
		// it until its next exchange sets its own.
		up.sio.extendReadDeadline(sent.Add(t))
	}
	for range maxInterim {
		if err := readResponse(up.br, res, f.lim); err != nil {
			return err
		}
		if res.status >= 200 || res.status == http.StatusSwitchingProtocols {
			return nil
		}
		cc.flushHeld() // the final answer may be long in coming
		// 100 Continue was answered by weldr already; other interim
		// answers (103 Early Hints) go to HTTP/1.1 clients.
		if res.status != http.StatusContinue && cc.req.minor == 1 {
			writeStatusLine(cc.bw, res.status, res.reason)
			cc.writeResponseHeaders(res)
			cc.bw.WriteString("\r\n")
			cc.bw.Flush()
		}
	}
	return errors.New("too many interim responses")
}

// awaitHolding waits for the first byte of the backend's answer while
// answers to earlier pipelined requests are held back (see relayResponse),
// for at most the front end's hold: past it, they go out and the wait goes
// on. It leaves the read deadline of the response header timeout t.
func (cc *clientConn) awaitHolding(up *upConn, t time.Duration) error {
	start := time.Now()
	hold := cc.f.hold
	if t > 0 {
		hold = min(hold, t)
	}
	up.sio.setReadDeadline(start.Add(hold))
	_, err := up.br.Peek(1)
	if isTimeout(err) {
		cc.flushHeld()
	} else if err != nil {
		return err
	}
	var d time.Time
	if t > 0 {
		d = start.Add(t)
	}
	up.sio.setReadDeadline(d)
	return nil
}

// sendBody forwards the request body, re-framed, then flushes.
func (cc *clientConn) sendBody(up *upConn) error {
	f, req := cc.f, &cc.req
	var err error
	if req.chunked {
		_, err = copyChunked(up.bw, cc.br, true, false, f.readSize, f.maxBody)
	} else {
		_, err = copyFixed(up.bw, nil, cc.br, nil, req.contentLength)
	}
	if err == nil {
		err = up.bw.Flush()
	}
	return err
}

// relayResponse writes the response head and body to the client and
// decides whether both connections may be kept.
func (cc *clientConn) relayResponse(up *upConn, b *backend, start time.Time) bool {
	f, w, req, res := cc.f, cc.f.w, &cc.req, &cc.res
	mode := bodyUntilClose
	switch {
	case equalFold(req.method, "HEAD") || res.status == http.StatusNoContent || res.status == http.StatusNotModified:
		mode = bodyNone
	case res.chunked:
		mode = bodyChunked
	case res.contentLength >= 0:
		mode = bodyFixed
	}
	rechunk := req.minor == 1
	keep := !req.close && !w.draining.Load()
	if (mode == bodyChunked || mode == bodyUntilClose) && !rechunk {
		keep = false // an HTTP/1.0 client learns the end from the close
	}

	bw := cc.bw
	bodyHere := mode == bodyNone || mode == bodyFixed && int64(up.br.Buffered()) >= res.contentLength
	if !bodyHere {
		// Held answers do not wait on this body, and a backend that fails
		// before its first byte can still be answered with a clean 502.
		cc.flushHeld()
	}
	flushed := bw.Buffered() // 0: the previous answer went out whole
	writeStatusLine(bw, res.status, res.reason)
	cc.writeResponseHeaders(res)
	switch mode {
	case bodyFixed:
		writeLength(bw, res.contentLength)
	case bodyNone:
		if res.contentLength >= 0 && res.status != http.StatusNoContent {
			writeLength(bw, res.contentLength) // HEAD and 304 say what GET would get
		}
	default:
		if rechunk {
			bw.WriteString("Transfer-Encoding: chunked\r\n")
		}
	}
	switch {
	case !keep:
		bw.WriteString("Connection: close\r\n")
	case req.minor == 0:
		bw.WriteString("Connection: keep-alive\r\n")
	}
	bw.WriteString("\r\n")
	head := bw.Buffered() - flushed

	if f.up.responseHeaderTimeout > 0 && !bodyHere {
		// The body is not all here: the response header timeout does not
		// bound its reading.
		up.sio.setReadDeadline(time.Time{})
	}
	var n int64
	var err error
	switch mode {
	case bodyFixed:
		n, err = copyFixed(bw, &cc.sio, up.br, &up.sio, res.contentLength)
	case bodyChunked:
		n, err = copyChunked(bw, up.br, rechunk, true, f.readSize, 0)
	case bodyUntilClose:
		n, err = copyUntilClose(bw, up.br, rechunk)
	}
	// When the next request of a pipelining client is here whole, this
	// answer is held: it waits in the buffer and goes out with the next
	// ones, one write for all instead of one each (flushHeld's callers say
	// when held answers go out). So an answer is held only while the
	// client's buffer holds a request: serve never waits idle on one.
	switch {
	case err != nil:
	case keep && headBuffered(cc.br):
		err = writeErr(bw) // a client gone since an earlier write
	default:
		err = bw.Flush()
	}
	// errors.AsType, not errors.As: a variable whose address errors.As
	// takes lives on the heap, one allocation per request.
	_, fromSrc := errors.AsType[*srcError](err)
	switch {
	case fromSrc && n == 0 && flushed == 0 && bw.Buffered() == head:
		// The backend failed before any byte of the body, and nothing of
		// the answer reached the client yet: a clean 502 instead.
		up.c.Close()
		bw.Reset(cc.rw)
		return cc.backendFailed(start, b, err)
	case fromSrc:
		// The backend broke off mid-body: send what arrived, then close
		// the client's connection without ending the message, so it
		// cannot pass as complete.
		up.c.Close()
		bw.Flush()
		if !f.cut.Load() { // not closed by the drain's deadline
			b.stats.fail(&b.stats.broken)
		}
		w.stats.clientFailed.Add(1)
		w.log.Debug("backend broke off the response", "server", b.id, "error", err)
		cc.logAccess(start, res.status, n, b)
		return false
	case err != nil:
		up.c.Close()
		b.stats.answered(res.status)
		w.stats.clientFailed.Add(1)
		cc.logAccess(start, res.status, n, b)
		return false
	}
	now := time.Now()
	if mode == bodyUntilClose || res.close {
		up.c.Close()
	} else {
		f.up.put(b, up, now)
	}
	cc.idleFrom = now
	b.stats.answered(res.status)
	w.stats.clientSuccess.Add(1)
	cc.logAccess(start, res.status, n, b)
	return keep
}

// bodyFailed handles a request body that could not be forwarded.
func (cc *clientConn) bodyFailed(start time.Time, b *backend, err error) bool {
	_, fromSrc := errors.AsType[*srcError](err)
	switch {
	case errors.Is(err, errBodyTooLarge):
		cc.refuse(start, http.StatusRequestEntityTooLarge, msgTooLarge, b)
		return false
	case fromSrc:
		// The client's body was broken (bad chunking, or it hung up): not
		// the backend's fault.
		return cc.generated(start, http.StatusBadRequest, msgBadRequest, nil, true)
	}
	return cc.backendFailed(start, b, err)
}

// backendFailed answers a request whose backend failed before answering.
func (cc *clientConn) backendFailed(start time.Time, b *backend, err error) bool {
	code, msg := http.StatusBadGateway, msgBadGateway
	switch {
	case cc.f.cut.Load():
		// The drain's deadline closed the connection: not the server's fault.
		code, msg = http.StatusServiceUnavailable, msgCut
	case isTimeout(err):
		code, msg = http.StatusGatewayTimeout, msgTimeout
		b.stats.fail(&b.stats.timedOut)
	default:
		b.stats.fail(&b.stats.broken)
	}
	cc.f.w.log.Debug("proxying failed", "server", b.id, "status", code, "error", err)
	return cc.generated(start, code, msg, b, true)
}

// generated answers with a response weldr makes itself. When the request
// body was not read (unread), the connection cannot carry another request.
func (cc *clientConn) generated(start time.Time, code int, msg string, b *backend, unread bool) bool {
	w := cc.f.w
	w.stats.generated(code)
	keep := !unread && !cc.req.close && !w.draining.Load()
	bw := cc.bw
	writeStatusLine(bw, code, nil)
	bw.WriteString("Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n")
	writeLength(bw, int64(len(msg)))
	if !keep {
		bw.WriteString("Connection: close\r\n")
	} else if cc.req.minor == 0 {
		bw.WriteString("Connection: keep-alive\r\n")
	}
	bw.WriteString("\r\n")
	if !equalFold(cc.req.method, "HEAD") {
		bw.WriteString(msg)
	}
	bw.Flush()
	cc.logAccess(start, code, int64(len(msg)), b)
	return keep
}

func writeLength(bw *bufio.Writer, n int64) {
	bw.WriteString("Content-Length: ")
	writeDigits(bw, n)
	bw.WriteString("\r\n")
}

// writeDigits writes n >= 0 in decimal. Byte by byte: a slice of a local
// array passed to bw.Write would escape, one allocation per call.
func writeDigits(bw *bufio.Writer, n int64) {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	for _, c := range b[i:] {
		bw.WriteByte(c)
	}
}

// requestTarget returns the origin-form target to send upstream and the
// host the client asked for (RFC 9112 §3.2). The parser has validated the
// target (validTarget), so an absolute-form one has a proper authority.
func requestTarget(req *message) (path, host []byte) {
	t := req.target
	var rest []byte
	switch {
	case len(t) > 7 && equalFold(t[:7], "http://"):
		rest = t[7:]
	case len(t) > 8 && equalFold(t[:8], "https://"):
		rest = t[8:]
	default: // origin-form, or * for OPTIONS
		return t, req.host
	}
	end := len(rest)
	for i, c := range rest {
		if c == '/' || c == '?' {
			end = i
			break
		}
	}
	path = rest[end:]
	if len(path) == 0 || path[0] == '?' {
		path = append([]byte{'/'}, path...)
	}
	return path, rest[:end]
}

// hopRequest reports whether a request header stays with this hop or is
// written by weldr itself: the hop-by-hop ones, and Host, Expect and the
// X-Forwarded fields, which weldr sets.
func hopRequest(name []byte) bool {
	if hopResponse(name) {
		return true
	}
	switch len(name) {
	case 4:
		return equalFold(name, "Host")
	case 6:
		return equalFold(name, "Expect")
	case 15:
		return equalFold(name, "X-Forwarded-For")
	case 16:
		return equalFold(name, "X-Forwarded-Host")
	case 17:
		return equalFold(name, "X-Forwarded-Proto")
	}
	return false
}

// hopResponse reports whether a header stays with this hop (RFC 9110
// §7.6.1) or is written by weldr itself (framing): what is never forwarded
// in either direction.
func hopResponse(name []byte) bool {
	hop := false
	switch len(name) {
	case 2:
		hop = equalFold(name, "TE")
	case 7:
		hop = equalFold(name, "Trailer") || equalFold(name, "Upgrade")
	case 10:
		hop = equalFold(name, "Connection") || equalFold(name, "Keep-Alive")
	case 14:
		hop = equalFold(name, "Content-Length")
	case 17:
		hop = equalFold(name, "Transfer-Encoding")
	}
	return hop || isProxyHeader(name)
}

// isProxyHeader matches Proxy-*: Proxy-Connection, Proxy-Authorization and
// the like concern the hop, never the origin.
func isProxyHeader(name []byte) bool {
	return len(name) > 6 && equalFold(name[:6], "Proxy-")
}

// writeRequestHead writes the request line and headers for the backend.
func (cc *clientConn) writeRequestHead(bw *bufio.Writer, b *backend, path, host []byte) {
	req := &cc.req
	bw.Write(req.method)
	bw.WriteByte(' ')
	bw.Write(path)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	if cc.f.preserveHost && len(host) > 0 {
		bw.Write(host)
	} else {
		bw.WriteString(b.id)
	}
	bw.WriteString("\r\n")
	listed := req.get("Connection") != nil
	for _, h := range req.headers {
		if hopRequest(h.name) || (listed && req.connectionNames(h.name)) {
			continue
		}
		writeHeader(bw, h)
	}
	// X-Forwarded-For: what earlier proxies said, then this client.
	bw.WriteString("X-Forwarded-For: ")
	for _, h := range req.headers {
		if equalFold(h.name, "X-Forwarded-For") && len(h.value) > 0 {
			bw.Write(h.value)
			bw.WriteString(", ")
		}
	}
	bw.WriteString(cc.ip)
	if len(host) > 0 { // an HTTP/1.0 request may have none
		bw.WriteString("\r\nX-Forwarded-Host: ")
		bw.Write(host)
	}
	bw.WriteString("\r\nX-Forwarded-Proto: http\r\n" + viaLine)
	if req.teTrailer {
		bw.WriteString("TE: trailers\r\n")
	}
	if req.upgrade != nil && hasConnectionToken(req, "upgrade") {
		bw.WriteString("Connection: Upgrade\r\nUpgrade: ")
		bw.Write(req.upgrade)
		bw.WriteString("\r\n")
	}
	switch {
	case req.chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case req.contentLength >= 0:
		writeLength(bw, req.contentLength)
	}
	bw.WriteString("\r\n")
}

const viaLine = "Via: 1.1 weldr\r\n"

// writeResponseHeaders writes the end-to-end headers of res and weldr's Via.
func (cc *clientConn) writeResponseHeaders(res *message) {
	bw := cc.bw
	listed := res.get("Connection") != nil
	for _, h := range res.headers {
		if hopResponse(h.name) || (listed && res.connectionNames(h.name)) {
			continue
		}
		writeHeader(bw, h)
	}
	bw.WriteString(viaLine)
}

func writeHeader(bw *bufio.Writer, h header) {
	bw.Write(h.name)
	bw.WriteString(": ")
	bw.Write(h.value)
	bw.WriteString("\r\n")
}

func hasConnectionToken(m *message, token string) bool {
	for _, h := range m.headers {
		if equalFold(h.name, "Connection") && hasTokenBytes(h.value, token) {
			return true
		}
	}
	return false
}

// tunnel relays bytes both ways after a backend agreed to switch protocols
// (WebSocket and other Upgrade requests), until either side closes.
func (cc *clientConn) tunnel(up *upConn, b *backend, start time.Time) {
	w, res := cc.f.w, &cc.res
	defer up.c.Close()
	if cc.f.up.responseHeaderTimeout > 0 {
		up.sio.setReadDeadline(time.Time{})
	}

	bw := cc.bw
	writeStatusLine(bw, res.status, res.reason)
	cc.writeResponseHeaders(res)
	bw.WriteString("Connection: Upgrade\r\nUpgrade: ")
	bw.Write(res.upgrade)
	bw.WriteString("\r\n\r\n")
	if err := bw.Flush(); err != nil {
		b.stats.answered(res.status)
		w.stats.clientFailed.Add(1)
		return
	}
	b.stats.answered(res.status)
	w.stats.clientSuccess.Add(1)
	cc.logAccess(start, res.status, 0, b)
	// The drain closes this connection at its deadline like any other.

	done := make(chan struct{}, 2)
	go func() { pump(cc.c, up.br, up.c); done <- struct{}{} }()
	go func() { pump(up.c, cc.br, cc.c); done <- struct{}{} }()
	<-done
	// One side finished: closing both ends the other copy, which is waited
	// for so that no goroutine outlives the connection.
	cc.c.Close()
	up.c.Close()
	<-done
}

// logAccess writes one access log line, if access logging is on.
func (cc *clientConn) logAccess(start time.Time, status int, n int64, b *backend) {
	l := cc.f.accessLog
	if l == nil {
		return
	}
	upstream := "-"
	if b != nil {
		upstream = b.id
	}
	path := cc.req.target
	if i := bytes.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	l.LogAttrs(context.Background(), slog.LevelInfo, "access",
		slog.String("method", orDash(cc.req.method)),
		slog.String("path", orDash(path)),
		slog.Int("status", status),
		slog.Int64("bytes", n),
		slog.Duration("duration", time.Since(start)),
		slog.String("upstream", upstream),
		slog.String("client", cc.remote),
	)
}

// orDash is b as a string, or "-" if empty: a request refused before its
// request line was read has no method or path.
func orDash(b []byte) string {
	if len(b) == 0 {
		return "-"
	}
	return string(b)
}

func isTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// isStale reports whether an error before any byte of an answer means the
// backend had closed a kept-alive connection.
func isStale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// pump copies to dst what br holds, then src until it ends: socket to
// socket, so that TCP connections splice (br reads through sockIO, which
// cannot).
func pump(dst net.Conn, br *bufio.Reader, src net.Conn) {
	if n := br.Buffered(); n > 0 {
		p, _ := br.Peek(n)
		if _, err := dst.Write(p); err != nil {
			return
		}
		br.Discard(n)
	}
	io.Copy(dst, src)
}
