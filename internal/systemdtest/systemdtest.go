//go:build linux

// Package systemdtest boots a real systemd, for tests of the shipped unit
// under the service manager it is written for.
//
// The systemd is PID 1 of its own PID and mount namespaces (unshare), so it
// manages only what the test starts, and sees a private copy of /etc and
// empty tmpfs mounts on /run, /opt, /tmp, /var and /home: what the test installs,
// the users it adds and the units it writes stay in the namespace and go
// with it. The network namespace is the host's, so a service reaches the
// test's loopback servers. The host sees the namespace's files through
// Path (/proc/PID/root).
//
// It needs root, unshare, nsenter and systemd. Tests skip when one is
// missing, unless CI=true: in CI that fails the test.
package systemdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/syncbuf"
)

// Binary is systemd's manager.
const Binary = "/lib/systemd/systemd"

// Systemd is a running systemd in its own namespaces.
type Systemd struct {
	// PID is systemd's PID as the host sees it.
	PID int

	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
}

// bootScript runs as PID 1 of the new namespaces, before exec'ing systemd:
// mounts made here are the namespace's own.
const bootScript = `set -e
mount --make-rprivate /
mount --bind "$1/etc" /etc
for d in /run /opt /tmp /var/lib /var/log /home; do mount -t tmpfs -o mode=0755 tmpfs "$d"; done
chmod 1777 /tmp
exec ` + Binary + ` --system --log-target=console --log-level=notice
`

// Missing says what this machine lacks to boot a systemd here, or "".
func Missing() string {
	if os.Geteuid() != 0 {
		return "not root"
	}
	for _, tool := range []string{"unshare", "nsenter", "systemctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " is not installed (util-linux, systemd)"
		}
	}
	if _, err := os.Stat(Binary); err != nil {
		return "systemd is not installed (apt-get install systemd)"
	}
	return ""
}

// Boot starts a systemd and waits until it is running (or degraded); it
// is stopped, with everything it started, at t.Cleanup.
func Boot(t testing.TB) *Systemd {
	t.Helper()
	if why := Missing(); why != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot boot systemd, and CI=true: %s", why)
		}
		t.Skipf("cannot boot systemd: %s (with CI=true this fails)", why)
	}
	dir := t.TempDir()
	// A private copy of /etc: useradd and the units the test writes
	// change the copy only.
	if out, err := exec.Command("cp", "-a", "/etc", filepath.Join(dir, "etc")).CombinedOutput(); err != nil {
		t.Fatalf("copy /etc: %v: %s", err, out)
	}
	s := &Systemd{out: new(syncbuf.Buffer), done: make(chan struct{})}
	s.cmd = exec.Command("unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
		"--", "/bin/sh", "-c", bootScript, "sh", dir)
	s.cmd.Stdout = s.out
	s.cmd.Stderr = s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("unshare: %v", err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() { s.stop(t) })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pid, err := s.childPID(ctx)
	if err != nil {
		t.Fatalf("systemd did not start: %v\n%s", err, s.out.String())
	}
	s.PID = pid
	if state, err := s.waitRunning(ctx); err != nil {
		t.Fatalf("systemd did not finish booting (%q, %v)\n%s", state, err, s.out.String())
	}
	return s
}

// waitRunning waits for start-up to finish. is-system-running --wait
// blocks until then, once systemd's private socket answers; before that
// it says "offline" at once, and is asked again.
func (s *Systemd) waitRunning(ctx context.Context) (string, error) {
	for {
		out, err := s.Command(ctx, "systemctl", "is-system-running", "--wait").CombinedOutput()
		state := strings.TrimSpace(string(out))
		switch {
		case state == "running", state == "degraded":
			return state, nil
		case state == "offline", state == "", strings.HasPrefix(state, "Failed to connect to bus"):
		default:
			return state, err
		}
		select {
		case <-s.done:
			return state, errors.New("unshare exited")
		case <-ctx.Done():
			return state, ctx.Err()
		case <-time.After(20 * time.Millisecond): // the socket has no event to wait on
		}
	}
}

// childPID waits for unshare's child, which becomes systemd (the boot
// script exec's it), to exist.
func (s *Systemd) childPID(ctx context.Context) (int, error) {
	unsharePID := s.cmd.Process.Pid
	path := fmt.Sprintf("/proc/%d/task/%d/children", unsharePID, unsharePID)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				pid, err := strconv.Atoi(f[0])
				if err != nil {
					return 0, err
				}
				// Wait until the script has exec'd systemd.
				if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe == Binary || strings.HasSuffix(exe, "/systemd") {
					return pid, nil
				}
			}
		}
		select {
		case <-s.done:
			return 0, errors.New("unshare exited")
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond): // polling /proc: there is no event for an exec
		}
	}
}

// Command is name run inside the namespaces (nsenter), as root.
func (s *Systemd) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	a := append([]string{"-t", strconv.Itoa(s.PID), "-m", "-p", "--", name}, args...)
	return exec.CommandContext(ctx, "nsenter", a...)
}

// Systemctl runs systemctl inside the namespaces and returns its combined
// output.
func (s *Systemd) Systemctl(ctx context.Context, args ...string) (string, error) {
	var b bytes.Buffer
	c := s.Command(ctx, "systemctl", args...)
	c.Stdout, c.Stderr = &b, &b
	err := c.Run()
	return b.String(), err
}

// Show returns one property of a unit (systemctl show -p NAME --value).
func (s *Systemd) Show(ctx context.Context, unit, property string) string {
	out, _ := s.Systemctl(ctx, "show", "-p", property, "--value", unit)
	return strings.TrimSpace(out)
}

// Journal returns the whole journal of the namespace: everything its
// services printed. (journalctl -u cannot be used: journald attributes a
// line to a unit by the sender's cgroup, which this sandbox's cgroups do
// not always give it.)
func (s *Systemd) Journal(ctx context.Context) string {
	out, _ := s.Command(ctx, "journalctl", "--no-pager", "-o", "short-monotonic").CombinedOutput()
	return string(out)
}

// Path is the host's path to path inside the namespace.
func (s *Systemd) Path(path string) string {
	return fmt.Sprintf("/proc/%d/root%s", s.PID, path)
}

// Console is what systemd printed on its console.
func (s *Systemd) Console() string { return s.out.String() }

// stop kills systemd, and with it every process of its PID namespace.
func (s *Systemd) stop(t testing.TB) {
	if s.PID != 0 {
		if p, err := os.FindProcess(s.PID); err == nil {
			p.Kill()
		}
	}
	s.cmd.Process.Kill()
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Errorf("systemd (pid %d) did not stop", s.PID)
	}
}
