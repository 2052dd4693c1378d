package manager

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// The state file holds the servers registered through the admin API, so
// that neither a restart nor an upgrade loses one: every change is saved
// in it before it is made (see commit). Servers from the configuration
// file are not in it: the file always has them. A server's check settings
// are kept as the overrides it was registered with, so that the [health]
// defaults of the generation that reads them apply to the rest. Health is
// not kept: a server starts up and is checked at once, as when it
// registered. The pool handed to a new generation at an upgrade is in the
// same format.

// stateFormat is the version of the state file's layout. Fields that older
// readers may ignore are added without changing it.
const stateFormat = 1

type savedState struct {
	Format  int           `json:"format"`
	Saved   time.Time     `json:"saved"`
	Servers []savedServer `json:"servers"`
}

type savedServer struct {
	URL    string `json:"url"`
	Weight int    `json:"weight"`
	// HealthCheck is the check settings in effect when the file was
	// saved, defaults included. Only a weldr that predates HealthOverrides
	// reads it: kept so that a downgrade keeps the servers.
	HealthCheck HealthCheck `json:"health_check"`
	// HealthOverrides is the check settings the server was registered
	// with; its zero fields take the [health] defaults of the weldr that
	// reads it. Nil in a file saved before it existed (see
	// legacyOverrides).
	HealthOverrides *HealthCheck `json:"health_overrides,omitempty"`
}

// readState reads the servers saved at path, with the health check
// defaults for what they do not override. A missing file is an empty pool.
// An entry that no longer validates is skipped and reported in bad; a file
// that cannot be read as a whole is an error.
func readState(path string, defaults HealthCheck) (servers []Server, bad []error, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading state file: %w", err)
	}
	return parseState(b, "state file "+path, defaults)
}

// parseState decodes saved servers, with the health check defaults for what
// they do not override; source names them in errors.
func parseState(b []byte, source string, defaults HealthCheck) (servers []Server, bad []error, err error) {
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, nil, fmt.Errorf("%s is not valid JSON: %w", source, err)
	}
	if st.Format != stateFormat {
		return nil, nil, fmt.Errorf("%s has format %d, want %d", source, st.Format, stateFormat)
	}
	for i, s := range st.Servers {
		var overrides HealthCheck
		if s.HealthOverrides != nil {
			overrides = *s.HealthOverrides
		} else {
			overrides = legacyOverrides(s.HealthCheck, defaults)
		}
		health := overrides.Merge(defaults)
		id, canonical, err := ParseServerURL(s.URL)
		if err == nil && (s.Weight < 1 || s.Weight > 1000) {
			err = errors.New("weight must be between 1 and 1000")
		}
		if err == nil {
			err = health.Validate("health_check")
		}
		if err != nil {
			bad = append(bad, fmt.Errorf("servers[%d]: %w", i, err))
			continue
		}
		servers = append(servers, Server{ID: id, URL: canonical, Weight: s.Weight, Health: health, Overrides: overrides})
	}
	return servers, bad, nil
}

// legacyOverrides returns the overrides of an entry saved by a weldr that
// kept none apart, whose health check h has every field set: those equal
// to the [health] defaults are taken for defaults, which they almost always
// were (a client rarely spells out a default), so that the entry follows
// the defaults from now on; the others stay overrides.
func legacyOverrides(h, defaults HealthCheck) HealthCheck {
	if h.Path == defaults.Path {
		h.Path = ""
	}
	if h.Interval == defaults.Interval {
		h.Interval = 0
	}
	if h.Timeout == defaults.Timeout {
		h.Timeout = 0
	}
	if h.Fall == defaults.Fall {
		h.Fall = 0
	}
	if h.Rise == defaults.Rise {
		h.Rise = 0
	}
	return h
}

// writeState saves servers at path atomically: a temporary file beside it,
// synced, renamed over it, and the directory synced, so that a crash leaves
// either the old file or the new one.
func writeState(path string, servers []Server) error {
	b, err := encodeState(servers)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("saving state file %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving state file %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// checkStateDir tells whether a state file can be saved at path, if path
// is set, as writeState saves it: every admin change is saved before it is
// made, so with a state file that cannot be written the admin API changes
// nothing. Better to say so at start, but not to stop serving for it.
func checkStateDir(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("state.file: %s cannot be saved: %w", path, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// encodeState encodes servers in the state file's format.
func encodeState(servers []Server) ([]byte, error) {
	st := savedState{Format: stateFormat, Saved: time.Now().UTC(), Servers: make([]savedServer, 0, len(servers))}
	for _, s := range servers {
		overrides := s.Overrides
		st.Servers = append(st.Servers, savedServer{URL: s.URL, Weight: s.Weight, HealthCheck: s.Health, HealthOverrides: &overrides})
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding state: %w", err)
	}
	return b, nil
}

// registered returns copies of the servers added through the admin API.
// Called with m.mu held.
func (m *Manager) registered() []Server {
	var out []Server
	for s := range m.pool.All() {
		if !s.Static {
			out = append(out, *s)
		}
	}
	return out
}

// loadHanded adds the servers the previous generation handed over at an
// upgrade: the pool as it was in memory, which the state file may lag (or
// not exist). Like the state file, it never stops the configured servers.
// It reports false if the pool cannot be parsed: the state file is then
// the best there is.
func (m *Manager) loadHanded(b []byte) (ok bool) {
	servers, bad, err := parseState(b, "the pool handed over by the previous generation", m.cfg.Health)
	if err != nil {
		m.log.Error("could not take over the previous generation's pool; reading the state file instead", "error", err)
		return false
	}
	for _, e := range bad {
		m.log.Error("handed-over pool: skipping a server", "error", e)
	}
	m.addSaved(servers, "the previous generation")
	return true
}

// addSaved adds saved servers that the configuration file does not have,
// as many as the pool has room for (maxPoolBytes): past it, no worker
// could be given the pool and none would serve.
func (m *Manager) addSaved(servers []Server, source string) {
	added, left := 0, 0
	for _, s := range servers {
		if m.pool.Get(s.ID) != nil {
			continue // the configuration file has it; its settings win
		}
		if m.pool.Bytes()+encodedSize(&s) > m.maxPoolBytes {
			left++
			continue
		}
		s.Added = m.started
		m.pool.Add(s)
		added++
	}
	if left > 0 {
		m.log.Error("the pool is full: saved servers left out", "from", source, "left_out", left, "pool_bytes", m.pool.Bytes(), "max_bytes", m.maxPoolBytes)
	}
	m.log.Info("pool loaded", "from", source, "servers", added)
}

// loadState adds the servers saved in the state file to the pool. Problems
// with what it holds are logged, never fatal: the servers of the
// configuration file are served whatever the state file holds. A file that
// cannot be parsed is moved aside, so that the next save does not destroy
// what an operator may want to recover.
func (m *Manager) loadState() {
	path := m.cfg.State.File
	if path == "" {
		return
	}
	servers, bad, err := readState(path, m.cfg.Health)
	if err != nil {
		aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if rerr := os.Rename(path, aside); rerr == nil {
			m.log.Error("state file unusable, moved aside; serving the configured servers only", "error", err, "moved_to", aside)
		} else {
			m.log.Error("state file unusable; serving the configured servers only", "error", err)
		}
		return
	}
	for _, e := range bad {
		m.log.Error("state file: skipping a server", "file", path, "error", e)
	}
	m.addSaved(servers, path)
}
