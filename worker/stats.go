package worker

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weldr-proxy/weldr/internal/memtrim"
	"github.com/weldr-proxy/weldr/ipc"
)

// serverCounters count one server's outcomes since the last report.
type serverCounters struct {
	success   atomic.Uint64    // the server answered below 500
	failed    atomic.Uint64    // connect failure, timeout, broken connection or 5xx
	responses [5]atomic.Uint64 // answers by status class, 1xx to 5xx

	// The failures that were not 5xx answers, by kind.
	connectFailed atomic.Uint64 // no connection could be made
	timedOut      atomic.Uint64 // no answer in time
	broken        atomic.Uint64 // reset, malformed or truncated answer
}

// answered counts a response with status code whose body was relayed whole.
func (c *serverCounters) answered(code int) {
	if class := code/100 - 1; class >= 0 && class < len(c.responses) {
		c.responses[class].Add(1)
	}
	if code >= 500 {
		c.failed.Add(1)
	} else {
		c.success.Add(1)
	}
}

// fail counts a failure that is not a 5xx answer; kind is one of the
// counters above.
func (c *serverCounters) fail(kind *atomic.Uint64) {
	c.failed.Add(1)
	kind.Add(1)
}

// stats holds the worker's counters. Requests add to them with atomics; the
// statsReporter takes the deltas.
type stats struct {
	clientSuccess atomic.Uint64 // the client got a backend's response
	clientFailed  atomic.Uint64 // the client got a proxy error or broke off

	// weldr's own answers, by status in the order of ipc.GeneratedStatuses
	gen [len(ipc.GeneratedStatuses)]atomic.Uint64

	// requests routed by a pool older than the bell rang (catchUp)
	routedBehind atomic.Uint64

	mu      sync.Mutex // guards retired
	retired []*backend // removed servers whose last counts are not yet reported
}

// generated counts an answer weldr made itself, for a client request that
// failed.
func (st *stats) generated(code int) {
	st.clientFailed.Add(1)
	if i := slices.Index(ipc.GeneratedStatuses[:], code); i >= 0 {
		st.gen[i].Add(1)
	}
}

// retire keeps b's counts for the next report after b left the pool, and
// closes its idle connections.
func (st *stats) retire(b *backend) {
	b.pool.closeIdle()
	st.mu.Lock()
	st.retired = append(st.retired, b)
	st.mu.Unlock()
}

// take returns the deltas since the last call and resets them, or nil if
// nothing happened.
func (st *stats) take(s *snapshot) *ipc.Stats {
	out := &ipc.Stats{
		ClientSuccess: st.clientSuccess.Swap(0),
		ClientFailed:  st.clientFailed.Swap(0),
		RoutedBehind:  st.routedBehind.Swap(0),
	}
	for i, code := range ipc.GeneratedStatuses {
		*out.Generated.Of(code) = st.gen[i].Swap(0)
	}
	add := func(b *backend) {
		c := &b.stats
		ss := ipc.ServerStats{
			ID: b.id, Success: c.success.Swap(0), Failed: c.failed.Swap(0),
			ConnectFailed: c.connectFailed.Swap(0), TimedOut: c.timedOut.Swap(0), Broken: c.broken.Swap(0),
		}
		for i := range c.responses {
			ss.Responses[i] = c.responses[i].Swap(0)
		}
		if ss.Success|ss.Failed != 0 {
			out.Servers = append(out.Servers, ss)
		}
	}
	// A retired server is reported until no request to it is in flight:
	// those still count when they finish.
	st.mu.Lock()
	retired := st.retired
	st.retired = nil
	for _, b := range retired {
		// A request counts its outcome before it leaves inflight; one that
		// picked b from an older snapshot may not have entered inflight
		// yet, so b is reported once more after it looks idle.
		add(b)
		if b.inflight.Load() > 0 || b.lastReport == 0 {
			if b.inflight.Load() == 0 {
				b.lastReport = 1
			}
			st.retired = append(st.retired, b)
		}
	}
	st.mu.Unlock()
	for _, b := range s.all {
		if !b.gone.Load() { // retired above
			add(b)
		}
	}
	if out.ClientSuccess|out.ClientFailed == 0 && len(out.Servers) == 0 && out.Generated == (ipc.Generated{}) && out.RoutedBehind == 0 {
		return nil
	}
	return out
}

// minTrimGap spaces the worker's memory trims (two collections and the
// refaults of its hot code, about a millisecond), so that traffic with
// pauses of a second does not pay for one every pause.
const minTrimGap = 10 * time.Second

// managerWriter is the only writer of the pipe to the manager once the
// worker reported Ready: it acknowledges pool versions as they are applied,
// and sends the counters' deltas every interval. When ctx ends it sends what
// is left once more.
func (w *worker) managerWriter(ctx context.Context, conn *ipc.Conn, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	var acked uint64
	trimmed := false // memory given back since the last traffic
	var lastTrim time.Time
	version := w.applied.Load() // pool changes count as activity too
	for {
		select {
		case <-ctx.Done():
			return w.report(conn)
		case <-w.appliedNote:
			if v := w.applied.Load(); v != acked {
				if err := conn.Send(&ipc.Message{Kind: ipc.Applied, Version: v, At: w.appliedAt.Load()}); err != nil {
					return err
				}
				acked = v
			}
		case now := <-t.C:
			busy, err := w.reportBusy(conn)
			if err != nil {
				return err
			}
			if v := w.applied.Load(); v != version {
				busy, version = true, v
			}
			switch {
			case busy:
				trimmed = false
			case !trimmed && now.Sub(lastTrim) >= minTrimGap && !w.inFlight():
				// Quiet (no request, no pool change) after start-up or
				// activity: give back what they grew now rather than over
				// minutes. Not while busy: the collections would hold up
				// requests and pool changes on the worker's one processor.
				memtrim.Trim()
				trimmed, lastTrim = true, now
			}
		}
	}
}

// inFlight reports whether a request is under way: a long download or a
// tunnel finishes no request for a while, but the worker is not idle.
func (w *worker) inFlight() bool {
	if s := w.snap.Load(); s != nil {
		for _, b := range s.all {
			if b.inflight.Load() > 0 {
				return true
			}
		}
	}
	return false
}

func (w *worker) report(conn *ipc.Conn) error {
	_, err := w.reportBusy(conn)
	return err
}

// reportBusy sends the deltas, if any, and reports whether there were.
func (w *worker) reportBusy(conn *ipc.Conn) (bool, error) {
	st := w.stats.take(w.snap.Load())
	if st == nil {
		return false, nil
	}
	return true, conn.Send(&ipc.Message{Kind: ipc.ReportStats, Stats: st})
}
