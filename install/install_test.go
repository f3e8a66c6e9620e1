//go:build linux

// The installer tests run the script on Linux: it installs the linux
// binary the test publishes, under a systemd stand-in.

package install_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/install"
	"github.com/rapidvalue/tier3-agent/internal/standin"
	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

// tools the installer may call; the test's PATH holds only these (so that
// systemd-creds, dbus-send and the real systemctl are absent).
var tools = []string{"sh", "curl", "sha256sum", "uname", "sed", "mktemp", "tr", "id", "cat", "cp", "mv",
	"rm", "mkdir", "chmod", "chown", "grep", "date", "sleep", "tail", "dirname", "env", "kill", "getent", "rmdir"}

type bed struct {
	cp      *controlplane.TestServer
	tok     controlplane.CreateTokenResponse
	agent   []byte
	script  string // path of the script as served
	caFile  string
	binDir  string // PATH for the installer
	state   string // the stand-in systemctl's folder
	root    string // RV_INSTALL_ROOT
	version int
}

func newBed(t *testing.T, systemctl bool, extraTools ...string) *bed {
	t.Helper()
	testbin.Tool(t, "curl")
	cp, err := controlplane.Start(controlplane.Config{InstallScript: install.Script})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Close() })
	b := &bed{cp: cp, state: t.TempDir(), root: t.TempDir(), binDir: t.TempDir()}
	if b.agent, err = os.ReadFile(testbin.Agent(t)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b.publish(t)
	if b.tok, err = cp.Admin.CreateToken(ctx, controlplane.CreateTokenRequest{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	b.caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(b.caFile, cp.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	// The script as the control plane serves it.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.CAPEM())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get(cp.URL + "/agent/install")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("Environment=RV_CONTROL_PLANE_URL="+cp.URL+"\n")) {
		t.Fatalf("GET /agent/install: %d, want the installer with the URL %s in its unit", resp.StatusCode, cp.URL)
	}
	b.script = filepath.Join(dir, "install.sh")
	if err := os.WriteFile(b.script, body, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range append(tools, extraTools...) {
		p, err := exec.LookPath(name)
		if err != nil {
			continue // getent, for one, is optional
		}
		if err := os.Symlink(p, filepath.Join(b.binDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if systemctl {
		standin.Systemctl(t, b.binDir, b.state)
	}
	return b
}

// publish publishes the agent binary as the next version.
func (b *bed) publish(t *testing.T) {
	t.Helper()
	b.version++
	if _, err := b.cp.Admin.PublishRelease(context.Background(), fmt.Sprintf("1.0.%d", b.version), "linux", "amd64", b.agent); err != nil {
		t.Fatal(err)
	}
}

// run runs the installer with a clean environment plus extra.
func (b *bed) run(t *testing.T, token string, extra ...string) (string, error) {
	t.Helper()
	return b.runArgs(t, token, nil, extra...)
}

// runArgs runs the installer with arguments, the way `curl … | sh -s --
// ARGS` does: the script on standard input.
func (b *bed) runArgs(t *testing.T, token string, args []string, extra ...string) (string, error) {
	t.Helper()
	script, err := os.Open(b.script)
	if err != nil {
		t.Fatal(err)
	}
	defer script.Close()
	cmd := exec.Command(filepath.Join(b.binDir, "sh"), append([]string{"-s", "--"}, args...)...)
	cmd.Stdin = script
	cmd.Env = append([]string{
		"PATH=" + b.binDir, "HOME=" + b.state, "TMPDIR=" + b.state,
		"RV_AGENT_TOKEN=" + token, "RV_AGENT_UPDATE_KEY=" + b.tok.UpdateKey,
		"RV_CONTROL_PLANE_CA=" + b.caFile, "RV_INSTALL_ROOT=" + b.root,
		"RV_INSTALL_WAIT=30", "STANDIN_STATE=" + b.state,
	}, extra...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// tree lists every path under dir with its mode.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		info, _ := d.Info()
		rel, _ := filepath.Rel(dir, p)
		out = append(out, fmt.Sprintf("%s %v", rel, info.Mode()))
		return nil
	})
	return out
}

var errorLine = regexp.MustCompile(`(?m)^tier3-agent-install: error: .+$`)

// wantFailure checks the installer failed with one error line containing
// want and left the install root empty.
func (b *bed) wantFailure(t *testing.T, out string, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("installer succeeded, want an error; output:\n%s", out)
	}
	lines := errorLine.FindAllString(out, -1)
	if len(lines) != 1 || !strings.Contains(lines[0], want) {
		t.Fatalf("want one line 'tier3-agent-install: error: …%s…', got:\n%s", want, out)
	}
	if left := tree(t, b.root); len(left) != 0 {
		t.Fatalf("the install root holds %v after a failed install, want nothing", left)
	}
	if left, _ := filepath.Glob(filepath.Join(b.state, "tier3-agent-install.*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	t.Logf("%s", lines[0])
}

func (b *bed) agents(t *testing.T) []controlplane.AgentInfo {
	t.Helper()
	list, err := b.cp.Admin.Agents(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// TestInstallAndUpgrade: a fresh install ends with the agent registered, the
// files where the unit expects them, the secrets in the vault and not in the
// unit; a second run upgrades the binary in place and keeps the vault.
func TestInstallAndUpgrade(t *testing.T) {
	b := newBed(t, true)
	out, err := b.run(t, b.tok.Token, "RV_INSTALL_SEAL=identity")
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	list := b.agents(t)
	if len(list) != 1 || list[0].Version == "" {
		t.Fatalf("agents after install: %+v, want one registered", list)
	}
	dest := filepath.Join(b.root, "opt", "rapidvalue")
	for p, mode := range map[string]fs.FileMode{dest: fs.ModeDir | 0o700, filepath.Join(dest, "tier3-agent"): 0o755} {
		info, err := os.Stat(p)
		if err != nil || info.Mode() != mode {
			t.Fatalf("%s: %v %v, want mode %v", p, info.Mode(), err, mode)
		}
	}
	unit, err := os.ReadFile(filepath.Join(b.root, "etc/systemd/system/rapidvalue-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.ReplaceAll(install.Unit, controlplane.InstallURLPlaceholder, b.cp.URL); string(unit) != want {
		t.Fatalf("installed unit differs from install.Unit:\n%s", unit)
	}
	dropin, _ := os.ReadFile(filepath.Join(b.root, "etc/systemd/system/rapidvalue-agent.service.d/install.conf"))
	for _, secret := range []string{b.tok.Token, b.tok.UpdateKey} {
		if bytes.Contains(unit, []byte(secret)) || bytes.Contains(dropin, []byte(secret)) {
			t.Fatal("a secret is in the unit")
		}
	}
	// The vault's _agent entry holds both (read with the installed binary).
	vaultEnv := []string{"RV_AGENT_VAULT_PATH=" + filepath.Join(dest, "agent-vault.json"),
		"RV_AGENT_VAULT_IDENTITY_FILE=" + filepath.Join(dest, "host.key")}
	plain := filepath.Join(t.TempDir(), "plain.json")
	cmd := exec.Command(filepath.Join(dest, "tier3-agent"), "vault", "unseal", "--out", plain)
	cmd.Env = vaultEnv
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vault unseal: %v\n%s", err, out)
	}
	if data, err := os.ReadFile(plain); err != nil || !bytes.Contains(data, []byte("_agent")) ||
		!bytes.Contains(data, []byte(b.tok.Token)) || !bytes.Contains(data, []byte(b.tok.UpdateKey)) {
		t.Fatalf("the vault does not hold _agent's token and update key (%v)", err)
	}
	read := func(name string) []byte {
		data, err := os.ReadFile(filepath.Join(dest, name))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	vault, seal, key := read("agent-vault.json"), read("agent-vault.json.seal"), read("host.key")
	bin1, err := os.Stat(filepath.Join(dest, "tier3-agent"))
	if err != nil {
		t.Fatal(err)
	}

	// Again, with a newer release: an upgrade in place.
	b.publish(t)
	before := time.Now()
	out, err = b.run(t, b.tok.Token, "RV_INSTALL_SEAL=identity")
	if err != nil {
		logs, _ := os.ReadFile(filepath.Join(b.state, "agent.log"))
		t.Fatalf("upgrade: %v\n%s\nagent log:\n%s", err, out, logs)
	}
	t.Logf("%s", out)
	if !bytes.Equal(read("agent-vault.json"), vault) || !bytes.Equal(read("agent-vault.json.seal"), seal) || !bytes.Equal(read("host.key"), key) {
		t.Fatal("the upgrade changed the vault, its seal file or the identity")
	}
	bin2, err := os.Stat(filepath.Join(dest, "tier3-agent"))
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(bin1, bin2) {
		t.Fatal("the upgrade did not replace the binary")
	}
	// The restarted agent registered again (same token, same agent).
	if list := b.agents(t); len(list) != 1 || list[0].LastSeen.Before(before) {
		t.Fatalf("agents after the upgrade: %+v, want one, seen since the upgrade", list)
	}
	calls, _ := os.ReadFile(filepath.Join(b.state, "calls"))
	if want := "daemon-reload\nenable --now rapidvalue-agent.service\ndaemon-reload\nrestart rapidvalue-agent.service\n"; string(calls) != want {
		t.Fatalf("systemctl calls:\n%s\nwant:\n%s", calls, want)
	}
	if left, _ := filepath.Glob(filepath.Join(dest, ".tier3-agent.*")); len(left) != 0 {
		t.Fatalf("upgrade left %v", left)
	}

	// A failed upgrade (tampered binary) leaves the installation as it was.
	snapshot := tree(t, b.root)
	bad := fmt.Sprintf(`{"version":"1.0.3","os":"linux","arch":"amd64","sha256":"%s","url":"/api/agent/v1/update/1.0.2/binary?os=linux\u0026arch=amd64"}`, strings.Repeat("1", 64))
	if _, err := b.cp.Admin.AddFault(context.Background(), controlplane.Fault{Endpoint: controlplane.EndpointManifest, Status: 200, Body: bad}); err != nil {
		t.Fatal(err)
	}
	out, err = b.run(t, b.tok.Token)
	if err == nil || len(errorLine.FindAllString(out, -1)) != 1 || !strings.Contains(out, "SHA-256") {
		t.Fatalf("tampered upgrade: %v\n%s", err, out)
	}
	bin3, err := os.Stat(filepath.Join(dest, "tier3-agent"))
	if err != nil || !os.SameFile(bin2, bin3) {
		t.Fatalf("the failed upgrade touched the binary (%v)", err)
	}
	if after := tree(t, b.root); strings.Join(after, "\n") != strings.Join(snapshot, "\n") {
		t.Fatalf("the failed upgrade changed the install root:\n%v\nwas:\n%v", after, snapshot)
	}
}

// TestInstallTamperedBinary: the manifest's SHA-256 does not match the
// binary: nothing is installed.
func TestInstallTamperedBinary(t *testing.T) {
	b := newBed(t, true)
	bad := fmt.Sprintf(`{"version":"1.0.1","os":"linux","arch":"amd64","sha256":"%s","url":"/api/agent/v1/update/1.0.1/binary?os=linux&arch=amd64"}`, strings.Repeat("0", 64))
	if _, err := b.cp.Admin.AddFault(context.Background(), controlplane.Fault{Endpoint: controlplane.EndpointManifest, Status: 200, Body: bad}); err != nil {
		t.Fatal(err)
	}
	out, err := b.run(t, b.tok.Token, "RV_INSTALL_SEAL=identity")
	b.wantFailure(t, out, err, "SHA-256")
	if len(b.agents(t)) != 0 {
		t.Fatal("an agent registered")
	}
}

// TestInstallWrongToken: the control plane refuses the token: nothing is
// installed.
func TestInstallWrongToken(t *testing.T) {
	b := newBed(t, true)
	out, err := b.run(t, "rv_wrong_token", "RV_INSTALL_SEAL=identity")
	b.wantFailure(t, out, err, "cannot fetch the manifest")
	if !strings.Contains(out, "401") {
		t.Fatalf("want the HTTP status in the message:\n%s", out)
	}
}

// TestInstallNoSeal: no TPM, no keyring, no systemd-creds and no override:
// the installer says what to do and installs nothing.
func TestInstallNoSeal(t *testing.T) {
	if _, err := os.Stat("/dev/tpmrm0"); err == nil {
		t.Skip("this host has a TPM")
	}
	b := newBed(t, true)
	out, err := b.run(t, b.tok.Token)
	b.wantFailure(t, out, err, "no seal for the vault")
}

// TestInstallKeyringNotForTheService: the keyring seal opens only in a
// user's session, which rapidvalue-agent.service lacks: with systemd the
// installer never picks it, even when its own session has a keyring, and
// refuses it when asked for.
func TestInstallKeyringNotForTheService(t *testing.T) {
	b := newBed(t, true, "dbus-send")
	out, err := b.run(t, b.tok.Token, "RV_INSTALL_SEAL=keyring")
	b.wantFailure(t, out, err, "the keyring seal needs a user's session bus")

	bus := os.Getenv("DBUS_SESSION_BUS_ADDRESS")
	if bus == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("no session bus, and CI=true: scripts/test.sh runs the tests in one with gnome-keyring")
		}
		t.Skip("no session bus with a keyring here (scripts/test.sh provides one)")
	}
	// A keyring answers on the installer's session bus; no TPM, no
	// systemd-creds: nothing the service could open, so no seal.
	if _, err := os.Stat("/dev/tpmrm0"); err == nil {
		t.Skip("this host has a TPM")
	}
	out, err = b.run(t, b.tok.Token, "DBUS_SESSION_BUS_ADDRESS="+bus)
	b.wantFailure(t, out, err, "no seal for the vault")
}

// TestInstallWithoutSystemctl: without systemctl the installer installs and
// prints how to start the agent.
func TestInstallWithoutSystemctl(t *testing.T) {
	b := newBed(t, false)
	out, err := b.run(t, b.tok.Token, "RV_INSTALL_SEAL=identity")
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	if !strings.Contains(out, "tier3-agent run") {
		t.Fatalf("want how to start the agent:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(b.root, "opt/rapidvalue/agent-vault.json")); err != nil {
		t.Fatal(err)
	}
}

// TestInstallIdentitySystemdCreds: no TPM, no keyring, but systemd-creds:
// the identity seal, its identity file encrypted with systemd-creds (the
// host key in a temporary SYSTEMD_CREDENTIAL_SECRET, not /var/lib/systemd),
// loaded by the unit with LoadCredentialEncrypted=; the agent registers.
func TestInstallIdentitySystemdCreds(t *testing.T) {
	testbin.Tool(t, "systemd-creds")
	if _, err := os.Stat("/dev/tpmrm0"); err == nil {
		t.Skip("this host has a TPM")
	}
	b := newBed(t, true, "systemd-creds")
	secret := filepath.Join(t.TempDir(), "credential.secret")
	out, err := b.run(t, b.tok.Token, "SYSTEMD_CREDENTIAL_SECRET="+secret)
	if err != nil {
		logs, _ := os.ReadFile(filepath.Join(b.state, "agent.log"))
		t.Fatalf("install: %v\n%s\nagent log:\n%s", err, out, logs)
	}
	dest := filepath.Join(b.root, "opt", "rapidvalue")
	if _, err := os.Stat(filepath.Join(dest, "host.key")); !os.IsNotExist(err) {
		t.Fatalf("the plaintext identity is still there (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(dest, "host.key.cred")); err != nil {
		t.Fatal(err)
	}
	dropin, err := os.ReadFile(filepath.Join(b.root, "etc/systemd/system/rapidvalue-agent.service.d/install.conf"))
	if err != nil || !bytes.Contains(dropin, []byte("LoadCredentialEncrypted=host.key:/opt/rapidvalue/host.key.cred\n")) ||
		!bytes.Contains(dropin, []byte("Environment=RV_AGENT_VAULT_IDENTITY_FILE=%d/host.key\n")) {
		t.Fatalf("drop-in (%v):\n%s", err, dropin)
	}
	if list := b.agents(t); len(list) != 1 || list[0].Vault.Seal != "identity" {
		t.Fatalf("agents: %+v, want one with an identity-sealed vault", list)
	}
}

// files lists the regular files under dir, relative to it, sorted.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, rel)
		return nil
	})
	return out
}

// uninstall runs the script with --uninstall and args, and fails the test
// unless it exits 0.
func (b *bed) uninstall(t *testing.T, args ...string) string {
	t.Helper()
	out, err := b.runArgs(t, "", append([]string{"--uninstall"}, args...))
	if err != nil {
		t.Fatalf("uninstall %v: %v\n%s", args, err, out)
	}
	t.Logf("uninstall %v:\n%s", args, out)
	if strings.Contains(out, ": error:") {
		t.Fatalf("uninstall %v printed an error:\n%s", args, out)
	}
	return out
}

func (b *bed) calls(t *testing.T) string {
	t.Helper()
	data, _ := os.ReadFile(filepath.Join(b.state, "calls"))
	return string(data)
}

// revokeHint is what every uninstall of an installation ends with: the step
// it cannot take.
const revokeHint = "revoke this agent's token"

// TestUninstall: install, then --uninstall: the service is stopped and
// disabled, the unit, its drop-in and the binary are gone, and only the
// vault, its seal file (and lock), the identity and the audit log are left,
// each named in the output. A second --uninstall changes nothing. With the
// token revoked on the control plane (admin API), an agent started again
// on the kept vault is refused: exit 78, agent.disabled in the kept audit
// log, whose chain still verifies. --purge then removes the rest; the
// installer runs again from scratch.
func TestUninstall(t *testing.T) {
	b := newBed(t, true)
	if out, err := b.run(t, b.tok.Token, "RV_INSTALL_SEAL=identity"); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	if !standin.Running(b.state) {
		t.Fatal("the installed agent is not running")
	}
	dest := filepath.Join(b.root, "opt", "rapidvalue")
	before := b.calls(t)

	out := b.uninstall(t)
	if standin.Running(b.state) {
		t.Fatal("the agent still runs after --uninstall")
	}
	if got, want := strings.TrimPrefix(b.calls(t), before), "disable --now rapidvalue-agent.service\ndaemon-reload\nreset-failed rapidvalue-agent.service\n"; got != want {
		t.Fatalf("systemctl calls by --uninstall:\n%s\nwant:\n%s", got, want)
	}
	kept := []string{"opt/rapidvalue/agent-vault.json", "opt/rapidvalue/agent-vault.json.lock",
		"opt/rapidvalue/agent-vault.json.seal", "opt/rapidvalue/audit.log", "opt/rapidvalue/host.key"}
	if got := files(t, b.root); strings.Join(got, " ") != strings.Join(kept, " ") {
		t.Fatalf("files left after --uninstall:\n%v\nwant:\n%v", got, kept)
	}
	for _, f := range kept {
		if !strings.Contains(out, "kept "+filepath.Join(b.root, f)+"\n") {
			t.Errorf("the output does not name the kept %s", f)
		}
	}
	for _, want := range []string{
		"removed " + filepath.Join(b.root, "etc/systemd/system/rapidvalue-agent.service") + "\n",
		"removed " + filepath.Join(b.root, "etc/systemd/system/rapidvalue-agent.service.d/install.conf") + "\n",
		"removed " + filepath.Join(dest, "tier3-agent") + "\n",
		"--purge", revokeHint, b.cp.URL, "POST /admin/v1/tokens/TOKEN_ID/revoke",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the output lacks %q", want)
		}
	}

	// Again: nothing more to do, the same files kept.
	before = b.calls(t)
	out = b.uninstall(t)
	if got := files(t, b.root); strings.Join(got, " ") != strings.Join(kept, " ") {
		t.Fatalf("a second --uninstall changed the files: %v", got)
	}
	if strings.Contains(out, "removed") || !strings.Contains(out, revokeHint) {
		t.Fatalf("a second --uninstall:\n%s", out)
	}
	if got := strings.TrimPrefix(b.calls(t), before); got != "" {
		t.Fatalf("a second --uninstall called systemctl: %s", got)
	}

	// The installer does not take the kept vault for an installation.
	snapshot := tree(t, b.root)
	out, err := b.run(t, b.tok.Token, "RV_INSTALL_SEAL=identity")
	if err == nil || len(errorLine.FindAllString(out, -1)) != 1 || !strings.Contains(out, "kept by --uninstall") {
		t.Fatalf("install over a kept vault: %v\n%s", err, out)
	}
	if after := tree(t, b.root); strings.Join(after, "\n") != strings.Join(snapshot, "\n") {
		t.Fatalf("the refused install changed the root:\n%v", after)
	}

	// The step the script cannot take: revoke the token. The kept vault
	// still holds it; an agent started on it is refused.
	list := b.agents(t)
	if len(list) != 1 || list[0].TokenID != b.tok.TokenID || list[0].Hostname == "" {
		t.Fatalf("agents: %+v", list)
	}
	if err := b.cp.Admin.RevokeToken(context.Background(), list[0].TokenID); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testbin.Agent(t), "run")
	cmd.Env = []string{"PATH=" + b.binDir, "HOME=" + b.state,
		"RV_CONTROL_PLANE_URL=" + b.cp.URL, "RV_CONTROL_PLANE_CA=" + b.caFile,
		"RV_AGENT_VAULT_PATH=" + filepath.Join(dest, "agent-vault.json"),
		"RV_AGENT_VAULT_IDENTITY_FILE=" + filepath.Join(dest, "host.key"),
		"RV_AGENT_AUDIT_LOG=" + filepath.Join(dest, "audit.log"),
		"RV_POLL_WAIT=2", "RV_HEARTBEAT_INTERVAL=2", "RV_AGENT_SELF_UPDATE=0"}
	done := make(chan struct{})
	var runOut []byte
	go func() { runOut, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the agent with a revoked token is still running after 60 s:\n%s", runOut)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 78 {
		t.Fatalf("agent on the kept vault with a revoked token: %v, want exit 78\n%s", err, runOut)
	}
	t.Logf("revoked: %s", bytes.TrimSpace(runOut))
	audit, err := os.ReadFile(filepath.Join(dest, "audit.log"))
	if err != nil || !bytes.Contains(audit, []byte(`"type":"agent.disabled"`)) {
		t.Fatalf("the kept audit log has no agent.disabled (%v)", err)
	}
	verify := exec.Command(testbin.Agent(t), "audit", "verify", filepath.Join(dest, "audit.log"))
	if vout, err := verify.CombinedOutput(); err != nil || !strings.Contains(string(vout), "chain intact") {
		t.Fatalf("audit verify on the kept log: %v\n%s", err, vout)
	}

	// --purge removes what was kept; then there is nothing left to do.
	os.Symlink(testbin.Agent(t), filepath.Join(dest, "tier3-agent")) // as if still installed: purge prints the log's head first
	out = b.uninstall(t, "--purge")
	if !strings.Contains(out, "chain intact") || !strings.Contains(out, "rotate") || !strings.Contains(out, "removed "+dest+"\n") {
		t.Errorf("--purge output lacks the audit log's head, the rotation hint or %s", dest)
	}
	if got := files(t, b.root); len(got) != 0 {
		t.Fatalf("files left after --purge: %v", got)
	}
	out = b.uninstall(t, "--purge")
	if !strings.Contains(out, "nothing to remove") {
		t.Fatalf("--purge on nothing:\n%s", out)
	}

	// A fresh install works again after a purge.
	if out, err := b.run(t, b.tok.Token, "RV_INSTALL_SEAL=identity"); err == nil || !strings.Contains(out, "401") {
		t.Fatalf("install with the revoked token: %v\n%s", err, out)
	}
	tok, err := b.cp.Admin.CreateToken(context.Background(), controlplane.CreateTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b.tok = tok
	if out, err := b.run(t, tok.Token, "RV_INSTALL_SEAL=identity"); err != nil {
		t.Fatalf("install after --purge: %v\n%s", err, out)
	}
}

// TestUninstallPurgeAfterInstall: --uninstall --purge right after an
// install (systemd-creds identity) leaves nothing but the empty system
// folders (/opt, /etc/systemd/system).
func TestUninstallPurgeAfterInstall(t *testing.T) {
	testbin.Tool(t, "systemd-creds")
	if _, err := os.Stat("/dev/tpmrm0"); err == nil {
		t.Skip("this host has a TPM")
	}
	b := newBed(t, true, "systemd-creds")
	secret := filepath.Join(t.TempDir(), "credential.secret")
	if out, err := b.run(t, b.tok.Token, "SYSTEMD_CREDENTIAL_SECRET="+secret); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	b.uninstall(t, "--purge")
	if standin.Running(b.state) {
		t.Fatal("the agent still runs after --uninstall --purge")
	}
	var left []string
	for _, l := range tree(t, b.root) {
		left = append(left, strings.Fields(l)[0])
	}
	if got := strings.Join(left, " "); got != "etc etc/systemd etc/systemd/system opt" {
		t.Fatalf("left after --purge: %s", got)
	}
}

// TestUninstallNothing: --uninstall where nothing is installed says so,
// calls no systemctl, writes nothing and exits 0; bad arguments exit 2.
func TestUninstallNothing(t *testing.T) {
	b := newBed(t, true)
	for _, args := range [][]string{nil, {"--purge"}} {
		if out := b.uninstall(t, args...); !strings.Contains(out, "nothing to remove") {
			t.Fatalf("uninstall %v of nothing:\n%s", args, out)
		}
	}
	if c := b.calls(t); c != "" {
		t.Fatalf("systemctl called: %s", c)
	}
	if left := tree(t, b.root); len(left) != 0 {
		t.Fatalf("uninstall of nothing wrote %v", left)
	}
	for _, args := range [][]string{{"--purge"}, {"--uninstall", "--keep"}, {"uninstall"}} {
		out, err := b.runArgs(t, b.tok.Token, args)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || len(errorLine.FindAllString(out, -1)) != 1 {
			t.Fatalf("%v: %v, want exit 2 and one error line\n%s", args, err, out)
		}
	}
}
