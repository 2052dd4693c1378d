package ipc

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A Bell is a word of memory the manager shares with one worker: the
// version of the last pool change the manager has written to that worker's
// pipe. The changes themselves travel over the pipe; the bell only lets a
// busy worker see, without a system call, that one is waiting there.
//
// Why: Go's scheduler polls the network only when it has no goroutine left
// to run, so a worker busy with requests can leave a readable pipe unread
// for milliseconds. A worker that reads the bell on each request reads the
// pipe itself when a change has arrived, before it routes the request; so
// a change rung is in force, and the admin API answers once it is rung.
type Bell struct {
	mem []byte
	v   *atomic.Uint64
}

// bellSize is the size of a bell's file: one 64-bit word.
const bellSize = 8

// BellEnv names the environment variable by which the manager tells a
// worker the file descriptor of its bell. A worker without it has no bell.
const BellEnv = "WELDR_BELL_FD"

// LogFormatEnv names the environment variable by which the manager tells a
// worker log.format ("text" or "json"), for what the worker logs before the
// manager's settings reach it.
const LogFormatEnv = "WELDR_WORKER_LOG_FORMAT"

// NewBell makes a bell for the manager to ring, and the file to hand the
// worker, which the caller closes once the worker has it.
func NewBell() (*Bell, *os.File, error) {
	mem, f, err := newShared("bell", bellSize)
	if err != nil {
		return nil, nil, err
	}
	return newBell(mem), f, nil
}

// OpenBell maps the bell the manager passed as file descriptor fd,
// read-only, and on success closes fd. Anything but a bell (a sealed
// memory file of a bell's size) is refused and left open.
func OpenBell(fd int) (*Bell, error) {
	mem, err := openShared(fd, "bell", func(size int64) error {
		if size != bellSize {
			return fmt.Errorf("%d bytes, want %d", size, bellSize)
		}
		return nil
	}, unix.PROT_READ)
	if err != nil {
		return nil, err
	}
	return newBell(mem), nil
}

// newBell is the bell in mem, a mapping of a bell's file. The mapping is
// page-aligned, so the word is too: atomic access is sound, and it is the
// same word in both processes. (Not on ARMv6, whose 64-bit atomics take a
// lock of their own process: there a worker could read a torn version and
// catch up late, routing a request by a pool the admin API has already
// answered for.)
func newBell(mem []byte) *Bell {
	return &Bell{mem: mem, v: (*atomic.Uint64)(unsafe.Pointer(&mem[0]))}
}

// Ring records that changes up to version v are in the worker's pipe.
// Versions rung must not decrease.
func (b *Bell) Ring(v uint64) { b.v.Store(v) }

// Version is the last version rung.
func (b *Bell) Version() uint64 { return b.v.Load() }

// Close unmaps the bell. It must not be used after.
func (b *Bell) Close() error { return unix.Munmap(b.mem) }
