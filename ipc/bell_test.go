package ipc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// What the manager rings, a worker's mapping of the same file reads.
func TestBellRingsAcrossMappings(t *testing.T) {
	ours, f, err := NewBell()
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := OpenBell(fd)
	if err != nil {
		unix.Close(fd)
		t.Fatalf("OpenBell(a bell) = %v", err)
	}
	defer theirs.Close()
	if v := theirs.Version(); v != 0 {
		t.Errorf("a new bell reads %d, want 0", v)
	}
	for _, v := range []uint64{1, 2, 1 << 40} {
		ours.Ring(v)
		if got := theirs.Version(); got != v {
			t.Errorf("after Ring(%d) the other mapping reads %d", v, got)
		}
	}
}

// A descriptor that is not a bell is refused and left open: a worker
// started without a bell may hold something else under that number.
func TestOpenBellRefusesOtherFiles(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	unsealed := unsealedMemfd(t, 8)
	for name, fd := range map[string]int{
		"a pipe": p[0], "a 4 KiB file": fileOf(t, 4096),
		// A bell's size, or none as the cgroup files the Go runtime
		// keeps open report, but not sealed.
		"an empty file": fileOf(t, 0), "an 8-byte file": fileOf(t, 8), "an unsealed 8-byte memfd": unsealed,
		"a closed descriptor": -1,
	} {
		b, err := OpenBell(fd)
		if err == nil {
			b.Close()
			t.Errorf("OpenBell(%s) = nil error, want a refusal", name)
			continue
		}
		if !strings.Contains(err.Error(), "bell") {
			t.Errorf("OpenBell(%s) = %v, want an error that names the bell", name, err)
		}
		if fd >= 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
				t.Errorf("OpenBell(%s) closed it: %v", name, err)
			}
		}
	}
}

// fileOf returns the descriptor of a regular file of size zero bytes,
// closed when the test ends.
func fileOf(t *testing.T, size int) int {
	t.Helper()
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

// unsealedMemfd returns a memory file of size bytes without seals, closed
// when the test ends.
func unsealedMemfd(t *testing.T, size int) int {
	t.Helper()
	fd, err := unix.MemfdCreate("not-shared", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatal(err)
	}
	return fd
}
