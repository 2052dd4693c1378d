package memtrim

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
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
	// The process goes on working: the code comes back as it runs.
	if _, err := residentKB(); err != nil {
		t.Fatal(err)
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
