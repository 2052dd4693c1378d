package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Each worker shares a bell with its manager (see ipc.Bell), which rings it
// with the version of every pool change once the change is in that
// worker's pipe: after each change, every worker's bell holds its version,
// the same in each, and higher than before.
func TestWorkersBellsRingWithEachChange(t *testing.T) {
	d := start(t, options{})
	a, b := backend(t, "a"), backend(t, "b")
	bu, err := url.Parse(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		do   func()
	}{
		{"add a", func() { d.register(t, a.URL) }},
		{"add b", func() { d.register(t, b.URL) }},
		{"remove b", func() {
			if code, body := d.api(t, "DELETE", "/servers/"+strings.Replace(bu.Host, ":", "/", 1), ""); code != http.StatusNoContent {
				t.Fatalf("DELETE b = %d %s, want 204", code, body)
			}
		}},
	}
	var last uint64
	for _, st := range steps {
		st.do()
		// A change the pipeWriter sent is rung after the write returns,
		// which may be after the API answered: wait for it.
		var rung []uint64
		waitFor(t, 10*time.Second, "the workers' bells to ring for "+st.name, func() bool {
			workers := children(d.pid(t))
			if len(workers) != 2 {
				return false
			}
			rung = rung[:0]
			for _, w := range workers {
				v, err := bellOf(w)
				if errors.Is(err, fs.ErrPermission) {
					t.Skipf("cannot read a worker's memory here: %v", err)
				}
				if err != nil {
					t.Fatalf("worker %d: %v", w, err)
				}
				rung = append(rung, v)
			}
			return rung[0] == rung[1] && rung[0] > last
		})
		last = rung[0]
	}
}

// bellOf reads the word in worker pid's mapping of its bell.
func bellOf(pid int) (uint64, error) {
	w, err := mappedBytes(pid, "weldr-bell", 8)
	if err != nil {
		return 0, err
	}
	return binary.NativeEndian.Uint64(w), nil
}

// mappedBytes reads the first n bytes of process pid's mapping of the
// memory file named name.
func mappedBytes(pid int, name string, n int) ([]byte, error) {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(maps), "\n") {
		if !strings.HasSuffix(line, "/memfd:"+name+" (deleted)") {
			continue
		}
		start, _, _ := strings.Cut(line, "-")
		addr, err := strconv.ParseInt(start, 16, 64)
		if err != nil {
			return nil, fmt.Errorf("maps line %q: %w", line, err)
		}
		mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
		if err != nil {
			return nil, err
		}
		defer mem.Close()
		b := make([]byte, n)
		if _, err := mem.ReadAt(b, addr); err != nil {
			return nil, err
		}
		return b, nil
	}
	return nil, fmt.Errorf("no %s mapped", name)
}

// A worker that was not running when a change came routes by it from its
// first request on: the manager rang its bell, and the worker catches up
// before it routes. Here the worker is stopped (SIGSTOP) while its only
// server is removed and requests arrive on its kept-alive connections;
// once it runs again, every one of them gets the empty pool's 503, none
// the removed server's answer.
func TestAWorkerThatWasNotRunningRoutesByTheChangeFirst(t *testing.T) {
	d := start(t, options{workers: 1})
	a := backend(t, "a")
	d.register(t, a.URL)
	au, err := url.Parse(a.URL)
	if err != nil {
		t.Fatal(err)
	}
	workers := children(d.pid(t))
	if len(workers) != 1 {
		t.Fatalf("weldr runs %d workers, want 1", len(workers))
	}
	worker := workers[0]
	before, err := bellOf(worker)
	if errors.Is(err, fs.ErrPermission) {
		t.Skipf("cannot read the worker's memory here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}

	// Kept-alive connections, each with a request answered by a.
	const n = 4
	conns := make([]*keptAlive, n)
	for i := range conns {
		conns[i] = dialKeptAlive(t, d.proxy)
		if code, body := conns[i].roundTrip(t); code != http.StatusOK || body != "GET a" {
			t.Fatalf("connection %d: GET = %d %q, want 200 from a", i, code, body)
		}
	}

	updates := d.metric(t, "weldr_pool_update_seconds_count")
	if err := syscall.Kill(worker, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	resume := func() {
		if stopped {
			syscall.Kill(worker, syscall.SIGCONT)
			stopped = false
		}
	}
	defer resume()
	removed := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("DELETE", d.admin+"/servers/"+strings.Replace(au.Host, ":", "/", 1), nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			removed <- 0
			return
		}
		res.Body.Close()
		removed <- res.StatusCode
	}()
	waitFor(t, 10*time.Second, "the manager to ring the stopped worker's bell", func() bool {
		v, err := bellOf(worker)
		return err == nil && v > before
	})
	// Answered while the worker is stopped: a change rung is in force. The
	// API counts its wait only when the change was in force, not when it
	// gave up waiting (after 2 s).
	select {
	case code := <-removed:
		if code != http.StatusNoContent {
			t.Errorf("DELETE a = %d, want 204", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("DELETE a not answered while the worker is stopped")
	}
	if got := d.metric(t, "weldr_pool_update_seconds_count"); got != updates+1 {
		t.Errorf("weldr_pool_update_seconds_count went from %d to %d, want one more: the API did not find the change in force", updates, got)
	}
	for _, c := range conns {
		c.send(t) // after the change, so the worker finds these ready first
	}
	resume()
	for i, c := range conns {
		if code, body := c.read(t); code != http.StatusServiceUnavailable {
			t.Errorf("connection %d: GET after the change = %d %q, want 503: no server is left", i, code, body)
		}
	}
	if got := d.metric(t, "weldr_requests_routed_behind_total"); got != 0 {
		t.Errorf("weldr_requests_routed_behind_total = %d, want 0", got)
	}
}

// keptAlive is a client connection to the proxy that sends one request at
// a time and keeps the connection.
type keptAlive struct {
	c  net.Conn
	br *bufio.Reader
}

func dialKeptAlive(t *testing.T, proxy string) *keptAlive {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(proxy, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &keptAlive{c: c, br: bufio.NewReader(c)}
}

func (k *keptAlive) send(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(k.c, "GET / HTTP/1.1\r\nHost: weldr.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
}

func (k *keptAlive) read(t *testing.T) (int, string) {
	t.Helper()
	res, err := http.ReadResponse(k.br, nil)
	if err != nil {
		t.Fatalf("reading an answer: %v", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading an answer's body: %v", err)
	}
	return res.StatusCode, string(b)
}

func (k *keptAlive) roundTrip(t *testing.T) (int, string) {
	t.Helper()
	k.send(t)
	return k.read(t)
}
