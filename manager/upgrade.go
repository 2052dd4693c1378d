package manager

import (
	"os"
	"sync"

	"github.com/cloudflare/tableflip"
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
	return func() { close(done); wg.Wait() }
}

// upgrader loops on SIGHUP.
func (m *Manager) upgrader(upg *tableflip.Upgrader, hup <-chan os.Signal, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case <-hup:
			m.log.Info("SIGHUP: starting a new generation")
			if err := upg.Upgrade(); err != nil {
				m.upgradeFailures.Add(1)
				m.log.Error("upgrade failed, this generation keeps serving", "error", err)
			}
		}
	}
}
