package sockio

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weldr-proxy/weldr/internal/weldrtest"
)

// splicing is a source and a destination to splice between: bytes
// written to srcPeer reach src (on srcConn); what reaches dst (on dstConn)
// is read at dstPeer.
type splicing struct {
	src, dst                           *Conn
	srcPeer, srcConn, dstConn, dstPeer net.Conn
}

func splicePair(t *testing.T) *splicing {
	t.Helper()
	s := &splicing{src: new(Conn), dst: new(Conn)}
	s.srcPeer, s.srcConn = weldrtest.TCPPair(t)
	s.dstConn, s.dstPeer = weldrtest.TCPPair(t)
	s.src.Init(s.srcConn)
	s.dst.Init(s.dstConn)
	return s
}

// Splice moves exactly n bytes, more than a pipe holds, and leaves what
// follows them in the source.
func TestSpliceMovesNBytes(t *testing.T) {
	sp := splicePair(t)
	src, dst, srcPeer, dstPeer := sp.src, sp.dst, sp.srcPeer, sp.dstPeer
	n := 3*maxPipe + 12345
	data := make([]byte, n+5)
	rand.Read(data)
	copy(data[n:], "after")
	go srcPeer.Write(data)
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, n)
		k, _ := io.ReadFull(dstPeer, b)
		got <- b[:k]
	}()

	moved, err := Splice(dst, src, int64(n))
	if moved != int64(n) || err != nil {
		t.Fatalf("Splice() = %d, %v; want %d, nil", moved, err, n)
	}
	if b := <-got; !bytes.Equal(b, data[:n]) {
		t.Errorf("the destination got %d bytes, not the %d sent", len(b), n)
	}
	rest := make([]byte, 5)
	if _, err := io.ReadFull(src, rest); err != nil || string(rest) != "after" {
		t.Errorf("the source after Splice holds %q, %v; want \"after\"", rest, err)
	}
}

// The source's end before n bytes is io.EOF, with what was moved until
// then; a pipe that ends so is clean for the next Splice.
func TestSpliceEarlyEnd(t *testing.T) {
	for round := range 2 {
		sp := splicePair(t)
		fill := []byte{'a' + byte(round)}
		go func() {
			sp.srcPeer.Write(bytes.Repeat(fill, 100<<10))
			sp.srcPeer.Close()
		}()
		got := make(chan []byte, 1)
		go func() { b, _ := io.ReadAll(sp.dstPeer); got <- b }()
		moved, err := Splice(sp.dst, sp.src, 1<<20)
		if moved != 100<<10 || err != io.EOF {
			t.Fatalf("round %d: Splice() of a source that ends after 100 KiB = %d, %v; want %d, io.EOF", round, moved, err, 100<<10)
		}
		sp.dstConn.Close()
		if b := <-got; len(b) != 100<<10 || bytes.Count(b, fill) != len(b) {
			t.Errorf("round %d: the destination got %d bytes, want 100 KiB of %q", round, len(b), fill)
		}
	}
}

// A failure of the destination is named "write", one of the source
// "read", so that a caller can tell whose it was.
func TestSpliceNamesTheFailingSide(t *testing.T) {
	t.Run("destination", func(t *testing.T) {
		sp := splicePair(t)
		sp.dstPeer.(*net.TCPConn).SetLinger(0)
		sp.dstPeer.Close() // a reset
		go sp.srcPeer.Write(make([]byte, 4<<20))
		_, err := Splice(sp.dst, sp.src, 4<<20)
		oe, _ := errors.AsType[*net.OpError](err)
		if oe == nil || oe.Op != "write" {
			t.Fatalf("Splice() to a reset destination = %v, want a write error", err)
		}
		// The pipe may have held bytes for the destination: none of them
		// reaches the next one.
		next := splicePair(t)
		go next.srcPeer.Write([]byte("clean"))
		if moved, err := Splice(next.dst, next.src, 5); moved != 5 || err != nil {
			t.Fatalf("the next Splice() = %d, %v; want 5, nil", moved, err)
		}
		next.dstConn.Close()
		if b, _ := io.ReadAll(next.dstPeer); string(b) != "clean" {
			t.Errorf("the next destination got %q, want \"clean\"", b)
		}
	})
	t.Run("source", func(t *testing.T) {
		sp := splicePair(t)
		sp.srcPeer.(*net.TCPConn).SetLinger(0)
		sp.srcPeer.Close()
		_, err := Splice(sp.dst, sp.src, 1<<20)
		oe, _ := errors.AsType[*net.OpError](err)
		if oe == nil || oe.Op != "read" || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("Splice() from a reset source = %v, want a read error wrapping ECONNRESET", err)
		}
	})
}

// The source's read deadline holds while Splice waits for it, and Retry
// is asked about it as in Read.
func TestSpliceDeadlineAndRetry(t *testing.T) {
	sp := splicePair(t)
	src, dst, srcPeer, dstPeer, c := sp.src, sp.dst, sp.srcPeer, sp.dstPeer, sp.srcConn
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := Splice(dst, src, 10)
	ne, ok := errors.AsType[net.Error](err)
	if !ok || !ne.Timeout() {
		t.Fatalf("Splice() past the source's deadline = %v, want a timeout", err)
	}

	asked := 0
	src.Retry = func(error) bool {
		asked++
		c.SetReadDeadline(time.Time{})
		go srcPeer.Write([]byte("late"))
		return true
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if moved, err := Splice(dst, src, 4); moved != 4 || err != nil || asked != 1 {
		t.Fatalf("with Retry: Splice() = %d, %v, asked %d times; want 4, nil, once", moved, err, asked)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(dstPeer, b); err != nil || string(b) != "late" {
		t.Errorf("the destination got %q, %v; want \"late\"", b, err)
	}
}

// Splices at once, each on its own sockets, share the pool of pipes: each
// returns its own count (under -race, no Splice touches a pipe once it is
// back in the pool).
func TestSplicesAtOnce(t *testing.T) {
	const splicers, rounds, n = 8, 100, 1000
	var wg sync.WaitGroup
	wrong := make(chan string, splicers*rounds)
	for range splicers {
		sp := splicePair(t)
		go io.Copy(io.Discard, sp.dstPeer)
		go sp.srcPeer.Write(make([]byte, rounds*n))
		wg.Go(func() {
			for range rounds {
				if moved, err := Splice(sp.dst, sp.src, n); moved != n || err != nil {
					wrong <- fmt.Sprintf("Splice() = %d, %v; want %d, nil", moved, err, n)
				}
			}
		})
	}
	wg.Wait()
	close(wrong)
	for w := range wrong {
		t.Error(w)
	}
}
