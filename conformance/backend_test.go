package conformance

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// backend is a scripted origin that speaks HTTP/1.1 at the byte level. It
// parses what the proxy sends strictly enough to notice a badly framed
// message, records every request with its raw head, and answers with
// whatever bytes the current script writes. It answers weldr's health
// checks itself, without recording them.
type backend struct {
	ln net.Listener
	wg sync.WaitGroup // connection goroutines

	mu     sync.Mutex // guards the fields below and those of the requests in reqs
	script script
	reqs   []*request        // since the last reset, in the order their heads arrived
	checks int               // health checks answered
	conns  map[net.Conn]bool // open connections, closed at cleanup
	nconns int               // connections accepted so far
	closed int               // connections closed so far
}

// A script answers one request the backend has read in full (or as far as
// its framing allowed: then r.err is set and the connection is closed after
// the script). It writes what the backend sends back to c and reports
// whether to keep reading requests on the connection.
type script func(c *backendConn, r *request) (keep bool)

// backendConn is one connection from the proxy to the backend.
type backendConn struct {
	net.Conn
	br *bufio.Reader // what follows the request, for tunnels
}

// field is one header or trailer field line, as received.
type field struct{ name, value string }

// request is one request as the backend received it.
type request struct {
	conn                  int    // index of the backend connection, in accept order
	head                  []byte // request line and fields through the empty line, as received
	method, target, proto string
	fields                []field
	body                  []byte // the content, chunked coding removed
	chunked               bool
	trailer               []field
	complete              bool  // the whole message was received and well framed
	err                   error // why not; nil while the body is still coming
}

// values returns the values of every field line named name, in order.
func (r *request) values(name string) []string {
	return fieldValues(r.fields, name)
}

func (r *request) get(name string) string {
	return strings.Join(r.values(name), ", ")
}

func fieldValues(fs []field, name string) []string {
	var vs []string
	for _, f := range fs {
		if strings.EqualFold(f.name, name) {
			vs = append(vs, f.value)
		}
	}
	return vs
}

func (r *request) String() string {
	return fmt.Sprintf("%q + body %q (connection %d, complete %v, err %v)", r.head, r.body, r.conn, r.complete, r.err)
}

// echo is the default script: 200 with a body naming the request (none
// for HEAD, RFC 9110 §9.3.2).
func echo(c *backendConn, r *request) bool {
	body := echoBody(r)
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(body))
	if r.method != "HEAD" {
		io.WriteString(c, body)
	}
	return true
}

// echoBody is what echo answers for r.
func echoBody(r *request) string {
	return fmt.Sprintf("%s %s %s", r.method, r.target, r.body)
}

// answer is a script that writes raw whatever the request, then keeps the
// connection open.
func answer(raw string) script {
	return func(c *backendConn, r *request) bool {
		io.WriteString(c, raw)
		return true
	}
}

// answerClose writes raw and closes the connection.
func answerClose(raw string) script {
	return func(c *backendConn, r *request) bool {
		io.WriteString(c, raw)
		return false
	}
}

func newBackend(t *testing.T) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{
		ln:     ln,
		script: echo,
		conns:  map[net.Conn]bool{},
	}
	b.wg.Add(1)
	go b.acceptLoop()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

// reset forgets the requests received so far, including those whose body
// is still coming, and answers with s from now on.
func (b *backend) reset(s script) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.script = s
	b.reqs = nil
}

// requests returns copies of the requests whose head arrived since the
// last reset, health checks excepted, as far as they have been read.
func (b *backend) requests() []*request {
	b.mu.Lock()
	defer b.mu.Unlock()
	var rs []*request
	for _, r := range b.reqs {
		c := *r
		rs = append(rs, &c)
	}
	return rs
}

// requestsFor returns the requests since the last reset for target.
func (b *backend) requestsFor(target string) []*request {
	var rs []*request
	for _, r := range b.requests() {
		if r.target == target {
			rs = append(rs, r)
		}
	}
	return rs
}

// closedConns returns how many connections the backend has closed.
func (b *backend) closedConns() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

func (b *backend) healthChecks() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.checks
}

func (b *backend) acceptLoop() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		id := b.nconns
		b.nconns++
		b.conns[c] = true
		b.mu.Unlock()
		b.wg.Add(1)
		go b.serveConn(c, id)
	}
}

// serveConn reads requests from one proxy connection until it closes, the
// script asks to, or a request is badly framed.
func (b *backend) serveConn(nc net.Conn, id int) {
	defer b.wg.Done()
	defer func() {
		nc.Close()
		b.mu.Lock()
		delete(b.conns, nc)
		b.closed++
		b.mu.Unlock()
	}()
	c := &backendConn{Conn: nc, br: bufio.NewReader(nc)}
	for range 10000 {
		head, err := readHead(c.br, 4<<20)
		if err != nil {
			if len(head) > 0 {
				b.record(&request{conn: id, head: head, err: fmt.Errorf("reading head: %w", err)})
			}
			return
		}
		r := parseHead(head)
		r.conn = id
		if strings.HasPrefix(r.get("User-Agent"), "weldr-health-check") {
			b.mu.Lock()
			b.checks++
			b.mu.Unlock()
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			continue
		}
		// Recorded as soon as the head is in, so that a request whose body
		// never ends is seen too, and counted for the case that sent it.
		b.record(r)
		err = r.err
		if err == nil && strings.EqualFold(r.get("Expect"), "100-continue") {
			// RFC 9110 §10.1.1: an origin that wants the content says so.
			io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		}
		body := &request{fields: r.fields}
		if err == nil {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			err = readBody(c.br, body)
			c.SetReadDeadline(time.Time{})
		}
		b.mu.Lock()
		r.body, r.chunked, r.trailer = body.body, body.chunked, body.trailer
		r.complete, r.err = err == nil, err
		s := b.script
		done := *r
		b.mu.Unlock()
		if keep := s(c, &done); !keep || err != nil {
			return
		}
	}
}

func (b *backend) record(r *request) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reqs = append(b.reqs, r)
}

// readHead reads up to and including the first empty line, accepting bare
// LF as a line end so that a proxy sending one is caught rather than hung.
func readHead(br *bufio.Reader, limit int) ([]byte, error) {
	var head []byte
	start := 0 // of the current line
	for {
		frag, err := br.ReadSlice('\n')
		head = append(head, frag...)
		if len(head) > limit {
			return head, fmt.Errorf("head over %d bytes", limit)
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err != nil:
			return head, err
		}
		line := head[start:]
		if string(line) == "\r\n" || string(line) == "\n" {
			return head, nil
		}
		start = len(head)
	}
}

// parseHead splits a head into the request line and its fields. A line
// without a colon, or a name with whitespace, is recorded as r.err.
func parseHead(head []byte) *request {
	r := &request{head: head}
	lines := strings.Split(strings.TrimRight(string(head), "\r\n"), "\n")
	parts := strings.SplitN(strings.TrimSuffix(lines[0], "\r"), " ", 3)
	if len(parts) != 3 {
		r.err = fmt.Errorf("bad request line %q", lines[0])
		return r
	}
	r.method, r.target, r.proto = parts[0], parts[1], parts[2]
	r.fields, r.err = parseFields(lines[1:])
	return r
}

func parseFields(lines []string) ([]field, error) {
	var fs []field
	for _, l := range lines {
		l = strings.TrimSuffix(l, "\r")
		name, value, ok := strings.Cut(l, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return fs, fmt.Errorf("bad field line %q", l)
		}
		fs = append(fs, field{name, strings.Trim(value, " \t")})
	}
	return fs, nil
}

// readBody reads the content by the framing RFC 9112 §6.3 gives a request.
func readBody(br *bufio.Reader, r *request) error {
	te, cls := r.get("Transfer-Encoding"), r.values("Content-Length")
	switch {
	case te != "" && len(cls) > 0:
		return errors.New("both Content-Length and Transfer-Encoding")
	case te != "":
		if !strings.EqualFold(te, "chunked") {
			return fmt.Errorf("transfer coding %q", te)
		}
		r.chunked = true
		return readChunked(br, r)
	case len(cls) > 0:
		for _, cl := range cls[1:] {
			if cl != cls[0] {
				return fmt.Errorf("differing Content-Length %q", cls)
			}
		}
		n, err := strconv.ParseUint(cls[0], 10, 40)
		if err != nil {
			return fmt.Errorf("bad Content-Length %q", cls[0])
		}
		r.body = make([]byte, n)
		_, err = io.ReadFull(br, r.body)
		return err
	}
	return nil
}

// readChunked reads a chunked body strictly (RFC 9112 §7.1).
func readChunked(br *bufio.Reader, r *request) error {
	for range 1 << 20 {
		line, err := readLine(br)
		if err != nil {
			return err
		}
		size, _, _ := strings.Cut(line, ";")
		n, err := strconv.ParseUint(strings.TrimRight(size, " \t"), 16, 40)
		if err != nil {
			return fmt.Errorf("bad chunk size line %q", line)
		}
		if n == 0 {
			var lines []string
			for range 1000 {
				l, err := readLine(br)
				if err != nil {
					return err
				}
				if l == "" {
					r.trailer, err = parseFields(lines)
					return err
				}
				lines = append(lines, l)
			}
			return errors.New("too many trailer fields")
		}
		chunk := make([]byte, n+2)
		if _, err := io.ReadFull(br, chunk); err != nil {
			return err
		}
		if string(chunk[n:]) != "\r\n" {
			return fmt.Errorf("chunk data not followed by CRLF but %q", chunk[n:])
		}
		r.body = append(r.body, chunk[:n]...)
	}
	return errors.New("too many chunks")
}

// readLine reads one line that must end in CRLF, and returns it without.
func readLine(br *bufio.Reader) (string, error) {
	l, err := br.ReadSlice('\n')
	if err != nil {
		return "", err
	}
	if !bytes.HasSuffix(l, []byte("\r\n")) {
		return "", fmt.Errorf("line %q not ended by CRLF", l)
	}
	return string(l[:len(l)-2]), nil
}
