package worker

import (
	"net"
	"time"
)

// idleGrace is how long a draining worker leaves kept-alive connections
// open so that a client which is sending on one gets an answer (with
// "Connection: close") instead of a reset. Closing an idle keep-alive
// connection under a client is how proxies lose requests on reload.
const idleGrace = time.Second

// drain stops the worker gracefully within timeout: it stops accepting (the
// listening socket stays open in a new generation; when weldr stops, the
// manager shuts it down),
// answers the next request on every connection with "Connection: close",
// lets requests in flight and tunnels finish, closes connections that stay
// idle for idleGrace after the drain began (checking every sweepEvery), and
// closes whatever is left at the deadline. A connection whose answer began
// before the drain was kept alive by it: it goes idle when its body is
// through, and is closed once idle for idleGrace too.
func (w *worker) drain(fe *frontend, ln net.Listener, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	w.draining.Store(true)
	if fe.pacer != nil {
		fe.pacer.draining()
	}
	ln.Close()
	fe.waitZero(min(idleGrace, timeout))
	for fe.open.Load() > 0 {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		fe.closeIdle(time.Now().Add(-idleGrace))
		fe.waitZero(min(sweepEvery, left))
	}
	if fe.open.Load() > 0 {
		w.log.Warn("drain timed out, closing connections", "timeout", timeout, "open", fe.open.Load())
	}
	fe.closeAll()
	fe.done.Wait()
	fe.up.closeAll(w)
}

// sweepEvery is how often a draining worker looks for connections idle
// for idleGrace.
const sweepEvery = idleGrace / 4

// waitZero waits until no client connection is open, or for d.
func (f *frontend) waitZero(d time.Duration) {
	if f.open.Load() == 0 || d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for f.open.Load() > 0 {
		select {
		case <-f.zero:
		case <-t.C:
			return
		}
	}
}

// closeIdle closes the client connections that have waited for a request
// since before.
func (f *frontend) closeIdle(before time.Time) {
	f.closeConns(max(1, int64(before.Sub(f.epoch))))
}

// closeAll closes every client connection, and every backend connection a
// request uses or is still making: the client's Close waits for that
// request (see closeConns), which would otherwise wait on its backend, to
// connect up to the connect timeout, for the answer's head up to the
// response header timeout, for its body without a limit. A request that
// takes its backend connection after this closes it itself
// (clientConn.track).
func (f *frontend) closeAll() {
	f.cut.Store(true)
	f.endDials()
	f.mu.Lock()
	for cc := range f.conns {
		if up := cc.upstream.Load(); up != nil {
			up.c.Close()
		}
	}
	f.mu.Unlock()
	f.closeConns(0)
}

// closeConns closes the client connections idle since idleBy (in
// f.epoch's nanoseconds) or earlier, or all of them if idleBy is 0.
// A Close waits while the connection's serveReady callback runs (a request
// under way, or one that came just as the connection was seen idle), so
// each runs on its own, outside the lock: none holds up the others.
func (f *frontend) closeConns(idleBy int64) {
	f.mu.Lock()
	var cs []net.Conn
	for cc := range f.conns {
		if since := cc.idleSince.Load(); idleBy == 0 || since != 0 && since <= idleBy {
			cs = append(cs, cc.c)
		}
	}
	f.mu.Unlock()
	for _, c := range cs {
		go c.Close()
	}
}
