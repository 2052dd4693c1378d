package manager

import (
	"errors"
	"net"
	"syscall"

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
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if p, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL); err == nil && p == unix.IPPROTO_MPTCP {
			// Opened by an older generation: what it accepts would not
			// inherit the option, and has the kernel's setting.
			if n != 0 {
				serr = errors.New("the listener, inherited, is a Multipath TCP socket; restart weldr to open it for TCP")
			}
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, n)
	}); err != nil {
		return err
	}
	return serr
}
