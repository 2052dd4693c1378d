package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Each worker shares a bell with its manager (see ipc.Bell), which rings it
// with the version of every pool change once the change is in that
// worker's pipe: after each change, every worker's bell holds its version,
// the same in each, and higher than before.
func TestWorkersBellsRingWithEachChange(t *testing.T) {
	d := start(t, options{})
	a, b := backend(t, "a"), backend(t, "b")
	bu, err := url.Parse(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		do   func()
	}{
		{"add a", func() { d.register(t, a.URL) }},
		{"add b", func() { d.register(t, b.URL) }},
		{"remove b", func() {
			if code, body := d.api(t, "DELETE", "/servers/"+strings.Replace(bu.Host, ":", "/", 1), ""); code != http.StatusNoContent {
				t.Fatalf("DELETE b = %d %s, want 204", code, body)
			}
		}},
	}
	var last uint64
	for _, st := range steps {
		st.do()
		// A change the pipeWriter sent is rung after the write returns,
		// which may be after the API answered: wait for it.
		var rung []uint64
		waitFor(t, 10*time.Second, "the workers' bells to ring for "+st.name, func() bool {
			workers := children(d.pid(t))
			if len(workers) != 2 {
				return false
			}
			rung = rung[:0]
			for _, w := range workers {
				v, err := bellOf(w)
				if errors.Is(err, fs.ErrPermission) {
					t.Skipf("cannot read a worker's memory here: %v", err)
				}
				if err != nil {
					t.Fatalf("worker %d: %v", w, err)
				}
				rung = append(rung, v)
			}
			return rung[0] == rung[1] && rung[0] > last
		})
		last = rung[0]
	}
}

// bellOf reads the word in worker pid's mapping of its bell.
func bellOf(pid int) (uint64, error) {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(maps), "\n") {
		if !strings.HasSuffix(line, "/memfd:weldr-bell (deleted)") {
			continue
		}
		start, _, _ := strings.Cut(line, "-")
		addr, err := strconv.ParseInt(start, 16, 64)
		if err != nil {
			return 0, fmt.Errorf("maps line %q: %w", line, err)
		}
		mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
		if err != nil {
			return 0, err
		}
		defer mem.Close()
		var w [8]byte
		if _, err := mem.ReadAt(w[:], addr); err != nil {
			return 0, err
		}
		return binary.NativeEndian.Uint64(w[:]), nil
	}
	return 0, errors.New("no bell mapped")
}
