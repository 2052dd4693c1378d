package manager

import (
	"encoding"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"golang.org/x/sys/unix"
)

// balancePolicies lists the valid values of proxy.balance.
var balancePolicies = []string{"round_robin", "weighted_round_robin", "least_conn", "random_two"}

// Config is weldr's configuration: the TOML file, over Default, with
// WELDR_<SECTION>_<KEY> environment variables over that.
type Config struct {
	Proxy     ProxyConfig     `toml:"proxy"`
	Admin     AdminConfig     `toml:"admin"`
	Health    HealthCheck     `toml:"health"`
	State     StateConfig     `toml:"state"`
	Lifecycle LifecycleConfig `toml:"lifecycle"`
	Log       LogConfig       `toml:"log"`

	// Servers are static backends, always in the pool. They have no
	// environment overrides.
	Servers []ServerConfig `toml:"servers"`
}

// ProxyConfig is the [proxy] section: the client-facing listener and how
// requests reach backends. Default gives every field its value; a zero value
// is not a usable default.
type ProxyConfig struct {
	// Listen is the host:port clients connect to. Default "0.0.0.0:8080".
	Listen string `toml:"listen"`
	// Workers is the number of worker processes, 0..1024. If zero, one per CPU
	// the process may use (see Config.WorkerCount).
	Workers int `toml:"workers"`
	// Balance is the load balancing policy: round_robin,
	// weighted_round_robin, least_conn or random_two. Default "round_robin".
	Balance string `toml:"balance"`
	// ConnectTimeout bounds dialing a backend. Default 1s.
	ConnectTimeout Duration `toml:"connect_timeout"`
	// ResponseHeaderTimeout bounds the wait for a backend's response headers
	// once the request is written. Default 30s.
	ResponseHeaderTimeout Duration `toml:"response_header_timeout"`
	// ReadHeaderTimeout bounds reading a client's request headers. Default 10s.
	ReadHeaderTimeout Duration `toml:"read_header_timeout"`
	// IdleTimeout is how long a client keep-alive connection may wait for its
	// next request. Default 60s.
	IdleTimeout Duration `toml:"idle_timeout"`
	// MaxHeaderBytes bounds a client's request line and headers,
	// 1024..16777216. Default 65536.
	MaxHeaderBytes int `toml:"max_header_bytes"`
	// PreserveHost passes the client's Host header to the backend; if false
	// the backend's host:port is sent. Default true.
	PreserveHost bool `toml:"preserve_host"`
	// MaxRequestLine bounds a client's request line (method, target and
	// version), 256..1048576 bytes; a longer one is answered 414. Default
	// 8192.
	MaxRequestLine int `toml:"max_request_line"`
	// MaxConnections bounds the client connections one worker holds open,
	// 0..10000000; the ones beyond it are answered 503 and closed. If zero,
	// there is no limit. Default 10000.
	MaxConnections int `toml:"max_connections"`
	// MaxBodyBytes bounds a client's request body; a larger one is answered
	// 413. If zero, there is no limit. Default 0.
	MaxBodyBytes int64 `toml:"max_body_bytes"`
	// NotsentLowat is TCP_NOTSENT_LOWAT on client connections: how many
	// bytes of an answer may wait unsent in a client socket before weldr
	// stops writing to it. If zero, the kernel's setting
	// (net.ipv4.tcp_notsent_lowat) applies; else 1024..16777216.
	// Default 16384.
	NotsentLowat int `toml:"notsent_lowat"`
}

// AdminConfig is the [admin] section: the management API.
type AdminConfig struct {
	// Listen is the admin API's host:port. Default "127.0.0.1:8687".
	Listen string `toml:"listen"`
	// Token, if set, is the bearer token every admin request must carry.
	// If empty, the API has no authentication, which Validate allows only on
	// a loopback Listen address or with Insecure.
	Token string `toml:"token"`
	// Insecure accepts an admin API without a token on an address that is
	// not loopback. Default false.
	Insecure bool `toml:"insecure"`
}

// HealthCheck is how a server is actively checked. It is both the [health]
// section, the defaults for every server, and a server's override in the
// admin API's POST payload ("health_check": {...}), where a zero field takes
// the default (see Merge).
type HealthCheck struct {
	// Path is requested with GET on the server; it must start with "/".
	// Default "/".
	Path string `toml:"path" json:"path,omitempty"`
	// Interval is the time between checks, at least 10ms. Default 10s.
	Interval Duration `toml:"interval" json:"interval,omitempty"`
	// Timeout bounds one check. Default 2s.
	Timeout Duration `toml:"timeout" json:"timeout,omitempty"`
	// Fall is how many consecutive failed checks mark a server down,
	// 1..1000. Default 3.
	Fall int `toml:"fall" json:"fall,omitempty"`
	// Rise is how many consecutive passed checks mark a down server up,
	// 1..1000. Default 2.
	Rise int `toml:"rise" json:"rise,omitempty"`
}

// StateConfig is the [state] section: where the pool is saved.
type StateConfig struct {
	// File is where the pool is saved on every change and reloaded from at
	// start. Default "/var/lib/weldr/state.json". If empty, the pool is kept
	// in memory only.
	File string `toml:"file"`
}

// LifecycleConfig is the [lifecycle] section: start and stop.
type LifecycleConfig struct {
	// PIDFile, if set, is written with the manager's PID once it is ready.
	// If empty, no PID file is written.
	PIDFile string `toml:"pid_file"`
	// DrainTimeout bounds how long in-flight requests may finish on shutdown
	// or upgrade. If zero, they are not waited for. Default 30s.
	DrainTimeout Duration `toml:"drain_timeout"`
}

// LogConfig is the [log] section.
type LogConfig struct {
	// Level is the least severe level logged: debug, info, warn or error.
	// Default "info".
	Level string `toml:"level"`
	// Format is text or json. Default "text".
	Format string `toml:"format"`
	// AccessLog logs one line per proxied request. Default false.
	AccessLog bool `toml:"access_log"`
}

// ServerConfig is one [[servers]] entry: a static backend.
type ServerConfig struct {
	// URL is the backend, as accepted by ParseServerURL.
	URL string `toml:"url"`
	// Weight is the server's share under weighted_round_robin, 1..1000.
	// If zero, 1.
	Weight int `toml:"weight"`
}

// Default returns a complete configuration with every default and no servers.
func Default() *Config {
	return &Config{
		Proxy: ProxyConfig{
			Listen:                "0.0.0.0:8080",
			Workers:               0,
			Balance:               "round_robin",
			ConnectTimeout:        Duration(1 * time.Second),
			ResponseHeaderTimeout: Duration(30 * time.Second),
			ReadHeaderTimeout:     Duration(10 * time.Second),
			IdleTimeout:           Duration(60 * time.Second),
			MaxHeaderBytes:        64 << 10,
			PreserveHost:          true,
			MaxRequestLine:        8 << 10,
			MaxConnections:        10000,
			MaxBodyBytes:          0,
			NotsentLowat:          16 << 10,
		},
		Admin: AdminConfig{
			Listen: "127.0.0.1:8687",
		},
		Health: HealthCheck{
			Path:     "/",
			Interval: Duration(10 * time.Second),
			Timeout:  Duration(2 * time.Second),
			Fall:     3,
			Rise:     2,
		},
		State: StateConfig{
			File: "/var/lib/weldr/state.json",
		},
		Lifecycle: LifecycleConfig{
			DrainTimeout: Duration(30 * time.Second),
		},
		Log: LogConfig{
			Level:  "info",
			Format: "text",
		},
	}
}

// Load reads the TOML file at path over Default, applies WELDR_<SECTION>_<KEY>
// environment overrides, and validates the result.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Decode(data, os.LookupEnv)
}

// Decode is Load on the TOML in data, with environment variables looked up by
// lookupEnv; if lookupEnv is nil, the environment is not consulted. Unknown
// keys, bad environment values and invalid settings are reported together.
func Decode(data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	c := Default()
	md, err := toml.Decode(string(data), c)
	if err != nil {
		return nil, fmt.Errorf("parsing config: %w", err)
	}
	var errs []error
	for _, k := range unknownKeys(md.Undecoded()) {
		errs = append(errs, fmt.Errorf("unknown key %q", k))
	}
	if lookupEnv != nil {
		errs = append(errs, c.applyEnv(lookupEnv))
	}
	for i := range c.Servers {
		if c.Servers[i].Weight == 0 {
			c.Servers[i].Weight = 1
		}
	}
	errs = append(errs, c.Validate())
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// unknownKeys returns the keys toml left undecoded, once each, without the
// keys inside an unknown table: "foo" rather than "foo" and "foo.bar".
func unknownKeys(undecoded []toml.Key) []string {
	unknown := make(map[string]bool)
	for _, k := range undecoded {
		unknown[k.String()] = true
	}
	var keys []string
	reported := make(map[string]bool)
	for _, k := range undecoded {
		s := k.String()
		inUnknown := false
		for i := 1; i < len(k); i++ {
			if unknown[k[:i].String()] {
				inUnknown = true
				break
			}
		}
		if !inUnknown && !reported[s] {
			reported[s] = true
			keys = append(keys, s)
		}
	}
	return keys
}

// envVar is one environment override.
type envVar struct {
	name  string        // WELDR_PROXY_LISTEN
	key   string        // proxy.listen
	field reflect.Value // the Config field it sets
}

// envVars returns c's environment overrides: one for every key of every
// section, named WELDR_<SECTION>_<KEY> after the TOML tags, so that a new key
// gets its variable without further code.
func (c *Config) envVars() []envVar {
	var vars []envVar
	cv := reflect.ValueOf(c).Elem()
	for i := range cv.NumField() {
		section, sv := tomlName(cv.Type().Field(i)), cv.Field(i)
		if section == "" || sv.Kind() != reflect.Struct {
			continue // servers is a list: it has no variables
		}
		for j := range sv.NumField() {
			key := tomlName(sv.Type().Field(j))
			if key == "" {
				continue
			}
			vars = append(vars, envVar{
				name:  strings.ToUpper("WELDR_" + section + "_" + key),
				key:   section + "." + key,
				field: sv.Field(j),
			})
		}
	}
	return vars
}

// tomlName returns the key in f's toml tag, or "" if it has none.
func tomlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if name == "-" {
		return ""
	}
	return name
}

// applyEnv sets every key whose variable lookupEnv finds. A variable set to
// the empty string is an override too: WELDR_STATE_FILE= disables the state
// file.
func (c *Config) applyEnv(lookupEnv func(string) (string, bool)) error {
	var errs []error
	for _, v := range c.envVars() {
		s, ok := lookupEnv(v.name)
		if !ok {
			continue
		}
		if err := setField(v.field, s); err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): %w", v.name, v.key, err))
		}
	}
	return errors.Join(errs...)
}

// setField parses s by the type of field and stores it there.
func setField(field reflect.Value, s string) error {
	if u, ok := field.Addr().Interface().(encoding.TextUnmarshaler); ok {
		return u.UnmarshalText([]byte(s))
	}
	switch field.Kind() {
	case reflect.String:
		field.SetString(s)
	case reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("invalid integer %s", quoteShort(s))
		}
		field.SetInt(int64(n))
	case reflect.Int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("invalid integer %s", quoteShort(s))
		}
		field.SetInt(n)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("invalid boolean %s", quoteShort(s))
		}
		field.SetBool(b)
	default:
		return fmt.Errorf("no environment override for type %s", field.Type())
	}
	return nil
}

// Validate reports every invalid value in c at once, each error naming its
// TOML key. A server weight of zero is valid and means 1.
func (c *Config) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}

	p := c.Proxy
	if err := checkListen(p.Listen); err != nil {
		add("proxy.listen", "%w", err)
	}
	if p.Workers < 0 || p.Workers > 1024 {
		add("proxy.workers", "must be between 0 and 1024")
	}
	if !slices.Contains(balancePolicies, p.Balance) {
		add("proxy.balance", "unknown policy %s, want one of %s", quoteShort(p.Balance), strings.Join(balancePolicies, ", "))
	}
	for _, t := range []struct {
		key string
		d   Duration
	}{
		{"proxy.connect_timeout", p.ConnectTimeout},
		{"proxy.response_header_timeout", p.ResponseHeaderTimeout},
		{"proxy.read_header_timeout", p.ReadHeaderTimeout},
		{"proxy.idle_timeout", p.IdleTimeout},
	} {
		if t.d <= 0 {
			add(t.key, "must be positive")
		}
	}
	if p.MaxHeaderBytes < 1<<10 || p.MaxHeaderBytes > 16<<20 {
		add("proxy.max_header_bytes", "must be between 1024 and 16777216")
	}
	if p.MaxRequestLine < 256 || p.MaxRequestLine > 1<<20 {
		add("proxy.max_request_line", "must be between 256 and 1048576")
	}
	if p.MaxConnections < 0 || p.MaxConnections > 10_000_000 {
		add("proxy.max_connections", "must be between 0 and 10000000")
	}
	if p.MaxBodyBytes < 0 {
		add("proxy.max_body_bytes", "must not be negative")
	}
	if p.NotsentLowat != 0 && (p.NotsentLowat < 1<<10 || p.NotsentLowat > 16<<20) {
		add("proxy.notsent_lowat", "must be 0 or between 1024 and 16777216")
	}

	a := c.Admin
	if err := checkListen(a.Listen); err != nil {
		add("admin.listen", "%w", err)
	} else if a.Token == "" && !a.Insecure && !isLoopback(a.Listen) {
		// Anyone who reaches the admin API can route traffic anywhere, so
		// it is not left open by a mistyped listen address.
		add("admin.token", "required when admin.listen (%s) is not a loopback address; "+
			"set one (or WELDR_ADMIN_TOKEN), or set admin.insecure = true to accept an unauthenticated admin API", a.Listen)
	}
	if strings.ContainsFunc(a.Token, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		// A bearer token has no spaces (RFC 6750, section 2.1), and one
		// around it could not even be sent: HTTP trims them from a header
		// value, and forbids control characters in it.
		add("admin.token", "must not contain spaces or control characters")
	}

	errs = append(errs, c.Health.Validate("health"))

	if c.Lifecycle.DrainTimeout < 0 {
		add("lifecycle.drain_timeout", "must not be negative")
	}

	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "unknown level %s, want one of debug, info, warn, error", quoteShort(c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		add("log.format", "unknown format %s, want text or json", quoteShort(c.Log.Format))
	}

	ids := make(map[string]int) // server id -> index of its first entry
	poolBytes := 0
	for i, s := range c.Servers {
		key := fmt.Sprintf("servers[%d]", i)
		if id, canonical, err := ParseServerURL(s.URL); err != nil {
			add(key+".url", "%w", err)
		} else if first, dup := ids[id]; dup {
			add(key+".url", "duplicate of servers[%d]", first)
		} else {
			ids[id] = i
			poolBytes += encodedSize(&Server{ID: id, URL: canonical})
		}
		if s.Weight < 0 || s.Weight > 1000 {
			add(key+".weight", "must be between 1 and 1000")
		}
	}
	if poolBytes > maxPoolBytes {
		// Past this, no worker could be given the pool (see maxPoolBytes).
		add("servers", "%d servers take up to %d bytes in the message that gives a worker the pool, more than the %d it may take",
			len(c.Servers), poolBytes, maxPoolBytes)
	}
	return errors.Join(errs...)
}

// checkListen checks a listen address: host:port with a numeric port
// 0..65535, where the host may be empty, an IP address or a name.
func checkListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s is not host:port", quoteShort(addr))
	}
	if n, err := strconv.Atoi(port); err != nil || strings.Trim(port, "0123456789") != "" || n > 65535 {
		return fmt.Errorf("port %s must be a number between 0 and 65535", quoteShort(port))
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if strings.HasPrefix(addr, "[") {
		return fmt.Errorf("host %s in brackets must be an IPv6 address", quoteShort(host))
	}
	if !validDNSName(strings.ToLower(host)) {
		return fmt.Errorf("host %s must be an IP address or a name", quoteShort(host))
	}
	return nil
}

// isLoopback reports whether the listen address addr, which checkListen
// accepted, is on loopback only: its host is an IP address in 127.0.0.0/8 or
// ::1, or the name localhost. An empty host listens on every address.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// Validate reports every invalid field of a complete health check (one that
// has been merged with its defaults), each error naming its key after prefix:
// "health.interval: must be at least 10ms".
func (h HealthCheck) Validate(prefix string) error {
	key := func(name string) string {
		if prefix == "" {
			return name
		}
		return prefix + "." + name
	}
	var errs []error
	if !strings.HasPrefix(h.Path, "/") {
		errs = append(errs, fmt.Errorf(`%s: must start with "/"`, key("path")))
	} else if strings.ContainsFunc(h.Path, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		errs = append(errs, fmt.Errorf("%s: must not contain spaces or control characters", key("path")))
	}
	if h.Interval < Duration(10*time.Millisecond) {
		errs = append(errs, fmt.Errorf("%s: must be at least 10ms", key("interval")))
	}
	if h.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("%s: must be positive", key("timeout")))
	}
	if h.Fall < 1 || h.Fall > 1000 {
		errs = append(errs, fmt.Errorf("%s: must be between 1 and 1000", key("fall")))
	}
	if h.Rise < 1 || h.Rise > 1000 {
		errs = append(errs, fmt.Errorf("%s: must be between 1 and 1000", key("rise")))
	}
	return errors.Join(errs...)
}

// Merge returns h with every zero field taken from defaults.
func (h HealthCheck) Merge(defaults HealthCheck) HealthCheck {
	if h.Path == "" {
		h.Path = defaults.Path
	}
	if h.Interval == 0 {
		h.Interval = defaults.Interval
	}
	if h.Timeout == 0 {
		h.Timeout = defaults.Timeout
	}
	if h.Fall == 0 {
		h.Fall = defaults.Fall
	}
	if h.Rise == 0 {
		h.Rise = defaults.Rise
	}
	return h
}

// WorkerCount returns the number of worker processes to run: Proxy.Workers,
// or if that is zero, the number of CPUs this process may run on.
func (c *Config) WorkerCount() int {
	if c.Proxy.Workers > 0 {
		return c.Proxy.Workers
	}
	return affinityCPUs()
}

// affinityCPUs returns the number of CPUs in the process's affinity mask,
// which, unlike the machine's CPU count, honours taskset and systemd's
// CPUAffinity=; runtime.NumCPU reads it only once, at start.
func affinityCPUs() int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err == nil && set.Count() > 0 {
		return set.Count()
	}
	return runtime.NumCPU()
}
