package ipc

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// What the manager shares with its workers in memory (the bell, the
// board) lives in sealed memory files: their size is fixed, so a mapping
// of one cannot fault, and the receiving side can tell them from other
// files.
const shmSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// newShared makes a sealed memory file of size bytes, named name, and maps
// it read-write. The caller closes the file once it has handed it on.
func newShared(name string, size int) ([]byte, *os.File, error) {
	fd, err := unix.MemfdCreate("weldr-"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_NOEXEC_SEAL)
	if err == unix.EINVAL { // a kernel before 6.3, without MFD_NOEXEC_SEAL
		fd, err = unix.MemfdCreate("weldr-"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("creating a %s: memfd_create: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("creating a %s: %w", name, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, shmSeals); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("creating a %s: sealing it: %w", name, err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("mapping the %s: %w", name, err)
	}
	return mem, f, nil
}

// openShared maps the sealed memory file fd with protection prot, and on
// success closes fd. Anything else is refused and left open, as is a file
// whose size check says what is wrong with it.
func openShared(fd int, name string, check func(size int64) error, prot int) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("opening the %s: %w", name, err)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&shmSeals != shmSeals || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size <= 0 {
		return nil, fmt.Errorf("opening the %s: fd %d is not one (want a sealed memory file)", name, fd)
	}
	if err := check(st.Size); err != nil {
		return nil, fmt.Errorf("opening the %s: fd %d: %w", name, fd, err)
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping the %s: %w", name, err)
	}
	unix.Close(fd) // the mapping stays
	return mem, nil
}
