package manager

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weldr-proxy/weldr/ipc"
)

// TestBroadcastKeepsOrderWhenThePipeFills broadcasts to a worker pipe that
// nobody reads until it is full, so that broadcasts first write frames
// themselves and then queue them for the pipeWriter; the reader must get
// every change once, in order.
func TestBroadcastKeepsOrderWhenThePipeFills(t *testing.T) {
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
	// A small buffer fills after a few dozen changes.
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4096); err != nil {
		t.Fatal(err)
	}
	ours, theirs := fileConn(t, fds[0]), fileConn(t, fds[1])
	wp := &workerProc{out: make(chan *ipc.Message, outQueue)}
	wp.raw, _ = ours.(syscall.Conn).SyscallConn()
	written := make(chan struct{})
	go func() { defer close(written); m.pipeWriter(wp, ipc.NewConn(ours)) }()
	m.procs[wp] = struct{}{}

	const n = 4000
	change := func(i int) *ipc.Message {
		return &ipc.Message{Kind: ipc.RemoveServer, ID: fmt.Sprintf("10.0.%d.%d:80", i/250, i%250)}
	}
	m.mu.Lock()
	m.broadcast([]*ipc.Message{change(0)})
	if q := wp.queued.Load(); q != 0 {
		t.Errorf("the first change was queued (%d queued), want it written at once", q)
	}
	for i := 1; i < n/2; i++ {
		m.broadcast([]*ipc.Message{change(i)})
	}
	if q := wp.queued.Load(); q == 0 {
		t.Errorf("nothing queued after %d changes to an unread pipe, want the pipeWriter to have the rest", n/2)
	}
	m.mu.Unlock()

	// The reader drains the pipe while the other half is broadcast: room
	// in the pipe must not let a change overtake the queued ones.
	read := make(chan error, 1)
	theirs.SetReadDeadline(time.Now().Add(time.Minute)) // a garbled stream fails, not hangs
	go func() {
		rx := ipc.NewConn(theirs)
		for i := range n {
			var got ipc.Message
			if err := rx.Receive(&got); err != nil {
				read <- fmt.Errorf("change %d: %w", i, err)
				return
			}
			if want := change(i); got.Version != uint64(i+1) || got.ID != want.ID {
				read <- fmt.Errorf("change %d arrived as version %d %s, want version %d %s", i, got.Version, got.ID, i+1, want.ID)
				return
			}
		}
		read <- nil
	}()
	for i := n / 2; i < n; i++ {
		m.mu.Lock()
		m.broadcast([]*ipc.Message{change(i)})
		m.mu.Unlock()
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	close(wp.out)
	m.mu.Unlock()
	<-written
	if q := wp.queued.Load(); q != 0 {
		t.Errorf("%d changes still counted as queued after all were read", q)
	}
}

// TestBroadcastLeavesLargeFramesToTheWriter checks that frames over
// writeNowMax go through the pipeWriter even to an idle pipe, and arrive.
func TestBroadcastLeavesLargeFramesToTheWriter(t *testing.T) {
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
	ours, theirs := fileConn(t, fds[0]), fileConn(t, fds[1])
	// The writer waits for a go-ahead, so what it has is still counted.
	wp := &workerProc{out: make(chan *ipc.Message, outQueue)}
	wp.raw, _ = ours.(syscall.Conn).SyscallConn()
	start, written := make(chan struct{}), make(chan struct{})
	go func() { defer close(written); <-start; m.pipeWriter(wp, ipc.NewConn(ours)) }()
	m.procs[wp] = struct{}{}

	big := &ipc.Message{Kind: ipc.RemoveServer, ID: strings.Repeat("a", writeNowMax) + ":80"}
	m.mu.Lock()
	m.broadcast([]*ipc.Message{big})
	queued := wp.queued.Load()
	close(wp.out)
	m.mu.Unlock()
	if queued != 1 {
		t.Errorf("a %d-byte change was queued %d times, want once: it is over writeNowMax", len(big.ID), queued)
	}
	close(start)
	theirs.SetReadDeadline(time.Now().Add(time.Minute))
	var got ipc.Message
	if err := ipc.NewConn(theirs).Receive(&got); err != nil {
		t.Fatal(err)
	}
	if got.ID != big.ID || got.Version != 1 {
		t.Errorf("got version %d with a %d-byte ID, want version 1 with the %d-byte one", got.Version, len(got.ID), len(big.ID))
	}
	<-written
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
