// Package packaging holds the nfpm configuration, maintainer scripts and
// sysusers entry of weldr's .deb and .rpm. Its tests build both packages
// with scripts/packages.sh and inspect them with the distributions' own
// tools.
package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// built holds the packages built once for all tests.
var built struct {
	deb, rpm, dir string
	err           error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "weldr-packages")
	if err != nil {
		panic(err)
	}
	built.dir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// packages builds both packages once (or fails the test).
func packages(t *testing.T) (deb, rpm string) {
	t.Helper()
	if built.deb == "" && built.err == nil {
		cmd := exec.Command("../scripts/packages.sh")
		cmd.Env = append(os.Environ(), "DIST="+built.dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			built.err = err
			t.Fatalf("scripts/packages.sh: %v\n%s", err, out)
		}
		debs, _ := filepath.Glob(filepath.Join(built.dir, "*.deb"))
		rpms, _ := filepath.Glob(filepath.Join(built.dir, "*.rpm"))
		if len(debs) != 1 || len(rpms) != 1 {
			t.Fatalf("built %v and %v, want one .deb and one .rpm\n%s", debs, rpms, out)
		}
		built.deb, built.rpm = debs[0], rpms[0]
	}
	if built.err != nil {
		t.Fatalf("building packages failed: %v", built.err)
	}
	return built.deb, built.rpm
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/test.sh installs it when run as root)", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func mustContain(t *testing.T, what, text string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(text, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, text)
		}
	}
}

func TestDeb(t *testing.T) {
	need(t, "dpkg-deb")
	deb, _ := packages(t)

	list := run(t, "dpkg-deb", "-c", deb)
	for _, want := range []string{
		`-rwxr-xr-x root/root .* \./usr/bin/weldr\n`,
		`-rwxr-xr-x root/root .* \./usr/bin/weldr-test-server\n`,
		`-rw-r--r-- root/root .* \./lib/systemd/system/weldr\.service\n`,
		`-rw-r----- root/weldr .* \./etc/weldr/config\.toml\n`,
		`-rw-r--r-- root/root .* \./usr/lib/sysusers\.d/weldr\.conf\n`,
		`drwxr-x--- weldr/weldr .* \./var/lib/weldr/\n`,
	} {
		if !regexp.MustCompile(want).MatchString(list) {
			t.Errorf("dpkg-deb -c has no line matching %q:\n%s", want, list)
		}
	}
	if got := run(t, "dpkg-deb", "-f", deb, "Package"); strings.TrimSpace(got) != "weldr" {
		t.Errorf("Package = %q, want weldr", got)
	}
	version, _ := os.ReadFile("../VERSION")
	if got := run(t, "dpkg-deb", "-f", deb, "Version"); !strings.HasPrefix(got, strings.TrimSpace(string(version))) {
		t.Errorf("Version = %q, want it to start with VERSION (%s)", got, version)
	}
	if got := run(t, "dpkg-deb", "-I", deb, "conffiles"); strings.TrimSpace(got) != "/etc/weldr/config.toml" {
		t.Errorf("conffiles = %q, want /etc/weldr/config.toml", got)
	}
	mustContain(t, "preinst", run(t, "dpkg-deb", "-I", deb, "preinst"), "systemd-sysusers", "useradd")
	mustContain(t, "postinst", run(t, "dpkg-deb", "-I", deb, "postinst"), "daemon-reload", "try-reload-or-restart weldr.service")
	mustContain(t, "prerm", run(t, "dpkg-deb", "-I", deb, "prerm"), "disable --now weldr.service")
	mustContain(t, "postrm", run(t, "dpkg-deb", "-I", deb, "postrm"), "daemon-reload")

	// What the package installs runs, and its configuration is valid.
	root := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, root)
	bin := filepath.Join(root, "usr/bin/weldr")
	mustContain(t, "weldr -version", run(t, bin, "-version"), "weldr "+strings.TrimSpace(string(version)))
	mustContain(t, "weldr -check-config", run(t, bin, "-check-config", "-config", filepath.Join(root, "etc/weldr/config.toml")), "configuration is valid")
}

func TestRpm(t *testing.T) {
	need(t, "rpm")
	_, rpm := packages(t)
	files := run(t, "rpm", "-qpl", rpm)
	for _, want := range []string{
		"/usr/bin/weldr", "/usr/bin/weldr-test-server", "/usr/lib/systemd/system/weldr.service",
		"/etc/weldr/config.toml", "/usr/lib/sysusers.d/weldr.conf", "/var/lib/weldr",
	} {
		if !strings.Contains("\n"+files, "\n"+want+"\n") {
			t.Errorf("rpm -qpl lacks %s:\n%s", want, files)
		}
	}
	if got := run(t, "rpm", "-qp", "--configfiles", rpm); strings.TrimSpace(got) != "/etc/weldr/config.toml" {
		t.Errorf("rpm --configfiles = %q, want /etc/weldr/config.toml", got)
	}
	// %config(noreplace): an upgrade never overwrites the operator's file.
	flags := run(t, "rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", rpm)
	if !regexp.MustCompile(`(?m)^cn /etc/weldr/config\.toml$`).MatchString(flags) {
		t.Errorf("config.toml is not %%config(noreplace):\n%s", flags)
	}
	owners := run(t, "rpm", "-qp", "--qf", "[%{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEMODES:perms} %{FILENAMES}\n]", rpm)
	mustContain(t, "rpm file owners", owners, "weldr:weldr drwxr-x--- /var/lib/weldr", "root:root -rwxr-xr-x /usr/bin/weldr\n")
	mustContain(t, "rpm --scripts", run(t, "rpm", "-qp", "--scripts", rpm),
		"preinstall scriptlet", "systemd-sysusers", "try-reload-or-restart weldr.service", "daemon-reload", "disable --now weldr.service")
}

func TestUnit(t *testing.T) {
	need(t, "systemd-analyze")
	// verify checks that ExecStart's binary exists: point the unit at the
	// binary the package ships.
	deb, _ := packages(t)
	need(t, "dpkg-deb")
	root := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, root)
	unit, err := os.ReadFile(filepath.Join(root, "lib/systemd/system/weldr.service"))
	if err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(t.TempDir(), "weldr.service")
	os.WriteFile(local, bytes.ReplaceAll(unit, []byte("/usr/bin/weldr"), []byte(filepath.Join(root, "usr/bin/weldr"))), 0o644)
	if out, err := exec.Command("systemd-analyze", "verify", local).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, want := range []string{
		"ExecReload=/bin/kill -HUP $MAINPID", "PIDFile=/run/weldr/weldr.pid", "RuntimeDirectory=weldr",
		"StateDirectory=weldr", "User=weldr", "KillMode=mixed", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "SystemCallFilter=@system-service",
	} {
		mustContain(t, "weldr.service", string(unit), want+"\n")
	}

	out, _ := exec.Command("systemd-analyze", "security", "--offline=true", local).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for .*: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	if level, _ := strconv.ParseFloat(string(m[1]), 64); level > 2.0 {
		t.Errorf("exposure level %.1f, want at most 2.0:\n%s", level, out)
	}
	t.Logf("systemd-analyze security exposure: %s", m[1])
}

// TestMaintainerScripts runs the scripts with each package manager's
// arguments against a stand-in systemctl that records its calls.
func TestMaintainerScripts(t *testing.T) {
	bin := t.TempDir()
	calls := filepath.Join(t.TempDir(), "calls")
	os.WriteFile(filepath.Join(bin, "systemctl"), []byte("#!/bin/sh\necho \"$*\" >>"+calls+"\n"), 0o755)
	runtime := t.TempDir() // stands for /run/systemd/system: systemd is running
	tests := []struct {
		script string
		args   []string
		want   string // calls, one per line
	}{
		{"postinstall", []string{"configure", ""}, "daemon-reload"},
		{"postinstall", []string{"configure", "0.0.9"}, "daemon-reload\ntry-reload-or-restart weldr.service"},
		{"postinstall", []string{"1"}, "daemon-reload"},
		{"postinstall", []string{"2"}, "daemon-reload\ntry-reload-or-restart weldr.service"},
		{"preremove", []string{"upgrade", "0.2.0"}, ""},
		{"preremove", []string{"remove"}, "disable --now weldr.service"},
		{"preremove", []string{"1"}, ""},
		{"preremove", []string{"0"}, "disable --now weldr.service"},
		{"postremove", []string{"remove"}, "daemon-reload"},
		{"postremove", []string{"0"}, "daemon-reload"},
	}
	for _, tc := range tests {
		t.Run(tc.script+" "+strings.Join(tc.args, " "), func(t *testing.T) {
			os.Remove(calls)
			cmd := exec.Command("sh", append([]string{"scripts/" + tc.script + ".sh"}, tc.args...)...)
			cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "WELDR_SYSTEMD_RUNTIME="+runtime)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s %v: %v\n%s", tc.script, tc.args, err, out)
			}
			got, _ := os.ReadFile(calls)
			if strings.TrimSpace(string(got)) != tc.want {
				t.Errorf("%s %v called systemctl with %q, want %q", tc.script, tc.args, got, tc.want)
			}
		})
	}
	// Without a running systemd (a container, a chroot) nothing is called.
	os.Remove(calls)
	cmd := exec.Command("sh", "scripts/postinstall.sh", "configure", "0.0.9")
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "WELDR_SYSTEMD_RUNTIME=/nonexistent")
	cmd.Run()
	if got, _ := os.ReadFile(calls); len(got) > 0 {
		t.Errorf("postinstall without systemd called systemctl with %q", got)
	}
}
