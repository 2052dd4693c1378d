package manager

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"golang.org/x/sys/unix"
)

// handleUpgrades starts a new generation through tableflip on SIGHUP. The
// new generation runs the binary now on disk with the configuration now on
// disk; this one keeps serving until it is ready, and goes on serving if it
// fails. Once one is ready, signals are passed on to it until gone is
// closed (see passOn). It returns a function that stops starting new
// generations and waits.
func (m *Manager) handleUpgrades(upg *tableflip.Upgrader, sig signals, gone <-chan struct{}) (stop func()) {
	done := make(chan struct{})
	// parentGone: the generation this one took over from has exited, or
	// there was none. tableflip starts no new generation before.
	parentGone := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		upg.WaitForParent(ctx) // an error: it exited, but not cleanly
		if ctx.Err() == nil {
			close(parentGone)
		}
	}()
	go func() {
		defer wg.Done()
		defer cancel()
		if m.upgrader(upg, sig.hup, parentGone, done) {
			go m.passOn(sig, gone)
		}
	}()
	return func() {
		// Stop first: an upgrade in progress (a new generation starting)
		// is abandoned and its process killed, rather than waited for up
		// to tableflip's timeout or, worse, let take over after the
		// operator asked weldr to stop.
		upg.Stop()
		close(done)
		wg.Wait()
	}
}

// upgrader loops on SIGHUP until done, or until a new generation is ready
// (handedOver): this one has then handed over for good, and another
// attempt would fail and take the handover back.
func (m *Manager) upgrader(upg *tableflip.Upgrader, hup <-chan os.Signal, parentGone, done <-chan struct{}) (handedOver bool) {
	for {
		select {
		case <-done:
			return false
		case <-hup:
			select {
			case <-parentGone:
			default:
				m.log.Info("SIGHUP: the previous generation is still draining; starting a new one once it has exited")
				select {
				case <-parentGone:
				case <-done:
					return false
				}
			}
			m.log.Info("SIGHUP: starting a new generation")
			if err := m.preflight(); err != nil {
				m.upgradeFailures.Add(1)
				m.log.Error("not upgrading, this generation keeps serving", "error", err)
				continue
			}
			// From here until this generation exits, admin mutations get
			// 503: the new generation reads the state file as it starts,
			// so a change made here afterwards would be lost.
			m.setHandover(true)
			m.persist()
			if err := m.handPool(upg); err != nil {
				m.log.Error("handing the pool to the new generation; it will read the state file", "error", err)
			}
			if err := upg.Upgrade(); err != nil {
				m.setHandover(false)
				m.applyNotsentLowat() // the new generation may have set its own
				m.upgradeFailures.Add(1)
				m.log.Error("upgrade failed, this generation keeps serving", "error", err)
				continue
			}
			m.log.Info("new generation is ready")
			return true
		}
	}
}

// passOn sends each SIGHUP, SIGTERM or SIGINT that reaches this
// generation after it handed over to the generation now serving, until
// gone. The signal was meant for that one: systemd signals the process it
// knows as the main one, and learns the new one's PID from the PID file
// only when this one exits, after its drain; and once that one exits at a
// stop, it kills whatever is left. So after passing a stop on, this
// generation waits for the new one to exit (waitStoppedSuccessor). The new
// generation is found by the PID file, and is this one's child until this
// one exits: it starts no generation of its own before.
func (m *Manager) passOn(sig signals, gone <-chan struct{}) {
	for {
		var s os.Signal
		select {
		case <-gone:
			return
		case s = <-sig.hup:
		case s = <-sig.term:
		}
		n := s.(syscall.Signal)
		pid, err := m.successor()
		if err == nil {
			err = unix.Kill(pid, n)
		}
		if err != nil {
			m.log.Warn(unix.SignalName(n)+" not passed on: this generation has handed over and is draining; signal the new one", "error", err)
			continue
		}
		if n != syscall.SIGHUP {
			m.stopPassed.CompareAndSwap(nil, &passedStop{pid: pid, at: time.Now()})
		}
		m.log.Info(unix.SignalName(n)+" passed on to the new generation", "pid", pid)
	}
}

// passedStop is a stop signal passed on to the new generation: its PID,
// and when.
type passedStop struct {
	pid int
	at  time.Time
}

// waitStoppedSuccessor waits, if this generation passed a stop on to the
// new one, until that one has exited. The new one drains within its own
// drain timeout, kills its workers 5 s later, and may take 5 s to close its
// admin API: the wait is bounded by this generation's drain timeout and 15
// s from the stop, or a minute, whichever is longer.
func (m *Manager) waitStoppedSuccessor() {
	stop := m.stopPassed.Load()
	if stop == nil {
		return
	}
	pid := stop.pid
	m.log.Info("waiting for the new generation to stop", "pid", pid)
	deadline := stop.at.Add(max(time.Duration(m.cfg.Lifecycle.DrainTimeout)+15*time.Second, time.Minute))
	for time.Now().Before(deadline) {
		if state, ppid, err := procStat(pid); err != nil || ppid != os.Getpid() || state == "Z" {
			return // exited
		}
		time.Sleep(50 * time.Millisecond)
	}
	m.log.Warn("the new generation did not stop in time", "pid", pid)
}

// successor returns the PID of the generation that took over from this
// one: the one the PID file names, if it is this process's child.
func (m *Manager) successor() (int, error) {
	path := m.cfg.Lifecycle.PIDFile
	if path == "" {
		return 0, errors.New("no lifecycle.pid_file to find the new generation by")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("PID file %s holds %q", path, b)
	}
	if _, ppid, err := procStat(pid); err != nil || ppid != os.Getpid() {
		return 0, fmt.Errorf("PID file %s names %d, not a process this one started", path, pid)
	}
	return pid, nil
}

// procStat returns the state (R, S, Z...) and the parent of process pid,
// from /proc.
func procStat(pid int) (state string, ppid int, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, err
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 2 {
		return "", 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	ppid, err = strconv.Atoi(f[1])
	return f[0], ppid, err
}

func (m *Manager) setHandover(on bool) {
	m.mu.Lock()
	m.handover = on
	m.mu.Unlock()
}

// inHandover reports whether a new generation has been started and has not
// failed: once the upgrader has stopped, whether it holds the sockets.
func (m *Manager) inHandover() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.handover
}

// preflightTimeout bounds the check of a new binary and configuration.
const preflightTimeout = 30 * time.Second

// preflight runs the binary now on disk with -check-config on the
// configuration now on disk: the new generation would run exactly these, and
// a failure here leaves this generation serving with a clear reason.
func (m *Manager) preflight() error {
	ctx, cancel := context.WithTimeout(context.Background(), preflightTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-check-config", "-config", m.configPath)
	cmd.Env = workerEnv(os.Environ())
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if msg == "" {
			msg = err.Error()
		}
		return fmt.Errorf("new binary %s or configuration %s rejected: %s", os.Args[0], m.configPath, msg)
	}
	return nil
}

// handedPoolName names the file in which a generation hands its pool to
// the next one.
const handedPoolName = "weldr-pool"

// handPool passes the registered servers to the next generation in a
// memory file, so that an upgrade keeps them even with no state file, or
// one that could not be written. The file is made and given to tableflip
// once, or was inherited (tableflip passes that one on), and is rewritten
// for every attempt: tableflip keeps a copy of each file it is given, and
// replacing one does not close the old. It is emptied first, so that a
// failure leaves nothing older to hand over.
func (m *Manager) handPool(upg *tableflip.Upgrader) error {
	if m.handed != nil {
		if err := m.handed.Truncate(0); err != nil {
			return fmt.Errorf("emptying memory file: %w", err)
		}
	}
	m.mu.Lock()
	b, err := encodeState(m.registered())
	m.mu.Unlock()
	if err != nil {
		return err
	}
	if m.handed == nil {
		fd, err := unix.MemfdCreate(handedPoolName, unix.MFD_CLOEXEC)
		if err != nil {
			return fmt.Errorf("creating memory file: %w", err)
		}
		f := os.NewFile(uintptr(fd), handedPoolName)
		if err := upg.AddFile(handedPoolName, f); err != nil {
			f.Close()
			return err
		}
		m.handed = f // tableflip's copy shares its contents
	}
	if _, err := m.handed.WriteAt(b, 0); err != nil {
		m.handed.Truncate(0) // empty: none handed (takeHandedPool)
		return fmt.Errorf("writing memory file: %w", err)
	}
	return nil
}

// takeHandedPool returns the pool the previous generation handed over, or
// nil if there was no previous generation, it could not write the pool, or
// the pool could not be read; and the memory file it came in, if any, which
// tableflip will pass on to the next generation as it is, so the caller
// must keep it for handPool to rewrite.
func takeHandedPool(upg *tableflip.Upgrader) ([]byte, *os.File, error) {
	f, err := upg.File(handedPoolName)
	if err != nil || f == nil {
		return nil, nil, err
	}
	// The memory file shares its offset with the writer's copy, which left
	// it at the end.
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, f, err
	}
	b, err := io.ReadAll(io.LimitReader(f, 256<<20))
	if err != nil || len(b) == 0 {
		return nil, f, err
	}
	return b, f, nil
}
