package sockio

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/weldr-proxy/weldr/internal/weldrtest"
)

func TestInitTakesTCPOnly(t *testing.T) {
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	var s Conn
	if s.Init(p1) {
		t.Fatal("Init took a net.Pipe")
	}
	a, _ := weldrtest.TCPPair(t)
	if !s.Init(a) {
		t.Fatal("Init refused a TCP connection")
	}
}

// Bytes both ways, then the peer's close as io.EOF, as net.Conn has them.
func TestReadWriteAndEOF(t *testing.T) {
	a, b := weldrtest.TCPPair(t)
	var sa, sb Conn
	sa.Init(a)
	sb.Init(b)
	if n, err := sa.Write([]byte("ping")); n != 4 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	buf := make([]byte, 8)
	if n, err := io.ReadAtLeast(&sb, buf, 4); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("read %q, %v; want \"ping\"", buf[:n], err)
	}
	a.Close()
	if n, err := sb.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after the peer closed: %d, %v; want io.EOF", n, err)
	}
}

// A deadline is a net.Error that says Timeout, named "read"; Retry is
// asked about it and may have the read wait on.
func TestDeadlineAndRetry(t *testing.T) {
	a, b := weldrtest.TCPPair(t)
	var s Conn
	s.Init(a)
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := s.Read(make([]byte, 8))
	ne, ok := errors.AsType[net.Error](err)
	oe, _ := errors.AsType[*net.OpError](err)
	if !ok || !ne.Timeout() || oe == nil || oe.Op != "read" {
		t.Fatalf("past the deadline: %v; want a read timeout", err)
	}

	asked := 0
	s.Retry = func(err error) bool {
		asked++
		a.SetReadDeadline(time.Time{})
		go b.Write([]byte("late"))
		return true
	}
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	buf := make([]byte, 8)
	if n, err := s.Read(buf); err != nil || string(buf[:n]) != "late" || asked != 1 {
		t.Fatalf("with Retry: read %q, %v, asked %d times; want \"late\", once", buf[:n], err, asked)
	}
}

// A failed system call names the connection as net.Conn's errors do, and
// unwraps to its errno.
func TestErrorNamesTheConnection(t *testing.T) {
	a, b := weldrtest.TCPPair(t)
	var s Conn
	s.Init(a)
	b.(*net.TCPConn).SetLinger(0)
	b.Close() // a reset
	_, err := s.Read(make([]byte, 8))
	want := "read tcp " + a.LocalAddr().String() + "->" + a.RemoteAddr().String() + ": read: connection reset by peer"
	if err == nil || err.Error() != want || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("error %v, want %q wrapping ECONNRESET", err, want)
	}
}
