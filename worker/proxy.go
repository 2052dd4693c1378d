package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// proxy is the http.Handler that forwards each request to a server of the
// current snapshot.
type proxy struct {
	w            *worker
	transport    *http.Transport
	preserveHost bool
	accessLog    *slog.Logger // nil: no access log
	bufs         sync.Pool    // *[]byte of bufSize, for body copies
	tunnels      tunnels      // hijacked connections, which the server no longer tracks
}

const bufSize = 64 << 10

func newProxy(w *worker, connectTimeout, responseHeaderTimeout time.Duration) *proxy {
	d := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	p := &proxy{w: w}
	p.transport = &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &connectError{err: err}
			}
			return c, nil
		},
		MaxIdleConns:          0, // no global limit: the per-host one applies
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: responseHeaderTimeout,
		DisableCompression:    true,
		WriteBufferSize:       bufSize,
		ReadBufferSize:        bufSize,
		// Backends speak HTTP/1.1; an empty map keeps HTTP/2 off.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	p.bufs.New = func() any { b := make([]byte, bufSize); return &b }
	return p
}

// connectError marks a failure to connect to a backend: nothing of the
// request was sent, so the next server may be tried.
type connectError struct{ err error }

func (e *connectError) Error() string { return "connecting: " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// Plain-text bodies of the responses weldr itself generates.
var (
	msgNoServer   = "no server available\n"
	msgBadGateway = "bad gateway\n"
	msgTimeout    = "gateway timeout\n"
	msgBadRequest = "bad request\n"
)

func (p *proxy) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	s := p.w.snap.Load()
	b := p.w.balancer.pick(s)
	if b == nil {
		p.w.stats.clientFailed.Add(1)
		p.generated(rw, r, start, http.StatusServiceUnavailable, msgNoServer, nil)
		return
	}

	out := p.outgoing(r)
	var body *requestBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &requestBody{rc: r.Body}
		out.Body = body
	}

	var res *http.Response
	var err error
	for tries := 1; ; tries++ {
		out.URL.Scheme, out.URL.Host = b.scheme, b.id
		b.inflight.Add(1)
		res, err = p.transport.RoundTrip(out)
		if err == nil {
			break
		}
		var ce *connectError
		if !errors.As(err, &ce) {
			break
		}
		b.stats.fail(&b.stats.connectFailed)
		b.inflight.Add(-1)
		next := s.after(b)
		if next == nil || tries >= len(s.up) || (body != nil && body.started()) || r.Context().Err() != nil {
			b = nil // already counted
			break
		}
		p.w.log.Debug("server refused connection, trying the next", "server", b.id, "error", err)
		b = next
	}
	if err != nil {
		p.roundTripFailed(rw, r, start, b, body, err)
		if b != nil {
			b.inflight.Add(-1)
		}
		return
	}
	defer b.inflight.Add(-1)

	if res.StatusCode == http.StatusSwitchingProtocols {
		p.tunnel(rw, r, res, b, start)
		return
	}

	bp := p.bufs.Get().(*[]byte)
	defer p.bufs.Put(bp)
	buf := *bp
	// With a known length, read the first chunk before committing the
	// status line: a backend that fails before sending any of its body
	// still gets the client a clean 502. Streams go out at once.
	var first int
	if res.ContentLength > 0 {
		var err error
		first, err = readSome(res.Body, buf)
		if err != nil && err != io.EOF {
			res.Body.Close()
			p.roundTripFailed(rw, r, start, b, nil, err)
			return
		}
	}

	h := rw.Header()
	copyHeader(h, res.Header)
	h["Via"] = append(h["Via"], via)
	if p.w.draining.Load() {
		h["Connection"] = []string{"close"}
	}
	rw.WriteHeader(res.StatusCode)
	n, readErr, writeErr := copyBody(rw, res.Body, buf, first, res.ContentLength == -1)
	res.Body.Close()
	if len(res.Trailer) > 0 {
		for k, vv := range res.Trailer {
			h[http.TrailerPrefix+k] = vv
		}
	}

	if readErr != nil {
		b.stats.fail(&b.stats.broken)
	} else {
		b.stats.answered(res.StatusCode)
	}
	if readErr != nil || writeErr != nil {
		p.w.stats.clientFailed.Add(1)
	} else {
		p.w.stats.clientSuccess.Add(1)
	}
	p.logAccess(r, res.StatusCode, n, start, b)
	if readErr != nil {
		// The backend broke off mid-body. Returning normally would end a
		// chunked response cleanly and pass a truncated body as whole;
		// aborting closes the client's connection instead.
		// Flushing first shows the client the status and what did arrive,
		// so it sees a short body rather than no answer at all.
		p.w.log.Debug("backend broke off the response", "server", b.id, "error", readErr)
		http.NewResponseController(rw).Flush()
		panic(http.ErrAbortHandler)
	}
}

// roundTripFailed answers a request that got no response from any backend.
// b is the server that failed, or nil if its failure was already counted.
func (p *proxy) roundTripFailed(rw http.ResponseWriter, r *http.Request, start time.Time, b *backend, body *requestBody, err error) {
	p.w.stats.clientFailed.Add(1)
	code, msg := http.StatusBadGateway, msgBadGateway
	var ne net.Error
	switch {
	case body != nil && body.broken():
		// The client's own body was broken (bad chunking, or it hung up):
		// not the backend's fault.
		code, msg = http.StatusBadRequest, msgBadRequest
		b = nil
	case r.Context().Err() != nil:
		b = nil // the client went away
	case errors.As(err, &ne) && ne.Timeout():
		code, msg = http.StatusGatewayTimeout, msgTimeout
	}
	if b != nil {
		if code == http.StatusGatewayTimeout {
			b.stats.fail(&b.stats.timedOut)
		} else {
			b.stats.fail(&b.stats.broken)
		}
	}
	p.w.log.Debug("proxying failed", "status", code, "error", err)
	p.generated(rw, r, start, code, msg, b)
}

// generated writes a response weldr makes itself: short, plain text, never
// cached.
func (p *proxy) generated(rw http.ResponseWriter, r *http.Request, start time.Time, code int, msg string, b *backend) {
	switch code {
	case http.StatusBadRequest:
		p.w.stats.badRequest.Add(1)
	case http.StatusBadGateway:
		p.w.stats.badGateway.Add(1)
	case http.StatusServiceUnavailable:
		p.w.stats.unavailable.Add(1)
	case http.StatusGatewayTimeout:
		p.w.stats.gatewayTimeout.Add(1)
	}
	h := rw.Header()
	h["Content-Type"] = []string{"text/plain; charset=utf-8"}
	h["Content-Length"] = []string{strconv.Itoa(len(msg))}
	h["Cache-Control"] = []string{"no-store"}
	if p.w.draining.Load() {
		h["Connection"] = []string{"close"}
	}
	rw.WriteHeader(code)
	io.WriteString(rw, msg)
	p.logAccess(r, code, int64(len(msg)), start, b)
}

// via is appended to the Via header of what weldr forwards (RFC 9110 §7.6.3).
const via = "1.1 weldr"

// outgoing builds the request to send upstream: the client's request with
// hop-by-hop headers removed and forwarding headers added. Its URL's scheme
// and host are set per attempt.
func (p *proxy) outgoing(r *http.Request) *http.Request {
	out := new(http.Request)
	*out = *r // keeps the context, method, proto, content length
	out.URL = &url.URL{Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
	out.RequestURI = ""
	out.Close = false
	out.Body = nil
	if !p.preserveHost {
		out.Host = ""
	}

	h := make(http.Header, len(r.Header)+4)
	copyHeader(h, r.Header)
	if up := upgradeType(r.Header); up != "" {
		h["Connection"] = []string{"Upgrade"}
		h["Upgrade"] = []string{up}
	}
	if hasToken(r.Header["Te"], "trailers") {
		h["Te"] = []string{"trailers"}
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // keep Go's default out
	}
	ip := r.RemoteAddr
	if host, _, err := net.SplitHostPort(ip); err == nil {
		ip = host
	}
	if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 {
		ip = strings.Join(prior, ", ") + ", " + ip
	}
	h["X-Forwarded-For"] = []string{ip}
	h["X-Forwarded-Host"] = []string{r.Host}
	h["X-Forwarded-Proto"] = []string{"http"}
	h["Via"] = append(r.Header["Via"][:len(r.Header["Via"]):len(r.Header["Via"])], via)
	out.Header = h
	return out
}

// hopHeaders are meaningful for one connection only and are never forwarded
// (RFC 9110 §7.6.1), nor are the headers the Connection header names.
var hopHeaders = map[string]bool{
	"Connection":          true,
	"Proxy-Connection":    true,
	"Keep-Alive":          true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
}

// copyHeader copies src into dst, leaving out hop-by-hop headers. The value
// slices are shared, not copied: neither side changes them afterwards.
func copyHeader(dst, src http.Header) {
	conn := src["Connection"]
	for k, vv := range src {
		if hopHeaders[k] || strings.HasPrefix(k, "Proxy-") || (len(conn) > 0 && hasToken(conn, k)) {
			continue
		}
		dst[k] = vv
	}
}

// hasToken reports whether the comma-separated header values hold token,
// case-insensitively.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// upgradeType returns the protocol a request asks to switch to, or "".
func upgradeType(h http.Header) string {
	if !hasToken(h["Connection"], "upgrade") {
		return ""
	}
	if up := h["Upgrade"]; len(up) > 0 {
		return up[0]
	}
	return ""
}

// readSome reads until it has at least one byte or an error.
func readSome(r io.Reader, buf []byte) (int, error) {
	for {
		n, err := r.Read(buf)
		if n > 0 || err != nil {
			return n, err
		}
	}
}

// copyBody streams a response body to the client, starting with the first
// bytes already in buf, and flushing after each chunk when the response has
// no length (streams, server-sent events).
func copyBody(rw http.ResponseWriter, body io.Reader, buf []byte, first int, flush bool) (n int64, readErr, writeErr error) {
	var fl http.Flusher
	if flush {
		fl, _ = rw.(http.Flusher)
	}
	for {
		nr, rerr := first, error(nil)
		if first > 0 {
			first = 0
		} else {
			nr, rerr = body.Read(buf)
		}
		if nr > 0 {
			nw, werr := rw.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, nil, werr
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if rerr == io.EOF {
			return n, nil, nil
		}
		if rerr != nil {
			return n, rerr, nil
		}
	}
}

// tunnel relays bytes both ways after a backend agreed to switch protocols
// (WebSocket and other Upgrade requests), until either side closes.
func (p *proxy) tunnel(rw http.ResponseWriter, r *http.Request, res *http.Response, b *backend, start time.Time) {
	backConn, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		res.Body.Close()
		b.stats.fail(&b.stats.broken)
		p.roundTripFailed(rw, r, start, nil, nil, errors.New("switching protocols: backend body is not writable"))
		return
	}
	defer backConn.Close()
	tu := p.tunnels.begin()
	defer p.tunnels.end(tu)
	conn, brw, err := http.NewResponseController(rw).Hijack()
	if err != nil {
		b.stats.fail(&b.stats.broken)
		p.roundTripFailed(rw, r, start, nil, nil, err)
		return
	}
	defer conn.Close()
	p.tunnels.attach(tu, conn)
	b.stats.answered(res.StatusCode)
	p.w.stats.clientSuccess.Add(1)
	p.logAccess(r, res.StatusCode, 0, start, b)

	h := make(http.Header, len(res.Header)+1)
	copyHeader(h, res.Header)
	h["Connection"] = []string{"Upgrade"}
	h["Upgrade"] = res.Header["Upgrade"]
	h["Via"] = append(h["Via"], via)
	res.Header = h
	res.Body = nil
	if err := res.Write(brw); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}
	conn.SetDeadline(time.Time{})
	done := make(chan struct{}, 2)
	go func() { io.Copy(conn, backConn); done <- struct{}{} }()
	go func() { io.Copy(backConn, brw); done <- struct{}{} }()
	<-done
	// One side is finished: closing both (deferred) ends the other copy,
	// which is waited for so that no goroutine outlives the request.
	conn.Close()
	backConn.Close()
	<-done
}

// logAccess writes one access log line, if access logging is on.
func (p *proxy) logAccess(r *http.Request, status int, n int64, start time.Time, b *backend) {
	if p.accessLog == nil {
		return
	}
	upstream := "-"
	if b != nil {
		upstream = b.id
	}
	p.accessLog.LogAttrs(r.Context(), slog.LevelInfo, "access",
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.Int64("bytes", n),
		slog.Duration("duration", time.Since(start)),
		slog.String("upstream", upstream),
		slog.String("client", r.RemoteAddr),
	)
}

// requestBody wraps a client's request body on its way upstream. It remembers
// whether any byte was read (after which a request is never retried) and
// whether reading failed, and it leaves closing to the server that owns the
// body, so that the transport's close after a refused connection does not
// spoil a retry.
type requestBody struct {
	rc   io.ReadCloser
	mu   sync.Mutex // guards read and err: the transport reads on its own goroutine
	read bool
	err  error
}

func (rb *requestBody) Read(p []byte) (int, error) {
	n, err := rb.rc.Read(p)
	rb.mu.Lock()
	rb.read = true
	if err != nil && err != io.EOF {
		rb.err = err
	}
	rb.mu.Unlock()
	return n, err
}

func (rb *requestBody) Close() error { return nil }

// started reports whether any of the body was read.
func (rb *requestBody) started() bool {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.read
}

// broken reports whether reading the client's body failed.
func (rb *requestBody) broken() bool {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.err != nil
}
