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
// quarter. Writable mappings are never touched, so nothing is lost. It
// returns how many bytes it advised.
func dropColdPages() int {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0
	}
	self := uint64(reflect.ValueOf(dropColdPages).Pointer())
	type area struct {
		start, end uint64
		path       string
	}
	var exe string // the path of the mapping that holds this code
	var ro []area
	for line := range bytes.Lines(maps) {
		// start-end perms offset dev inode path
		f := bytes.Fields(line)
		if len(f) < 6 {
			continue
		}
		dash := bytes.IndexByte(f[0], '-')
		if dash < 0 {
			continue
		}
		start, err1 := strconv.ParseUint(string(f[0][:dash]), 16, 64)
		end, err2 := strconv.ParseUint(string(f[0][dash+1:]), 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		path := string(bytes.Join(f[5:], []byte(" ")))
		if self >= start && self < end {
			exe = path
		}
		if len(f[1]) >= 2 && f[1][1] != 'w' {
			ro = append(ro, area{start, end, path})
		}
	}
	n := 0
	for _, a := range ro {
		if exe == "" || a.path != exe {
			continue
		}
		_, _, e := syscall.Syscall(syscall.SYS_MADVISE, uintptr(a.start), uintptr(a.end-a.start), syscall.MADV_DONTNEED)
		if e == 0 {
			n += int(a.end - a.start)
		}
	}
	return n
}
