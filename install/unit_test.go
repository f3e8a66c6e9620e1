package install_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/install"
	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

// TestScriptShellcheck: the script as served (the unit in its heredoc) is
// shellcheck-clean.
func TestScriptShellcheck(t *testing.T) {
	sc := testbin.Tool(t, "shellcheck")
	for name, text := range map[string]string{
		"served": strings.ReplaceAll(install.Script, controlplane.InstallURLPlaceholder, "https://cp.example:8443"),
		"raw":    install.Script,
	} {
		cmd := exec.Command(sc, "-s", "sh", "-")
		cmd.Stdin = strings.NewReader(text)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("shellcheck %s: %v\n%s", name, err, out)
		}
	}
	if strings.Contains(install.Script, "@@RAPIDVALUE_AGENT_SERVICE@@") || !strings.Contains(install.Script, "ExecStart=/opt/rapidvalue/tier3-agent run") {
		t.Fatal("the unit is not in the script")
	}
}

var exposure = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

// TestUnitExposure: systemd-analyze security rates the shipped unit 2.0 or
// less.
func TestUnitExposure(t *testing.T) {
	sa := testbin.Tool(t, "systemd-analyze")
	dir := t.TempDir()
	p := filepath.Join(dir, "rapidvalue-agent.service")
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(install.Unit, controlplane.InstallURLPlaceholder, "https://cp.example")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "security", "--offline=true", "--no-pager", p).CombinedOutput()
	m := exposure.FindSubmatch(out)
	if m == nil {
		if os.Getenv("CI") != "true" {
			t.Skipf("systemd-analyze security --offline=true does not work here: %v\n%s", err, out)
		}
		t.Fatalf("systemd-analyze: %v\n%s", err, out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("exposure %.1f", score)
	if score > 2.0 {
		t.Fatalf("exposure %.1f, want 2.0 or less:\n%s", score, out)
	}
}

// TestTruncatedScriptRunsNothing: a download cut short (curl | sh) is a
// syntax error before anything runs: the script is one brace group.
func TestTruncatedScriptRunsNothing(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	text := strings.ReplaceAll(install.Script, controlplane.InstallURLPlaceholder, "https://cp.example")
	cut := text[:strings.LastIndex(strings.TrimSuffix(text, "\n"), "\n")+1]
	root := t.TempDir()
	cmd := exec.Command(sh)
	cmd.Stdin = strings.NewReader(cut)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "RV_INSTALL_ROOT=" + root, "RV_AGENT_TOKEN=x", "RV_AGENT_UPDATE_KEY=y"}
	out, err := cmd.CombinedOutput()
	if err == nil || strings.Contains(string(out), "tier3-agent-install:") {
		t.Fatalf("the truncated script ran: %v\n%s", err, out)
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Fatalf("the truncated script wrote %v", ents)
	}
}

// TestUnitDirectives: the directives issue 8 asks of the unit are there,
// each once, with the value the agent is built for.
func TestUnitDirectives(t *testing.T) {
	for _, d := range []string{
		"Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=90", "Restart=always", "RestartPreventExitStatus=78",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/opt/rapidvalue", "PrivateTmp=yes",
		"ProtectHome=yes", "LimitCORE=0", "CapabilityBoundingSet=", "DeviceAllow=/dev/tpmrm0 rw",
		"User=rapidvalue-agent", "SystemCallFilter=@system-service",
	} {
		if n := strings.Count("\n"+install.Unit+"\n", "\n"+d+"\n"); n != 1 {
			t.Errorf("the unit has %q %d times, want once", d, n)
		}
	}
	for _, prefix := range []string{"LimitMEMLOCK=", "RestrictAddressFamilies="} {
		if !strings.Contains(install.Unit, "\n"+prefix) {
			t.Errorf("the unit has no %s", prefix)
		}
	}
}
