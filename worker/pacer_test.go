package worker

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/weldr-proxy/weldr/ipc"
)

func TestOverShare(t *testing.T) {
	for _, c := range []struct {
		mine, theirs int64
		others       int
		want         bool
	}{
		{100, 0, 0, false}, // alone: all of it is its share
		{0, 0, 1, false},
		{4, 0, 1, false}, // 2 each, and 2 of slack
		{5, 0, 1, true},
		{133, 123, 1, false}, // 256: 128 each, and 2 + 8 of slack
		{139, 117, 1, true},
		{24, 56, 3, false}, // 4 workers, 80: 20 each, and 2 + 2 of slack
		{25, 55, 3, true},
		{0, 1000, 1, false},
	} {
		if got := overShare(c.mine, c.theirs, c.others); got != c.want {
			t.Errorf("overShare(mine %d, theirs %d, %d others) = %v, want %v", c.mine, c.theirs, c.others, got, c.want)
		}
	}
}

// pacerOnBoard is a pacer in seat 0 of a board of two seats, both taken,
// whose sleeps are counted and call during, if set, instead of waiting.
func pacerOnBoard(t *testing.T) (p *acceptPacer, other *ipc.Seat, sleeps *int, during *func()) {
	t.Helper()
	board, f, err := ipc.NewBoard(2)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { board.Close() })
	board.Sit(0)
	board.Sit(1)
	p = newAcceptPacer(board, 0)
	sleeps, during = new(int), new(func())
	p.sleep = func(d time.Duration) {
		if d != acceptPauseStep {
			t.Errorf("slept %v, want steps of %v", d, acceptPauseStep)
		}
		*sleeps++
		if *during != nil {
			(*during)()
		}
	}
	return p, board.Seat(1), sleeps, during
}

func never() bool { return false }

// Within its share, or alone, a worker accepts at once.
func TestPacerWithinShareDoesNotWait(t *testing.T) {
	p, other, sleeps, _ := pacerOnBoard(t)
	p.mine.Open.Store(10)
	other.Open.Store(10)
	p.pause(never)
	p.mine.Open.Store(13) // 23: 11.5 each, and 2 of slack
	p.pause(never)
	if *sleeps != 0 {
		t.Errorf("a worker within its share slept %d times", *sleeps)
	}
	p.board.Leave(1)
	p.mine.Open.Store(100)
	p.pause(never)
	if *sleeps != 0 {
		t.Errorf("a worker alone slept %d times", *sleeps)
	}
}

// Over its share, a worker waits while the other accepts, for as long as
// it takes the other to catch up, however long past acceptPauseMax.
func TestPacerWaitsWhileTheOthersAccept(t *testing.T) {
	p, other, sleeps, during := pacerOnBoard(t)
	p.mine.Open.Store(100)
	*during = func() { // one connection for the other per step
		other.Open.Add(1)
		other.Accepted.Add(1)
	}
	p.pause(never)
	if mine, theirs := p.mine.Open.Load(), other.Open.Load(); overShare(mine, theirs, 1) {
		t.Errorf("pause returned with %d connections against the other's %d: over its share", mine, theirs)
	}
	want := 0 // steps until the other has caught up
	for overShare(100, int64(want), 1) {
		want++
	}
	if *sleeps != want {
		t.Errorf("slept %d times, want %d: until the other, taking one connection a step, is within its share", *sleeps, want)
	}
	if *sleeps <= int(acceptPauseMax/acceptPauseStep) {
		t.Errorf("slept %d times: the test needs a wait past acceptPauseMax", *sleeps)
	}
}

// A worker whose other does not accept waits acceptPauseMax once, then
// accepts without waiting until the other takes a connection again.
func TestPacerStopsWaitingOnAStalledWorker(t *testing.T) {
	p, other, sleeps, _ := pacerOnBoard(t)
	p.mine.Open.Store(50)
	p.pause(never)
	if want := int(acceptPauseMax / acceptPauseStep); *sleeps != want {
		t.Errorf("waiting on a worker that accepts nothing slept %d times, want %d (acceptPauseMax)", *sleeps, want)
	}
	*sleeps = 0
	for range 10 {
		p.mine.Open.Add(1)
		p.pause(never)
	}
	if *sleeps != 0 {
		t.Errorf("after a wait ran out, 10 more accepts slept %d times, want none until the other accepts", *sleeps)
	}
	other.Accepted.Add(1) // it runs again
	p.pause(never)
	if want := int(acceptPauseMax / acceptPauseStep); *sleeps != want {
		t.Errorf("once the other accepted again, a pause slept %d times, want %d", *sleeps, want)
	}
}

// A drain ends a wait.
func TestPacerStopsWaitingWhenTold(t *testing.T) {
	p, other, sleeps, during := pacerOnBoard(t)
	p.mine.Open.Store(50)
	stop := false
	*during = func() {
		other.Accepted.Add(1) // the other accepts, but too slowly to catch up
		if *sleeps == 3 {
			stop = true
		}
	}
	p.pause(func() bool { return stop })
	if *sleeps != 3 {
		t.Errorf("slept %d times, want 3: told to stop after the third", *sleeps)
	}
}

// A worker with a board counts its connections in its seat, and one whose
// only other worker never accepts serves every connection all the same:
// the wait for it runs out once.
func TestWorkerBesideAWorkerThatNeverAccepts(t *testing.T) {
	board, f, err := ipc.NewBoard(2)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { board.Close() }) // after the worker's cleanup: registered before it
	board.Sit(1)                        // a worker that is stopped, holding nothing
	h := startWorkerSharing(t, sharing{bell: true, board: board, seat: 0}, testSettings(), named(t, "a"))
	board.Sit(0)
	mine := board.Seat(0)

	const conns = 20 // 4 of them within its share of an even split
	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cs[i] = c
		c.SetDeadline(time.Now().Add(waitLimit))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("GET on connection %d: %v", i+1, err)
		}
		res.Body.Close()
	}
	if n, acc := mine.Open.Load(), mine.Accepted.Load(); n != conns || acc != conns {
		t.Errorf("the worker's seat counts %d open and %d accepted, want %d and %d", n, acc, conns, conns)
	}
	if _, _, acc := board.Others(0); acc != 0 {
		t.Errorf("the other seat counts %d accepted, want 0", acc)
	}
	for _, c := range cs {
		c.Close()
	}
	waitFor(t, "the worker's seat to count no open connection", func() bool { return mine.Open.Load() == 0 })
}
