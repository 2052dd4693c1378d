package manager

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weldr-proxy/weldr/ipc"
)

// pipeWorker is a fake worker on a real socketpair: a manager with it as its
// only worker, and the worker's end of the pipe.
type pipeWorker struct {
	m      *Manager
	wp     *workerProc
	theirs net.Conn
	start  chan struct{} // closing it starts the pipeWriter
	done   chan struct{} // closed when the pipeWriter returns
}

// newPipeWorker sets one up. sndbuf, if not zero, is the manager end's send
// buffer: a small one fills after a few dozen changes.
func newPipeWorker(t *testing.T, sndbuf int) *pipeWorker {
	t.Helper()
	cfg := Default()
	cfg.State.File = filepath.Join(t.TempDir(), "state.json")
	m, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if sndbuf > 0 {
		if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf); err != nil {
			t.Fatal(err)
		}
	}
	ours, theirs := fileConn(t, fds[0]), fileConn(t, fds[1])
	theirs.SetReadDeadline(time.Now().Add(time.Minute)) // a garbled stream fails, not hangs
	// A process for the manager to kill should the test make it replace
	// the worker; its logs name the PID.
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pw := &pipeWorker{m: m, wp: &workerProc{cmd: cmd, out: make(chan *ipc.Message, outQueue)}, theirs: theirs,
		start: make(chan struct{}), done: make(chan struct{})}
	pw.wp.raw, _ = ours.(syscall.Conn).SyscallConn()
	go func() { defer close(pw.done); <-pw.start; m.pipeWriter(pw.wp, ipc.NewConn(ours)) }()
	m.procs[pw.wp] = struct{}{}
	t.Cleanup(func() {
		select {
		case <-pw.start:
		default:
			close(pw.start)
		}
	})
	return pw
}

// broadcast broadcasts msg under the manager's lock, failing the test if
// that takes a minute: a broadcast must never wait on the pipe.
func (pw *pipeWorker) broadcast(t *testing.T, msg *ipc.Message) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.m.mu.Lock()
		defer pw.m.mu.Unlock()
		pw.m.broadcast([]*ipc.Message{msg})
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("a broadcast is stuck")
	}
}

// stop closes the pipeWriter's queue and waits for it to finish.
func (pw *pipeWorker) stop() {
	pw.m.mu.Lock()
	close(pw.wp.out)
	pw.m.mu.Unlock()
	<-pw.done
}

// readRemovals reads n changes from the worker's end of the pipe and
// reports whether they were removal(0) to removal(n-1), as versions 1 to n.
func (pw *pipeWorker) readRemovals(n int) <-chan error {
	read := make(chan error, 1)
	go func() {
		rx := ipc.NewConn(pw.theirs)
		for i := range n {
			var got ipc.Message
			if err := rx.Receive(&got); err != nil {
				read <- fmt.Errorf("change %d: %w", i, err)
				return
			}
			if want := removal(i); got.Version != uint64(i+1) || got.ID != want.ID {
				read <- fmt.Errorf("change %d arrived as version %d %s, want version %d %s", i, got.Version, got.ID, i+1, want.ID)
				return
			}
		}
		read <- nil
	}()
	return read
}

// removal is the i-th of a run of distinct pool changes.
func removal(i int) *ipc.Message {
	return &ipc.Message{Kind: ipc.RemoveServer, ID: fmt.Sprintf("10.0.%d.%d:80", i/250, i%250)}
}

// TestBroadcastKeepsOrderWhenThePipeFills broadcasts to a worker pipe that
// nobody reads until it is full, so that broadcasts first write frames
// themselves and then queue them for the pipeWriter; the reader must get
// every change once, in order.
func TestBroadcastKeepsOrderWhenThePipeFills(t *testing.T) {
	pw := newPipeWorker(t, 4096)
	close(pw.start)
	const n = 4000
	pw.broadcast(t, removal(0))
	if q := pw.wp.queued.Load(); q != 0 {
		t.Errorf("the first change was queued (%d queued), want it written at once", q)
	}
	for i := 1; i < n/2; i++ {
		pw.broadcast(t, removal(i))
	}
	if q := pw.wp.queued.Load(); q == 0 {
		t.Errorf("nothing queued after %d changes to an unread pipe, want the pipeWriter to have the rest", n/2)
	}

	// The reader drains the pipe while the other half is broadcast: room
	// in the pipe must not let a change overtake the queued ones.
	read := pw.readRemovals(n)
	for i := n / 2; i < n; i++ {
		pw.broadcast(t, removal(i))
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	pw.stop()
	if q := pw.wp.queued.Load(); q != 0 {
		t.Errorf("%d changes still counted as queued after all were read", q)
	}
}

// TestBroadcastQueuesWhileTheWriterIsBusy fills the pipe until a change
// goes to the pipeWriter, which then waits in its write for a reader. The
// change it is writing must still count as queued, so that the next
// broadcast queues behind it rather than writing (or waiting) itself.
func TestBroadcastQueuesWhileTheWriterIsBusy(t *testing.T) {
	pw := newPipeWorker(t, 4096)
	close(pw.start)
	i := 0
	for ; pw.wp.queued.Load() == 0; i++ {
		if i == 100000 {
			t.Fatal("the pipe never filled")
		}
		pw.broadcast(t, removal(i))
	}
	// The pipeWriter takes the change (at once: it was waiting on the
	// channel) and waits in Send for room. Given time to get there, the
	// change must still count.
	for range 200 {
		if q := pw.wp.queued.Load(); q != 1 {
			t.Fatalf("%d changes counted as queued while the pipeWriter writes one, want 1", q)
		}
		time.Sleep(time.Millisecond)
	}
	pw.broadcast(t, removal(i))
	i++
	if q := pw.wp.queued.Load(); q != 2 {
		t.Errorf("%d changes counted as queued after one more broadcast, want 2", q)
	}
	if err := <-pw.readRemovals(i); err != nil {
		t.Fatal(err)
	}
	pw.stop()
}

// TestBroadcastLeavesLargeFramesToTheWriter checks that frames over
// writeNowMax go through the pipeWriter even to an idle pipe, and arrive.
func TestBroadcastLeavesLargeFramesToTheWriter(t *testing.T) {
	pw := newPipeWorker(t, 0) // the pipeWriter waits, so what it has is still counted
	big := &ipc.Message{Kind: ipc.RemoveServer, ID: strings.Repeat("a", writeNowMax) + ":80"}
	pw.broadcast(t, big)
	if q := pw.wp.queued.Load(); q != 1 {
		t.Errorf("a %d-byte change was queued %d times, want once: it is over writeNowMax", len(big.ID), q)
	}
	close(pw.start)
	var got ipc.Message
	if err := ipc.NewConn(pw.theirs).Receive(&got); err != nil {
		t.Fatal(err)
	}
	if got.ID != big.ID || got.Version != 1 {
		t.Errorf("got version %d with a %d-byte ID, want version 1 with the %d-byte one", got.Version, len(got.ID), len(big.ID))
	}
	pw.stop()
}

func fileConn(t *testing.T, fd int) net.Conn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "pipe")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A change the pipeWriter writes (the broadcast queued it) is in force once
// the pipeWriter rings the bell, which then wakes the admin requests
// waiting for it.
func TestAQueuedChangeRungWakesItsWaiters(t *testing.T) {
	pw := newPipeWorker(t, 0)
	m, wp := pw.m, pw.wp
	bell, f, err := ipc.NewBell()
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { bell.Close() })
	wp.raw = nil // the broadcast queues every change for the pipeWriter
	wp.ready, wp.rings, wp.bell, wp.applied = true, true, bell, m.version
	go io.Copy(io.Discard, pw.theirs)

	pw.broadcast(t, &ipc.Message{Kind: ipc.RemoveServer, ID: "10.0.0.1:80"})
	m.mu.Lock()
	v, waiting := m.version, m.changed
	m.mu.Unlock()
	if bell.Version() >= v {
		t.Fatalf("bell rung with %d before the pipeWriter wrote version %d", bell.Version(), v)
	}
	close(pw.start)
	select {
	case <-waiting:
	case <-time.After(time.Minute):
		t.Fatal("the pipeWriter wrote the change but did not wake the requests waiting for it")
	}
	if bell.Version() < v {
		t.Errorf("waiters woken with the bell at %d, before version %d was rung", bell.Version(), v)
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	m.waitInForce(ended, v)
	if h := m.metrics.applyDuration; h.n != 1 {
		t.Errorf("the change is not in force once rung: the API's wait observed %d times, want 1", h.n)
	}
}

// A worker inherits neither tableflip's variables nor a bell or board the
// manager was itself given; everything else passes.
func TestWorkerEnvDropsTheManagersOwn(t *testing.T) {
	env := []string{"PATH=/bin", "TABLEFLIP_HAS_PARENT_7f=1", "WELDR_BELL_FD=5", "WELDR_BOARD_FD=6",
		"WELDR_BOARD_SEAT=0", "WELDR_WORKER_LOG_FORMAT=json", "WELDR_BOARD_FDX=keep", "WELDR_ADMIN_TOKEN=x"}
	got := workerEnv(env)
	if want := []string{"PATH=/bin", "WELDR_BOARD_FDX=keep", "WELDR_ADMIN_TOKEN=x"}; !slices.Equal(got, want) {
		t.Errorf("workerEnv(%q) = %q, want %q", env, got, want)
	}
}
