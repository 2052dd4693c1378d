package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// upgrade sends SIGHUP to the current generation and waits for the next one
// to write its PID and for the old one, workers included, to be gone within
// the drain timeout (plus a margin for a loaded machine).
func (d *daemon) upgrade(t *testing.T) (oldPID, newPID int) {
	t.Helper()
	oldPID = d.pid(t)
	oldWorkers := children(oldPID)
	if err := syscall.Kill(oldPID, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "a new generation in the PID file", func() bool {
		b, _ := os.ReadFile(d.pidFile)
		return strings.TrimSpace(string(b)) != fmt.Sprint(oldPID)
	})
	newPID = d.pid(t)
	waitFor(t, 5*time.Second+3*time.Second, "the old generation to exit within the drain timeout", func() bool {
		return exited(append(oldWorkers, oldPID)...)
	})
	if n := len(children(newPID)); n != 2 {
		t.Errorf("new generation %d has %d children, want 2 workers", newPID, n)
	}
	return oldPID, newPID
}

// replaceableBinary copies weldr's binary to a directory of its own, for a
// test to start weldr from and replace on disk (replaceBinary): a new
// generation runs what the path holds then.
func replaceableBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "weldr")
	copyBinary(t, bin)
	return bin
}

// replaceBinary puts in bin's place, in one rename, a shell script that runs
// script, in which $weldr names a copy of weldr's binary.
func replaceBinary(t *testing.T, bin, script string) {
	t.Helper()
	real := filepath.Join(filepath.Dir(bin), "weldr-real")
	if _, err := os.Stat(real); err != nil { // once: it may be running
		copyBinary(t, real)
	}
	next := filepath.Join(filepath.Dir(bin), "weldr-next")
	if err := os.WriteFile(next, []byte("#!/bin/sh\nweldr="+real+"\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, bin); err != nil {
		t.Fatal(err)
	}
}

func copyBinary(t *testing.T, to string) {
	t.Helper()
	b, err := os.ReadFile(weldrBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// heldAnswer is what a request held by its origin (holdRequest) got.
type heldAnswer struct {
	code int
	body string
	err  error
}

// holdRequest registers with d an origin that holds GET /slow until
// released, and answers "done" to it and to everything else; it sends GET
// /slow through d and returns once the origin has it. The request is
// released when the test ends, if not before.
func holdRequest(t *testing.T, d *daemon) (release func(), answer <-chan heldAnswer) {
	t.Helper()
	arrived, held := make(chan struct{}), make(chan struct{})
	d.register(t, httpOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(arrived)
			<-held
		}
		io.WriteString(w, "done")
	}))
	release = sync.OnceFunc(func() { close(held) })
	t.Cleanup(release)
	got := make(chan heldAnswer, 1)
	go func() {
		res, err := http.Get(d.proxy + "/slow")
		if err != nil {
			got <- heldAnswer{err: err}
			return
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		got <- heldAnswer{res.StatusCode, string(b), err}
	}()
	select {
	case <-arrived:
	case r := <-got:
		t.Fatalf("GET /slow = %d %q %v before its origin held it", r.code, r.body, r.err)
	case <-time.After(30 * time.Second):
		t.Fatal("GET /slow did not reach its origin within 30s")
	}
	return release, got
}

// wantDone checks that a held request, released, got the origin's answer.
func wantDone(t *testing.T, answer <-chan heldAnswer, what string) {
	t.Helper()
	select {
	case r := <-answer:
		if r.err != nil || r.code != 200 || r.body != "done" {
			t.Errorf("%s = %d %q %v, want 200 \"done\"", what, r.code, r.body, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("%s: no answer within 30s of its release", what)
	}
}

// mustExit0 waits for the first generation to exit, 0, within 15 s of
// what it waited for.
func (d *daemon) mustExit0(t *testing.T, after string) {
	t.Helper()
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("the first generation did not exit within 15s of %s", after)
	}
	if d.exitCode != 0 {
		t.Errorf("the first generation exited with %d after %s, want 0", d.exitCode, after)
	}
}

func TestUpgradesUnderLoadLoseNothing(t *testing.T) {
	d := start(t, options{})
	a, b := newOrigin(t, "a", "/health"), newOrigin(t, "b", "/health")
	d.register(t, a.url())
	d.register(t, b.url())
	l := startLoad(d, 6)
	waitFor(t, 10*time.Second, "load on both origins", func() bool { return a.hits.Load() > 20 && b.hits.Load() > 20 })

	seen := map[int]bool{d.pid(t): true}
	for i := range 10 {
		_, pid := d.upgrade(t)
		if seen[pid] {
			t.Fatalf("upgrade %d: PID file names %d again, want a new manager", i+1, pid)
		}
		seen[pid] = true
		// The registrations made before the upgrades are still served.
		ha, hb := a.hits.Load(), b.hits.Load()
		waitFor(t, 10*time.Second, "traffic on both origins after the upgrade", func() bool {
			return a.hits.Load() > ha+5 && b.hits.Load() > hb+5
		})
	}
	l.finish(t)
	if got := d.server(t, a.addr); got.State != "up" {
		t.Errorf("after 10 upgrades a is %+v, want registered and up", got)
	}
	t.Logf("%d requests through 10 upgrades, %d failed", l.sent.Load(), l.failed.Load())
}

// A new generation that starts but never gets ready, and is stopped,
// leaves the socket to the generation that started it, which keeps
// serving: only a generation that served shuts the socket down as it stops.
func TestNewGenerationStoppedBeforeReadyLeavesTheSocket(t *testing.T) {
	bin := replaceableBinary(t)
	d := start(t, options{bin: bin})
	a := newOrigin(t, "a", "/health")
	d.register(t, a.url())
	old := d.pid(t)

	// The binary on disk becomes one whose process may open only 20
	// files: the new manager gets as far as starting its workers, and
	// fails to, again and again.
	replaceBinary(t, bin, `ulimit -n 20; exec "$weldr" "$@"`)
	syscall.Kill(old, syscall.SIGHUP)
	var next int
	waitFor(t, 30*time.Second, "the new generation to fail to start its workers", func() bool {
		for _, p := range children(old) {
			if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); !strings.Contains(string(cmdline), "worker") {
				next = p
			}
		}
		return next != 0 && strings.Count(d.log.String(), "too many open files") > 0
	})
	syscall.Kill(next, syscall.SIGTERM)
	waitFor(t, 30*time.Second, "the old generation to say the upgrade failed", func() bool {
		return strings.Contains(d.log.String(), "upgrade failed")
	})
	if got := d.pid(t); got != old || !alive(old) {
		t.Fatalf("after the failed upgrade the PID file names %d (alive %v), want %d still serving", got, alive(old), old)
	}
	if code, _, body := d.get(t, "/"); code != 200 || body != "a" {
		t.Errorf("GET / after the new generation was stopped before ready = %d %q, want 200 from a", code, body)
	}
}

// A second SIGHUP that comes while a new generation starts reaches that
// generation: the first, which systemd still knows as weldr's main process
// while it drains, passes it on, and the second starts a third once the
// first has exited (tableflip starts no new generation before). The socket
// stays open throughout. The first used to take the second SIGHUP as an
// upgrade of its own, fail, and, as it stopped, shut down the socket it
// shares with the new generation.
func TestSIGHUPDuringAnUpgradeReachesTheNewGeneration(t *testing.T) {
	bin := replaceableBinary(t)
	d := start(t, options{bin: bin, long: true})
	// A request under way keeps the first generation draining.
	released, slow := holdRequest(t, d)
	first := d.pid(t)
	firstTree := append(children(first), first)

	// The binary on disk becomes one that takes a second to start, so that
	// the second SIGHUP comes while the new generation starts.
	replaceBinary(t, bin, `sleep 1; exec "$weldr" "$@"`)
	syscall.Kill(first, syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the first SIGHUP to be taken", func() bool {
		return strings.Contains(d.log.String(), "SIGHUP: starting a new generation")
	})
	syscall.Kill(first, syscall.SIGHUP)

	passedOn := regexp.MustCompile(`SIGHUP passed on to the new generation" pid=(\d+)`)
	var m []string
	waitFor(t, 30*time.Second, "the first generation to pass the second SIGHUP on", func() bool {
		m = passedOn.FindStringSubmatch(d.log.String())
		return m != nil
	})
	second, _ := strconv.Atoi(m[1])
	if got := d.pid(t); got != second {
		t.Errorf("the PID file names %d, want the generation the SIGHUP was passed to, %d", got, second)
	}
	waitFor(t, 10*time.Second, "the second generation to wait for the first's drain", func() bool {
		return strings.Contains(d.log.String(), "the previous generation is still draining")
	})
	if code, _, body := d.get(t, "/"); code != 200 || body != "done" {
		t.Errorf("GET / while the first generation drains = %d %q, want 200", code, body)
	}

	released()
	wantDone(t, slow, "the request under way across both SIGHUPs")
	waitFor(t, 15*time.Second, "the first generation to exit, workers included", func() bool { return exited(firstTree...) })
	if code, _, body := d.get(t, "/"); code != 200 || body != "done" {
		t.Errorf("GET / once the first generation exited = %d %q, want 200", code, body)
	}
	waitFor(t, 30*time.Second, "a third generation in the PID file", func() bool {
		pid := d.pid(t)
		return pid != first && pid != second
	})
	if code, _, body := d.get(t, "/"); code != 200 || body != "done" {
		t.Errorf("GET / from the third generation = %d %q, want 200", code, body)
	}
	if strings.Contains(d.log.String(), "upgrade failed") {
		t.Error("an upgrade failed; want each SIGHUP to start a generation")
	}
}

// A stop that reaches a generation draining after a handover, as systemd
// sends it (to the process it still knows as the main one, then killing
// whatever is left once that one exits), stops the new generation too:
// the old one passes it on, and exits only once the new one has stopped.
func TestStopDuringTheOldGenerationsDrainStopsTheNewOne(t *testing.T) {
	d := start(t, options{long: true})
	released, slow := holdRequest(t, d)
	first := d.pid(t)

	syscall.Kill(first, syscall.SIGHUP)
	waitFor(t, 30*time.Second, "a new generation in the PID file", func() bool { return d.pid(t) != first })
	second := d.pid(t)
	secondTree := append(children(second), second)
	// Handed over: a stop before that would abandon the new generation.
	waitFor(t, 10*time.Second, "the first generation to hear the new one is ready", func() bool {
		return strings.Contains(d.log.String(), "new generation is ready, draining this one")
	})
	syscall.Kill(first, syscall.SIGTERM)
	waitFor(t, 15*time.Second, "the new generation, workers included, to stop", func() bool { return exited(secondTree...) })
	if !alive(first) {
		t.Error("the first generation exited before its request under way finished")
	}
	released()
	wantDone(t, slow, "the request under way across the stop")
	d.mustExit0(t, "its request finishing")
	if !strings.Contains(d.log.String(), "SIGTERM passed on to the new generation") {
		t.Error("the first generation did not say it passed the stop on")
	}
}

// Failed upgrades cost nothing that stays: the memory file the pool is
// handed over in is made once, not once per attempt, and the pool still
// reaches the generation that finally starts.
func TestFailedUpgradesLeaveNoMemoryFiles(t *testing.T) {
	bin := replaceableBinary(t)
	d := start(t, options{bin: bin})
	a := newOrigin(t, "a", "/health")
	d.register(t, a.url())
	pid := d.pid(t)

	// The binary on disk passes the check of its configuration, then
	// exits at once: each new generation fails before it is ready.
	replaceBinary(t, bin, `case "$1" in -check-config) exec "$weldr" "$@";; esac; exit 1`)
	memfds := func() (n int) {
		entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, e := range entries {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); strings.HasPrefix(l, "/memfd:weldr-pool") {
				n++
			}
		}
		return n
	}
	var after []int
	for i := range 4 {
		syscall.Kill(pid, syscall.SIGHUP)
		waitFor(t, 30*time.Second, fmt.Sprintf("failed upgrade %d to be counted", i+1), func() bool {
			return d.metric(t, "weldr_upgrade_failures_total") == int64(i+1)
		})
		after = append(after, memfds())
	}
	if after[0] == 0 || after[3] != after[0] {
		t.Errorf("memory files holding the pool after each of 4 failed upgrades: %v, want as many after the last as after the first", after)
	}

	// The real binary again: the pool reaches the new generation.
	replaceBinary(t, bin, `exec "$weldr" "$@"`)
	d.upgrade(t)
	if code, _, body := d.get(t, "/"); code != 200 || body != "a" {
		t.Errorf("GET / after the upgrade = %d %q, want 200 from a", code, body)
	}
}

// Each upgrade hands over the pool as it is then, with no state file to
// fall back on: what the second generation registered and removed reaches
// the third, through the memory file the second inherited and rewrote.
func TestUpgradesHandOverThePoolAsItIsThen(t *testing.T) {
	d := start(t, options{}) // no state file
	a, b, c := newOrigin(t, "a", "/health"), newOrigin(t, "b", "/health"), newOrigin(t, "c", "/health")
	d.register(t, a.url())
	d.register(t, b.url())
	d.upgrade(t)
	d.register(t, c.url())
	host, port, _ := net.SplitHostPort(a.addr)
	if code, body := d.api(t, "DELETE", "/servers/"+host+"/"+port, ""); code != http.StatusNoContent {
		t.Fatalf("DELETE a = %d %s, want 204", code, body)
	}
	d.upgrade(t)
	_, body := d.api(t, "GET", "/servers", "")
	var servers []serverView
	if err := json.Unmarshal([]byte(body), &servers); err != nil {
		t.Fatalf("GET /servers: %v in %s", err, body)
	}
	var ids []string
	for _, s := range servers {
		ids = append(ids, s.ID)
	}
	slices.Sort(ids)
	want := []string{b.addr, c.addr}
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Errorf("servers after the second upgrade = %v, want b and c %v, as the second generation left them", ids, want)
	}
}

func TestBrokenConfigOnSIGHUPKeepsServing(t *testing.T) {
	d := start(t, options{})
	a := newOrigin(t, "a", "/health")
	d.register(t, a.url())
	good, _ := os.ReadFile(d.config)
	pid := d.pid(t)

	d.writeConfig(t, string(good)+"\n[proxy]\nworkers = -3\n")
	syscall.Kill(pid, syscall.SIGHUP)
	waitFor(t, 30*time.Second, "the failed upgrade to be counted", func() bool {
		return d.metric(t, "weldr_upgrade_failures_total") == 1
	})
	if got := d.pid(t); got != pid || !alive(pid) {
		t.Errorf("after a broken config the PID file names %d (alive %v), want %d still serving", got, alive(pid), pid)
	}
	if code, _, body := d.get(t, "/"); code != 200 || body != "a" {
		t.Errorf("GET / after the failed upgrade = %d %q, want 200 from a", code, body)
	}
	if !strings.Contains(d.log.String(), "not upgrading") {
		t.Errorf("the log does not say why the upgrade was refused:\n%s", d.log)
	}
	// Mutations work again, and a fixed config upgrades.
	b := newOrigin(t, "b", "/health")
	d.register(t, b.url())
	d.writeConfig(t, string(good))
	d.upgrade(t)
	if got := d.server(t, b.addr); got.ID != b.addr {
		t.Errorf("b, registered after the failed upgrade, is missing after the next one")
	}
}

// SIGTERM: the requests under way finish, new connections are refused at
// once (left listening, the socket would queue them unanswered until the
// drain timeout and then reset them), and weldr exits 0 with its workers.
func TestSIGTERMFinishesInFlightRequest(t *testing.T) {
	d := start(t, options{long: true})
	release, got := holdRequest(t, d)
	pid, workers := d.pid(t), children(d.pid(t))
	syscall.Kill(pid, syscall.SIGTERM)
	// Far inside the drain's minute.
	waitFor(t, 10*time.Second, "new connections to the proxy to be refused", func() bool {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(d.proxy, "http://"), time.Second)
		if err == nil {
			c.Close()
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
	release()
	wantDone(t, got, "the request under way across SIGTERM")
	d.mustExit0(t, "SIGTERM")
	for _, w := range workers {
		if alive(w) {
			t.Errorf("worker %d still running after the manager exited", w)
		}
	}
	if strings.Contains(d.log.String(), "level=ERROR") {
		t.Errorf("the stop logged errors:\n%s", d.log)
	}
}

func TestRestartReloadsRegistrations(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state.json")
	a, b := newOrigin(t, "a", "/health"), newOrigin(t, "b", "/health")
	first := start(t, options{state: state})
	first.register(t, a.url())
	first.register(t, b.url())
	ip, port := b.id()
	first.api(t, "DELETE", "/servers/"+ip+"/"+port, "")
	first.stop(t)

	second := start(t, options{state: state})
	if got := second.server(t, a.addr); got.State != "up" {
		t.Errorf("after a restart a = %+v, want it registered", got)
	}
	_, body := second.api(t, "GET", "/servers", "")
	if strings.Contains(body, b.addr) {
		t.Errorf("after a restart the removed b is back: %s", body)
	}
	if code, _, got := second.get(t, "/"); code != 200 || got != "a" {
		t.Errorf("GET / after a restart = %d %q, want 200 from a", code, got)
	}
}

// With a state file it cannot save, weldr still starts and proxies, says
// why at start, and refuses admin changes with an error that names the file.
func TestUnwritableStateFileRefusesChangesNotTheStart(t *testing.T) {
	state := filepath.Join(t.TempDir(), "missing", "state.json")
	d := start(t, options{state: state})
	if !strings.Contains(d.log.String(), "state.file") || !strings.Contains(d.log.String(), state) {
		t.Errorf("the start's log does not name state.file and %s:\n%s", state, d.log)
	}
	a := newOrigin(t, "a", "/health")
	code, body := d.api(t, "POST", "/servers", `{"url": "`+a.url()+`"}`)
	if code != http.StatusInternalServerError || !strings.Contains(body, state) {
		t.Errorf("POST /servers with a state file that cannot be saved = %d %s, want 500 naming %s", code, body, state)
	}
	if code, _, _ := d.get(t, "/"); code != http.StatusServiceUnavailable {
		t.Errorf("GET / = %d, want 503: the refused server is not in the pool", code)
	}
}

func TestMutationsDuringHandoverAreNotLost(t *testing.T) {
	// Register servers as fast as the API allows while upgrades happen:
	// every POST answered 201 must be in the pool afterwards; the others
	// got 503 with Retry-After and may be retried.
	d := start(t, options{})
	origins := make([]*origin, 0, 40)
	stop := make(chan struct{})
	done := make(chan []string)
	go func() {
		var accepted []string
		for i := 0; i < 40; i++ {
			select {
			case <-stop:
				done <- accepted
				return
			default:
			}
			o := newOrigin(t, fmt.Sprint("o", i), "/health")
			origins = append(origins, o)
			req, _ := http.NewRequest("POST", d.admin+"/servers", strings.NewReader(`{"url": "`+o.url()+`"}`))
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				continue // the old admin listener closing under us: not acknowledged
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			switch res.StatusCode {
			case http.StatusCreated:
				accepted = append(accepted, o.addr)
			case http.StatusServiceUnavailable:
				if res.Header.Get("Retry-After") == "" {
					t.Errorf("503 without Retry-After")
				}
			default:
				t.Errorf("POST during upgrades = %d", res.StatusCode)
			}
			time.Sleep(20 * time.Millisecond) // pace, not wait
		}
		done <- accepted
	}()
	for range 3 {
		d.upgrade(t)
	}
	close(stop)
	accepted := <-done
	_, body := d.api(t, "GET", "/servers", "")
	for _, addr := range accepted {
		if !strings.Contains(body, addr) {
			t.Errorf("%s was registered (201) during the upgrades but is missing now", addr)
		}
	}
	if len(accepted) == 0 {
		t.Error("no registration was accepted during the upgrades")
	}
}

// httpOrigin starts a real origin with handler h and returns its URL.
func httpOrigin(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	o := newOrigin(t, "h", "/health")
	o.stop()
	o.handler = h
	o.start()
	return o.url()
}
