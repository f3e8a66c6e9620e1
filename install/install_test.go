//go:build linux

// The installer tests run the script on Linux: it installs the linux
// binary the test publishes, under a systemd stand-in.

package install_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/install"
	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

// standInSystemctl plays systemd for the installer: `enable --now` and
// `restart` start the installed binary in the background, in its own process
// group, with the unit's (and drop-in's) Environment= lines, /opt/rapidvalue
// moved under RV_INSTALL_ROOT; `disable --now` stops it. It records the
// process group in $STANDIN_STATE/pid.
const standInSystemctl = `#!/bin/sh
state=$STANDIN_STATE
root=$RV_INSTALL_ROOT
echo "$*" >>"$state/calls"
stop() {
	if [ -f "$state/pid" ]; then
		pg=$(cat "$state/pid")
		kill -TERM "-$pg" 2>/dev/null
		# Like systemd: wait until the old agent is gone (10 s, then KILL).
		n=0
		while kill -0 "-$pg" 2>/dev/null && ! grep -q '^[^)]*) Z' "/proc/$pg/stat" 2>/dev/null; do
			n=$((n + 1))
			if [ "$n" -gt 200 ]; then kill -KILL "-$pg" 2>/dev/null; break; fi
			sleep 0.05
		done
		rm -f "$state/pid"
	fi
}
start() {
	units=$(cat "$root/etc/systemd/system/rapidvalue-agent.service" "$root"/etc/systemd/system/rapidvalue-agent.service.d/*.conf 2>/dev/null)
	# LoadCredentialEncrypted=NAME:PATH: decrypt into $state/creds (%d).
	mkdir -p "$state/creds"
	for c in $(printf '%s\n' "$units" | sed -n 's/^LoadCredentialEncrypted=//p'); do
		systemd-creds decrypt --name="${c%%:*}" "$root${c#*:}" "$state/creds/${c%%:*}" || exit 1
	done
	envs=$(printf '%s\n' "$units" | sed -n 's/^Environment=//p' | sed "s#=/opt/rapidvalue#=$root/opt/rapidvalue#; s#%d#$state/creds#")
	# setsid: the agent leads its own process group (no job control here).
	# shellcheck disable=SC2086
	(cd "$root/opt/rapidvalue" && exec @SETSID@ env -i PATH="$PATH" HOME="$state" RV_POLL_WAIT=2 RV_HEARTBEAT_INTERVAL=2 \
		RV_AGENT_SELF_UPDATE=0 $envs "$root/opt/rapidvalue/tier3-agent" run) </dev/null >>"$state/agent.log" 2>&1 &
	echo $! >"$state/pid"
	echo $! >>"$state/pids"
}
case "$*" in
daemon-reload) ;;
"enable --now rapidvalue-agent.service") start ;;
"restart rapidvalue-agent.service") stop; start ;;
"disable --now rapidvalue-agent.service") stop ;;
*) echo "stand-in systemctl: unexpected $*" >&2; exit 1 ;;
esac
`

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
		setsid, err := exec.LookPath("setsid")
		if err != nil {
			t.Skip("setsid (util-linux) is missing")
		}
		script := strings.ReplaceAll(standInSystemctl, "@SETSID@", setsid)
		if err := os.WriteFile(filepath.Join(b.binDir, "systemctl"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { b.killAgents(t) })
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
	cmd := exec.Command(filepath.Join(b.binDir, "sh"), b.script)
	cmd.Env = append([]string{
		"PATH=" + b.binDir, "HOME=" + b.state, "TMPDIR=" + b.state,
		"RV_AGENT_TOKEN=" + token, "RV_AGENT_UPDATE_KEY=" + b.tok.UpdateKey,
		"RV_CONTROL_PLANE_CA=" + b.caFile, "RV_INSTALL_ROOT=" + b.root,
		"RV_INSTALL_WAIT=30", "STANDIN_STATE=" + b.state,
	}, extra...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// killAgents stops every agent the stand-in systemctl started and waits
// until each process group is gone.
func (b *bed) killAgents(t *testing.T) {
	data, _ := os.ReadFile(filepath.Join(b.state, "pids"))
	for _, f := range strings.Fields(string(data)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 1 {
			continue
		}
		syscall.Kill(-pid, syscall.SIGTERM)
		deadline := time.Now().Add(10 * time.Second)
		for alive(pid) {
			if time.Now().After(deadline) {
				syscall.Kill(-pid, syscall.SIGKILL)
				break
			}
			time.Sleep(20 * time.Millisecond) // polling, with a deadline
		}
	}
}

// alive reports whether the process group pid still has members, counting
// a zombie leader (reparented, maybe never reaped here) as gone.
func alive(pid int) bool {
	if syscall.Kill(-pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // the leader is gone, other members are not
	}
	i := bytes.LastIndexByte(stat, ')')
	return !(i > 0 && i+2 < len(stat) && stat[i+2] == 'Z')
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
