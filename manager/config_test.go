package manager

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// writeConfig writes data to a config file in a fresh temporary directory and
// returns its path. It also unsets every WELDR_ variable for the test, so that
// Load reads only the file.
func writeConfig(t *testing.T, data string) string {
	t.Helper()
	for _, v := range Default().envVars() {
		t.Setenv(v.name, "") // restores the variable after the test
		os.Unsetenv(v.name)
	}
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// envMap returns a lookupEnv over m.
func envMap(m map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := m[name]
		return v, ok
	}
}

// joined returns the errors that errors.Join combined into err.
func joined(err error) []error {
	var out []error
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		out = append(out, err)
	}
	walk(err)
	return out
}

func TestConfigDefaultValidates(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Errorf("Default().Validate() = %v, want nil", err)
	}
}

func TestConfigDefaultIsFresh(t *testing.T) {
	a := Default()
	a.Proxy.Listen = ":1"
	a.Servers = append(a.Servers, ServerConfig{URL: "http://h"})
	if b := Default(); b.Proxy.Listen == ":1" || len(b.Servers) != 0 {
		t.Errorf("Default() = %+v after changing an earlier result, want the defaults", b)
	}
}

func TestConfigExampleFile(t *testing.T) {
	data, err := os.ReadFile("../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data, nil)
	if err != nil {
		t.Fatalf("Decode(config.example.toml) error = %v", err)
	}
	if want := Default(); !reflect.DeepEqual(got, want) {
		t.Errorf("Decode(config.example.toml) = %+v, want Default() = %+v", got, want)
	}

	// Every key and its variable are documented, and the file sets every
	// key, so a key missing from it would show up here.
	text := string(data)
	for _, v := range Default().envVars() {
		if !strings.Contains(text, v.name) {
			t.Errorf("config.example.toml does not mention %s", v.name)
		}
	}
	var raw map[string]map[string]any
	if _, err := toml.Decode(text, &raw); err != nil {
		t.Fatal(err)
	}
	for _, v := range Default().envVars() {
		section, key, _ := strings.Cut(v.key, ".")
		if _, ok := raw[section][key]; !ok {
			t.Errorf("config.example.toml does not set %s", v.key)
		}
	}

	// The [[servers]] example, uncommented, is valid.
	i := strings.Index(text, "# [[servers]]")
	if i < 0 {
		t.Fatal("config.example.toml has no commented-out [[servers]] example")
	}
	example := strings.ReplaceAll(text[i:], "# ", "")
	c, err := Decode([]byte(example), nil)
	if err != nil {
		t.Fatalf("Decode(servers example %q) error = %v", example, err)
	}
	if len(c.Servers) != 1 {
		t.Errorf("Decode(servers example) Servers = %+v, want one server", c.Servers)
	}
}

func TestConfigEnvNames(t *testing.T) {
	vars := Default().envVars()
	seen := make(map[string]bool)
	for _, v := range vars {
		if seen[v.name] {
			t.Errorf("envVars() has %s twice", v.name)
		}
		seen[v.name] = true
	}
	for _, name := range []string{
		"WELDR_PROXY_LISTEN", "WELDR_PROXY_CONNECT_TIMEOUT", "WELDR_ADMIN_TOKEN",
		"WELDR_LIFECYCLE_PID_FILE", "WELDR_LOG_ACCESS_LOG", "WELDR_HEALTH_INTERVAL",
		"WELDR_STATE_FILE", "WELDR_PROXY_MAX_REQUEST_LINE", "WELDR_PROXY_MAX_CONNECTIONS",
		"WELDR_PROXY_MAX_BODY_BYTES", "WELDR_ADMIN_INSECURE",
	} {
		if !seen[name] {
			t.Errorf("envVars() has no %s", name)
		}
	}
	// Every key of every section has a variable; servers has none.
	if got, want := len(vars), 13+3+5+1+2+3; got != want {
		t.Errorf("len(envVars()) = %d, want %d", got, want)
	}
}

func TestConfigLoad(t *testing.T) {
	path := writeConfig(t, `
[proxy]
listen = "127.0.0.1:9090"
workers = 4
balance = "least_conn"
connect_timeout = "250ms"
preserve_host = false
max_request_line = 4096
max_connections = 50000
max_body_bytes = 1048576
notsent_lowat = 0

[admin]
listen = "[::]:8687"
insecure = true

[health]
path = "/healthz"
interval = "1m30s"

[state]
file = ""

[[servers]]
url = "http://10.0.0.5:8080"

[[servers]]
url = "https://[::1]"
weight = 5
`)
	got, err := Load(path)
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	want := Default()
	want.Proxy.Listen = "127.0.0.1:9090"
	want.Proxy.Workers = 4
	want.Proxy.Balance = "least_conn"
	want.Proxy.ConnectTimeout = Duration(250 * time.Millisecond)
	want.Proxy.PreserveHost = false
	want.Proxy.MaxRequestLine = 4096
	want.Proxy.MaxConnections = 50000
	want.Proxy.MaxBodyBytes = 1 << 20
	want.Proxy.NotsentLowat = 0
	want.Admin.Listen = "[::]:8687"
	want.Admin.Insecure = true
	want.Health.Path = "/healthz"
	want.Health.Interval = Duration(90 * time.Second)
	want.State.File = ""
	want.Servers = []ServerConfig{
		{URL: "http://10.0.0.5:8080", Weight: 1},
		{URL: "https://[::1]", Weight: 5},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load() = %+v, want %+v", got, want)
	}
}

func TestConfigLoadEnv(t *testing.T) {
	path := writeConfig(t, "[proxy]\nworkers = 8\n")
	t.Setenv("WELDR_ADMIN_TOKEN", "s3cret")
	t.Setenv("WELDR_PROXY_WORKERS", "2")
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	if c.Admin.Token != "s3cret" || c.Proxy.Workers != 2 {
		t.Errorf("Load() admin.token, proxy.workers = %q, %d, want %q, %d", c.Admin.Token, c.Proxy.Workers, "s3cret", 2)
	}
}

func TestConfigLoadMissingFile(t *testing.T) {
	path := filepath.Join(filepath.Dir(writeConfig(t, "")), "missing.toml")
	_, err := Load(path)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load() = %v, want an error wrapping fs.ErrNotExist", err)
	}
	if want := "reading config: open " + path + ": no such file or directory"; err.Error() != want {
		t.Errorf("Load() = %q, want %q", err, want)
	}
}

func TestConfigLoadEmptyFile(t *testing.T) {
	c, err := Load(writeConfig(t, ""))
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	if want := Default(); !reflect.DeepEqual(c, want) {
		t.Errorf("Load() = %+v, want %+v", c, want)
	}
}

func TestConfigUnknownKey(t *testing.T) {
	tests := []struct {
		name    string
		toml    string
		want    []string
		notWant string
	}{
		{"misspelt key", "[proxy]\nlistn = \":80\"\n", []string{`unknown key "proxy.listn"`}, ""},
		{"top-level key", "listen = \":80\"\n", []string{`unknown key "listen"`}, ""},
		{"unknown section", "[foo]\nbar = 1\n[foo.baz]\nx = 1\n", []string{`unknown key "foo"`}, "foo.bar"},
		{"server key", "[[servers]]\nurl = \"http://a\"\nweigth = 2\n[[servers]]\nurl = \"http://b\"\nweigth = 3\n",
			[]string{`unknown key "servers.weigth"`}, ""},
		{"two keys", "[log]\nlevl = \"x\"\n[admin]\ntokn = \"y\"\n",
			[]string{`unknown key "log.levl"`, `unknown key "admin.tokn"`}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, tc.toml))
			if err == nil {
				t.Fatalf("Load() = nil error, want %q", tc.want)
			}
			errs := joined(err)
			if len(errs) != len(tc.want) {
				t.Errorf("Load() = %q, want %d errors", err, len(tc.want))
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Load() = %q, want it to contain %q", err, w)
				}
			}
			if tc.notWant != "" && strings.Contains(err.Error(), tc.notWant) {
				t.Errorf("Load() = %q, want it not to contain %q", err, tc.notWant)
			}
		})
	}
}

func TestConfigWrongType(t *testing.T) {
	tests := []struct {
		name string
		toml string
		want []string
	}{
		{"string for integer", "[proxy]\nworkers = \"x\"\n", []string{"proxy.workers", "string", "integer"}},
		{"float for integer", "[proxy]\nworkers = 1.5\n", []string{"proxy.workers"}},
		{"integer too large", "[proxy]\nworkers = 99999999999999999999\n", []string{"proxy.workers", "out of range"}},
		{"integer for string", "[proxy]\nlisten = 80\n", []string{"proxy.listen"}},
		{"string for bool", "[proxy]\npreserve_host = \"yes\"\n", []string{"proxy.preserve_host"}},
		{"bad duration", "[health]\ninterval = \"soon\"\n", []string{"health.interval", `invalid duration "soon"`}},
		{"integer for duration", "[health]\ninterval = 10\n", []string{"health.interval", "invalid duration"}},
		{"section not a table", "proxy = 1\n", []string{"proxy"}},
		{"servers not an array", "servers = \"http://a\"\n", []string{"servers"}},
		{"syntax error", "[proxy\n", []string{"parsing config", "to end table name"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, tc.toml))
			if err == nil {
				t.Fatalf("Load() = nil error, want one containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Load() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestConfigInvalidValue(t *testing.T) {
	tests := []struct {
		name string
		toml string
		want string
	}{
		{"listen no port", "[proxy]\nlisten = \"0.0.0.0\"\n", "proxy.listen: "},
		{"listen bad port", "[proxy]\nlisten = \"0.0.0.0:http\"\n", "proxy.listen: "},
		{"listen port too big", "[proxy]\nlisten = \":65536\"\n", "proxy.listen: "},
		{"listen bad host", "[proxy]\nlisten = \"a b:80\"\n", "proxy.listen: "},
		{"listen bracketed name", "[proxy]\nlisten = \"[localhost]:80\"\n", "proxy.listen: "},
		{"workers negative", "[proxy]\nworkers = -1\n", "proxy.workers: must be between 0 and 1024"},
		{"workers too many", "[proxy]\nworkers = 1025\n", "proxy.workers: must be between 0 and 1024"},
		{"balance", "[proxy]\nbalance = \"fastest\"\n", `proxy.balance: unknown policy "fastest"`},
		{"connect_timeout zero", "[proxy]\nconnect_timeout = \"0s\"\n", "proxy.connect_timeout: must be positive"},
		{"response_header_timeout negative", "[proxy]\nresponse_header_timeout = \"-1s\"\n", "proxy.response_header_timeout: must be positive"},
		{"read_header_timeout zero", "[proxy]\nread_header_timeout = \"0s\"\n", "proxy.read_header_timeout: must be positive"},
		{"idle_timeout zero", "[proxy]\nidle_timeout = \"0s\"\n", "proxy.idle_timeout: must be positive"},
		{"max_header_bytes small", "[proxy]\nmax_header_bytes = 1023\n", "proxy.max_header_bytes: must be between 1024 and 16777216"},
		{"max_header_bytes big", "[proxy]\nmax_header_bytes = 16777217\n", "proxy.max_header_bytes: must be between 1024 and 16777216"},
		{"max_request_line small", "[proxy]\nmax_request_line = 255\n", "proxy.max_request_line: must be between 256 and 1048576"},
		{"max_request_line big", "[proxy]\nmax_request_line = 1048577\n", "proxy.max_request_line: must be between 256 and 1048576"},
		{"max_connections negative", "[proxy]\nmax_connections = -1\n", "proxy.max_connections: must be between 0 and 10000000"},
		{"max_connections big", "[proxy]\nmax_connections = 10000001\n", "proxy.max_connections: must be between 0 and 10000000"},
		{"max_body_bytes negative", "[proxy]\nmax_body_bytes = -1\n", "proxy.max_body_bytes: must not be negative"},
		{"max_body_bytes string", "[proxy]\nmax_body_bytes = \"1MB\"\n", "max_body_bytes"},
		{"notsent_lowat small", "[proxy]\nnotsent_lowat = 1023\n", "proxy.notsent_lowat: must be 0 or between 1024 and 16777216"},
		{"notsent_lowat big", "[proxy]\nnotsent_lowat = 16777217\n", "proxy.notsent_lowat: must be 0 or between 1024 and 16777216"},
		{"notsent_lowat negative", "[proxy]\nnotsent_lowat = -1\n", "proxy.notsent_lowat: must be 0 or between 1024 and 16777216"},
		{"insecure string", "[admin]\ninsecure = \"yes\"\n", "insecure"},
		{"admin token space", "[admin]\ntoken = \"s3cret\\n\"\n", "admin.token: must not contain spaces or control characters"},
		{"admin open", "[admin]\nlisten = \"0.0.0.0:8687\"\n", "admin.token: required when admin.listen (0.0.0.0:8687) is not a loopback address; " +
			"set one (or WELDR_ADMIN_TOKEN), or set admin.insecure = true to accept an unauthenticated admin API"},
		{"admin listen", "[admin]\nlisten = \"localhost\"\n", "admin.listen: "},
		{"health path", "[health]\npath = \"healthz\"\n", `health.path: must start with "/"`},
		{"health path space", "[health]\npath = \"/a b\"\n", "health.path: must not contain spaces"},
		{"health interval", "[health]\ninterval = \"9ms\"\n", "health.interval: must be at least 10ms"},
		{"health timeout", "[health]\ntimeout = \"0s\"\n", "health.timeout: must be positive"},
		{"health fall zero", "[health]\nfall = 0\n", "health.fall: must be between 1 and 1000"},
		{"health rise big", "[health]\nrise = 1001\n", "health.rise: must be between 1 and 1000"},
		{"drain_timeout", "[lifecycle]\ndrain_timeout = \"-1s\"\n", "lifecycle.drain_timeout: must not be negative"},
		{"log level", "[log]\nlevel = \"verbose\"\n", `log.level: unknown level "verbose"`},
		{"log format", "[log]\nformat = \"xml\"\n", `log.format: unknown format "xml"`},
		{"server url", "[[servers]]\nurl = \"http://a\"\n[[servers]]\nurl = \"http://b\"\n[[servers]]\nurl = \"ftp://c\"\n",
			"servers[2].url: scheme must be http or https"},
		{"server url missing", "[[servers]]\nweight = 2\n", "servers[0].url: must not be empty"},
		{"server weight", "[[servers]]\nurl = \"http://a\"\nweight = 1001\n", "servers[0].weight: must be between 1 and 1000"},
		{"server weight negative", "[[servers]]\nurl = \"http://a\"\nweight = -1\n", "servers[0].weight: must be between 1 and 1000"},
		{"duplicate server", "[[servers]]\nurl = \"http://a\"\n[[servers]]\nurl = \"http://b:81\"\n" +
			"[[servers]]\nurl = \"http://c\"\n[[servers]]\nurl = \"HTTP://B:81/\"\n", "servers[3].url: duplicate of servers[1]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, tc.toml))
			if err == nil {
				t.Fatalf("Load() = nil error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load() = %q, want it to contain %q", err, tc.want)
			}
			if errs := joined(err); len(errs) != 1 {
				t.Errorf("Load() = %q, want exactly one error", err)
			}
		})
	}
}

func TestConfigValidateReportsEveryError(t *testing.T) {
	path := writeConfig(t, `
[proxy]
listen = "nowhere"
workers = 5000
balance = "fastest"
connect_timeout = "0s"

[health]
interval = "1ms"
fall = 0

[log]
level = "loud"
nonsense = true

[[servers]]
url = "http://user@h"
weight = 2000
`)
	_, err := Load(path)
	if err == nil {
		t.Fatal("Load() = nil error, want many")
	}
	want := []string{
		"proxy.listen: ", "proxy.workers: ", "proxy.balance: ", "proxy.connect_timeout: ",
		"health.interval: ", "health.fall: ", "log.level: ", `unknown key "log.nonsense"`,
		"servers[0].url: ", "servers[0].weight: ",
	}
	errs := joined(err)
	if len(errs) != len(want) {
		t.Errorf("Load() = %d errors:\n%v\nwant %d", len(errs), err, len(want))
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Load() = %q, want it to contain %q", err, w)
		}
	}
}

func TestConfigEnv(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want func(c *Config)
	}{
		{"string", map[string]string{"WELDR_PROXY_LISTEN": "127.0.0.1:1"}, func(c *Config) { c.Proxy.Listen = "127.0.0.1:1" }},
		{"empty string", map[string]string{"WELDR_STATE_FILE": ""}, func(c *Config) { c.State.File = "" }},
		{"int", map[string]string{"WELDR_PROXY_WORKERS": "3"}, func(c *Config) { c.Proxy.Workers = 3 }},
		{"bool", map[string]string{"WELDR_LOG_ACCESS_LOG": "true"}, func(c *Config) { c.Log.AccessLog = true }},
		{"bool false", map[string]string{"WELDR_PROXY_PRESERVE_HOST": "0"}, func(c *Config) { c.Proxy.PreserveHost = false }},
		{"duration", map[string]string{"WELDR_PROXY_CONNECT_TIMEOUT": "1m30s"}, func(c *Config) { c.Proxy.ConnectTimeout = Duration(90 * time.Second) }},
		{"limits", map[string]string{
			"WELDR_PROXY_MAX_REQUEST_LINE": "16384",
			"WELDR_PROXY_MAX_CONNECTIONS":  "0",
			"WELDR_PROXY_MAX_BODY_BYTES":   "10737418240", // 10 GiB: past int32
		}, func(c *Config) {
			c.Proxy.MaxRequestLine = 16384
			c.Proxy.MaxConnections = 0
			c.Proxy.MaxBodyBytes = 10 << 30
		}},
		{"open admin", map[string]string{"WELDR_ADMIN_LISTEN": ":8687", "WELDR_ADMIN_INSECURE": "true"}, func(c *Config) {
			c.Admin.Listen = ":8687"
			c.Admin.Insecure = true
		}},
		{"several", map[string]string{
			"WELDR_ADMIN_TOKEN":        "s3cret",
			"WELDR_LIFECYCLE_PID_FILE": "/run/weldr/weldr.pid",
			"WELDR_HEALTH_INTERVAL":    "500ms",
			"WELDR_HEALTH_RISE":        "5",
			"WELDR_UNRELATED":          "x",
		}, func(c *Config) {
			c.Admin.Token = "s3cret"
			c.Lifecycle.PIDFile = "/run/weldr/weldr.pid"
			c.Health.Interval = Duration(500 * time.Millisecond)
			c.Health.Rise = 5
		}},
		{"over the file", map[string]string{"WELDR_LOG_LEVEL": "debug"}, func(c *Config) { c.Log.Level = "debug" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The file sets log.level, which one case overrides.
			got, err := Decode([]byte("[log]\nlevel = \"warn\"\n"), envMap(tc.env))
			if err != nil {
				t.Fatalf("Decode() error = %v", err)
			}
			want := Default()
			want.Log.Level = "warn"
			tc.want(want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Decode() = %+v, want %+v", got, want)
			}
		})
	}
}

func TestConfigEnvInvalid(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"int", map[string]string{"WELDR_PROXY_WORKERS": "x"}, []string{`WELDR_PROXY_WORKERS (proxy.workers): invalid integer "x"`}},
		{"empty int", map[string]string{"WELDR_HEALTH_FALL": ""}, []string{`WELDR_HEALTH_FALL (health.fall): invalid integer ""`}},
		{"bool", map[string]string{"WELDR_LOG_ACCESS_LOG": "yes"}, []string{`WELDR_LOG_ACCESS_LOG (log.access_log): invalid boolean "yes"`}},
		{"int64", map[string]string{"WELDR_PROXY_MAX_BODY_BYTES": "1MB"}, []string{`WELDR_PROXY_MAX_BODY_BYTES (proxy.max_body_bytes): invalid integer "1MB"`}},
		{"int64 negative", map[string]string{"WELDR_PROXY_MAX_BODY_BYTES": "-1"}, []string{"proxy.max_body_bytes: must not be negative"}},
		{"open admin", map[string]string{"WELDR_ADMIN_LISTEN": "[::]:8687"}, []string{"admin.token: required when admin.listen ([::]:8687) is not a loopback address"}},
		{"duration", map[string]string{"WELDR_LIFECYCLE_DRAIN_TIMEOUT": "30"}, []string{`WELDR_LIFECYCLE_DRAIN_TIMEOUT (lifecycle.drain_timeout): invalid duration "30"`}},
		{"invalid value", map[string]string{"WELDR_LOG_FORMAT": "xml"}, []string{`log.format: unknown format "xml"`}},
		{"several", map[string]string{"WELDR_PROXY_WORKERS": "x", "WELDR_PROXY_BALANCE": "fastest"}, []string{
			`WELDR_PROXY_WORKERS (proxy.workers): invalid integer "x"`,
			`proxy.balance: unknown policy "fastest"`,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(nil, envMap(tc.env))
			if err == nil {
				t.Fatalf("Decode() = nil error, want %q", tc.want)
			}
			if errs := joined(err); len(errs) != len(tc.want) {
				t.Errorf("Decode() = %q, want %d errors", err, len(tc.want))
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Decode() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestConfigServerWeightDefault(t *testing.T) {
	c, err := Decode([]byte("[[servers]]\nurl = \"http://a\"\n[[servers]]\nurl = \"http://b\"\nweight = 7\n"), nil)
	if err != nil {
		t.Fatalf("Decode() error = %v", err)
	}
	want := []ServerConfig{{URL: "http://a", Weight: 1}, {URL: "http://b", Weight: 7}}
	if !reflect.DeepEqual(c.Servers, want) {
		t.Errorf("Decode() Servers = %+v, want %+v", c.Servers, want)
	}
}

func TestConfigListen(t *testing.T) {
	for _, addr := range []string{":8080", "0.0.0.0:0", "[::]:80", "[::1]:65535", "localhost:80", "example.com:443", "[fe80::1%eth0]:80"} {
		t.Run(addr, func(t *testing.T) {
			c := Default()
			c.Proxy.Listen = addr
			if err := c.Validate(); err != nil {
				t.Errorf("Validate() with proxy.listen %q = %v, want nil", addr, err)
			}
		})
	}
}

// TestConfigAdminLoopback checks the rule that keeps the admin API from being
// open to the network by mistake: without a token, admin.listen must be on
// loopback unless admin.insecure is set.
func TestConfigAdminLoopback(t *testing.T) {
	const msg = "admin.token: required when admin.listen (%s) is not a loopback address; " +
		"set one (or WELDR_ADMIN_TOKEN), or set admin.insecure = true to accept an unauthenticated admin API"
	loopback := []string{
		"127.0.0.1:8687", "127.0.0.1:0", "127.1.2.3:8687", "127.255.255.255:1", "[::1]:8687",
		"[::ffff:127.0.0.1]:8687", "localhost:8687", "LOCALHOST:8687",
	}
	open := []string{
		":8687", "0.0.0.0:8687", "[::]:8687", "10.0.0.5:8687", "192.168.1.1:80", "128.0.0.1:8687",
		"[::2]:8687", "[fe80::1%eth0]:8687", "[::ffff:10.0.0.1]:8687", "example.com:8687",
		"localhost.example.com:8687", "local:8687",
	}
	type tc struct {
		name, listen, token string
		insecure            bool
		want                string // "" for valid
	}
	var tests []tc
	for _, l := range loopback {
		tests = append(tests, tc{"loopback " + l, l, "", false, ""})
	}
	for _, l := range open {
		tests = append(tests,
			tc{"no token " + l, l, "", false, fmt.Sprintf(msg, l)},
			tc{"token " + l, l, "s3cret", false, ""},
			tc{"insecure " + l, l, "", true, ""},
		)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			c.Admin = AdminConfig{Listen: tc.listen, Token: tc.token, Insecure: tc.insecure}
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tc.want != "" && (err == nil || err.Error() != tc.want):
				t.Errorf("Validate() = %v, want %s", err, tc.want)
			}
		})
	}
}

// TestConfigAdminLoopbackLoad checks the rule end to end: the file, the
// environment, and an invalid listen address, which is reported once.
func TestConfigAdminLoopbackLoad(t *testing.T) {
	tests := []struct {
		name string
		toml string
		env  map[string]string
		want string // "" for valid
	}{
		{"file open", "[admin]\nlisten = \"0.0.0.0:8687\"\n", nil, "admin.token: required when admin.listen (0.0.0.0:8687)"},
		{"file token", "[admin]\nlisten = \"0.0.0.0:8687\"\ntoken = \"s3cret\"\n", nil, ""},
		{"env token", "[admin]\nlisten = \"0.0.0.0:8687\"\n", map[string]string{"WELDR_ADMIN_TOKEN": "s3cret"}, ""},
		{"env insecure", "[admin]\nlisten = \"0.0.0.0:8687\"\n", map[string]string{"WELDR_ADMIN_INSECURE": "1"}, ""},
		{"env listen", "", map[string]string{"WELDR_ADMIN_LISTEN": "0.0.0.0:8687"}, "admin.token: required when admin.listen (0.0.0.0:8687)"},
		{"env empties token", "[admin]\nlisten = \"0.0.0.0:8687\"\ntoken = \"s3cret\"\n", map[string]string{"WELDR_ADMIN_TOKEN": ""}, "admin.token: required"},
		{"bad listen", "[admin]\nlisten = \"0.0.0.0\"\n", nil, "admin.listen: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Decode([]byte(tc.toml), envMap(tc.env))
			if tc.want == "" {
				if err != nil {
					t.Errorf("Decode() error = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("Decode() = %+v, %v, want an error starting %q", c, err, tc.want)
			}
			if errs := joined(err); len(errs) != 1 {
				t.Errorf("Decode() = %q, want exactly one error", err)
			}
		})
	}
}

func TestConfigHealthCheckValidate(t *testing.T) {
	h := HealthCheck{Path: "x", Interval: Duration(time.Millisecond), Timeout: -1, Fall: 1001, Rise: -1}
	err := h.Validate("health_check")
	want := []string{
		`health_check.path: must start with "/"`,
		"health_check.interval: must be at least 10ms",
		"health_check.timeout: must be positive",
		"health_check.fall: must be between 1 and 1000",
		"health_check.rise: must be between 1 and 1000",
	}
	if errs := joined(err); len(errs) != len(want) {
		t.Errorf("Validate() = %q, want %d errors", err, len(want))
	}
	for _, w := range want {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("Validate() = %v, want it to contain %q", err, w)
		}
	}
	if err := Default().Health.Validate(""); err != nil {
		t.Errorf("Default().Health.Validate() = %v, want nil", err)
	}
	if err := (HealthCheck{}).Validate(""); err == nil || !strings.HasPrefix(err.Error(), "path: ") {
		t.Errorf(`HealthCheck{}.Validate("") = %v, want an error starting "path: "`, err)
	}
}

func TestConfigHealthCheckMerge(t *testing.T) {
	defaults := Default().Health
	tests := []struct {
		name string
		h    HealthCheck
		want HealthCheck
	}{
		{"zero", HealthCheck{}, defaults},
		{"all set", HealthCheck{Path: "/up", Interval: Duration(time.Second), Timeout: Duration(time.Millisecond * 100), Fall: 1, Rise: 9},
			HealthCheck{Path: "/up", Interval: Duration(time.Second), Timeout: Duration(time.Millisecond * 100), Fall: 1, Rise: 9}},
		{"some set", HealthCheck{Path: "/up", Rise: 9},
			HealthCheck{Path: "/up", Interval: defaults.Interval, Timeout: defaults.Timeout, Fall: defaults.Fall, Rise: 9}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.h.Merge(defaults); got != tc.want {
				t.Errorf("Merge() = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestConfigHealthCheckJSON(t *testing.T) {
	var h HealthCheck
	if err := json.Unmarshal([]byte(`{"path": "/up", "interval": "5s", "fall": 2}`), &h); err != nil {
		t.Fatalf("json.Unmarshal() error = %v", err)
	}
	want := HealthCheck{Path: "/up", Interval: Duration(5 * time.Second), Fall: 2}
	if h != want {
		t.Errorf("json.Unmarshal() = %+v, want %+v", h, want)
	}
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatalf("json.Marshal() error = %v", err)
	}
	if got, wantJSON := string(b), `{"path":"/up","interval":"5s","fall":2}`; got != wantJSON {
		t.Errorf("json.Marshal() = %s, want %s", got, wantJSON)
	}
	err = json.Unmarshal([]byte(`{"interval": "<b>soon</b>"}`), &h)
	if err == nil || strings.ContainsAny(err.Error(), "<>") {
		t.Errorf("json.Unmarshal(bad interval) error = %v, want one without HTML", err)
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		text string
		want Duration
		str  string
	}{
		{"10s", Duration(10 * time.Second), "10s"},
		{"1m30s", Duration(90 * time.Second), "1m30s"},
		{"90s", Duration(90 * time.Second), "1m30s"},
		{"500ms", Duration(500 * time.Millisecond), "500ms"},
		{"0", 0, "0s"},
		{"-1h", Duration(-time.Hour), "-1h0m0s"},
	}
	for _, tc := range tests {
		t.Run(tc.text, func(t *testing.T) {
			var d Duration
			if err := d.UnmarshalText([]byte(tc.text)); err != nil {
				t.Fatalf("UnmarshalText(%q) error = %v", tc.text, err)
			}
			if d != tc.want {
				t.Errorf("UnmarshalText(%q) = %v, want %v", tc.text, d, tc.want)
			}
			b, err := d.MarshalText()
			if err != nil || string(b) != tc.str {
				t.Errorf("MarshalText() = %q, %v, want %q, nil", b, err, tc.str)
			}
			if got := d.String(); got != tc.str {
				t.Errorf("String() = %q, want %q", got, tc.str)
			}
		})
	}
}

func TestDurationInvalid(t *testing.T) {
	tests := []struct {
		text string
		want string
	}{
		{"x", `invalid duration "x"`},
		{"", `invalid duration ""`},
		{"10", `invalid duration "10"`},
		{"<script>", `invalid duration "?script?"`},
		{strings.Repeat("9", 100), `invalid duration "` + strings.Repeat("9", 32) + `"...`},
	}
	for _, tc := range tests {
		t.Run(tc.text, func(t *testing.T) {
			var d Duration
			err := d.UnmarshalText([]byte(tc.text))
			if err == nil || err.Error() != tc.want {
				t.Errorf("UnmarshalText(%q) = %v, want %s", tc.text, err, tc.want)
			}
		})
	}
}

func TestConfigWorkerCount(t *testing.T) {
	c := Default()
	c.Proxy.Workers = 3
	if got := c.WorkerCount(); got != 3 {
		t.Errorf("WorkerCount() with proxy.workers = 3 = %d, want 3", got)
	}
	c.Proxy.Workers = 0
	if got := c.WorkerCount(); got < 1 || got > runtime.NumCPU() {
		t.Errorf("WorkerCount() with proxy.workers = 0 = %d, want 1..%d", got, runtime.NumCPU())
	}
}

// GOMAXPROCS in the environment is for the manager: the workers still
// share every CPU the runtime would count without it.
func TestWorkersShareTheCPUsWhateverGOMAXPROCSSays(t *testing.T) {
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS is set: the runtime's default is not known here")
	}
	def := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(1) // as GOMAXPROCS=1 would have left it
	defer runtime.GOMAXPROCS(def)
	if got := countCPUs("1"); got != def {
		t.Errorf("countCPUs with GOMAXPROCS=1 = %d, want the runtime's default, %d", got, def)
	}
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS after countCPUs = %d, want it left at 1", got)
	}
}

func FuzzDecode(f *testing.F) {
	example, err := os.ReadFile("../config.example.toml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	for _, s := range []string{
		"",
		"[proxy]\nlisten = \":80\"\nworkers = 2\nbalance = \"random_two\"\n",
		"[health]\ninterval = \"1m30s\"\ntimeout = \"1.5s\"\n",
		"[[servers]]\nurl = \"http://[::1]:9000/\"\nweight = 3\n[[servers]]\nurl = \"https://example.com\"\n",
		"[proxy]\nlistn = 1\n",
		"[proxy]\nworkers = \"x\"\n",
		"servers = []\n",
		"[log]\nlevel = 'debug'\nformat = 'json'\naccess_log = true\n",
		"[proxy]\nmax_request_line = 256\nmax_connections = 0\nmax_body_bytes = 9223372036854775807\n",
		"[proxy]\nmax_body_bytes = -1\nmax_request_line = 1048577\n",
		"[admin]\nlisten = \"[::]:8687\"\ninsecure = true\n",
		"[admin]\nlisten = \"0.0.0.0:8687\"\ntoken = \"s3cret\"\n",
		"[admin]\nlisten = \"10.0.0.1:1\"\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Decode(data, nil)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Decode() = %+v, whose Validate() = %v, want nil", c, err)
		}
		// What was accepted encodes back to TOML that decodes to the same.
		var buf strings.Builder
		if err := toml.NewEncoder(&buf).Encode(c); err != nil {
			t.Fatalf("encoding %+v: %v", c, err)
		}
		c2, err := Decode([]byte(buf.String()), nil)
		if err != nil {
			t.Fatalf("Decode(%q) error = %v, want nil", buf.String(), err)
		}
		if len(c.Servers) == 0 && len(c2.Servers) == 0 {
			c.Servers, c2.Servers = nil, nil
		}
		if !reflect.DeepEqual(c, c2) {
			t.Errorf("Decode(%q) = %+v, want %+v", buf.String(), c2, c)
		}
	})
}

// A configuration file may list only as many servers as fit the message
// that gives a worker the pool: past it, no worker could start.
func TestConfigServersFitTheWorkersPool(t *testing.T) {
	// Names of 250 characters: about 23,000 servers fit.
	long := strings.Repeat("a", 57) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 57)
	server := func(i int) ServerConfig {
		return ServerConfig{URL: fmt.Sprintf("http://%06d%s:8080", i, long)}
	}
	id, canonical, err := ParseServerURL(server(0).URL)
	if err != nil {
		t.Fatal(err)
	}
	fit := maxPoolBytes / encodedSize(&Server{ID: id, URL: canonical})
	c := Default()
	for i := range fit {
		c.Servers = append(c.Servers, server(i))
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() with %d servers, as many as fit = %v, want nil", fit, err)
	}
	c.Servers = append(c.Servers, server(fit))
	err = c.Validate()
	if errs := joined(err); len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), "servers: ") {
		t.Errorf("Validate() with %d servers, one more than fit = %v, want one error naming servers", fit+1, err)
	}
}
