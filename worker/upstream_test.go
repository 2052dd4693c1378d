package worker

import (
	"io"
	"net"
	"testing"
	"time"
)

// An idle kept-alive backend connection holds no buffer; it gets them back
// when reused, and works.
func TestIdleBackendConnHoldsNoBuffers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // an echo server, one connection
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	var u upstreams
	u.init(time.Second, time.Second, newBuffers(16<<10))
	b := &backend{id: ln.Addr().String(), scheme: "http", weight: 1}

	roundTrip := func(uc *upConn, msg string) {
		t.Helper()
		uc.bw.WriteString(msg)
		if err := uc.bw.Flush(); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(uc.br, got); err != nil || string(got) != msg {
			t.Fatalf("echo: %q, %v; want %q", got, err, msg)
		}
	}
	if u.idle(b, true, time.Now()) != nil {
		t.Fatal("an idle connection before any was put back")
	}
	uc, err := u.dial(t.Context(), b)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(uc, "one")
	u.put(b, uc, time.Now())
	if len(b.pool.idle) != 1 {
		t.Fatalf("%d idle connections, want 1", len(b.pool.idle))
	}
	if idle := b.pool.idle[0]; idle.br != nil || idle.bw != nil {
		t.Fatal("an idle connection kept its buffers")
	}
	again := u.idle(b, false, time.Now()) // checked with a peek: still open
	if again != uc || !again.reused {
		t.Fatal("the idle connection was not reused")
	}
	roundTrip(again, "two")
	b.pool.closeIdle()
	again.c.Close()
}
