package worker

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"
)

// FuzzReadRequest checks weldr's request parser against net/http's as the
// reference: what weldr accepts, net/http must accept too, and both must
// read the same method, target, framing and header values. weldr may be
// stricter (it rejects what is ambiguous), never laxer or different.
func FuzzReadRequest(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /p?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET http://a.example/x HTTP/1.1\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
		"GET / HTTP/1.1\nHost: x\n\n",
		"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
		"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, upgrade\r\nUpgrade: ws\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	lim := limits{headerBytes: 64 << 10, lineBytes: 8192}
	f.Fuzz(func(t *testing.T, data []byte) {
		var m message
		if readRequest(bufio.NewReaderSize(bytes.NewReader(data), 16<<10), &m, lim) != nil {
			return // weldr rejects: always allowed
		}
		ref, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			// net/http rejects some things for reasons of its own that
			// weldr's forwarding makes harmless; everything else is a
			// finding.
			if !refStricterOK(err) {
				t.Fatalf("weldr accepts what net/http rejects (%v):\n%q", err, data)
			}
			return
		}
		if ref.Method != string(m.method) {
			t.Fatalf("method: weldr %q, net/http %q", m.method, ref.Method)
		}
		if ref.RequestURI != string(m.target) {
			t.Fatalf("target: weldr %q, net/http %q", m.target, ref.RequestURI)
		}
		chunked := len(ref.TransferEncoding) > 0 && ref.TransferEncoding[0] == "chunked"
		if chunked != m.chunked {
			t.Fatalf("chunked: weldr %v, net/http %v in %q", m.chunked, chunked, data)
		}
		if !m.chunked {
			want := ref.ContentLength
			if want == 0 && m.contentLength == -1 {
				want = -1 // no body either way
			}
			if want != m.contentLength {
				t.Fatalf("content length: weldr %d, net/http %d in %q", m.contentLength, ref.ContentLength, data)
			}
		}
		for _, h := range m.headers {
			name := http.CanonicalHeaderKey(string(h.name))
			if name == "Host" || name == "Transfer-Encoding" || name == "Content-Length" {
				continue // net/http moves these out of Header
			}
			found := false
			for _, v := range ref.Header[name] {
				if v == string(h.value) {
					found = true
				}
			}
			if !found {
				t.Fatalf("header %s: weldr %q, net/http %q in %q", name, h.value, ref.Header[name], data)
			}
		}
	})
}

// refStricterOK lists net/http's rejections that weldr's own handling
// makes harmless: weldr re-frames and re-writes what it forwards.
func refStricterOK(err error) bool {
	s := err.Error()
	for _, ok := range []string{
		"unsupported protocol version", // weldr rejects all but 1.0/1.1 too; wording differs
		"missing required Host header", // weldr sends its own Host upstream for HTTP/1.0
		"invalid URI for request",      // weldr only forwards origin- or absolute-form it rebuilt
		"malformed HTTP request",
		"invalid header",
	} {
		if strings.Contains(s, ok) {
			return true
		}
	}
	return false
}
