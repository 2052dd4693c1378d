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

	"github.com/weldr-proxy/weldr/internal/sockio"
)

// sockIO is a client's or backend's connection read and written with raw
// system calls (internal/sockio: about one thread switch for every two
// requests under load without them, measured), with what the worker adds:
// reads made inside the socket's own RawConn.Read callback, TCP_INQ, and
// lazy read deadlines.
type sockIO struct {
	sockio.Conn

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
	s.conn = c // for the read deadline, which c's reads obey either way
	if !s.Init(c) {
		return c
	}
	s.Retry = s.rearm
	s.inq = -1
	return s
}

func (s *sockIO) Read(p []byte) (int, error) {
	if !s.inPoll || len(p) == 0 {
		return s.Conn.Read(p)
	}
	var n int
	var again bool
	var e syscall.Errno
	if s.inqOn {
		n, again, e = s.recvInq(p)
	} else {
		s.inq = -1
		n, again, e = sockio.RW(syscall.SYS_READ, s.fd, p)
	}
	switch {
	case again:
		return 0, errAgain
	case e != 0:
		return 0, s.Err("read", nil, e)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// setReadDeadline sets the read deadline now, as net.Conn's does.
func (s *sockIO) setReadDeadline(t time.Time) {
	s.until, s.armed = t, t
	s.conn.SetReadDeadline(t)
}

// extendReadDeadline sets a read deadline t that is usually later than the
// one in force. The poller keeps the earlier one, and a wait that times out
// there waits on until t (rearm): reads must go through Read, or call rearm
// after a wait of their own. An earlier t, or the first, is set now, and so
// is any on a connection s does not read (TLS), whose reads cannot rearm.
func (s *sockIO) extendReadDeadline(t time.Time) {
	if s.Raw == nil || s.armed.IsZero() || t.Before(s.armed) {
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

// peekRaw peeks at one byte without blocking and without telling the
// scheduler (see sockIO).
func peekRaw(fd uintptr, one *byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(one)), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return int(r), e
}
