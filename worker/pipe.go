package worker

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weldr-proxy/weldr/ipc"
)

// pipeIn is the worker's end of its pipe from the manager. Its reads never
// wait: Receive says errEmpty while no whole frame is there,
// and ipc.Conn keeps a frame it has begun for the next call. poolUpdates
// waits for the pipe through the runtime's poller; a request that finds
// the bell ahead of the pool reads the pipe itself (worker.catchUp).
// Whoever holds mu reads; the worker sends on c too (ipc.Conn allows one
// sender beside one receiver).
type pipeIn struct {
	mu   sync.Mutex
	conn net.Conn
	c    *ipc.Conn
	m    ipc.Message   // the message being read, kept to spare an allocation
	end  *drainRequest // how the pipe ended, once it has
	// unpublished: changes were applied to the pool but not published
	unpublished bool
	raw         syscall.RawConn // nil if conn is not a socket: c then blocks, and only poolUpdates reads
}

func newPipeIn(conn net.Conn) *pipeIn {
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			return &pipeIn{conn: conn, c: ipc.NewConn(struct {
				io.Reader
				io.Writer
			}{nonBlocking{raw}, conn}), raw: raw}
		}
	}
	return &pipeIn{conn: conn, c: ipc.NewConn(conn)}
}

// ended records how the pipe ended and wakes wait's caller: if a request
// read the end, epoll may never report the pipe readable again, for it
// reports only what is still there when it is asked.
func (p *pipeIn) ended(end *drainRequest) {
	p.end = end
	p.conn.SetReadDeadline(longAgo)
}

// longAgo is a deadline that has passed.
var longAgo = time.Unix(1, 0)

// wait calls f, and again whenever the pipe becomes readable, until f
// returns true or the pipe is closed, or ended woke it.
func (p *pipeIn) wait(f func() bool) error {
	if p.raw == nil {
		for !f() {
		}
		return nil
	}
	return p.raw.Read(func(uintptr) bool { return f() })
}

// receive waits for the next message, into m.
func (p *pipeIn) receive(m *ipc.Message) error {
	var err error
	if werr := p.wait(func() bool {
		p.mu.Lock()
		err = p.c.Receive(m)
		p.mu.Unlock()
		return !errors.Is(err, errEmpty)
	}); werr != nil {
		return werr
	}
	return err
}

// errEmpty is the error of a read of the pipe with nothing in it.
var errEmpty = errors.New("nothing in the pipe yet")

// nonBlocking reads a socket without waiting for it, and without its read
// lock, which poolUpdates holds while it waits in RawConn.Read.
type nonBlocking struct{ raw syscall.RawConn }

func (r nonBlocking) Read(b []byte) (n int, err error) {
	if cerr := r.raw.Control(func(fd uintptr) {
		for {
			if n, err = unix.Read(int(fd), b); err != unix.EINTR {
				return
			}
		}
	}); cerr != nil {
		return 0, cerr // closed
	}
	switch {
	case err == unix.EAGAIN:
		return 0, errEmpty
	case err != nil:
		return 0, os.NewSyscallError("read", err)
	case n == 0 && len(b) > 0:
		return 0, io.EOF
	}
	return n, nil
}
