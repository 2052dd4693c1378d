package manager

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// A generation that handed over passes signals on to the process its PID
// file names only if that is its own child, the new generation: never to a
// process it did not start, and to nothing without a PID file.
func TestSuccessorIsTheChildThePIDFileNames(t *testing.T) {
	cfg := Default()
	cfg.Lifecycle.PIDFile = ""
	m := &Manager{cfg: cfg}
	if pid, err := m.successor(); err == nil {
		t.Errorf("successor() without a PID file = %d, want an error", pid)
	}

	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	cfg.Lifecycle.PIDFile = filepath.Join(t.TempDir(), "weldr.pid")
	for _, tc := range []struct {
		name, content string
		want          int // 0: an error
	}{
		{"its child", strconv.Itoa(child.Process.Pid) + "\n", child.Process.Pid},
		{"itself", strconv.Itoa(os.Getpid()), 0},
		{"its parent", strconv.Itoa(os.Getppid()), 0},
		{"not a number", "weldr", 0},
	} {
		if err := os.WriteFile(cfg.Lifecycle.PIDFile, []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		pid, err := m.successor()
		if tc.want != 0 && (err != nil || pid != tc.want) {
			t.Errorf("%s: successor() = %d, %v; want %d", tc.name, pid, err, tc.want)
		}
		if tc.want == 0 && err == nil {
			t.Errorf("%s: successor() = %d, want an error", tc.name, pid)
		}
	}
	os.Remove(cfg.Lifecycle.PIDFile)
	if pid, err := m.successor(); err == nil {
		t.Errorf("successor() with the PID file gone = %d, want an error", pid)
	}
}
