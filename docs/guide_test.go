//go:build linux

// Package docs_test runs the operator's guide: every ```sh block of
// OPERATIONS.md, in order, each in its own `bash -euo pipefail`, against
// the reference control plane, swtpm and the real binaries.
package docs_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/install"
	"github.com/rapidvalue/tier3-agent/internal/devca"
	"github.com/rapidvalue/tier3-agent/internal/standin"
	"github.com/rapidvalue/tier3-agent/internal/swtpmtest"
	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

// block is one fenced block of the guide.
type block struct {
	lang    string
	line    int    // of the opening fence
	section string // the ## heading above it
	text    string
}

var fence = regexp.MustCompile("^(\\s*)```(.*)$")

// parse returns the guide's fenced blocks. A fence must start its line and
// say sh (run) or text (not run): a command cannot hide in a block this
// test skips.
func parse(doc string) ([]block, error) {
	var out []block
	var cur *block
	section := ""
	sc := bufio.NewScanner(strings.NewReader(doc))
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		m := fence.FindStringSubmatch(l)
		switch {
		case strings.HasPrefix(strings.TrimSpace(l), "~~~"):
			return nil, fmt.Errorf("line %d: a ~~~ fence: use ``` with sh or text", n)
		case m != nil && m[1] != "":
			return nil, fmt.Errorf("line %d: an indented fence", n)
		case m != nil && cur == nil:
			if m[2] != "sh" && m[2] != "text" {
				return nil, fmt.Errorf("line %d: a block of %q: use sh (run by this test) or text (sample output)", n, m[2])
			}
			cur = &block{lang: m[2], line: n, section: section}
		case m != nil:
			if m[2] != "" {
				return nil, fmt.Errorf("line %d: a fence opens inside the block of line %d", n, cur.line)
			}
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.text += l + "\n"
		case strings.HasPrefix(l, "## "):
			section = strings.TrimPrefix(l, "## ")
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("line %d: the block never closes", cur.line)
	}
	return out, sc.Err()
}

// hostMarkers name the hosts other than the first: a block whose first line
// is one of these runs on that host (its own root, TPM and systemd).
var hostMarkers = map[string]string{
	"# on host B":       "B",
	"# on the old host": "old",
}

// events are what happens to a host before a block whose first line is
// the key: the guide's recovery drill clears the TPM (a new storage seed,
// as after a TPM clear or on another chip).
var events = map[string]func(t *testing.T, h *host){
	"# after a TPM clear: the seal no longer opens the vault": clearTPM,
}

// host is one machine of the sandbox.
type host struct {
	name  string
	root  string // RV_INSTALL_ROOT: /opt/rapidvalue and /etc/systemd live under it
	state string // the stand-in systemctl's records and the agent's log
	tpm   *swtpmtest.TPM
	path  string // PATH: the stand-ins, then the binaries, then the system's
}

// need finds a tool; without it the test skips, or fails where CI is set.
func need(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := filepath.Join(testbin.Root(), ".tools", "bin", name); fileExists(p) {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed (CI is set): scripts/install-deps.sh installs it", name)
	}
	t.Skipf("%s is not installed: scripts/install-deps.sh installs it", name)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestOperationsGuide runs every ```sh block of OPERATIONS.md in order, in
// a sandbox, and fails on the first that fails.
//
// The sandbox, and the whole of what it changes in the blocks:
//   - /opt/rapidvalue and /etc/systemd in a block are moved under the
//     host's RV_INSTALL_ROOT (the installer honours the same variable);
//   - PATH starts with stand-ins for systemctl (internal/standin: starts and
//     stops the installed agent as the unit would, and returns from a start
//     once it has registered) and runuser (runs the command as the caller:
//     no rapidvalue-agent user is made under RV_INSTALL_ROOT), then the
//     built tier3-agent and rv-release-sign and upstream age;
//   - the environment holds the guide's placeholders (RV_CONTROL_PLANE_URL,
//     RV_AGENT_TOKEN, RV_AGENT_UPDATE_KEY, RV_ADMIN_URL, RV_ADMIN_TOKEN,
//     SALESFORCE_CLIENT_SECRET, RELEASE_VERSION) for the reference control
//     plane on loopback, and what a host with a public CA and a TPM has
//     without settings: the control plane's private CA (CURL_CA_BUNDLE,
//     SSL_CERT_FILE, and RV_CONTROL_PLANE_CA, which the installer copies
//     into the drop-in), the TPM (RV_AGENT_TPM_DEVICE: a swtpm per host),
//     and the vault's default path under the root (RV_AGENT_VAULT_PATH);
//   - the working folder, shared by the hosts (files the guide carries
//     between hosts are there), starts with the client certificate the mTLS
//     section names and the release binary the updates section signs;
//   - the old host of the migration section starts as an agent from before
//     sealed vaults left it: the binary, the unit, a plaintext vault and a
//     migrate.conf drop-in.
func TestOperationsGuide(t *testing.T) {
	start := time.Now()
	doc, err := os.ReadFile("OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := parse(string(doc))
	if err != nil {
		t.Fatalf("OPERATIONS.md: %v", err)
	}
	var run []block
	for _, b := range blocks {
		if b.lang == "sh" {
			run = append(run, b)
		}
	}
	if want := strings.Count(string(doc), "\n```sh\n"); len(run) != want || want == 0 {
		t.Fatalf("parsed %d sh blocks, the file has %d", len(run), want)
	}

	for _, tool := range []string{"bash", "curl", "openssl", "sha256sum", "setsid", "swtpm"} {
		need(t, tool)
	}
	ageBin, keygen := need(t, "age"), need(t, "age-keygen")

	// The binaries.
	bin := t.TempDir()
	agentBin := testbin.Agent(t)
	for name, target := range map[string]string{"tier3-agent": agentBin, "age": ageBin, "age-keygen": keygen} {
		if err := os.Symlink(target, filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(bin, "rv-release-sign"), "./cmd/rv-release-sign")
	build.Dir = testbin.Root()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building rv-release-sign: %v\n%s", err, out)
	}

	// The control plane, with a release to install and an agent token.
	cp, err := controlplane.Start(controlplane.Config{InstallScript: install.Script})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Close() })
	ctx := context.Background()
	agentBytes, err := os.ReadFile(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Admin.PublishRelease(ctx, "1.0.0", "linux", "amd64", agentBytes); err != nil {
		t.Fatal(err)
	}
	tok, err := cp.Admin.CreateToken(ctx, controlplane.CreateTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}

	// The working folder.
	work := t.TempDir()
	caFile := filepath.Join(t.TempDir(), "control-plane-ca.pem")
	write(t, caFile, cp.CAPEM(), 0o600)
	client, err := cp.CA.Client("tier3-agent guide")
	if err != nil {
		t.Fatal(err)
	}
	if err := devca.WritePEM(filepath.Join(work, "agent-client.pem"), filepath.Join(work, "agent-client-key.pem"), client); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(work, "tier3-agent-linux-amd64"), agentBytes, 0o755)

	base := []string{
		"HOME=" + work, "TMPDIR=" + work, "LANG=C.UTF-8",
		"RV_CONTROL_PLANE_URL=" + cp.URL, "RV_AGENT_TOKEN=" + tok.Token, "RV_AGENT_UPDATE_KEY=" + tok.UpdateKey,
		"RV_ADMIN_URL=" + cp.AdminURL + controlplane.AdminPrefix, "RV_ADMIN_TOKEN=" + cp.AdminToken,
		"SALESFORCE_CLIENT_SECRET=guide-example-client-secret-0b6d1e", "RELEASE_VERSION=1.0.1",
		"CURL_CA_BUNDLE=" + caFile, "SSL_CERT_FILE=" + caFile, "RV_CONTROL_PLANE_CA=" + caFile,
		"RV_INSTALL_WAIT=30",
	}

	hosts := map[string]*host{}
	getHost := func(name string) *host {
		if h, ok := hosts[name]; ok {
			return h
		}
		h := &host{name: name, root: t.TempDir(), state: t.TempDir(), tpm: swtpmtest.Start(t)}
		stand := t.TempDir()
		standin.Systemctl(t, stand, h.state)
		standin.Runuser(t, stand)
		h.path = stand + ":" + bin + ":" + os.Getenv("PATH")
		hosts[name] = h
		return h
	}
	oldHost(t, getHost("old"), agentBytes, cp.URL, caFile, tok)

	for i, b := range run {
		h := getHost("A")
		first, _, _ := strings.Cut(b.text, "\n")
		if name, ok := hostMarkers[first]; ok {
			h = getHost(name)
		}
		if ev, ok := events[first]; ok {
			ev(t, h)
		}
		script := strings.NewReplacer(
			"/opt/rapidvalue", h.root+"/opt/rapidvalue",
			"/etc/systemd", h.root+"/etc/systemd",
		).Replace(b.text)
		env := append(append([]string{}, base...),
			"PATH="+h.path, "RV_INSTALL_ROOT="+h.root, "STANDIN_STATE="+h.state,
			"RV_AGENT_VAULT_PATH="+h.root+"/opt/rapidvalue/agent-vault.json",
			"RV_AGENT_TPM_DEVICE="+h.tpm.Device)
		bctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		cmd := exec.CommandContext(bctx, "bash", "-euo", "pipefail", "-c", script)
		cmd.Dir, cmd.Env = work, env
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			logs, _ := os.ReadFile(filepath.Join(h.state, "agent.log"))
			t.Fatalf("OPERATIONS.md line %d (block %d of %d, %q, host %s): %v\n--- block\n%s--- output\n%s--- agent log (last 2000 bytes)\n%s",
				b.line, i+1, len(run), b.section, h.name, err, b.text, out, tail(logs, 2000))
		}
		t.Logf("line %d (%s, host %s, %.1fs):\n%s", b.line, b.section, h.name, time.Since(t0).Seconds(), out)
	}
	t.Logf("%d blocks in %.1fs", len(run), time.Since(start).Seconds())
}

// oldHost makes h an installation from before sealed vaults: the binary,
// the unit with its drop-in, a plaintext vault in the documented schema
// (with the agent's token) and RV_AGENT_VAULT_MODE=migrate.
func oldHost(t *testing.T, h *host, agent []byte, url, caFile string, tok controlplane.CreateTokenResponse) {
	t.Helper()
	dest := filepath.Join(h.root, "opt", "rapidvalue")
	units := filepath.Join(h.root, "etc", "systemd", "system")
	if err := os.MkdirAll(dest, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(units, "rapidvalue-agent.service.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dest, "tier3-agent"), agent, 0o755)
	write(t, filepath.Join(dest, "control-plane-ca.pem"), ca, 0o600)
	write(t, filepath.Join(dest, "agent-vault.json"), []byte(`{"ldap-corp": {"bind_dn": "cn=svc-rapidvalue,ou=service,dc=corp,dc=local", "bind_password": "guide-legacy-bind-password-5c1f"},
 "_agent": {"token": "`+tok.Token+`", "update_key": "`+tok.UpdateKey+`"}}
`), 0o600)
	write(t, filepath.Join(units, "rapidvalue-agent.service"), []byte(strings.ReplaceAll(install.Unit, controlplane.InstallURLPlaceholder, url)), 0o644)
	write(t, filepath.Join(units, "rapidvalue-agent.service.d", "install.conf"), []byte("[Service]\nEnvironment=RV_CONTROL_PLANE_CA=/opt/rapidvalue/control-plane-ca.pem\n"), 0o644)
	write(t, filepath.Join(units, "rapidvalue-agent.service.d", "migrate.conf"), []byte("[Service]\nEnvironment=RV_AGENT_VAULT_MODE=migrate\n"), 0o644)
}

// clearTPM clears h's TPM (TPM2_Clear with platform authorization): the
// storage seed changes, so the tpm2 seal no longer opens the vault. It
// checks that this is so before the guide repairs it.
func clearTPM(t *testing.T, h *host) {
	t.Helper()
	c := h.tpm.Open(t)
	_, err := tpm2.Clear{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHPlatform, Auth: tpm2.PasswordAuth(nil)}}.Execute(c)
	c.Close()
	if err != nil {
		t.Fatalf("TPM2_Clear: %v", err)
	}
	cmd := exec.Command(filepath.Join(h.root, "opt/rapidvalue/tier3-agent"), "vault", "list")
	cmd.Env = []string{"RV_AGENT_VAULT_PATH=" + h.root + "/opt/rapidvalue/agent-vault.json", "RV_AGENT_TPM_DEVICE=" + h.tpm.Device}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 78 {
		t.Fatalf("the vault after TPM2_Clear: %v, want exit 78\n%s", err, out)
	}
}

func write(t *testing.T, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// TestParse: the guide's parser runs every sh block and refuses a block it
// would not run or show.
func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		sh        int
		err       string
	}{
		{name: "sh and text", doc: "## A\n```sh\necho a\n```\n```text\nout\n```\n## B\n```sh\necho b\n```\n", sh: 2},
		{name: "bash", doc: "```bash\necho a\n```\n", err: `"bash"`},
		{name: "console", doc: "```console\n$ echo a\n```\n", err: `"console"`},
		{name: "no language", doc: "```\necho a\n```\n", err: `""`},
		{name: "indented", doc: "- item\n  ```sh\n  echo a\n  ```\n", err: "indented"},
		{name: "unclosed", doc: "```sh\necho a\n", err: "never closes"},
		{name: "nested", doc: "```sh\necho a\n```sh\n```\n", err: "inside"},
		{name: "tilde", doc: "~~~sh\necho a\n~~~\n", err: "~~~"},
		{name: "trailing space", doc: "```sh \necho a\n```\n", err: `"sh "`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blocks, err := parse(tc.doc)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one containing %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, b := range blocks {
				if b.lang == "sh" {
					n++
				}
			}
			if n != tc.sh || blocks[0].section != "A" || blocks[2].section != "B" || blocks[2].text != "echo b\n" {
				t.Fatalf("blocks: %+v", blocks)
			}
		})
	}
}
