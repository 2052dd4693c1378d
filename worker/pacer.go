package worker

import (
	"time"

	"github.com/weldr-proxy/weldr/ipc"
)

// Shared is the memory the manager shares with a worker. Either part may
// be missing.
type Shared struct {
	// Bell, if not nil, holds the version of the last change the manager
	// has written to the worker's pipe.
	Bell *ipc.Bell
	// Board, if not nil, is where the workers count their connections;
	// this worker's seat on it is Seat.
	Board *ipc.Board
	Seat  int
}

// An acceptPacer keeps a worker from taking more than its share of the
// client connections when many arrive at once.
//
// The workers accept from one listening socket. When wrk, or a fleet of
// clients after a restart, opens hundreds of connections at once, the
// worker that happens to be running takes them until the socket is empty,
// while the others wait for a core: one worker can end with two or three
// times the connections of another, and the busier worker's queue sets
// the tail latency of them all. Before each accept, the pacer compares the
// worker's open connections with those of the others that accept, on the
// board, and while the worker is over its share it waits, leaving new
// connections to them.
//
// It waits only while that works: while the others take on connections,
// so that the worker's excess over its share keeps falling to new lows,
// and never longer than acceptPauseMax in all. A wait that runs out
// (acceptPauseIdle without a new low, or acceptPauseMax) is not begun
// again for acceptPauseRest. So a worker that is stopped or stuck, or
// others that take only short-lived connections while this worker holds
// long-lived ones, cost this worker at most a wait of acceptPauseIdle in
// every acceptPauseRest.
type acceptPacer struct {
	board *ipc.Board
	seat  int
	mine  *ipc.Seat
	now   func() time.Time    // time.Now; tests keep their own clock
	sleep func(time.Duration) // time.Sleep

	restUntil time.Time // no wait begins before this
}

// On a busy machine another worker may wait for a core for several
// milliseconds (acceptPauseIdle: at 2 ms, 1 probe in 8 at 256 connections
// ended split 168:88). The rest makes a wait that does not work cost at
// most 6 ms in 250, 2.4 % of the time.
const (
	acceptPauseStep = 250 * time.Microsecond
	acceptPauseIdle = 6 * time.Millisecond
	acceptPauseMax  = 30 * time.Millisecond
	acceptPauseRest = 250 * time.Millisecond
)

func newAcceptPacer(board *ipc.Board, seat int) *acceptPacer {
	return &acceptPacer{board: board, seat: seat, mine: board.Seat(seat), now: time.Now, sleep: time.Sleep}
}

// excess is how many connections a worker holds over its share and some
// slack (2 connections, and 1 in 32 of all), times the number of workers:
// it holds mine of the open connections, and the number others of other
// workers hold theirs. It is over its share if excess is above zero.
func excess(mine, theirs int64, others int) int64 {
	if others == 0 {
		return 0
	}
	n, total := int64(others+1), mine+theirs
	return mine*n - total - (2+total/32)*n
}

// pause waits, before the worker accepts a connection, while it is over
// its share and the others take on connections, or until stop says so.
func (p *acceptPacer) pause(stop func() bool) {
	others, theirs := p.board.Others(p.seat)
	low := excess(p.mine.Open.Load(), theirs, others)
	if low <= 0 {
		return
	}
	start := p.now()
	if start.Before(p.restUntil) {
		return
	}
	lastLow := start
	for !stop() {
		p.sleep(acceptPauseStep)
		others, theirs = p.board.Others(p.seat)
		e, now := excess(p.mine.Open.Load(), theirs, others), p.now()
		switch {
		case e <= 0:
			return
		case e < low:
			low, lastLow = e, now
		}
		if now.Sub(lastLow) >= acceptPauseIdle || now.Sub(start) >= acceptPauseMax {
			p.restUntil = now.Add(acceptPauseRest)
			return
		}
	}
}

// draining says on the board that the worker no longer accepts, so that
// the others leave it out of their shares.
func (p *acceptPacer) draining() { p.mine.Out.Store(1) }
