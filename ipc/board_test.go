package ipc

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// newTestBoard is a board of n seats and its file, closed when the test
// ends.
func newTestBoard(t *testing.T, n int) (*Board, *os.File) {
	t.Helper()
	b, f, err := NewBoard(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); b.Close() })
	return b, f
}

// openTheirs opens the worker's mapping of the manager's board file, in
// seat, as a worker process would.
func openTheirs(t *testing.T, fd, seat int) *Board {
	t.Helper()
	dup, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenBoard(dup, seat)
	if err != nil {
		unix.Close(dup)
		t.Fatalf("OpenBoard(a board, seat %d) = %v", seat, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// What workers write in their seats, the manager and the other workers
// read through their own mappings; a seat counts only while taken, and
// leaving clears it for the next worker.
func TestBoardSharesSeats(t *testing.T) {
	ours, f := newTestBoard(t, 3)
	w0, w1, w2 := openTheirs(t, int(f.Fd()), 0), openTheirs(t, int(f.Fd()), 1), openTheirs(t, int(f.Fd()), 2)

	w1.Seat(1).Open.Store(7)
	w2.Seat(2).Open.Store(5)
	if n, open := w0.Others(0); n != 0 || open != 0 {
		t.Errorf("with no seat taken, Others(0) = %d, %d, want 0, 0", n, open)
	}
	ours.Sit(0)
	ours.Sit(1)
	ours.Sit(2)
	if n, open := w0.Others(0); n != 2 || open != 12 {
		t.Errorf("Others(0) = %d workers, %d open, want 2, 12", n, open)
	}
	if n, open := w2.Others(2); n != 2 || open != 7 {
		t.Errorf("Others(2) = %d workers, %d open, want 2, 7 (seat 0 holds nothing)", n, open)
	}
	// A count gone below zero (a bug, or a torn write) does not lower
	// the others' totals.
	w2.Seat(2).Open.Store(-4)
	if _, open := w0.Others(0); open != 7 {
		t.Errorf("with seat 2 at -4, Others(0) counts %d open, want 7", open)
	}
	// A worker that drains is left out.
	w1.Seat(1).Out.Store(1)
	if n, open := w0.Others(0); n != 1 || open != 0 {
		t.Errorf("with seat 1 out, Others(0) = %d, %d, want 1, 0", n, open)
	}
	ours.Leave(1)
	if s := ours.Seat(1); s.Open.Load() != 0 || s.Out.Load() != 0 {
		t.Errorf("a seat left still counts %d open, out %d", s.Open.Load(), s.Out.Load())
	}
	ours.Sit(1) // its next worker
	if n, open := w0.Others(0); n != 2 || open != 0 {
		t.Errorf("with seat 1 taken again, Others(0) = %d, %d, want 2, 0", n, open)
	}
}

func TestNewBoardSeats(t *testing.T) {
	for _, n := range []int{0, -1, maxSeats + 1} {
		if b, f, err := NewBoard(n); err == nil {
			b.Close()
			f.Close()
			t.Errorf("NewBoard(%d) = nil error, want a refusal", n)
		}
	}
}

// Anything but a board, or a seat it does not have, is refused and the
// descriptor left open.
func TestOpenBoardRefusesOtherFiles(t *testing.T) {
	_, f := newTestBoard(t, 2)
	bell, bellFile, err := NewBell()
	if err != nil {
		t.Fatal(err)
	}
	defer bell.Close()
	defer bellFile.Close()
	unsealed := unsealedMemfd(t, 64)
	for _, c := range []struct {
		name     string
		fd, seat int
		want     string
	}{
		{"a bell", int(bellFile.Fd()), 0, "8 bytes, want 1 to 1024 seats of 64"},
		{"an unsealed 64-byte memfd", unsealed, 0, "not one"},
		{"a 64-byte file", fileOf(t, 64), 0, "not one"},
		{"an empty file", fileOf(t, 0), 0, "not one"},
		{"a closed descriptor", -1, 0, "bad file descriptor"},
		{"a board, seat 2 of 2", int(f.Fd()), 2, "seat 2 of 2 does not exist"},
		{"a board, seat -1", int(f.Fd()), -1, "seat -1 of 2 does not exist"},
	} {
		b, err := OpenBoard(c.fd, c.seat)
		if err == nil {
			b.Close()
			t.Errorf("OpenBoard(%s) = nil error, want a refusal", c.name)
			continue
		}
		if !strings.Contains(err.Error(), "board") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("OpenBoard(%s) = %v, want an error that names the board and says %q", c.name, err, c.want)
		}
		if c.fd >= 0 {
			if _, err := unix.FcntlInt(uintptr(c.fd), unix.F_GETFD, 0); err != nil {
				t.Errorf("OpenBoard(%s) closed it: %v", c.name, err)
			}
		}
	}
}
