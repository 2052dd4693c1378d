package worker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weldr-proxy/weldr/internal/weldrtest"
	"github.com/weldr-proxy/weldr/ipc"
)

// waitLimit bounds every wait in these tests. It is generous: the tests never
// come near it unless something is broken.
const waitLimit = 10 * time.Second

// testSettings are the worker settings the tests use unless they say
// otherwise: short timeouts and frequent stats reports.
func testSettings() ipc.Settings {
	return ipc.Settings{
		ConnectTimeout:        500 * time.Millisecond,
		ResponseHeaderTimeout: time.Second,
		ReadHeaderTimeout:     5 * time.Second,
		IdleTimeout:           30 * time.Second,
		MaxHeaderBytes:        65536,
		PreserveHost:          true,
		StatsInterval:         50 * time.Millisecond,
		DrainTimeout:          2 * time.Second,
		LogLevel:              "debug",
	}
}

// socketpair returns both ends of a real unix socketpair, as the manager and
// a worker use.
func socketpair(t testing.TB) (mgr, wrk *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "ipc")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
		t.Cleanup(func() { c.Close() })
	}
	return conns[0], conns[1]
}

// syncBuffer is a bytes.Buffer safe for the worker's concurrent logging.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (sb *syncBuffer) Write(p []byte) (int, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.b.Write(p)
}

func (sb *syncBuffer) String() string {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.b.String()
}

// harness is a worker running Run in a goroutine, with the test playing its
// manager.
type harness struct {
	url    string // http://127.0.0.1:port, the proxy
	addr   string // 127.0.0.1:port
	ln     net.Listener
	mgr    *ipc.Conn
	pipe   *net.UnixConn // the manager's end of the socketpair
	bell   *ipc.Bell     // the manager's side of the worker's bell
	cancel context.CancelFunc
	client *http.Client
	logs   *syncBuffer

	answered atomic.Int64 // responses get read whole

	runDone chan error // Run's result
	ran     bool       // runErr holds Run's result
	runErr  error

	mu         sync.Mutex // guards reports and unexpected
	reports    []ipc.Stats
	unexpected []ipc.Kind
	applied    uint64        // the last pool version the worker acknowledged
	reading    bool          // statsReader was started
	readerDone chan struct{} // closed when statsReader got an error (EOF once Run closed the pipe)
}

// startWorker runs a worker with set and servers, waits for its Ready and
// collects its stats reports. Everything it starts is stopped in t.Cleanup.
func startWorker(t *testing.T, set ipc.Settings, servers ...ipc.Server) *harness {
	t.Helper()
	return startWorkerSharing(t, sharing{bell: true}, set, servers...)
}

// sharing is what the harness shares with its worker: a bell (h.bell) or
// none, and a board or none.
type sharing struct {
	bell  bool
	board *ipc.Board
	seat  int
}

// startWorkerSharing is startWorker sharing sh.
func startWorkerSharing(t *testing.T, sh sharing, set ipc.Settings, servers ...ipc.Server) *harness {
	t.Helper()
	h := launchWorkerSharing(t, sh)
	if err := h.mgr.Send(&ipc.Message{Kind: ipc.Snapshot, Settings: &set, Servers: servers}); err != nil {
		t.Fatalf("Send(Snapshot) = %v", err)
	}
	h.pipe.SetReadDeadline(time.Now().Add(waitLimit))
	var m ipc.Message
	if err := h.mgr.Receive(&m); err != nil {
		t.Fatalf("Receive() waiting for Ready = %v", err)
	}
	h.pipe.SetReadDeadline(time.Time{})
	if m.Kind != ipc.Ready || m.PID != os.Getpid() {
		t.Fatalf("first message from the worker = %s with PID %d, want Ready with PID %d", m.Kind, m.PID, os.Getpid())
	}
	if m.Bell != sh.bell {
		t.Fatalf("Ready says the worker reads a bell: %t, want %t (the manager counts a change rung as in force only then)", m.Bell, sh.bell)
	}
	h.reading = true
	go h.statsReader()
	return h
}

// launchWorker starts Run, with a bell, without sending it anything.
func launchWorker(t *testing.T) *harness {
	t.Helper()
	return launchWorkerSharing(t, sharing{bell: true})
}

// launchWorkerSharing is launchWorker sharing sh.
func launchWorkerSharing(t *testing.T, sh sharing) *harness {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	mgr, wrk := socketpair(t)
	var bell, theirs *ipc.Bell
	if sh.bell {
		bell, theirs = newBell(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	h := &harness{
		url:        "http://" + ln.Addr().String(),
		addr:       ln.Addr().String(),
		ln:         ln,
		mgr:        ipc.NewConn(mgr),
		pipe:       mgr,
		bell:       bell,
		cancel:     cancel,
		client:     &http.Client{Transport: tr, Timeout: waitLimit},
		logs:       &syncBuffer{},
		runDone:    make(chan error, 1),
		readerDone: make(chan struct{}),
	}
	go func() { h.runDone <- Run(ctx, ln, wrk, Shared{Bell: theirs, Board: sh.board, Seat: sh.seat}, h.logs) }()
	t.Cleanup(func() {
		tr.CloseIdleConnections() // a drain need not wait out idle keep-alive connections
		cancel()
		if ok, _ := h.waitRun(waitLimit); !ok {
			t.Errorf("Run did not return within %v of its context ending", waitLimit)
			mgr.Close()
			if ok, _ := h.waitRun(waitLimit); !ok {
				t.Errorf("Run did not return within %v of its pipe closing either", waitLimit)
			}
		}
		mgr.Close()
		if h.reading {
			<-h.readerDone // the pipe is closed: Receive fails at once
		}
		tr.CloseIdleConnections()
		if t.Failed() {
			t.Logf("worker log:\n%s", h.logs.String())
		}
	})
	return h
}

// newBell returns a bell for the test to ring as a manager would, and the
// worker's read-only mapping of it.
func newBell(t testing.TB) (ours, theirs *ipc.Bell) {
	t.Helper()
	ours, f, err := ipc.NewBell()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if theirs, err = ipc.OpenBell(fd); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	// The worker's mapping stays, as in a worker process: a Run that did
	// not return may still read it.
	t.Cleanup(func() { ours.Close() })
	return ours, theirs
}

// statsReader plays the manager's receiving side: it collects ReportStats
// until the pipe fails, normally with EOF after Run closed it.
func (h *harness) statsReader() {
	defer close(h.readerDone)
	for {
		var m ipc.Message
		if err := h.mgr.Receive(&m); err != nil {
			return
		}
		h.mu.Lock()
		switch m.Kind {
		case ipc.ReportStats:
			h.reports = append(h.reports, *m.Stats)
		case ipc.Applied:
			h.applied = max(h.applied, m.Version)
		default:
			h.unexpected = append(h.unexpected, m.Kind)
		}
		h.mu.Unlock()
	}
}

// waitRun waits up to d for Run to return, and reports whether it did and
// what it returned.
func (h *harness) waitRun(d time.Duration) (bool, error) {
	if h.ran {
		return true, h.runErr
	}
	select {
	case err := <-h.runDone:
		h.ran, h.runErr = true, err
		return true, err
	default:
	}
	if d <= 0 {
		return false, nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-h.runDone:
		h.ran, h.runErr = true, err
		return true, err
	case <-timer.C:
		return false, nil
	}
}

// mustReturn waits for Run to return and for its pipe to reach EOF, and
// fails the test if Run does not return nil.
func (h *harness) mustReturn(t *testing.T) {
	t.Helper()
	ok, err := h.waitRun(waitLimit)
	if !ok {
		t.Fatalf("Run did not return within %v", waitLimit)
	}
	if err != nil {
		t.Errorf("Run() = %v, want nil", err)
	}
	select {
	case <-h.readerDone:
	case <-time.After(waitLimit):
		t.Fatalf("the worker's end of the pipe was not closed within %v of Run returning", waitLimit)
	}
}

// send sends m to the worker as its manager.
// waitApplied waits until the worker acknowledged pool version v.
func (h *harness) waitApplied(t *testing.T, v uint64) {
	t.Helper()
	for deadline := time.Now().Add(waitLimit); ; time.Sleep(5 * time.Millisecond) {
		h.mu.Lock()
		got := h.applied
		h.mu.Unlock()
		if got >= v {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker did not acknowledge pool version %d (last: %d)", v, got)
		}
	}
}

func (h *harness) send(t *testing.T, m ipc.Message) {
	t.Helper()
	if err := h.mgr.Send(&m); err != nil {
		t.Fatalf("Send(%s) = %v", m.Kind, err)
	}
}

// finish drains the worker, waits for Run to return nil, and returns the sum
// of every stats report it sent.
func (h *harness) finish(t *testing.T) totals {
	t.Helper()
	h.client.CloseIdleConnections()
	h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: 2 * time.Second})
	h.mustReturn(t)
	return h.totals()
}

// totals are stats summed over reports.
type totals struct {
	clientSuccess, clientFailed uint64
	servers                     map[string]ipc.ServerStats
}

func (h *harness) totals() totals {
	h.mu.Lock()
	defer h.mu.Unlock()
	sum := totals{servers: map[string]ipc.ServerStats{}}
	for _, r := range h.reports {
		sum.clientSuccess += r.ClientSuccess
		sum.clientFailed += r.ClientFailed
		for _, s := range r.Servers {
			t := sum.servers[s.ID]
			t.ID = s.ID
			t.Success += s.Success
			t.Failed += s.Failed
			t.ConnectFailed += s.ConnectFailed
			sum.servers[s.ID] = t
		}
	}
	return sum
}

// waitTotals polls the reports until cond holds for their sum.
func (h *harness) waitTotals(t *testing.T, what string, cond func(totals) bool) totals {
	t.Helper()
	var sum totals
	waitFor(t, what, func() bool {
		sum = h.totals()
		return cond(sum)
	})
	return sum
}

// checkServer compares one server's summed stats with want.
func checkServer(t *testing.T, sum totals, want ipc.ServerStats) {
	t.Helper()
	if got := sum.servers[want.ID]; got.Success != want.Success || got.Failed != want.Failed || got.ConnectFailed != want.ConnectFailed {
		t.Errorf("stats of %s = success %d, failed %d, connect failed %d; want %d, %d, %d",
			want.ID, got.Success, got.Failed, got.ConnectFailed, want.Success, want.Failed, want.ConnectFailed)
	}
}

// checkClients compares the summed client counters with want.
func checkClients(t *testing.T, sum totals, success, failed uint64) {
	t.Helper()
	if sum.clientSuccess != success || sum.clientFailed != failed {
		t.Errorf("client stats = success %d, failed %d; want %d, %d", sum.clientSuccess, sum.clientFailed, success, failed)
	}
}

// waitFor polls cond until it holds, failing the test after waitLimit.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitLimit, what)
		}
		<-tick.C
	}
}

// waitListenerClosed polls until the proxy refuses new connections, which
// means the worker has started to drain.
func (h *harness) waitListenerClosed(t *testing.T) {
	t.Helper()
	waitFor(t, "the worker to stop accepting", func() bool {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
}

// origin starts an httptest backend, stopped in t.Cleanup, and returns it
// with the ipc.Server that names it.
func origin(t *testing.T, handler http.HandlerFunc) (*httptest.Server, ipc.Server) {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	return srv, serverOf(t, srv.URL)
}

// serverOf returns the ipc.Server for a URL, as the manager would send it.
func serverOf(t *testing.T, rawURL string) ipc.Server {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return ipc.Server{ID: u.Host, URL: u.Scheme + "://" + u.Host, Weight: 1}
}

// named starts a backend that answers every request with its name.
func named(t *testing.T, name string) ipc.Server {
	t.Helper()
	_, s := origin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Origin", name)
		io.WriteString(w, name)
	})
	return s
}

// refusing returns a server whose port refuses connections: a socket bound
// to it, never listening, held until the test ends. (A listener opened and
// closed again gave its port back, and the next call could get the same
// one: two servers with one ID.)
func refusing(t *testing.T) ipc.Server {
	t.Helper()
	_, addr := boundSocket(t)
	return ipc.Server{ID: addr, URL: "http://" + addr, Weight: 1}
}

// unanswering returns a server whose listening socket's accept queue is
// full: a new connection to it gets no answer to its SYN and times out.
func unanswering(t *testing.T) ipc.Server {
	t.Helper()
	fd, addr := boundSocket(t)
	if err := unix.Listen(fd, 0); err != nil { // a queue of one
		t.Fatal(err)
	}
	for range 2 {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); !isTimeout(err) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("a connection to a full accept queue: %v, want a timeout", err)
	}
	return ipc.Server{ID: addr, URL: "http://" + addr, Weight: 1}
}

// boundSocket returns a TCP socket bound to a free port of 127.0.0.1, and
// its address.
func boundSocket(t *testing.T) (int, string) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
}

// get sends GET path to the proxy and returns the status and body.
func (h *harness) get(t *testing.T, path string) (int, string) {
	t.Helper()
	res, err := h.client.Get(h.url + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", path, err)
	}
	h.answered.Add(1)
	return res.StatusCode, string(b)
}

// waitRouting sends requests until a whole round of them reaches exactly the
// backends named in want, so that a pool change sent before is in effect.
// Requests run one at a time, so once a round misses a server that the old
// pool routed to, every later request routes by the new pool.
func (h *harness) waitRouting(t *testing.T, want ...string) {
	t.Helper()
	const round = 8 // twice the largest pool these tests use
	wantSet := map[string]bool{}
	for _, w := range want {
		wantSet[w] = true
	}
	var last map[string]int
	waitFor(t, "routing to exactly "+strings.Join(want, ", "), func() bool {
		last = map[string]int{}
		for i := 0; i < round; i++ {
			_, body := h.get(t, "/")
			last[body]++
		}
		if len(last) != len(wantSet) {
			return false
		}
		for name := range last {
			if !wantSet[name] {
				return false
			}
		}
		return true
	})
	// Round robin: the next requests cycle through want, each once a cycle.
	seq := make([]string, 2*len(want))
	for i := range seq {
		_, seq[i] = h.get(t, "/")
	}
	for i := range want {
		if seq[i] != seq[i+len(want)] {
			t.Fatalf("requests reached %v, want a round robin cycle over %v", seq, want)
		}
	}
}

func TestRunReportsReady(t *testing.T) {
	a := named(t, "a")
	h := startWorker(t, testSettings(), a) // checks Ready and its PID
	if code, body := h.get(t, "/"); code != http.StatusOK || body != "a" {
		t.Errorf("GET / = %d %q, want 200 \"a\"", code, body)
	}
}

func TestRunRejectsFirstMessageNotSnapshot(t *testing.T) {
	h := launchWorker(t)
	h.send(t, ipc.Message{Kind: ipc.AddServer, Servers: ipc.Servers{{ID: "127.0.0.1:1", URL: "http://127.0.0.1:1"}}})
	ok, err := h.waitRun(waitLimit)
	if !ok {
		t.Fatalf("Run did not return after a first message other than Snapshot")
	}
	if err == nil || !strings.Contains(err.Error(), "Snapshot") {
		t.Errorf("Run() = %v, want an error saying it wanted a Snapshot", err)
	}
}

func TestRunFailsWhenManagerLeavesBeforeSnapshot(t *testing.T) {
	h := launchWorker(t)
	h.pipe.Close()
	ok, err := h.waitRun(waitLimit)
	if !ok {
		t.Fatalf("Run did not return after its pipe closed")
	}
	if !errors.Is(err, io.EOF) {
		t.Errorf("Run() = %v, want an error wrapping io.EOF", err)
	}
}

func TestRunStopsOnContextBeforeSnapshot(t *testing.T) {
	h := launchWorker(t)
	h.cancel()
	ok, err := h.waitRun(waitLimit)
	if !ok {
		t.Errorf("Run did not return within %v of its context ending while it waited for the Snapshot", waitLimit)
		h.pipe.Close()
	} else if err == nil {
		t.Errorf("Run() = nil after its context ended before the Snapshot, want an error")
	}
}

func TestRoundRobinAcrossBackends(t *testing.T) {
	h := startWorker(t, testSettings(), named(t, "a"), named(t, "b"), named(t, "c"))
	var got []string
	for i := 0; i < 9; i++ {
		_, body := h.get(t, "/")
		got = append(got, body)
	}
	want := []string{"a", "b", "c", "a", "b", "c", "a", "b", "c"}
	if strings.Join(got, "") != strings.Join(want, "") {
		t.Errorf("requests reached %v, want %v", got, want)
	}
}

func TestBalanceSetting(t *testing.T) {
	set := testSettings()
	set.Balance = WeightedRoundRobin
	a, b := named(t, "a"), named(t, "b")
	b.Weight = 3
	h := startWorker(t, set, a, b)
	got := map[string]int{}
	for i := 0; i < 8; i++ {
		_, body := h.get(t, "/")
		got[body]++
	}
	if got["a"] != 2 || got["b"] != 6 {
		t.Errorf("8 requests over weights a=1 b=3 reached %v, want a 2 and b 6", got)
	}
}

// With a bell or without (the manager could not make one), a worker
// routes by every change the manager sends.
func TestPoolUpdates(t *testing.T) {
	for _, bell := range []bool{true, false} {
		t.Run(map[bool]string{true: "bell", false: "no bell"}[bell], func(t *testing.T) { testPoolUpdates(t, bell) })
	}
}

func testPoolUpdates(t *testing.T, bell bool) {
	a, b, c, d := named(t, "a"), named(t, "b"), named(t, "c"), named(t, "d")
	h := startWorkerSharing(t, sharing{bell: bell}, testSettings(), a, b)
	h.waitRouting(t, "a", "b")

	steps := []struct {
		name string
		msg  ipc.Message
		want []string
	}{
		{"add c", ipc.Message{Kind: ipc.AddServer, Servers: ipc.Servers{c}}, []string{"a", "b", "c"}},
		{"mark a down", ipc.Message{Kind: ipc.MarkServerDown, ID: a.ID}, []string{"b", "c"}},
		{"remove b", ipc.Message{Kind: ipc.RemoveServer, ID: b.ID}, []string{"c"}},
		{"mark a active", ipc.Message{Kind: ipc.MarkServerActive, ID: a.ID}, []string{"a", "c"}},
		{"add c again", ipc.Message{Kind: ipc.AddServer, Servers: ipc.Servers{c}}, []string{"a", "c"}},
		{"add d down", ipc.Message{Kind: ipc.AddServer, Servers: ipc.Servers{{ID: d.ID, URL: d.URL, Down: true}}}, []string{"a", "c"}},
		{"mark d active", ipc.Message{Kind: ipc.MarkServerActive, ID: d.ID}, []string{"a", "c", "d"}},
		{"remove unknown", ipc.Message{Kind: ipc.RemoveServer, ID: "127.0.0.1:1"}, []string{"a", "c", "d"}},
		{"mark unknown down", ipc.Message{Kind: ipc.MarkServerDown, ID: "127.0.0.1:1"}, []string{"a", "c", "d"}},
		{"new snapshot", ipc.Message{Kind: ipc.Snapshot, Settings: ptr(testSettings()), Servers: ipc.Servers{b, {ID: c.ID, URL: c.URL, Down: true}, d}}, []string{"b", "d"}},
	}
	for i, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.msg.Version = uint64(i + 1)
			h.send(t, st.msg)
			if h.bell != nil {
				h.bell.Ring(st.msg.Version) // as the manager does once it is sent
				// From the ring on, no request routes by the pool before.
				for range 8 {
					if _, body := h.get(t, "/"); !slices.Contains(st.want, body) {
						t.Fatalf("a request after the bell rang reached %q, want one of %v", body, st.want)
					}
				}
			}
			h.waitRouting(t, st.want...)
		})
	}
}

func ptr[T any](v T) *T { return &v }

// A change may reach the worker in pieces, split at any byte: nothing is
// lost, and once the manager has rung the bell for the whole change, the
// next request routes by it, whether it or the worker's reader read the
// rest. (TestReadPipeAtEveryByte has requests read between the pieces.)
func TestAChangeSplitAtEveryByte(t *testing.T) {
	a, b := named(t, "a"), named(t, "b")
	h := startWorker(t, testSettings(), a, b)
	h.waitRouting(t, "a", "b")
	v := uint64(0)
	for _, msg := range []ipc.Message{{Kind: ipc.MarkServerDown, ID: a.ID}, {Kind: ipc.MarkServerActive, ID: a.ID}} {
		want := map[string]bool{"a": true, "b": true}
		if msg.Kind == ipc.MarkServerDown {
			want = map[string]bool{"b": true}
		}
		eachCut(t, msg, &v, func(frame []byte, cut int) {
			if _, err := h.pipe.Write(frame[:cut]); err != nil {
				t.Fatal(err)
			}
			weldrtest.WaitSocketQueue(t, h.pipe, unix.SIOCOUTQ) // the worker took the part and waits
			if _, err := h.pipe.Write(frame[cut:]); err != nil {
				t.Fatal(err)
			}
			h.bell.Ring(v)
			if code, body := h.get(t, "/"); code != http.StatusOK || !want[body] {
				t.Fatalf("version %d (%s) cut after %d bytes: GET = %d %q, want 200 from one of %v", v, msg.Kind, cut, code, body, want)
			}
			h.waitApplied(t, v)
		})
	}
	if n := strings.Count(h.logs.String(), "routing by an older pool"); n > 0 {
		t.Errorf("%d requests could not catch up with the bell, want none", n)
	}
}

// eachCut sends f msg's frame and each byte it may be cut at, from 0 to its
// length, with a new version each time, counted on from *v.
func eachCut(t *testing.T, msg ipc.Message, v *uint64, f func(frame []byte, cut int)) {
	t.Helper()
	for cut := 0; ; cut++ {
		*v++
		msg.Version = *v
		frame, err := ipc.AppendFrame(nil, &msg)
		if err != nil {
			t.Fatal(err)
		}
		if cut > len(frame) {
			return
		}
		f(frame, cut)
	}
}

// A request that finds the bell rung for a change the pipe does not hold
// (the manager rings only once a change is whole in the pipe, so this
// does not happen) routes by the pool the worker has, without waiting, and
// is counted. The change, when it comes, is applied as any other.
func TestARequestBehindABellRungTooSoon(t *testing.T) {
	a, b := named(t, "a"), named(t, "b")
	h := startWorker(t, testSettings(), a)
	h.waitRouting(t, "a")
	frame, err := ipc.AppendFrame(nil, &ipc.Message{Kind: ipc.AddServer, Version: 5, Servers: ipc.Servers{b}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.pipe.Write(frame[:len(frame)-1]); err != nil {
		t.Fatal(err)
	}
	weldrtest.WaitSocketQueue(t, h.pipe, unix.SIOCOUTQ)
	h.bell.Ring(5)
	const n = 3
	for i := range n {
		if code, body := h.get(t, "/"); code != http.StatusOK || body != "a" {
			t.Fatalf("GET %d = %d %q, want 200 from a", i, code, body)
		}
	}
	var behind uint64
	waitFor(t, "a report of the requests routed behind", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		behind = 0
		for _, r := range h.reports {
			behind += r.RoutedBehind
		}
		return behind >= n
	})
	if logged := strings.Count(h.logs.String(), "routing by an older pool"); behind != n || logged != 1 {
		t.Errorf("routed behind: %d in the reports, %d in the log; want %d, and 1 line", behind, logged, n)
	}
	if _, err := h.pipe.Write(frame[len(frame)-1:]); err != nil {
		t.Fatal(err)
	}
	h.waitApplied(t, 5)
	h.waitRouting(t, "a", "b")
}

func TestStatsReports(t *testing.T) {
	a, b, c := named(t, "a"), named(t, "b"), named(t, "c")
	h := startWorker(t, testSettings(), a, b, c)
	const n = 30
	for i := 0; i < n; i++ {
		if code, _ := h.get(t, "/"); code != http.StatusOK {
			t.Fatalf("GET / = %d, want 200", code)
		}
	}
	sum := h.waitTotals(t, "stats of 30 requests", func(s totals) bool { return s.clientSuccess >= n })
	checkClients(t, sum, n, 0)
	for _, s := range []ipc.Server{a, b, c} {
		checkServer(t, sum, ipc.ServerStats{ID: s.ID, Success: n / 3})
	}
	if len(sum.servers) != 3 {
		t.Errorf("stats name %d servers, want 3", len(sum.servers))
	}

	// Reports are deltas: draining reports nothing more.
	sum = h.finish(t)
	checkClients(t, sum, n, 0)
	for _, s := range []ipc.Server{a, b, c} {
		checkServer(t, sum, ipc.ServerStats{ID: s.ID, Success: n / 3})
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.unexpected) > 0 {
		t.Errorf("the worker sent %v after Ready, want only ReportStats", h.unexpected)
	}
	for i, r := range h.reports {
		if r.ClientSuccess == 0 && r.ClientFailed == 0 && len(r.Servers) == 0 {
			t.Errorf("report %d is empty, want reports only when something changed", i)
		}
	}
}

// slowOrigin is a backend whose /slow requests wait until released.
type slowOrigin struct {
	server  ipc.Server
	arrived chan struct{} // receives once per /slow request that came in
	release chan struct{} // closed to let /slow requests finish
	once    sync.Once
}

func newSlowOrigin(t *testing.T, name string) *slowOrigin {
	t.Helper()
	so := &slowOrigin{arrived: make(chan struct{}, 16), release: make(chan struct{})}
	_, so.server = origin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Origin", name)
		if r.URL.Path == "/slow" {
			so.arrived <- struct{}{}
			select {
			case <-so.release:
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, name)
	})
	t.Cleanup(so.free) // runs before the backend's Close: it must not wait on a blocked handler
	return so
}

func (so *slowOrigin) free() { so.once.Do(func() { close(so.release) }) }

// waitArrived waits for a /slow request to reach the backend.
func (so *slowOrigin) waitArrived(t *testing.T) {
	t.Helper()
	select {
	case <-so.arrived:
	case <-time.After(waitLimit):
		t.Fatalf("the slow request did not reach its backend within %v", waitLimit)
	}
}

// result is what a client got for a request sent in the background.
type result struct {
	code int
	body string
	hdr  http.Header
	err  error
}

// getAsync sends GET path in the background; the channel gets its result.
func (h *harness) getAsync(path string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		res, err := h.client.Get(h.url + path)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		ch <- result{code: res.StatusCode, body: string(b), hdr: res.Header, err: err}
	}()
	return ch
}

func waitResult(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(waitLimit):
		t.Fatalf("no response within %v", waitLimit)
		return result{}
	}
}

// When weldr stops for good the manager shuts the listening socket down
// before the workers' Drain messages arrive (manager.refuseConnections). A
// worker whose accept fails so goes on serving what it has and waits for
// its Drain, rather than failing.
func TestWorkerWaitsForItsDrainAfterTheSocketIsShutDown(t *testing.T) {
	so := newSlowOrigin(t, "a")
	h := startWorker(t, testSettings(), so.server)
	slow := h.getAsync("/slow")
	so.waitArrived(t)
	rc, err := h.ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		if err := unix.Shutdown(int(fd), unix.SHUT_RD); err != nil {
			t.Fatalf("shutdown of the listening socket: %v", err)
		}
	})
	if ok, err := h.waitRun(300 * time.Millisecond); ok {
		t.Fatalf("Run returned %v when the listening socket was shut down; want it to wait for its Drain", err)
	}
	so.free()
	if r := waitResult(t, slow); r.err != nil || r.code != http.StatusOK {
		t.Errorf("GET /slow under way = %d, %v; want 200", r.code, r.err)
	}
	h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: time.Second})
	h.mustReturn(t)
}

func TestDrainFinishesInFlightRequest(t *testing.T) {
	so := newSlowOrigin(t, "slow")
	h := startWorker(t, testSettings(), so.server)
	res := h.getAsync("/slow")
	so.waitArrived(t)

	h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: 5 * time.Second})
	h.waitListenerClosed(t)
	if ok, err := h.waitRun(0); ok {
		t.Fatalf("Run() = %v while a request was still in flight, want it to wait", err)
	}
	so.free()
	if r := waitResult(t, res); r.err != nil || r.code != http.StatusOK || r.body != "slow" {
		t.Errorf("in-flight GET /slow = %d %q, %v; want 200 \"slow\"", r.code, r.body, r.err)
	}
	h.mustReturn(t)
	sum := h.totals()
	checkClients(t, sum, 1, 0)
	checkServer(t, sum, ipc.ServerStats{ID: so.server.ID, Success: 1})
}

func TestDrainTimeoutCutsSlowRequest(t *testing.T) {
	for _, timeout := range []time.Duration{100 * time.Millisecond, 0} {
		t.Run(timeout.String(), func(t *testing.T) {
			so := newSlowOrigin(t, "slow")
			h := startWorker(t, testSettings(), so.server)
			res := h.getAsync("/slow")
			so.waitArrived(t)
			h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: timeout})
			h.mustReturn(t) // the request never finishes: Run must give up on it
			// Cut while its backend had not answered: weldr says so if the
			// client's connection is still there to write to.
			if r := waitResult(t, res); r.err == nil && (r.code != http.StatusServiceUnavailable || r.body != msgCut) {
				t.Errorf("GET /slow cut by a drain timeout of %v = %d %q, want a closed connection or 503 %q", timeout, r.code, r.body, msgCut)
			}
		})
	}
}

func TestRunEndsWhenManagerCloses(t *testing.T) {
	so := newSlowOrigin(t, "slow")
	h := startWorker(t, testSettings(), so.server)
	res := h.getAsync("/slow")
	so.waitArrived(t)
	h.pipe.Close()
	h.waitListenerClosed(t)
	so.free()
	if r := waitResult(t, res); r.err != nil || r.code != http.StatusOK {
		t.Errorf("in-flight GET /slow = %d, %v; want 200", r.code, r.err)
	}
	ok, err := h.waitRun(waitLimit)
	if !ok {
		t.Fatalf("Run did not return within %v of its manager closing the pipe", waitLimit)
	}
	if err != nil {
		t.Errorf("Run() = %v, want nil", err)
	}
}

func TestLastStatsBeforeExit(t *testing.T) {
	tests := []struct {
		name string
		stop func(h *harness, t *testing.T)
	}{
		{"drain", func(h *harness, t *testing.T) {
			h.send(t, ipc.Message{Kind: ipc.Drain, DrainTimeout: time.Second})
		}},
		{"manager closed its side", func(h *harness, t *testing.T) {
			if err := h.pipe.CloseWrite(); err != nil {
				t.Fatal(err)
			}
		}},
		{"context canceled", func(h *harness, t *testing.T) { h.cancel() }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			set := testSettings()
			set.StatsInterval = time.Hour // only the last report
			a := named(t, "a")
			h := startWorker(t, set, a)
			for i := 0; i < 3; i++ {
				h.get(t, "/")
			}
			h.client.CloseIdleConnections() // the drain need not wait out its grace
			tc.stop(h, t)
			h.mustReturn(t)
			h.mu.Lock()
			reports := h.reports
			h.mu.Unlock()
			if len(reports) != 1 {
				t.Fatalf("got %d stats reports before the pipe closed, want 1", len(reports))
			}
			sum := h.totals()
			checkClients(t, sum, 3, 0)
			checkServer(t, sum, ipc.ServerStats{ID: a.ID, Success: 3})
		})
	}
}

func TestNoLastStatsWhenNothingHappened(t *testing.T) {
	set := testSettings()
	set.StatsInterval = time.Hour
	h := startWorker(t, set, named(t, "a"))
	h.finish(t)
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.reports) != 0 {
		t.Errorf("got %d stats reports from an idle worker, want 0", len(h.reports))
	}
}

func TestRemovedServerStatsKeepInFlightRequests(t *testing.T) {
	so := newSlowOrigin(t, "a")
	b := named(t, "b")
	h := startWorker(t, testSettings(), so.server, b)
	res := h.getAsync("/slow") // round robin: the first request goes to a
	so.waitArrived(t)

	// Wait for the acknowledgement, not only for routing to show it: probes
	// sent before the removal applied would reach a and count as its successes.
	h.send(t, ipc.Message{Kind: ipc.RemoveServer, ID: so.server.ID, Version: 100})
	h.waitApplied(t, 100)
	h.waitRouting(t, "b")
	// A report taken after the removal: a's last counts are reported then.
	h.waitTotals(t, "a report after the removal", func(s totals) bool {
		return s.clientSuccess >= uint64(h.answered.Load())
	})

	so.free()
	if r := waitResult(t, res); r.err != nil || r.code != http.StatusOK {
		t.Fatalf("in-flight GET /slow = %d, %v; want 200", r.code, r.err)
	}
	sum := h.finish(t)
	var servers uint64
	for _, s := range sum.servers {
		servers += s.Success
	}
	if servers != sum.clientSuccess {
		t.Errorf("servers' success sums to %d but client success is %d: the request in flight to a removed server was not counted (a: %+v)",
			servers, sum.clientSuccess, sum.servers[so.server.ID])
	}
	checkServer(t, sum, ipc.ServerStats{ID: so.server.ID, Success: 1})
}

// rawOrigin is a backend that speaks raw TCP, for answers httptest cannot
// give (truncated bodies, exact header lines).
func rawOrigin(t *testing.T, handle func(c net.Conn, br *bufio.Reader)) ipc.Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards conns
		conns = map[net.Conn]bool{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(waitLimit))
				handle(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ipc.Server{ID: ln.Addr().String(), URL: "http://" + ln.Addr().String(), Weight: 1}
}
