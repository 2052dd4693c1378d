package manager

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weldr-proxy/weldr/ipc"
)

func TestStateSurvivesARestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	cfg := Default()
	cfg.State.File = path
	cfg.Servers = []ServerConfig{{URL: "http://127.0.0.1:7000"}}
	_, srv, _ := newTestManager(t, cfg)
	call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9001", "weight": 4, "health_check": {"path": "/h", "fall": 5}}`)
	call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9002"}`)
	call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9003"}`)
	call(t, srv, "DELETE", "/servers/127.0.0.1/9002", "")

	// A new manager on the same file has the registrations, with their
	// settings, and the configured server once.
	m2, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range m2.pool.List() {
		got = append(got, s.ID)
	}
	if strings.Join(got, " ") != "127.0.0.1:7000 127.0.0.1:9001 127.0.0.1:9003" {
		t.Errorf("pool after restart = %v, want the configured server and 9001, 9003", got)
	}
	s := m2.pool.Get("127.0.0.1:9001")
	if s == nil || s.Weight != 4 || s.Health.Path != "/h" || s.Health.Fall != 5 || s.Health.Rise != cfg.Health.Rise || s.Static {
		t.Errorf("restored 9001 = %+v, want weight 4, path /h, fall 5, rise from defaults, not static", s)
	}
	if !m2.pool.Get("127.0.0.1:7000").Static {
		t.Error("the configured server is no longer static after a restart")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("state directory holds %d files, want only state.json (no temporary files left)", len(entries))
	}
}

func TestCorruptStateFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	os.WriteFile(path, []byte(`{"format": 1, "servers": [`), 0o600)
	cfg := Default()
	cfg.State.File = path
	cfg.Servers = []ServerConfig{{URL: "http://127.0.0.1:7000"}}
	var logs strings.Builder
	m, err := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatalf("New() with a corrupt state file = %v, want the configured servers served", err)
	}
	if m.pool.Len() != 1 || m.pool.Get("127.0.0.1:7000") == nil {
		t.Errorf("pool = %v, want just the configured server", m.pool.List())
	}
	if !strings.Contains(logs.String(), "state file unusable") || !strings.Contains(logs.String(), "not valid JSON") {
		t.Errorf("log = %q, want a clear report of the corrupt state file", logs.String())
	}
	aside, _ := filepath.Glob(path + ".corrupt-*")
	if len(aside) != 1 {
		t.Errorf("corrupt file moved aside to %v, want one .corrupt-* file kept for the operator", aside)
	}
}

func TestStateFileSkipsBadEntries(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(path, []byte(`{"format": 1, "servers": [
		{"url": "http://127.0.0.1:9001", "weight": 1, "health_check": {"path": "/", "interval": "10s", "timeout": "2s", "fall": 3, "rise": 2}},
		{"url": "ftp://127.0.0.1:9002", "weight": 1, "health_check": {"path": "/", "interval": "10s", "timeout": "2s", "fall": 3, "rise": 2}},
		{"url": "http://127.0.0.1:9003", "weight": 0, "health_check": {"path": "/", "interval": "10s", "timeout": "2s", "fall": 3, "rise": 2}}
	]}`), 0o600)
	servers, bad, err := readState(path, Default().Health)
	if err != nil || len(servers) != 1 || servers[0].ID != "127.0.0.1:9001" || len(bad) != 2 {
		t.Errorf("readState() = %v, %v, %v; want 9001 kept and two entries reported", servers, bad, err)
	}
	if _, _, err := readState(filepath.Join(t.TempDir(), "missing.json"), Default().Health); err != nil {
		t.Errorf("readState(missing) = %v, want an empty pool", err)
	}
}

// A change that cannot be saved in the state file is not made: the API
// says why, and the pool, the workers and the file keep what they had.
func TestStateWriteFailureRefusesTheChange(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := Default()
	cfg.State.File = filepath.Join(dir, "state.json")
	m, srv, q := newTestManager(t, cfg)
	if code, _, body := call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9001"}`); code != http.StatusCreated {
		t.Fatalf("POST = %d %s, want 201", code, body)
	}
	<-q
	before := m.pool.List()

	os.RemoveAll(dir) // the state file can no longer be written
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/servers", `{"url": "http://127.0.0.1:9002"}`},
		{"POST", "/servers", `{"url": "http://127.0.0.1:9001", "weight": 5}`},
		{"DELETE", "/servers/127.0.0.1/9001", ""},
	} {
		code, _, body := call(t, srv, tc.method, tc.path, tc.body)
		var e map[string]string
		json.Unmarshal([]byte(body), &e)
		if code != http.StatusInternalServerError || !strings.Contains(e["error"], cfg.State.File) || !strings.Contains(e["error"], "no such file or directory") {
			t.Errorf("%s %s %s with an unwritable state file = %d %s, want 500 with an error naming the file and why", tc.method, tc.path, tc.body, code, body)
		}
	}
	if code, _, body := call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9001"}`); code != http.StatusOK {
		t.Errorf("POST of a server as it is, with an unwritable state file = %d %s, want 200: nothing to save", code, body)
	}
	if after := m.pool.List(); !reflect.DeepEqual(after, before) {
		t.Errorf("pool after refused changes = %+v, want it unchanged: %+v", after, before)
	}
	if len(q) != 0 {
		t.Errorf("refused changes broadcast %d messages, want none", len(q))
	}
	if n := m.stateFailures.Load(); n != 3 {
		t.Errorf("state write failures = %d, want 3", n)
	}

	// Once the file can be written again, changes are saved and made.
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if code, _, body := call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9002"}`); code != http.StatusCreated {
		t.Errorf("POST with the state file writable again = %d %s, want 201", code, body)
	}
	if saved := savedIDs(t, cfg.State.File); saved != "127.0.0.1:9001 127.0.0.1:9002" {
		t.Errorf("state file holds %s, want 9001 and 9002", saved)
	}
}

// savedIDs returns the IDs of the servers saved at path, in order.
func savedIDs(t *testing.T, path string) string {
	t.Helper()
	servers, bad, err := readState(path, Default().Health)
	if err != nil || len(bad) > 0 {
		t.Fatalf("readState(%s) = %v, %v", path, bad, err)
	}
	var ids []string
	for _, s := range servers {
		ids = append(ids, s.ID)
	}
	return strings.Join(ids, " ")
}

// weldr starts with a state file it cannot save, and says at once that
// admin changes will be refused: the proxy serves what it has.
func TestUnwritableStateFileIsReportedAtStart(t *testing.T) {
	cfg := Default()
	cfg.State.File = filepath.Join(t.TempDir(), "no", "such", "dir", "state.json")
	var log strings.Builder
	if _, err := New(cfg, slog.New(slog.NewTextHandler(&log, nil))); err != nil {
		t.Fatalf("New() with a state file in a missing directory = %v, want it to start", err)
	}
	if !strings.Contains(log.String(), "state.file") || !strings.Contains(log.String(), cfg.State.File) {
		t.Errorf("log at start = %q, want an error naming state.file and the path", log.String())
	}
}

// Changes made at once are all saved, whoever writes the file, and the
// file holds what the pool does.
func TestConcurrentChangesAreAllSaved(t *testing.T) {
	cfg := Default()
	cfg.State.File = filepath.Join(t.TempDir(), "state.json")
	cfg.Servers = []ServerConfig{{URL: "http://127.0.0.1:7000"}}
	m, srv, _ := newTestManager(t, cfg)
	do := func(method, path, body string) int {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Error(err)
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	var wg sync.WaitGroup
	codes := make(chan int, 60)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes <- do("POST", "/servers", fmt.Sprintf(`{"url": "http://127.0.0.1:%d"}`, 9000+i))
			if i%2 == 0 {
				codes <- do("DELETE", fmt.Sprintf("/servers/127.0.0.1/%d", 9000+i), "")
			}
		}()
	}
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != http.StatusCreated && code != http.StatusNoContent {
			t.Errorf("concurrent change = %d, want 201 or 204", code)
		}
	}
	m.mu.Lock()
	var want []string
	for _, s := range m.registered() {
		want = append(want, s.ID)
	}
	m.mu.Unlock()
	if len(want) != 20 {
		t.Errorf("pool has %d registered servers, want 20", len(want))
	}
	if saved := savedIDs(t, cfg.State.File); saved != strings.Join(want, " ") {
		t.Errorf("state file holds %s, want the pool's %v", saved, want)
	}
}

// A server keeps only the check settings it was registered with: the rest
// are the [health] defaults of the generation that runs, so a restart or
// an upgrade with new defaults changes them.
func TestHealthDefaultsFollowTheConfiguration(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	cfg := Default()
	cfg.State.File = path
	m, srv, _ := newTestManager(t, cfg)
	call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9001"}`)
	code, _, body := call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9002", "health_check": {"interval": "5s", "fall": 5}}`)
	var v serverView
	json.Unmarshal([]byte(body), &v)
	own := HealthCheck{Path: "/", Interval: Duration(5 * time.Second), Timeout: Duration(2 * time.Second), Fall: 5, Rise: 2}
	if code != http.StatusCreated || v.HealthCheck != own {
		t.Errorf("POST with overrides = %d %s, want 201 showing the settings in effect %+v", code, body, own)
	}

	// What an earlier weldr reads, should it be run again: complete settings.
	b, _ := os.ReadFile(path)
	var earlier struct {
		Servers []struct {
			HealthCheck HealthCheck `json:"health_check"`
		} `json:"servers"`
	}
	json.Unmarshal(b, &earlier)
	for i, s := range earlier.Servers {
		if err := s.HealthCheck.Validate("health_check"); err != nil {
			t.Errorf("state file servers[%d].health_check = %+v, want complete settings for an earlier weldr: %v", i, s.HealthCheck, err)
		}
	}

	next := Default()
	next.State.File = path
	next.Health.Path, next.Health.Interval, next.Health.Fall = "/up", Duration(20*time.Second), 4
	m.mu.Lock()
	handed, err := encodeState(m.registered())
	m.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		name  string
		start func() (*Manager, error)
	}{
		{"restart", func() (*Manager, error) { return New(next, log) }},
		{"upgrade", func() (*Manager, error) { return newManager(next, log, handed) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m2, err := tc.start()
			if err != nil {
				t.Fatal(err)
			}
			if s := m2.pool.Get("127.0.0.1:9001"); s == nil || s.Health != next.Health {
				t.Errorf("9001, registered with no check settings, has %+v, want the new defaults %+v", s, next.Health)
			}
			want := HealthCheck{Path: "/up", Interval: Duration(5 * time.Second), Timeout: Duration(2 * time.Second), Fall: 5, Rise: 2}
			if s := m2.pool.Get("127.0.0.1:9002"); s == nil || s.Health != want {
				t.Errorf("9002, registered with interval 5s and fall 5, has %+v, want those and the new defaults: %+v", s, want)
			}
		})
	}
}

// A state file of a weldr that saved every check setting, defaults
// included, still loads. Settings equal to the defaults are taken for
// them; the others stay the server's own.
func TestStateFileOfAnEarlierVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(path, []byte(`{"format": 1, "saved": "2025-01-02T03:04:05Z", "servers": [
		{"url": "http://127.0.0.1:9001", "weight": 2, "health_check": {"path": "/h", "interval": "10s", "timeout": "2s", "fall": 3, "rise": 2}}
	]}`), 0o600)
	cfg := Default()
	cfg.State.File = path
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	was := HealthCheck{Path: "/h", Interval: Duration(10 * time.Second), Timeout: Duration(2 * time.Second), Fall: 3, Rise: 2}
	if s := m.pool.Get("127.0.0.1:9001"); s == nil || s.Weight != 2 || s.Health != was {
		t.Fatalf("9001 from an earlier state file = %+v, want weight 2 and checks %+v", s, was)
	}

	next := Default()
	next.State.File = path
	next.Health.Interval = Duration(20 * time.Second)
	handed, err := encodeState(m.pool.List())
	if err != nil {
		t.Fatal(err)
	}
	m2, err := newManager(next, log, handed)
	if err != nil {
		t.Fatal(err)
	}
	want := was
	want.Interval = next.Health.Interval
	if s := m2.pool.Get("127.0.0.1:9001"); s == nil || s.Health != want {
		t.Errorf("9001 after an upgrade with new defaults = %+v, want its own path and the new interval: %+v", s, want)
	}
}

// planned, which looks the changes up rather than replaying them on a copy
// of the pool, leaves the registered servers as replaying them would.
func TestPlannedIsThePoolAfterTheChanges(t *testing.T) {
	srv := func(addr string, weight int) *Server {
		id, u, err := ParseServerURL("http://" + addr)
		if err != nil {
			t.Fatal(err)
		}
		return &Server{ID: id, URL: u, Weight: weight}
	}
	a, b, c := srv("127.0.0.1:1", 1), srv("127.0.0.1:2", 1), srv("127.0.0.1:3", 1)
	add := func(s *Server) *change { return &change{add: s} }
	remove := func(s *Server) *change { return &change{remove: s.ID} }
	for _, tc := range []struct {
		name    string
		changes []*change
	}{
		{"nothing changed", []*change{add(a), remove(c)}},
		{"new", []*change{add(c)}},
		{"updated", []*change{add(srv("127.0.0.1:2", 5))}},
		{"removed", []*change{remove(a)}},
		{"removed, then added back", []*change{remove(a), add(srv("127.0.0.1:1", 3))}},
		{"added, then removed", []*change{add(c), remove(c)}},
		{"added, then updated", []*change{add(c), add(srv("127.0.0.1:3", 7))}},
		{"updated back as it was", []*change{add(srv("127.0.0.1:1", 2)), add(a)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := NewPool()
			p.Add(*a)
			p.Add(*b)
			next, changed := planned(p.List(), p.Get, tc.changes)
			replayed := false
			for _, c := range tc.changes {
				var msgs []*ipc.Message
				if c.add != nil {
					_, msgs = p.Add(*c.add)
				} else {
					_, msgs = p.Remove(c.remove)
				}
				replayed = replayed || len(msgs) > 0
			}
			key := func(s Server) string { return fmt.Sprintf("%s %s %d", s.ID, s.URL, s.Weight) }
			want := p.List()
			slices.SortFunc(want, func(x, y Server) int { return strings.Compare(x.ID, y.ID) })
			slices.SortFunc(next, func(x, y Server) int { return strings.Compare(x.ID, y.ID) })
			if changed != replayed || !slices.Equal(serverKeys(next, key), serverKeys(want, key)) {
				t.Errorf("planned = %v (changed %v), want %v (changed %v)", serverKeys(next, key), changed, serverKeys(want, key), replayed)
			}
		})
	}
}

func serverKeys(servers []Server, key func(Server) string) []string {
	var out []string
	for _, s := range servers {
		out = append(out, key(s))
	}
	return out
}

// Saved servers are added only while the pool has room for them in the
// message that gives a worker the pool, and those left out are reported.
func TestSavedServersFitTheWorkersPool(t *testing.T) {
	cfg := Default()
	cfg.Servers = []ServerConfig{{URL: "http://127.0.0.1:7000"}}
	m, _, _ := newTestManager(t, cfg)
	var logs strings.Builder
	m.log = slog.New(slog.NewTextHandler(&logs, nil))
	one := &Server{ID: "127.0.0.1:9001", URL: "http://127.0.0.1:9001"}
	m.maxPoolBytes = 3 * encodedSize(one)

	var saved []Server
	for port := 9001; port <= 9004; port++ {
		id := fmt.Sprintf("127.0.0.1:%d", port)
		saved = append(saved, Server{ID: id, URL: "http://" + id, Weight: 1, Health: cfg.Health})
	}
	saved = append(saved, Server{ID: "127.0.0.1:7000", URL: "http://127.0.0.1:7000", Weight: 1, Health: cfg.Health})
	m.addSaved(saved, "the test")

	var got []string
	for _, s := range m.pool.List() {
		got = append(got, s.ID)
	}
	if strings.Join(got, " ") != "127.0.0.1:7000 127.0.0.1:9001 127.0.0.1:9002" {
		t.Errorf("pool = %v, want the configured server and the first two saved ones", got)
	}
	if !strings.Contains(logs.String(), "the pool is full") || !strings.Contains(logs.String(), "left_out=2") {
		t.Errorf("log = %q, want the two servers left out reported", logs.String())
	}
}
