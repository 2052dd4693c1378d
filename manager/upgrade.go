package manager

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/cloudflare/tableflip"
	"golang.org/x/sys/unix"
)

// handleUpgrades starts a new generation through tableflip on every SIGHUP.
// The new generation runs the binary now on disk with the configuration now
// on disk; this one keeps serving until it is ready, and goes on serving if
// it fails. It returns a function that stops handling and waits.
func (m *Manager) handleUpgrades(upg *tableflip.Upgrader, hup <-chan os.Signal) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		m.upgrader(upg, hup, done)
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

// upgrader loops on SIGHUP.
func (m *Manager) upgrader(upg *tableflip.Upgrader, hup <-chan os.Signal, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case <-hup:
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
		}
	}
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
// one that could not be written.
func (m *Manager) handPool(upg *tableflip.Upgrader) error {
	m.mu.Lock()
	b, err := encodeState(m.registered())
	m.mu.Unlock()
	if err != nil {
		return err
	}
	fd, err := unix.MemfdCreate(handedPoolName, unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("creating memory file: %w", err)
	}
	f := os.NewFile(uintptr(fd), handedPoolName)
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("writing memory file: %w", err)
	}
	return upg.AddFile(handedPoolName, f)
}

// takeHandedPool returns the pool the previous generation handed over, or
// nil if there was no previous generation.
func takeHandedPool(upg *tableflip.Upgrader) ([]byte, error) {
	f, err := upg.File(handedPoolName)
	if err != nil || f == nil {
		return nil, err
	}
	defer f.Close()
	// The memory file shares its offset with the writer's copy, which left
	// it at the end.
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return io.ReadAll(io.LimitReader(f, 256<<20))
}
