package worker

import (
	"math"
	"math/rand/v2"
	"sort"
	"sync/atomic"

	"github.com/weldr-proxy/weldr/ipc"
)

// Selection policies, as named in proxy.balance.
const (
	RoundRobin         = "round_robin"
	WeightedRoundRobin = "weighted_round_robin"
	LeastConn          = "least_conn"
	RandomTwo          = "random_two"
)

// backend is one server as a worker routes to it. A backend outlives the
// snapshots that list it, so its counters and in-flight count carry over pool
// changes.
type backend struct {
	id     string // host:port
	scheme string // http or https
	weight int    // at least 1

	inflight atomic.Int64 // requests sent and not yet finished; least_conn reads it
	// gone is set when the server leaves the pool. It stays in the server
	// list, skipped by the balancer, until the worker compacts the list:
	// removing it at once would copy the whole list at every removal.
	gone  atomic.Bool
	stats serverCounters
	pool  connPool // idle connections to this server

	lastReport int // once retired: 1 after the report in which it was idle; the stats reporter's alone
}

func newBackend(s ipc.Server) *backend {
	b := &backend{id: s.ID, scheme: "http", weight: max(s.Weight, 1)}
	if len(s.URL) > 5 && s.URL[:5] == "https" {
		b.scheme = "https"
	}
	return b
}

// snapshot is an immutable view of the pool. The ipc loop builds a new one on
// every change; requests only load it, so the request path takes no lock.
type snapshot struct {
	all []*backend // every server in the pool, up or down
	up  []*backend // servers to route to

	// Weighted round robin: cum[i] is the total weight of up[:i+1]; a
	// request counter is scattered over [0, total) by a stride coprime with
	// total, so each server gets its weight's share of every cycle without
	// long runs of the same server.
	cum    []int
	total  int
	stride int
}

// newSnapshot builds a snapshot of all, which it keeps: the caller must
// never write to all's elements again (it may append beyond them). The
// weighted round robin table is built only when weighted.
func newSnapshot(all []*backend, down map[string]bool, weighted bool) *snapshot {
	s := &snapshot{all: all[:len(all):len(all)]}
	if len(down) == 0 {
		// All up, as is usual: the list is the same, and shared (a pool
		// change in a pool of 10,000 servers would otherwise cost 10,000
		// map lookups and an 80 KB copy in every worker).
		s.up = s.all
	} else {
		s.up = make([]*backend, 0, len(all)-len(down))
		for _, b := range all {
			if !down[b.id] && !b.gone.Load() {
				s.up = append(s.up, b)
			}
		}
	}
	if weighted && len(s.up) > 0 {
		s.cum = make([]int, len(s.up))
		for i, b := range s.up {
			s.total += b.weight
			s.cum[i] = s.total
		}
		s.stride = coprimeStride(s.total)
	}
	return s
}

// coprimeStride returns a step near total/φ that is coprime with total, so
// that i*stride mod total visits every slot once per cycle.
func coprimeStride(total int) int {
	st := max(int(float64(total)*0.6180339887), 1)
	for gcd(st, total) != 1 {
		st++
	}
	return st
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// balancer picks a server from a snapshot by one policy. Its zero value is
// round robin.
type balancer struct {
	policy string
	next   atomic.Uint64 // the cursor of turn
}

// turn returns the next place in a cycle of n and moves the cursor on. The
// cursor wraps at n rather than counting freely: taken modulo a changing n,
// a free count would move by count/n places at every pool change (a hundred
// after a million requests to 10,000 servers), back onto servers whose
// connections are still busy with the last requests, which then need new
// ones. Wrapped, a server added at the end moves it not at all. (Weighted
// round robin's order is a permutation that depends on the total weight,
// so a change still reorders it; only its place in the cycle is kept.)
func (bl *balancer) turn(n int) int {
	for {
		p := bl.next.Load()
		i := p % uint64(n) // p is n or more if the pool shrank
		q := i + 1
		if q == uint64(n) {
			q = 0
		}
		if bl.next.CompareAndSwap(p, q) {
			return int(i)
		}
	}
}

// pick returns a server that is up, or nil if none is.
func (bl *balancer) pick(s *snapshot) *backend {
	for range len(s.up) {
		if b := bl.pickOne(s); b == nil || !b.gone.Load() {
			return b
		}
	}
	return nil
}

// pickOne returns a server of s.up by the policy, gone or not.
func (bl *balancer) pickOne(s *snapshot) *backend {
	n := len(s.up)
	switch {
	case n == 0:
		return nil
	case n == 1:
		return s.up[0]
	}
	switch bl.policy {
	case WeightedRoundRobin:
		slot := int(uint64(bl.turn(s.total)) * uint64(s.stride) % uint64(s.total))
		return s.up[sort.SearchInts(s.cum, slot+1)]
	case LeastConn:
		// Start where round robin would, so ties spread evenly.
		// Gone servers are skipped here, not by pick: with no request
		// in flight they would always look the least loaded.
		start := bl.turn(n)
		var best *backend
		least := int64(math.MaxInt64)
		for i := 0; i < n && least > 0; i++ {
			b := s.up[(start+i)%n]
			if c := b.inflight.Load(); c < least && !b.gone.Load() {
				best, least = b, c
			}
		}
		return best
	case RandomTwo:
		a, b := s.up[rand.IntN(n)], s.up[rand.IntN(n)]
		if b.inflight.Load() < a.inflight.Load() {
			return b
		}
		return a
	default:
		return s.up[bl.turn(n)]
	}
}

// after returns the server that follows b among those up, for a retry after
// b refused a connection, or nil when b is the only one. Retries walk the
// list in order, so each server is tried at most once per request.
func (s *snapshot) after(b *backend) *backend {
	n := len(s.up)
	start := -1 // where to look from: after b, or from the top if b is not listed
	for i, u := range s.up {
		if u == b {
			start = i
			break
		}
	}
	for k := 1; k <= n; k++ {
		u := s.up[(start+k+n)%n]
		if u == b {
			return nil // the only one left
		}
		if !u.gone.Load() {
			return u
		}
	}
	return nil
}
