package manager

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// listenConfig opens weldr's listeners for plain TCP. Go opens them for
// Multipath TCP by default where the kernel has it; a client without it then
// gets a plain TCP socket that inherits none of the listener's options
// (setNotsentLowat), and the workers' use of TCP_INQ and splice(2) is tested
// on TCP sockets only.
func listenConfig() *net.ListenConfig {
	lc := &net.ListenConfig{}
	lc.SetMultipathTCP(false)
	return lc
}

// applyNotsentLowat sets proxy.notsent_lowat on the proxy's listening
// socket, which the connections it accepts inherit. The socket is shared with
// every generation: a new one sets its value when it is ready, and one whose
// upgrade failed sets its own again.
func (m *Manager) applyNotsentLowat() {
	if err := setNotsentLowat(m.proxyFile, m.cfg.Proxy.NotsentLowat); err != nil {
		m.log.Warn("proxy.notsent_lowat not applied; client sockets keep the kernel's setting", "error", err)
	}
}

// setNotsentLowat sets TCP_NOTSENT_LOWAT to n on the listening socket c;
// 0 gives the connections it accepts the kernel's setting. With the unsent
// part of an answer kept small, a large body waits in the backend's socket
// rather than in the client's, and reaches the client faster
// (docs/BENCHMARKS.md, "A small send queue for large bodies").
func setNotsentLowat(c syscall.Conn, n int) error {
	return withFD(c, func(fd int) error {
		if p, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err == nil && p == unix.IPPROTO_MPTCP {
			// Opened by an older generation: what it accepts would not
			// inherit the option, and has the kernel's setting.
			if n != 0 {
				return errors.New("the listener, inherited, is a Multipath TCP socket; restart weldr to open it for TCP")
			}
			return nil
		}
		return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, n)
	})
}

// refuseConnections shuts the proxy's listening socket down when weldr
// stops for good, once its workers were told to drain: new connections are
// refused at once rather than queued unanswered until the drain timeout,
// and workers still in accept get EINVAL. (Closing the manager's copies
// would not do: the socket lives until its last descriptor, a worker's,
// is closed.) Not on an upgrade: the socket is the new generation's.
func (m *Manager) refuseConnections() {
	err := withFD(m.proxyFile, func(fd int) error {
		return os.NewSyscallError("shutdown", unix.Shutdown(fd, unix.SHUT_RD))
	})
	if err != nil {
		m.log.Warn("the proxy's socket stays open while the workers drain; new connections wait unanswered", "error", err)
	}
}

// withFD calls f with c's descriptor and returns what either failed with.
func withFD(c syscall.Conn, f func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// The proxy's listening socket is one open file, shared by the manager, its
// workers and every generation's, and so is its O_NONBLOCK flag. Whoever
// clears it makes the workers' accepts block in the kernel, where a
// worker's Close of the listener waits for them: a worker could not drain
// until a client came. os.File.Fd clears it on a file from
// TCPListener.File, and os.StartProcess calls Fd on the files it passes.

// listenerFile returns a duplicate of ln's descriptor, for the workers,
// that stays non-blocking when passed on (unlike TCPListener.File).
func listenerFile(ln *net.TCPListener) (*os.File, error) {
	var dup int
	if err := withFD(ln, func(fd int) (err error) {
		dup, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		return os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", err)
	}); err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(dup), "proxy listener"), nil
}

// acceptTimeout bounds an accept on the proxy listener should it be in
// blocking mode after all: tableflip passes it to a new generation with
// os.StartProcess, which clears the flag until the new processes set it
// again.
const acceptTimeout = 100 * time.Millisecond

// boundAccepts gives the listening socket c a receive timeout, which Linux
// applies to a blocking accept: it then fails with EAGAIN, and Go's
// Accept waits for the poller as it should. Non-blocking calls, and the
// non-blocking sockets accepted (which inherit the timeout), are not
// affected.
func boundAccepts(c syscall.Conn) error {
	tv := unix.NsecToTimeval(acceptTimeout.Nanoseconds())
	return withFD(c, func(fd int) error {
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
}
