package manager

import (
	"sync"

	"github.com/weldr-proxy/weldr/ipc"
)

// Counts are success and failure counters.
type Counts struct {
	Success uint64 `json:"success"`
	Failed  uint64 `json:"failed"`
}

// serverCounts are one server's counters summed over all workers.
type serverCounts struct {
	Counts
	responses                       [5]uint64 // by status class, 1xx to 5xx
	connectFailed, timedOut, broken uint64
}

// statsTable sums the deltas workers report. Totals survive the removal of
// a server; per-server counts go with it. Its mutex nests inside the
// Manager's, never the other way round.
type statsTable struct {
	mu        sync.Mutex // guards everything below
	client    Counts
	server    Counts
	generated ipc.Generated
	behind    uint64 // requests routed by a pool older than their worker's bell
	servers   map[string]*serverCounts
}

func newStatsTable() *statsTable {
	return &statsTable{servers: make(map[string]*serverCounts)}
}

// add folds one worker report in. Counts for servers no longer in the pool
// (known reports whether an ID is) go to the totals only.
func (t *statsTable) add(st *ipc.Stats, known func(id string) bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.client.Success += st.ClientSuccess
	t.client.Failed += st.ClientFailed
	for _, code := range ipc.GeneratedStatuses {
		*t.generated.Of(code) += *st.Generated.Of(code)
	}
	t.behind += st.RoutedBehind
	for _, s := range st.Servers {
		t.server.Success += s.Success
		t.server.Failed += s.Failed
		c := t.servers[s.ID]
		if c == nil {
			if !known(s.ID) {
				continue
			}
			c = &serverCounts{}
			t.servers[s.ID] = c
		}
		c.Success += s.Success
		c.Failed += s.Failed
		for i, n := range s.Responses {
			c.responses[i] += n
		}
		c.connectFailed += s.ConnectFailed
		c.timedOut += s.TimedOut
		c.broken += s.Broken
	}
}

// totals returns the client and server totals.
func (t *statsTable) totals() (client, server Counts) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.client, t.server
}

// generatedTotals returns the counts of weldr's own answers.
func (t *statsTable) generatedTotals() ipc.Generated {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.generated
}

// routedBehind returns the count of requests routed behind a worker's bell.
func (t *statsTable) routedBehind() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.behind
}

// of returns one server's counters.
func (t *statsTable) of(id string) serverCounts {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.servers[id]; c != nil {
		return *c
	}
	return serverCounts{}
}

// forget drops a removed server's counters.
func (t *statsTable) forget(id string) {
	t.mu.Lock()
	delete(t.servers, id)
	t.mu.Unlock()
}
