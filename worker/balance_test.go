package worker

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/weldr-proxy/weldr/ipc"
)

var policies = []string{RoundRobin, WeightedRoundRobin, LeastConn, RandomTwo}

// backends returns one backend per weight, named s0, s1, ...
func backends(weights ...int) []*backend {
	bs := make([]*backend, len(weights))
	for i, w := range weights {
		id := "10.0.0." + strconv.Itoa(i) + ":80"
		bs[i] = newBackend(ipc.Server{ID: id, URL: "http://" + id, Weight: w})
		bs[i].id = "s" + strconv.Itoa(i)
	}
	return bs
}

// downSet marks the backends at the given indexes down.
func downSet(bs []*backend, idx ...int) map[string]bool {
	down := make(map[string]bool)
	for _, i := range idx {
		down[bs[i].id] = true
	}
	return down
}

func name(b *backend) string {
	if b == nil {
		return "<nil>"
	}
	return b.id
}

func TestPickOnlyUpServers(t *testing.T) {
	for _, policy := range policies {
		t.Run(policy, func(t *testing.T) {
			bs := backends(1, 2, 3, 4, 5)
			s := newSnapshot(bs, downSet(bs, 1, 3), true)
			bl := &balancer{policy: policy}
			seen := map[string]int{}
			for i := 0; i < 300; i++ {
				b := bl.pick(s)
				if b == nil || b == bs[1] || b == bs[3] {
					t.Fatalf("pick() = %s, want one of s0, s2, s4", name(b))
				}
				seen[b.id]++
			}
			for _, id := range []string{"s0", "s2", "s4"} {
				if seen[id] == 0 {
					t.Errorf("pick() never returned %s in 300 picks (%v)", id, seen)
				}
			}
		})
	}
}

func TestPickNone(t *testing.T) {
	bs := backends(1, 1)
	tests := []struct {
		name string
		snap *snapshot
	}{
		{"empty pool", newSnapshot(nil, nil, true)},
		{"all down", newSnapshot(bs, downSet(bs, 0, 1), true)},
	}
	for _, policy := range policies {
		for _, tc := range tests {
			t.Run(policy+"/"+tc.name, func(t *testing.T) {
				bl := &balancer{policy: policy}
				if b := bl.pick(tc.snap); b != nil {
					t.Errorf("pick() = %s, want <nil>", name(b))
				}
			})
		}
	}
}

func TestPickSingle(t *testing.T) {
	for _, policy := range policies {
		t.Run(policy, func(t *testing.T) {
			bs := backends(3, 1)
			s := newSnapshot(bs, downSet(bs, 1), true)
			bl := &balancer{policy: policy}
			for i := 0; i < 10; i++ {
				if b := bl.pick(s); b != bs[0] {
					t.Fatalf("pick() #%d = %s, want s0", i, name(b))
				}
			}
		})
	}
}

func TestZeroBalancerIsRoundRobin(t *testing.T) {
	bs := backends(1, 1, 1)
	s := newSnapshot(bs, nil, true)
	var bl balancer
	for i := 0; i < 9; i++ {
		if got, want := bl.pick(s), bs[i%3]; got != want {
			t.Fatalf("pick() #%d = %s, want %s", i, name(got), name(want))
		}
	}
}

func TestRoundRobinOrder(t *testing.T) {
	tests := []struct {
		name string
		down []int
		want []int // the cycle, as indexes into the backends
	}{
		{"all up", nil, []int{0, 1, 2, 3}},
		{"one down", []int{2}, []int{0, 1, 3}},
		{"two down", []int{0, 3}, []int{1, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bs := backends(1, 5, 1, 1) // weights do not matter to round robin
			s := newSnapshot(bs, downSet(bs, tc.down...), true)
			bl := &balancer{policy: RoundRobin}
			for i := 0; i < 5*len(tc.want); i++ {
				if got, want := bl.pick(s), bs[tc.want[i%len(tc.want)]]; got != want {
					t.Fatalf("pick() #%d = %s, want %s", i, name(got), name(want))
				}
			}
		})
	}
}

// TestRoundRobinKeepsItsPlaceWhenThePoolChanges checks that a pool change
// does not move round robin's place in the cycle: a server added at the
// end leaves it where it was, and a shrunk pool wraps it.
func TestRoundRobinKeepsItsPlaceWhenThePoolChanges(t *testing.T) {
	const n = 1000
	bs := backends(make([]int, n+1)...)
	s := newSnapshot(bs[:n], nil, false)
	bl := &balancer{policy: RoundRobin}
	for range 10*n + 5 { // ten whole cycles and five more
		bl.pick(s)
	}
	grown := newSnapshot(bs, nil, false) // one server added at the end
	for i := 5; i < 10; i++ {
		if got, want := bl.pick(grown), bs[i]; got != want {
			t.Fatalf("after a server was added, pick() = %s, want %s: the cycle should go on where it was", name(got), name(want))
		}
	}
	for range n - 10 { // to the last place of the grown cycle: bs[n-1], then the new bs[n]
		bl.pick(grown)
	}
	if got, want := bl.pick(grown), bs[n]; got != want {
		t.Fatalf("pick() = %s, want the added server %s in its turn", name(got), name(want))
	}
	shrunk := newSnapshot(bs[:3], nil, false)
	bl.next.Store(n - 1) // as if the pool shrank with the cursor near the end
	seen := map[*backend]int{}
	for range 3 * 4 {
		seen[bl.pick(shrunk)]++
	}
	for _, b := range bs[:3] {
		if seen[b] != 4 {
			t.Fatalf("in a shrunk pool of 3, 12 picks gave %s %d times, want 4 (all: %v)", name(b), seen[b], seen)
		}
	}
}

func TestWeightedRoundRobin(t *testing.T) {
	tests := []struct {
		weights []int
		down    []int
	}{
		{weights: []int{1, 2, 5}},
		{weights: []int{1, 1, 1}},
		{weights: []int{0, 0, 0}}, // zero counts as 1
		{weights: []int{3, 1}},
		{weights: []int{1, 2, 3, 4}},
		{weights: []int{7, 3, 5}},
		{weights: []int{1, 1, 1, 1, 10}},
		{weights: []int{4, 4}},
		{weights: []int{100, 1}},
		{weights: []int{6, 4, 2}},
		{weights: []int{1, 9, 2, 5}, down: []int{1}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%v down %v", tc.weights, tc.down), func(t *testing.T) {
			bs := backends(tc.weights...)
			down := downSet(bs, tc.down...)
			s := newSnapshot(bs, down, true)
			want := map[*backend]int{}
			total, heaviest := 0, 0
			for _, b := range bs {
				if !down[b.id] {
					want[b] = b.weight
					total += b.weight
					heaviest = max(heaviest, b.weight)
				}
			}
			bl := &balancer{policy: WeightedRoundRobin}
			picks := make([]*backend, 4*total)
			for i := range picks {
				picks[i] = bl.pick(s)
			}

			// Every window of one full cycle holds each server exactly its
			// weight's number of times, wherever the window starts.
			for start := 0; start+total <= len(picks); start++ {
				got := map[*backend]int{}
				for _, b := range picks[start : start+total] {
					got[b]++
				}
				for b, w := range want {
					if got[b] != w {
						t.Fatalf("picks[%d:%d] hold %s %d times, want %d (weights %v)", start, start+total, name(b), got[b], w, tc.weights)
					}
				}
				if len(got) != len(want) {
					t.Fatalf("picks[%d:%d] hold %d distinct servers, want %d", start, start+total, len(got), len(want))
				}
			}

			// No long runs: the heaviest server cannot be spread thinner than
			// over the gaps the others leave, and should not be much worse.
			others := total - heaviest
			ideal := heaviest
			if others > 0 {
				ideal = (heaviest + others - 1) / others
			}
			run, longest := 0, 0
			for i, b := range picks {
				if i > 0 && b == picks[i-1] {
					run++
				} else {
					run = 1
				}
				longest = max(longest, run)
			}
			if longest > ideal+1 {
				t.Errorf("longest run of one server = %d picks, want at most %d (weights %v)", longest, ideal+1, tc.weights)
			}
		})
	}
}

func TestWeightedRoundRobinEqualWeightsAlternate(t *testing.T) {
	bs := backends(1, 1, 1)
	s := newSnapshot(bs, nil, true)
	bl := &balancer{policy: WeightedRoundRobin}
	prev := bl.pick(s)
	for i := 1; i < 30; i++ {
		b := bl.pick(s)
		if b == prev {
			t.Fatalf("pick() #%d = %s, the same as the pick before it (weights 1,1,1)", i, name(b))
		}
		prev = b
	}
}

func TestLeastConn(t *testing.T) {
	tests := []struct {
		name     string
		inflight []int64
		down     []int
		want     map[string]bool // the servers that may be picked
	}{
		{"fewest wins", []int64{3, 1, 2}, nil, map[string]bool{"s1": true}},
		{"idle wins", []int64{4, 9, 0, 1}, nil, map[string]bool{"s2": true}},
		{"down ignored", []int64{5, 0, 2}, []int{1}, map[string]bool{"s2": true}},
		{"ties at zero", []int64{0, 5, 0, 5}, nil, map[string]bool{"s0": true, "s2": true}},
		{"ties above zero", []int64{2, 2, 2}, nil, map[string]bool{"s0": true, "s1": true, "s2": true}},
		{"ties among least", []int64{7, 3, 3, 8, 3}, nil, map[string]bool{"s1": true, "s2": true, "s4": true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bs := backends(make([]int, len(tc.inflight))...)
			for i, n := range tc.inflight {
				bs[i].inflight.Store(n)
			}
			s := newSnapshot(bs, downSet(bs, tc.down...), true)
			bl := &balancer{policy: LeastConn}
			const picks = 120
			got := map[string]int{}
			for i := 0; i < picks; i++ {
				b := bl.pick(s)
				if b == nil || !tc.want[b.id] {
					t.Fatalf("pick() = %s, want one of %v (in flight %v)", name(b), tc.want, tc.inflight)
				}
				got[b.id]++
			}
			// Ties spread: each tied server gets a fair part, not all picks.
			for id := range tc.want {
				if fair := picks / len(tc.want); got[id] < fair/2 {
					t.Errorf("pick() returned %s %d times in %d picks, want at least %d (%v)", id, got[id], picks, fair/2, got)
				}
			}
		})
	}
}

func TestLeastConnFollowsLoad(t *testing.T) {
	bs := backends(1, 1, 1)
	s := newSnapshot(bs, nil, true)
	bl := &balancer{policy: LeastConn}
	// Each pick takes a connection and keeps it: the picks must fill the
	// servers evenly, never two ahead of another.
	for i := 0; i < 30; i++ {
		b := bl.pick(s)
		b.inflight.Add(1)
		lo, hi := bs[0].inflight.Load(), bs[0].inflight.Load()
		for _, b := range bs {
			lo, hi = min(lo, b.inflight.Load()), max(hi, b.inflight.Load())
		}
		if hi-lo > 1 {
			t.Fatalf("after %d picks in flight = %d, %d, %d, want an even spread", i+1, bs[0].inflight.Load(), bs[1].inflight.Load(), bs[2].inflight.Load())
		}
	}
}

func TestRandomTwo(t *testing.T) {
	t.Run("prefers the less loaded of two", func(t *testing.T) {
		bs := backends(1, 1)
		bs[1].inflight.Store(10)
		s := newSnapshot(bs, nil, true)
		bl := &balancer{policy: RandomTwo}
		got := map[string]int{}
		for i := 0; i < 1000; i++ {
			got[bl.pick(s).id]++
		}
		// s1 is picked only when both draws land on it: 1 in 4.
		if got["s0"] <= got["s1"] {
			t.Errorf("pick() returned idle s0 %d times and busy s1 %d times in 1000 picks, want s0 more often", got["s0"], got["s1"])
		}
	})
	t.Run("a busy server is picked rarely", func(t *testing.T) {
		bs := backends(make([]int, 10)...)
		bs[7].inflight.Store(1)
		s := newSnapshot(bs, nil, true)
		bl := &balancer{policy: RandomTwo}
		busy := 0
		const picks = 10000
		for i := 0; i < picks; i++ {
			if bl.pick(s) == bs[7] {
				busy++
			}
		}
		// Both draws must land on s7: about 1 in 100, against 1 in 10 for
		// a uniform choice.
		if busy > picks/20 {
			t.Errorf("pick() returned the busy server %d times in %d picks, want about %d", busy, picks, picks/100)
		}
	})
	t.Run("spreads over equal servers", func(t *testing.T) {
		bs := backends(1, 1, 1, 1)
		s := newSnapshot(bs, downSet(bs, 2), true)
		bl := &balancer{policy: RandomTwo}
		got := map[string]int{}
		for i := 0; i < 3000; i++ {
			got[bl.pick(s).id]++
		}
		for _, id := range []string{"s0", "s1", "s3"} {
			if got[id] < 500 {
				t.Errorf("pick() returned %s %d times in 3000 picks over 3 equal servers, want about 1000 (%v)", id, got[id], got)
			}
		}
		if got["s2"] != 0 {
			t.Errorf("pick() returned down s2 %d times", got["s2"])
		}
	})
}

func TestSnapshotAfter(t *testing.T) {
	tests := []struct {
		name string
		n    int
		down []int
	}{
		{"one", 1, nil},
		{"two", 2, nil},
		{"five", 5, nil},
		{"five, two down", 5, []int{1, 4}},
		{"three, two down", 3, []int{0, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bs := backends(make([]int, tc.n)...)
			s := newSnapshot(bs, downSet(bs, tc.down...), true)
			for _, start := range s.up {
				if len(s.up) == 1 {
					if b := s.after(start); b != nil {
						t.Errorf("after(%s) = %s, want <nil> for the only server up", name(start), name(b))
					}
					continue
				}
				seen := map[*backend]bool{start: true}
				b := start
				for i := 1; i < len(s.up); i++ {
					b = s.after(b)
					if b == nil || seen[b] || upIndex(s, b) < 0 {
						t.Fatalf("after() step %d from %s = %s, want an up server not yet visited", i, name(start), name(b))
					}
					seen[b] = true
				}
				if b = s.after(b); b != start {
					t.Errorf("after() step %d from %s = %s, want back at %s", len(s.up), name(start), name(b), name(start))
				}
			}
		})
	}
	t.Run("empty", func(t *testing.T) {
		bs := backends(1)
		if b := newSnapshot(nil, nil, true).after(bs[0]); b != nil {
			t.Errorf("after() on an empty snapshot = %s, want <nil>", name(b))
		}
	})
	t.Run("server not up", func(t *testing.T) {
		bs := backends(1, 1, 1)
		s := newSnapshot(bs, downSet(bs, 0), true)
		if b := s.after(bs[0]); b != bs[1] {
			t.Errorf("after(down s0) = %s, want s1", name(b))
		}
	})
}

// upIndex returns b's position among the servers up in s, or -1.
func upIndex(s *snapshot, b *backend) int {
	for i, u := range s.up {
		if u == b {
			return i
		}
	}
	return -1
}

func TestSnapshotKeepsItsServers(t *testing.T) {
	// newSnapshot shares the caller's array, which the worker only ever
	// appends to (other changes replace the array). The snapshot's slices
	// must end where the servers end, so that neither side's append can
	// write where the other reads.
	bs := make([]*backend, 1, 4)
	copy(bs, backends(1, 1))
	s := newSnapshot(bs, nil, false)
	if cap(s.all) != len(s.all) {
		t.Errorf("snapshot.all has capacity %d for %d servers: an append through it would write into the caller's array", cap(s.all), len(s.all))
	}
}

func BenchmarkPick(b *testing.B) {
	for _, n := range []int{10, 10000} {
		for _, policy := range append(policies, LeastConn+"_busy") {
			b.Run(fmt.Sprintf("%s/%d", policy, n), func(b *testing.B) {
				weights := make([]int, n)
				for i := range weights {
					weights[i] = 1 + i%5
				}
				bs := backends(weights...)
				bl := &balancer{policy: policy}
				if policy == LeastConn+"_busy" {
					// No idle server: least_conn scans them all.
					bl.policy = LeastConn
					for _, bk := range bs {
						bk.inflight.Store(1)
					}
				}
				s := newSnapshot(bs, downSet(bs, 3), true)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if bl.pick(s) == nil {
						b.Fatal("pick() = <nil>")
					}
				}
			})
		}
	}
}
