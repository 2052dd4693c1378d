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

// bellSeals are the seals a bell's file carries: its size is fixed, so a
// mapping of it cannot fault, and OpenBell can tell a bell from other files.
const bellSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// NewBell makes a bell for the manager to ring, and the file to hand the
// worker, which the caller closes once the worker has it.
func NewBell() (*Bell, *os.File, error) {
	fd, err := unix.MemfdCreate("weldr-bell", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_NOEXEC_SEAL)
	if err == unix.EINVAL { // a kernel before 6.3, without MFD_NOEXEC_SEAL
		fd, err = unix.MemfdCreate("weldr-bell", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("creating a bell: memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "bell")
	if err := f.Truncate(bellSize); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("creating a bell: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, bellSeals); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("creating a bell: sealing it: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, bellSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("mapping the bell: %w", err)
	}
	return newBell(mem), f, nil
}

// OpenBell maps the bell the manager passed as file descriptor fd,
// read-only, and on success closes fd. Anything but a bell (a sealed
// memory file of a bell's size) is refused and left open.
func OpenBell(fd int) (*Bell, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("opening the bell: %w", err)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&bellSeals != bellSeals || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != bellSize {
		return nil, fmt.Errorf("opening the bell: fd %d is not one (want a sealed memory file of 8 bytes)", fd)
	}
	mem, err := unix.Mmap(fd, 0, bellSize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping the bell: %w", err)
	}
	unix.Close(fd) // the mapping stays
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
