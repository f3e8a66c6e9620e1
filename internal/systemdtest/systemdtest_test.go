//go:build linux

package systemdtest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestBoot boots a systemd, runs a hardened transient service in it, and
// checks the namespace's files are its own.
func TestBoot(t *testing.T) {
	s := Boot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := s.Command(ctx, "systemd-run", "--wait", "--quiet", "-p", "DynamicUser=yes",
		"-p", "ProtectSystem=strict", "-p", "SystemCallFilter=@system-service", "/bin/true").CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-run: %v: %s", err, out)
	}
	// /opt is the namespace's tmpfs, not the host's.
	if out, err := s.Command(ctx, "sh", "-c", "echo x > /opt/systemdtest-probe && findmnt -n -o FSTYPE /opt").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "tmpfs" {
		t.Fatalf("/opt in the namespace: %v %q", err, out)
	}
	if _, err := s.Command(ctx, "test", "-e", "/opt/systemdtest-probe").CombinedOutput(); err != nil {
		t.Fatal("probe missing inside the namespace")
	}
	if _, err := os.Stat("/opt/systemdtest-probe"); err == nil {
		t.Fatal("a file written to the namespace's /opt appeared on the host")
	}
}
