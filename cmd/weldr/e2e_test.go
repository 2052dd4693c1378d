package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weldr-proxy/weldr/internal/weldrtest"
)

// weldrBin is the real binary, built once for all end-to-end tests.
var weldrBin string

func TestMain(m *testing.M) { os.Exit(weldrtest.Main(m, &weldrBin)) }

// daemon is one running weldr, across the generations SIGHUP starts.
type daemon struct {
	t       *testing.T
	cmd     *exec.Cmd // the first generation
	proxy   string    // http://127.0.0.1:port
	admin   string
	config  string  // the configuration file
	pidFile string  // written by each generation when it is ready
	log     logFile // what every generation and its workers wrote

	exited   chan struct{} // closed when the first generation has been reaped
	exitCode int           // its exit code, once exited is closed
}

// logFile is the daemon's output. A file, not a pipe: a new generation
// inherits it, and a pipe would keep exec.Cmd.Wait of the old one waiting.
type logFile string

func (l logFile) String() string {
	b, _ := os.ReadFile(string(l))
	return string(b)
}

// options for startWeldr; zero values are the defaults of the tests.
type options struct {
	workers int    // 0: 2
	state   string // state.file; "" keeps the pool in memory
	extra   string // appended to the config; lines before a table header land in [log]
	// long sets the drain and response header timeouts to a minute (5 s
	// otherwise), for tests that hold a request across a stop.
	long bool
	bin  string // the binary to run; weldrBin if empty
}

// startWeldr runs the binary with a loopback-only config and waits until all
// its workers are ready. extra is appended to the config: lines before any
// table header land in [log].
func startWeldr(t *testing.T, workers int, extra string) *daemon {
	t.Helper()
	return start(t, options{workers: workers, extra: extra})
}

func start(t *testing.T, o options) *daemon {
	t.Helper()
	if o.workers == 0 {
		o.workers = 2
	}
	timeout := "5s"
	if o.long {
		timeout = "1m"
	}
	dir := t.TempDir()
	pp, ap := weldrtest.FreePort(t), weldrtest.FreePort(t)
	d := &daemon{
		t:       t,
		proxy:   fmt.Sprintf("http://127.0.0.1:%d", pp),
		admin:   fmt.Sprintf("http://127.0.0.1:%d", ap),
		config:  filepath.Join(dir, "weldr.toml"),
		pidFile: filepath.Join(dir, "weldr.pid"),
		log:     logFile(filepath.Join(dir, "weldr.log")),
	}
	d.writeConfig(t, fmt.Sprintf(`[proxy]
listen = "127.0.0.1:%d"
workers = %d
connect_timeout = "500ms"
response_header_timeout = %q
[admin]
listen = "127.0.0.1:%d"
[state]
file = %q
[lifecycle]
drain_timeout = %q
pid_file = %q
[log]
level = "debug"
%s`, pp, o.workers, timeout, ap, o.state, timeout, d.pidFile, o.extra))
	out, err := os.Create(string(d.log))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if o.bin == "" {
		o.bin = weldrBin
	}
	d.cmd = exec.Command(o.bin, "-config", d.config)
	d.cmd.Stdout, d.cmd.Stderr = out, out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.exited = make(chan struct{})
	go func() {
		d.cmd.Wait()
		d.exitCode = d.cmd.ProcessState.ExitCode()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.stop(t)
		<-d.exited
		if t.Failed() {
			t.Logf("weldr log:\n%s", d.log)
		}
	})
	d.waitReady(t)
	return d
}

func (d *daemon) writeConfig(t *testing.T, cfg string) {
	t.Helper()
	if err := os.WriteFile(d.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitReady waits until the admin API reports every worker serving and the
// PID file is written (tableflip writes it just after the admin API opens).
func (d *daemon) waitReady(t *testing.T) {
	t.Helper()
	waitFor(t, 30*time.Second, "weldr to be ready", func() bool {
		if _, err := os.Stat(d.pidFile); err != nil {
			return false
		}
		res, err := http.Get(d.admin + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
}

// pid returns the PID of the current generation: from the PID file, which
// each generation writes when it is ready.
func (d *daemon) pid(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(d.pidFile)
	if err != nil {
		t.Fatalf("reading the PID file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("PID file holds %q", b)
	}
	return pid
}

// stop sends SIGTERM to the current generation, waits for it to exit and
// checks that no worker is left behind.
func (d *daemon) stop(t *testing.T) {
	pid := d.cmd.Process.Pid
	if b, err := os.ReadFile(d.pidFile); err == nil {
		if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			pid = p
		}
	}
	if !alive(pid) {
		return
	}
	workers := children(pid)
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(20 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("weldr %d did not exit within 20s of SIGTERM", pid)
	}
	for _, w := range workers {
		waitFor(t, 5*time.Second, "workers to exit with their manager", func() bool { return !alive(w) })
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// children returns the PIDs whose parent is pid.
func children(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces, so cut at the last ')'.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) && f[0] != "Z" {
			out = append(out, p)
		}
	}
	return out
}

// exited reports whether none of pids is running.
func exited(pids ...int) bool {
	for _, p := range pids {
		if alive(p) {
			return false
		}
	}
	return true
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// backend is a real origin that names itself in every answer.
func backend(t *testing.T, name string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		switch r.URL.Path {
		case "/large":
			w.Header().Set("Content-Length", strconv.Itoa(len(largeBody)))
			w.Write(largeBody)
		case "/echo":
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "%s %d %x %v", r.Method, n, h.Sum(nil), r.TransferEncoding)
		default:
			fmt.Fprintf(w, "%s %s", r.Method, name)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

var largeBody = func() []byte {
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}()

// api sends an admin request and returns the status and body.
func (d *daemon) api(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, d.admin+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func (d *daemon) register(t *testing.T, url string) {
	t.Helper()
	code, body := d.api(t, "POST", "/servers", `{"url": "`+url+`"}`)
	if code != http.StatusCreated {
		t.Fatalf("POST /servers %s = %d %s, want 201", url, code, body)
	}
}

// get sends one request through the proxy on a new connection, so that
// successive calls spread over the workers.
func (d *daemon) get(t *testing.T, path string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", d.proxy+path, nil)
	req.Close = true
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", path, err)
	}
	return res.StatusCode, res.Header, string(b)
}

func TestEndToEnd(t *testing.T) {
	const workers = 2
	d := startWeldr(t, workers, "")
	pid := d.cmd.Process.Pid
	a, b := backend(t, "a"), backend(t, "b")
	d.register(t, a.URL)
	d.register(t, b.URL)

	t.Run("workers are children of the manager", func(t *testing.T) {
		if got := children(pid); len(got) != workers {
			t.Errorf("manager has %d children %v, want %d workers", len(got), got, workers)
		}
	})

	t.Run("round robin reaches both backends", func(t *testing.T) {
		// One keep-alive connection stays on one worker, whose round robin
		// then alternates strictly.
		client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
		defer client.CloseIdleConnections()
		var seq []string
		for range 6 {
			res, err := client.Get(d.proxy + "/")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			seq = append(seq, res.Header.Get("X-Backend"))
		}
		for i := 1; i < len(seq); i++ {
			if seq[i] == seq[i-1] || seq[i] == "" {
				t.Fatalf("backends in order %v, want strict alternation of a and b", seq)
			}
		}
	})

	t.Run("all methods pass", func(t *testing.T) {
		for _, m := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"} {
			req, _ := http.NewRequest(m, d.proxy+"/", nil)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", m, err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 {
				t.Errorf("%s / = %d, want 200", m, res.StatusCode)
			}
			if m == "HEAD" {
				if len(body) != 0 {
					t.Errorf("HEAD / has a %d-byte body, want none", len(body))
				}
				continue
			}
			if !strings.HasPrefix(string(body), m+" ") {
				t.Errorf("%s / body = %q, want the backend to see %s", m, body, m)
			}
		}
	})

	t.Run("1 MiB response byte for byte", func(t *testing.T) {
		code, _, body := d.get(t, "/large")
		if code != 200 || body != string(largeBody) {
			t.Errorf("GET /large = %d with %d bytes, want 200 with the exact %d bytes", code, len(body), len(largeBody))
		}
	})

	t.Run("3 MiB chunked upload byte for byte", func(t *testing.T) {
		upload := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16)
		pr, pw := io.Pipe()
		go func() {
			for off := 0; off < len(upload); off += 100_000 {
				pw.Write(upload[off:min(off+100_000, len(upload))])
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", d.proxy+"/echo", pr) // no length: sent chunked
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		want := fmt.Sprintf("POST %d %x [chunked]", len(upload), sha256.Sum256(upload))
		if string(body) != want {
			t.Errorf("backend saw %q, want %q", body, want)
		}
	})

	t.Run("bad admin input changes nothing", func(t *testing.T) {
		_, before := d.api(t, "GET", "/servers", "")
		bad := []struct {
			method, path, body string
			code               int
		}{
			{"POST", "/servers", `{"url": "http://127.0.0.1:1"`, 400},
			{"POST", "/servers", `not json`, 400},
			{"POST", "/servers", ``, 400},
			{"POST", "/servers", `{}`, 400},
			{"POST", "/servers", `{"url": ""}`, 400},
			{"POST", "/servers", `{"url": "ftp://127.0.0.1:21"}`, 400},
			{"POST", "/servers", `{"url": "127.0.0.1:8080"}`, 400},
			{"POST", "/servers", `{"url": "http://u:p@127.0.0.1:1"}`, 400},
			{"POST", "/servers", `{"url": "http://127.0.0.1:99999"}`, 400},
			{"POST", "/servers", `{"url": "http://127.0.0.1:1", "colour": "red"}`, 400},
			{"POST", "/servers", `{"url": "http://127.0.0.1:1", "weight": 0}`, 400},
			{"POST", "/servers", `{"url": "http://127.0.0.1:1", "health_check": {"fall": -1}}`, 400},
			{"POST", "/servers", `{"url": "http://127.0.0.1:1"} {"url": "http://127.0.0.1:2"}`, 400},
			{"POST", "/servers", `["http://127.0.0.1:1"]`, 400},
			{"POST", "/servers", `{"url": "http://127.0.0.1:1", "pad": "` + strings.Repeat("x", 70<<10) + `"}`, 413},
			{"DELETE", "/servers/127.0.0.1/1", ``, 404},
			{"DELETE", "/servers/127.0.0.1/notaport", ``, 400},
			{"PUT", "/servers", `{}`, 405},
			{"GET", "/nope", ``, 404},
		}
		for _, tc := range bad {
			code, body := d.api(t, tc.method, tc.path, tc.body)
			if code != tc.code {
				t.Errorf("%s %s %.40q = %d %s, want %d", tc.method, tc.path, tc.body, code, body, tc.code)
			}
			var e struct{ Error string }
			if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
				t.Errorf("%s %s %.40q body = %q, want {\"error\": ...}", tc.method, tc.path, tc.body, body)
			}
		}
		if _, after := d.api(t, "GET", "/servers", ""); after != before {
			t.Errorf("GET /servers changed after rejected requests:\nbefore %s\nafter %s", before, after)
		}
		if !alive(pid) {
			t.Fatal("manager died")
		}
	})

	t.Run("a killed worker is replaced and serves the current pool", func(t *testing.T) {
		c := backend(t, "c")
		d.register(t, c.URL)
		old := children(pid)
		for _, w := range old {
			syscall.Kill(w, syscall.SIGKILL)
		}
		waitFor(t, 10*time.Second, "new workers", func() bool {
			now := children(pid)
			if len(now) != workers {
				return false
			}
			for _, w := range now {
				for _, o := range old {
					if w == o {
						return false
					}
				}
			}
			return true
		})
		waitFor(t, 10*time.Second, "the new workers to serve", func() bool {
			res, err := http.Get(d.admin + "/healthz")
			if err != nil {
				return false
			}
			res.Body.Close()
			return res.StatusCode == 200
		})
		// Only the snapshot a new worker gets at start tells it about c.
		seen := map[string]int{}
		for range 30 {
			_, h, _ := d.get(t, "/")
			seen[h.Get("X-Backend")]++
		}
		if seen["a"] == 0 || seen["b"] == 0 || seen["c"] == 0 {
			t.Errorf("backends reached after the restart: %v, want a, b and c", seen)
		}
		d.api(t, "DELETE", "/servers/"+strings.Replace(strings.TrimPrefix(c.URL, "http://"), ":", "/", 1), "")
	})

	t.Run("DELETE takes a server out of every worker", func(t *testing.T) {
		host, port, _ := net.SplitHostPort(strings.TrimPrefix(b.URL, "http://"))
		if code, body := d.api(t, "DELETE", "/servers/"+host+"/"+port, ""); code != http.StatusNoContent {
			t.Fatalf("DELETE = %d %s, want 204", code, body)
		}
		// Fresh connections land on every worker.
		for i := range 40 {
			code, h, _ := d.get(t, "/")
			if code != 200 || h.Get("X-Backend") != "a" {
				t.Fatalf("request %d after DELETE of b = %d from %q, want 200 from a", i, code, h.Get("X-Backend"))
			}
		}
	})

	t.Run("stats count what was sent", func(t *testing.T) {
		// Wait for the workers' reports of everything so far to settle,
		// then send a known number and look for exactly that increase.
		var last string
		waitFor(t, 10*time.Second, "stats to settle", func() bool {
			_, s := d.api(t, "GET", "/stats", "")
			settled := s == last
			last = s
			if !settled {
				time.Sleep(1200 * time.Millisecond) // longer than a report interval
			}
			return settled
		})
		var before, after struct {
			Client, Server struct{ Success, Failed uint64 }
		}
		json.Unmarshal([]byte(last), &before)
		for range 25 {
			d.get(t, "/")
		}
		waitFor(t, 10*time.Second, "25 more successes in /stats", func() bool {
			_, s := d.api(t, "GET", "/stats", "")
			json.Unmarshal([]byte(s), &after)
			return after.Client.Success >= before.Client.Success+25
		})
		if after.Client.Success != before.Client.Success+25 || after.Server.Success != before.Server.Success+25 {
			t.Errorf("stats went from %+v to %+v, want exactly 25 more client and server successes", before, after)
		}
	})
}

func TestEmptyPoolIs503(t *testing.T) {
	d := startWeldr(t, 1, "")
	code, h, body := d.get(t, "/")
	if code != http.StatusServiceUnavailable || body == "" || !strings.HasPrefix(h.Get("Content-Type"), "text/plain") {
		t.Errorf("GET / with no servers = %d %q (%s), want 503 with a short text body", code, body, h.Get("Content-Type"))
	}
}

func TestCheckConfigAndVersion(t *testing.T) {
	good := filepath.Join(t.TempDir(), "good.toml")
	os.WriteFile(good, []byte("[proxy]\nlisten = \"127.0.0.1:0\"\n"), 0o644)
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("[proxy]\nworkers = -1\nlistn = \"x\"\n"), 0o644)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"version", []string{"-version"}, 0, "weldr "},
		{"valid config", []string{"-check-config", "-config", good}, 0, "configuration is valid"},
		{"invalid config", []string{"-check-config", "-config", bad}, 1, "proxy.workers"},
		{"unknown key", []string{"-check-config", "-config", bad}, 1, "proxy.listn"},
		{"missing file", []string{"-check-config", "-config", "/nonexistent/weldr.toml"}, 1, "no such file"},
		{"bad flag", []string{"-nope"}, 2, "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command(weldrBin, tc.args...).CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			if code != tc.code || !strings.Contains(string(out), tc.want) {
				t.Errorf("weldr %v = exit %d %q, want exit %d containing %q", tc.args, code, out, tc.code, tc.want)
			}
		})
	}
}

func TestManagerDeathStopsWorkers(t *testing.T) {
	d := startWeldr(t, 2, "")
	workers := children(d.cmd.Process.Pid)
	if len(workers) != 2 {
		t.Fatalf("children = %v, want 2 workers", workers)
	}
	d.cmd.Process.Kill()
	waitFor(t, 10*time.Second, "the manager to die", func() bool { return !alive(d.cmd.Process.Pid) })
	waitFor(t, 10*time.Second, "orphaned workers to exit", func() bool {
		for _, w := range workers {
			if alive(w) {
				return false
			}
		}
		return true
	})
}
