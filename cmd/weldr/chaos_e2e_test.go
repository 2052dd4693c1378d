package main

// Chaos tests: the real binary, real worker processes and real sockets on
// loopback, under faults a fleet sees in production: a worker killed under
// load, backends that reset or trickle, garbage from clients, and ten
// thousand idle connections. They only look at weldr from outside (HTTP,
// the admin API, signals and /proc), so they hold for any proxy engine.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// chaosHealth checks /health on every server, so that the paths the tests
// send traffic to stay theirs.
const chaosHealth = `[health]
path = "/health"
`

func TestChaosSIGKILLWorkerUnderLoad(t *testing.T) {
	const clients = 8
	d := start(t, options{workers: 2})
	pid := d.cmd.Process.Pid
	a, b := newOrigin(t, "a", "/health"), newOrigin(t, "b", "/health")
	d.register(t, a.url())
	d.register(t, b.url())
	before := children(pid)
	if len(before) != 2 {
		t.Fatalf("manager %d has children %v, want 2 workers", pid, before)
	}

	l := chaosStartLoad(d, clients)
	defer l.halt() // also on a failed assertion below
	waitFor(t, 10*time.Second, "load on both origins", func() bool { return a.hits.Load() > 20 && b.hits.Load() > 20 })

	// The victim is the worker holding more of the clients' connections.
	// Stop it first, so that they can be counted without it accepting
	// more, then kill it.
	port := chaosPort(t, d.proxy)
	victim := before[0]
	if chaosClientConns(before[1:], port) > chaosClientConns(before[:1], port) {
		victim = before[1]
	}
	syscall.Kill(victim, syscall.SIGSTOP)
	held := chaosClientConns([]int{victim}, port)
	sentBefore := l.sent.Load()
	killed := time.Now()
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatalf("killing worker %d: %v", victim, err)
	}

	var replacement int
	waitFor(t, 10*time.Second, "a new worker next to the survivor", func() bool {
		now := children(pid)
		if len(now) != 2 {
			return false
		}
		for _, w := range now {
			if !slices.Contains(before, w) {
				replacement = w
				return true
			}
		}
		return false
	})
	newPIDAfter := time.Since(killed)
	waitFor(t, 10*time.Second, "/healthz 200 with the replacement", func() bool { return chaosHealthz(d) == http.StatusOK })
	healthyAfter := time.Since(killed)
	t.Logf("worker replaced in %s (kill → new PID %d: %s; kill → /healthz 200: %s)", healthyAfter, replacement, newPIDAfter, healthyAfter)

	// Keep the load going on the repaired fleet: a duration, not a wait.
	failedAtHealthy := l.failedTotal()
	time.Sleep(2 * time.Second)
	l.halt()

	failed := l.failedTotal()
	t.Logf("%d requests (%d before the kill), %d failed, %d of them after /healthz was 200 again; the killed worker held %d client connections; failures: %v",
		l.sent.Load(), sentBefore, failed, failed-failedAtHealthy, held, l.kinds())
	if failed > int64(held) || failed > clients {
		t.Errorf("%d requests failed, want at most the %d client connections the killed worker held (and at most %d clients)", failed, held, clients)
	}
	for i := range l.perClient {
		if n := l.perClient[i].Load(); n > 1 {
			t.Errorf("client %d saw %d failures, want at most 1 (one connection on the killed worker)", i, n)
		}
	}
	if l.sent.Load() <= sentBefore {
		t.Error("no request was sent after the kill")
	}
	if alive(victim) {
		t.Errorf("killed worker %d is still alive", victim)
	}
	if !alive(replacement) {
		t.Errorf("replacement worker %d is not alive", replacement)
	}
	if n := d.metric(t, "weldr_worker_restarts_total"); n != 1 {
		t.Errorf("weldr_worker_restarts_total = %d, want 1", n)
	}

	// Every request succeeds again, spread over both workers by fresh
	// connections.
	if n, first := chaosBurst(d.proxy+"/", 50, 10); n != 0 {
		t.Errorf("%d of 50 requests after the replacement failed (first: %v), want none", n, first)
	}
	chaosLogClean(t, d)
}

func TestChaosBackendResetMidResponse(t *testing.T) {
	d := start(t, options{extra: chaosHealth})
	raw := newResetOrigin(t)
	healthy := newOrigin(t, "b", "/health")
	d.register(t, raw.url())
	d.register(t, healthy.url())
	pid := d.cmd.Process.Pid

	// Normal traffic in parallel, through both origins (raw answers / in full).
	stop := make(chan struct{})
	type tally struct{ sent, failed int }
	normal := make(chan tally)
	go func() {
		var n tally
		client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
		defer client.CloseIdleConnections()
		for i := 0; i < 5000; i++ { // bounded; stopped long before
			select {
			case <-stop:
				normal <- n
				return
			default:
			}
			n.sent++
			// POST: net/http's client would silently retry an idempotent
			// request on a kept-alive connection the proxy closed.
			if err := chaosCheck(client.Post(d.proxy+"/", "text/plain", strings.NewReader("x"))); err != nil {
				n.failed++
				t.Errorf("normal request %d during the resets: %v", i, err)
			}
			time.Sleep(2 * time.Millisecond) // pace, not wait
		}
		normal <- n
	}()

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	const wantResets = 6
	resets, fromHealthy := 0, 0
	var kinds []string
	for id := 0; id < 60 && resets < wantResets; id++ { // round robin: about every other one reaches raw
		// Odd ids make the origin pause before the reset, so that the proxy
		// surely relayed the headers already; even ids reset at once.
		target := fmt.Sprintf("%s/reset?id=%d&pause=%d", d.proxy, id, id%2)
		began := time.Now()
		res, err := client.Get(target)
		var body []byte
		if err == nil {
			body, err = io.ReadAll(res.Body)
			res.Body.Close()
		}
		took := time.Since(began)
		if !raw.got(id) {
			// The healthy origin answered: that must be whole and clean.
			if err != nil || res.StatusCode != 200 || string(body) != "b" {
				t.Errorf("GET /reset?id=%d served by the healthy origin = %v, want 200 \"b\"", id, chaosDescribe(res, body, err))
			}
			fromHealthy++
			continue
		}
		resets++
		kind := chaosDescribe(res, body, err)
		kinds = append(kinds, fmt.Sprintf("id %d (pause %d): %s after %s", id, id%2, kind, took.Round(time.Millisecond)))
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			t.Errorf("GET /reset?id=%d: no end within the client's 5s timeout (%v), want an error as soon as the backend resets", id, err)
		case err == nil && res.StatusCode == 200:
			t.Errorf("GET /reset?id=%d = 200 with a clean %d-byte body (X-Backend %q), want a truncated body that ends in an error: the backend reset after 1000 of 100000 bytes",
				id, len(body), res.Header.Get("X-Backend"))
		case err == nil && res.StatusCode < 500:
			t.Errorf("GET /reset?id=%d = %d, want an error or a 5xx after the backend reset", id, res.StatusCode)
		}
		if err == nil && res.StatusCode == 200 && len(body) == 100000 {
			t.Errorf("GET /reset?id=%d returned a full-length body the backend never sent", id)
		}
	}
	close(stop)
	n := <-normal
	t.Logf("backend resets seen by the client:\n  %s", strings.Join(kinds, "\n  "))
	t.Logf("%d /reset requests went to the healthy origin; %d normal requests in parallel, %d failed", fromHealthy, n.sent, n.failed)
	if resets < wantResets {
		t.Fatalf("only %d of 60 requests reached the resetting origin, want %d", resets, wantResets)
	}
	if n.sent == 0 {
		t.Error("no normal request was sent during the resets")
	}

	// SPEC: a client request that broke off is a client failure; a backend
	// that reset is a server failure. Workers report every second.
	var clients struct{ Success, Failed int }
	var rawFailed int
	counted := func() bool {
		_, body := d.api(t, "GET", "/stats", "")
		var stats struct{ Client struct{ Success, Failed int } }
		json.Unmarshal([]byte(body), &stats)
		clients = stats.Client
		_, body = d.api(t, "GET", "/stats/detail", "")
		var detail []struct {
			ID     string
			Failed int
		}
		json.Unmarshal([]byte(body), &detail)
		for _, s := range detail {
			if s.ID == raw.addr {
				rawFailed = s.Failed
			}
		}
		return clients.Failed >= resets && rawFailed >= resets
	}
	deadline := time.Now().Add(10 * time.Second)
	for !counted() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	broken := `weldr_upstream_errors_total{server="` + raw.addr + `",kind="broken"}`
	t.Logf("after %d resets: /stats client %+v, resetting server failed %d, %s = %d", resets, clients, rawFailed, broken, d.metric(t, broken))
	if clients.Failed != resets {
		t.Errorf("/stats client failed = %d, want the %d requests the backend reset", clients.Failed, resets)
	}
	if rawFailed != resets {
		t.Errorf("/stats/detail failed for the resetting server = %d, want its %d resets", rawFailed, resets)
	}
	if n := d.metric(t, broken); n != int64(resets) {
		t.Errorf("%s = %d, want its %d resets (README: broken = reset, malformed or truncated answer)", broken, n, resets)
	}
	if n := d.metric(t, "weldr_worker_restarts_total"); n != 0 {
		t.Errorf("weldr_worker_restarts_total = %d after backend resets, want 0", n)
	}
	if !alive(pid) {
		t.Error("the manager died")
	}
	chaosLogClean(t, d)
}

func TestChaosTricklingBackend(t *testing.T) {
	// One worker: the trickling response and the fast ones share it, so
	// any head-of-line blocking inside a worker shows.
	d := start(t, options{workers: 1, extra: chaosHealth})
	const body = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwx" // 50 bytes
	started := make(chan struct{})
	var startOnce sync.Once
	gate := make(chan struct{}) // closed when the fast requests are done
	var gateOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(gate) }) }
	t.Cleanup(openGate)
	trickle := httpOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", "trickle")
		switch r.URL.Path {
		case "/health":
			io.WriteString(w, "healthy")
			return
		case "/trickle":
		default:
			io.WriteString(w, "trickle")
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		for i := range len(body) {
			if i == len(body)/2 {
				// Half the body is out: hold the rest until the fast
				// requests are done, so they surely overlap this one.
				select {
				case <-gate:
				case <-r.Context().Done():
					return
				case <-time.After(30 * time.Second):
				}
			}
			w.Write([]byte{body[i]})
			w.(http.Flusher).Flush()
			startOnce.Do(func() { close(started) })
			select {
			case <-time.After(20 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	})
	fast := newOrigin(t, "fast", "/health")
	d.register(t, trickle)
	d.register(t, fast.url())

	// The trickled request: retried until the trickling origin answers it.
	type result struct {
		body    string
		err     error
		tries   int
		elapsed time.Duration
	}
	headers, firstByte := make(chan struct{}), make(chan struct{})
	done := make(chan result, 1)
	go func() {
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 60 * time.Second}
		for try := 1; try <= 10; try++ {
			began := time.Now()
			res, err := client.Get(d.proxy + "/trickle")
			if err != nil {
				done <- result{err: err, tries: try}
				return
			}
			if res.Header.Get("X-Backend") != "trickle" {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				continue
			}
			close(headers)
			var got []byte
			buf := make([]byte, 64)
			for {
				n, err := res.Body.Read(buf)
				if n > 0 && len(got) == 0 {
					close(firstByte)
				}
				got = append(got, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					res.Body.Close()
					done <- result{body: string(got), err: err, tries: try, elapsed: time.Since(began)}
					return
				}
			}
			res.Body.Close()
			done <- result{body: string(got), tries: try, elapsed: time.Since(began)}
			return
		}
		done <- result{err: errors.New("10 tries never reached the trickling origin"), tries: 10}
	}()

	select {
	case <-started:
	case r := <-done:
		t.Fatalf("the trickled request ended before the origin began trickling: %+v", r)
	case <-time.After(15 * time.Second):
		t.Fatal("the trickling origin did not begin its response within 15s")
	}
	// The origin has sent the headers and half the body, and holds the rest
	// until the fast requests are done: what it sent must reach the client.
	streamed := time.After(5 * time.Second)
	select {
	case <-headers:
		select {
		case <-firstByte:
		case <-streamed:
			t.Error("the trickled response's headers reached the client, but no byte of its body while the origin held the rest back: the body is buffered, not streamed")
		}
	case <-streamed:
		t.Error("the trickled response's headers did not reach the client within 5s while the origin held the rest of the body back: the response is buffered, not streamed")
	}

	// 20 concurrent requests on fresh connections while the trickle is open.
	began := time.Now()
	errs := make(chan error, 20)
	durations := make(chan time.Duration, 20)
	for range 20 {
		go func() {
			req, _ := http.NewRequest("GET", d.proxy+"/", nil)
			req.Close = true
			client := &http.Client{Timeout: 30 * time.Second}
			s := time.Now()
			errs <- chaosCheck(client.Do(req))
			durations <- time.Since(s)
		}()
	}
	var failed []error
	var slowest time.Duration
	deadline := time.After(20 * time.Second)
	for range 20 {
		select {
		case err := <-errs:
			if err != nil {
				failed = append(failed, err)
			}
			slowest = max(slowest, <-durations)
		case <-deadline:
			openGate()
			t.Fatal("the 20 fast requests did not all finish within 20s while a response trickled through the same worker: head-of-line blocking")
		}
	}
	fastTook := time.Since(began)
	openGate()
	if len(failed) > 0 {
		t.Errorf("%d of 20 fast requests during the trickle failed: %v", len(failed), failed)
	}

	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the trickled response did not end within 20s of the origin finishing it")
	}
	if r.err != nil || r.body != body {
		t.Errorf("trickled GET /trickle = %q (%d bytes), %v; want the whole %d-byte body", r.body, len(r.body), r.err, len(body))
	}
	t.Logf("trickled body of %d bytes complete in %s (attempt %d); the 20 fast requests overlapping it took %s in all, slowest %s",
		len(r.body), r.elapsed.Round(time.Millisecond), r.tries, fastTook.Round(time.Millisecond), slowest.Round(time.Millisecond))
	chaosLogClean(t, d)
}

func TestChaosGarbageClients(t *testing.T) {
	const (
		conns    = 1000
		parallel = 50
	)
	d := start(t, options{})
	a := newOrigin(t, "a", "/health")
	d.register(t, a.url())
	pid := d.cmd.Process.Pid
	workers := children(pid)
	addr := strings.TrimPrefix(d.proxy, "http://")

	var mu sync.Mutex // guards outcomes
	outcomes := map[string]int{}
	var nonHTTP, answered5xx []string
	next := atomic.Int64{}
	var wg sync.WaitGroup
	began := time.Now()
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= conns {
					return
				}
				r := rand.New(rand.NewSource(i)) // each stream the same on every run
				payload, kind, halfClose := chaosGarbage(r)
				outcome, reply := chaosSendGarbage(addr, payload, halfClose)
				mu.Lock()
				outcomes[outcome]++
				outcomes["sent "+kind]++
				example := fmt.Sprintf("stream %d (%s, half-close %v) %.80q → %.80q", i, kind, halfClose, payload, reply)
				switch {
				case outcome == "non-HTTP answer" && len(nonHTTP) < 5:
					nonHTTP = append(nonHTTP, example)
				case outcome == "answered 5xx" && len(answered5xx) < 5:
					answered5xx = append(answered5xx, example)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	took := time.Since(began)

	keys := make([]string, 0, len(outcomes))
	for k := range outcomes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var report []string
	for _, k := range keys {
		report = append(report, fmt.Sprintf("%s: %d", k, outcomes[k]))
	}
	t.Logf("%d garbage streams in %s:\n  %s", conns, took.Round(time.Millisecond), strings.Join(report, "\n  "))
	for k, n := range outcomes {
		if strings.HasPrefix(k, "dial error") {
			t.Errorf("%d garbage connections could not even connect: %s", n, k)
		}
	}
	t.Logf("weldr_generated_responses_total{status=\"400\"} = %d for %d 4xx answers seen",
		d.metric(t, `weldr_generated_responses_total{status="400"}`), outcomes["answered 4xx"])
	if len(answered5xx) > 0 {
		t.Logf("some 5xx answers to garbage:\n  %s", strings.Join(answered5xx, "\n  "))
	}
	if len(nonHTTP) > 0 {
		t.Errorf("weldr answered garbage with bytes that are not an HTTP response:\n  %s", strings.Join(nonHTTP, "\n  "))
	}

	if !alive(pid) {
		t.Fatal("the manager died")
	}
	if now := children(pid); !slices.Equal(chaosSorted(now), chaosSorted(workers)) {
		t.Errorf("workers after the garbage = %v, want the same %v", now, workers)
	}
	if n := d.metric(t, "weldr_worker_restarts_total"); n != 0 {
		t.Errorf("weldr_worker_restarts_total = %d after garbage input, want 0", n)
	}
	if n, first := chaosBurst(d.proxy+"/", 50, 10); n != 0 {
		t.Errorf("%d of 50 normal requests after the garbage failed (first: %v), want none", n, first)
	}
	chaosLogClean(t, d)
}

func TestChaosTenThousandIdleConnections(t *testing.T) {
	const (
		idle  = 10_000
		batch = 500
	)
	// The defaults (10s to send headers) would close idle connections
	// while they are still being opened on a loaded machine. The manager
	// inherits this process's environment.
	t.Setenv("WELDR_PROXY_READ_HEADER_TIMEOUT", "3m")
	t.Setenv("WELDR_PROXY_IDLE_TIMEOUT", "3m")
	d := start(t, options{workers: 2})
	a := newOrigin(t, "a", "/health")
	d.register(t, a.url())
	pid := d.cmd.Process.Pid
	workers := children(pid)
	if len(workers) != 2 {
		t.Fatalf("manager has children %v, want 2 workers", workers)
	}
	addr, port := strings.TrimPrefix(d.proxy, "http://"), chaosPort(t, d.proxy)
	rssBefore := chaosTreeRSS(pid)

	var conns []*net.TCPConn
	closeAll := func() {
		for _, c := range conns {
			c.SetLinger(0) // RST: leaves no 10,000 ports in TIME_WAIT on a shared machine
			c.Close()
		}
		conns = nil
	}
	t.Cleanup(closeAll)

	began := time.Now()
	for len(conns) < idle {
		n := min(batch, idle-len(conns))
		got := make([]*net.TCPConn, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err == nil {
					got[i] = c.(*net.TCPConn)
				}
				errs[i] = err
			}()
		}
		wg.Wait()
		for i, c := range got {
			if c == nil {
				t.Fatalf("dialing idle connection %d: %v", len(conns)+i, errs[i])
			}
		}
		conns = append(conns, got...)
		// Let the workers take the batch off the accept queue before the
		// next, so no SYN is dropped on a full backlog.
		want := len(conns)
		waitFor(t, 30*time.Second, fmt.Sprintf("the workers to accept %d idle connections", want), func() bool {
			return chaosClientConns(workers, port) >= want
		})
	}
	opened := time.Since(began)

	rssOpen := chaosTreeRSS(pid)
	var perWorker []string
	for _, w := range workers {
		perWorker = append(perWorker, fmt.Sprintf("worker %d holds %d", w, chaosClientConns([]int{w}, port)))
	}
	t.Logf("%d idle connections opened and accepted in %s (%s)", idle, opened.Round(time.Millisecond), strings.Join(perWorker, ", "))

	// While they are all open: normal requests are served, nobody died.
	if n, first := chaosBurst(d.proxy+"/", 20, 4); n != 0 {
		t.Errorf("%d of 20 requests with %d idle connections open failed (first: %v), want none", n, idle, first)
	}
	if now := children(pid); !slices.Equal(chaosSorted(now), chaosSorted(workers)) {
		t.Errorf("workers with %d idle connections = %v, want the same %v", idle, now, workers)
	}
	if n := d.metric(t, "weldr_worker_restarts_total"); n != 0 {
		t.Errorf("weldr_worker_restarts_total = %d with %d idle connections, want 0", n, idle)
	}
	if held := chaosClientConns(workers, port); held < idle {
		t.Errorf("the workers hold %d client connections, want the %d idle ones still open", held, idle)
	}
	const bound = 1536 << 20 // 1.5 GiB: bounded, with the race detector's overhead
	t.Logf("RSS of manager and workers: %s before, %s with %d idle connections (%.1f KiB per connection)",
		chaosBytes(rssBefore), chaosBytes(rssOpen), idle, float64(rssOpen-rssBefore)/idle/1024)
	if rssOpen > bound {
		t.Errorf("RSS with %d idle connections = %s, want below %s", idle, chaosBytes(rssOpen), chaosBytes(bound))
	}

	closeAll()
	waitFor(t, 30*time.Second, "the workers to close the idle connections", func() bool {
		return chaosClientConns(workers, port) == 0
	})
	rssAfter := chaosTreeRSS(pid)
	t.Logf("RSS of manager and workers after closing them: %s", chaosBytes(rssAfter))
	if n, first := chaosBurst(d.proxy+"/", 20, 4); n != 0 {
		t.Errorf("%d of 20 requests after closing the idle connections failed (first: %v), want none", n, first)
	}
	chaosLogClean(t, d)
}

// chaosLoad sends requests through the proxy from clients that each have
// at most one request in flight, and counts failures per client.
type chaosLoad struct {
	stop      chan struct{}
	done      chan struct{}
	once      sync.Once
	sent      atomic.Int64
	perClient []atomic.Int64

	mu       sync.Mutex // guards failures
	failures map[string]int
}

func chaosStartLoad(d *daemon, clients int) *chaosLoad {
	l := &chaosLoad{
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		perClient: make([]atomic.Int64, clients),
		failures:  map[string]int{},
	}
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
			defer client.CloseIdleConnections()
			for i := 0; i < 100_000; i++ { // bounded; stopped long before
				select {
				case <-l.stop:
					return
				default:
				}
				l.sent.Add(1)
				// POST: net/http's client would silently retry an idempotent
				// request on a kept-alive connection, hiding a failure.
				if err := chaosCheck(client.Post(d.proxy+"/", "text/plain", strings.NewReader("x"))); err != nil {
					l.perClient[c].Add(1)
					l.mu.Lock()
					l.failures[chaosAddrs.ReplaceAllString(err.Error(), "127.0.0.1:*")]++
					l.mu.Unlock()
				}
				time.Sleep(2 * time.Millisecond) // pace, not wait
			}
		}()
	}
	go func() { wg.Wait(); close(l.done) }()
	return l
}

// halt stops the load and waits for its clients.
func (l *chaosLoad) halt() {
	l.once.Do(func() { close(l.stop) })
	<-l.done
}

func (l *chaosLoad) failedTotal() int64 {
	var n int64
	for i := range l.perClient {
		n += l.perClient[i].Load()
	}
	return n
}

func (l *chaosLoad) kinds() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.failures)
}

var chaosAddrs = regexp.MustCompile(`127\.0\.0\.1:\d+`)

// chaosCheck reads and closes a response and says why it is not a
// backend's 200 whose body names the backend in X-Backend.
func chaosCheck(res *http.Response, err error) error {
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	switch {
	case err != nil:
		return fmt.Errorf("status %d, reading the body: %w", res.StatusCode, err)
	case res.StatusCode != http.StatusOK:
		return fmt.Errorf("status %d %q", res.StatusCode, body)
	case res.Header.Get("X-Backend") == "" || string(body) != res.Header.Get("X-Backend"):
		return fmt.Errorf("body %q from X-Backend %q, want the backend's name", body, res.Header.Get("X-Backend"))
	}
	return nil
}

// chaosBurst sends n GET requests, parallel at a time, each on a fresh
// connection so that they spread over the workers, and returns how many
// failed and the first failure.
func chaosBurst(target string, n, parallel int) (int, error) {
	var failed atomic.Int64
	var first atomic.Value
	var next atomic.Int64
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
			for next.Add(1) <= int64(n) {
				if err := chaosCheck(client.Get(target)); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	err, _ := first.Load().(error)
	return int(failed.Load()), err
}

func chaosHealthz(d *daemon) int {
	res, err := http.Get(d.admin + "/healthz")
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode
}

func chaosPort(t *testing.T, u string) int {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(pu.Port())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// chaosClientConns counts the established TCP connections on local port
// port whose sockets the processes hold: the client connections they accepted.
func chaosClientConns(pids []int, port int) int {
	inodes := map[string]bool{}
	for _, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			l, err := os.Readlink(dir + "/" + e.Name())
			if err == nil && strings.HasPrefix(l, "socket:[") {
				inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
			}
		}
	}
	n := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, _ := os.ReadFile(table)
		for _, line := range strings.Split(string(b), "\n") {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "01" || !inodes[f[9]] {
				continue
			}
			i := strings.LastIndexByte(f[1], ':')
			if p, err := strconv.ParseUint(f[1][i+1:], 16, 32); err == nil && int(p) == port {
				n++
			}
		}
	}
	return n
}

// chaosTreeRSS sums VmRSS of the manager and its children, in bytes.
func chaosTreeRSS(pid int) int {
	total := 0
	for _, p := range append([]int{pid}, children(pid)...) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
				total += kb << 10
			}
		}
	}
	return total
}

func chaosBytes(n int) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

func chaosSorted(s []int) []int {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// chaosLogClean fails the test if a process of weldr panicked, hit a fatal
// runtime error or a data race (the binary is built with -race under -race).
func chaosLogClean(t *testing.T, d *daemon) {
	t.Helper()
	log := d.log.String()
	for _, bad := range []string{"panic:", "fatal error:", "WARNING: DATA RACE"} {
		if i := strings.Index(log, bad); i >= 0 {
			t.Errorf("weldr's log holds %q:\n%.3000s", bad, log[i:])
		}
	}
}

// chaosDescribe says in a few words what a client got.
func chaosDescribe(res *http.Response, body []byte, err error) string {
	switch {
	case res == nil:
		return "error before a response: " + chaosAddrs.ReplaceAllString(err.Error(), "127.0.0.1:*")
	case err != nil:
		return fmt.Sprintf("status %d, body broke off after %d bytes: %s", res.StatusCode, len(body), chaosAddrs.ReplaceAllString(err.Error(), "127.0.0.1:*"))
	default:
		return fmt.Sprintf("status %d with a clean %d-byte body", res.StatusCode, len(body))
	}
}

// resetOrigin is a raw TCP backend: /reset?id=N answers a 100000-byte
// Content-Length, sends 1000 bytes of it and resets the connection
// (SO_LINGER 0); /health and anything else get a whole answer.
type resetOrigin struct {
	ln   net.Listener
	addr string
	wg   sync.WaitGroup

	mu    sync.Mutex // guards ids and conns
	ids   map[string]bool
	conns map[net.Conn]bool
}

func newResetOrigin(t *testing.T) *resetOrigin {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &resetOrigin{ln: ln, addr: ln.Addr().String(), ids: map[string]bool{}, conns: map[net.Conn]bool{}}
	o.wg.Add(1)
	go o.acceptLoop()
	t.Cleanup(func() {
		ln.Close()
		o.mu.Lock()
		for c := range o.conns {
			c.Close()
		}
		o.mu.Unlock()
		o.wg.Wait()
	})
	return o
}

func (o *resetOrigin) url() string { return "http://" + o.addr }

func (o *resetOrigin) got(id int) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ids[strconv.Itoa(id)]
}

func (o *resetOrigin) acceptLoop() {
	defer o.wg.Done()
	for {
		c, err := o.ln.Accept()
		if err != nil {
			return
		}
		o.mu.Lock()
		o.conns[c] = true
		o.mu.Unlock()
		o.wg.Add(1)
		go func() {
			defer o.wg.Done()
			o.serveConn(c)
			o.mu.Lock()
			delete(o.conns, c)
			o.mu.Unlock()
		}()
	}
}

func (o *resetOrigin) serveConn(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		return
	}
	if req.URL.Path != "/reset" {
		body := "raw"
		if req.URL.Path == "/health" {
			body = "healthy"
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: raw\r\nConnection: close\r\n\r\n%s", len(body), body)
		return
	}
	o.mu.Lock()
	o.ids[req.URL.Query().Get("id")] = true
	o.mu.Unlock()
	var out bytes.Buffer
	out.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: application/octet-stream\r\nX-Backend: raw\r\n\r\n")
	out.Write(bytes.Repeat([]byte("0123456789"), 100)) // 1000 of the 100000
	c.Write(out.Bytes())
	if req.URL.Query().Get("pause") == "1" {
		time.Sleep(100 * time.Millisecond) // the behaviour under test, not a wait
	}
	c.(*net.TCPConn).SetLinger(0)
}

// chaosGarbage makes one hostile byte stream of 1 to 4096 bytes (a
// never-ending header may be longer by its prefix) and says whether the
// sender should half-close after it.
func chaosGarbage(r *rand.Rand) (payload []byte, kind string, halfClose bool) {
	n := 1 + r.Intn(4096)
	halfClose = r.Intn(2) == 0
	switch k := r.Intn(20); {
	case k < 7:
		prefixes := []string{
			"GET / HTTP/1.1\r\n",
			"GET / HTTP/1.1\r\nHost: a\r\n",
			"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n",
			"GET / HTTP/1.1\r\nHost: a\r\n\r\n", // a whole request, then garbage
			"PUT / HTTP/1.0\r\n",
			"GET /",
		}
		p := []byte(prefixes[r.Intn(len(prefixes))])
		for len(p) < n {
			p = append(p, byte(r.Intn(256)))
		}
		return p[:n], "request line then garbage", halfClose
	case k < 14:
		p := make([]byte, n)
		r.Read(p)
		return p, "binary", halfClose
	case k < 16:
		p := []byte("GET / HTTP/1.1\r\nHost: a\r\nX-Never-Ending: ")
		for range n {
			p = append(p, 'a'+byte(r.Intn(26)))
		}
		return p, "never-ending header", false
	default:
		tokens := []string{
			"GET ", "POST ", "CONNECT ", "/", "*", " HTTP/1.1", " HTTP/1.0", " HTTP/2.0", " HTTP/9.9",
			"\r\n", "\n", "\r", "\r\n\r\n", " ", "\t", ":", "\x00", "\xff",
			"Host: a", "Host: ", "Content-Length: ", "Content-Length: 5", "-1", "99999999999999999999", "0",
			"Transfer-Encoding: chunked", "Transfer-Encoding: gzip, chunked", "Connection: upgrade",
			"Upgrade: websocket", "Expect: 100-continue", "0\r\n\r\n", "5\r\nhello\r\n", "%", "?a=%zz", "#",
		}
		var p []byte
		for len(p) < n {
			p = append(p, tokens[r.Intn(len(tokens))]...)
		}
		return p[:n], "token soup", halfClose
	}
}

// chaosSendGarbage writes payload on a new connection, reads whatever comes
// back for up to 2s and closes; it classifies the answer.
func chaosSendGarbage(addr string, payload []byte, halfClose bool) (outcome string, reply []byte) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "dial error: " + chaosAddrs.ReplaceAllString(err.Error(), "127.0.0.1:*"), nil
	}
	tc := c.(*net.TCPConn)
	defer func() {
		tc.SetLinger(0) // no TIME_WAIT for a thousand ports
		tc.Close()
	}()
	tc.SetDeadline(time.Now().Add(2 * time.Second))
	tc.Write(payload) // the proxy may close before reading it all
	if halfClose {
		tc.CloseWrite()
	}
	reply, err = io.ReadAll(io.LimitReader(tc, 1<<16))
	var ne net.Error
	timedOut := errors.As(err, &ne) && ne.Timeout()
	switch {
	case len(reply) == 0 && timedOut:
		return "no answer, still open after 2s", nil
	case len(reply) == 0 && errors.Is(err, syscall.ECONNRESET):
		return "reset without an answer", nil
	case len(reply) == 0:
		return "closed without an answer", nil
	case len(reply) >= 12 && bytes.HasPrefix(reply, []byte("HTTP/1.")):
		return "answered " + string(reply[9]) + "xx", reply
	default:
		return "non-HTTP answer", reply
	}
}
