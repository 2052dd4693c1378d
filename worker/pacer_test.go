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

func TestExcess(t *testing.T) {
	for _, c := range []struct {
		mine, theirs int64
		others       int
		want         int64
	}{
		{100, 0, 0, 0}, // alone: all of it is its share
		{0, 0, 1, -4},
		{4, 0, 1, 0}, // 2 each, and 2 of slack
		{5, 0, 1, 1},
		{133, 123, 1, -10}, // 256: 128 each, and 2 + 8 of slack
		{139, 117, 1, 2},
		{24, 56, 3, 0}, // 4 workers, 80: 20 each, and 2 + 2 of slack
		{25, 55, 3, 4},
		{0, 1000, 1, -1000 - 2*33},
	} {
		if got := excess(c.mine, c.theirs, c.others); got != c.want {
			t.Errorf("excess(mine %d, theirs %d, %d others) = %d, want %d", c.mine, c.theirs, c.others, got, c.want)
		}
	}
}

// twoSeats is a board of two seats, unmapped when the test ends.
func twoSeats(t *testing.T) *ipc.Board {
	t.Helper()
	board, f, err := ipc.NewBoard(2)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { board.Close() })
	return board
}

// testPacer is a pacer in seat 0 of a board of two seats, both taken, on
// a clock of its own that each sleep moves on, after calling during.
type testPacer struct {
	*acceptPacer
	other  *ipc.Seat
	sleeps int
	slept  time.Duration
	during func()
}

func newTestPacer(t *testing.T) *testPacer {
	t.Helper()
	board := twoSeats(t)
	board.Sit(0)
	board.Sit(1)
	tp := &testPacer{acceptPacer: newAcceptPacer(board, 0), other: board.Seat(1)}
	clock := time.Unix(1e9, 0)
	tp.now = func() time.Time { return clock }
	tp.sleep = func(d time.Duration) {
		if d != acceptPauseStep {
			t.Errorf("slept %v, want steps of %v", d, acceptPauseStep)
		}
		tp.sleeps++
		tp.slept += d
		if tp.during != nil {
			tp.during()
		}
		clock = clock.Add(d)
	}
	return tp
}

// pauseFor runs a pause and reports how long it slept.
func (tp *testPacer) pauseFor(stop func() bool) time.Duration {
	tp.slept = 0
	tp.pause(stop)
	return tp.slept
}

func never() bool { return false }

// Within its share, alone, or beside a worker that drains, a worker
// accepts at once.
func TestPacerWithinShareDoesNotWait(t *testing.T) {
	p := newTestPacer(t)
	p.mine.Open.Store(10)
	p.other.Open.Store(10)
	p.pause(never)
	p.mine.Open.Store(13) // 23: 11.5 each, and 2 of slack
	p.pause(never)
	if p.sleeps != 0 {
		t.Errorf("a worker within its share slept %d times", p.sleeps)
	}
	p.mine.Open.Store(100)
	p.other.Out.Store(1)
	p.pause(never)
	if p.sleeps != 0 {
		t.Errorf("a worker beside one that drains slept %d times", p.sleeps)
	}
	p.board.Leave(1)
	p.pause(never)
	if p.sleeps != 0 {
		t.Errorf("a worker alone slept %d times", p.sleeps)
	}
}

// Over its share, a worker waits while the other takes on connections,
// past acceptPauseIdle, until it is within its share.
func TestPacerWaitsWhileTheOthersTakeConnections(t *testing.T) {
	p := newTestPacer(t)
	p.mine.Open.Store(40)
	p.during = func() { p.other.Open.Add(1) } // one connection for the other per step
	slept := p.pauseFor(never)
	want := 0 // steps until the other has caught up
	for excess(40, int64(want), 1) > 0 {
		want++
	}
	if p.sleeps != want {
		t.Errorf("slept %d times, want %d: until the other, taking one connection a step, is within its share", p.sleeps, want)
	}
	if slept <= acceptPauseIdle || slept > acceptPauseMax {
		t.Fatalf("the test needs a wait between acceptPauseIdle and acceptPauseMax, got %v", slept)
	}
}

// However steadily the other takes on connections, a wait lasts at most
// acceptPauseMax, and none begins for acceptPauseRest after.
func TestPacerWaitsAtMostAcceptPauseMax(t *testing.T) {
	p := newTestPacer(t)
	p.mine.Open.Store(1000)
	p.during = func() { p.other.Open.Add(1) }
	if slept := p.pauseFor(never); slept != acceptPauseMax {
		t.Errorf("waited %v, want acceptPauseMax (%v)", slept, acceptPauseMax)
	}
	if slept := p.pauseFor(never); slept != 0 {
		t.Errorf("right after, waited %v, want none", slept)
	}
}

// A wait on others that take connections without holding more of them
// (short-lived ones), or on a worker that accepts nothing, runs out after
// acceptPauseIdle; then none begins for acceptPauseRest.
func TestPacerRestsAfterAWaitThatRanOut(t *testing.T) {
	for _, c := range []struct {
		name   string
		during func(other *ipc.Seat)
	}{
		{"short-lived connections", func(other *ipc.Seat) { other.Open.Add(1); other.Open.Add(-1) }},
		{"a stopped worker", func(*ipc.Seat) {}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newTestPacer(t)
			p.mine.Open.Store(100)
			p.other.Open.Store(5)
			p.during = func() { c.during(p.other) }
			if slept := p.pauseFor(never); slept != acceptPauseIdle {
				t.Errorf("waited %v, want acceptPauseIdle (%v)", slept, acceptPauseIdle)
			}
			var rest time.Duration
			for rest < acceptPauseRest {
				p.mine.Open.Add(1) // it accepted
				if slept := p.pauseFor(never); slept != 0 {
					t.Fatalf("%v after a wait ran out, waited %v again, want none for acceptPauseRest (%v)", rest, slept, acceptPauseRest)
				}
				p.sleep(acceptPauseStep) // time passes
				rest += acceptPauseStep
			}
			if slept := p.pauseFor(never); slept != acceptPauseIdle {
				t.Errorf("acceptPauseRest after, waited %v, want acceptPauseIdle again", slept)
			}
		})
	}
}

// A drain ends a wait.
func TestPacerStopsWaitingWhenTold(t *testing.T) {
	p := newTestPacer(t)
	p.mine.Open.Store(50)
	stop := false
	p.during = func() {
		p.other.Open.Add(1) // the other takes on connections, but too slowly to catch up
		if p.sleeps == 3 {
			stop = true
		}
	}
	p.pause(func() bool { return stop })
	if p.sleeps != 3 {
		t.Errorf("slept %d times, want 3: told to stop after the third", p.sleeps)
	}
}

// A worker with a board counts its connections in its seat, and says so
// when it drains; one whose only other worker never accepts serves every
// connection all the same.
func TestWorkerBesideAWorkerThatNeverAccepts(t *testing.T) {
	board := twoSeats(t) // unmapped after the worker's cleanup: registered before it
	board.Sit(1)         // a worker that is stopped, holding nothing
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
	if n := mine.Open.Load(); n != conns {
		t.Errorf("the worker's seat counts %d open connections, want %d", n, conns)
	}
	for _, c := range cs {
		c.Close()
	}
	waitFor(t, "the worker's seat to count no open connection", func() bool { return mine.Open.Load() == 0 })
	if mine.Out.Load() != 0 {
		t.Fatal("the worker's seat says it is out before it drains")
	}
	h.cancel() // it drains
	waitFor(t, "the worker's seat to say it is out", func() bool { return mine.Out.Load() == 1 })
}
