package worker

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
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

	// inPoll is set, with fd, while a callback of the socket's own
	// RawConn.Read runs (clientConn.serveReady): Read then makes one read
	// without the poller, whose waiting is the callback's caller's, and
	// reports EAGAIN as errAgain.
	inPoll bool
	fd     uintptr

	// With TCP_INQ on (askInq), such a read is a recvmsg that also says
	// how many bytes it left in the socket, 1 or more if the peer's FIN is
	// still to be read: inq, or -1 when unknown.
	inq      int
	inqAsked bool
	inqOn    bool

	// The read deadline (setReadDeadline, extendReadDeadline): until is
	// the one wanted, armed the one the poller has. Each deadline passed
	// to the poller costs a timer update, and most requests only push the
	// deadline later, so a later one is not passed: armed may come first.
	// A wait that times out there sets until and waits on (rearm).
	conn  net.Conn
	until time.Time
	armed time.Time
}

// errAgain is Read's error inside the socket's RawConn.Read callback when
// there is nothing to read yet.
var errAgain = errors.New("nothing to read yet")

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
	s.conn = c
	s.readFn = s.doRead
	s.writeFn = s.doWrite
	s.inq = -1
	return s
}

func (s *sockIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if s.inPoll {
		var n int
		var again bool
		var e syscall.Errno
		if s.inqOn {
			n, again, e = s.recvInq(p)
		} else {
			s.inq = -1
			n, again, e = rawRW(syscall.SYS_READ, s.fd, p)
		}
		switch {
		case again:
			return 0, errAgain
		case e != 0:
			s.errno = e
			return 0, s.result("read", nil)
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
	s.p, s.n, s.errno = p, 0, 0
	err := s.raw.Read(s.readFn)
	for err != nil && s.rearm(err) {
		err = s.raw.Read(s.readFn)
	}
	err = s.result("read", err)
	s.p = nil
	switch {
	case err != nil:
		return 0, err
	case s.n == 0:
		return 0, io.EOF
	}
	return s.n, nil
}

// setReadDeadline sets the read deadline now, as net.Conn's does.
func (s *sockIO) setReadDeadline(t time.Time) {
	s.until, s.armed = t, t
	s.conn.SetReadDeadline(t)
}

// extendReadDeadline sets a read deadline t that is usually later than the
// one in force. The poller keeps the earlier one, and a wait that times out
// there waits on until t (rearm): reads must go through Read, or call rearm
// after a wait of their own. An earlier t, or the first, is set now.
func (s *sockIO) extendReadDeadline(t time.Time) {
	if s.armed.IsZero() || t.Before(s.armed) {
		s.setReadDeadline(t)
		return
	}
	s.until = t
}

// rearm reports whether err is the timeout of a deadline kept in place of
// a later one (extendReadDeadline), and if so sets the later one: the
// caller waits again.
func (s *sockIO) rearm(err error) bool {
	if !s.until.After(s.armed) || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	s.setReadDeadline(s.until)
	return true
}

// askInq turns TCP_INQ on, once, for the reads of the RawConn.Read
// callback (inPoll). Without it (kernels before 4.18) those reads cannot
// tell whether they left anything behind.
func (s *sockIO) askInq() {
	if !s.inqAsked {
		s.inqAsked = true
		s.inqOn = unix.SetsockoptInt(int(s.fd), unix.SOL_TCP, unix.TCP_INQ, 1) == nil
	}
}

// recvInq reads into p with recvmsg and sets s.inq from its TCP_CM_INQ
// control message (-1 without one).
func (s *sockIO) recvInq(p []byte) (n int, again bool, errno syscall.Errno) {
	var ctl [32]byte // one cmsg with an int32
	iov := unix.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	msg := unix.Msghdr{Iov: &iov, Control: &ctl[0]}
	msg.SetIovlen(1)
	s.inq = -1
	for {
		msg.SetControllen(len(ctl))
		r, _, e := syscall.RawSyscall(unix.SYS_RECVMSG, s.fd, uintptr(unsafe.Pointer(&msg)), 0)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, true, 0
		case 0:
			h := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
			if data := unix.CmsgLen(0); int(msg.Controllen) >= data+4 && h.Level == unix.SOL_TCP && h.Type == unix.TCP_CM_INQ {
				s.inq = int(*(*int32)(unsafe.Pointer(&ctl[data])))
			}
			return int(r), false, 0
		default:
			return 0, false, e
		}
	}
}

// result returns the error of a call as net.Conn would: the poller's
// (deadline, closed) or the system call's, as a *net.OpError naming op.
func (s *sockIO) result(op string, err error) error {
	if err == nil && s.errno != 0 {
		err = os.NewSyscallError(op, s.errno)
	}
	if err == nil {
		return nil
	}
	if oe, ok := err.(*net.OpError); ok { // the poller's, as "raw-read"
		return &net.OpError{Op: op, Net: oe.Net, Source: oe.Source, Addr: oe.Addr, Err: oe.Err}
	}
	return &net.OpError{Op: op, Net: "tcp", Err: err}
}

// doRead makes one read; false asks the poller to wait for data.
func (s *sockIO) doRead(fd uintptr) bool {
	n, again, e := rawRW(syscall.SYS_READ, fd, s.p)
	if again {
		return false
	}
	s.n, s.errno = n, e
	return true
}

func (s *sockIO) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.p, s.n, s.errno = p, 0, 0
	err := s.result("write", s.raw.Write(s.writeFn))
	s.p = nil
	return s.n, err
}

// doWrite writes all of s.p; false asks the poller to wait for room.
func (s *sockIO) doWrite(fd uintptr) bool {
	for s.n < len(s.p) {
		n, again, e := rawRW(syscall.SYS_WRITE, fd, s.p[s.n:])
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

// rawRW makes the read or write system call trap on p, again on EINTR.
// again reports EAGAIN: nothing to read, or no room to write, yet.
func rawRW(trap, fd uintptr, p []byte) (n int, again bool, errno syscall.Errno) {
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

// peekRaw peeks at one byte without blocking and without telling the
// scheduler (see sockIO).
func peekRaw(fd uintptr, one *byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(one)), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return int(r), e
}
