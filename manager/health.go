package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// maxConcurrentChecks bounds the health checks in flight at once, so a
// pool of 10,000 servers is checked by a fixed set of goroutines rather than
// one per server.
const maxConcurrentChecks = 256

// hastenAfter is how old a server's last check must be before a passive
// failure (a worker could not connect) triggers an early one.
const hastenAfter = time.Second

// probe is a server's place in the check schedule. Guarded by Manager.mu.
type probe struct {
	// timer fires the next check. A waiting timer costs no goroutine.
	timer *time.Timer
	// seq changes with the server's check settings; a result of an older
	// seq is dropped and the server checked again at once.
	seq      uint64
	checking bool // a check is in flight
	// conn is the kept-alive connection of plain-HTTP checks. A running
	// check takes it out and puts it back, so it has one user at a time.
	conn net.Conn
}

// startHealthChecks starts the probers and schedules a check of every
// server at once. The returned function stops them and waits.
func (m *Manager) startHealthChecks() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range maxConcurrentChecks {
		wg.Add(1)
		go func() { defer wg.Done(); m.healthProber(ctx) }()
	}
	m.mu.Lock()
	m.checksCtx = ctx
	for s := range m.pool.All() {
		m.scheduleCheck(s, 0)
	}
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		cancel()
		for s := range m.pool.All() {
			m.stopChecks(s)
		}
		m.mu.Unlock()
		wg.Wait()
	}
}

// scheduleCheck checks s after d. Called with m.mu held; before the checks
// start it does nothing (startHealthChecks schedules every server).
func (m *Manager) scheduleCheck(s *Server, d time.Duration) {
	ctx := m.checksCtx
	if ctx == nil || ctx.Err() != nil {
		return
	}
	if s.probe == nil {
		s.probe = &probe{}
	}
	if s.probe.timer != nil {
		s.probe.timer.Reset(d)
		return
	}
	id := s.ID
	s.probe.timer = time.AfterFunc(d, func() {
		select {
		case m.checkJobs <- id:
		case <-ctx.Done():
		}
	})
}

// recheckNow drops any check in flight for s (its settings changed) and
// checks it at once. Called with m.mu held.
func (m *Manager) recheckNow(s *Server) {
	if s.probe != nil {
		s.probe.seq++
	}
	m.scheduleCheck(s, 0)
}

// stopChecks takes s out of the schedule and closes its connection (a
// check in flight closes its own when it finds s gone). Called with m.mu
// held.
func (m *Manager) stopChecks(s *Server) {
	if s.probe == nil {
		return
	}
	if s.probe.timer != nil {
		s.probe.timer.Stop()
	}
	if s.probe.conn != nil {
		s.probe.conn.Close()
		s.probe.conn = nil
	}
}

// hastenCheck checks a server that is up soon, because a worker could not
// connect to it. Called with m.mu held.
func (m *Manager) hastenCheck(id string) {
	s := m.pool.Get(id)
	if s == nil || s.Down || s.probe == nil || s.probe.checking || time.Since(s.LastCheck) < hastenAfter {
		return
	}
	m.scheduleCheck(s, 0)
}

// healthProber runs the checks that come due, one at a time.
func (m *Manager) healthProber(ctx context.Context) {
	for {
		var id string
		select {
		case <-ctx.Done():
			return
		case id = <-m.checkJobs:
		}
		m.mu.Lock()
		s := m.pool.Get(id)
		if s == nil || s.probe == nil || s.probe.checking {
			m.mu.Unlock()
			continue
		}
		p := s.probe
		p.checking = true
		seq, target, hc, conn := p.seq, s.URL, s.Health, p.conn
		p.conn = nil
		m.mu.Unlock()

		start := time.Now()
		conn, err := m.check(ctx, target, hc, conn)
		m.metrics.checkDuration.observe(time.Since(start).Seconds())
		if ctx.Err() != nil {
			if conn != nil {
				conn.Close()
			}
			return
		}
		m.recordCheck(id, p, seq, target, conn, err)
	}
}

// check runs one health check: GET target+path within the timeout; a 2xx
// answer passes. Plain HTTP goes through checkHTTP on the server's kept
// connection, which it returns for the next check.
func (m *Manager) check(ctx context.Context, target string, hc HealthCheck, conn net.Conn) (net.Conn, error) {
	timeout := time.Duration(hc.Timeout)
	if host, ok := strings.CutPrefix(target, "http://"); ok {
		return checkHTTP(ctx, conn, host, hc.Path, timeout)
	}
	return nil, m.checkTLS(ctx, target, hc)
}

// checkTLS checks an https server with the manager's http.Client.
func (m *Manager) checkTLS(ctx context.Context, target string, hc HealthCheck) error {
	timeout := time.Duration(hc.Timeout)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target+hc.Path, nil)
	if err != nil {
		return fmt.Errorf("building request: %w", err)
	}
	req.Header.Set("User-Agent", "weldr-health-check/"+Version)
	res, err := m.checkClient.Do(req)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("timed out after %s", timeout)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return err
	}
	// Read a little of the body so the connection can be reused.
	io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	res.Body.Close()
	if res.StatusCode < 200 || res.StatusCode > 299 {
		return fmt.Errorf("status %d", res.StatusCode)
	}
	return nil
}

// recordCheck applies the result of a check made by p: counts, state
// changes (broadcast to every worker and logged once), and the next check.
func (m *Manager) recordCheck(id string, p *probe, seq uint64, target string, conn net.Conn, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.pool.Get(id)
	if s != nil && s.probe != p {
		// Removed and registered again during the check: the result is
		// the earlier registration's, and the new one has checks of its
		// own.
		if conn != nil {
			conn.Close()
		}
		m.log.Debug("health check result dropped: the server was registered again meanwhile", "server", id)
		return
	}
	if s == nil || s.probe == nil || s.URL != target {
		if conn != nil {
			conn.Close() // removed, or its URL changed, meanwhile
		}
		if s == nil || s.probe == nil {
			return
		}
	} else {
		s.probe.conn = conn
	}
	s.probe.checking = false
	if s.probe.seq != seq {
		m.scheduleCheck(s, 0) // settings changed during the check
		return
	}
	s.LastCheck = time.Now()
	if err == nil {
		s.Passes++
		s.Fails = 0
		s.LastError = ""
	} else {
		s.Fails++
		s.Passes = 0
		s.LastError = err.Error()
	}
	switch {
	case !s.Down && s.Fails >= s.Health.Fall:
		m.broadcastVerdict(m.pool.SetDown(id, true))
		m.log.Warn("server down", "server", id, "failed_checks", s.Fails, "error", s.LastError)
	case s.Down && s.Passes >= s.Health.Rise:
		m.broadcastVerdict(m.pool.SetDown(id, false))
		m.log.Info("server up", "server", id, "passed_checks", s.Passes)
	}
	m.scheduleCheck(s, jitter(time.Duration(s.Health.Interval)))
}

// jitter spreads d by ±10% so that servers added together are not checked
// together forever.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}

// newCheckClient returns the HTTP client of https health checks: one
// kept-alive connection per server, no redirects followed (only 2xx
// passes), no proxy.
func newCheckClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        0, // no global limit: 10,000 servers keep 10,000 connections
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
			TLSNextProto:        nil,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
