package worker

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weldr-proxy/weldr/ipc"
)

// serverCounters count one server's outcomes since the last report.
type serverCounters struct {
	success       atomic.Uint64 // the server answered below 500
	failed        atomic.Uint64 // connect failure, timeout, reset or 5xx
	connectFailed atomic.Uint64 // the part of failed where no connection was made
}

// stats holds the worker's counters. Requests add to them with atomics; the
// statsReporter takes the deltas.
type stats struct {
	clientSuccess atomic.Uint64 // the client got a backend's response
	clientFailed  atomic.Uint64 // the client got a proxy error or broke off

	mu      sync.Mutex // guards retired
	retired []*backend // removed servers whose last counts are not yet reported
}

// retire keeps b's counts for the next report after b left the pool.
func (st *stats) retire(b *backend) {
	st.mu.Lock()
	st.retired = append(st.retired, b)
	st.mu.Unlock()
}

// take returns the deltas since the last call and resets them, or nil if
// nothing happened.
func (st *stats) take(s *snapshot) *ipc.Stats {
	out := &ipc.Stats{ClientSuccess: st.clientSuccess.Swap(0), ClientFailed: st.clientFailed.Swap(0)}
	add := func(b *backend) {
		ok, fail, cf := b.stats.success.Swap(0), b.stats.failed.Swap(0), b.stats.connectFailed.Swap(0)
		if ok|fail|cf != 0 {
			out.Servers = append(out.Servers, ipc.ServerStats{ID: b.id, Success: ok, Failed: fail, ConnectFailed: cf})
		}
	}
	// A retired server is reported until no request to it is in flight:
	// those still count when they finish.
	st.mu.Lock()
	retired := st.retired
	st.retired = nil
	for _, b := range retired {
		// Requests count their outcome before they leave inflight, so
		// reading inflight first means nothing can slip between.
		busy := b.inflight.Load() > 0
		add(b)
		if busy {
			st.retired = append(st.retired, b)
		}
	}
	st.mu.Unlock()
	for _, b := range s.all {
		add(b)
	}
	if out.ClientSuccess|out.ClientFailed == 0 && len(out.Servers) == 0 {
		return nil
	}
	return out
}

// statsReporter sends the counters' deltas to the manager every interval
// until ctx ends, then sends what is left once more. It is the only writer of
// conn once the worker reported Ready.
func (w *worker) statsReporter(ctx context.Context, conn *ipc.Conn, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return w.report(conn)
		case <-t.C:
			if err := w.report(conn); err != nil {
				return err
			}
		}
	}
}

func (w *worker) report(conn *ipc.Conn) error {
	st := w.stats.take(w.snap.Load())
	if st == nil {
		return nil
	}
	return conn.Send(&ipc.Message{Kind: ipc.ReportStats, Stats: st})
}
