package memtrim

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

func TestDropColdPages(t *testing.T) {
	before, err := residentKB()
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	if n := dropColdPages(); n == 0 {
		t.Fatal("found no read-only mapping of the executable to drop")
	}
	after, err := residentKB()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("resident code and read-only data: %d KiB before, %d KiB after", before, after)
	if after >= before {
		t.Fatalf("resident code and read-only data did not shrink: %d KiB before, %d KiB after", before, after)
	}
	Trim() // and the process goes on working
}

// A read-only mapping that holds a private copy of a page (as the RELRO
// segment of a position-independent binary does once relocated) is left
// alone; a clean one of the same file is dropped.
func TestDropSkipsMappingsWithPrivateCopies(t *testing.T) {
	page := os.Getpagesize()
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, bytes.Repeat([]byte("a"), 3*page), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	relro, err := syscall.Mmap(int(f.Fd()), 0, 3*page, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(relro)
	relro[0] = 'b' // a private copy of the first page, as a relocation makes
	if err := syscall.Mprotect(relro, syscall.PROT_READ); err != nil {
		t.Fatal(err)
	}
	clean, err := syscall.Mmap(int(f.Fd()), 0, 3*page, syscall.PROT_READ, syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(clean)
	_ = clean[0] + clean[page] // resident

	maps, err := readMappings()
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	if n := drop(maps, path); n != 3*page {
		t.Errorf("dropped %d bytes, want %d (the clean mapping only)", n, 3*page)
	}
	if relro[0] != 'b' {
		t.Fatalf("the private copy was dropped: reads %q, want 'b'", relro[0])
	}
	if clean[0] != 'a' {
		t.Fatalf("the clean mapping reads %q after the drop, want 'a'", clean[0])
	}
}

// residentKB returns the resident size in KiB of this process's mappings of
// its executable that are not writable, from /proc/self/smaps.
func residentKB() (int, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, err
	}
	kb, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := bytes.Fields(sc.Bytes())
		switch {
		case len(fields) >= 6 && bytes.IndexByte(fields[0], '-') > 0:
			in = string(bytes.Join(fields[5:], []byte(" "))) == exe && len(fields[1]) >= 2 && fields[1][1] != 'w'
		case in && len(fields) >= 2 && string(fields[0]) == "Rss:":
			v, _ := strconv.Atoi(string(fields[1]))
			kb += v
		}
	}
	return kb, sc.Err()
}
