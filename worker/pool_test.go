package worker

import (
	"io"
	"strconv"
	"testing"

	"github.com/weldr-proxy/weldr/ipc"
)

func testWorker(policy string, n int) *worker {
	w := &worker{
		log:         NewLogger(io.Discard, "error", "text"),
		byID:        make(map[string]*backend),
		down:        make(map[string]bool),
		appliedNote: make(chan struct{}, 1),
	}
	w.balancer.policy = policy
	m := &ipc.Message{Kind: ipc.Snapshot, Version: 1}
	for i := range n {
		id := "10.0.0.1:" + strconv.Itoa(1000+i)
		m.Servers = append(m.Servers, ipc.Server{ID: id, URL: "http://" + id, Weight: 1 + i%3})
	}
	w.apply(m)
	return w
}

// A removed server gets no request from the moment the removal is applied,
// whatever the policy, before and after the list is compacted, and retries
// skip it too.
func TestRemovedServersAreNeverPicked(t *testing.T) {
	for _, policy := range []string{RoundRobin, WeightedRoundRobin, LeastConn, RandomTwo} {
		t.Run(policy, func(t *testing.T) {
			w := testWorker(policy, 64)
			old := w.snap.Load()
			removed := map[string]bool{}
			for i := 0; i < 64; i += 2 { // half: compacted along the way
				id := "10.0.0.1:" + strconv.Itoa(1000+i)
				w.change(&ipc.Message{Kind: ipc.RemoveServer, ID: id, Version: uint64(2 + i)})
				removed[id] = true
				// The snapshot published before the removals is still
				// being routed by somewhere: it must skip the server too.
				for _, s := range []*snapshot{old, w.snap.Load()} {
					for range 200 {
						b := w.balancer.pick(s)
						if b == nil || removed[b.id] {
							t.Fatalf("picked %v after its removal", b)
						}
						if next := s.after(b); next != nil && removed[next.id] {
							t.Fatalf("retry went to %s after its removal", next.id)
						}
					}
				}
				if i%8 == 0 {
					w.publish()
				}
			}
			w.publish()
			if len(w.servers) > 32+32/8+1 {
				t.Fatalf("%d servers listed for 32 in the pool: the gone ones were not compacted", len(w.servers))
			}
			seen := map[string]bool{}
			for range 10000 {
				seen[w.balancer.pick(w.snap.Load()).id] = true
			}
			if len(seen) != 32 {
				t.Fatalf("%d servers picked, want the 32 left", len(seen))
			}
		})
	}
}

// A server removed and added again is routable again.
func TestServerAddedBackAfterRemoval(t *testing.T) {
	w := testWorker(RoundRobin, 4)
	id := "10.0.0.1:1000"
	w.apply(&ipc.Message{Kind: ipc.RemoveServer, ID: id, Version: 2})
	w.apply(&ipc.Message{Kind: ipc.AddServer, Servers: ipc.Servers{{ID: id, URL: "http://" + id, Weight: 1}}, Version: 3})
	n := 0
	for range 40 {
		if w.balancer.pick(w.snap.Load()).id == id {
			n++
		}
	}
	if n != 10 {
		t.Fatalf("the server added back got %d of 40 picks, want 10", n)
	}
}

// least_conn skips a gone server even though, with nothing in flight, it
// looks the least loaded of all.
func TestLeastConnSkipsGoneWhenAllAreBusy(t *testing.T) {
	w := testWorker(LeastConn, 16)
	gone := "10.0.0.1:1000"
	w.apply(&ipc.Message{Kind: ipc.RemoveServer, ID: gone, Version: 2})
	s := w.snap.Load()
	if len(s.up) != 16 {
		t.Fatalf("%d servers listed, want the gone one still listed (16)", len(s.up))
	}
	for _, b := range s.up {
		if !b.gone.Load() {
			b.inflight.Store(1)
		}
	}
	for range 100 {
		if b := w.balancer.pick(s); b == nil || b.id == gone {
			t.Fatalf("picked %v with 15 servers up and busy", b)
		}
	}
}

// A weight change replaces the server in place: it is listed once, and
// once removed it gets nothing.
func TestWeightChangeReplacesTheServer(t *testing.T) {
	w := testWorker(RoundRobin, 4)
	id := "10.0.0.1:1001"
	w.apply(&ipc.Message{Kind: ipc.AddServer, Servers: ipc.Servers{{ID: id, URL: "http://" + id, Weight: 7}}, Version: 2})
	n := 0
	for _, b := range w.servers {
		if b.id == id {
			n++
			if b.weight != 7 {
				t.Errorf("weight %d, want 7", b.weight)
			}
		}
	}
	if n != 1 || len(w.servers) != 4 {
		t.Fatalf("%d entries for the server, %d in all; want 1 and 4", n, len(w.servers))
	}
	w.apply(&ipc.Message{Kind: ipc.RemoveServer, ID: id, Version: 3})
	for range 40 {
		if b := w.balancer.pick(w.snap.Load()); b.id == id {
			t.Fatal("a removed server was picked")
		}
	}
}
