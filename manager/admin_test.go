package manager

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/weldr-proxy/weldr/ipc"
)

// newTestManager returns a manager without workers, with one fake worker
// queue to observe broadcasts, and its admin API on a real listener.
func newTestManager(t *testing.T, cfg *Config) (*Manager, *httptest.Server, chan *ipc.Message) {
	t.Helper()
	if cfg.State.File == Default().State.File {
		cfg.State.File = filepath.Join(t.TempDir(), "state.json") // never the real one
	}
	m, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	q := make(chan *ipc.Message, 100)
	m.procs[queueWorker(q)] = struct{}{}
	srv := httptest.NewServer(m.adminHandler())
	t.Cleanup(srv.Close)
	return m, srv, q
}

// queueWorker is a worker that gets the broadcasts in q and is never waited
// for: one still starting, with a snapshot newer than any change a test
// makes.
func queueWorker(q chan *ipc.Message) *workerProc {
	return &workerProc{out: q, snapshot: math.MaxUint64}
}

func call(t *testing.T, srv *httptest.Server, method, path, body string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(b)
}

func TestAdminAddRemove(t *testing.T) {
	cfg := Default()
	cfg.Servers = []ServerConfig{{URL: "http://127.0.0.1:7000"}}
	_, srv, q := newTestManager(t, cfg)

	code, h, body := call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9001", "weight": 3, "health_check": {"path": "/health", "interval": "5s"}}`)
	if code != http.StatusCreated || h.Get("Content-Type") != "application/json" {
		t.Fatalf("POST new = %d %s %s, want 201 application/json", code, h.Get("Content-Type"), body)
	}
	var v serverView
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatal(err)
	}
	if v.ID != "127.0.0.1:9001" || v.Port != 9001 || v.IP != "127.0.0.1" || v.Weight != 3 || v.State != "up" ||
		v.HealthCheck.Path != "/health" || v.HealthCheck.Fall != cfg.Health.Fall {
		t.Errorf("POST new = %+v, want the server with its weight and merged health check", v)
	}
	if code, _, _ := call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9001", "weight": 3, "health_check": {"path": "/health", "interval": "5s"}}`); code != http.StatusOK {
		t.Errorf("POST same again = %d, want 200", code)
	}
	if code, _, body := call(t, srv, "DELETE", "/servers/127.0.0.1/7000", ""); code != http.StatusConflict {
		t.Errorf("DELETE static = %d %s, want 409", code, body)
	}
	if code, _, body := call(t, srv, "DELETE", "/servers/127.0.0.1/9001", ""); code != http.StatusNoContent || body != "" {
		t.Errorf("DELETE = %d %q, want 204 and no body", code, body)
	}
	if code, _, _ := call(t, srv, "DELETE", "/servers/127.0.0.1/9001", ""); code != http.StatusNotFound {
		t.Errorf("DELETE again = %d, want 404", code)
	}
	// The worker saw exactly: add, remove (the repeat changed nothing).
	var got []string
	for len(q) > 0 {
		m := <-q
		got = append(got, m.Kind.String())
	}
	if strings.Join(got, ",") != "AddServer,RemoveServer" {
		t.Errorf("broadcasts = %v, want [AddServer RemoveServer]", got)
	}
}

// A static server's settings are the configuration file's: a POST that
// would change them is refused like a DELETE, since the next reload would
// undo it; one that repeats them is answered and changes nothing.
func TestAdminStaticServerIsChangedInTheConfigFile(t *testing.T) {
	cfg := Default()
	cfg.Servers = []ServerConfig{{URL: "http://127.0.0.1:7000", Weight: 2}}
	m, srv, q := newTestManager(t, cfg)
	before := m.pool.List()
	tests := []struct {
		name, method, path, body string
		code                     int
	}{
		{"same settings", "POST", "/servers", `{"url": "http://127.0.0.1:7000", "weight": 2}`, http.StatusOK},
		{"same, defaults spelt out", "POST", "/servers", `{"url": "http://127.0.0.1:7000", "weight": 2, "health_check": {"path": "/", "fall": 3}}`, http.StatusOK},
		{"weight", "POST", "/servers", `{"url": "http://127.0.0.1:7000", "weight": 3}`, http.StatusConflict},
		{"weight left to its default", "POST", "/servers", `{"url": "http://127.0.0.1:7000"}`, http.StatusConflict},
		{"health check", "POST", "/servers", `{"url": "http://127.0.0.1:7000", "weight": 2, "health_check": {"path": "/health"}}`, http.StatusConflict},
		{"scheme", "POST", "/servers", `{"url": "https://127.0.0.1:7000", "weight": 2}`, http.StatusConflict},
		{"delete", "DELETE", "/servers/127.0.0.1/7000", "", http.StatusConflict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, body := call(t, srv, tc.method, tc.path, tc.body)
			if code != tc.code {
				t.Fatalf("%s %s = %d %s, want %d", tc.method, tc.path, code, body, tc.code)
			}
			if code == http.StatusConflict {
				var e map[string]string
				if err := json.Unmarshal([]byte(body), &e); err != nil || !strings.Contains(e["error"], "configuration file") {
					t.Errorf("%s %s = %d %s, want an error saying it is set in the configuration file", tc.method, tc.path, code, body)
				}
				return
			}
			var v serverView
			if err := json.Unmarshal([]byte(body), &v); err != nil || v.Weight != 2 || !v.Static || v.HealthCheck != cfg.Health {
				t.Errorf("%s %s = %d %s, want the static server as configured", tc.method, tc.path, code, body)
			}
		})
	}
	if after := m.pool.List(); !reflect.DeepEqual(after, before) {
		t.Errorf("pool after the requests = %+v, want it unchanged: %+v", after, before)
	}
	if len(q) != 0 {
		t.Errorf("the requests broadcast %d messages, want none", len(q))
	}
}

// The admin API refuses a server that would make the pool too large for
// the frame that hands it to a worker: 507, nothing changed, and room again
// once a server is removed.
func TestAdminRefusesAServerThePoolHasNoRoomFor(t *testing.T) {
	m, srv, _ := newTestManager(t, Default())
	one := &Server{ID: "127.0.0.1:9001", URL: "http://127.0.0.1:9001"}
	m.maxPoolBytes = 3 * encodedSize(one)
	for port := 9001; port <= 9003; port++ {
		if code, _, body := call(t, srv, "POST", "/servers", fmt.Sprintf(`{"url": "http://127.0.0.1:%d"}`, port)); code != http.StatusCreated {
			t.Fatalf("POST %d = %d %s, want 201", port, code, body)
		}
	}
	code, _, body := call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9004"}`)
	if code != http.StatusInsufficientStorage || !strings.Contains(body, "pool is full") {
		t.Errorf("POST a fourth = %d %s, want 507 saying the pool is full", code, body)
	}
	if n := m.poolLen(); n != 3 {
		t.Errorf("pool after the refused POST has %d servers, want 3", n)
	}
	// Registering a server again takes no more room.
	if code, _, body := call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9002", "weight": 7}`); code != http.StatusOK {
		t.Errorf("POST an existing server again = %d %s, want 200", code, body)
	}
	call(t, srv, "DELETE", "/servers/127.0.0.1/9001", "")
	// An addition ahead, queued or being saved, takes the room.
	ahead := []*change{{add: &Server{ID: "127.0.0.1:9005", URL: "http://127.0.0.1:9005"}}}
	for _, where := range []*[]*change{&m.queued, &m.saving} {
		m.mu.Lock()
		*where = ahead
		m.mu.Unlock()
		code, _, body = call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9004"}`)
		if code != http.StatusInsufficientStorage {
			t.Errorf("POST with an addition ahead = %d %s, want 507", code, body)
		}
		m.mu.Lock()
		*where = nil
		m.mu.Unlock()
	}
	if code, _, body := call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9004"}`); code != http.StatusCreated {
		t.Errorf("POST a fourth after a DELETE = %d %s, want 201", code, body)
	}
}

func TestAdminIPv6Server(t *testing.T) {
	_, srv, _ := newTestManager(t, Default())
	if code, _, body := call(t, srv, "POST", "/servers", `{"url": "http://[::1]:9001"}`); code != http.StatusCreated {
		t.Fatalf("POST ipv6 = %d %s, want 201", code, body)
	}
	if code, _, body := call(t, srv, "DELETE", "/servers/::1/9001", ""); code != http.StatusNoContent {
		t.Errorf("DELETE /servers/::1/9001 = %d %s, want 204", code, body)
	}
	// An address is one server however it is spelled.
	if code, _, body := call(t, srv, "POST", "/servers", `{"url": "http://[2001:DB8::1]:9001"}`); code != http.StatusCreated {
		t.Fatalf("POST ipv6 = %d %s, want 201", code, body)
	}
	if code, _, body := call(t, srv, "DELETE", "/servers/[2001:db8:0:0::0001]/9001", ""); code != http.StatusNoContent {
		t.Errorf("DELETE /servers/[2001:db8:0:0::0001]/9001 = %d %s, want 204", code, body)
	}
}

func TestAdminRejectsBadInput(t *testing.T) {
	m, srv, q := newTestManager(t, Default())
	call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9001"}`)
	<-q
	_, _, before := call(t, srv, "GET", "/servers", "")
	tests := []struct {
		name, method, path, body string
		code                     int
		want                     string
	}{
		{"truncated", "POST", "/servers", `{"url": "http://127.0.0.1:1"`, 400, "invalid JSON"},
		{"not json", "POST", "/servers", `url=http://127.0.0.1:1`, 400, "invalid JSON"},
		{"empty", "POST", "/servers", ``, 400, "empty body"},
		{"no url", "POST", "/servers", `{}`, 400, "url: required"},
		{"scheme", "POST", "/servers", `{"url": "ftp://127.0.0.1:1"}`, 400, "url:"},
		{"no scheme", "POST", "/servers", `{"url": "127.0.0.1:1"}`, 400, "url:"},
		{"userinfo", "POST", "/servers", `{"url": "http://a:b@127.0.0.1:1"}`, 400, "url:"},
		{"html", "POST", "/servers", `{"url": "<script>alert(1)</script>"}`, 400, "url:"},
		{"unknown field", "POST", "/servers", `{"url": "http://127.0.0.1:1", "x": 1}`, 400, "unknown field"},
		{"wrong type", "POST", "/servers", `{"url": 5}`, 400, "invalid JSON"},
		{"weight 0", "POST", "/servers", `{"url": "http://127.0.0.1:1", "weight": 0}`, 400, "weight"},
		{"weight big", "POST", "/servers", `{"url": "http://127.0.0.1:1", "weight": 1001}`, 400, "weight"},
		{"bad check", "POST", "/servers", `{"url": "http://127.0.0.1:1", "health_check": {"path": "nope", "rise": -2}}`, 400, "health_check.path"},
		{"bad duration", "POST", "/servers", `{"url": "http://127.0.0.1:1", "health_check": {"interval": "soon"}}`, 400, "invalid"},
		{"two values", "POST", "/servers", `{"url": "http://127.0.0.1:1"}{}`, 400, "more than one"},
		{"too large", "POST", "/servers", `{"url": "http://127.0.0.1:1", "p": "` + strings.Repeat("x", maxAdminBody) + `"}`, 413, "larger than"},
		{"bad port", "DELETE", "/servers/127.0.0.1/0", ``, 400, "port"},
		{"unknown", "DELETE", "/servers/127.0.0.1/2", ``, 404, "no such server"},
		{"method", "PATCH", "/servers", ``, 405, "method not allowed"},
		{"path", "GET", "/servers/x", ``, 404, "not found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, h, body := call(t, srv, tc.method, tc.path, tc.body)
			var e struct {
				Error string `json:"error"`
			}
			json.Unmarshal([]byte(body), &e)
			if code != tc.code || !strings.Contains(e.Error, tc.want) {
				t.Errorf("%s %s = %d %s, want %d with an error containing %q", tc.method, tc.path, code, body, tc.code, tc.want)
			}
			if strings.Contains(body, "<") || h.Get("Content-Type") != "application/json" {
				t.Errorf("%s %s answered %q as %q, want JSON with no raw '<'", tc.method, tc.path, body, h.Get("Content-Type"))
			}
		})
	}
	if _, _, after := call(t, srv, "GET", "/servers", ""); after != before {
		t.Errorf("pool changed by rejected requests:\nbefore %s\nafter %s", before, after)
	}
	if len(q) != 0 {
		t.Errorf("rejected requests broadcast %d messages", len(q))
	}
	if m.pool.Len() != 1 {
		t.Errorf("pool has %d servers, want 1", m.pool.Len())
	}
}

func TestAdminStats(t *testing.T) {
	m, srv, _ := newTestManager(t, Default())
	call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9001"}`)
	call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9002"}`)
	report := func(st *ipc.Stats) {
		m.mu.Lock()
		m.stats.add(st, func(id string) bool { return m.pool.Get(id) != nil })
		m.mu.Unlock()
	}
	report(&ipc.Stats{ClientSuccess: 5, ClientFailed: 1, Servers: ipc.ServerStatsList{
		{ID: "127.0.0.1:9001", Success: 3, Failed: 1, ConnectFailed: 1}, {ID: "127.0.0.1:9002", Success: 2},
	}})
	report(&ipc.Stats{ClientSuccess: 2, Servers: ipc.ServerStatsList{{ID: "127.0.0.1:9002", Success: 2}, {ID: "gone:1", Success: 9}}})

	_, _, body := call(t, srv, "GET", "/stats", "")
	var totals map[string]Counts
	json.Unmarshal([]byte(body), &totals)
	if totals["client"] != (Counts{7, 1}) || totals["server"] != (Counts{16, 1}) {
		t.Errorf("GET /stats = %s, want client 7/1, server 16/1", body)
	}
	_, _, body = call(t, srv, "GET", "/stats/detail", "")
	var detail []serverStats
	json.Unmarshal([]byte(body), &detail)
	want := []serverStats{
		{ID: "127.0.0.1:9001", IP: "127.0.0.1", Port: 9001, State: "up", Success: 3, Failed: 1},
		{ID: "127.0.0.1:9002", IP: "127.0.0.1", Port: 9002, State: "up", Success: 4},
	}
	if len(detail) != 2 || detail[0] != want[0] || detail[1] != want[1] {
		t.Errorf("GET /stats/detail = %+v, want %+v", detail, want)
	}
	// Removing a server drops its detail but keeps the totals.
	call(t, srv, "DELETE", "/servers/127.0.0.1/9001", "")
	_, _, body = call(t, srv, "GET", "/stats", "")
	json.Unmarshal([]byte(body), &totals)
	if totals["server"] != (Counts{16, 1}) {
		t.Errorf("GET /stats after DELETE = %s, want server totals kept", body)
	}
}

func TestAdminIndexAndHealthz(t *testing.T) {
	m, srv, _ := newTestManager(t, Default())
	if code, _, body := call(t, srv, "GET", "/", ""); code != 200 || !strings.Contains(body, `"/servers"`) {
		t.Errorf("GET / = %d %s, want 200 with links", code, body)
	}
	if code, _, body := call(t, srv, "GET", "/healthz", ""); code != 503 || !strings.Contains(body, "workers ready") {
		t.Errorf("GET /healthz with no worker ready = %d %s, want 503 saying why", code, body)
	}
	m.mu.Lock()
	m.setReady(m.workersCount)
	m.mu.Unlock()
	if code, _, body := call(t, srv, "GET", "/healthz", ""); code != 200 {
		t.Errorf("GET /healthz with all workers ready = %d %s, want 200", code, body)
	}
}

func TestAdminMutationsDuringHandover(t *testing.T) {
	m, srv, q := newTestManager(t, Default())
	m.setHandover(true)
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/servers", `{"url": "http://127.0.0.1:9001"}`},
		{"DELETE", "/servers/127.0.0.1/9001", ""},
	} {
		code, h, body := call(t, srv, tc.method, tc.path, tc.body)
		if code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
			t.Errorf("%s %s during a hand-over = %d %s (Retry-After %q), want 503 with Retry-After", tc.method, tc.path, code, body, h.Get("Retry-After"))
		}
	}
	if m.pool.Len() != 0 || len(q) != 0 {
		t.Errorf("a refused mutation changed the pool (%d servers, %d broadcasts)", m.pool.Len(), len(q))
	}
	if code, _, _ := call(t, srv, "GET", "/servers", ""); code != http.StatusOK {
		t.Errorf("GET /servers during a hand-over = %d, want 200", code)
	}
	m.setHandover(false)
	if code, _, _ := call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9001"}`); code != http.StatusCreated {
		t.Errorf("POST after a failed hand-over = %d, want 201", code)
	}
}

// statusIs reports whether code is want, or in its class if want is a
// single digit: the mux's redirect to a cleaned path is 301 or 307 by Go
// version.
func statusIs(code, want int) bool {
	if want < 10 {
		return code/100 == want
	}
	return code == want
}

// TestAdminHeaders checks that every answer is JSON (but /metrics) that no
// browser may sniff as something else, errors and the mux's own redirect
// included.
func TestAdminHeaders(t *testing.T) {
	cfg := Default()
	cfg.Servers = []ServerConfig{{URL: "http://127.0.0.1:7000"}}
	_, srv, _ := newTestManager(t, cfg)
	// Redirects are answers too: do not follow them.
	client := srv.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	tests := []struct {
		method, path, body string
		code               int
	}{
		{"GET", "/", "", 200},
		{"GET", "/servers", "", 200},
		{"POST", "/servers", `{"url": "http://127.0.0.1:9001"}`, 201},
		{"POST", "/servers", `{"url": "http://127.0.0.1:9001"}`, 200},
		{"POST", "/servers", `{`, 400},
		{"POST", "/servers", `{"url": "http://127.0.0.1:1", "p": "` + strings.Repeat("x", maxAdminBody) + `"}`, 413},
		{"DELETE", "/servers/127.0.0.1/9001", "", 204},
		{"DELETE", "/servers/127.0.0.1/9001", "", 404},
		{"DELETE", "/servers/127.0.0.1/7000", "", 409},
		{"GET", "/stats", "", 200},
		{"GET", "/stats/detail", "", 200},
		{"GET", "/healthz", "", 503},
		{"HEAD", "/servers", "", 200},
		{"PUT", "/servers", "", 405},
		{"GET", "/nowhere", "", 404},
		{"GET", "//servers", "", 3},
		{"GET", "/stats/../servers", "", 3},
		{"GET", "/metrics", "", 200},
	}
	for _, tc := range tests {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		what := tc.method + " " + tc.path
		if !statusIs(res.StatusCode, tc.code) {
			t.Errorf("%s = %d %s, want %d", what, res.StatusCode, b, tc.code)
		}
		wantType := "application/json"
		if tc.path == "/metrics" {
			wantType = "text/plain; version=0.0.4; charset=utf-8"
		}
		if got := res.Header.Get("Content-Type"); got != wantType {
			t.Errorf("%s: Content-Type = %q, want %q", what, got, wantType)
		}
		if got := res.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s: X-Content-Type-Options = %q, want nosniff", what, got)
		}
		if len(b) > 0 && tc.path != "/metrics" && !json.Valid(b) {
			t.Errorf("%s: body %q is not JSON", what, b)
		}
	}
}

// TestAdminNoReflectedHTML checks that markup in a request comes back, if at
// all, escaped: no raw '<' in any answer.
func TestAdminNoReflectedHTML(t *testing.T) {
	_, srv, _ := newTestManager(t, Default())
	client := srv.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	const script = "<script>alert(1)</script>"
	tests := []struct {
		name, method, path, body string
		code                     int
	}{
		{"field name", "POST", "/servers", `{"url": "http://127.0.0.1:1", "` + script + `": 1}`, 400},
		{"nested field name", "POST", "/servers", `{"url": "http://127.0.0.1:1", "health_check": {"` + script + `": 1}}`, 400},
		{"url", "POST", "/servers", `{"url": "` + script + `"}`, 400},
		{"url host", "POST", "/servers", `{"url": "http://` + script + `:80"}`, 400},
		{"url path", "POST", "/servers", `{"url": "http://127.0.0.1:1/` + script + `"}`, 400},
		{"duration", "POST", "/servers", `{"url": "http://127.0.0.1:1", "health_check": {"interval": "` + script + `"}}`, 400},
		{"check path", "POST", "/servers", `{"url": "http://127.0.0.1:1", "health_check": {"path": "/` + script + `"}}`, 201},
		{"list", "GET", "/servers", "", 200},
		{"request path", "GET", "/" + script, "", 404},
		{"delete path", "DELETE", "/servers/" + script + "/80", "", 404},
		{"redirect query", "GET", "//servers?" + script, "", 3},
		{"method path", "PUT", "/servers?" + script, "", 405},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if !statusIs(res.StatusCode, tc.code) {
				t.Errorf("%s %s = %d %s, want %d", tc.method, tc.path, res.StatusCode, b, tc.code)
			}
			if strings.ContainsAny(string(b), "<>") {
				t.Errorf("%s %s answered %q, want no raw '<' or '>'", tc.method, tc.path, b)
			}
			if ct := res.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("%s %s: Content-Type = %q, want application/json", tc.method, tc.path, ct)
			}
		})
	}
}

// A change's propagation is timed by the acknowledgements of the workers
// that were serving before it, not by the start-up of one whose first
// snapshot held it, and only once every serving worker has acknowledged it.
func TestPropagationTimesTheWorkersThatHadToApplyIt(t *testing.T) {
	m, _, _ := newTestManager(t, Default())
	clear(m.procs)
	first := &workerProc{ready: true, snapshot: 1, applied: 4}
	second := &workerProc{ready: true, snapshot: 1, applied: 4}
	m.procs[first] = struct{}{}
	m.procs[second] = struct{}{}
	m.procs[&workerProc{ready: true, snapshot: 5, applied: 5}] = struct{}{}

	m.mu.Lock()
	defer m.mu.Unlock()
	now := ipc.Now()
	m.awaitPropagation(5, now, m.metrics.propagation)
	first.applied = 5
	first.acks.add(5, now+2000)
	m.notify()
	if h := m.metrics.propagation; h.n != 0 || len(m.pending) != 1 {
		t.Fatalf("propagation observed %d times, %d changes pending; want none observed while a worker has not applied the change", h.n, len(m.pending))
	}
	second.applied = 6 // a later change covers it
	second.acks.add(6, now+1500)
	m.notify()
	if h := m.metrics.propagation; h.n != 1 || h.sum != 2e-6 || len(m.pending) != 0 {
		t.Errorf("propagation observed %d times, sum %gs, %d pending; want once, 2µs (the later of the two acknowledgements), none pending", h.n, h.sum, len(m.pending))
	}

	clear(m.procs) // only a worker that started with version 7 is left
	m.procs[&workerProc{ready: true, snapshot: 7, applied: 7}] = struct{}{}
	m.awaitPropagation(7, ipc.Now(), m.metrics.propagation)
	if h := m.metrics.propagation; h.n != 1 || len(m.pending) != 0 {
		t.Errorf("propagation observed %d times, %d pending; want still once, none pending: a start-up is not a propagation", h.n, len(m.pending))
	}
}

// A change that a worker has not acknowledged applyTimeout after it was
// made is given up, as the API's wait gives up: its propagation is not
// observed, even when the acknowledgement comes later, and the changes
// behind it are observed.
func TestPropagationOfAStuckWorkerIsGivenUp(t *testing.T) {
	m, _, _ := newTestManager(t, Default())
	clear(m.procs)
	stuck := &workerProc{ready: true, snapshot: 1, applied: 1}
	m.procs[stuck] = struct{}{}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := ipc.Now()
	m.awaitPropagation(2, now-int64(2*applyTimeout), m.metrics.propagation) // made long ago
	m.awaitPropagation(3, now, m.metrics.propagation)
	if len(m.pending) != 1 || m.pending[0].version != 3 {
		t.Fatalf("pending %v, want version 3 only: version 2 waited more than %s", m.pending, applyTimeout)
	}
	stuck.applied = 2
	stuck.acks.add(2, now)
	m.notify()
	if h := m.metrics.propagation; h.n != 0 || len(m.pending) != 1 {
		t.Errorf("propagation observed %d times, %d pending; want none observed (2 was given up, 3 not applied), 3 pending", h.n, len(m.pending))
	}
	stuck.applied = 3
	stuck.acks.add(3, now+1000)
	m.notify()
	if h := m.metrics.propagation; h.n != 1 || h.sum != 1e-6 || len(m.pending) != 0 {
		t.Errorf("propagation observed %d times, sum %gs, %d pending; want 3's alone, 1µs", h.n, h.sum, len(m.pending))
	}
}

// The admin API answers once a change is in force in every worker: applied,
// or whole in its pipe with its bell rung if the worker said on Ready that
// it reads its bell. A worker that is starting is waited for only if its
// snapshot is older than the change.
func TestWaitInForce(t *testing.T) {
	m, _, _ := newTestManager(t, Default())
	clear(m.procs)
	bell, f, err := ipc.NewBell()
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { bell.Close() })
	rung := &workerProc{ready: true, rings: true, applied: 1, bell: bell}
	m.procs[rung] = struct{}{}
	m.procs[&workerProc{snapshot: 3}] = struct{}{} // starting, with a newer snapshot
	m.procs[&workerProc{ready: true, killed: true}] = struct{}{}

	// waitInForce observes its wait only when the change is in force; it
	// also returns when its request ends, here at once.
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	inForce := func(v uint64) bool {
		n := m.metrics.applyDuration.n
		m.waitInForce(ended, v)
		return m.metrics.applyDuration.n == n+1
	}
	if inForce(2) {
		t.Fatal("in force before the worker's bell was rung with 2 or it applied 2")
	}
	bell.Ring(2)
	if !inForce(2) {
		t.Fatal("not in force although the worker's bell was rung with 2")
	}

	// A worker with a bell that it did not say it reads must apply it.
	silent := &workerProc{ready: true, applied: 1, bell: bell}
	m.procs[silent] = struct{}{}
	if inForce(2) {
		t.Error("in force although a worker that does not read its bell has not applied 2")
	}
	m.mu.Lock()
	silent.applied = 2
	m.mu.Unlock()
	if !inForce(2) {
		t.Error("not in force although every worker has 2")
	}

	// A worker starting with a snapshot older than the change.
	starting := &workerProc{snapshot: 1}
	m.procs[starting] = struct{}{}
	if inForce(2) {
		t.Error("in force although a worker is starting with a snapshot older than 2")
	}
	m.mu.Lock()
	starting.ready, starting.rings, starting.bell, starting.applied = true, true, bell, 1
	m.mu.Unlock()
	if !inForce(2) {
		t.Error("not in force although the started worker's bell was rung with 2")
	}
}

// A change a worker does not take within applyTimeout is answered for
// anyway, and the wait, which gave up, is not counted as the API's.
func TestWaitInForceGivesUp(t *testing.T) {
	m, _, _ := newTestManager(t, Default())
	clear(m.procs)
	m.procs[&workerProc{ready: true, applied: 1}] = struct{}{} // no bell, never applies 2
	done := make(chan struct{})
	go func() { m.waitInForce(context.Background(), 2); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("waitInForce still waits a minute after the change, want it to give up after %s", applyTimeout)
	}
	if h := m.metrics.applyDuration; h.n != 0 {
		t.Errorf("the API's wait observed %d times, want 0: it gave up", h.n)
	}
}
