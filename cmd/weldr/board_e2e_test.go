package main

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"net/http"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/weldr-proxy/weldr/ipc"
)

// The workers count their client connections on the board the manager
// shares with them, which /metrics shows by slot. A worker's seat is taken
// while it serves; once it dies the seat is left, and counts nothing, until
// its replacement is ready.
func TestWorkersCountTheirConnectionsOnTheBoard(t *testing.T) {
	d := start(t, options{workers: 2})
	d.register(t, backend(t, "a").URL)
	slots := func() [2]int64 {
		return [2]int64{d.metric(t, `weldr_worker_connections{slot="0"}`), d.metric(t, `weldr_worker_connections{slot="1"}`)}
	}
	if got := slots(); got != [2]int64{0, 0} {
		t.Fatalf("weldr_worker_connections before any client = %v, want 0 in both slots", got)
	}

	const n = 40
	for i := range n {
		if code, body := dialKeptAlive(t, d.proxy).roundTrip(t); code != http.StatusOK || body != "GET a" {
			t.Fatalf("connection %d: GET = %d %q, want 200 from a", i, code, body)
		}
	}
	before := slots()
	if before[0]+before[1] != n {
		t.Fatalf("weldr_worker_connections = %v with %d connections open, want them to add up to %d", before, n, n)
	}
	t.Logf("%d connections opened one after another: %v by slot", n, before)

	// The seats' first words, in the manager's mapping of the board: 1
	// while taken.
	taken := func() [2]uint64 {
		t.Helper()
		b, err := mappedBytes(d.pid(t), "weldr-board", 2*64)
		if errors.Is(err, fs.ErrPermission) {
			t.Skipf("cannot read the manager's memory here: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		return [2]uint64{binary.NativeEndian.Uint64(b), binary.NativeEndian.Uint64(b[64:])}
	}
	if got := taken(); got != [2]uint64{1, 1} {
		t.Fatalf("seats taken = %v with both workers ready, want [1 1]", got)
	}

	workers := children(d.pid(t))
	if len(workers) != 2 {
		t.Fatalf("weldr runs %d workers, want 2", len(workers))
	}
	if err := syscall.Kill(workers[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Its replacement starts after at least 100 ms: the seat is seen left.
	waitFor(t, 10*time.Second, "the killed worker's seat to be left", func() bool {
		got := taken()
		return got[0] == 0 || got[1] == 0
	})
	waitFor(t, 10*time.Second, "a replacement worker", func() bool {
		now := children(d.pid(t))
		return len(now) == 2 && !slices.Contains(now, workers[0]) && d.metric(t, "weldr_workers_ready") == 2
	})
	if got := taken(); got != [2]uint64{1, 1} {
		t.Errorf("seats taken = %v once the replacement is ready, want [1 1]", got)
	}
	if got := slots(); got != [2]int64{0, before[1]} && got != [2]int64{before[0], 0} {
		t.Errorf("weldr_worker_connections after a worker was replaced = %v, want %v with one slot at 0", got, before)
	}
}

// What the manager passes a worker in its environment is checked, and a
// refusal names the variable or the board.
func TestOpenBoardSaysWhatIsWrong(t *testing.T) {
	board, f, err := ipc.NewBoard(2)
	if err != nil {
		t.Fatal(err)
	}
	defer board.Close()
	defer f.Close()
	fd := strconv.Itoa(int(f.Fd()))
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	pipe := strconv.Itoa(p[0])
	for _, c := range []struct{ fd, seat, want string }{
		{"five", "0", `WELDR_BOARD_FD="five": not a file descriptor`},
		{fd, "", `WELDR_BOARD_SEAT="": not a seat number`},
		{fd, "2", "opening the board: fd " + fd + ": seat 2 of 2 does not exist"},
		{pipe, "0", "opening the board: fd " + pipe + " is not one (want a sealed memory file)"},
	} {
		if b, _, err := openBoard(c.fd, c.seat); err == nil {
			b.Close()
			t.Errorf("openBoard(%q, %q) = nil error, want %q", c.fd, c.seat, c.want)
		} else if err.Error() != c.want {
			t.Errorf("openBoard(%q, %q) = %q, want %q", c.fd, c.seat, err, c.want)
		}
	}
	dup, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	b, seat, err := openBoard(strconv.Itoa(dup), "1") // closes dup
	if err != nil || seat != 1 {
		syscall.Close(dup)
		t.Fatalf("openBoard(a board, seat 1) = %d, %v", seat, err)
	}
	b.Close()
}
