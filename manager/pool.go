package manager

import (
	"iter"
	"slices"
	"time"

	"github.com/weldr-proxy/weldr/ipc"
)

// Server is one backend in the authoritative pool.
type Server struct {
	ID     string // host:port
	URL    string // canonical scheme://host:port
	Weight int    // at least 1
	// Health is the server's check settings in effect: Overrides, with the
	// [health] defaults for the fields it leaves zero.
	Health HealthCheck
	// Overrides is the check settings the server was registered with. A
	// zero field takes the [health] default, that of the generation that
	// runs: a reload with new defaults changes it. Zero for a static
	// server.
	Overrides HealthCheck
	// Static servers come from the configuration file and cannot be removed
	// through the admin API.
	Static bool
	Down   bool
	Added  time.Time

	// Health check results.
	Passes    int // consecutive passes
	Fails     int // consecutive failures
	LastCheck time.Time
	LastError string

	probe   *probe // the server's check schedule, set by the manager
	removed bool   // taken out of the pool: Pool.order skips it
}

// sameSettings reports whether s and o have the same URL, weight and
// health check in effect.
func (s *Server) sameSettings(o *Server) bool {
	return s.URL == o.URL && s.Weight == o.Weight && s.Health == o.Health
}

// unchangedBy reports whether adding n, with s's ID, leaves s as it is.
func (s *Server) unchangedBy(n *Server) bool {
	return s.sameSettings(n) && s.Overrides == n.Overrides && (s.Static || !n.Static)
}

func (s *Server) ipc() ipc.Server {
	return ipc.Server{ID: s.ID, URL: s.URL, Weight: s.Weight, Down: s.Down}
}

// Pool is the authoritative set of servers. It is a plain data structure:
// the Manager's mutex guards it, and every mutation returns the ipc messages
// that bring the workers' copies in line, for the caller to broadcast under
// the same lock.
type Pool struct {
	servers map[string]*Server
	// order is the servers in the order they were added, and some removed
	// ones (at most as many as are in): removing from the middle of 10,000
	// entries at every DELETE would make a burst of them quadratic.
	order []*Server
	bytes int // the servers' share of a snapshot, at most (encodedSize)
}

// serverOverhead bounds what a snapshot adds to a server's ID and URL:
// msgpack's map and string headers, the field names, weight and state.
const serverOverhead = 32

// encodedSize bounds the bytes s takes in a snapshot; 0 for nil.
func encodedSize(s *Server) int {
	if s == nil {
		return 0
	}
	return len(s.ID) + len(s.URL) + serverOverhead
}

// Bytes bounds the bytes the servers take in a snapshot (Snapshot), which
// reaches a worker in one IPC frame.
func (p *Pool) Bytes() int { return p.bytes }

// NewPool returns an empty pool.
func NewPool() *Pool {
	return &Pool{servers: make(map[string]*Server)}
}

// Add adds s, or updates the settings of the server with the same ID. It
// reports whether s is new. Adding a server that exists with the same
// settings changes nothing and returns no message.
func (p *Pool) Add(s Server) (added bool, msgs []*ipc.Message) {
	if old := p.servers[s.ID]; old != nil {
		if old.unchangedBy(&s) {
			return false, nil
		}
		p.bytes += encodedSize(&s) - encodedSize(old)
		old.URL, old.Weight, old.Health, old.Overrides = s.URL, s.Weight, s.Health, s.Overrides
		old.Static = old.Static || s.Static
		return false, []*ipc.Message{{Kind: ipc.AddServer, Servers: ipc.Servers{old.ipc()}}}
	}
	ns := s
	ns.removed = false
	p.servers[s.ID] = &ns
	p.order = append(p.order, &ns)
	p.bytes += encodedSize(&ns)
	return true, []*ipc.Message{{Kind: ipc.AddServer, Servers: ipc.Servers{ns.ipc()}}}
}

// Remove takes the server with id out of the pool and reports whether it
// was there.
func (p *Pool) Remove(id string) (removed bool, msgs []*ipc.Message) {
	if p.servers[id] == nil {
		return false, nil
	}
	p.bytes -= encodedSize(p.servers[id])
	p.servers[id].removed = true
	delete(p.servers, id)
	if removed := len(p.order) - len(p.servers); removed > len(p.servers) {
		p.order = slices.DeleteFunc(p.order, func(s *Server) bool { return s.removed })
	}
	return true, []*ipc.Message{{Kind: ipc.RemoveServer, ID: id}}
}

// SetDown marks the server with id down or up. It returns a message only if
// the state changed.
func (p *Pool) SetDown(id string, down bool) []*ipc.Message {
	s := p.servers[id]
	if s == nil || s.Down == down {
		return nil
	}
	s.Down = down
	kind := ipc.MarkServerActive
	if down {
		kind = ipc.MarkServerDown
	}
	return []*ipc.Message{{Kind: kind, ID: id}}
}

// Get returns the server with id, or nil. The pointer is only valid under
// the lock that guards the pool.
func (p *Pool) Get(id string) *Server { return p.servers[id] }

// Len returns the number of servers.
func (p *Pool) Len() int { return len(p.servers) }

// All yields the servers in the order they were added. The pointers are
// only valid under the lock that guards the pool.
func (p *Pool) All() iter.Seq[*Server] {
	return func(yield func(*Server) bool) {
		for _, s := range p.order {
			if !s.removed && !yield(s) {
				return
			}
		}
	}
}

// List returns copies of all servers in the order they were added.
func (p *Pool) List() []Server {
	out := make([]Server, 0, len(p.servers))
	for s := range p.All() {
		out = append(out, *s)
	}
	return out
}

// Snapshot returns the message that gives a worker the whole pool.
func (p *Pool) Snapshot(settings *ipc.Settings) *ipc.Message {
	m := &ipc.Message{Kind: ipc.Snapshot, Settings: settings, Servers: make(ipc.Servers, 0, len(p.servers))}
	for s := range p.All() {
		m.Servers = append(m.Servers, s.ipc())
	}
	return m
}
