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
// listening socket stays open in the manager and the other generation),
// answers the next request on every connection with "Connection: close",
// closes connections that stay idle past idleGrace, lets requests in flight
// and tunnels finish, and closes whatever is left at the deadline.
func (w *worker) drain(fe *frontend, ln net.Listener, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	w.draining.Store(true)
	if fe.pacer != nil {
		fe.pacer.draining()
	}
	ln.Close()
	fe.waitZero(min(idleGrace, timeout))
	fe.closeConns(true)
	fe.waitZero(time.Until(deadline))
	if fe.open.Load() > 0 {
		w.log.Warn("drain timed out, closing connections", "timeout", timeout, "open", fe.open.Load())
	}
	fe.closeConns(false)
	fe.done.Wait()
	fe.up.closeAll(w)
}

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

// closeConns closes the client connections that are idle, or all of them.
// A Close waits while the connection's serveReady callback runs (a request
// under way, or one that came just as the connection was seen idle), so
// each runs on its own, outside the lock: none holds up the others.
func (f *frontend) closeConns(idleOnly bool) {
	f.mu.Lock()
	var cs []net.Conn
	for cc := range f.conns {
		if !idleOnly || cc.idle.Load() {
			cs = append(cs, cc.c)
		}
	}
	f.mu.Unlock()
	for _, c := range cs {
		go c.Close()
	}
}
