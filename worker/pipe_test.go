package worker

import (
	"io"
	"net"
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
		w := newTestWorker(wrk)
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

// newTestWorker is a worker with no goroutine of its own, reading pipe.
func newTestWorker(pipe net.Conn) *worker {
	w := &worker{
		log:          NewLogger(io.Discard, "error", "text"),
		byID:         make(map[string]*backend),
		down:         make(map[string]bool),
		appliedNote:  make(chan struct{}, 1),
		in:           newPipeIn(pipe),
		defaultDrain: time.Second,
	}
	w.publish()
	return w
}

// Requests behind the bell may read the pipe at any point of a change's
// frame, with nobody else reading: what each read finds is kept, and the
// change is applied once its last byte is read.
func TestReadPipeAtEveryByte(t *testing.T) {
	mgr, wrk := socketpair(t)
	w := newTestWorker(wrk)
	v := uint64(0)
	for _, msg := range []ipc.Message{{Kind: ipc.AddServer, Servers: ipc.Servers{{ID: "127.0.0.1:1", URL: "http://127.0.0.1:1"}}}, {Kind: ipc.RemoveServer, ID: "127.0.0.1:1"}} {
		eachCut(t, msg, &v, func(frame []byte, cut int) {
			for _, part := range [][]byte{frame[:cut], frame[cut:]} {
				if _, err := mgr.Write(part); err != nil {
					t.Fatal(err)
				}
				if end := w.readPipe(); end != nil {
					t.Fatalf("version %d cut after %d bytes: the pipe ended: %+v", v, cut, end)
				}
			}
			if got := w.applied.Load(); got != v {
				t.Fatalf("version %d cut after %d bytes: applied %d, want %d", v, cut, got, v)
			}
			live := 0
			for _, b := range w.snap.Load().up {
				if !b.gone.Load() {
					live++
				}
			}
			if want := map[ipc.Kind]int{ipc.AddServer: 1, ipc.RemoveServer: 0}[msg.Kind]; live != want {
				t.Fatalf("version %d (%s): %d servers routed to, want %d", v, msg.Kind, live, want)
			}
		})
	}
}

// A pipe that is not a socket (no poller to ask) is read by poolUpdates
// alone, with blocking reads; changes and the Drain still arrive.
func TestPipeNotASocket(t *testing.T) {
	mgr, wrk := net.Pipe()
	defer mgr.Close()
	defer wrk.Close()
	w := newTestWorker(wrk)
	ended := make(chan drainRequest, 1)
	go func() { ended <- w.poolUpdates() }()
	m := ipc.NewConn(mgr)
	for _, msg := range []ipc.Message{
		{Kind: ipc.AddServer, Version: 1, Servers: ipc.Servers{{ID: "127.0.0.1:1", URL: "http://127.0.0.1:1"}}},
		{Kind: ipc.MarkServerDown, Version: 2, ID: "127.0.0.1:1"},
		{Kind: ipc.Drain, Version: 3, DrainTimeout: 3 * time.Second},
	} {
		if err := m.Send(&msg); err != nil {
			t.Fatal(err)
		}
	}
	w.catchUp(3) // reads nothing: its reads would wait
	select {
	case d := <-ended:
		if d.err != nil || d.timeout != 3*time.Second {
			t.Fatalf("poolUpdates ended with %+v, want the Drain's 3s timeout", d)
		}
	case <-time.After(waitLimit):
		t.Fatalf("poolUpdates did not end within %v of the Drain", waitLimit)
	}
	if got := w.applied.Load(); got != 3 {
		t.Errorf("applied %d after the Drain, want 3", got)
	}
	if n := len(w.snap.Load().up); n != 0 {
		t.Errorf("%d servers routed to, want 0 (the one added is down)", n)
	}
}
