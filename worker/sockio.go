package worker

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// sockIO reads and writes a TCP socket with raw system calls, waiting for
// readiness through the Go runtime's poller as net.Conn does (deadlines
// and Close included).
//
// net.Conn's Read and Write tell the scheduler about every system call, so
// that it can hand the processor to another thread should the call block.
// A non-blocking socket call does not block, and a worker runs on one
// processor: the hand-offs only cost thread switches (about one for every
// two requests under load, measured). Raw calls keep the worker's one
// thread running, as nginx's worker does.
type sockIO struct {
	raw     syscall.RawConn
	p       []byte // the buffer of the call under way
	n       int
	errno   syscall.Errno
	readFn  func(fd uintptr) bool
	writeFn func(fd uintptr) bool
}

// newReadWriter returns the fastest reader and writer for c: s set up for
// c when c is a TCP connection, c itself otherwise (TLS).
func newReadWriter(c net.Conn, s *sockIO) io.ReadWriter {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	s.raw = raw
	s.readFn = s.doRead
	s.writeFn = s.doWrite
	return s
}

func (s *sockIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.p, s.n, s.errno = p, 0, 0
	err := s.raw.Read(s.readFn)
	s.p = nil
	switch {
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: err}
	case s.errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", s.errno)}
	case s.n == 0:
		return 0, io.EOF
	}
	return s.n, nil
}

// doRead makes one read; false asks the poller to wait for data.
func (s *sockIO) doRead(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(s.p))), uintptr(len(s.p)))
		switch e {
		case 0:
			s.n = int(r)
			return true
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.errno = e
			return true
		}
	}
}

func (s *sockIO) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.p, s.n, s.errno = p, 0, 0
	err := s.raw.Write(s.writeFn)
	n := s.n
	s.p = nil
	switch {
	case err != nil:
		return n, &net.OpError{Op: "write", Net: "tcp", Err: err}
	case s.errno != 0:
		return n, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", s.errno)}
	}
	return n, nil
}

// doWrite writes all of s.p; false asks the poller to wait for room.
func (s *sockIO) doWrite(fd uintptr) bool {
	for s.n < len(s.p) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&s.p[s.n])), uintptr(len(s.p)-s.n))
		switch e {
		case 0:
			s.n += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.errno = e
			return true
		}
	}
	return true
}

// peekRaw peeks at one byte without blocking and without telling the
// scheduler (see sockIO).
func peekRaw(fd uintptr, one *byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(one)), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return int(r), e
}
