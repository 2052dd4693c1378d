package manager

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/weldr-proxy/weldr/ipc"
)

func kinds(msgs []*ipc.Message) []ipc.Kind {
	var out []ipc.Kind
	for _, m := range msgs {
		out = append(out, m.Kind)
	}
	return out
}

func TestPoolMutationsReturnTheirMessages(t *testing.T) {
	p := NewPool()
	s := Server{ID: "127.0.0.1:9001", URL: "http://127.0.0.1:9001", Weight: 1}

	added, msgs := p.Add(s)
	if !added || !reflect.DeepEqual(kinds(msgs), []ipc.Kind{ipc.AddServer}) {
		t.Fatalf("Add(new) = %v, %v, want true, [AddServer]", added, kinds(msgs))
	}
	if added, msgs = p.Add(s); added || len(msgs) != 0 {
		t.Errorf("Add(same again) = %v, %v, want false and no message", added, kinds(msgs))
	}
	s.Weight = 5
	added, msgs = p.Add(s)
	if added || len(msgs) != 1 || msgs[0].Servers[0].Weight != 5 {
		t.Errorf("Add(new weight) = %v, %+v, want false and AddServer with weight 5", added, msgs)
	}
	// The same check in effect, with a setting now given as the server's own:
	// a change, since that setting no longer follows the defaults.
	s.Overrides.Path = "/"
	if added, msgs = p.Add(s); added || len(msgs) != 1 || p.Get(s.ID).Overrides != s.Overrides {
		t.Errorf("Add(new overrides) = %v, %v, want false, AddServer, and the overrides kept", added, kinds(msgs))
	}
	if msgs := p.SetDown(s.ID, true); !reflect.DeepEqual(kinds(msgs), []ipc.Kind{ipc.MarkServerDown}) {
		t.Errorf("SetDown(true) = %v, want [MarkServerDown]", kinds(msgs))
	}
	if msgs := p.SetDown(s.ID, true); len(msgs) != 0 {
		t.Errorf("SetDown(true) again = %v, want nothing", kinds(msgs))
	}
	if msgs := p.SetDown(s.ID, false); !reflect.DeepEqual(kinds(msgs), []ipc.Kind{ipc.MarkServerActive}) {
		t.Errorf("SetDown(false) = %v, want [MarkServerActive]", kinds(msgs))
	}
	if msgs := p.SetDown("nope:1", true); len(msgs) != 0 {
		t.Errorf("SetDown(unknown) = %v, want nothing", kinds(msgs))
	}
	if removed, msgs := p.Remove(s.ID); !removed || msgs[0].Kind != ipc.RemoveServer || msgs[0].ID != s.ID {
		t.Errorf("Remove() = %v, %+v, want true, RemoveServer %s", removed, msgs, s.ID)
	}
	if removed, msgs := p.Remove(s.ID); removed || len(msgs) != 0 {
		t.Errorf("Remove(again) = %v, %v, want false and nothing", removed, kinds(msgs))
	}
	if p.Len() != 0 {
		t.Errorf("Len() = %d, want 0", p.Len())
	}
}

func TestPoolKeepsOrderAndSnapshots(t *testing.T) {
	p := NewPool()
	for _, id := range []string{"h:3", "h:1", "h:2"} {
		p.Add(Server{ID: id, URL: "http://" + id, Weight: 1})
	}
	p.SetDown("h:1", true)
	p.Remove("h:3")
	p.Add(Server{ID: "h:3", URL: "http://h:3", Weight: 2})
	set := &ipc.Settings{Balance: "round_robin"}
	got := p.Snapshot(set)
	want := &ipc.Message{Kind: ipc.Snapshot, Settings: set, Servers: ipc.Servers{
		{ID: "h:1", URL: "http://h:1", Weight: 1, Down: true},
		{ID: "h:2", URL: "http://h:2", Weight: 1},
		{ID: "h:3", URL: "http://h:3", Weight: 2},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Snapshot() = %+v, want %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Snapshot().Validate() = %v", err)
	}
	var ids []string
	for _, s := range p.List() {
		ids = append(ids, s.ID)
	}
	if !reflect.DeepEqual(ids, []string{"h:1", "h:2", "h:3"}) {
		t.Errorf("List() ids = %v, want [h:1 h:2 h:3]", ids)
	}
}

func TestStaticServersStayStatic(t *testing.T) {
	p := NewPool()
	p.Add(Server{ID: "h:1", URL: "http://h:1", Weight: 1, Static: true})
	p.Add(Server{ID: "h:1", URL: "http://h:1", Weight: 1})
	if !p.Get("h:1").Static {
		t.Error("re-adding a static server through the API made it removable")
	}
}

// Removals leave the order of the others as it was, however many there
// are, and a server added again goes to the end.
func TestPoolOrderThroughManyRemovals(t *testing.T) {
	p := NewPool()
	var want []string
	for i := range 1000 {
		id := fmt.Sprintf("10.0.0.1:%d", 1000+i)
		p.Add(Server{ID: id, URL: "http://" + id, Weight: 1})
		want = append(want, id)
	}
	for i := 0; i < 1000; i += 3 { // a third of them: compaction happens midway
		p.Remove(want[i])
	}
	p.Add(Server{ID: want[0], URL: "http://" + want[0], Weight: 1})
	var live []string
	for i, id := range want {
		if i%3 != 0 {
			live = append(live, id)
		}
	}
	live = append(live, want[0])
	var got []string
	for _, s := range p.List() {
		got = append(got, s.ID)
	}
	if !slices.Equal(got, live) {
		t.Fatalf("List after removals: %d servers, want %d in order", len(got), len(live))
	}
	got = got[:0]
	for _, s := range p.Snapshot(&ipc.Settings{}).Servers {
		got = append(got, s.ID)
	}
	if !slices.Equal(got, live) {
		t.Fatalf("Snapshot after removals: %d servers, want %d in order", len(got), len(live))
	}
	if p.Len() != len(live) || len(p.order) > 2*len(live) {
		t.Fatalf("Len %d, order %d entries; want %d and at most twice that", p.Len(), len(p.order), len(live))
	}
}

func TestAckLogRoutedAt(t *testing.T) {
	var l ackLog
	if _, ok := l.routedAt(1); ok {
		t.Errorf("routedAt(1) on an empty log reported a time")
	}
	l.add(3, 0) // a worker that gave no time
	if _, ok := l.routedAt(3); ok {
		t.Errorf("routedAt(3) reported a time for an acknowledgement without one")
	}
	l.add(5, 500)
	l.add(9, 900)
	for _, tc := range []struct {
		v    uint64
		want int64
		ok   bool
	}{{1, 500, true}, {5, 500, true}, {6, 900, true}, {9, 900, true}, {10, 0, false}} {
		if at, ok := l.routedAt(tc.v); at != tc.want || ok != tc.ok {
			t.Errorf("routedAt(%d) = %d, %v; want %d, %v", tc.v, at, ok, tc.want, tc.ok)
		}
	}
	// Once the log wraps, the oldest acknowledgement left answers for the
	// forgotten ones: later than the truth, never earlier.
	for i := range uint64(len(l.acks)) {
		l.add(10+i, int64(1000+i))
	}
	if at, ok := l.routedAt(6); at != 1000 || !ok {
		t.Errorf("routedAt(6) after wrapping = %d, %v; want 1000 (the oldest left), true", at, ok)
	}
}

// Pool.Bytes bounds what the servers take in a snapshot, whatever their
// addresses, weights and states, through additions, updates and removals.
func TestPoolBytesBoundTheSnapshot(t *testing.T) {
	p := NewPool()
	size := func() int {
		empty, err := ipc.AppendFrame(nil, NewPool().Snapshot(&ipc.Settings{}))
		if err != nil {
			t.Fatal(err)
		}
		full, err := ipc.AppendFrame(nil, p.Snapshot(&ipc.Settings{}))
		if err != nil {
			t.Fatal(err)
		}
		return len(full) - len(empty)
	}
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)
	for i := range 300 {
		host := fmt.Sprintf("10.0.%d.%d", i/250, i%250)
		switch i % 3 {
		case 1:
			host = fmt.Sprintf("[2001:db8::%x]", i)
		case 2:
			host = fmt.Sprintf("%03d", i) + long[3:]
		}
		s := Server{ID: host + ":65535", URL: "https://" + host + ":65535", Weight: 1000}
		p.Add(s)
		if i%5 == 0 {
			p.SetDown(s.ID, true)
		}
	}
	if got, bound := size(), p.Bytes(); got > bound || got < bound/2 {
		t.Errorf("300 servers take %d bytes in a snapshot, Bytes() = %d: want a bound, and not a loose one", got, bound)
	}
	for s := range p.All() {
		if s.Weight == 1000 {
			u := *s
			u.URL, u.Weight = "http://"+s.ID, 1
			p.Add(u)
		}
	}
	for i, s := range p.List() {
		if i%2 == 0 {
			p.Remove(s.ID)
		}
	}
	if got, bound := size(), p.Bytes(); got > bound || got < bound/2 {
		t.Errorf("after updates and removals: %d bytes in a snapshot, Bytes() = %d: want a bound, and not a loose one", got, bound)
	}
	for _, s := range p.List() {
		p.Remove(s.ID)
	}
	if p.Bytes() != 0 {
		t.Errorf("Bytes() of an emptied pool = %d, want 0", p.Bytes())
	}
}
