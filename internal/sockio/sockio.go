// Package sockio reads, writes and splices TCP sockets with raw system calls,
// waiting for readiness through the Go runtime's poller as net.Conn does
// (deadlines and Close included).
//
// net.Conn's Read and Write tell the scheduler about every system call, so
// that it can hand the processor to another thread should the call block.
// A non-blocking socket call does not block, and weldr's processes run on
// one or few processors (the manager on one): the hand-offs only cost
// thread switches. The runtime's sysmon thread takes the processor from a
// call that lasts over 20 µs or so, and then keeps waking every few tens of
// microseconds to look again; on loopback a write, which also runs the
// receiver's TCP processing, often lasts that long. Raw calls keep the
// thread running, as nginx's worker does.
package sockio

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Conn reads and writes one TCP connection. Set it up with Init. Unlike
// net.Conn's, its Read and Write keep the call under way in the Conn: one
// Read and one Write may not run at once, nor two of either.
type Conn struct {
	Raw syscall.RawConn

	// Retry, if set, is asked about each error of a Read's wait in the
	// poller (a deadline, a close): true waits again.
	Retry func(error) bool

	local, remote net.Addr // for errors, as net.Conn names them

	p       []byte // the buffer of the call under way
	n       int
	errno   syscall.Errno
	readFn  func(fd uintptr) bool
	writeFn func(fd uintptr) bool
}

// Init sets s up for c and reports whether c is a TCP connection it can
// serve; if not, use c itself (TLS, for one).
func (s *Conn) Init(c net.Conn) bool {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	s.Raw = raw
	s.local, s.remote = c.LocalAddr(), c.RemoteAddr()
	s.readFn = s.doRead
	s.writeFn = s.doWrite
	return true
}

func (s *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.p, s.n, s.errno = p, 0, 0
	err := s.Raw.Read(s.readFn)
	for err != nil && s.Retry != nil && s.Retry(err) {
		err = s.Raw.Read(s.readFn)
	}
	err = s.Err("read", err, s.errno)
	s.p = nil
	switch {
	case err != nil:
		return 0, err
	case s.n == 0:
		return 0, io.EOF
	}
	return s.n, nil
}

// doRead makes one read; false asks the poller to wait for data.
func (s *Conn) doRead(fd uintptr) bool {
	n, again, e := RW(syscall.SYS_READ, fd, s.p)
	if again {
		return false
	}
	s.n, s.errno = n, e
	return true
}

func (s *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.p, s.n, s.errno = p, 0, 0
	err := s.Err("write", s.Raw.Write(s.writeFn), s.errno)
	s.p = nil
	return s.n, err
}

// doWrite writes all of s.p; false asks the poller to wait for room.
func (s *Conn) doWrite(fd uintptr) bool {
	for s.n < len(s.p) {
		n, again, e := RW(syscall.SYS_WRITE, fd, s.p[s.n:])
		if again {
			return false
		}
		if e != 0 {
			s.errno = e
			return true
		}
		s.n += n
	}
	return true
}

// Err returns the error of a call as net.Conn would: the poller's err
// (deadline, closed), else the system call's errno, as a *net.OpError
// naming op and the connection's addresses.
func (s *Conn) Err(op string, err error, errno syscall.Errno) error {
	if err == nil && errno != 0 {
		err = os.NewSyscallError(op, errno)
	}
	if err == nil {
		return nil
	}
	if oe, ok := err.(*net.OpError); ok { // the poller's, as "raw-read"
		return &net.OpError{Op: op, Net: oe.Net, Source: oe.Source, Addr: oe.Addr, Err: oe.Err}
	}
	return &net.OpError{Op: op, Net: "tcp", Source: s.local, Addr: s.remote, Err: err}
}

// RW makes the read or write system call trap on p, again on EINTR. again
// reports EAGAIN: nothing to read, or no room to write, yet.
func RW(trap, fd uintptr, p []byte) (n int, again bool, errno syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		switch e {
		case 0:
			return int(r), false, 0
		case syscall.EINTR:
		case syscall.EAGAIN:
			return 0, true, 0
		default:
			return 0, false, e
		}
	}
}
