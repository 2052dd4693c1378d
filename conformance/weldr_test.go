package conformance

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weldr-proxy/weldr/internal/weldrtest"
)

// Limits of the configuration every test runs with.
const (
	maxHeaderBytes    = 8192            // proxy.max_header_bytes
	readHeaderTimeout = 2 * time.Second // proxy.read_header_timeout
)

// weldr is one running weldr binary with one raw backend registered.
type weldr struct {
	addr    string // the proxy's host:port
	admin   string // base URL of the admin API
	backend *backend
	log     string // file holding everything the manager and its workers wrote
}

// start runs weldr with a loopback-only configuration on free ports and
// workers worker processes (0 means 1), registers a fresh raw backend with
// it, and stops both in t.Cleanup.
func start(t *testing.T, workers int) *weldr {
	t.Helper()
	if workers == 0 {
		workers = 1
	}
	b := newBackend(t) // registered first, so cleaned up after weldr stops
	dir := t.TempDir()
	pp, ap := weldrtest.FreePort(t), weldrtest.FreePort(t)
	w := &weldr{
		addr:    fmt.Sprintf("127.0.0.1:%d", pp),
		admin:   fmt.Sprintf("http://127.0.0.1:%d", ap),
		backend: b,
		log:     filepath.Join(dir, "weldr.log"),
	}
	config := filepath.Join(dir, "weldr.toml")
	cfg := fmt.Sprintf(`[proxy]
listen = %q
workers = %d
connect_timeout = "1s"
response_header_timeout = "2s"
read_header_timeout = %q
idle_timeout = "5s"
max_header_bytes = %d
[admin]
listen = "127.0.0.1:%d"
[state]
file = ""
[lifecycle]
drain_timeout = "2s"
[health]
interval = "1m"
[log]
level = "debug"
`, w.addr, workers, readHeaderTimeout, maxHeaderBytes, ap)
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(w.log)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(weldrBin, "-config", config)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		stop(t, cmd.Process.Pid, exited)
		if t.Failed() {
			b, _ := os.ReadFile(w.log)
			t.Logf("weldr log:\n%s", b)
		}
	})

	waitFor(t, 30*time.Second, "weldr to serve /healthz", func() bool {
		res, err := http.Get(w.admin + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	res, err := http.Post(w.admin+"/servers", "application/json",
		strings.NewReader(`{"url": "http://`+b.ln.Addr().String()+`"}`))
	if err != nil {
		t.Fatalf("POST /servers: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("POST /servers = %d %s, want 201", res.StatusCode, body)
	}
	// The manager checks a new server at once; wait for that check so that
	// it cannot land in the middle of a test case.
	waitFor(t, 10*time.Second, "the first health check", func() bool { return b.healthChecks() > 0 })
	return w
}

// stop sends SIGTERM to the manager and waits for it to exit; its workers
// exit with it.
func stop(t *testing.T, pid int, exited <-chan struct{}) {
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		syscall.Kill(pid, syscall.SIGKILL)
		<-exited
		t.Errorf("weldr %d did not exit within 15s of SIGTERM", pid)
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
