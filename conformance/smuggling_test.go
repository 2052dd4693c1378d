package conformance

import (
	"fmt"
	"strings"
	"testing"
)

// smuggled is the request a smuggling attempt hides in another's body;
// the backend must never see it as a request.
const smuggled = "GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n"

// rejection is a request weldr must refuse without forwarding it.
type rejection struct {
	name  string
	raw   string
	codes []int // acceptable answers; nil means 400
	// partial: weldr may have started forwarding (a request's head, the
	// chunks before a bad one) before it saw the fault, but the backend
	// must never get a complete message.
	partial bool
}

// testRejections sends each case on a new connection and checks that
// weldr answers it with one of its codes, closes the connection (RFC 9112
// §9.6 and, for a framing fault, §6.3), and that nothing reached the
// backend.
func testRejections(t *testing.T, w *weldr, cases []rejection) {
	t.Helper()
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Skip before sending: a request the engine lets through would
			// reach the backend while the next case runs.
			w.backend.reset(echo)
			c := w.dial(t)
			// A path of its own, so that a late request of a case that
			// failed cannot be taken for this one's.
			first := fmt.Sprintf("/first%d", i)
			c.send(strings.Replace(tc.raw, "/first", first, 1))
			codes := tc.codes
			if codes == nil {
				codes = []int{400}
			}
			res, err := c.tryRead("POST")
			if err != nil {
				t.Fatalf("reading the response: %v; want %v (the client always gets an answer)", err, codes)
			}
			t.Logf("weldr answers %s", res.Status)
			if !oneOf(res.StatusCode, codes...) {
				t.Errorf("response = %s %q, want %v", res.Status, res.body, codes)
			}
			c.expectClosed()
			for _, r := range w.backend.requests() {
				switch {
				case strings.Contains(r.target, "smuggled"):
					t.Errorf("backend got the smuggled request %v", r)
				case r.target == first:
					if !tc.partial || r.complete {
						t.Errorf("backend got %v, want nothing", r)
					}
				case strings.HasPrefix(r.target, "/first"):
					// Another case's, late.
				default:
					t.Errorf("backend got %v, want nothing", r)
				}
			}
		})
	}
}

// tolerance is a request RFC 9112 lets weldr either reject or accept; if
// accepted, the backend gets one correctly framed request with body.
type tolerance struct {
	name, raw, body string
	partial         bool // as in rejection
}

// testTolerances sends each case and checks that weldr either answers 400
// and closes, forwarding nothing, or forwards exactly one well-framed
// request with CRLF line ends and the expected body.
func testTolerances(t *testing.T, w *weldr, cases []tolerance) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w.backend.reset(echo)
			c := w.dial(t)
			c.send(tc.raw)
			res, err := c.tryRead("POST")
			if err != nil {
				t.Fatalf("reading the response: %v; want 200 or 400", err)
			}
			reqs := w.backend.requests()
			switch res.StatusCode {
			case 400:
				t.Logf("weldr rejects it: %s", res.Status)
				c.expectClosed()
				for _, r := range reqs {
					if !tc.partial || r.complete {
						t.Errorf("backend got %v, want nothing", r)
					}
				}
			case 200:
				t.Logf("weldr accepts it; the backend got %q", reqs)
				if len(reqs) != 1 {
					t.Fatalf("backend got %d requests, want 1", len(reqs))
				}
				r := reqs[0]
				if !r.complete || string(r.body) != tc.body {
					t.Errorf("backend got %v, want a well-framed request with body %q", r, tc.body)
				}
				if bareLineBreak(r.head) {
					t.Errorf("backend got a head with a bare CR or LF: %q", r.head)
				}
				if r.chunked && len(r.values("Content-Length")) > 0 || len(r.values("Content-Length")) > 1 {
					t.Errorf("backend got ambiguous framing %q", r.head)
				}
				// Whatever weldr made of it, the connection is still in step.
				checkNext(t, c)
			default:
				t.Errorf("response = %s %q, want 200 or 400", res.Status, res.body)
			}
		})
	}
}

const postHead = "POST /first HTTP/1.1\r\nHost: example.com\r\n"

// RFC 9112 §6.1 and §6.3: a message's length must be unambiguous.
func TestAmbiguousLength(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	testRejections(t, w, []rejection{
		// §6.1: CL with TE "ought to be handled as an error"; the SPEC says 400.
		{name: "content-length and transfer-encoding", raw: postHead + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{name: "transfer-encoding and content-length", raw: postHead + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"},
		{name: "content-length zero and transfer-encoding", raw: postHead + "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		// §6.3 rule 5: differing or invalid Content-Length is unrecoverable.
		{name: "differing content-length", raw: postHead + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"},
		{name: "content-length list", raw: postHead + "Content-Length: 3, 4\r\n\r\nabcd"},
		// RFC 9110 §8.6: Content-Length = 1*DIGIT.
		{name: "content-length plus sign", raw: postHead + "Content-Length: +5\r\n\r\nhello"},
		{name: "content-length negative", raw: postHead + "Content-Length: -1\r\n\r\nhello"},
		{name: "content-length hex", raw: postHead + "Content-Length: 0x5\r\n\r\nhello"},
		{name: "content-length trailing junk", raw: postHead + "Content-Length: 5a\r\n\r\nhello"},
		{name: "content-length inner space", raw: postHead + "Content-Length: 5 5\r\n\r\nhello"},
		{name: "content-length empty", raw: postHead + "Content-Length: \r\n\r\nhello"},
		{name: "content-length overflow", raw: postHead + "Content-Length: 99999999999999999999999\r\n\r\nhello", codes: []int{400, 413}},
	})
	// §6.3 rule 5 and RFC 9110 §8.6: identical duplicates may be taken as one.
	testTolerances(t, w, []tolerance{
		{"identical content-length lines", postHead + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "hello", false},
		{"identical content-length list", postHead + "Content-Length: 5, 5\r\n\r\nhello", "hello", false},
	})
}

// RFC 9112 §6.1 and §6.3 rule 4: chunked must be the final coding, or the
// length cannot be determined: 400 and close. A coding weldr does not
// know may also get 501 (RFC 9112 §6.1).
func TestTransferEncoding(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	const body = "5\r\nhello\r\n0\r\n\r\n"
	unknown := []int{400, 501}
	testRejections(t, w, []rejection{
		{name: "xchunked", raw: postHead + "Transfer-Encoding: xchunked\r\n\r\n" + body, codes: unknown},
		{name: "identity", raw: postHead + "Transfer-Encoding: identity\r\n\r\n" + body, codes: unknown},
		{name: "chunked then identity", raw: postHead + "Transfer-Encoding: chunked, identity\r\n\r\n" + body, codes: unknown},
		// §6.1: chunked is applied once only.
		{name: "chunked twice in one line", raw: postHead + "Transfer-Encoding: chunked, chunked\r\n\r\n" + body, codes: unknown},
		{name: "chunked twice in two lines", raw: postHead + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + body, codes: unknown},
		{name: "chunked then another line", raw: postHead + "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n" + body, codes: unknown},
		{name: "empty", raw: postHead + "Transfer-Encoding: \r\n\r\n" + body, codes: unknown},
		{name: "quoted", raw: postHead + "Transfer-Encoding: \"chunked\"\r\n\r\n" + body, codes: unknown},
		{name: "vertical tab", raw: postHead + "Transfer-Encoding: \vchunked\r\n\r\n" + body, codes: unknown},
		// RFC 9112 §5.1: no whitespace between a field name and the colon.
		{name: "space before colon", raw: postHead + "Transfer-Encoding : chunked\r\n\r\n" + body},
		// A backend mapping _ to - (CGI) would read a body weldr did not.
		{name: "underscore name", raw: postHead + "Transfer_Encoding: chunked\r\n\r\n" + body},
		// RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
		{name: "in HTTP/1.0", raw: "POST /first HTTP/1.0\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n" + body},
	})
	// RFC 9110 §5.5 and RFC 9112 §5: OWS around a field value is not part
	// of it, and codings are case-insensitive (RFC 9110 §10.1.4), so
	// these are plain "chunked"; rejecting them is also safe.
	testTolerances(t, w, []tolerance{
		{"leading space", postHead + "Transfer-Encoding:  chunked\r\n\r\n" + body, "hello", false},
		{"trailing space", postHead + "Transfer-Encoding: chunked \r\n\r\n" + body, "hello", false},
		{"leading tab", postHead + "Transfer-Encoding:\tchunked\r\n\r\n" + body, "hello", false},
		{"upper case", postHead + "Transfer-Encoding: CHUNKED\r\n\r\n" + body, "hello", false},
	})
}

// RFC 9112 §5 and RFC 9110 §5.1, §5.5, §9.1: the syntax of the request
// line and the fields.
func TestHeaderSyntax(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	get := func(fields string) string { return "GET /first HTTP/1.1\r\nHost: example.com\r\n" + fields + "\r\n" }
	testRejections(t, w, []rejection{
		// RFC 9112 §5.2: obs-fold in a request: 400 (or replace by SP;
		// the SPEC says 400).
		{name: "obs-fold space", raw: get("X-Fold: a\r\n b\r\n")},
		{name: "obs-fold tab", raw: get("X-Fold: a\r\n\tb\r\n")},
		{name: "obs-fold continuing content-length", raw: postHead + "X-Fold: a\r\n Content-Length: 5\r\n\r\nhello"},
		// RFC 9112 §2.2: whitespace before the first field line.
		{name: "space before first field", raw: "GET /first HTTP/1.1\r\n Host: example.com\r\n\r\n"},
		// RFC 9112 §5.1: whitespace between name and colon: 400.
		{name: "space before colon", raw: get("X-Foo : bar\r\n")},
		{name: "tab before colon", raw: get("X-Foo\t: bar\r\n")},
		{name: "space before colon on content-length", raw: postHead + "Content-Length : 5\r\n\r\nhello"},
		{name: "no colon", raw: get("X-Foo bar\r\n")},
		{name: "empty name", raw: get(": bar\r\n")},
		// RFC 9110 §5.5: no CTL but HTAB in a field value.
		{name: "NUL in value", raw: get("X-Foo: a\x00b\r\n")},
		{name: "SOH in value", raw: get("X-Foo: a\x01b\r\n")},
		{name: "DEL in value", raw: get("X-Foo: a\x7fb\r\n")},
		{name: "ESC in value", raw: get("X-Foo: a\x1b[31mb\r\n")},
		// RFC 9110 §5.1: a field name is a token.
		{name: "NUL in name", raw: get("X-F\x00oo: a\r\n")},
		{name: "separator in name", raw: get("X-(Foo): a\r\n")},
		{name: "non-ASCII in name", raw: get("X-F\xc3\xb6o: a\r\n")},
		// RFC 9110 §9.1: a method is a token.
		{name: "separator in method", raw: "GE(T /first HTTP/1.1\r\nHost: example.com\r\n\r\n"},
		{name: "NUL in method", raw: "G\x00ET /first HTTP/1.1\r\nHost: example.com\r\n\r\n"},
		// RFC 9112 §3: request-line = method SP request-target SP HTTP-version.
		{name: "space in target", raw: "GET /fi rst HTTP/1.1\r\nHost: example.com\r\n\r\n"},
		{name: "NUL in target", raw: "GET /fi\x00rst HTTP/1.1\r\nHost: example.com\r\n\r\n"},
		{name: "bad version", raw: "GET /first HTTP/1.1x\r\nHost: example.com\r\n\r\n", codes: []int{400, 505}},
		// RFC 9112 §3.2: exactly one Host in HTTP/1.1.
		{name: "no host", raw: "GET /first HTTP/1.1\r\nX-Foo: a\r\n\r\n"},
		{name: "two hosts", raw: get("Host: evil.example\r\n")},
		{name: "host list", raw: "GET /first HTTP/1.1\r\nHost: example.com, evil.example\r\n\r\n"},
	})
}

// RFC 9112 §7.1: chunk-size = 1*HEXDIG, then optional extensions, then
// CRLF; chunk data is followed by CRLF. weldr streams, so it may have sent
// the head and the chunks before the fault; the backend must never get a
// complete message.
func TestInvalidChunk(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	head := postHead + "Transfer-Encoding: chunked\r\n\r\n"
	cases := []struct{ name, body string }{
		{"negative size", "-1\r\nhello\r\n0\r\n\r\n"},
		{"0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"},
		{"plus sign", "+5\r\nhello\r\n0\r\n\r\n"},
		{"huge size", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"},
		{"empty size", "\r\nhello\r\n0\r\n\r\n"},
		{"not hex", "5g\r\nhello\r\n0\r\n\r\n"},
		{"control in extension", "5;x\x01y\r\nhello\r\n0\r\n\r\n"},
		{"bare LF in extension", "5;x\nGET /smuggled HTTP/1.1\r\nhello\r\n0\r\n\r\n"},
		{"missing CRLF after data", "5\r\nhelloXX0\r\n\r\n"},
		{"data longer than size", "3\r\nhello\r\n0\r\n\r\n"},
		{"second chunk bad", "5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n"},
		{"bad trailer field", "5\r\nhello\r\n0\r\nbad trailer\r\n\r\n"},
	}
	var rs []rejection
	for _, tc := range cases {
		rs = append(rs, rejection{name: tc.name, raw: head + tc.body + smuggled, partial: true})
	}
	testRejections(t, w, rs)
	testTolerances(t, w, []tolerance{
		// RFC 9112 §7.1 wants CRLF; a bare LF is harmless only if weldr
		// re-frames the body instead of passing chunk lines through.
		{"bare LF after size", head + "5\nhello\r\n0\r\n\r\n", "hello", true},
	})
}

// RFC 9112 §2.2: a recipient MAY take a bare LF as a line end; a bare CR
// must be rejected or replaced by SP. Either way, what reaches the backend
// has CRLF line ends only and the framing weldr itself used.
func TestBareLineEnds(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	testTolerances(t, w, []tolerance{
		{"bare LF everywhere", "GET /lf HTTP/1.1\nHost: example.com\n\n", "", false},
		{"bare LF in request line and fields", "POST /lf HTTP/1.1\nHost: example.com\nContent-Length: 5\r\n\r\nhello", "hello", false},
		{"bare LF before content-length", "POST /lf HTTP/1.1\r\nHost: example.com\r\nX-A: a\nContent-Length: 5\r\n\r\nhello", "hello", false},
		{"bare LF ending the head", "POST /lf HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\nhello", "hello", false},
	})
	testRejections(t, w, []rejection{
		// If weldr ignored the bare CR, the backend could see two fields.
		{name: "bare CR in value", raw: postHead + "X-A: a\rContent-Length: 5\r\n\r\nhello"},
		{name: "bare CR in request line", raw: "GET /cr\rX HTTP/1.1\r\nHost: example.com\r\n\r\n"},
		{name: "bare CR ending a line", raw: postHead + "X-A: a\r\rContent-Length: 5\r\n\r\nhello"},
	})
}

// The classic request smuggling payloads (PortSwigger's CL.TE, TE.CL,
// TE.TE): weldr answers 400 and closes (RFC 9112 §6.1: "the server MUST
// close the connection after responding to such a request"), and the
// backend never sees the hidden request.
func TestSmuggling(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	clteBody := "0\r\n\r\n" + smuggled
	tecl := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)
	testRejections(t, w, []rejection{
		{name: "CL.TE", raw: postHead + fmt.Sprintf("Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n", len(clteBody)) + clteBody},
		{name: "TE.CL", raw: postHead + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + tecl},
		{name: "TE.TE obfuscated", raw: postHead + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n" + tecl, codes: []int{400, 501}},
		{name: "TE.TE space before colon", raw: postHead + "Content-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n" + tecl},
		{name: "CL.CL", raw: postHead + fmt.Sprintf("Content-Length: 0\r\nContent-Length: %d\r\n\r\n", len(smuggled)) + smuggled},
		{name: "HTTP/1.0 TE", raw: "POST /first HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" + tecl},
	})
	// A GET may carry content (RFC 9110 §9.3.1); it is forwarded as
	// content, not as a second request (the CL.0 shape).
	t.Run("CL.0 GET with body", func(t *testing.T) {
		w.backend.reset(echo)
		_, r := w.roundTrip(t, "GET", fmt.Sprintf("GET /first HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n\r\n", len(smuggled))+smuggled)
		if r.StatusCode != 200 {
			t.Errorf("response = %s, want 200", r.Status)
		}
		reqs := w.backend.requests()
		if len(reqs) != 1 || reqs[0].target != "/first" || string(reqs[0].body) != smuggled {
			t.Errorf("backend got %v, want one GET /first carrying the body", reqs)
		}
	})
}
