package conformance

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// ioTimeout bounds every read and write of a test client.
const ioTimeout = 5 * time.Second

// client is one raw connection to the proxy.
type client struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (w *weldr) dial(t *testing.T) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", w.addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, br: bufio.NewReader(c)}
}

// send writes raw bytes.
func (c *client) send(raw string) {
	c.t.Helper()
	c.c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c.c, raw); err != nil {
		c.t.Fatalf("writing %.60q: %v", raw, err)
	}
}

// response is one response as the client read it.
type response struct {
	*http.Response
	body    []byte
	bodyErr error // the body did not end as its framing said
}

// tryRead reads one response to a request with the given method, 1xx
// included, and its whole body.
func (c *client) tryRead(method string) (*response, error) {
	c.c.SetReadDeadline(time.Now().Add(ioTimeout))
	res, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		return nil, err
	}
	r := &response{Response: res}
	r.body, r.bodyErr = io.ReadAll(res.Body)
	return r, nil
}

// read reads one response to method, 1xx included, whose body must end as
// its framing says.
func (c *client) read(method string) *response {
	c.t.Helper()
	r, err := c.tryRead(method)
	if err != nil {
		c.t.Fatalf("reading the response to %s: %v", method, err)
	}
	if r.bodyErr != nil {
		c.t.Fatalf("reading the body of %s (%d so far): %v", r.Status, len(r.body), r.bodyErr)
	}
	return r
}

// final reads responses to method up to the first final (non-1xx) one.
func (c *client) final(method string) *response {
	c.t.Helper()
	for range 10 {
		if r := c.read(method); r.StatusCode >= 200 {
			return r
		}
	}
	c.t.Fatal("ten 1xx responses in a row")
	return nil
}

// closed reports whether the proxy closes the connection within timeout
// without sending anything more; extra holds what it sent instead.
func (c *client) closed(timeout time.Duration) (ok bool, extra []byte) {
	c.c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 4096)
	for range 1000 {
		n, err := c.br.Read(buf)
		extra = append(extra, buf[:n]...)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false, extra
		}
		return len(extra) == 0, extra // EOF or reset
	}
	return false, extra
}

// expectClosed fails t unless the proxy closes the connection next.
func (c *client) expectClosed() {
	c.t.Helper()
	if ok, extra := c.closed(3 * time.Second); !ok {
		if len(extra) > 0 {
			c.t.Errorf("after the response the proxy sent %.200q, want the connection closed", extra)
		} else {
			c.t.Errorf("connection still open 3s after the response, want it closed")
		}
	}
}

// readAll reads until the proxy closes the connection or timeout passes.
func (c *client) readAll(timeout time.Duration) ([]byte, error) {
	c.c.SetReadDeadline(time.Now().Add(timeout))
	return io.ReadAll(io.LimitReader(c.br, 64<<20))
}

// roundTrip sends raw on a new connection and reads the final response to
// method.
func (w *weldr) roundTrip(t *testing.T, method, raw string) (*client, *response) {
	t.Helper()
	c := w.dial(t)
	c.send(raw)
	return c, c.final(method)
}

// hasToken reports whether the comma-separated header values hold token,
// case-insensitively.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// bareLineBreak reports whether b holds a CR not followed by LF or an LF
// not preceded by CR.
func bareLineBreak(b []byte) bool {
	for i, c := range b {
		if c == '\r' && (i+1 == len(b) || b[i+1] != '\n') {
			return true
		}
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			return true
		}
	}
	return false
}

func oneOf(code int, codes ...int) bool { return slices.Contains(codes, code) }
