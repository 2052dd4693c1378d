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
// worker's open connections with the others' on the board, and while the
// worker is over its share it waits, leaving new connections to them.
//
// It waits only while the others accept: at most acceptPauseMax without
// one of them taking a connection. After a wait that ran out it does not
// wait again until another worker has accepted one, so that a worker that
// is stopped or stuck costs one wait, not one per connection.
type acceptPacer struct {
	board *ipc.Board
	seat  int
	mine  *ipc.Seat
	sleep func(time.Duration) // time.Sleep; tests count instead

	stalled   bool   // the last wait ran out
	stalledAt uint64 // the others' accepts then
}

const (
	acceptPauseStep = 250 * time.Microsecond
	acceptPauseMax  = 2 * time.Millisecond
)

func newAcceptPacer(board *ipc.Board, seat int) *acceptPacer {
	return &acceptPacer{board: board, seat: seat, mine: board.Seat(seat), sleep: time.Sleep}
}

// overShare reports whether a worker holding mine of the open connections,
// beside others workers holding theirs, has more than its share and some
// slack: 2 connections, and one in 32 of the total.
func overShare(mine, theirs int64, others int) bool {
	if others == 0 {
		return false
	}
	n, total := int64(others+1), mine+theirs
	return mine*n > total+(2+total/32)*n
}

// pause waits, before the worker accepts a connection, while it is over
// its share and the others accept, or until stop says so.
func (p *acceptPacer) pause(stop func() bool) {
	others, theirs, accepted := p.board.Others(p.seat)
	if p.stalled && accepted == p.stalledAt {
		return
	}
	p.stalled = false
	var waited time.Duration
	for overShare(p.mine.Open.Load(), theirs, others) && !stop() {
		if waited >= acceptPauseMax {
			p.stalled, p.stalledAt = true, accepted
			return
		}
		p.sleep(acceptPauseStep)
		waited += acceptPauseStep
		var now uint64
		others, theirs, now = p.board.Others(p.seat)
		if now != accepted {
			accepted, waited = now, 0
		}
	}
}

// accepted counts a connection the worker accepted.
func (p *acceptPacer) accepted() { p.mine.Accepted.Add(1) }
