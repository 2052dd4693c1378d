package worker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
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
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestSockIOIsUsedForTCPOnly(t *testing.T) {
	a, _ := tcpPair(t)
	var s sockIO
	if rw := newReadWriter(a, &s); rw != io.ReadWriter(&s) {
		t.Fatalf("TCP connection: got %T, want *sockIO", rw)
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if rw := newReadWriter(p1, &s); rw != io.ReadWriter(p1) {
		t.Fatalf("pipe: got %T, want the connection itself", rw)
	}
}

// A write far larger than the socket buffers waits for room and arrives
// whole; the reader sees every byte, then EOF.
func TestSockIOLargeWriteAndEOF(t *testing.T) {
	a, b := tcpPair(t)
	var sa, sb sockIO
	wa, rb := newReadWriter(a, &sa), newReadWriter(b, &sb)
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	errc := make(chan error, 1)
	go func() {
		n, err := wa.Write(want)
		if err == nil && n != len(want) {
			err = io.ErrShortWrite
		}
		a.(*net.TCPConn).CloseWrite()
		errc <- err
	}()
	got, err := io.ReadAll(rb)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d identical ones", len(got), len(want))
	}
	if n, err := rb.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("after the end: %d, %v; want 0, EOF", n, err)
	}
}

// Deadlines and Close act on sockIO as on net.Conn, with the errors the
// proxy classifies.
func TestSockIODeadlineAndClose(t *testing.T) {
	a, b := tcpPair(t)
	var s sockIO
	r := newReadWriter(a, &s)
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := r.Read(make([]byte, 8))
	var ne net.Error
	var oe *net.OpError
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("past the deadline: %v; want a read timeout", err)
	}
	a.SetReadDeadline(time.Time{})

	b.Write([]byte("hi"))
	buf := make([]byte, 8)
	if n, err := r.Read(buf); err != nil || string(buf[:n]) != "hi" {
		t.Fatalf("read %q, %v; want \"hi\"", buf[:n], err)
	}

	done := make(chan error, 1)
	go func() { _, err := r.Read(buf); done <- err }()
	time.Sleep(10 * time.Millisecond)
	a.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed connection: %v; want net.ErrClosed", err)
	}
	if _, err := r.Write([]byte("x")); !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("write on a closed connection: %v; want a write error", err)
	}
}

// A write to a peer that reset the connection fails with a write error
// and does not kill the process (no SIGPIPE).
func TestSockIOWriteToReset(t *testing.T) {
	a, b := tcpPair(t)
	b.(*net.TCPConn).SetLinger(0)
	b.Close()
	var s sockIO
	w := newReadWriter(a, &s)
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = w.Write(make([]byte, 64<<10))
		time.Sleep(time.Millisecond)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("write after reset: %v; want a write error", err)
	}
}

// A timeout reads as net.Conn's would, naming the addresses once.
func TestSockIOErrorText(t *testing.T) {
	a, _ := tcpPair(t)
	var s sockIO
	r := newReadWriter(a, &s)
	a.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := r.Read(make([]byte, 1))
	want := "read tcp " + a.LocalAddr().String() + "->" + a.RemoteAddr().String() + ": i/o timeout"
	if err == nil || err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
}

// A question kept by sendWithRead goes out only with the read of its
// answer, whole, also when it is larger than the socket buffers.
func TestSockIOSendWithRead(t *testing.T) {
	for _, size := range []int{100, 8 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			a, b := tcpPair(t)
			var s sockIO
			rw := newReadWriter(a, &s)
			question := bytes.Repeat([]byte("q"), size)
			s.sendWithRead()
			if n, err := rw.Write(question); n != size || err != nil {
				t.Fatalf("kept write: %d, %v; want %d, nil", n, err, size)
			}
			b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if n, err := b.Read(make([]byte, 1)); n != 0 || !isTimeout(err) {
				t.Fatalf("the peer read %d bytes (%v) before the answer was read; want none", n, err)
			}
			b.SetReadDeadline(time.Time{})
			got := make(chan error, 1)
			go func() {
				p := make([]byte, size)
				if _, err := io.ReadFull(b, p); err != nil {
					got <- err
					return
				}
				if !bytes.Equal(p, question) {
					got <- errors.New("the question arrived changed")
					return
				}
				_, err := b.Write([]byte("answer"))
				got <- err
			}()
			buf := make([]byte, 16)
			n, err := rw.Read(buf)
			if err != nil || string(buf[:n]) != "answer" {
				t.Fatalf("read %q, %v; want \"answer\"", buf[:n], err)
			}
			if err := <-got; err != nil {
				t.Fatalf("peer: %v", err)
			}
			if s.unsent() {
				t.Fatal("the question is still kept after it went out")
			}
			// The next write goes out at once.
			rw.Write([]byte("next"))
			b.SetReadDeadline(time.Now().Add(waitLimit))
			if _, err := io.ReadFull(b, buf[:4]); err != nil || string(buf[:4]) != "next" {
				t.Fatalf("peer read %q, %v; want \"next\"", buf[:4], err)
			}
		})
	}
}

// A kept question to a peer that reset the connection fails as a write
// does, and the kept bytes are forgotten.
func TestSockIOSendWithReadToReset(t *testing.T) {
	a, b := tcpPair(t)
	b.(*net.TCPConn).SetLinger(0)
	b.Close()
	var s sockIO
	rw := newReadWriter(a, &s)
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		s.sendWithRead()
		rw.Write(make([]byte, 64<<10))
		_, err = rw.Read(make([]byte, 8))
		time.Sleep(time.Millisecond)
	}
	if !isStale(err) {
		t.Fatalf("asking a reset peer: %v; want a reset, broken pipe or EOF", err)
	}
	if s.unsent() {
		t.Fatal("the question is still kept after the failure")
	}
}

// A read that fails before the kept question went out (its deadline had
// passed) leaves the question kept: the next read sends it.
func TestSockIOSendWithReadPastDeadline(t *testing.T) {
	a, b := tcpPair(t)
	var s sockIO
	rw := newReadWriter(a, &s)
	s.sendWithRead()
	rw.Write([]byte("question"))
	a.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := rw.Read(make([]byte, 8)); !isTimeout(err) {
		t.Fatalf("read past its deadline: %v; want a timeout", err)
	}
	a.SetReadDeadline(time.Now().Add(waitLimit))
	go func() {
		p := make([]byte, 8)
		if _, err := io.ReadFull(b, p); err == nil && string(p) == "question" {
			b.Write([]byte("answer"))
		}
	}()
	buf := make([]byte, 8)
	if n, err := rw.Read(buf); err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("read %q, %v; want \"answer\"", buf[:n], err)
	}
}
