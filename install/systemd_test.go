//go:build linux

package install_test

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/install"
	"github.com/rapidvalue/tier3-agent/internal/swtpmtest"
	"github.com/rapidvalue/tier3-agent/internal/systemdtest"
)

// TestInstallUnderSystemd runs the installer as served, as root, under a
// real systemd (PID 1 of its own namespaces, internal/systemdtest) with
// the real systemctl, useradd and a TPM (swtpm): the shipped unit must
// start the agent as its own user with the hardening in force, reach
// READY under its Type=, register, and stop cleanly. The stand-in tests
// cover the installer's failure paths; this one covers what only systemd
// can say: that the unit's sandbox lets the agent work.
func TestInstallUnderSystemd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a systemd")
	}
	sd := systemdtest.Boot(t)
	tpm := swtpmtest.Start(t)
	b := newBed(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	run := b.inSystemd(ctx, t, sd, "RV_AGENT_TPM_DEVICE="+tpm.Device)
	const unit = "rapidvalue-agent.service"
	out, err := run("sh", "/tmp/install.sh")
	if err != nil {
		t.Fatalf("install under systemd: %v\n%s\njournal:\n%s", err, out, sd.Journal(ctx))
	}
	t.Logf("installer:\n%s", out)
	if list := b.agents(t); len(list) != 1 || list[0].Vault.Seal != "tpm2" {
		t.Fatalf("agents: %+v, want one registered, sealed with tpm2", list)
	}

	// The unit as systemd loaded it.
	wantType := "simple"
	if m := regexp.MustCompile(`(?m)^Type=(\S+)$`).FindStringSubmatch(install.Unit); m != nil {
		wantType = m[1]
	}
	for prop, want := range map[string]string{
		"Type": wantType, "ActiveState": "active", "SubState": "running",
		"User": "rapidvalue-agent", "NRestarts": "0", "LoadState": "loaded",
		"NotifyAccess": "main", "WatchdogUSec": "1min 30s",
		// READY=1 came from the main process, with its status line.
		"StatusText": "registered; polling the control plane",
	} {
		if got := sd.Show(ctx, unit, prop); got != want {
			t.Errorf("%s %s = %q, want %q", unit, prop, got, want)
		}
	}
	// The agent's process, as the kernel sees it: not root, no
	// capabilities, no new privileges, a seccomp filter, no core dumps.
	mainPID := sd.Show(ctx, unit, "MainPID")
	status, err := run("cat", "/proc/"+mainPID+"/status")
	if err != nil {
		t.Fatalf("status of MainPID %s: %v %s", mainPID, err, status)
	}
	uid, _ := run("id", "-u", "rapidvalue-agent")
	for _, want := range []string{
		"Uid:\t" + strings.TrimSpace(uid) + "\t", "CapEff:\t0000000000000000", "CapPrm:\t0000000000000000",
		"NoNewPrivs:\t1", "Seccomp:\t2",
	} {
		if !strings.Contains(status, want) {
			t.Errorf("agent process status lacks %q:\n%s", want, status)
		}
	}
	if limits, _ := run("cat", "/proc/"+mainPID+"/limits"); !regexp.MustCompile(`Max core file size\s+0\s+0`).MatchString(limits) {
		t.Errorf("core dumps are not off:\n%s", limits)
	}
	// The vault: the service user's, nobody else's.
	if out, err := run("stat", "-c", "%U %a", "/opt/rapidvalue/agent-vault.json"); err != nil || strings.TrimSpace(out) != "rapidvalue-agent 600" {
		t.Errorf("vault owner and mode: %q %v, want rapidvalue-agent 600", out, err)
	}

	// systemctl reload: the agent opens its vault again (through the TPM)
	// without a restart, between RELOADING=1 and READY=1, and its status
	// says how it went. ExecReload runs in the unit's sandbox too.
	if out, err := sd.Systemctl(ctx, "reload", unit); err != nil {
		t.Fatalf("systemctl reload: %v %s\njournal:\n%s", err, out, sd.Journal(ctx))
	}
	waitFor(ctx, t, "the reload's status", func() bool {
		return sd.Show(ctx, unit, "StatusText") == "vault reloaded; polling the control plane"
	})
	for prop, want := range map[string]string{"ActiveState": "active", "SubState": "running", "MainPID": mainPID, "NRestarts": "0"} {
		if got := sd.Show(ctx, unit, prop); got != want {
			t.Errorf("after the reload: %s = %q, want %q", prop, got, want)
		}
	}

	// A crash: systemd restarts the agent (Restart=always), which registers
	// again with the same vault.
	if out, err := run("kill", "-KILL", mainPID); err != nil {
		t.Fatalf("kill: %v %s", err, out)
	}
	waitFor(ctx, t, "a restart after the crash", func() bool {
		return sd.Show(ctx, unit, "NRestarts") == "1" && sd.Show(ctx, unit, "SubState") == "running" &&
			sd.Show(ctx, unit, "MainPID") != mainPID
	})

	// A clean stop: systemctl stop returns once the agent has exited 0.
	if out, err := sd.Systemctl(ctx, "stop", unit); err != nil {
		t.Fatalf("systemctl stop: %v %s", err, out)
	}
	for prop, want := range map[string]string{"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"} {
		if got := sd.Show(ctx, unit, prop); got != want {
			t.Errorf("after stop: %s = %q, want %q", prop, got, want)
		}
	}
	journal := sd.Journal(ctx)
	for _, secret := range []string{b.tok.Token, b.tok.UpdateKey} {
		if strings.Contains(journal, secret) || strings.Contains(out, secret) {
			t.Fatal("a secret is in the journal or the installer's output")
		}
	}
	if t.Failed() {
		t.Logf("journal:\n%s", journal)
	}

	// A revoked token: the agent exits 78 and RestartPreventExitStatus=78
	// keeps systemd from restarting it in a loop. Short poll and
	// heartbeat intervals through a drop-in, as an operator would add one.
	dropin := "[Service]\nEnvironment=RV_POLL_WAIT=1 RV_HEARTBEAT_INTERVAL=1\n"
	if err := os.WriteFile(sd.Path("/etc/systemd/system/rapidvalue-agent.service.d/zz-test.conf"), []byte(dropin), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"daemon-reload"}, {"start", unit}} {
		if out, err := sd.Systemctl(ctx, args...); err != nil {
			t.Fatalf("systemctl %v: %v %s", args, err, out)
		}
	}
	if err := b.cp.Admin.RevokeToken(ctx, b.tok.TokenID); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the agent to stop for good on its revoked token", func() bool {
		return sd.Show(ctx, unit, "ActiveState") == "failed"
	})
	for prop, want := range map[string]string{"ExecMainStatus": "78", "NRestarts": "0"} {
		if got := sd.Show(ctx, unit, prop); got != want {
			t.Errorf("after the token was revoked: %s = %q, want %q\n%s", prop, got, want, sd.Journal(ctx))
		}
	}
}

// waitFor polls cond (systemd's state has no event to wait on here) until
// it holds, failing the test at ctx's deadline.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// inSystemd hands the installer as served and the control plane's CA to
// sd's namespace (its /tmp is its own) and returns a runner of commands
// there, as root, with the installer's environment plus extra.
func (b *bed) inSystemd(ctx context.Context, t *testing.T, sd *systemdtest.Systemd, extra ...string) func(name string, args ...string) (string, error) {
	t.Helper()
	for src, dst := range map[string]string{b.script: "/tmp/install.sh", b.caFile: "/tmp/control-plane-ca.pem"} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(sd.Path(dst), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return func(name string, args ...string) (string, error) {
		c := sd.Command(ctx, name, args...)
		c.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
			"RV_AGENT_TOKEN=" + b.tok.Token, "RV_AGENT_UPDATE_KEY=" + b.tok.UpdateKey,
			"RV_CONTROL_PLANE_CA=/tmp/control-plane-ca.pem", "RV_INSTALL_WAIT=90"}, extra...)
		out, err := c.CombinedOutput()
		return string(out), err
	}
}
