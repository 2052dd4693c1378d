package manager

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/weldr-proxy/weldr/ipc"
)

// FuzzAdminServersPost posts untrusted bytes to POST /servers, through the
// whole admin handler (token check included), on a fresh manager each time:
// whatever the body, the answer is JSON with a known status, a rejected body
// changes nothing, and an accepted one is in the pool.
func FuzzAdminServersPost(f *testing.F) {
	for _, s := range []string{
		`{"url": "http://10.0.0.5:8080"}`,
		`{"url": "https://[2001:db8::1]", "weight": 1000}`,
		`{"url": "HTTP://Example.COM:80/", "weight": 3, "health_check": {"path": "/up", "interval": "5s", "timeout": "1s", "fall": 2, "rise": 1}}`,
		`{"url": "http://127.0.0.1:7000"}`,              // the static server, unchanged: 200
		`{"url": "http://127.0.0.1:7000", "weight": 9}`, // the static server, changed: 409
		`{"URL": "http://b"}`,
		``,
		`{`,
		`null`,
		`[]`,
		`{"url": 5}`,
		`{"url": "ftp://x"}`,
		`{"url": "http://a", "x": 1}`,
		`{"url": "http://a"}{}`,
		`{"url": "http://a", "weight": 1e400}`,
		`{"url": "http://a", "weight": 0}`,
		`{"url": "http://a", "health_check": {"interval": "1ms", "path": "x"}}`,
		`{"url": "<script>", "<b>": 1}`,
		"{\"url\": \"http://\xff\xfe\"}",
		`{"url": "http://a", "p": "` + strings.Repeat("x", maxAdminBody) + `"}`,
	} {
		f.Add([]byte(s))
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, body []byte) {
		cfg := Default()
		cfg.State.File = filepath.Join(t.TempDir(), "state.json")
		cfg.Admin.Token = testToken
		cfg.Servers = []ServerConfig{{URL: "http://127.0.0.1:7000", Weight: 1}}
		m, err := New(cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		q := make(chan *ipc.Message, 100)
		m.procs[queueWorker(q)] = struct{}{}
		before := m.pool.List()

		req := httptest.NewRequest("POST", "/servers", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		rec := httptest.NewRecorder()
		m.adminHandler().ServeHTTP(rec, req)

		code, out := rec.Code, rec.Body.Bytes()
		switch code {
		case http.StatusOK, http.StatusCreated, http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		case http.StatusConflict:
			// Only a change of the static server, whose settings are the
			// configuration file's.
			var req struct{ URL string }
			json.Unmarshal(body, &req)
			if id, _, err := ParseServerURL(req.URL); err != nil || id != "127.0.0.1:7000" {
				t.Fatalf("POST /servers %q = %d %s, want 409 only for the static server", body, code, out)
			}
		default:
			t.Fatalf("POST /servers %q = %d %s, want 200, 201, 400, 409 or 413", body, code, out)
		}
		if !json.Valid(out) || rec.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("POST /servers %q answered %q as %q, want JSON", body, out, rec.Header().Get("Content-Type"))
		}
		if bytes.ContainsAny(out, "<>") {
			t.Errorf("POST /servers %q answered %q, want no raw '<' or '>'", body, out)
		}
		after := m.pool.List()

		if code >= 400 {
			var e map[string]string
			if err := json.Unmarshal(out, &e); err != nil || len(e) != 1 || e["error"] == "" {
				t.Errorf("POST /servers %q = %d %s, want {\"error\": ...}", body, code, out)
			}
			if !reflect.DeepEqual(after, before) || len(q) != 0 {
				t.Errorf("POST /servers %q = %d changed the pool (%d broadcasts):\nbefore %+v\nafter %+v", body, code, len(q), before, after)
			}
			return
		}

		var v serverView
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("POST /servers %q = %d %s, want a server: %v", body, code, out, err)
		}
		id, canonical, err := ParseServerURL(v.URL)
		if err != nil || id != v.ID || canonical != v.URL {
			t.Fatalf("POST /servers %q = server %q (%s), whose URL parses to %q, %q, %v", body, v.ID, v.URL, id, canonical, err)
		}
		if host, port := splitID(v.ID); host != v.IP || port != v.Port || port < 1 || port > 65535 {
			t.Errorf("POST /servers %q = server %q with ip %q, port %d", body, v.ID, v.IP, v.Port)
		}
		s := m.pool.Get(v.ID)
		if s == nil {
			t.Fatalf("POST /servers %q = %d %s, but %s is not in the pool", body, code, out, v.ID)
		}
		if s.URL != v.URL || s.Weight != v.Weight || s.Health != v.HealthCheck || s.Weight < 1 || s.Weight > 1000 {
			t.Errorf("POST /servers %q = %+v, pool has %+v", body, v, *s)
		}
		if err := s.Health.Validate("health_check"); err != nil {
			t.Errorf("POST /servers %q stored an invalid health check %+v: %v", body, s.Health, err)
		}
		grew := len(after) - len(before)
		switch {
		case code == http.StatusCreated && (grew != 1 || len(q) != 1):
			t.Errorf("POST /servers %q = 201 with %d more servers and %d broadcasts, want 1 and 1", body, grew, len(q))
		case code == http.StatusOK && (grew != 0 || len(q) > 1):
			t.Errorf("POST /servers %q = 200 with %d more servers and %d broadcasts, want 0 and at most 1", body, grew, len(q))
		}
		for len(q) > 0 {
			if msg := <-q; msg.Kind != ipc.AddServer || len(msg.Servers) != 1 || msg.Servers[0].ID != v.ID {
				t.Errorf("POST /servers %q broadcast %+v, want AddServer %s", body, msg, v.ID)
			}
		}
	})
}
