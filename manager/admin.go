package manager

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// maxAdminBody bounds an admin request body.
const maxAdminBody = 64 << 10

// apiError is an error with the HTTP status it is answered with.
type apiError struct {
	code       int
	msg        string
	allow      string // the Allow header of a 405
	retryAfter int    // seconds, for a 503
}

func (e *apiError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) error {
	return &apiError{code: code, msg: fmt.Sprintf(format, args...)}
}

// apiFunc handles one admin request: it returns the status and the value to
// send as JSON (nil for no body), or an error.
type apiFunc func(r *http.Request) (int, any, error)

// adminHandler returns the admin API. Every answer, errors included, is
// JSON, except /metrics; if admin.token is set, every request must carry it.
func (m *Manager) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", m.api(m.index))
	mux.Handle("GET /servers", m.api(m.listServers))
	mux.Handle("POST /servers", m.api(m.addServer))
	mux.Handle("DELETE /servers/{ip}/{port}", m.api(m.removeServer))
	mux.Handle("GET /stats", m.api(m.statsTotals))
	mux.Handle("GET /stats/detail", m.api(m.statsDetail))
	mux.Handle("GET /healthz", m.api(m.healthz))
	mux.HandleFunc("GET /metrics", m.serveMetrics)
	for path, allow := range map[string]string{
		"/{$}": "GET", "/servers": "GET, POST", "/servers/{ip}/{port}": "DELETE",
		"/stats": "GET", "/stats/detail": "GET", "/healthz": "GET", "/metrics": "GET",
	} {
		mux.Handle(path, m.api(func(*http.Request) (int, any, error) {
			return 0, nil, &apiError{code: http.StatusMethodNotAllowed, msg: "method not allowed", allow: allow}
		}))
	}
	mux.Handle("/", m.api(func(*http.Request) (int, any, error) {
		return 0, nil, errorf(http.StatusNotFound, "not found")
	}))
	return adminHeaders(m.requireToken(m.cfg.Admin.Token, mux))
}

// adminHeaders sets the headers every admin answer carries before next
// writes it. Content-Type is JSON unless next sets another: that also keeps
// what the mux answers by itself (its redirect to a cleaned path) from
// carrying an HTML body that echoes the request.
func adminHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// api adapts an apiFunc to http.Handler, writing its value or error as JSON.
func (m *Manager) api(f apiFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, v, err := f(r)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) {
				m.log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "error", err)
				ae = &apiError{code: http.StatusInternalServerError, msg: "internal error"}
			}
			if ae.allow != "" {
				w.Header().Set("Allow", ae.allow)
			}
			if ae.retryAfter > 0 {
				w.Header().Set("Retry-After", strconv.Itoa(ae.retryAfter))
			}
			code, v = ae.code, map[string]string{"error": ae.msg}
		}
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		if v == nil {
			w.WriteHeader(code)
			return
		}
		h.Set("Content-Type", "application/json")
		w.WriteHeader(code)
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(v) // escapes <, > and &: nothing reflected can be read as HTML
	})
}

func (m *Manager) index(*http.Request) (int, any, error) {
	return http.StatusOK, map[string]any{
		"name":    "weldr",
		"version": Version,
		"links": map[string]string{
			"servers":      "/servers",
			"stats":        "/stats",
			"stats_detail": "/stats/detail",
			"healthz":      "/healthz",
			"metrics":      "/metrics",
		},
	}, nil
}

// serverView is a server as the admin API shows it.
type serverView struct {
	ID          string      `json:"id"`
	URL         string      `json:"url"`
	IP          string      `json:"ip"`
	Port        int         `json:"port"`
	State       string      `json:"state"`
	Weight      int         `json:"weight"`
	Static      bool        `json:"static"`
	HealthCheck HealthCheck `json:"health_check"`
	Passes      int         `json:"consecutive_passes"`
	Fails       int         `json:"consecutive_fails"`
	LastCheck   *time.Time  `json:"last_check,omitempty"`
	LastError   string      `json:"last_error,omitempty"`
	Success     uint64      `json:"success"`
	Failed      uint64      `json:"failed"`
}

func state(down bool) string {
	if down {
		return "down"
	}
	return "up"
}

// view returns s as the API shows it. Called with m.mu held.
func (m *Manager) view(s *Server) serverView {
	host, port := splitID(s.ID)
	c := m.stats.of(s.ID)
	v := serverView{
		ID: s.ID, URL: s.URL, IP: host, Port: port, State: state(s.Down), Weight: s.Weight,
		Static: s.Static, HealthCheck: s.Health, Passes: s.Passes, Fails: s.Fails,
		LastError: s.LastError, Success: c.Success, Failed: c.Failed,
	}
	if !s.LastCheck.IsZero() {
		t := s.LastCheck
		v.LastCheck = &t
	}
	return v
}

func splitID(id string) (host string, port int) {
	host, p, _ := net.SplitHostPort(id)
	port, _ = strconv.Atoi(p)
	return host, port
}

func (m *Manager) listServers(*http.Request) (int, any, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]serverView, 0, m.pool.Len())
	for s := range m.pool.All() {
		out = append(out, m.view(s))
	}
	return http.StatusOK, out, nil
}

// errHandover answers a mutation while a new generation takes over: it
// would be lost, since the new one has already read the state file.
var errHandover = &apiError{
	code: http.StatusServiceUnavailable, msg: "weldr is handing over to a new generation; retry shortly", retryAfter: 1,
}

// serverRequest is the body of POST /servers.
type serverRequest struct {
	URL         string       `json:"url"`
	HealthCheck *HealthCheck `json:"health_check"`
	Weight      *int         `json:"weight"`
}

func (m *Manager) addServer(r *http.Request) (int, any, error) {
	s, err := m.decodeServer(r)
	if err != nil {
		return 0, nil, err
	}
	m.mu.Lock()
	if m.handover {
		m.mu.Unlock()
		return 0, nil, errHandover
	}
	if old := m.pool.Get(s.ID); old != nil && old.Static {
		// The configuration file is where a static server's settings are
		// kept; a change made here would be undone by the next reload.
		if !old.sameSettings(&s) {
			m.mu.Unlock()
			return 0, nil, errorf(http.StatusConflict, "server is in the configuration file; change it there and reload")
		}
		v, version := m.view(old), m.version
		m.mu.Unlock()
		m.waitInForce(r.Context(), version)
		return http.StatusOK, v, nil
	}
	if m.poolBytesAfter(&s) > m.maxPoolBytes {
		n := m.pool.Len()
		m.mu.Unlock()
		return 0, nil, errorf(http.StatusInsufficientStorage,
			"the pool is full: %d servers, and one more would not fit the %d bytes in which the workers get it", n, m.maxPoolBytes)
	}
	c := &change{add: &s}
	m.queued = append(m.queued, c)
	m.mu.Unlock()

	m.commit(c)
	if c.err != nil {
		return 0, nil, errNotSaved(c.err)
	}
	m.waitInForce(r.Context(), c.version)
	switch {
	case c.added:
		m.log.Info("server added", "server", s.ID, "url", s.URL, "weight", s.Weight)
		return http.StatusCreated, c.view, nil
	case c.changed:
		m.log.Info("server updated", "server", s.ID, "url", s.URL, "weight", s.Weight)
	}
	return http.StatusOK, c.view, nil
}

// poolBytesAfter bounds the size of the pool's snapshot once s and the
// changes before it, queued or being saved, are made. Those count as
// additions in full (a removal not at all, an update as if new). Called
// with m.mu held.
func (m *Manager) poolBytesAfter(s *Server) int {
	n := m.pool.Bytes() - encodedSize(m.pool.Get(s.ID)) + encodedSize(s)
	for _, c := range m.queued {
		n += encodedSize(c.add)
	}
	for _, c := range m.saving {
		n += encodedSize(c.add)
	}
	return n
}

// errNotSaved answers a change that was not made because the state file,
// where it must be saved first, could not be written.
func errNotSaved(err error) error {
	return errorf(http.StatusInternalServerError, "the change was not made: %v", err)
}

// decodeServer reads and checks a POST /servers body. Nothing is changed
// until it has passed every check.
func (m *Manager) decodeServer(r *http.Request) (Server, error) {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxAdminBody))
	dec.DisallowUnknownFields()
	var req serverRequest
	if err := dec.Decode(&req); err != nil {
		return Server{}, bodyError(err)
	}
	if err := dec.Decode(&struct{}{}); err != io.EOF {
		if err == nil {
			return Server{}, errorf(http.StatusBadRequest, "invalid JSON: more than one value in body")
		}
		return Server{}, bodyError(err)
	}
	if req.URL == "" {
		return Server{}, errorf(http.StatusBadRequest, "url: required")
	}
	id, canonical, err := ParseServerURL(req.URL)
	if err != nil {
		return Server{}, errorf(http.StatusBadRequest, "url: %v", err)
	}
	weight := 1
	if req.Weight != nil {
		weight = *req.Weight
		if weight < 1 || weight > 1000 {
			return Server{}, errorf(http.StatusBadRequest, "weight: must be between 1 and 1000")
		}
	}
	var overrides HealthCheck
	if req.HealthCheck != nil {
		overrides = *req.HealthCheck
	}
	health := overrides.Merge(m.cfg.Health)
	if err := health.Validate("health_check"); err != nil {
		return Server{}, errorf(http.StatusBadRequest, "%s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return Server{ID: id, URL: canonical, Weight: weight, Health: health, Overrides: overrides, Added: time.Now()}, nil
}

// bodyError turns a JSON decoding error into the answer for it.
func bodyError(err error) error {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return errorf(http.StatusRequestEntityTooLarge, "request body larger than %d bytes", maxAdminBody)
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, "invalid JSON: empty body")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, "invalid JSON: unexpected end of body")
	}
	return errorf(http.StatusBadRequest, "invalid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
}

func (m *Manager) removeServer(r *http.Request) (int, any, error) {
	ip := strings.ToLower(strings.Trim(r.PathValue("ip"), "[]"))
	if addr, err := netip.ParseAddr(ip); err == nil && addr.Zone() == "" {
		ip = addr.String() // as registered (canonicalHost): 2001:db8:0::1 is 2001:db8::1
	}
	port, err := strconv.Atoi(r.PathValue("port"))
	if err != nil || port < 1 || port > 65535 {
		return 0, nil, errorf(http.StatusBadRequest, "port: must be a number from 1 to 65535")
	}
	id := net.JoinHostPort(ip, strconv.Itoa(port))
	m.mu.Lock()
	if m.handover {
		m.mu.Unlock()
		return 0, nil, errHandover
	}
	s := m.pool.Get(id)
	if s == nil {
		m.mu.Unlock()
		return 0, nil, errorf(http.StatusNotFound, "no such server")
	}
	if s.Static {
		m.mu.Unlock()
		return 0, nil, errorf(http.StatusConflict, "server is in the configuration file; remove it there and reload")
	}
	c := &change{remove: id}
	m.queued = append(m.queued, c)
	m.mu.Unlock()

	m.commit(c)
	switch {
	case c.err != nil:
		return 0, nil, errNotSaved(c.err)
	case !c.changed:
		return 0, nil, errorf(http.StatusNotFound, "no such server") // removed meanwhile
	}
	m.waitInForce(r.Context(), c.version)
	m.log.Info("server removed", "server", id)
	return http.StatusNoContent, nil, nil
}

func (m *Manager) statsTotals(*http.Request) (int, any, error) {
	client, server := m.stats.totals()
	return http.StatusOK, map[string]Counts{"client": client, "server": server}, nil
}

// serverStats is one row of GET /stats/detail.
type serverStats struct {
	ID      string `json:"id"`
	IP      string `json:"ip"`
	Port    int    `json:"port"`
	State   string `json:"state"`
	Success uint64 `json:"success"`
	Failed  uint64 `json:"failed"`
}

func (m *Manager) statsDetail(*http.Request) (int, any, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]serverStats, 0, m.pool.Len())
	for s := range m.pool.All() {
		host, port := splitID(s.ID)
		c := m.stats.of(s.ID)
		out = append(out, serverStats{ID: s.ID, IP: host, Port: port, State: state(s.Down), Success: c.Success, Failed: c.Failed})
	}
	return http.StatusOK, out, nil
}

// healthz answers 200 when every worker is serving and the manager is not
// stopping, 503 with the reason otherwise.
func (m *Manager) healthz(*http.Request) (int, any, error) {
	m.mu.Lock()
	ready := m.ready
	m.mu.Unlock()
	body := map[string]any{"status": "ok", "workers": m.workersCount, "ready": ready}
	switch {
	case m.isStopping():
		body["status"], body["reason"] = "unavailable", "stopping"
	case ready < m.workersCount:
		body["status"], body["reason"] = "unavailable", fmt.Sprintf("%d of %d workers ready", ready, m.workersCount)
	default:
		return http.StatusOK, body, nil
	}
	return http.StatusServiceUnavailable, body, nil
}
