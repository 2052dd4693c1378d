package manager

import (
	"bufio"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/weldr-proxy/weldr/ipc"
)

// metrics are the manager's own measurements; the request counters come
// from the workers' reports in statsTable.
type metrics struct {
	checkDuration *histogram // seconds per health check
	applyDuration *histogram // seconds the admin API waited (after saving the state) for its change to be in force in every worker
	propagation   *histogram // seconds from an admin change to the last worker applying it, by the workers' stamps
	// seconds from a health verdict to the last worker applying it, likewise
	verdictPropagation *histogram
}

// updateBuckets bound the pool change histograms, in seconds.
var updateBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2}

func newMetrics() *metrics {
	return &metrics{
		checkDuration:      newHistogram(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
		applyDuration:      newHistogram(updateBuckets...),
		propagation:        newHistogram(updateBuckets...),
		verdictPropagation: newHistogram(updateBuckets...),
	}
}

// histogram is a Prometheus histogram: cumulative counts per upper bound.
type histogram struct {
	bounds []float64
	mu     sync.Mutex // guards counts, sum and n
	counts []uint64   // counts[i]: observations <= bounds[i], not cumulative
	sum    float64
	n      uint64
}

func newHistogram(bounds ...float64) *histogram {
	return &histogram{bounds: bounds, counts: make([]uint64, len(bounds))}
}

func (h *histogram) observe(v float64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, b := range h.bounds {
		if v <= b {
			h.counts[i]++
			break
		}
	}
	h.sum += v
	h.n++
}

// write writes h from a copy taken under its lock: observe is called with
// the manager's lock held, which a slow reader of /metrics must not hold
// up.
func (h *histogram) write(w *bufio.Writer, name string) {
	h.mu.Lock()
	counts, sum, n := slices.Clone(h.counts), h.sum, h.n
	h.mu.Unlock()
	var cum uint64
	for i, b := range h.bounds {
		cum += counts[i]
		fmt.Fprintf(w, "%s_bucket{le=\"%s\"} %d\n", name, strconv.FormatFloat(b, 'g', -1, 64), cum)
	}
	fmt.Fprintf(w, "%s_bucket{le=\"+Inf\"} %d\n%s_sum %s\n%s_count %d\n",
		name, n, name, strconv.FormatFloat(sum, 'g', -1, 64), name, n)
}

// labelValue escapes a Prometheus label value.
var labelValue = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// serveMetrics writes every metric in the Prometheus text exposition format.
func (m *Manager) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	family := func(name, typ, help string) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}

	type row struct {
		id   string
		down bool
		c    serverCounts
	}
	m.mu.Lock()
	rows := make([]row, 0, m.pool.Len())
	for s := range m.pool.All() {
		rows = append(rows, row{s.ID, s.Down, m.stats.of(s.ID)})
	}
	ready := m.ready
	m.mu.Unlock()
	client, _ := m.stats.totals()
	gen := m.stats.generatedTotals()

	family("weldr_build_info", "gauge", "The running weldr's version.")
	fmt.Fprintf(bw, "weldr_build_info{version=\"%s\"} 1\n", labelValue.Replace(Version))

	family("weldr_requests_total", "counter", "Backend answers relayed to clients, by server and status class.")
	for _, r := range rows {
		for i, n := range r.c.responses {
			fmt.Fprintf(bw, "weldr_requests_total{server=\"%s\",class=\"%dxx\"} %d\n", labelValue.Replace(r.id), i+1, n)
		}
	}
	family("weldr_upstream_errors_total", "counter", "Backend failures other than 5xx answers, by server and kind: connect (no connection), timeout (no answer in time), broken (reset, malformed or truncated answer).")
	for _, r := range rows {
		for _, k := range []struct {
			kind string
			n    uint64
		}{{"connect", r.c.connectFailed}, {"timeout", r.c.timedOut}, {"broken", r.c.broken}} {
			fmt.Fprintf(bw, "weldr_upstream_errors_total{server=\"%s\",kind=\"%s\"} %d\n", labelValue.Replace(r.id), k.kind, k.n)
		}
	}
	family("weldr_server_up", "gauge", "1 if the server is up (routed to), 0 if health checks took it out.")
	for _, r := range rows {
		up := 1
		if r.down {
			up = 0
		}
		fmt.Fprintf(bw, "weldr_server_up{server=\"%s\"} %d\n", labelValue.Replace(r.id), up)
	}
	family("weldr_pool_servers", "gauge", "Servers in the pool, up or down.")
	fmt.Fprintf(bw, "weldr_pool_servers %d\n", len(rows))

	family("weldr_client_requests_total", "counter", "Client requests by result: success (got a backend's answer) or failed (got weldr's error or broke off).")
	fmt.Fprintf(bw, "weldr_client_requests_total{result=\"success\"} %d\nweldr_client_requests_total{result=\"failed\"} %d\n", client.Success, client.Failed)
	family("weldr_generated_responses_total", "counter", "Answers weldr made itself, by status.")
	for _, code := range ipc.GeneratedStatuses {
		fmt.Fprintf(bw, "weldr_generated_responses_total{status=\"%d\"} %d\n", code, *gen.Of(code))
	}
	family("weldr_requests_routed_behind_total", "counter", "Requests a worker routed by a pool older than the last change the manager had written to it (and rung its bell for). Stays 0.")
	fmt.Fprintf(bw, "weldr_requests_routed_behind_total %d\n", m.stats.routedBehind())

	family("weldr_health_check_duration_seconds", "histogram", "Time taken by active health checks.")
	m.metrics.checkDuration.write(bw, "weldr_health_check_duration_seconds")

	family("weldr_pool_update_seconds", "histogram", "Time an admin API request waits, after saving the state file, for its change to be in force in every worker: applied, or whole in the worker's pipe with its bell rung, so that the worker's next request reads it before it is routed. Waits that gave up (2 s) or whose request ended are not counted.")
	m.metrics.applyDuration.write(bw, "weldr_pool_update_seconds")
	family("weldr_pool_propagation_seconds", "histogram", "Time from an admin API change of the pool to the last worker applying it, by the workers' clocks, from their acknowledgements. A change some worker has not applied within 2 s is not counted.")
	m.metrics.propagation.write(bw, "weldr_pool_propagation_seconds")
	family("weldr_health_propagation_seconds", "histogram", "Time from a health verdict (a server marked down or up) to the last worker applying it, by the workers' clocks, from their acknowledgements. A verdict some worker has not applied within 2 s is not counted.")
	m.metrics.verdictPropagation.write(bw, "weldr_health_propagation_seconds")

	family("weldr_workers", "gauge", "Worker processes configured.")
	fmt.Fprintf(bw, "weldr_workers %d\n", m.workersCount)
	family("weldr_workers_ready", "gauge", "Worker processes serving.")
	fmt.Fprintf(bw, "weldr_workers_ready %d\n", ready)
	if m.board != nil {
		family("weldr_worker_connections", "gauge", "Client connections open in each worker, by slot. A worker holding more than its share (plus 2, plus 1 in 32 of all) leaves new ones to the others for a moment, while they take them on.")
		for slot := range m.workersCount {
			fmt.Fprintf(bw, "weldr_worker_connections{slot=\"%d\"} %d\n", slot, max(0, m.board.Seat(slot).Open.Load()))
		}
	}
	family("weldr_worker_restarts_total", "counter", "Workers restarted after they died.")
	fmt.Fprintf(bw, "weldr_worker_restarts_total %d\n", m.restarts.Load())
	family("weldr_upgrade_failures_total", "counter", "SIGHUP upgrades whose new generation failed to start; the old one kept serving.")
	fmt.Fprintf(bw, "weldr_upgrade_failures_total %d\n", m.upgradeFailures.Load())
	family("weldr_state_write_failures_total", "counter", "Saves of the state file that failed: the admin changes they held were refused, not made.")
	fmt.Fprintf(bw, "weldr_state_write_failures_total %d\n", m.stateFailures.Load())
}
