package manager

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weldr-proxy/weldr/ipc"
)

// workerProc is one running worker process.
type workerProc struct {
	slot int
	cmd  *exec.Cmd
	// out feeds the pipeWriter. Broadcasts send to it without blocking
	// under Manager.mu; the supervisor closes it under the same lock once
	// the process is gone.
	out chan *ipc.Message
	// queued counts the messages sent to out that the pipeWriter has not
	// finished writing. While it is zero, nothing is being written to the
	// pipe, and broadcasts write to it themselves through raw (nil for
	// tests' fake workers) if that needs no wait. After a failed write
	// the pipeWriter drains out without counting: the worker is killed.
	queued atomic.Int64
	raw    syscall.RawConn
	// bell, if not nil, is rung with the version of each pool change once
	// it is in the pipe, by whoever wrote it there.
	bell *ipc.Bell
	// Guarded by Manager.mu.
	ready    bool
	killed   bool
	snapshot uint64 // the version of the snapshot queued for it at its start
	rings    bool   // it said on Ready that it reads its bell on every request
	applied  uint64 // the pool version the worker last said it routes by
	acks     ackLog // when it began to route by later versions, as Applied says
}

// ackLog keeps a worker's latest acknowledgements of pool versions, to tell
// when it began to route by a given one.
type ackLog struct {
	n    int // acknowledgements recorded; the latest is at (n-1) % len(acks)
	acks [64]struct {
		version uint64
		at      int64 // as ipc.Now reads it
	}
}

func (l *ackLog) add(version uint64, at int64) {
	a := &l.acks[l.n%len(l.acks)]
	a.version, a.at = version, at
	l.n++
}

// routedAt returns when the worker began to route by version v or a later
// one: the time of the oldest remembered acknowledgement that covers v.
// If older ones that covered it were forgotten, the time is later than the
// truth. It reports false if no remembered acknowledgement with a time
// covers v.
func (l *ackLog) routedAt(v uint64) (int64, bool) {
	for i := max(0, l.n-len(l.acks)); i < l.n; i++ {
		if a := l.acks[i%len(l.acks)]; a.version >= v && a.at > 0 {
			return a.at, true
		}
	}
	return 0, false
}

// outQueue is how many messages may wait for a worker. A worker that falls
// this far behind is killed; its replacement starts from a fresh snapshot.
const outQueue = 8192

// Worker restart backoff: doubled on each quick death, reset after a worker
// has lived for backoffReset.
const (
	minBackoff   = 100 * time.Millisecond
	maxBackoff   = 5 * time.Second
	backoffReset = 10 * time.Second
)

// workerSupervisor keeps one worker slot filled until the manager stops.
func (m *Manager) workerSupervisor(slot int) {
	backoff := minBackoff
	for {
		started := time.Now()
		err := m.runWorker(slot)
		if m.isStopping() {
			return
		}
		if time.Since(started) > backoffReset {
			backoff = minBackoff
		}
		m.restarts.Add(1)
		m.log.Warn("worker exited, restarting", "slot", slot, "error", err, "backoff", backoff)
		select {
		case <-time.After(backoff):
		case <-m.stopping:
			return
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// runWorker starts one worker, feeds it the pool and collects its reports
// until it exits.
func (m *Manager) runWorker(slot int) error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("creating worker socketpair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "ipc"), os.NewFile(uintptr(fds[1]), "ipc")
	conn, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		return fmt.Errorf("opening worker socketpair: %w", err)
	}
	defer conn.Close()

	// /proc/self/exe, not os.Executable(): after a package upgrade the path
	// names the new binary, and workers must match their manager.
	cmd := &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       []string{os.Args[0], "worker"},
		Env:        append(workerEnv(os.Environ()), ipc.LogFormatEnv+"="+m.cfg.Log.Format),
		Stdout:     os.Stdout,
		Stderr:     os.Stderr,
		ExtraFiles: []*os.File{m.proxyFile, theirs}, // fd 3, fd 4
	}
	// Without a bell (fd 5) the worker still gets every change, only later
	// when it is busy.
	bell, bellFile, err := ipc.NewBell()
	if err != nil {
		m.log.Warn("pool changes will reach a busy worker later", "slot", slot, "error", err)
	} else {
		defer bell.Close() // after the pipeWriter, which rings it, is done
		cmd.Env = append(cmd.Env, ipc.BellEnv+"="+strconv.Itoa(3+len(cmd.ExtraFiles)))
		cmd.ExtraFiles = append(cmd.ExtraFiles, bellFile)
	}
	// Without a board the worker accepts connections whatever the others
	// hold.
	if m.boardFile != nil {
		cmd.Env = append(cmd.Env, ipc.BoardEnv+"="+strconv.Itoa(3+len(cmd.ExtraFiles)), ipc.BoardSeatEnv+"="+strconv.Itoa(slot))
		cmd.ExtraFiles = append(cmd.ExtraFiles, m.boardFile)
	}
	err = cmd.Start()
	theirs.Close()
	if bellFile != nil {
		bellFile.Close()
	}
	if err != nil {
		return fmt.Errorf("starting worker: %w", err)
	}
	wp := &workerProc{slot: slot, cmd: cmd, out: make(chan *ipc.Message, outQueue), bell: bell}
	if sc, ok := conn.(syscall.Conn); ok {
		wp.raw, _ = sc.SyscallConn()
	}
	m.log.Debug("worker started", "slot", slot, "pid", cmd.Process.Pid)

	m.mu.Lock()
	snap := m.pool.Snapshot(m.settings)
	snap.Version = m.version
	wp.snapshot = snap.Version
	m.queue(wp, snap)
	if m.isStopping() {
		m.queue(wp, m.drainMessage()) // started as the manager began to stop
	}
	m.procs[wp] = struct{}{}
	m.mu.Unlock()

	c := ipc.NewConn(conn)
	written, reported := make(chan struct{}), make(chan struct{})
	go func() { defer close(written); m.pipeWriter(wp, c) }()
	go func() { defer close(reported); m.workerReports(wp, c) }()

	err = cmd.Wait()
	m.mu.Lock()
	delete(m.procs, wp)
	if wp.ready {
		m.setReady(-1)
	} else {
		m.notify() // admin requests may have waited for it to start
	}
	close(wp.out)
	m.mu.Unlock()
	// The worker is gone, so its end of the pipe is closed: the reports
	// reach EOF after its last stats, which must not be cut off.
	<-reported
	if m.board != nil {
		m.board.Leave(slot) // after its Ready, if it sent one, sat it down
	}
	conn.Close()
	<-written
	if err != nil {
		return fmt.Errorf("worker %d: %w", cmd.Process.Pid, err)
	}
	return errors.New("worker exited")
}

// notForWorkers prefixes the manager's environment variables that a worker
// must not inherit: tableflip's (a worker is not a new generation and must
// not act as one), and those that name a bell or a board, which the
// manager sets for each worker.
var notForWorkers = []string{"TABLEFLIP_", ipc.BellEnv + "=", ipc.BoardEnv + "=", ipc.BoardSeatEnv + "=", ipc.LogFormatEnv + "="}

// workerEnv is the manager's environment without notForWorkers.
func workerEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !slices.ContainsFunc(notForWorkers, func(p string) bool { return strings.HasPrefix(kv, p) }) {
			out = append(out, kv)
		}
	}
	return out
}

// pipeWriter sends what broadcasts queue for a worker, in order, waiting
// for the pipe as long as it takes.
func (m *Manager) pipeWriter(wp *workerProc, c *ipc.Conn) {
	for msg := range wp.out {
		err := c.Send(msg)
		rung := err == nil && msg.Version > 0 && wp.bell != nil
		if rung {
			// Before queued is decremented: writeNow rings only once it
			// is 0, so its later versions land after this one.
			wp.bell.Ring(msg.Version)
		}
		wp.queued.Add(-1)
		if rung {
			m.mu.Lock()
			m.notify() // admin requests waiting for the change to be in force
			m.mu.Unlock()
		}
		if err != nil {
			m.log.Debug("sending to worker failed", "pid", wp.cmd.Process.Pid, "error", err)
			m.mu.Lock()
			m.kill(wp)
			m.mu.Unlock()
			for range wp.out {
			}
			return
		}
	}
}

// workerReports reads what a worker sends until its pipe closes. A worker
// that sends something malformed is killed and replaced.
func (m *Manager) workerReports(wp *workerProc, c *ipc.Conn) {
	var msg ipc.Message
	for {
		if err := c.Receive(&msg); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.ECONNRESET) {
				m.log.Error("bad message from worker, replacing it", "pid", wp.cmd.Process.Pid, "error", err)
				m.mu.Lock()
				m.kill(wp)
				m.mu.Unlock()
			}
			return
		}
		m.mu.Lock()
		switch msg.Kind {
		case ipc.Ready:
			wp.applied = msg.Version
			wp.rings = msg.Bell && wp.bell != nil
			if !wp.ready {
				wp.ready = true
				m.setReady(+1)
				if m.board != nil {
					m.board.Sit(wp.slot)
				}
			}
		case ipc.Applied:
			wp.applied = msg.Version
			wp.acks.add(msg.Version, msg.At)
			m.notify()
		case ipc.ReportStats:
			m.stats.add(msg.Stats, func(id string) bool { return m.pool.Get(id) != nil })
			for _, s := range msg.Stats.Servers {
				if s.ConnectFailed > 0 {
					m.hastenCheck(s.ID)
				}
			}
		default:
			m.log.Warn("unexpected message from worker", "pid", wp.cmd.Process.Pid, "kind", msg.Kind)
		}
		m.mu.Unlock()
	}
}

// broadcast sends msgs to every worker. It must be called with m.mu held,
// right after the mutation that produced msgs, so that every worker sees
// every change in the order the pool made them. To a worker with nothing
// queued, it writes the frames itself if the pipe takes them without
// waiting: the change is on its way without waking the pipeWriter.
func (m *Manager) broadcast(msgs []*ipc.Message) {
	if len(msgs) == 0 {
		return
	}
	frames, direct := m.frames[:0], true
	for _, msg := range msgs {
		m.version++
		msg.Version = m.version
		var err error
		if frames, err = ipc.AppendFrame(frames, msg); err != nil {
			direct = false // the pipeWriter will meet the error
		}
	}
	if direct = direct && len(frames) <= writeNowMax; direct {
		m.frames = frames // a small buffer, kept for the next broadcast
	}
	for wp := range m.procs {
		if direct && m.writeNow(wp, frames) {
			continue
		}
		for _, msg := range msgs {
			m.queue(wp, msg)
		}
	}
}

// queue hands msg to wp's pipeWriter. Called with m.mu held.
func (m *Manager) queue(wp *workerProc, msg *ipc.Message) {
	if wp.killed {
		return
	}
	select {
	case wp.out <- msg:
		wp.queued.Add(1)
	default:
		m.log.Error("worker fell behind on pool updates, replacing it", "pid", wp.cmd.Process.Pid)
		m.kill(wp)
	}
}

// writeNowMax bounds the frames a broadcast writes itself (larger ones go
// to the pipeWriter); a pool change takes about a hundred bytes.
const writeNowMax = 1 << 10

// writeNow writes frames (at most writeNowMax bytes) to wp's pipe if
// nothing is queued for it and the pipe takes them at once, and reports
// whether it is done with them.
// Called with m.mu held, which orders it with other broadcasts. With
// nothing queued the pipeWriter is not writing, so raw.Write does not wait
// for the connection's write lock either: that, too, rests on queued.
func (m *Manager) writeNow(wp *workerProc, frames []byte) bool {
	if wp.raw == nil || wp.killed || wp.queued.Load() != 0 {
		return false
	}
	var n int
	var err error
	wp.raw.Write(func(fd uintptr) bool {
		n, err = unix.SendmsgN(int(fd), frames, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return true // never wait for the pipe under m.mu
	})
	switch {
	case err == nil && n == len(frames):
		if wp.bell != nil {
			wp.bell.Ring(m.version)
		}
		return true
	case err != nil || n == 0:
		return false // full (the pipeWriter will wait), or broken (it will find out)
	default:
		// Part of the frames went out, which leaves the rest nowhere to
		// go but the pipe, before anything else. It does not happen: a
		// unix stream socket takes a write that fits in one of its
		// buffers (up to half its send buffer, never under 2 KB) whole
		// or not at all. Should it, the worker is replaced.
		m.log.Error("worker fell behind on pool updates, replacing it", "pid", wp.cmd.Process.Pid, "pipe", "full")
		m.kill(wp)
		return true
	}
}

// kill ends a worker at once. Called with m.mu held.
func (m *Manager) kill(wp *workerProc) {
	if !wp.killed {
		wp.killed = true
		wp.cmd.Process.Kill()
	}
}

// setReady changes the count of ready workers. Called with m.mu held.
func (m *Manager) setReady(delta int) {
	m.ready += delta
	m.notify()
}

// notify wakes whoever waits for a worker's state to change. Called with
// m.mu held.
func (m *Manager) notify() {
	close(m.changed)
	m.changed = make(chan struct{})
	m.observePropagation()
}
