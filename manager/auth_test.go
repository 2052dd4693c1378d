package manager

import (
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const testToken = "s3cret-T0ken"

// callAuth is call with the Authorization header set to each of auth, in
// order; none for no header.
func callAuth(t *testing.T, srv *httptest.Server, method, path, body string, auth ...string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range auth {
		req.Header.Add("Authorization", a)
	}
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(b)
}

// checkUnauthorized reports whether an answer is the 401 of a request
// without the token.
func checkUnauthorized(t *testing.T, what string, code int, h http.Header, body string) {
	t.Helper()
	var e map[string]string
	if err := json.Unmarshal([]byte(body), &e); err != nil || len(e) != 1 || e["error"] != "missing or invalid bearer token" {
		t.Errorf("%s: body %q, want {\"error\": \"missing or invalid bearer token\"}", what, body)
	}
	if code != http.StatusUnauthorized {
		t.Errorf("%s = %d, want 401", what, code)
	}
	if got := h.Get("WWW-Authenticate"); got != `Bearer realm="weldr"` {
		t.Errorf("%s: WWW-Authenticate = %q, want %q", what, got, `Bearer realm="weldr"`)
	}
	if ct, nosniff := h.Get("Content-Type"), h.Get("X-Content-Type-Options"); ct != "application/json" || nosniff != "nosniff" {
		t.Errorf("%s: Content-Type %q, X-Content-Type-Options %q, want application/json and nosniff", what, ct, nosniff)
	}
}

func TestAdminAuth(t *testing.T) {
	cfg := Default()
	cfg.Admin.Token = testToken
	_, srv, _ := newTestManager(t, cfg)

	tests := []struct {
		name string
		auth []string
		ok   bool
	}{
		{"no header", nil, false},
		{"empty header", []string{""}, false},
		{"basic scheme", []string{"Basic " + testToken}, false},
		{"token alone", []string{testToken}, false},
		{"scheme alone", []string{"Bearer"}, false},
		{"empty token", []string{"Bearer "}, false},
		{"wrong token", []string{"Bearer wrong"}, false},
		{"token prefix", []string{"Bearer " + testToken[:len(testToken)-1]}, false},
		{"token longer", []string{"Bearer " + testToken + "x"}, false},
		{"token case", []string{"Bearer " + strings.ToUpper(testToken)}, false},
		{"token inside", []string{"Bearer x" + testToken}, false},
		{"no space", []string{"Bearer" + testToken}, false},
		{"scheme prefix", []string{"Bearerx " + testToken}, false},
		{"tab", []string{"Bearer\t" + testToken}, false},
		{"twice, right first", []string{"Bearer " + testToken, "Bearer wrong"}, false},
		{"twice, both right", []string{"Bearer " + testToken, "Bearer " + testToken}, false},
		{"right", []string{"Bearer " + testToken}, true},
		{"scheme lowercase", []string{"bearer " + testToken}, true},
		{"scheme uppercase", []string{"BEARER " + testToken}, true},
		{"two spaces", []string{"Bearer  " + testToken}, true},
	}
	paths := []struct{ method, path string }{
		{"GET", "/"}, {"GET", "/servers"}, {"GET", "/stats"}, {"GET", "/stats/detail"},
		{"GET", "/healthz"}, {"GET", "/metrics"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, p := range paths {
				code, h, body := callAuth(t, srv, p.method, p.path, "", tc.auth...)
				what := p.method + " " + p.path
				if !tc.ok {
					checkUnauthorized(t, what, code, h, body)
					continue
				}
				// /healthz is 503 here: the test manager has no ready worker.
				if code == http.StatusUnauthorized || h.Get("WWW-Authenticate") != "" {
					t.Errorf("%s with the token = %d %s, want it served", what, code, body)
				}
			}
		})
	}

	// The answer is 401 before anything else: unknown paths and methods
	// reveal nothing.
	for _, p := range []struct{ method, path string }{
		{"GET", "/nowhere"}, {"PATCH", "/servers"}, {"DELETE", "/servers/127.0.0.1/1"}, {"OPTIONS", "/"},
	} {
		code, h, body := callAuth(t, srv, p.method, p.path, "")
		checkUnauthorized(t, p.method+" "+p.path, code, h, body)
	}
	if code, _, body := callAuth(t, srv, "GET", "/servers", "", "Bearer "+testToken); code != http.StatusOK || body != "[]\n" {
		t.Errorf("GET /servers with the token = %d %q, want 200 []", code, body)
	}
}

// TestAdminAuthLeavesPool checks that a request without the token changes
// nothing: no server is added or removed, no worker hears of it.
func TestAdminAuthLeavesPool(t *testing.T) {
	cfg := Default()
	cfg.Admin.Token = testToken
	m, srv, q := newTestManager(t, cfg)
	right := "Bearer " + testToken
	if code, _, body := callAuth(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9001"}`, right); code != http.StatusCreated {
		t.Fatalf("POST with the token = %d %s, want 201", code, body)
	}
	<-q
	_, _, before := callAuth(t, srv, "GET", "/servers", "", right)

	for _, auth := range [][]string{nil, {"Bearer wrong"}, {"Basic " + testToken}} {
		for _, r := range []struct{ method, path, body string }{
			{"POST", "/servers", `{"url": "http://127.0.0.1:9002"}`},
			{"POST", "/servers", `{"url": "http://127.0.0.1:9001", "weight": 7}`},
			{"DELETE", "/servers/127.0.0.1/9001", ""},
		} {
			code, h, body := callAuth(t, srv, r.method, r.path, r.body, auth...)
			checkUnauthorized(t, r.method+" "+r.path, code, h, body)
		}
	}
	if _, _, after := callAuth(t, srv, "GET", "/servers", "", right); after != before {
		t.Errorf("pool changed by unauthorized requests:\nbefore %s\nafter %s", before, after)
	}
	if len(q) != 0 || m.poolLen() != 1 {
		t.Errorf("unauthorized requests left %d servers and %d broadcasts, want 1 and 0", m.poolLen(), len(q))
	}
	if code, _, body := callAuth(t, srv, "DELETE", "/servers/127.0.0.1/9001", "", right); code != http.StatusNoContent {
		t.Errorf("DELETE with the token = %d %s, want 204", code, body)
	}
}

// TestAdminNoToken checks that without a token the API is open, whatever
// Authorization header a request carries.
func TestAdminNoToken(t *testing.T) {
	_, srv, _ := newTestManager(t, Default())
	for _, auth := range [][]string{nil, {"Bearer anything"}, {"Basic dXNlcjpwYXNz"}} {
		code, h, body := callAuth(t, srv, "GET", "/servers", "", auth...)
		if code != http.StatusOK || h.Get("WWW-Authenticate") != "" {
			t.Errorf("GET /servers with no token configured and Authorization %q = %d %s, want 200", auth, code, body)
		}
	}
	if code, _, body := callAuth(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9001"}`); code != http.StatusCreated {
		t.Errorf("POST /servers with no token configured = %d %s, want 201", code, body)
	}
}

// TestAdminTokenFromEnv checks that WELDR_ADMIN_TOKEN alone turns on
// authentication.
func TestAdminTokenFromEnv(t *testing.T) {
	cfg, err := Decode(nil, envMap(map[string]string{"WELDR_ADMIN_TOKEN": testToken}))
	if err != nil {
		t.Fatalf("Decode() error = %v", err)
	}
	_, srv, _ := newTestManager(t, cfg)
	code, h, body := callAuth(t, srv, "GET", "/servers", "")
	checkUnauthorized(t, "GET /servers without the token", code, h, body)
	if code, _, body := callAuth(t, srv, "GET", "/servers", "", "Bearer "+testToken); code != http.StatusOK {
		t.Errorf("GET /servers with the token from WELDR_ADMIN_TOKEN = %d %s, want 200", code, body)
	}
}

func TestValidBearer(t *testing.T) {
	want := sha256.Sum256([]byte("tok"))
	tests := []struct {
		values []string
		ok     bool
	}{
		{nil, false},
		{[]string{""}, false},
		{[]string{"Bearer tok"}, true},
		{[]string{"bEaReR tok"}, true},
		{[]string{"Bearer   tok"}, true},
		{[]string{"Bearer tok "}, false}, // net/http trims it; here it is exact
		{[]string{"Bearer to"}, false},
		{[]string{"Bearer tokk"}, false},
		{[]string{"Bearer TOK"}, false},
		{[]string{"Bearer"}, false},
		{[]string{"Bearer "}, false},
		{[]string{"tok"}, false},
		{[]string{" Bearer tok"}, false},
		{[]string{"Token tok"}, false},
		{[]string{"Bearer tok", "Bearer tok"}, false},
	}
	for _, tc := range tests {
		if got := validBearer(tc.values, want); got != tc.ok {
			t.Errorf("validBearer(%q) = %v, want %v", tc.values, got, tc.ok)
		}
	}
}
