// Package weldrtest holds what weldr's tests share: building the binary
// once per test package, free loopback ports (which the benchmarks use
// too), loopback connections, and waiting for a socket's queue to empty.
package weldrtest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Main builds the weldr binary into a temporary directory (with the race
// detector when the tests run with it), sets *bin to its path, runs the
// tests and removes the directory. It returns the exit code for os.Exit.
func Main(m *testing.M, bin *string) int {
	dir, err := os.MkdirTemp("", "weldr-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	*bin = filepath.Join(dir, "weldr")
	args := []string{"build", "-o", *bin}
	if RaceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command(goTool(), append(args, "github.com/weldr-proxy/weldr/cmd/weldr")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building weldr:", err)
		return 1
	}
	return m.Run()
}

// goTool is the go command: the one on PATH, else the one in $GOROOT/bin
// (which `go test` sets for the test binary).
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	return "go"
}

// FreePort returns a port on 127.0.0.1 that was free a moment ago, for
// weldr to listen on. It is picked below the kernel's ephemeral range
// (32768-60999 by default): a port from that range, once given back, may be
// taken at once as the source port of any outgoing connection on the
// machine (the tests make thousands), and weldr's listen would then fail.
//
// Test binaries run in parallel (go test ./...), and a port is free only
// until weldr binds it: two tests could pick the same one. So a port is
// also claimed, for the rest of the test, by a lock on a file named after
// it that every test process on the machine respects.
func FreePort(t testing.TB) int {
	t.Helper()
	dir := filepath.Join(os.TempDir(), "weldr-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o1777) // past the umask: every user's tests share it, as /tmp
	for range 100 {
		port, err := LoopbackPort()
		if err != nil {
			t.Fatal(err)
		}
		// Read-only: a lock needs no more, and another user's file allows it.
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprint(port)), os.O_CREATE|os.O_RDONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			f.Close() // claimed by another test
			continue
		}
		t.Cleanup(func() { f.Close() }) // the lock goes with the file
		return port
	}
	t.Fatal("no free port on 127.0.0.1 that no other test claimed")
	return 0
}

// LoopbackPort is FreePort for programs (the benchmarks), with an error.
func LoopbackPort() (int, error) {
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			ln.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free port on 127.0.0.1 between 20000 and 32000")
}

// TCPPair returns both ends of a loopback TCP connection, closed when the
// test ends.
func TCPPair(t testing.TB) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	if a, err = net.Dial("tcp", ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if b = <-accepted; b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// WaitSocketQueue waits until the queue of socket c that request reads is
// empty: unix.SIOCINQ for bytes c has received and not read, unix.SIOCOUTQ
// for bytes c has sent that its peer has not read. A test uses it to know
// that the other side has taken what it wrote, and waits in a read.
func WaitSocketQueue(t testing.TB, c syscall.Conn, request uint) {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		var n int
		var ierr error
		raw.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), request) })
		if ierr != nil {
			t.Fatal(ierr)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes still queued on the socket after 10s", n)
		}
	}
}
