// Package memtrim gives back to the system the memory an idle weldr
// process holds without needing it.
package memtrim

import (
	"bytes"
	"os"
	"reflect"
	"runtime/debug"
	"strconv"
	"syscall"
)

// Trim gives back to the system what an idle process holds without
// needing it: the garbage, the buffers sync.Pools keep across one
// collection (hence two), and the pages of the program's code and
// read-only data that are mapped but cold. It is meant for quiet moments;
// what is needed again comes back on first use.
func Trim() {
	debug.FreeOSMemory()
	debug.FreeOSMemory()
	dropColdPages()
}

// dropColdPages unmaps from this process the resident pages of its
// executable's read-only mappings (code, read-only data). They stay in the
// page cache, shared and clean; the ones touched again fault back in from
// there. The start-up code of every package, the TOML and config parsing,
// the IPC set-up, and so on, are used once and would otherwise count in
// each process's resident memory for its whole life: about 6 MB for each
// of weldr's processes, of which the proxy path needs well under a
// quarter. It returns how many bytes it advised.
func dropColdPages() int {
	self := uint64(reflect.ValueOf(dropColdPages).Pointer())
	maps, err := readMappings()
	if err != nil {
		return 0
	}
	for _, m := range maps {
		if self >= m.start && self < m.end {
			return drop(maps, m.path)
		}
	}
	return 0
}

// mapping is one entry of /proc/self/smaps.
type mapping struct {
	start, end uint64
	writable   bool
	path       string
	anonKB     int // KiB of the mapping's pages that are private copies; -1: unknown
}

// drop advises away the mappings of path that are not writable and hold
// no private copy of a page. A read-only mapping can hold such copies: the
// dynamic loader writes relocations into a position-independent binary's
// RELRO segment before making it read-only, and a debugger writes its
// breakpoints into code. Dropping those would bring back the file's bytes
// in their place; writable mappings are never touched either.
func drop(maps []mapping, path string) int {
	n := 0
	for _, m := range maps {
		if m.path != path || m.writable || m.anonKB != 0 {
			continue
		}
		_, _, e := syscall.Syscall(syscall.SYS_MADVISE, uintptr(m.start), uintptr(m.end-m.start), syscall.MADV_DONTNEED)
		if e == 0 {
			n += int(m.end - m.start)
		}
	}
	return n
}

// readMappings parses /proc/self/smaps.
func readMappings() ([]mapping, error) {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return nil, err
	}
	var out []mapping
	for line := range bytes.Lines(b) {
		f := bytes.Fields(line)
		if len(f) == 0 {
			continue
		}
		if dash := bytes.IndexByte(f[0], '-'); dash > 0 && len(f) >= 5 {
			// start-end perms offset dev inode [path]
			start, err1 := strconv.ParseUint(string(f[0][:dash]), 16, 64)
			end, err2 := strconv.ParseUint(string(f[0][dash+1:]), 16, 64)
			if err1 != nil || err2 != nil {
				continue
			}
			// anonKB stays -1 (never drop) unless an Anonymous line says.
			m := mapping{start: start, end: end, writable: len(f[1]) < 2 || f[1][1] != '-', anonKB: -1}
			if len(f) >= 6 {
				m.path = string(bytes.Join(f[5:], []byte(" ")))
			}
			out = append(out, m)
			continue
		}
		if len(out) > 0 && len(f) >= 2 && string(f[0]) == "Anonymous:" {
			kb, err := strconv.Atoi(string(f[1]))
			if err != nil {
				kb = -1 // unreadable: never drop
			}
			out[len(out)-1].anonKB = kb
		}
	}
	return out, nil
}
