package sockio

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxPipe is the size asked of a splice pipe, and the most one splice(2)
// into it moves: 1 MiB, the default most an unprivileged process may ask
// (/proc/sys/fs/pipe-max-size), as Go's own splice asks.
const maxPipe = 1 << 20

// ErrNoPipe is Splice's error when it could not make a pipe (out of file
// descriptors, say): nothing was moved, and neither socket is to blame.
var ErrNoPipe = errors.New("no pipe to splice through")

// Splice moves n bytes from src's socket to dst's without copying them
// through user space: splice(2) into a pipe and out of it again, as
// net.TCPConn's ReadFrom does, but with raw system calls, waiting for
// readiness through the poller (see the package comment). Go's own splice
// tells the scheduler about each call, and a splice moving part of a large
// body on loopback lasts long enough for the runtime's sysmon thread to
// hand the processor to another thread, and then to keep waking to look
// again: in a worker relaying 1 MiB answers, sysmon took a seventh of its
// CPU time.
//
// It returns the bytes that reached dst. An error from src is named
// "read", as Conn.Read names it, and src's end before n bytes is io.EOF;
// an error from dst is named "write". Src's Retry applies as in Read.
func Splice(dst, src *Conn, n int64) (int64, error) {
	if n <= 0 {
		return 0, nil
	}
	s, err := splicers.get()
	if err != nil {
		return 0, err
	}
	s.done = 0
	for s.done < n {
		s.want, s.in, s.errno = int(min(n-s.done, maxPipe)), 0, 0
		err := src.Raw.Read(s.fillFn)
		for err != nil && src.Retry != nil && src.Retry(err) {
			err = src.Raw.Read(s.fillFn)
		}
		if err = src.Err("read", err, s.errno); err == nil && s.in == 0 {
			err = io.EOF
		}
		if err != nil {
			done := s.done
			splicers.put(s) // empty: a failed fill moved nothing
			return done, err
		}
		s.errno = 0
		if err := dst.Err("write", dst.Raw.Write(s.drainFn), s.errno); err != nil {
			s.close() // it may still hold bytes
			return s.done, err
		}
	}
	splicers.put(s)
	return n, nil
}

// splicer is a pipe to splice through, with its callbacks, made once, and
// the state of the Splice under way.
type splicer struct {
	r, w    uintptr // the pipe's ends
	fillFn  func(fd uintptr) bool
	drainFn func(fd uintptr) bool

	want  int   // the most to move into the pipe
	in    int   // bytes in the pipe
	done  int64 // bytes that reached dst
	errno syscall.Errno
}

func newSplicer() (*splicer, error) {
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoPipe, err)
	}
	// A smaller pipe works too, with more calls: the error is ignored.
	syscall.Syscall(syscall.SYS_FCNTL, uintptr(fds[1]), unix.F_SETPIPE_SZ, maxPipe)
	s := &splicer{r: uintptr(fds[0]), w: uintptr(fds[1])}
	s.fillFn, s.drainFn = s.fill, s.drain
	return s, nil
}

func (s *splicer) close() {
	syscall.Close(int(s.r))
	syscall.Close(int(s.w))
}

// fill splices up to want bytes from src's socket (fd) into the empty
// pipe; false asks the poller to wait for data.
func (s *splicer) fill(fd uintptr) bool {
	n, again, e := splice(fd, s.w, s.want)
	if again {
		return false
	}
	s.in, s.errno = n, e
	return true
}

// drain splices all the pipe holds into dst's socket (fd); false asks the
// poller to wait for room.
func (s *splicer) drain(fd uintptr) bool {
	for s.in > 0 {
		n, again, e := splice(s.r, fd, s.in)
		if again {
			return false
		}
		if e != 0 {
			s.errno = e
			return true
		}
		s.in -= n
		s.done += int64(n)
	}
	return true
}

// splice makes one splice(2) call of up to n bytes, again on EINTR. again
// reports EAGAIN: nothing to read, or no room to write, yet.
func splice(in, out uintptr, n int) (moved int, again bool, errno syscall.Errno) {
	const flags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
	for {
		r, _, e := syscall.RawSyscall6(unix.SYS_SPLICE, in, 0, out, 0, uintptr(n), flags)
		switch e {
		case 0:
			return int(r), false, 0
		case syscall.EINTR:
		case syscall.EAGAIN:
			return 0, true, 0
		default:
			return 0, false, e
		}
	}
}

// splicerPool keeps empty pipes between Splices, at most maxIdleSplicers
// of them: making one takes three system calls. It keeps few, as an idle
// pipe still counts in full against the user's allowance of pipe pages
// (fs.pipe-user-pages-soft, 64 MiB by default), past which an unprivileged
// process gets 8 KiB pipes.
type splicerPool struct {
	mu   sync.Mutex // guards idle
	idle []*splicer
}

const maxIdleSplicers = 8

var splicers splicerPool

func (sp *splicerPool) get() (*splicer, error) {
	sp.mu.Lock()
	if n := len(sp.idle); n > 0 {
		s := sp.idle[n-1]
		sp.idle = sp.idle[:n-1]
		sp.mu.Unlock()
		return s, nil
	}
	sp.mu.Unlock()
	return newSplicer()
}

// put takes back a splicer whose pipe is empty.
func (sp *splicerPool) put(s *splicer) {
	sp.mu.Lock()
	if len(sp.idle) < maxIdleSplicers {
		sp.idle = append(sp.idle, s)
		s = nil
	}
	sp.mu.Unlock()
	if s != nil {
		s.close()
	}
}
