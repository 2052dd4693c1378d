package worker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/weldr-proxy/weldr/internal/weldrtest"
)

func TestSockIOIsUsedForTCPOnly(t *testing.T) {
	a, _ := weldrtest.TCPPair(t)
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
	a, b := weldrtest.TCPPair(t)
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
	a, b := weldrtest.TCPPair(t)
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

// A later read deadline is kept from the poller (extendReadDeadline): the
// earlier one it has times out unseen, the read waits on and gets what
// comes before the later one. An earlier deadline is set at once, and a
// deadline that passed while nothing read (a pooled connection) is moved
// on as well.
func TestSockIOExtendedDeadlineWaitsOn(t *testing.T) {
	a, b := weldrtest.TCPPair(t)
	var s sockIO
	r := newReadWriter(a, &s)
	buf := make([]byte, 8)
	readAfter := func(d time.Duration, msg string) {
		t.Helper()
		go func() {
			time.Sleep(d)
			b.Write([]byte(msg))
		}()
		if n, err := r.Read(buf); err != nil || string(buf[:n]) != msg {
			t.Fatalf("read %q, %v; want %q", buf[:n], err, msg)
		}
	}

	first := time.Now().Add(30 * time.Millisecond)
	s.setReadDeadline(first)
	s.extendReadDeadline(time.Now().Add(10 * time.Second))
	if !s.armed.Equal(first) {
		t.Fatalf("the poller's deadline moved to %v: it should stay at the earlier %v", s.armed, first)
	}
	readAfter(200*time.Millisecond, "x") // past the first deadline

	s.setReadDeadline(time.Now().Add(10 * time.Millisecond))
	time.Sleep(50 * time.Millisecond) // it passes with no read waiting
	s.extendReadDeadline(time.Now().Add(10 * time.Second))
	readAfter(50*time.Millisecond, "y")

	s.extendReadDeadline(time.Now().Add(30 * time.Millisecond)) // earlier: set now
	_, err := r.Read(buf)
	if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		t.Fatalf("past the earlier deadline: %v; want a read timeout", err)
	}
	s.setReadDeadline(time.Time{})
	readAfter(0, "z")
}

// On a connection sockIO does not read (TLS; a pipe here), whose reads
// cannot rearm, a later read deadline is set at once.
func TestExtendedDeadlineOfAConnectionNotReadRaw(t *testing.T) {
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	var s sockIO
	r := newReadWriter(p1, &s)
	s.setReadDeadline(time.Now().Add(30 * time.Millisecond))
	s.extendReadDeadline(time.Now().Add(10 * time.Second))
	go func() {
		time.Sleep(200 * time.Millisecond) // past the first deadline
		p2.Write([]byte("x"))
	}()
	buf := make([]byte, 8)
	if n, err := r.Read(buf); err != nil || string(buf[:n]) != "x" {
		t.Fatalf("read %q, %v; want \"x\" before the later deadline", buf[:n], err)
	}
}

// A write to a peer that reset the connection fails with a write error
// and does not kill the process (no SIGPIPE).
func TestSockIOWriteToReset(t *testing.T) {
	a, b := weldrtest.TCPPair(t)
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
	a, _ := weldrtest.TCPPair(t)
	var s sockIO
	r := newReadWriter(a, &s)
	a.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := r.Read(make([]byte, 1))
	want := "read tcp " + a.LocalAddr().String() + "->" + a.RemoteAddr().String() + ": i/o timeout"
	if err == nil || err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
}

// With TCP_INQ on, a read inside the socket's own RawConn.Read callback
// says whether it left anything behind: bytes, or a FIN not yet read.
func TestSockIOInqHint(t *testing.T) {
	// reads reads sizes from a's socket as serveReady's callback does and
	// returns, for each, what it got and whether it left nothing.
	reads := func(t *testing.T, a net.Conn, sizes ...int) string {
		var s sockIO
		rw := newReadWriter(a, &s)
		var got []string
		err := s.Raw.Control(func(fd uintptr) {
			s.inPoll, s.fd = true, fd
			defer func() { s.inPoll = false }()
			s.askInq()
			if !s.inqOn {
				t.Skip("no TCP_INQ on this kernel")
			}
			deadline := time.Now().Add(waitLimit)
			for _, size := range sizes {
				n, err := rw.Read(make([]byte, size))
				for err == errAgain && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond) // not here yet
					n, err = rw.Read(make([]byte, size))
				}
				got = append(got, fmt.Sprintf("%d %v emptied=%v", n, err, s.inq == 0))
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(got, ", ")
	}
	a, b := weldrtest.TCPPair(t)
	b.Write(bytes.Repeat([]byte("x"), 100))
	if got, want := reads(t, a, 40, 60), "40 <nil> emptied=false, 60 <nil> emptied=true"; got != want {
		t.Errorf("100 bytes read as 40 and 60: %s; want %s", got, want)
	}
	a, b = weldrtest.TCPPair(t)
	b.Write(bytes.Repeat([]byte("x"), 100))
	b.(*net.TCPConn).CloseWrite()
	if got, want := reads(t, a, 40, 60, 8), "40 <nil> emptied=false, 60 <nil> emptied=false, 0 EOF emptied=false"; got != want {
		t.Errorf("100 bytes and a FIN read as 40, 60 and 8: %s; want %s", got, want)
	}
}
