//go:build linux

package install_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/systemdtest"
)

// TestUninstallUnderSystemd: under a real systemd (internal/systemdtest),
// with the real systemctl, useradd and userdel, --uninstall stops and
// disables the service and leaves systemd without the unit, keeps the vault
// with its owner, the rapidvalue-agent user; --purge removes both; a third
// run finds nothing.
func TestUninstallUnderSystemd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a systemd")
	}
	sd := systemdtest.Boot(t)
	b := newBed(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	inNS := b.inSystemd(ctx, t, sd, "RV_INSTALL_SEAL=identity")
	run := func(args ...string) (string, error) { return inNS(args[0], args[1:]...) }
	const unit = "rapidvalue-agent.service"
	if out, err := run("sh", "/tmp/install.sh"); err != nil {
		t.Fatalf("install under systemd: %v\n%s", err, out)
	}
	if got := sd.Show(ctx, unit, "ActiveState"); got != "active" {
		t.Fatalf("after install: ActiveState %q", got)
	}

	out, err := run("sh", "/tmp/install.sh", "--uninstall")
	if err != nil || !strings.Contains(out, "kept the user rapidvalue-agent") || !strings.Contains(out, revokeHint) {
		t.Fatalf("--uninstall: %v\n%s", err, out)
	}
	t.Logf("--uninstall:\n%s", out)
	for prop, want := range map[string]string{"ActiveState": "inactive", "LoadState": "not-found", "UnitFileState": ""} {
		if got := sd.Show(ctx, unit, prop); got != want {
			t.Errorf("after --uninstall: %s = %q, want %q", prop, got, want)
		}
	}
	if owner, err := run("stat", "-c", "%U %a", "/opt/rapidvalue/agent-vault.json"); err != nil || strings.TrimSpace(owner) != "rapidvalue-agent 600" {
		t.Errorf("kept vault: %q %v, want rapidvalue-agent 600", owner, err)
	}
	if _, err := os.Stat(sd.Path("/opt/rapidvalue/tier3-agent")); !os.IsNotExist(err) {
		t.Errorf("the binary is still there (%v)", err)
	}

	out, err = run("sh", "/tmp/install.sh", "--uninstall", "--purge")
	if err != nil || !strings.Contains(out, "removed the user rapidvalue-agent") {
		t.Fatalf("--uninstall --purge: %v\n%s", err, out)
	}
	t.Logf("--uninstall --purge:\n%s", out)
	if _, err := run("id", "rapidvalue-agent"); err == nil {
		t.Error("the user rapidvalue-agent is still there")
	}
	if _, err := os.Stat(sd.Path("/opt/rapidvalue")); !os.IsNotExist(err) {
		t.Errorf("/opt/rapidvalue is still there (%v)", err)
	}
	if out, err := run("sh", "/tmp/install.sh", "--uninstall", "--purge"); err != nil || !strings.Contains(out, "nothing to remove") {
		t.Fatalf("a third run: %v\n%s", err, out)
	}
}
