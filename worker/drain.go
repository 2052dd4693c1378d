package worker

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// idleGrace is how long a draining worker leaves kept-alive connections
// open so that a client which is sending on one gets an answer (with
// "Connection: close") instead of a reset. Closing an idle keep-alive
// connection under a client is how proxies lose requests on reload.
const idleGrace = time.Second

// drain stops the worker gracefully within timeout: it stops accepting
// (the listening socket stays open in the manager and the other
// generation), answers the next request on every connection with
// "Connection: close", closes connections that stay idle past idleGrace,
// waits for in-flight requests and tunnels, and closes whatever is left at
// the deadline.
func (w *worker) drain(srv *http.Server, ln net.Listener, p *proxy, conns *connCount, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	w.draining.Store(true)
	ln.Close()
	conns.waitZero(min(idleGrace, timeout))

	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		w.log.Warn("drain timed out, closing connections", "timeout", timeout)
		srv.Close()
	}
	p.tunnels.closeAt(deadline)
}

// connCount counts a server's open client connections, for the drain to
// know when none is left.
type connCount struct {
	mu   sync.Mutex // guards n and zero
	n    int
	zero chan struct{} // closed when n reaches 0
}

func newConnCount() *connCount { return &connCount{zero: closedChan()} }

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// track is an http.Server ConnState hook.
func (c *connCount) track(_ net.Conn, state http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch state {
	case http.StateNew:
		if c.n == 0 {
			c.zero = make(chan struct{})
		}
		c.n++
	case http.StateClosed, http.StateHijacked:
		c.n--
		if c.n == 0 {
			close(c.zero)
		}
	}
}

// waitZero waits until no connection is open, or for d.
func (c *connCount) waitZero(d time.Duration) {
	c.mu.Lock()
	zero := c.zero
	c.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-zero:
	case <-t.C:
	}
}

// tunnels are the hijacked (upgraded) connections of a worker, which the
// HTTP server stops tracking at the hijack. A tunnel is registered before the
// hijack, so a drain never misses one that is being set up.
type tunnels struct {
	mu     sync.Mutex // guards open, empty and closed
	open   map[*tunnel]struct{}
	empty  chan struct{} // closed when open becomes empty, if someone waits
	closed bool          // the drain deadline passed: close new tunnels at once
}

// tunnel is one registered tunnel; conn is nil until the hijack.
type tunnel struct{ conn io.Closer }

// begin registers a tunnel about to be hijacked.
func (t *tunnels) begin() *tunnel {
	tu := &tunnel{}
	t.mu.Lock()
	if t.open == nil {
		t.open = make(map[*tunnel]struct{})
	}
	t.open[tu] = struct{}{}
	t.mu.Unlock()
	return tu
}

// attach records the hijacked connection of tu.
func (t *tunnels) attach(tu *tunnel, c io.Closer) {
	t.mu.Lock()
	tu.conn = c
	if t.closed {
		c.Close()
	}
	t.mu.Unlock()
}

// end unregisters tu once its goroutines are done with the connection.
func (t *tunnels) end(tu *tunnel) {
	t.mu.Lock()
	delete(t.open, tu)
	if len(t.open) == 0 && t.empty != nil {
		close(t.empty)
		t.empty = nil
	}
	t.mu.Unlock()
}

// closeAt lets tunnels run until deadline, then closes them and waits until
// their goroutines have finished with them.
func (t *tunnels) closeAt(deadline time.Time) {
	t.mu.Lock()
	if len(t.open) == 0 {
		t.mu.Unlock()
		return
	}
	empty := make(chan struct{})
	t.empty = empty
	t.mu.Unlock()

	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-empty:
		return
	case <-timer.C:
	}
	t.mu.Lock()
	t.closed = true
	for tu := range t.open {
		if tu.conn != nil {
			tu.conn.Close()
		}
	}
	t.mu.Unlock()
	<-empty
}
