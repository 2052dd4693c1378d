package manager

import (
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	servers, bad, err := readState(path)
	if err != nil || len(servers) != 1 || servers[0].ID != "127.0.0.1:9001" || len(bad) != 2 {
		t.Errorf("readState() = %v, %v, %v; want 9001 kept and two entries reported", servers, bad, err)
	}
	if _, _, err := readState(filepath.Join(t.TempDir(), "missing.json")); err != nil {
		t.Errorf("readState(missing) = %v, want an empty pool", err)
	}
}

func TestStateWriteFailureIsCountedNotFatal(t *testing.T) {
	cfg := Default()
	cfg.State.File = filepath.Join(t.TempDir(), "no", "such", "dir", "state.json")
	m, srv, _ := newTestManager(t, cfg)
	if code, _, _ := call(t, srv, "POST", "/servers", `{"url": "http://127.0.0.1:9001"}`); code != http.StatusCreated {
		t.Errorf("POST with an unwritable state file = %d, want 201 (the change is in effect)", code)
	}
	if m.stateFailures.Load() != 1 {
		t.Errorf("state write failures = %d, want 1", m.stateFailures.Load())
	}
}
