package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A worker's socket for a client carries proxy.notsent_lowat; after a
// SIGHUP with a new value, the next generation's connections carry that,
// and after a SIGHUP whose new generation fails, the serving one's value
// stands. The socket is taken from the worker itself with pidfd_getfd(2).
func TestNotsentLowatOnClientSockets(t *testing.T) {
	d := start(t, options{})
	d.register(t, backend(t, "a").URL)
	check := func(want int) {
		t.Helper()
		c, err := net.Dial("tcp", strings.TrimPrefix(d.proxy, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// An answer on the connection shows a worker has accepted it.
		fmt.Fprint(c, "GET /large HTTP/1.1\r\nHost: weldr\r\n\r\n")
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, res.Body); err != nil || n != int64(len(largeBody)) {
			t.Fatalf("GET /large: %d bytes, %v; want %d", n, err, len(largeBody))
		}
		got, err := peerSocketOption(children(d.pid(t)), c, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) {
			t.Skipf("cannot take a worker's socket here: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("the worker's socket for the client has TCP_NOTSENT_LOWAT %d, want %d", got, want)
		}
	}
	check(16384) // the default

	good, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(good), "[proxy]\n", "[proxy]\nnotsent_lowat = 65536\n", 1)
	d.writeConfig(t, changed)
	d.upgrade(t)
	check(65536)

	// A generation that fails to start (its admin address is taken) leaves
	// the serving one with its own value.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	failing := strings.Replace(changed, "notsent_lowat = 65536", "notsent_lowat = 32768", 1)
	failing = strings.Replace(failing, "[admin]\nlisten = \""+strings.TrimPrefix(d.admin, "http://")+"\"", "[admin]\nlisten = \""+busy.Addr().String()+"\"", 1)
	if failing == changed {
		t.Fatal("could not rewrite the configuration")
	}
	d.writeConfig(t, failing)
	syscall.Kill(d.pid(t), syscall.SIGHUP)
	waitFor(t, 30*time.Second, "the failed upgrade to be counted", func() bool {
		return d.metric(t, "weldr_upgrade_failures_total") == 1
	})
	check(65536)
	d.writeConfig(t, changed)
}

// peerSocketOption finds, among the open files of pids, the socket at the
// other end of c, and returns the value of its option level/opt.
func peerSocketOption(pids []int, c net.Conn, level, opt int) (int, error) {
	local, remote := c.RemoteAddr().String(), c.LocalAddr().String()
	for _, pid := range pids {
		pidfd, err := unix.PidfdOpen(pid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue // gone since it was listed
		}
		if err != nil {
			return 0, fmt.Errorf("pidfd_open %d: %w", pid, err)
		}
		defer unix.Close(pidfd)
		entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			return 0, err
		}
		for _, e := range entries {
			target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
			n, err := strconv.Atoi(e.Name())
			if err != nil || !strings.HasPrefix(target, "socket:") {
				continue
			}
			fd, err := unix.PidfdGetfd(pidfd, n, 0)
			if errors.Is(err, unix.EBADF) || errors.Is(err, unix.ESRCH) {
				continue // closed, or the process gone, since it was listed
			}
			if err != nil {
				return 0, fmt.Errorf("pidfd_getfd %d of %d: %w", n, pid, err)
			}
			v, found, err := optionIfConn(fd, local, remote, level, opt)
			unix.Close(fd)
			if found {
				return v, err
			}
		}
	}
	return 0, fmt.Errorf("no socket %s <-> %s in processes %v", local, remote, pids)
}

// optionIfConn reads the option of fd if fd is the TCP socket local <-> remote.
func optionIfConn(fd int, local, remote string, level, opt int) (int, bool, error) {
	la, err1 := unix.Getsockname(fd)
	ra, err2 := unix.Getpeername(fd)
	if err1 != nil || err2 != nil || sockaddrString(la) != local || sockaddrString(ra) != remote {
		return 0, false, nil
	}
	v, err := unix.GetsockoptInt(fd, level, opt)
	return v, true, err
}

func sockaddrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	case *unix.SockaddrInet6:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	}
	return ""
}

// The proxy's listening socket is one open file shared by the processes of
// every generation, and so is its O_NONBLOCK flag. A process that puts it
// in blocking mode (os.File.Fd does, which os.StartProcess calls on the
// files it passes: tableflip's on an upgrade) leaves the workers' accepts
// blocking in the kernel, and a worker's Close of the listener waits for
// its accept, so it could not drain until a client came. The manager no
// longer does so itself, and the socket has a receive timeout, which
// bounds a blocking accept. Here the flag is cleared from outside, the
// workers are sent back to accept, and SIGTERM still drains them at once.
func TestWorkersDrainWhenTheListenerBlocks(t *testing.T) {
	d := start(t, options{})
	d.register(t, backend(t, "a").URL)
	pid := d.pid(t)
	workers := children(pid)
	pidfd, err := unix.PidfdOpen(workers[0], 0)
	if err != nil {
		t.Skipf("pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	ln, err := unix.PidfdGetfd(pidfd, 3, 0) // a worker's listener
	if errors.Is(err, unix.EPERM) {
		t.Skipf("pidfd_getfd: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	flags, err := unix.FcntlInt(uintptr(ln), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(ln), unix.F_SETFL, flags&^unix.O_NONBLOCK)
	}
	unix.Close(ln)
	if err != nil {
		t.Fatal(err)
	}
	for range 4 { // after each, the worker that took it accepts again
		if code, _, body := d.get(t, "/"); code != http.StatusOK {
			t.Fatalf("GET / = %d %q, want 200", code, body)
		}
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second+3*time.Second, "weldr to exit within the drain timeout", func() bool {
		return exited(append(workers, pid)...)
	})
	if log := d.log.String(); strings.Contains(log, "did not drain in time") {
		t.Errorf("the workers had to be killed:\n%s", log)
	}
}
