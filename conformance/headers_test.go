package conformance

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

// indexOf returns the position of the first field line named name, or -1.
func indexOf(fs []field, name string) int {
	return slices.IndexFunc(fs, func(f field) bool { return strings.EqualFold(f.name, name) })
}

func TestHeaderFields(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	get := func(t *testing.T, fields string) *request {
		t.Helper()
		w.backend.reset(echo)
		_, r := w.roundTrip(t, "GET", "GET /fields HTTP/1.1\r\nHost: example.com\r\n"+fields+"\r\n")
		if r.StatusCode != 200 {
			t.Fatalf("response = %d %q, want 200", r.StatusCode, r.body)
		}
		reqs := w.backend.requests()
		if len(reqs) != 1 {
			t.Fatalf("backend got %d requests, want 1", len(reqs))
		}
		return reqs[0]
	}

	// RFC 9110 §5.1 and §5.5: any token is a field name, and a proxy
	// forwards the fields it does not know (§7.6 lists the exceptions).
	t.Run("unknown fields forwarded", func(t *testing.T) {
		r := get(t, "X-Unknown: some value\r\nX-Odd!#$%&'*+.^_`|~Name: v\r\nX-Obs-Text: caf\xe9\r\nX-Quoted: \"a, b\"; q=1\r\n")
		for _, f := range []field{{"X-Unknown", "some value"}, {"X-Odd!#$%&'*+.^_`|~Name", "v"}, {"X-Obs-Text", "caf\xe9"}, {"X-Quoted", "\"a, b\"; q=1"}} {
			if got := r.get(f.name); got != f.value {
				t.Errorf("backend %s = %q, want %q", f.name, got, f.value)
			}
		}
	})
	// RFC 9110 §5.3: the order of field lines with the same name is
	// significant; they may be combined into one comma-separated line.
	t.Run("repeated fields kept in order", func(t *testing.T) {
		r := get(t, "X-Multi: a\r\nX-Between: b\r\nX-Multi: c\r\nX-Multi: d, e\r\n")
		if got := r.get("X-Multi"); got != "a, c, d, e" {
			t.Errorf("backend X-Multi = %q, want a, c, d, e", got)
		}
	})
	// RFC 9110 §5.3 lets a proxy reorder fields of different names; weldr
	// keeps the order anyway, as some origins sign or hash the fields.
	t.Run("field order kept", func(t *testing.T) {
		r := get(t, "X-Zulu: 1\r\nX-Alpha: 2\r\nX-Mike: 3\r\n")
		z, a, m := indexOf(r.fields, "X-Zulu"), indexOf(r.fields, "X-Alpha"), indexOf(r.fields, "X-Mike")
		if z < 0 || a < 0 || m < 0 {
			t.Fatalf("backend got %q, want X-Zulu, X-Alpha and X-Mike", r.head)
		}
		if !(z < a && a < m) {
			t.Errorf("backend got X-Zulu, X-Alpha, X-Mike at %d, %d, %d, want them in the order sent", z, a, m)
		}
	})
	t.Run("response fields", func(t *testing.T) {
		w.backend.reset(answer("HTTP/1.1 200 OK\r\nX-Zulu: 1\r\nSet-Cookie: a=1\r\nX-Alpha: 2\r\nSet-Cookie: b=2\r\nX-Unknown: v\r\nContent-Length: 2\r\n\r\nok"))
		c := w.dial(t)
		c.send("GET /fields HTTP/1.1\r\nHost: example.com\r\n\r\n")
		r := c.final("GET")
		if r.StatusCode != 200 || string(r.body) != "ok" {
			t.Fatalf("response = %d %q, want 200 ok", r.StatusCode, r.body)
		}
		// RFC 9110 §5.3: Set-Cookie cannot be combined; each line arrives.
		if got := r.Header.Values("Set-Cookie"); !slices.Equal(got, []string{"a=1", "b=2"}) {
			t.Errorf("client Set-Cookie = %q, want [a=1 b=2]", got)
		}
		if got := r.Header.Get("X-Unknown"); got != "v" {
			t.Errorf("client X-Unknown = %q, want v", got)
		}
	})
}

// RFC 9110 §7.6.1: a proxy removes the Connection field, the fields it
// names, and the hop-by-hop fields, in both directions.
func TestHopByHop(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	t.Run("request", func(t *testing.T) {
		w.backend.reset(echo)
		_, r := w.roundTrip(t, "GET", "GET /hop HTTP/1.1\r\nHost: example.com\r\n"+
			"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: gzip\r\n"+
			"Trailer: X-Trailer\r\nUpgrade: websocket\r\nProxy-Connection: keep-alive\r\n"+
			"Proxy-Authorization: Basic cHJveHk6c2VjcmV0\r\nX-Keep: yes\r\n\r\n")
		if r.StatusCode != 200 {
			t.Fatalf("response = %d %q, want 200", r.StatusCode, r.body)
		}
		reqs := w.backend.requests()
		if len(reqs) != 1 {
			t.Fatalf("backend got %d requests, want 1", len(reqs))
		}
		got := reqs[0]
		for _, name := range []string{"X-Hop", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Connection", "Proxy-Authorization"} {
			if v := got.values(name); v != nil {
				t.Errorf("backend got %s: %q, want it removed", name, v)
			}
		}
		for _, v := range got.values("Connection") {
			for _, tok := range strings.Split(v, ",") {
				if tok := strings.ToLower(strings.TrimSpace(tok)); tok != "keep-alive" && tok != "close" {
					t.Errorf("backend got Connection: %q, want only the proxy's own options", v)
				}
			}
		}
		if got.get("X-Keep") != "yes" {
			t.Errorf("backend X-Keep = %q, want yes", got.get("X-Keep"))
		}
	})
	// RFC 9110 §10.1.4: TE: trailers may be passed on, nothing else.
	t.Run("request TE trailers", func(t *testing.T) {
		w.backend.reset(echo)
		w.roundTrip(t, "GET", "GET /te HTTP/1.1\r\nHost: example.com\r\nTE: trailers, deflate;q=0.5\r\nConnection: TE\r\n\r\n")
		reqs := w.backend.requests()
		if len(reqs) != 1 {
			t.Fatalf("backend got %d requests, want 1", len(reqs))
		}
		if te := reqs[0].values("TE"); te != nil && !slices.Equal(te, []string{"trailers"}) {
			t.Errorf("backend got TE: %q, want none or trailers", te)
		}
	})
	respond := func(t *testing.T, s script) http.Header {
		t.Helper()
		w.backend.reset(s)
		_, r := w.roundTrip(t, "GET", "GET /hop HTTP/1.1\r\nHost: example.com\r\n\r\n")
		if r.StatusCode != 200 || string(r.body) != "ok" {
			t.Fatalf("response = %d %q, want 200 ok", r.StatusCode, r.body)
		}
		return r.Header
	}
	checkResponse := func(t *testing.T, h http.Header, removed ...string) {
		t.Helper()
		for _, name := range removed {
			if v := h.Values(name); v != nil {
				t.Errorf("client got %s: %q, want it removed", name, v)
			}
		}
		if v := h.Values("X-Keep"); !slices.Equal(v, []string{"yes"}) {
			t.Errorf("client X-Keep = %q, want yes", v)
		}
	}
	t.Run("response", func(t *testing.T) {
		h := respond(t, answerClose("HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"+
			"Upgrade: foo\r\nProxy-Connection: keep-alive\r\nProxy-Authenticate: Basic\r\nX-Keep: yes\r\nContent-Length: 2\r\n\r\nok"))
		checkResponse(t, h, "X-Hop", "Keep-Alive", "Upgrade", "Proxy-Connection", "Proxy-Authenticate")
	})
	t.Run("response connection close", func(t *testing.T) {
		h := respond(t, answerClose("HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nX-Keep: yes\r\nContent-Length: 2\r\n\r\nok"))
		checkResponse(t, h, "X-Hop")
	})
}

// The SPEC: X-Forwarded-For is appended to, X-Forwarded-Host and
// X-Forwarded-Proto are set, Via: 1.1 weldr is added (RFC 9110 §7.6.3) to
// requests and responses.
func TestForwardingFields(t *testing.T) {
	t.Parallel()
	w := start(t, 1)
	w.backend.reset(echo)
	_, r := w.roundTrip(t, "GET", "GET /fwd HTTP/1.1\r\nHost: example.com\r\n\r\n")
	reqs := w.backend.requests()
	if len(reqs) != 1 {
		t.Fatalf("backend got %d requests, want 1", len(reqs))
	}
	got := reqs[0]
	for _, f := range []field{{"X-Forwarded-For", "127.0.0.1"}, {"X-Forwarded-Host", "example.com"}, {"X-Forwarded-Proto", "http"}, {"Via", "1.1 weldr"}} {
		if v := got.values(f.name); !slices.Equal(v, []string{f.value}) {
			t.Errorf("backend %s = %q, want [%s]", f.name, v, f.value)
		}
	}
	if v := r.Header.Values("Via"); len(v) == 0 || !strings.HasSuffix(v[len(v)-1], "1.1 weldr") {
		t.Errorf("client Via = %q, want it to end with 1.1 weldr", v)
	}

	t.Run("client values", func(t *testing.T) {
		w.backend.reset(echo)
		w.roundTrip(t, "GET", "GET /fwd HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 192.0.2.1\r\n"+
			"X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nVia: 1.0 fred\r\n\r\n")
		reqs := w.backend.requests()
		if len(reqs) != 1 {
			t.Fatalf("backend got %d requests, want 1", len(reqs))
		}
		got := reqs[0]
		for _, f := range []field{{"X-Forwarded-For", "192.0.2.1, 127.0.0.1"}, {"X-Forwarded-Host", "example.com"}, {"X-Forwarded-Proto", "http"}, {"Via", "1.0 fred, 1.1 weldr"}} {
			if v := got.get(f.name); v != f.value {
				t.Errorf("backend %s = %q, want %q", f.name, v, f.value)
			}
		}
	})
}
