package worker

import (
	"io"
	"testing"
	"time"

	"github.com/weldr-proxy/weldr/ipc"
)

// A request that reads the manager's Drain from the pipe (it was behind
// the bell, which the Drain rings too) takes the readiness poolUpdates
// waits for: epoll reports nothing once the pipe is empty again. poolUpdates
// must end all the same, so that the worker drains.
func TestDrainReadByARequestEndsPoolUpdates(t *testing.T) {
	for i := range 50 {
		mgr, wrk := socketpair(t)
		w := &worker{
			log:          NewLogger(io.Discard, "error", "text"),
			byID:         make(map[string]*backend),
			down:         make(map[string]bool),
			appliedNote:  make(chan struct{}, 1),
			in:           newPipeIn(wrk),
			defaultDrain: time.Second,
		}
		w.publish()
		ended := make(chan drainRequest, 1)
		go func() { ended <- w.poolUpdates() }()
		m := ipc.NewConn(mgr)
		if err := m.Send(&ipc.Message{Kind: ipc.MarkServerDown, ID: "127.0.0.1:1", Version: 1}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the change to be applied", func() bool { return w.applied.Load() == 1 })
		// poolUpdates waits for the pipe again (or is about to).
		if err := m.Send(&ipc.Message{Kind: ipc.Drain, DrainTimeout: 3 * time.Second, Version: 2}); err != nil {
			t.Fatal(err)
		}
		w.catchUp(2) // a request behind the bell, at once
		select {
		case d := <-ended:
			if d.err != nil || d.timeout != 3*time.Second {
				t.Fatalf("round %d: poolUpdates ended with %+v, want the Drain's 3s timeout", i, d)
			}
		case <-time.After(waitLimit):
			t.Fatalf("round %d: poolUpdates did not end within %v of a Drain a request read", i, waitLimit)
		}
		mgr.Close()
		wrk.Close()
	}
}
