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
	big := filepath.Join(t.TempDir(), "page")
	if err := os.WriteFile(big, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	fbig, err := os.Open(big)
	if err != nil {
		t.Fatal(err)
	}
	defer fbig.Close()
	// Files of a bell's size, but not sealed: an empty one, as the cgroup
	// files the Go runtime keeps open report, and one of 8 bytes.
	empty := filepath.Join(t.TempDir(), "empty")
	eight := filepath.Join(t.TempDir(), "eight")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(eight, make([]byte, 8), 0o600); err != nil {
		t.Fatal(err)
	}
	fempty, err := os.Open(empty)
	if err != nil {
		t.Fatal(err)
	}
	defer fempty.Close()
	feight, err := os.Open(eight)
	if err != nil {
		t.Fatal(err)
	}
	defer feight.Close()
	unsealed, err := unix.MemfdCreate("not-a-bell", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unsealed)
	if err := unix.Ftruncate(unsealed, 8); err != nil {
		t.Fatal(err)
	}
	for name, fd := range map[string]int{
		"a pipe": p[0], "a 4 KiB file": int(fbig.Fd()), "an empty file": int(fempty.Fd()),
		"an 8-byte file": int(feight.Fd()), "an unsealed 8-byte memfd": unsealed, "a closed descriptor": -1,
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
