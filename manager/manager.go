package manager

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"

	"github.com/weldr-proxy/weldr/internal/memtrim"
	"github.com/weldr-proxy/weldr/ipc"
)

// Version is weldr's version, set at build time with
// -ldflags "-X github.com/weldr-proxy/weldr/manager.Version=...".
var Version = "dev"

// Manager owns the pool, the workers and the admin API of one generation.
type Manager struct {
	cfg      *Config
	log      *slog.Logger
	settings *ipc.Settings // what every worker gets in its snapshot
	stats    *statsTable
	metrics  *metrics
	started  time.Time

	checkClient *http.Client
	checkJobs   chan string // IDs of servers due for a check

	proxyFile *os.File // the proxy listener, handed to every worker
	// board is where the workers count their connections, a seat per
	// slot; boardFile is its file, handed to every worker. Both nil if
	// it could not be made.
	board     *ipc.Board
	boardFile *os.File
	// handed is the memory file the pool is handed over in (handPool),
	// nil until the first SIGHUP. Only the upgrader uses it.
	handed *os.File
	// stopPassed is the stop signal passed on to the new generation
	// (passOn), which this one waits for before it exits; nil if none.
	stopPassed atomic.Pointer[passedStop]

	// mu guards the pool, its version, the workers and the ready count. It
	// is held across a pool mutation and its broadcast, so that workers see
	// changes in the order they were made.
	mu        sync.Mutex
	pool      *Pool
	version   uint64          // of the pool: bumped by every message broadcast
	frames    []byte          // broadcast's encoding buffer
	checksCtx context.Context // nil until health checks start; ended when they stop
	procs     map[*workerProc]struct{}
	ready     int
	changed   chan struct{}   // closed and replaced when a worker's state changes
	pending   []pendingChange // admin changes whose propagation is yet to be observed
	// propagationLost is set once a pending change is given up, and
	// cleared when one is observed: a stuck worker is logged once.
	propagationLost bool

	handover bool      // a new generation is starting: mutations wait for it
	queued   []*change // admin changes waiting to be saved and made; guarded by mu
	saving   []*change // the queued changes being saved, not yet made; guarded by mu
	// stateMu is held by whoever commits the queued changes (see commit):
	// one state file write at a time, and nothing else changing the
	// registered servers between a save and the changes it holds being
	// applied. Taken before mu.
	stateMu sync.Mutex

	configPath      string        // re-read by the next generation on SIGHUP
	stopping        chan struct{} // closed when the manager begins to stop
	stopOnce        sync.Once
	restarts        atomic.Uint64 // workers restarted after they died
	upgradeFailures atomic.Uint64 // SIGHUPs whose new generation failed
	stateFailures   atomic.Uint64 // state file writes that failed
	workersCount    int
	maxPoolBytes    int // the most the pool may take in a snapshot
}

// New returns a manager for cfg with the static servers of cfg and the
// servers saved in its state file in its pool.
func New(cfg *Config, log *slog.Logger) (*Manager, error) {
	return newManager(cfg, log, nil)
}

// newManager is New for a generation that may have been handed the pool of
// the previous one (handed is nil otherwise), which then takes the place of
// the state file.
func newManager(cfg *Config, log *slog.Logger, handed []byte) (*Manager, error) {
	m := &Manager{
		cfg:          cfg,
		log:          log,
		stats:        newStatsTable(),
		metrics:      newMetrics(),
		started:      time.Now(),
		checkClient:  newCheckClient(),
		checkJobs:    make(chan string),
		pool:         NewPool(),
		procs:        make(map[*workerProc]struct{}),
		changed:      make(chan struct{}),
		stopping:     make(chan struct{}),
		workersCount: cfg.WorkerCount(),
		maxPoolBytes: maxPoolBytes,
		settings: &ipc.Settings{
			Balance:               cfg.Proxy.Balance,
			ConnectTimeout:        time.Duration(cfg.Proxy.ConnectTimeout),
			ResponseHeaderTimeout: time.Duration(cfg.Proxy.ResponseHeaderTimeout),
			ReadHeaderTimeout:     time.Duration(cfg.Proxy.ReadHeaderTimeout),
			IdleTimeout:           time.Duration(cfg.Proxy.IdleTimeout),
			MaxHeaderBytes:        cfg.Proxy.MaxHeaderBytes,
			MaxRequestLine:        cfg.Proxy.MaxRequestLine,
			MaxConnections:        cfg.Proxy.MaxConnections,
			MaxBodyBytes:          cfg.Proxy.MaxBodyBytes,
			PreserveHost:          cfg.Proxy.PreserveHost,
			DrainTimeout:          time.Duration(cfg.Lifecycle.DrainTimeout),
			StatsInterval:         time.Second,
			Procs:                 procsPerWorker(cfg.WorkerCount()),
			LogLevel:              cfg.Log.Level,
			LogFormat:             cfg.Log.Format,
			AccessLog:             cfg.Log.AccessLog,
		},
	}
	for i, sc := range cfg.Servers {
		id, canonical, err := ParseServerURL(sc.URL)
		if err != nil {
			return nil, fmt.Errorf("servers[%d].url: %w", i, err)
		}
		m.pool.Add(Server{
			ID: id, URL: canonical, Weight: max(sc.Weight, 1),
			Health: cfg.Health, Static: true, Added: m.started,
		})
	}
	if err := checkStateDir(cfg.State.File); err != nil {
		// The proxy serves what it has; the admin API refuses changes,
		// each with this error, until the file can be saved.
		log.Error("admin changes will be refused until the state file can be saved", "error", err)
	}
	if handed == nil || !m.loadHanded(handed) {
		m.loadState()
	}
	return m, nil
}

// Run runs weldr's manager with cfg, read from configPath, until ctx ends
// or a new generation takes over after SIGHUP: it opens the listeners
// through tableflip, starts the workers, serves the admin API, and on the
// way out drains the workers.
func Run(ctx context.Context, configPath string, cfg *Config, log *slog.Logger) error {
	if os.Getenv("GOMAXPROCS") == "" {
		// The manager waits on sockets and timers and uses a fraction of a
		// core even with 10,000 servers checked every second. With more
		// than one processor the Go scheduler wakes an idle thread for
		// every event, and the thread switches can cost more than the
		// work: 10,000 checks a second took 50 % of a core with two
		// against 41 % with one; 1,000 pool changes a second 0.67 against
		// 0.51 cores in one comparison, 0.55 against 0.50 (medians) in a
		// later one (docs/BENCHMARKS.md).
		runtime.GOMAXPROCS(1)
	}
	// Catch SIGHUP before anything else: its default action would kill the
	// process. Signals that arrive before the workers are ready wait.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// The stop signals end ctx too; after a handover they are passed on.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(term)

	upg, err := tableflip.New(tableflip.Options{PIDFile: cfg.Lifecycle.PIDFile, ListenConfig: listenConfig()})
	if err != nil {
		return fmt.Errorf("setting up upgrades: %w", err)
	}
	defer upg.Stop()

	proxyLn, err := upg.Listen("tcp", cfg.Proxy.Listen)
	if err != nil {
		return fmt.Errorf("proxy.listen: %w", err)
	}
	adminLn, err := upg.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return fmt.Errorf("admin.listen: %w", err)
	}
	handed, handedFile, err := takeHandedPool(upg)
	if err != nil {
		log.Error("reading the pool handed over by the previous generation; reading the state file instead", "error", err)
	}
	m, err := newManager(cfg, log, handed)
	if err != nil {
		return err
	}
	m.configPath = configPath
	m.handed = handedFile
	err = m.serve(ctx, upg, signals{hup: hup, term: term}, proxyLn, adminLn)
	m.waitStoppedSuccessor()
	return err
}

// signals are the ones a generation acts on, or passes on once it has
// handed over (passOn).
type signals struct {
	hup  <-chan os.Signal // SIGHUP
	term <-chan os.Signal // SIGTERM, SIGINT
}

// maxPoolBytes is the most the pool's servers may take in a snapshot,
// which reaches a worker in one IPC frame; the rest of ipc.MaxFrameSize is
// room to spare for the settings. About 22,000 servers with 250-character
// host names, 170,000 with IPv4 addresses. The configuration file
// (Validate), the admin API and the saved pool (addSaved) are held to it.
const maxPoolBytes = ipc.MaxFrameSize * 3 / 4

// readyTimeout bounds how long the manager waits for its first workers.
const readyTimeout = 30 * time.Second

func (m *Manager) serve(ctx context.Context, upg *tableflip.Upgrader, sig signals, proxyLn, adminLn net.Listener) error {
	f, err := listenerFile(proxyLn.(*net.TCPListener))
	if err != nil {
		return fmt.Errorf("sharing the proxy listener: %w", err)
	}
	m.proxyFile = f
	defer f.Close()
	if err := boundAccepts(f); err != nil {
		m.log.Warn("no receive timeout on the proxy listener; a worker may take long to drain after an upgrade", "error", err)
	}

	if board, f, err := ipc.NewBoard(m.workersCount); err != nil {
		m.log.Warn("workers may split connections that arrive at once unevenly", "error", err)
	} else {
		// The board stays mapped until the process exits: /metrics reads
		// it, and the admin server's shutdown does not wait for every
		// handler.
		m.board, m.boardFile = board, f
		defer f.Close() // after the workers are gone: deferred before their drain
	}

	// gone: this generation has drained (deferred first, so closed last).
	gone := make(chan struct{})
	defer close(gone)

	var supervisors sync.WaitGroup
	for slot := range m.workersCount {
		supervisors.Add(1)
		go func() { defer supervisors.Done(); m.workerSupervisor(slot) }()
	}
	// live: this generation served. When it stops, it shuts the socket
	// down unless a new generation holds it (m.handover, settled once
	// stopUpgrades, deferred later and so run first, has returned). One
	// that never got ready leaves it alone: the generation that started
	// it may still be serving on it.
	live := false
	defer func() {
		m.drainWorkers(&supervisors, live && !m.inHandover())
	}()

	if err := m.waitReady(ctx, m.workersCount, readyTimeout); err != nil {
		if ctx.Err() != nil {
			m.log.Info("stopping before ready", "reason", context.Cause(ctx))
			return nil // asked to stop: not a failure
		}
		return err
	}

	admin := &http.Server{
		Handler:           m.adminHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(m.log.Handler(), slog.LevelDebug),
	}
	adminDone := make(chan error, 1)
	go func() { adminDone <- admin.Serve(adminLn) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		admin.Shutdown(sctx)
		cancel()
		<-adminDone
	}()

	stopChecks := m.startHealthChecks()
	defer stopChecks()

	m.applyNotsentLowat()
	if err := upg.Ready(); err != nil {
		return fmt.Errorf("signalling ready: %w", err)
	}
	live = true
	stopUpgrades := m.handleUpgrades(upg, sig, gone)
	defer stopUpgrades()
	stopTrim := trimMemory()
	defer stopTrim()
	m.log.Info("weldr ready", "version", Version, "proxy", proxyLn.Addr().String(),
		"admin", adminLn.Addr().String(), "workers", m.workersCount, "servers", m.poolLen())

	defer m.stopOnce.Do(func() { close(m.stopping) }) // before the drain: workers that exit now are not restarted
	select {
	case <-ctx.Done():
		m.log.Info("stopping", "reason", context.Cause(ctx))
	case <-upg.Exit():
		m.log.Info("new generation is ready, draining this one")
	case err := <-adminDone:
		adminDone <- err
		return fmt.Errorf("serving admin API: %w", err)
	}
	return nil
}

// trimInterval is how often the manager gives idle memory back.
const trimInterval = time.Minute

// trimMemory gives back what start-up used and no longer needs (see
// memtrim.Trim) a second after start, then every trimInterval.
func trimMemory() (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTimer(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				memtrim.Trim()
				t.Reset(trimInterval)
			}
		}
	}()
	return func() { close(done); <-exited }
}

func (m *Manager) poolLen() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pool.Len()
}

func (m *Manager) isStopping() bool {
	select {
	case <-m.stopping:
		return true
	default:
		return false
	}
}

// waitReady waits until n workers reported ready.
func (m *Manager) waitReady(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		m.mu.Lock()
		ready, changed := m.ready, m.changed
		m.mu.Unlock()
		if ready >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-deadline.C:
			return fmt.Errorf("only %d of %d workers ready after %s", ready, n, timeout)
		}
	}
}

// applyTimeout bounds how long an admin mutation waits for its change to
// be in force before answering anyway, and how long a change's propagation
// is waited for before it goes unobserved.
const applyTimeout = 2 * time.Second

// waitInForce waits until pool version v is in force in every worker of
// this generation, so that an admin change is in effect when the API
// answers: the worker has applied it, or has it whole in its pipe with its
// bell rung, in which case the next request it routes reads it first
// (worker.catchUp). A worker that did not say on Ready that it reads its
// bell must have applied it. A worker that is starting needs no wait if
// its snapshot holds v; otherwise it is waited for like the others, once
// it is ready. Past applyTimeout, or when the request ends, it returns
// anyway.
func (m *Manager) waitInForce(ctx context.Context, v uint64) {
	start := time.Now()
	deadline := time.NewTimer(applyTimeout)
	defer deadline.Stop()
	for {
		m.mu.Lock()
		behind := 0
		for wp := range m.procs {
			switch {
			case wp.killed || wp.applied >= v:
			case !wp.ready:
				if wp.snapshot < v {
					behind++
				}
			case !wp.rings || wp.bell.Version() < v:
				behind++
			}
		}
		changed := m.changed
		m.mu.Unlock()
		if behind == 0 {
			m.metrics.applyDuration.observe(time.Since(start).Seconds())
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		case <-deadline.C:
			m.log.Warn("workers slow to take a pool change", "behind", behind, "version", v, "waited", applyTimeout)
			return
		}
	}
}

// pendingChange is an admin change whose propagation is still to be
// observed: its pool version, and when the pool changed to it, as ipc.Now
// reads it.
type pendingChange struct {
	version uint64
	at      int64
	into    *histogram // where its propagation is observed
}

// broadcastChange broadcasts an admin change of the pool, made of msgs, and
// awaits its propagation. Called with m.mu held.
func (m *Manager) broadcastChange(msgs []*ipc.Message) {
	m.broadcastTimed(msgs, m.metrics.propagation)
}

// broadcastVerdict broadcasts a health verdict (a server down or up), made
// of msgs if any, and awaits its propagation. Called with m.mu held.
func (m *Manager) broadcastVerdict(msgs []*ipc.Message) {
	m.broadcastTimed(msgs, m.metrics.verdictPropagation)
}

// broadcastTimed broadcasts msgs, if any, and observes their propagation
// into h.
func (m *Manager) broadcastTimed(msgs []*ipc.Message, h *histogram) {
	if len(msgs) == 0 {
		return // no change: nothing to wait for
	}
	changedAt := ipc.Now() // before a worker can have it
	m.broadcast(msgs)
	m.awaitPropagation(m.version, changedAt, h)
}

// awaitPropagation records that the pool changed to version v at changedAt
// (ipc.Now), to observe into h when the last serving worker began to route
// by it once they have all said so. Called with m.mu held.
func (m *Manager) awaitPropagation(v uint64, changedAt int64, h *histogram) {
	m.pending = append(m.pending, pendingChange{v, changedAt, h})
	m.observePropagation() // with no worker serving, there is none to wait for
}

// observePropagation observes, oldest first, the propagation of the pending
// changes every serving worker has applied: the time from the change to
// the last worker's acknowledgement, by the workers' own stamps. Workers
// that started with the change in their snapshot are left out, and so is
// a worker that applied it and then was killed or exited. Called with m.mu
// held, whenever a worker's state changes.
//
// A change still pending applyTimeout after it was made is given up, as
// the API gives up waiting for it: its propagation is not observed, and
// the first such change in a row is logged.
func (m *Manager) observePropagation() {
	now := ipc.Now()
	for len(m.pending) > 0 {
		p := m.pending[0]
		if time.Duration(now-p.at) > applyTimeout {
			if !m.propagationLost {
				m.propagationLost = true
				m.log.Warn("workers slow to apply a pool change: its propagation is not observed", "version", p.version, "waited", applyTimeout)
			}
			m.pending = m.pending[1:]
			continue
		}
		last, known := int64(0), true
		for wp := range m.procs {
			switch {
			case !wp.ready || wp.killed || wp.snapshot >= p.version:
				continue // not serving, or started with the change
			case wp.applied < p.version:
				return
			}
			at, ok := wp.acks.routedAt(p.version)
			last, known = max(last, at), known && ok
		}
		if known && last > 0 {
			p.into.observe(max(0, time.Duration(last-p.at)).Seconds())
		}
		m.pending, m.propagationLost = m.pending[1:], false
	}
}

func (m *Manager) drainMessage() *ipc.Message {
	return &ipc.Message{Kind: ipc.Drain, DrainTimeout: time.Duration(m.cfg.Lifecycle.DrainTimeout)}
}

// drainWorkers asks every worker to drain, waits for all of them to exit
// within the drain timeout (plus a grace for their last stats), and kills
// what is left. If final (weldr stops, rather than hand over to a new
// generation) it then refuses new connections (refuseConnections).
func (m *Manager) drainWorkers(supervisors *sync.WaitGroup, final bool) {
	drain := time.Duration(m.cfg.Lifecycle.DrainTimeout)
	m.mu.Lock()
	m.stopOnce.Do(func() { close(m.stopping) })
	m.broadcast([]*ipc.Message{m.drainMessage()})
	m.mu.Unlock()
	if final {
		m.refuseConnections()
	}

	done := make(chan struct{})
	go func() { supervisors.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(drain + 5*time.Second):
	}
	m.log.Warn("workers did not drain in time, killing them")
	m.mu.Lock()
	for wp := range m.procs {
		m.kill(wp)
	}
	m.mu.Unlock()
	<-done
}

// cpus is the number of CPUs the workers share (see countCPUs), counted at
// start-up, before Run gives the manager itself one.
var cpus = countCPUs(os.Getenv("GOMAXPROCS"))

// countCPUs returns the number of CPUs the process may use, as the runtime
// counts them by default (affinity and cgroup quota included), whatever
// gomaxprocs, the environment's GOMAXPROCS, says: that is meant for the
// manager alone. The process's GOMAXPROCS is left as it was.
func countCPUs(gomaxprocs string) int {
	if gomaxprocs == "" {
		return runtime.GOMAXPROCS(0)
	}
	set := runtime.GOMAXPROCS(0)
	runtime.SetDefaultGOMAXPROCS()
	return runtime.GOMAXPROCS(set) // the default, as it puts set back
}

// procsPerWorker shares the CPUs among the workers: with as many workers as
// CPUs each gets one, like nginx's single-threaded workers, which spares the
// Go scheduler's hand-offs between threads.
func procsPerWorker(workers int) int {
	return max(1, (cpus+workers-1)/workers)
}
