// Package ipc is the contract between the weldr manager and its workers: the
// messages they exchange and how those are framed on the unix socketpair that
// joins them.
//
// A frame is a 4-byte big-endian payload length followed by one
// msgpack-encoded Message. Frames larger than MaxFrameSize are a protocol
// error and are never allocated. The package imports neither the manager nor
// the worker, starts no goroutines and holds no policy: it only says what may
// cross the pipe and checks that what arrives is well formed.
package ipc

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Kind says what a Message asks of, or reports to, its receiver.
type Kind uint8

// Message kinds. The manager sends Snapshot first, then pool changes and
// finally Drain; a worker answers the Snapshot with Ready and then sends
// ReportStats periodically.
const (
	// Snapshot (manager → worker) carries the proxy settings and the whole
	// pool. Its pool replaces whatever pool the worker had; its settings
	// count only in the first Snapshot, since a worker's settings are fixed
	// for its life (new settings come with a new generation).
	Snapshot Kind = iota + 1
	// AddServer (manager → worker) adds one server, or updates the settings
	// of the server with the same ID.
	AddServer
	// RemoveServer (manager → worker) removes the server named by ID.
	RemoveServer
	// MarkServerDown (manager → worker) stops routing to the server named by ID.
	MarkServerDown
	// MarkServerActive (manager → worker) routes to the server named by ID again.
	MarkServerActive
	// Drain (manager → worker) asks the worker to stop accepting, finish
	// in-flight requests within DrainTimeout and exit.
	Drain
	// Ready (worker → manager) says the worker applied its Snapshot and is
	// serving.
	Ready
	// ReportStats (worker → manager) carries counter deltas since the last
	// report.
	ReportStats
	// Applied (worker → manager) says the worker routes by the pool as of
	// Version. Workers send it when they have no further change waiting,
	// so one Applied may cover many changes.
	Applied
)

var kindNames = [...]string{
	Snapshot:         "Snapshot",
	AddServer:        "AddServer",
	RemoveServer:     "RemoveServer",
	MarkServerDown:   "MarkServerDown",
	MarkServerActive: "MarkServerActive",
	Drain:            "Drain",
	Ready:            "Ready",
	ReportStats:      "ReportStats",
	Applied:          "Applied",
}

func (k Kind) String() string {
	if k > 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Message is the one type that crosses the pipe. Kind says which of the
// other fields are meaningful; Validate checks that they are present.
type Message struct {
	Kind Kind `msgpack:"k"`
	// Settings is set on Snapshot.
	Settings *Settings `msgpack:"cfg,omitempty"`
	// Servers is the whole pool on Snapshot and exactly one server on
	// AddServer.
	Servers Servers `msgpack:"srv,omitempty"`
	// Version numbers the pool: the manager's pool messages carry the
	// version they bring the pool to, Ready and Applied the version the
	// worker routes by.
	Version uint64 `msgpack:"v,omitempty"`
	// ID names a server ("host:port") on RemoveServer, MarkServerDown and
	// MarkServerActive.
	ID string `msgpack:"id,omitempty"`
	// DrainTimeout bounds a Drain. If zero, the worker stops at once.
	DrainTimeout time.Duration `msgpack:"dt,omitempty"`
	// PID is the worker's process ID on Ready.
	PID int `msgpack:"pid,omitempty"`
	// Bell is set on Ready by a worker that reads its bell on every
	// request (ipc.Bell): a change rung is then in force there.
	Bell bool `msgpack:"bell,omitempty"`
	// Stats is set on ReportStats.
	Stats *Stats `msgpack:"st,omitempty"`
	// At is, on Applied, a time no earlier than when the worker began to
	// route by Version, as Now reads it.
	At int64 `msgpack:"at,omitempty"`
}

// Now reads CLOCK_MONOTONIC in nanoseconds: unlike time.Now's monotonic
// reading, it is the same clock in the manager and in its workers, so a
// time one of them takes can be compared with the other's.
func Now() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// Server is one backend as workers see it.
type Server struct {
	// ID is the server's identity, "host:port".
	ID string `msgpack:"id"`
	// URL is the canonical "scheme://host:port".
	URL string `msgpack:"url"`
	// Weight is used by weighted round robin. If zero, it counts as 1.
	Weight int `msgpack:"w,omitempty"`
	// Down is true when health checks took the server out of rotation.
	Down bool `msgpack:"d,omitempty"`
}

// Settings are the proxy settings a worker needs. Workers never read the
// configuration file; these reach them in the Snapshot.
type Settings struct {
	// Balance is the selection policy: round_robin, weighted_round_robin,
	// least_conn or random_two. If empty, round_robin.
	Balance               string        `msgpack:"bal,omitempty"`
	ConnectTimeout        time.Duration `msgpack:"ct,omitempty"`
	ResponseHeaderTimeout time.Duration `msgpack:"rht,omitempty"`
	ReadHeaderTimeout     time.Duration `msgpack:"rdht,omitempty"`
	IdleTimeout           time.Duration `msgpack:"it,omitempty"`
	MaxHeaderBytes        int           `msgpack:"mhb,omitempty"`
	MaxRequestLine        int           `msgpack:"mrl,omitempty"`
	// MaxConnections bounds a worker's open client connections. If zero,
	// there is no bound.
	MaxConnections int `msgpack:"mc,omitempty"`
	// MaxBodyBytes bounds a request body. If zero, there is no bound.
	MaxBodyBytes int64 `msgpack:"mbb,omitempty"`
	PreserveHost bool  `msgpack:"ph,omitempty"`
	// Procs is the worker's GOMAXPROCS. If zero, the runtime's default.
	Procs int `msgpack:"procs,omitempty"`
	// DrainTimeout bounds the drain when the worker stops without a Drain
	// message (its manager went away, or it got SIGTERM).
	DrainTimeout time.Duration `msgpack:"dt,omitempty"`
	// StatsInterval is how often the worker sends ReportStats. If zero, 1s.
	StatsInterval time.Duration `msgpack:"si,omitempty"`
	LogLevel      string        `msgpack:"ll,omitempty"`
	LogFormat     string        `msgpack:"lf,omitempty"`
	AccessLog     bool          `msgpack:"al,omitempty"`
}

// Stats are counter deltas since a worker's previous report.
type Stats struct {
	// ClientSuccess counts requests that got a backend's response;
	// ClientFailed those that got a proxy-generated error or broke off.
	ClientSuccess uint64 `msgpack:"cs,omitempty"`
	ClientFailed  uint64 `msgpack:"cf,omitempty"`
	// Generated counts the answers weldr made itself, by status: 400, 408,
	// 413, 414 and 431 for requests it refused, 502, 503 (no server up, or
	// too many connections) and 504.
	Generated Generated `msgpack:"gen,omitempty"`
	// Servers holds the per-server deltas that are not zero.
	Servers ServerStatsList `msgpack:"srv,omitempty"`
	// RoutedBehind counts requests routed by a pool older than the last
	// change the manager had rung the worker's bell for: the change was
	// not whole in the pipe, which the manager's ringing rules out.
	RoutedBehind uint64 `msgpack:"behind,omitempty"`
}

// Generated counts weldr's own answers by status.
type Generated struct {
	BadRequest           uint64 `msgpack:"400,omitempty"`
	RequestTimeout       uint64 `msgpack:"408,omitempty"`
	ContentTooLarge      uint64 `msgpack:"413,omitempty"`
	URITooLong           uint64 `msgpack:"414,omitempty"`
	HeaderFieldsTooLarge uint64 `msgpack:"431,omitempty"`
	BadGateway           uint64 `msgpack:"502,omitempty"`
	ServiceUnavailable   uint64 `msgpack:"503,omitempty"`
	GatewayTimeout       uint64 `msgpack:"504,omitempty"`
}

// GeneratedStatuses are the statuses Generated counts.
var GeneratedStatuses = [...]int{400, 408, 413, 414, 431, 502, 503, 504}

// Of returns the count of answers with status code, nil for a status
// weldr does not make itself.
func (g *Generated) Of(code int) *uint64 {
	switch code {
	case 400:
		return &g.BadRequest
	case 408:
		return &g.RequestTimeout
	case 413:
		return &g.ContentTooLarge
	case 414:
		return &g.URITooLong
	case 431:
		return &g.HeaderFieldsTooLarge
	case 502:
		return &g.BadGateway
	case 503:
		return &g.ServiceUnavailable
	case 504:
		return &g.GatewayTimeout
	}
	return nil
}

// ServerStats are one server's counter deltas. Success counts answers below
// 500; Failed counts connect failures, timeouts, resets and 5xx answers.
type ServerStats struct {
	ID      string `msgpack:"id"`
	Success uint64 `msgpack:"ok,omitempty"`
	Failed  uint64 `msgpack:"fail,omitempty"`
	// Responses counts the server's answers by status class, 1xx to 5xx.
	Responses [5]uint64 `msgpack:"r,omitempty"`
	// The errors in Failed that were not 5xx answers, by kind: no
	// connection could be made; no answer in time; the connection broke
	// (reset, or a malformed or truncated answer).
	ConnectFailed uint64 `msgpack:"cfail,omitempty"`
	TimedOut      uint64 `msgpack:"tout,omitempty"`
	Broken        uint64 `msgpack:"brk,omitempty"`
}

// MaxServers bounds the servers in one Snapshot.
const MaxServers = 1 << 20

// Validate reports whether m has the fields its Kind requires.
func (m *Message) Validate() error {
	switch m.Kind {
	case Snapshot:
		if m.Settings == nil {
			return errors.New("snapshot without settings")
		}
		return m.Servers.validate()
	case AddServer:
		if len(m.Servers) != 1 {
			return fmt.Errorf("AddServer with %d servers, want 1", len(m.Servers))
		}
		return m.Servers.validate()
	case RemoveServer, MarkServerDown, MarkServerActive:
		if m.ID == "" {
			return fmt.Errorf("%s without a server ID", m.Kind)
		}
	case Drain:
		if m.DrainTimeout < 0 {
			return errors.New("drain with a negative timeout")
		}
	case Ready:
	case Applied:
		if m.At < 0 {
			return fmt.Errorf("%s with a negative time", m.Kind)
		}
	case ReportStats:
		if m.Stats == nil {
			return errors.New("ReportStats without stats")
		}
		for i, s := range m.Stats.Servers {
			if s.ID == "" {
				return fmt.Errorf("ReportStats: server %d without an ID", i)
			}
		}
	default:
		return fmt.Errorf("unknown message kind %d", uint8(m.Kind))
	}
	return nil
}

func (ss Servers) validate() error {
	for i, s := range ss {
		if s.ID == "" || s.URL == "" {
			return fmt.Errorf("server %d without an ID or URL", i)
		}
		if s.Weight < 0 {
			return fmt.Errorf("server %s with negative weight", s.ID)
		}
	}
	return nil
}
