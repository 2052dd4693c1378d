// Package worker is the proxying half of weldr. A worker process accepts
// client connections on the listening socket it shares with its siblings and
// forwards each request to a backend. Everything it knows -- settings and the
// pool -- reaches it from the manager over its ipc socket; it never reads the
// configuration file. Counters flow back the same way.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/weldr-proxy/weldr/ipc"
)

// worker is the state of one worker process.
type worker struct {
	snap     atomic.Pointer[snapshot] // what requests route by
	draining atomic.Bool              // responses say "Connection: close"
	applied  atomic.Uint64            // the pool version snap reflects
	// appliedAt is when snap came to reflect applied, as ipc.Now reads
	// it. It is stored first, so read after applied it is never earlier
	// than the time applied was published.
	appliedAt atomic.Int64
	// appliedNote wakes the managerWriter to acknowledge applied.
	appliedNote chan struct{}
	balancer    balancer
	stats       stats
	log         *slog.Logger

	// bell, if not nil, holds the version of the last change the manager
	// has written to the pipe, in.
	bell         *ipc.Bell
	in           *pipeIn
	defaultDrain time.Duration // when the pipe ends without a Drain message
	warnedBehind atomic.Uint64 // the last version rung that a request could not catch up with

	// The pool as the manager described it; touched only with in.mu held.
	version uint64     // of the changes applied to servers and down
	servers []*backend // including gone ones (not in byID), until compacted
	byID    map[string]*backend
	down    map[string]bool
}

// Run serves proxy traffic on ln with the settings and pool the manager sends
// over conn. It returns after the manager asks it to drain, closes conn, or
// ctx ends: it then stops accepting, lets in-flight requests finish within
// the drain timeout, sends its last stats and closes conn. Logs go to logOut
// in the format the manager's settings name. The manager rings sh.Bell when
// it has written a pool change to conn; sh.Board is where the workers count
// their connections.
func Run(ctx context.Context, ln net.Listener, conn net.Conn, sh Shared, logOut io.Writer) error {
	in := newPipeIn(conn)
	defer conn.Close()
	var m ipc.Message
	stopWaiting := context.AfterFunc(ctx, func() { conn.Close() })
	err := in.receive(&m)
	if !stopWaiting() || ctx.Err() != nil {
		return fmt.Errorf("waiting for the pool snapshot: %w", context.Cause(ctx))
	}
	if err != nil {
		return fmt.Errorf("waiting for the pool snapshot: %w", err)
	}
	if m.Kind != ipc.Snapshot {
		return fmt.Errorf("first message is %s, want Snapshot", m.Kind)
	}
	set := *m.Settings
	if set.Procs > 0 {
		runtime.GOMAXPROCS(set.Procs)
	}
	w := &worker{
		log:          NewLogger(logOut, set.LogLevel, set.LogFormat).With("worker", os.Getpid()),
		byID:         make(map[string]*backend),
		down:         make(map[string]bool),
		appliedNote:  make(chan struct{}, 1),
		bell:         sh.Bell,
		in:           in,
		defaultDrain: set.DrainTimeout,
	}
	w.balancer.policy = set.Balance
	w.apply(&m)

	fe := newFrontend(w, frontendSettings(&set), sh)
	if set.AccessLog {
		// Access lines go out at info level whatever log.level says: the
		// operator asked for them.
		lb := newLogBuffer(logOut)
		fe.accessLog = NewLogger(lb, "info", set.LogFormat).With("worker", os.Getpid())
		stopFlushing := make(chan struct{})
		flushed := make(chan struct{})
		go func() { lb.accessLogFlusher(stopFlushing); close(flushed) }()
		defer func() { close(stopFlushing); <-flushed }()
	}

	if err := in.c.Send(&ipc.Message{Kind: ipc.Ready, PID: os.Getpid(), Version: w.applied.Load(), Bell: w.bell != nil}); err != nil {
		return fmt.Errorf("reporting ready: %w", err)
	}
	w.log.Debug("worker serving", "servers", len(w.servers))

	serveErr := make(chan error, 1)
	go func() { serveErr <- fe.serve(ln) }()

	interval := set.StatsInterval
	if interval <= 0 {
		interval = time.Second
	}
	reportCtx, stopReporting := context.WithCancel(context.Background())
	reported := make(chan error, 1)
	go func() { reported <- w.managerWriter(reportCtx, in.c, interval) }()

	updated := make(chan drainRequest, 1)
	go func() { updated <- w.poolUpdates() }()

	drain := set.DrainTimeout
	err = nil
	accepting := serveErr // nil once serve has ended without an error
	for waiting := true; waiting; {
		select {
		case <-ctx.Done():
			w.log.Info("worker stopping", "reason", context.Cause(ctx))
			waiting = false
		case serr := <-accepting:
			serveErr <- serr
			if serr == nil {
				// The socket was shut down: weldr stops, and the manager's
				// Drain message is on its way.
				accepting = nil
				continue
			}
			err = fmt.Errorf("serving: %w", serr)
			waiting = false
		case d := <-updated:
			updated <- d
			drain = d.timeout
			if d.err != nil && !errors.Is(d.err, io.EOF) {
				w.log.Error("pool updates failed, draining", "error", d.err)
			} else if d.err != nil {
				w.log.Info("manager went away, draining")
			}
			waiting = false
		}
	}

	w.drain(fe, ln, drain)
	stopReporting()
	if rerr := <-reported; rerr != nil {
		w.log.Debug("last stats report failed", "error", rerr)
	}
	conn.Close() // ends poolUpdates if it still runs
	<-updated
	<-serveErr // ends with the listener closed by the drain
	return err
}

// drainRequest is how poolUpdates ended: a Drain message with its timeout, or
// an error (io.EOF when the manager closed the pipe).
type drainRequest struct {
	timeout time.Duration
	err     error
}

// poolUpdates applies the manager's pool changes as they arrive, until a
// Drain message or the pipe's end (an error, io.EOF if the manager closed
// it), which it returns.
func (w *worker) poolUpdates() drainRequest {
	err := w.in.wait(func() bool { return w.readPipe() != nil })
	// The end may have been read by a request, which woke wait with a
	// deadline.
	if end := w.readPipe(); end != nil {
		return *end
	}
	return drainRequest{timeout: w.defaultDrain, err: err}
}

// readPipe applies the changes the pipe holds, publishes them and wakes the
// managerWriter to acknowledge them (once for a batch), and returns how the
// pipe ended if it has. It reads only what has arrived, unless the pipe is
// not a socket.
func (w *worker) readPipe() *drainRequest {
	w.in.mu.Lock()
	defer w.in.mu.Unlock()
	return w.readPipeLocked()
}

// readPipeLocked is readPipe with in.mu held.
func (w *worker) readPipeLocked() *drainRequest {
	p := w.in
	for {
		// Once for a batch: before a read that may find nothing (or wait),
		// or at the pipe's end.
		if p.unpublished && (p.end != nil || !p.c.Buffered()) {
			w.publishAndAck()
			p.unpublished = false
		}
		if p.end != nil {
			return p.end
		}
		err := p.c.Receive(&p.m)
		switch {
		case errors.Is(err, errEmpty):
			return nil
		case err != nil:
			p.ended(&drainRequest{timeout: w.defaultDrain, err: err})
		case p.m.Kind == ipc.Drain:
			p.ended(&drainRequest{timeout: p.m.DrainTimeout})
			// Rung like a change: applied, requests stop catching up.
			w.version = max(w.version, p.m.Version)
			p.unpublished = true
		default:
			w.change(&p.m)
			p.unpublished = true
		}
	}
}

// route returns the snapshot a request routes by: with a bell, the pool as
// of the last change the manager has written to the pipe. A request that
// finds the worker behind the bell reads the pipe and applies the change
// itself, which is whole in the pipe once rung: no request routes by a pool
// older than what the manager had written when it was routed, even in a
// worker that was waiting for a core when the change came. It waits for no
// goroutine to be scheduled, only, briefly, for one that holds in.mu to
// finish applying what it read.
func (w *worker) route() *snapshot {
	if w.bell != nil {
		if v := w.bell.Version(); v > w.applied.Load() {
			w.catchUp(v)
		}
	}
	return w.snap.Load()
}

// catchUp reads and applies what the pipe holds, for version v, which the
// bell rang. A request that still finds the worker behind (which the
// manager's ringing only after the write rules out) routes by the pool it
// has and is counted.
func (w *worker) catchUp(v uint64) {
	if w.in.raw == nil {
		return // its reads would wait
	}
	w.in.mu.Lock()
	if w.applied.Load() < v && w.in.end == nil { // not caught up by another meanwhile
		w.readPipeLocked()
	}
	ended := w.in.end != nil
	w.in.mu.Unlock()
	if ended || w.applied.Load() >= v {
		return
	}
	w.stats.routedBehind.Add(1)
	if w.warnedBehind.Swap(v) != v {
		w.log.Warn("routing by an older pool: the change rung is not whole in the pipe", "rung", v, "applied", w.applied.Load())
	}
}

// publishAndAck publishes the pool and wakes the managerWriter to
// acknowledge it.
func (w *worker) publishAndAck() {
	w.publish()
	select {
	case w.appliedNote <- struct{}{}:
	default:
	}
}

// apply changes the pool as m says and publishes a new snapshot.
func (w *worker) apply(m *ipc.Message) {
	w.change(m)
	w.publish()
}

// publish makes the pool as it stands what requests route by.
func (w *worker) publish() {
	w.snap.Store(newSnapshot(w.servers, w.down, w.balancer.policy == WeightedRoundRobin))
	w.appliedAt.Store(ipc.Now())
	w.applied.Store(w.version)
}

// change applies m to the pool without publishing it: a batch of changes
// is published once.
func (w *worker) change(m *ipc.Message) {
	switch m.Kind {
	case ipc.Snapshot:
		keep := make(map[string]bool, len(m.Servers))
		w.servers = nil // a new array: published snapshots keep the old one
		clear(w.down)
		for _, s := range m.Servers {
			keep[s.ID] = true
			w.servers = append(w.servers, w.upsert(s))
			if s.Down {
				w.down[s.ID] = true
			}
		}
		for id, b := range w.byID {
			if !keep[id] {
				delete(w.byID, id)
				b.gone.Store(true)
				w.stats.retire(b)
			}
		}
	case ipc.AddServer:
		s := m.Servers[0]
		i := w.index(s.ID) // before upsert, which may replace the backend
		b := w.upsert(s)
		if i >= 0 {
			w.servers = slices.Clone(w.servers) // published snapshots hold the old one
			w.servers[i] = b
		} else {
			w.servers = append(w.servers, b)
		}
		if s.Down {
			w.down[s.ID] = true
		} else {
			delete(w.down, s.ID)
		}
	case ipc.RemoveServer:
		// Marked gone at once, for the snapshot requests route by too;
		// taken out of the list once an eighth of it is gone, so that a
		// removal costs O(1) amortised rather than a copy of the list.
		if b := w.byID[m.ID]; b != nil {
			b.gone.Store(true)
			w.stats.retire(b)
			delete(w.byID, m.ID)
			delete(w.down, m.ID)
			if gone := len(w.servers) - len(w.byID); gone > len(w.servers)/8 {
				w.servers = slices.DeleteFunc(slices.Clone(w.servers), func(b *backend) bool { return b.gone.Load() })
			}
		}
	case ipc.MarkServerDown:
		if w.byID[m.ID] != nil {
			w.down[m.ID] = true
		}
	case ipc.MarkServerActive:
		delete(w.down, m.ID)
	default:
		// Its version is taken all the same: the manager waits for it,
		// and the bell may have rung it.
		w.log.Warn("ignoring unexpected message", "kind", m.Kind)
		w.version = max(w.version, m.Version)
		return
	}
	w.version = m.Version
}

// upsert returns the backend for s, reusing the existing one when nothing
// requests read has changed, so that its counters carry on.
func (w *worker) upsert(s ipc.Server) *backend {
	nb := newBackend(s)
	if b := w.byID[s.ID]; b != nil {
		if b.scheme == nb.scheme && b.weight == nb.weight {
			return b
		}
		w.stats.retire(b)
	}
	w.byID[s.ID] = nb
	return nb
}

func (w *worker) index(id string) int {
	b := w.byID[id]
	if b == nil {
		return -1
	}
	for i, s := range w.servers {
		if s == b {
			return i
		}
	}
	return -1
}

// NewLogger returns a slog logger writing to out at level (debug, info,
// warn, error) in format (text or json), as log.level and log.format say.
// Unknown values fall back to info and text. The manager's logger is made
// the same way.
func NewLogger(out io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	if lv.UnmarshalText([]byte(level)) != nil {
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(out, opts))
	}
	return slog.New(slog.NewTextHandler(out, opts))
}

// frontendSettings applies defaults to what the manager sent.
func frontendSettings(set *ipc.Settings) frontendConfig {
	or := func(d, def time.Duration) time.Duration {
		if d <= 0 {
			return def
		}
		return d
	}
	fs := frontendConfig{
		connectTimeout:        or(set.ConnectTimeout, time.Second),
		responseHeaderTimeout: or(set.ResponseHeaderTimeout, 30*time.Second),
		readHeaderTimeout:     or(set.ReadHeaderTimeout, 10*time.Second),
		idleTimeout:           or(set.IdleTimeout, 60*time.Second),
		maxHeaderBytes:        set.MaxHeaderBytes,
		maxRequestLine:        set.MaxRequestLine,
		maxConns:              set.MaxConnections,
		maxBody:               set.MaxBodyBytes,
		preserveHost:          set.PreserveHost,
	}
	if fs.maxHeaderBytes <= 0 {
		fs.maxHeaderBytes = 64 << 10
	}
	if fs.maxRequestLine <= 0 {
		fs.maxRequestLine = 8192
	}
	return fs
}
