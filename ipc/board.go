package ipc

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A Board is memory the manager shares with all of its workers: a seat for
// each worker slot, where the worker counts the client connections it holds
// open and says when it stops accepting, and the manager marks whether a
// worker sits there.
//
// Why: the workers accept from one listening socket, and a worker that
// happens to be running when many connections arrive at once takes them
// all while the others sleep. From the board a worker can tell that it
// holds more than its share, and leave new connections to the others for
// a moment (see the worker's acceptPacer).
type Board struct {
	mem   []byte
	seats []Seat
}

// A Seat is one worker slot's place on the board.
type Seat struct {
	// taken is written by the manager: 1 from the worker's Ready until it
	// is gone.
	taken atomic.Uint64
	// Open and Out are written by the worker in the seat: the client
	// connections it holds open, and 1 once it has stopped accepting (it
	// drains).
	Open atomic.Int64
	Out  atomic.Uint64
	_    [seatSize - 24]byte // a cache line each: workers do not share one
}

const (
	seatSize = 64
	// maxSeats bounds a board as the configuration bounds the workers.
	maxSeats = 1024
)

// A seat is seatSize bytes: these compile only if so.
var (
	_ [seatSize - unsafe.Sizeof(Seat{})]byte
	_ [unsafe.Sizeof(Seat{}) - seatSize]byte
)

// BoardEnv and BoardSeatEnv name the environment variables by which the
// manager tells a worker the file descriptor of the board and its seat's
// number. A worker without them has no board.
const (
	BoardEnv     = "WELDR_BOARD_FD"
	BoardSeatEnv = "WELDR_BOARD_SEAT"
)

// NewBoard makes a board of n seats for the manager, and the file to hand
// each worker, which the caller closes once every worker has it.
func NewBoard(n int) (*Board, *os.File, error) {
	if n < 1 || n > maxSeats {
		return nil, nil, fmt.Errorf("creating a board: %d seats, want 1..%d", n, maxSeats)
	}
	mem, f, err := newShared("board", n*seatSize)
	if err != nil {
		return nil, nil, err
	}
	return newBoard(mem), f, nil
}

// OpenBoard maps the board the manager passed as file descriptor fd, for
// the worker in seat, and on success closes fd. Anything but a board (a
// sealed memory file of whole seats, with a seat numbered seat) is refused
// and left open.
func OpenBoard(fd, seat int) (*Board, error) {
	mem, err := openShared(fd, "board", func(size int64) error {
		switch n := size / seatSize; {
		case size%seatSize != 0 || n > maxSeats:
			return fmt.Errorf("%d bytes, want 1 to %d seats of %d", size, maxSeats, seatSize)
		case seat < 0 || int64(seat) >= n:
			return fmt.Errorf("seat %d of %d does not exist", seat, n)
		}
		return nil
	}, unix.PROT_READ|unix.PROT_WRITE)
	if err != nil {
		return nil, err
	}
	return newBoard(mem), nil
}

// newBoard is the board in mem, a mapping of a board's file. The mapping is
// page-aligned, so every seat's words are aligned for atomic access.
func newBoard(mem []byte) *Board {
	return &Board{mem: mem, seats: unsafe.Slice((*Seat)(unsafe.Pointer(&mem[0])), len(mem)/seatSize)}
}

// Seat is seat i, which must exist.
func (b *Board) Seat(i int) *Seat { return &b.seats[i] }

// Sit marks seat i as taken by a ready worker.
func (b *Board) Sit(i int) { b.seats[i].taken.Store(1) }

// Leave marks seat i as empty and clears it, once its worker is gone.
func (b *Board) Leave(i int) {
	s := &b.seats[i]
	s.taken.Store(0)
	s.Open.Store(0)
	s.Out.Store(0)
}

// Others tallies the seats other than seat i whose workers accept: how
// many there are, and the connections they hold open.
func (b *Board) Others(i int) (workers int, open int64) {
	for j := range b.seats {
		if s := &b.seats[j]; j != i && s.taken.Load() != 0 && s.Out.Load() == 0 {
			workers++
			open += max(0, s.Open.Load())
		}
	}
	return workers, open
}

// Close unmaps the board. It must not be used after.
func (b *Board) Close() error { return unix.Munmap(b.mem) }
