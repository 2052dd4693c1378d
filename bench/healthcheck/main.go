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
// With -churn, it measures instead what admin mutations cost the proxy's
// throughput: windows of wrk alone alternate with windows where clients
// also register and remove servers, and it reports the CPU of every
// process on the machine in each. -stand-in sends the mutations to a
// stand-in admin API instead: one that answers them and does nothing
// else, or one that also checks each new server at once, as the SPEC
// asks. They show what the mutations cost the machine before weldr does
// anything with them.
//
//	go run ./bench/healthcheck -weldr /tmp/weldr -servers 10000 -interval 10s -settle 8s -measure 8s -churn 1000
//	go run ./bench/healthcheck -weldr /tmp/weldr -servers 10000 -interval 10s -settle 8s -measure 8s -churn 1000 -stand-in check
//
// Everything listens on 127.0.0.1 and stops by itself.
package main

import (
	"bufio"
	"encoding/json"
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
	if len(os.Args) > 2 && os.Args[1] == "stand-in" {
		serveStandIn(os.Args[2] == "check")
		return
	}
	weldr := flag.String("weldr", "", "path to the weldr binary (required)")
	servers := flag.Int("servers", 10000, "servers in the pool")
	perProc := flag.Int("per-process", 2000, "origins per origin process")
	interval := flag.Duration("interval", time.Second, "health check interval")
	settle := flag.Duration("settle", 10*time.Second, "time to let weldr settle before measuring")
	measure := flag.Duration("measure", 30*time.Second, "measurement window")
	workers := flag.Int("workers", 2, "weldr workers")
	rate := flag.Int("churn", 0, "admin mutations per second to measure (0: the health checker only)")
	clients := flag.Int("clients", 32, "with -churn: concurrent admin clients")
	rounds := flag.Int("rounds", 3, "with -churn: alternating quiet and churn windows")
	conns := flag.String("admin-conns", "new", "with -churn: the admin clients open a connection per mutation (new) or keep one alive each (kept)")
	standIn := flag.String("stand-in", "", "with -churn: send the mutations to a stand-in admin API, not to weldr's: answer (it answers them and does nothing else) or check (it also checks each new server at once)")
	flag.Parse()
	if *weldr == "" {
		log.Fatal("-weldr is required")
	}
	if *conns != "new" && *conns != "kept" {
		log.Fatalf("-admin-conns is new or kept, not %q", *conns)
	}
	if *standIn != "" && *standIn != "answer" && *standIn != "check" {
		log.Fatalf("-stand-in is answer or check, not %q", *standIn)
	}
	if *rate == 0 && (*standIn != "" || *conns != "new") {
		log.Fatal("-stand-in and -admin-conns go with -churn")
	}
	c := &churn{rate: *rate, clients: *clients, rounds: *rounds, window: *measure, kept: *conns == "kept", servers: *servers}
	if err := run(*weldr, *perProc, *workers, *interval, *settle, c, *standIn); err != nil {
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

func run(weldr string, perProc, workers int, interval, settle time.Duration, c *churn, standIn string) error {
	servers, measure := c.servers, c.window
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
	if c.rate > 0 {
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

	if c.rate > 0 {
		c.admin, c.target, c.proxy = admin, admin, fmt.Sprintf("http://127.0.0.1:%d/", proxyPort)
		c.pid, c.origins, c.spare = cmd.Process.Pid, procs, spare
		if standIn != "" {
			s, addr, err := startStandIn(self, standIn)
			if err != nil {
				return err
			}
			defer func() { s.Process.Kill(); s.Wait() }()
			c.target, c.standIn = "http://"+addr, s.Process.Pid
			log.Printf("the mutations go to a stand-in admin API (%s) on %s, not to weldr", standIn, addr)
		}
		return measureChurn(c)
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

// serveStandIn answers the admin API's mutations and nothing else, with
// net/http as weldr does: POST /servers decodes the JSON body and answers
// 201 with the server, DELETE /servers/:ip/:port answers 204. With check,
// it also checks each new server at once, as the SPEC asks (here before
// answering; weldr answers first), and keeps the check's connection until
// the server is removed, as weldr does. It prints its address and exits
// when its standard input closes (its parent is gone).
func serveStandIn(check bool) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex
	kept := map[string]net.Conn{} // host:port -> its check connection
	mux := http.NewServeMux()
	mux.HandleFunc("POST /servers", func(w http.ResponseWriter, r *http.Request) {
		var s struct {
			URL string `json:"url"`
		}
		if err := json.NewDecoder(r.Body).Decode(&s); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if host, ok := strings.CutPrefix(s.URL, "http://"); check && ok {
			if conn, err := checkOnce(host); err == nil {
				mu.Lock()
				if old := kept[host]; old != nil {
					old.Close() // registered again
				}
				kept[host] = conn
				mu.Unlock()
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(map[string]any{"url": s.URL, "state": "up"})
	})
	mux.HandleFunc("DELETE /servers/{ip}/{port}", func(w http.ResponseWriter, r *http.Request) {
		host := net.JoinHostPort(r.PathValue("ip"), r.PathValue("port"))
		mu.Lock()
		if conn := kept[host]; conn != nil {
			conn.Close()
			delete(kept, host)
		}
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	fmt.Printf("addr %s\n", ln.Addr())
	go (&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
	io.Copy(io.Discard, os.Stdin)
}

// checkOnce sends one health check to host on a new connection and returns
// the connection, to be kept.
func checkOnce(host string) (net.Conn, error) {
	conn, err := net.DialTimeout("tcp", host, 2*time.Second)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	io.WriteString(conn, "GET /health HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err == nil {
		_, err = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// startStandIn starts serveStandIn in a process of its own and returns it
// with its address.
func startStandIn(self, mode string) (*exec.Cmd, string, error) {
	cmd := exec.Command(self, "stand-in", mode)
	cmd.Stderr = os.Stderr
	if _, err := cmd.StdinPipe(); err != nil { // closed when this process exits
		return nil, "", err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "addr ")
	if err != nil || !ok {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, "", fmt.Errorf("stand-in admin API: no address (%v)", err)
	}
	return cmd, addr, nil
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

// churn is what measureChurn runs: where the mutations go, how the admin
// clients connect, and the processes whose CPU it reports.
type churn struct {
	admin   string // weldr's admin API: histograms and counters
	target  string // where the mutations go: weldr's admin API or the stand-in's
	standIn int    // the stand-in's PID; 0 when the mutations go to weldr
	proxy   string
	pid     int // weldr's manager
	origins []*originProc
	servers int
	spare   []string
	rate    int
	clients int
	rounds  int
	window  time.Duration
	kept    bool // the admin clients keep their connections alive
}

// usage is the CPU, in cores, that each party on the machine used in one
// window: weldr's manager and its workers, this process (the admin
// clients), the origins, the stand-in admin API and wrk.
type usage struct{ manager, workers, clients, origins, standIn, wrk float64 }

// ticks is a reading of every party's CPU ticks but wrk's, which is timed
// when it exits.
type ticks struct {
	at                                          time.Time
	manager, workers, clients, origins, standIn int64
}

func (c *churn) ticks() ticks {
	t := ticks{at: time.Now(), manager: cpuTicks(c.pid), clients: cpuTicks(os.Getpid())}
	for _, w := range children(c.pid) {
		t.workers += cpuTicks(w)
	}
	for _, p := range c.origins {
		t.origins += cpuTicks(p.cmd.Process.Pid)
	}
	if c.standIn != 0 {
		t.standIn = cpuTicks(c.standIn)
	}
	return t
}

// since returns the cores each party used since t0.
func (c *churn) since(t0 ticks, wrkCPU time.Duration) usage {
	t1 := c.ticks()
	secs := t1.at.Sub(t0.at).Seconds()
	cores := func(a, b int64) float64 { return float64(b-a) / hz / secs }
	return usage{cores(t0.manager, t1.manager), cores(t0.workers, t1.workers), cores(t0.clients, t1.clients),
		cores(t0.origins, t1.origins), cores(t0.standIn, t1.standIn), wrkCPU.Seconds() / secs}
}

// weldr is the CPU of weldr's whole tree.
func (u usage) weldr() float64 { return u.manager + u.workers }

// measureChurn alternates, rounds times, a quiet window of wrk against the
// proxy with one where admin mutations (a POST or a DELETE of one of the
// spare origins) also arrive at rate per second from the clients. It
// reports the median throughputs and their ratio, the mutation rate
// achieved, the CPU of every process on the machine per window, and the
// pool update latency weldr measured over all churn windows.
func measureChurn(c *churn) error {
	if _, err := exec.LookPath("wrk"); err != nil {
		return fmt.Errorf("-churn needs wrk: %w", err)
	}
	added := make([]map[string]bool, c.clients) // client -> origin -> registered
	for i := range added {
		added[i] = map[string]bool{}
	}
	var quiet, busy, ratio, rates []float64
	var cpuQuiet, cpuBusy []usage
	var failed int64
	// First the mutations alone, without proxy traffic: how fast a change
	// reaches the workers when they are not competing with wrk for the CPUs.
	before := histogram(c.admin)
	t0 := c.ticks()
	_, alone, fails, _, err := c.mutate(added, false)
	if err != nil {
		return err
	}
	aloneCPU := c.since(t0, 0)
	failed += fails
	after := histogram(c.admin)
	a50, a99, an := quantiles(before[update], after[update])
	v50, v99, vn := quantiles(before[propagation], after[propagation])
	log.Printf("mutations alone: %.0f/s, weldr CPU %.2f cores, pool update p50 %s p99 %s (%d samples), propagation p50 %s p99 %s (%d samples)", alone, aloneCPU.weldr(), a50, a99, an, v50, v99, vn)
	// One window of traffic, not counted: in it the workers open their
	// connections to the servers, which the first quiet window would pay
	// for otherwise.
	if _, _, err := wrk(c.proxy, c.window); err != nil {
		return err
	}
	before = histogram(c.admin)
	for r := range c.rounds {
		t0 := c.ticks()
		q, wq, err := wrk(c.proxy, c.window)
		if err != nil {
			return err
		}
		cq := c.since(t0, wq)
		t1 := c.ticks()
		b, done, fails, wb, err := c.mutate(added, true)
		if err != nil {
			return err
		}
		cb := c.since(t1, wb)
		failed += fails
		quiet, busy, ratio = append(quiet, q), append(busy, b), append(ratio, b/q)
		rates = append(rates, done)
		cpuQuiet, cpuBusy = append(cpuQuiet, cq), append(cpuBusy, cb)
		log.Printf("round %d: quiet %.0f req/s, under churn %.0f req/s (%.2f), %.0f mutations/s", r+1, q, b, b/q, done)
	}
	after = histogram(c.admin)
	p50, p99, n := quantiles(before[update], after[update])
	q50, q99, qn := quantiles(before[propagation], after[propagation])
	fmt.Printf("servers in pool\tquiet req/s\treq/s under churn\tratio\tmutations/s\tfailed\tweldr CPU quiet\tunder churn\tpool update p50\tp99 (≤ bucket)\tsamples\tpropagation p50\tp99\tsamples\n")
	fmt.Printf("%d\t%.0f\t%.0f\t%.2f\t%.0f\t%d\t%.2f\t%.2f\t%s\t%s\t%d\t%s\t%s\t%d\n", c.servers, median(quiet), median(busy), median(ratio),
		median(rates), failed, medianUse(cpuQuiet).weldr(), medianUse(cpuBusy).weldr(), p50, p99, n, q50, q99, qn)
	fmt.Printf("(medians of %d alternating rounds, after one window of traffic not counted; CPU in cores, manager + workers)\n", c.rounds)
	fmt.Printf("mutations alone (no proxy traffic): %.0f/s, weldr CPU %.2f cores, pool update p50 %s, p99 %s (%d samples), propagation p50 %s, p99 %s (%d samples)\n", alone, aloneCPU.weldr(), a50, a99, an, v50, v99, vn)
	fmt.Printf("requests routed by a pool older than the last change written to their worker: %s\n", counter(c.admin, "weldr_requests_routed_behind_total"))
	fmt.Printf("\nCPU by process, cores (medians of each column over the rounds; total: their sum)\twrk\torigins\tweldr manager\tweldr workers\tadmin clients\tstand-in admin API\ttotal\n")
	for _, w := range []struct {
		name string
		u    usage
	}{{"mutations alone (one window)", aloneCPU}, {"quiet", medianUse(cpuQuiet)}, {"under churn", medianUse(cpuBusy)}} {
		u := w.u
		fmt.Printf("%s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\n", w.name, u.wrk, u.origins, u.manager, u.workers, u.clients, u.standIn,
			u.wrk+u.origins+u.manager+u.workers+u.clients+u.standIn)
	}
	return nil
}

// mutate runs wrk for a window (or just waits, without traffic) while the
// clients register and remove spare origins at c.rate per second. Client i
// owns the spare origins whose index is i modulo the number of clients, so
// a POST and a DELETE of the same server never race.
func (c *churn) mutate(added []map[string]bool, traffic bool) (reqs, mutations float64, failed int64, wrkCPU time.Duration, err error) {
	stop := make(chan struct{})
	var done, fails atomic.Int64
	var wg sync.WaitGroup
	// A token per client at most waits: when the clients fall behind, the
	// mutations they could not make are dropped, not made after the window.
	tokens := make(chan int, len(added))
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
				for owed := int(now.Sub(start).Seconds() * float64(c.rate)); issued < owed; issued++ {
					select {
					case tokens <- issued:
					default: // the clients fall behind: the achieved rate says so
					}
				}
			}
		}
	}()
	n := len(added)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Either a connection per mutation, as backends registering
			// themselves make, or one kept alive per client, as a control
			// plane would.
			tr := &http.Transport{DisableKeepAlives: !c.kept, MaxIdleConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			client := &http.Client{Timeout: 10 * time.Second, Transport: tr}
			var own []string
			for k := i; k < len(c.spare); k += n {
				own = append(own, c.spare[k])
			}
			if len(own) == 0 {
				return
			}
			for k := range tokens {
				select {
				case <-stop:
					return // the window is over; what is queued is not made
				default:
				}
				a := own[k%len(own)]
				var req *http.Request
				if added[i][a] {
					host, port, _ := net.SplitHostPort(a)
					req, _ = http.NewRequest("DELETE", c.target+"/servers/"+host+"/"+port, nil)
				} else {
					req, _ = http.NewRequest("POST", c.target+"/servers", strings.NewReader(`{"url": "http://`+a+`"}`))
				}
				res, err := client.Do(req)
				if err != nil || res.StatusCode >= 300 {
					fails.Add(1)
				} else {
					added[i][a] = !added[i][a]
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
	if traffic {
		reqs, wrkCPU, err = wrk(c.proxy, c.window)
	} else {
		time.Sleep(c.window)
	}
	took := time.Since(start)
	close(stop)
	wg.Wait()
	return reqs, float64(done.Load()) / took.Seconds(), fails.Load(), wrkCPU, err
}

// medianUse is the median of each party's CPU over the windows.
func medianUse(us []usage) usage {
	col := func(f func(usage) float64) float64 {
		v := make([]float64, len(us))
		for i, u := range us {
			v[i] = f(u)
		}
		return median(v)
	}
	return usage{
		manager: col(func(u usage) float64 { return u.manager }),
		workers: col(func(u usage) float64 { return u.workers }),
		clients: col(func(u usage) float64 { return u.clients }),
		origins: col(func(u usage) float64 { return u.origins }),
		standIn: col(func(u usage) float64 { return u.standIn }),
		wrk:     col(func(u usage) float64 { return u.wrk }),
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// wrk runs wrk -t2 -c64 against url and returns requests per second and
// the CPU wrk used.
func wrk(url string, d time.Duration) (float64, time.Duration, error) {
	cmd := exec.Command("wrk", "-t2", "-c64", "-d"+d.String(), url)
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, fmt.Errorf("wrk: %w", err)
	}
	used := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Requests/sec:"); ok {
			rps, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return rps, used, err
		}
	}
	return 0, 0, fmt.Errorf("no Requests/sec in wrk's output:\n%s", out)
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

// hz is USER_HZ on Linux, the unit of /proc/PID/stat's times.
const hz = 100
