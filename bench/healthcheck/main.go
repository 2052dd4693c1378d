// Command healthcheck measures weldr's health checker with a large pool on
// loopback: it starts N tiny origins (spread over several processes, since
// one process may not hold enough file descriptors), runs the real weldr
// binary with all of them as servers checked every interval, lets it settle,
// then reports the manager's CPU and memory, the workers' memory, and the
// check rate the origins saw.
//
//	go build -o /tmp/weldr ./cmd/weldr
//	go run ./bench/healthcheck -weldr /tmp/weldr -servers 10000 -interval 1s -measure 30s
//
// Everything listens on 127.0.0.1 and stops by itself.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weldr-proxy/weldr/internal/weldrtest"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "origins" {
		n, _ := strconv.Atoi(os.Args[2])
		serveOrigins(n)
		return
	}
	weldr := flag.String("weldr", "", "path to the weldr binary (required)")
	servers := flag.Int("servers", 10000, "servers in the pool")
	perProc := flag.Int("per-process", 2000, "origins per origin process")
	interval := flag.Duration("interval", time.Second, "health check interval")
	settle := flag.Duration("settle", 10*time.Second, "time to let weldr settle before measuring")
	measure := flag.Duration("measure", 30*time.Second, "measurement window")
	workers := flag.Int("workers", 2, "weldr workers")
	churn := flag.Int("churn", 0, "admin mutations per second to measure (0: the health checker only)")
	clients := flag.Int("clients", 32, "with -churn: concurrent admin clients")
	rounds := flag.Int("rounds", 3, "with -churn: alternating quiet and churn windows")
	flag.Parse()
	if *weldr == "" {
		log.Fatal("-weldr is required")
	}
	if err := run(*weldr, *servers, *perProc, *workers, *interval, *settle, *measure, *churn, *clients, *rounds); err != nil {
		log.Fatal(err)
	}
}

// originProc is one process of origins and its running check count.
type originProc struct {
	cmd    *exec.Cmd
	addrs  []string
	checks atomic.Int64
	ready  chan struct{}
}

func run(weldr string, servers, perProc, workers int, interval, settle, measure time.Duration, churn, clients, rounds int) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var procs []*originProc
	defer func() {
		for _, p := range procs {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	}()
	// With churn, 100 more origins are registered and removed at run time.
	extra := 0
	if churn > 0 {
		extra = 100
	}
	for left := servers + extra; left > 0; left -= perProc {
		n := min(left, perProc)
		p := &originProc{cmd: exec.Command(self, "origins", strconv.Itoa(n)), ready: make(chan struct{})}
		out, err := p.cmd.StdoutPipe()
		if err != nil {
			return err
		}
		p.cmd.Stderr = os.Stderr
		if err := p.cmd.Start(); err != nil {
			return err
		}
		go p.read(out, n)
		procs = append(procs, p)
	}
	var addrs []string
	for _, p := range procs {
		select {
		case <-p.ready:
		case <-time.After(60 * time.Second):
			return fmt.Errorf("origins did not start")
		}
		addrs = append(addrs, p.addrs...)
	}
	log.Printf("%d origins listening in %d processes", len(addrs), len(procs))

	dir, err := os.MkdirTemp("", "weldr-hcbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	proxyPort, adminPort := freePort(), freePort()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "[proxy]\nlisten = \"127.0.0.1:%d\"\nworkers = %d\n[admin]\nlisten = \"127.0.0.1:%d\"\n[state]\nfile = \"\"\n", proxyPort, workers, adminPort)
	fmt.Fprintf(&cfg, "[health]\npath = \"/health\"\ninterval = \"%s\"\ntimeout = \"2s\"\n[log]\nlevel = \"warn\"\n", interval)
	spare := addrs[servers:]
	for _, a := range addrs[:servers] {
		fmt.Fprintf(&cfg, "[[servers]]\nurl = \"http://%s\"\n", a)
	}
	path := filepath.Join(dir, "weldr.toml")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o644); err != nil {
		return err
	}
	cmd := exec.Command(weldr, "-config", path)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
		}
	}()
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	for deadline := time.Now().Add(60 * time.Second); ; {
		if res, err := http.Get(admin + "/healthz"); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("weldr not ready after 60s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	log.Printf("weldr ready after %s; settling %s", time.Since(started).Round(time.Millisecond), settle)
	time.Sleep(settle)

	if churn > 0 {
		return measureChurn(admin, fmt.Sprintf("http://127.0.0.1:%d/", proxyPort), cmd.Process.Pid, servers, spare, churn, clients, rounds, measure)
	}
	pid := cmd.Process.Pid
	cpu0, checks0, t0 := cpuTicks(pid), totalChecks(procs), time.Now()
	time.Sleep(measure)
	cpu1, checks1, t1 := cpuTicks(pid), totalChecks(procs), time.Now()
	secs := t1.Sub(t0).Seconds()
	cpuPct := float64(cpu1-cpu0) / hz / secs * 100
	rate := float64(checks1-checks0) / secs
	mRSS, mHWM := memKB(pid)
	var wRSS int64
	for _, c := range children(pid) {
		r, _ := memKB(c)
		wRSS += r
	}
	fmt.Printf("servers\tinterval\tchecks/s\tmanager CPU %%\tCPU µs/check\tmanager RSS MiB\tmanager peak MiB\tworkers RSS MiB\n")
	fmt.Printf("%d\t%s\t%.0f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\n", servers, interval, rate, cpuPct,
		float64(cpu1-cpu0)/hz*1e6/float64(checks1-checks0), float64(mRSS)/1024, float64(mHWM)/1024, float64(wRSS)/1024)
	return nil
}

func (p *originProc) read(r io.Reader, n int) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "addr "):
			p.addrs = append(p.addrs, strings.TrimPrefix(line, "addr "))
			if len(p.addrs) == n {
				close(p.ready)
			}
		case strings.HasPrefix(line, "checks "):
			v, _ := strconv.ParseInt(strings.TrimPrefix(line, "checks "), 10, 64)
			p.checks.Store(v)
		}
	}
}

func totalChecks(procs []*originProc) int64 {
	var n int64
	for _, p := range procs {
		n += p.checks.Load()
	}
	return n
}

// serveOrigins listens on n loopback ports, answers every request with 200,
// prints each address, then the running count of requests every 200 ms.
// It exits when its parent does (stdout breaks).
func serveOrigins(n int) {
	var checks atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		checks.Add(1)
		io.WriteString(w, "ok")
	})
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		fmt.Fprintf(out, "addr %s\n", ln.Addr())
		go (&http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
	}
	out.Flush()
	for range time.Tick(200 * time.Millisecond) {
		mu.Lock()
		fmt.Fprintf(out, "checks %d\n", checks.Load())
		err := out.Flush()
		mu.Unlock()
		if err != nil {
			os.Exit(0)
		}
	}
}

// freePort returns a loopback port for weldr to listen on (see
// weldrtest.LoopbackPort).
func freePort() int {
	port, err := weldrtest.LoopbackPort()
	if err != nil {
		log.Fatal(err)
	}
	return port
}

// cpuTicks returns utime+stime of pid in clock ticks.
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// memKB returns VmRSS and VmHWM of pid in KiB.
func memKB(pid int) (rss, hwm int64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}

// children returns the PIDs whose parent is pid.
func children(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, c)
		}
	}
	return out
}

// measureChurn alternates, rounds times, a quiet window of wrk against the
// proxy with one where admin mutations (a POST or a DELETE of one of the
// spare origins) also arrive at rate per second from clients concurrent
// clients. It reports the median throughputs and their ratio, the mutation
// rate achieved, the CPU weldr's processes used per window, and the pool
// update latency weldr measured over all churn windows.
func measureChurn(admin, proxy string, pid, servers int, spare []string, rate, clients, rounds int, window time.Duration) error {
	if _, err := exec.LookPath("wrk"); err != nil {
		return fmt.Errorf("-churn needs wrk: %w", err)
	}
	added := make([]map[string]bool, clients) // client -> origin -> registered
	for c := range added {
		added[c] = map[string]bool{}
	}
	var quiet, busy, ratio, rates, cpuQuiet, cpuBusy []float64
	var failed int64
	// First the mutations alone, without proxy traffic: how fast a change
	// reaches the workers when they are not competing with wrk for the CPUs.
	before := histogram(admin)
	t0 := treeTicks(pid)
	_, alone, fails, err := churnWindow(admin, "", spare, added, rate, window)
	if err != nil {
		return err
	}
	aloneCPU := float64(treeTicks(pid)-t0) / hz / window.Seconds()
	failed += fails
	after := histogram(admin)
	a50, a99, an := quantiles(before[update], after[update])
	v50, v99, vn := quantiles(before[propagation], after[propagation])
	log.Printf("mutations alone: %.0f/s, weldr CPU %.2f cores, pool update p50 %s p99 %s (%d samples), propagation p50 %s p99 %s (%d samples)", alone, aloneCPU, a50, a99, an, v50, v99, vn)
	before = histogram(admin)
	for r := range rounds {
		t0 := treeTicks(pid)
		q, err := wrk(proxy, window)
		if err != nil {
			return err
		}
		t1 := treeTicks(pid)
		b, done, fails, err := churnWindow(admin, proxy, spare, added, rate, window)
		if err != nil {
			return err
		}
		t2 := treeTicks(pid)
		failed += fails
		quiet, busy, ratio = append(quiet, q), append(busy, b), append(ratio, b/q)
		rates = append(rates, done)
		cpuQuiet = append(cpuQuiet, float64(t1-t0)/hz/window.Seconds())
		cpuBusy = append(cpuBusy, float64(t2-t1)/hz/window.Seconds())
		log.Printf("round %d: quiet %.0f req/s, under churn %.0f req/s (%.2f), %.0f mutations/s", r+1, q, b, b/q, done)
	}
	after = histogram(admin)
	p50, p99, n := quantiles(before[update], after[update])
	q50, q99, qn := quantiles(before[propagation], after[propagation])
	fmt.Printf("servers in pool\tquiet req/s\treq/s under churn\tratio\tmutations/s\tfailed\tweldr CPU quiet\tunder churn\tpool update p50\tp99 (≤ bucket)\tsamples\tpropagation p50\tp99\tsamples\n")
	fmt.Printf("%d\t%.0f\t%.0f\t%.2f\t%.0f\t%d\t%.2f\t%.2f\t%s\t%s\t%d\t%s\t%s\t%d\n", servers, median(quiet), median(busy), median(ratio),
		median(rates), failed, median(cpuQuiet), median(cpuBusy), p50, p99, n, q50, q99, qn)
	fmt.Printf("(medians of %d alternating rounds; CPU in cores, manager + workers)\n", rounds)
	fmt.Printf("mutations alone (no proxy traffic): %.0f/s, weldr CPU %.2f cores, pool update p50 %s, p99 %s (%d samples), propagation p50 %s, p99 %s (%d samples)\n", alone, aloneCPU, a50, a99, an, v50, v99, vn)
	fmt.Printf("requests routed by a pool older than the last change written to their worker: %s\n", counter(admin, "weldr_requests_routed_behind_total"))
	return nil
}

// churnWindow runs wrk for window (or just waits, without proxy) while the clients register and remove
// spare origins at rate per second. Client c owns the spare origins whose
// index is c modulo the number of clients, so a POST and a DELETE of the
// same server never race.
func churnWindow(admin, proxy string, spare []string, added []map[string]bool, rate int, window time.Duration) (reqs, mutations float64, failed int64, err error) {
	stop := make(chan struct{})
	var done, fails atomic.Int64
	var wg sync.WaitGroup
	tokens := make(chan int, rate)
	go func() { // paces the mutations: tokens owed by the clock, not by ticks
		t := time.NewTicker(time.Millisecond) // a late tick is made up for
		defer t.Stop()
		start, issued := time.Now(), 0
		for {
			select {
			case <-stop:
				close(tokens)
				return
			case now := <-t.C:
				for owed := int(now.Sub(start).Seconds() * float64(rate)); issued < owed; issued++ {
					select {
					case tokens <- issued:
					default: // the clients fall behind: the achieved rate says so
					}
				}
			}
		}
	}()
	n := len(added)
	for c := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second}
			var own []string
			for i := c; i < len(spare); i += n {
				own = append(own, spare[i])
			}
			if len(own) == 0 {
				return
			}
			for k := range tokens {
				a := own[k%len(own)]
				var req *http.Request
				if added[c][a] {
					host, port, _ := net.SplitHostPort(a)
					req, _ = http.NewRequest("DELETE", admin+"/servers/"+host+"/"+port, nil)
				} else {
					req, _ = http.NewRequest("POST", admin+"/servers", strings.NewReader(`{"url": "http://`+a+`"}`))
				}
				res, err := client.Do(req)
				if err != nil || res.StatusCode >= 300 {
					fails.Add(1)
				} else {
					added[c][a] = !added[c][a]
				}
				if res != nil {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
				done.Add(1)
			}
		}()
	}
	start := time.Now()
	if proxy != "" {
		reqs, err = wrk(proxy, window)
	} else {
		time.Sleep(window)
	}
	took := time.Since(start)
	close(stop)
	wg.Wait()
	return reqs, float64(done.Load()) / took.Seconds(), fails.Load(), err
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// wrk runs wrk -t2 -c64 against url and returns requests per second.
func wrk(url string, d time.Duration) (float64, error) {
	out, err := exec.Command("wrk", "-t2", "-c64", "-d"+d.String(), url).Output()
	if err != nil {
		return 0, fmt.Errorf("wrk: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Requests/sec:"); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no Requests/sec in wrk's output:\n%s", out)
}

// histogram returns the cumulative buckets of the pool change histograms,
// weldr_pool_update_seconds and weldr_pool_propagation_seconds, by name.
func histogram(admin string) map[string]map[string]float64 {
	res, err := http.Get(admin + "/metrics")
	if err != nil {
		return nil
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	h := map[string]map[string]float64{update: {}, propagation: {}}
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, `_bucket{le="`)
		if !ok || h[name] == nil {
			continue
		}
		le, v, _ := strings.Cut(rest, `"} `)
		n, _ := strconv.ParseFloat(v, 64)
		h[name][le] = n
	}
	return h
}

// counter returns the value of an unlabelled metric, as weldr prints it.
func counter(admin, name string) string {
	res, err := http.Get(admin + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return "not reported"
}

// The pool change histograms: the admin API's wait for the workers' word,
// and the time until the last worker routed by a change, by its own clock.
const (
	update      = "weldr_pool_update_seconds"
	propagation = "weldr_pool_propagation_seconds"
)

// quantiles returns the buckets holding the median and the 99th percentile
// of the observations between two histogram readings.
func quantiles(before, after map[string]float64) (p50, p99 string, n int) {
	type bucket struct {
		le    float64
		label string
		count float64
	}
	var bs []bucket
	for label, c := range after {
		le, err := strconv.ParseFloat(label, 64)
		if label == "+Inf" {
			le, err = 1e9, nil
		}
		if err == nil {
			bs = append(bs, bucket{le, label, c - before[label]})
		}
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	if len(bs) == 0 || bs[len(bs)-1].count == 0 {
		return "-", "-", 0
	}
	total := bs[len(bs)-1].count
	for _, b := range bs {
		if p50 == "" && b.count >= total/2 {
			p50 = b.label + "s"
		}
		if p99 == "" && b.count >= total*0.99 {
			p99 = b.label + "s"
		}
	}
	return p50, p99, int(total)
}

// treeTicks returns the CPU ticks used by pid and its children.
func treeTicks(pid int) int64 {
	t := cpuTicks(pid)
	for _, c := range children(pid) {
		t += cpuTicks(c)
	}
	return t
}

// hz is USER_HZ on Linux, the unit of /proc/PID/stat's times.
const hz = 100
