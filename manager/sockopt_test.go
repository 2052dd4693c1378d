package manager

import (
	"net"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The connections a listener accepts inherit its TCP_NOTSENT_LOWAT, which
// is what lets the manager set it once for every worker; 0 restores the
// kernel's setting.
func TestNotsentLowatReachesAcceptedConnections(t *testing.T) {
	for _, n := range []int{16 << 10, 1 << 20, 0} {
		ln, err := listenConfig().Listen(t.Context(), "tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if err := setNotsentLowat(ln.(*net.TCPListener), 4096); err != nil {
			t.Fatalf("setNotsentLowat(4096): %v", err)
		}
		if err := setNotsentLowat(ln.(*net.TCPListener), n); err != nil {
			t.Fatalf("setNotsentLowat(%d): %v", n, err)
		}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		if got := notsentLowat(t, a); got != n {
			t.Errorf("accepted connection has TCP_NOTSENT_LOWAT %d, want %d", got, n)
		}
	}
}

func notsentLowat(t *testing.T, c net.Conn) int {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	rc.Control(func(fd uintptr) {
		v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
	})
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// A listener handed over by a generation that opened it for Multipath TCP
// would not pass the option on: setNotsentLowat says so instead of
// pretending.
func TestNotsentLowatOnAMultipathListenerIsAnError(t *testing.T) {
	lc := &net.ListenConfig{}
	lc.SetMultipathTCP(true)
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var proto int
	rc.Control(func(fd uintptr) { proto, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) })
	if proto != unix.IPPROTO_MPTCP {
		t.Skip("this kernel does not offer Multipath TCP")
	}
	if err := setNotsentLowat(ln.(*net.TCPListener), 16<<10); err == nil || !strings.Contains(err.Error(), "Multipath TCP") {
		t.Errorf("setNotsentLowat on a Multipath TCP listener = %v, want an error naming it", err)
	}
}
