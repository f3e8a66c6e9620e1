package main_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

// Known secrets. Every test that runs a command checks that none of them,
// raw or encoded, appears in anything the command printed.
var secrets = []string{
	"Sf-Client-Secret-7Hq2Lx9Vb4Nm",
	"Refresh.Token/9aB+xY==_zz-Q1",
	"LdapBindPassw0rd!#%&",
	"AgentToken-5kJ8rT2wQ6pL",
	"passphrase-for-tests-Zx81",
}

type result struct {
	stdout, stderr string
	code           int
}

type harness struct {
	t       *testing.T
	dir     string
	vars    map[string]string
	outputs []string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	h := &harness{t: t, dir: dir, vars: map[string]string{
		"RV_AGENT_VAULT_PATH":          filepath.Join(dir, "vault.json"),
		"RV_AGENT_VAULT_IDENTITY_FILE": filepath.Join(dir, "host.key"),
		"XDG_RUNTIME_DIR":              "",
	}}
	t.Cleanup(func() { h.assertNoSecretPrinted() })
	return h
}

func (h *harness) path(name string) string { return filepath.Join(h.dir, name) }

func (h *harness) run(stdin string, args ...string) result {
	h.t.Helper()
	cmd := exec.Command(testbin.Agent(h.t), args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + h.dir}
	for k, v := range h.vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		h.t.Fatalf("running %v: %v", args, err)
	}
	h.outputs = append(h.outputs, r.stdout, r.stderr)
	return r
}

// must runs a command that has to succeed.
func (h *harness) must(stdin string, args ...string) result {
	h.t.Helper()
	r := h.run(stdin, args...)
	if r.code != 0 {
		h.t.Fatalf("%v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r
}

// fails runs a command that has to exit with code and say want on stderr,
// in one error line.
func (h *harness) fails(code int, want string, stdin string, args ...string) result {
	h.t.Helper()
	r := h.run(stdin, args...)
	if r.code != code {
		h.t.Fatalf("%v: exit %d, want %d\nstderr: %s", args, r.code, code, r.stderr)
	}
	if !strings.Contains(r.stderr, want) {
		h.t.Fatalf("%v: stderr does not say %q:\n%s", args, want, r.stderr)
	}
	if !strings.HasPrefix(r.stderr, "tier3-agent: error: ") && !strings.Contains(r.stderr, "\ntier3-agent: error: ") {
		h.t.Fatalf("%v: no 'tier3-agent: error:' line:\n%s", args, r.stderr)
	}
	for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		if strings.HasPrefix(l, "tier3-agent: error: ") && strings.Contains(l, "panic") {
			h.t.Fatalf("panic: %s", l)
		}
	}
	return r
}

func encodings(s string) []string {
	return []string{
		s,
		base64.StdEncoding.EncodeToString([]byte(s)),
		base64.RawStdEncoding.EncodeToString([]byte(s)),
		base64.URLEncoding.EncodeToString([]byte(s)),
		base64.RawURLEncoding.EncodeToString([]byte(s)),
		url.QueryEscape(s),
		url.PathEscape(s),
	}
}

func (h *harness) assertNoSecretPrinted() {
	all := strings.Join(h.outputs, "\n")
	for _, s := range secrets {
		for _, enc := range encodings(s) {
			if strings.Contains(all, enc) {
				h.t.Errorf("a secret (%d bytes) appeared in command output", len(s))
			}
		}
	}
}

// assertNoPlaintextOnDisk checks every file in the folder except those
// named in allowed: none may hold a secret.
func (h *harness) assertNoPlaintextOnDisk(allowed ...string) {
	h.t.Helper()
	filepath.Walk(h.dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		for _, a := range allowed {
			if p == a {
				return nil
			}
		}
		data, _ := os.ReadFile(p)
		for _, s := range secrets {
			if bytes.Contains(data, []byte(s)) {
				h.t.Errorf("%s holds a secret in plaintext", p)
			}
		}
		return nil
	})
}

func (h *harness) populate() {
	h.t.Helper()
	h.must(secrets[0]+"\n", "vault", "set", "salesforce-prod", "client_secret", "--version", "3")
	h.must(secrets[1], "vault", "set", "salesforce-prod", "refresh_token")
	h.must("3MVG9-client-id", "vault", "set", "salesforce-prod", "client_id")
	h.must(secrets[2], "vault", "set", "--vault", h.vars["RV_AGENT_VAULT_PATH"], "ldap-corp", "bind_password")
	h.must(secrets[3], "vault", "set", "_agent", "token")
	h.must("", "vault", "bind", "salesforce-prod", "https://acme.my.salesforce.com", "https://login.salesforce.com")
}

func unsealJSON(t *testing.T, h *harness, extra ...string) map[string]any {
	t.Helper()
	out := h.path("plain-" + strings.ReplaceAll(t.Name(), "/", "_") + ".json")
	os.Remove(out)
	h.must("", append([]string{"vault", "unseal", "--out", out}, extra...)...)
	fi, err := os.Stat(out)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("unsealed file mode: %v %v", fi.Mode(), err)
	}
	data, _ := os.ReadFile(out)
	os.Remove(out)
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("unsealed file is not JSON: %v", err)
	}
	return m
}

func TestIdentitySealRoundTrip(t *testing.T) {
	h := newHarness(t)
	h.must("", "vault", "init", "--seal", "identity")
	if fi, err := os.Stat(h.vars["RV_AGENT_VAULT_IDENTITY_FILE"]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v", err)
	}
	h.populate()
	h.assertNoPlaintextOnDisk()
	m := unsealJSON(t, h)
	sf := m["salesforce-prod"].(map[string]any)
	if sf["client_secret"].(map[string]any)["v3"] != secrets[0] || sf["refresh_token"] != secrets[1] {
		t.Fatalf("values lost: %v", len(sf))
	}
	if m["_agent"].(map[string]any)["token"] != secrets[3] {
		t.Fatal("_agent token lost")
	}
	list := h.must("", "vault", "list", "--json").stdout
	for _, want := range []string{`"salesforce-prod"`, `"client_secret"`, `3`, `"https://login.salesforce.com"`, `"ldap-corp"`} {
		if !strings.Contains(list, want) {
			t.Errorf("list --json lacks %s", want)
		}
	}
	st := h.must("", "vault", "status").stdout
	for _, want := range []string{"seal:", "identity", "no recovery recipient", "entry ldap-corp is unbound"} {
		if !strings.Contains(st, want) {
			t.Errorf("status lacks %q:\n%s", want, st)
		}
	}
	h.must("", "vault", "unset", "salesforce-prod", "refresh_token")
	h.must("", "vault", "unset", "ldap-corp")
	m = unsealJSON(t, h)
	if _, ok := m["ldap-corp"]; ok {
		t.Fatal("unset entry still there")
	}
	// init never overwrites.
	h.fails(1, "never overwrites", "", "vault", "init", "--seal", "identity")
}

func TestPassphraseSealRoundTrip(t *testing.T) {
	h := newHarness(t)
	pf := h.path("pass")
	os.WriteFile(pf, []byte(secrets[4]+"\n"), 0o600)
	h.vars["RV_AGENT_VAULT_PASSPHRASE_FILE"] = pf
	delete(h.vars, "RV_AGENT_VAULT_IDENTITY_FILE")
	h.must("", "vault", "init", "--seal", "passphrase")
	h.must(secrets[2], "vault", "set", "ldap-corp", "bind_password")
	if m := unsealJSON(t, h); m["ldap-corp"].(map[string]any)["bind_password"] != secrets[2] {
		t.Fatal("value lost")
	}
	h.assertNoPlaintextOnDisk(pf)
	// A wrong passphrase exits 78 and says so.
	os.WriteFile(pf, []byte("wrong-passphrase\n"), 0o600)
	h.fails(78, "wrong passphrase", "", "vault", "list")
	// scrypt stands alone.
	h.fails(78, "stands alone", "", "vault", "init", "--vault", h.path("other.json"), "--seal", "passphrase", "--recipient", "age1ugs0r8dcp5znjycc878k2ctsa5gjv3588d3nf862a63dlp7a5s5s6rzcsa")
}

func TestWrongIdentityExits78(t *testing.T) {
	h := newHarness(t)
	h.must("", "vault", "init", "--seal", "identity")
	h.populate()
	// Replace the host key with another: the seal no longer opens it.
	os.Remove(h.vars["RV_AGENT_VAULT_IDENTITY_FILE"])
	other := newHarness(t)
	other.must("", "vault", "recipient", "--seal", "identity")
	data, _ := os.ReadFile(other.vars["RV_AGENT_VAULT_IDENTITY_FILE"])
	os.WriteFile(h.vars["RV_AGENT_VAULT_IDENTITY_FILE"], data, 0o600)
	h.fails(78, "does not open the vault", "", "vault", "list")
	h.fails(78, "does not open the vault", "", "vault", "list", "--identity", other.vars["RV_AGENT_VAULT_IDENTITY_FILE"])
	h.fails(78, "no valid age identity", "", "vault", "list", "--identity", h.path("vault.json.seal"))
}

// TestUpstreamAgeInterop: upstream age decrypts our vault with the recovery
// key, and a vault that upstream age encrypted to the host opens here.
func TestUpstreamAgeInterop(t *testing.T) {
	ageBin := testbin.Tool(t, "age")
	keygen := testbin.Tool(t, "age-keygen")
	h := newHarness(t)
	rk := h.path("recovery.key")
	if out, err := exec.Command(keygen, "-o", rk).CombinedOutput(); err != nil {
		t.Fatalf("age-keygen: %v %s", err, out)
	}
	rr, err := exec.Command(keygen, "-y", rk).Output()
	if err != nil {
		t.Fatal(err)
	}
	recovery := strings.TrimSpace(string(rr))
	h.must("", "vault", "init", "--seal", "identity", "--recipient", recovery)
	h.populate()
	out, err := exec.Command(ageBin, "-d", "-i", rk, h.vars["RV_AGENT_VAULT_PATH"]).Output()
	if err != nil {
		t.Fatalf("age -d: %v", err)
	}
	var m map[string]map[string]any
	if err := json.Unmarshal(out, &m); err != nil || m["ldap-corp"]["bind_password"] != secrets[2] {
		t.Fatalf("age -d output is not the vault JSON: %v", err)
	}
	// The recovery key opens it through the agent too.
	h.must("", "vault", "list", "--identity", rk)

	// Upstream age encrypts a plaintext vault to this host's recipient.
	host := strings.TrimSpace(h.must("", "vault", "recipient").stdout)
	plain := h.path("plain-in.json")
	os.WriteFile(plain, []byte(`{"svc": {"password": "`+secrets[2]+`"}}`), 0o600)
	sealed := h.path("upstream.age")
	if out, err := exec.Command(ageBin, "-a", "-r", host, "-o", sealed, plain).CombinedOutput(); err != nil {
		t.Fatalf("age -a -r: %v %s", err, out)
	}
	os.Remove(plain)
	os.Rename(sealed, h.vars["RV_AGENT_VAULT_PATH"])
	if m := unsealJSON(t, h); m["svc"].(map[string]any)["password"] != secrets[2] {
		t.Fatal("upstream-encrypted vault did not open")
	}
}

func TestMigration(t *testing.T) {
	h := newHarness(t)
	vp := h.vars["RV_AGENT_VAULT_PATH"]
	plain := `{"salesforce-prod": {"client_id": "3MVG9", "client_secret": "` + secrets[0] + `", "refresh_token": "` + secrets[1] + `"},
 "ldap-corp": {"bind_dn": "cn=svc-rapidvalue,ou=service,dc=corp,dc=local", "bind_password": "` + secrets[2] + `"}}`
	os.WriteFile(vp, []byte(plain), 0o600)
	// A control plane that speaks plain HTTP on its port: the agent gets
	// past the vault, then fails TLS at once (exit 78) instead of retrying.
	notTLS := httptest.NewServer(http.NotFoundHandler())
	defer notTLS.Close()
	h.vars["RV_CONTROL_PLANE_URL"] = strings.Replace(notTLS.URL, "http://", "https://", 1)
	h.vars["RV_AGENT_TOKEN"] = "test-token-0123456789"
	h.vars["RV_AGENT_UPDATE_KEY"] = strings.Repeat("k", 32)
	h.vars["RV_AGENT_SELF_UPDATE"] = "0"
	r := h.fails(78, "tier3-agent vault seal", "", "run")
	if !strings.Contains(r.stderr, "RV_AGENT_VAULT_MODE=migrate") {
		t.Errorf("the refusal does not name migration mode: %s", r.stderr)
	}
	h.vars["RV_AGENT_VAULT_MODE"] = "migrate"
	r = h.run("", "run")
	if !strings.Contains(r.stderr, "warning: running on the plaintext vault") || strings.Contains(r.stderr, "seal it with tier3-agent vault seal (or set") {
		t.Fatalf("migration mode did not accept the plaintext vault: %d %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "TLS") {
		t.Fatalf("migration mode did not go on to the control plane: %s", r.stderr)
	}
	delete(h.vars, "RV_AGENT_VAULT_MODE")
	// list and status describe a plaintext vault; set refuses to write one.
	if st := h.must("", "vault", "status").stdout; !strings.Contains(st, "plaintext") {
		t.Fatal("status does not say plaintext")
	}
	h.fails(78, "vault seal", "x", "vault", "set", "a", "b")

	h.must("", "vault", "seal", "--seal", "identity")
	h.assertNoPlaintextOnDisk()
	var want, got any
	json.Unmarshal([]byte(plain), &want)
	got = unsealJSON(t, h)
	wj, _ := json.Marshal(want)
	gj, _ := json.Marshal(got)
	if !bytes.Equal(wj, gj) {
		t.Fatalf("seal/unseal changed the vault:\n%s\n%s", wj, gj)
	}
	h.fails(78, "already sealed", "", "vault", "seal")
	h.vars["RV_AGENT_VAULT_MODE"] = "bogus"
	h.fails(78, "RV_AGENT_VAULT_MODE must be", "", "run")
}

func TestMigrationRefusesInvalidPlaintext(t *testing.T) {
	h := newHarness(t)
	vp := h.vars["RV_AGENT_VAULT_PATH"]
	bad := `{"svc": {"password": "` + secrets[2] + `", "password": "dup"}}`
	os.WriteFile(vp, []byte(bad), 0o600)
	h.fails(78, `duplicate field "password"`, "", "vault", "seal", "--seal", "identity")
	if data, _ := os.ReadFile(vp); string(data) != bad {
		t.Fatal("a refused seal changed the file")
	}
}

func TestRekeyWithRecoveryAfterLostSeal(t *testing.T) {
	keygen := testbin.Tool(t, "age-keygen")
	h := newHarness(t)
	rk := h.path("recovery.key")
	exec.Command(keygen, "-o", rk).Run()
	rr, _ := exec.Command(keygen, "-y", rk).Output()
	h.must("", "vault", "init", "--seal", "identity", "--recipient", strings.TrimSpace(string(rr)))
	h.populate()
	// The host key is lost.
	os.Remove(h.vars["RV_AGENT_VAULT_IDENTITY_FILE"])
	h.fails(78, "identity file", "", "vault", "list")
	h.must("", "vault", "rekey", "--identity", rk, "--seal", "identity")
	if m := unsealJSON(t, h); m["ldap-corp"].(map[string]any)["bind_password"] != secrets[2] {
		t.Fatal("value lost in the rekey")
	}
	st := h.must("", "vault", "status", "--json").stdout
	var rep struct {
		Recipients []string `json:"recipients"`
		Warnings   []string `json:"warnings"`
	}
	json.Unmarshal([]byte(st), &rep)
	if len(rep.Recipients) != 1 {
		t.Fatalf("the recovery recipient was dropped: %v", rep.Recipients)
	}
}

// TestBadInput: every input surface gets one clear error line, the right
// exit code, and loses nothing.
func TestBadInput(t *testing.T) {
	h := newHarness(t)
	h.fails(2, "no command", "")
	h.fails(2, "unknown command", "", "frobnicate")
	h.fails(2, "unknown subcommand", "", "vault", "frobnicate")
	h.fails(2, "flag provided but not defined", "", "vault", "list", "--nope")
	h.fails(2, "wrong number of arguments", "", "vault", "set", "only-one")
	h.fails(78, "no vault at", "", "vault", "list")
	delete(h.vars, "RV_AGENT_VAULT_IDENTITY_FILE")
	h.fails(78, "name a seal", "", "vault", "init")
	h.vars["RV_AGENT_VAULT_IDENTITY_FILE"] = h.path("host.key")
	h.fails(78, "unknown seal", "", "vault", "init", "--seal", "nope")
	h.fails(78, "not an age recipient", "", "vault", "init", "--seal", "identity", "--recipient", secrets[0])
	h.fails(78, "private key", "", "vault", "init", "--seal", "identity", "--recipient", "AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0")
	h.must("", "vault", "init", "--seal", "identity")
	before, _ := os.ReadFile(h.vars["RV_AGENT_VAULT_PATH"])
	h.fails(1, "entry name", secrets[0], "vault", "set", "Bad_Name", "f")
	h.fails(1, "field name", secrets[0], "vault", "set", "svc", "_targets")
	h.fails(1, "empty value", "\n", "vault", "set", "svc", "f")
	h.fails(1, "not UTF-8", "\xff\xfe", "vault", "set", "svc", "f")
	h.fails(1, "longer than", strings.Repeat("x", 70000), "vault", "set", "svc", "f")
	h.fails(2, "--version takes", secrets[0], "vault", "set", "svc", "f", "--version", "1000000")
	h.fails(1, "no entry", "", "vault", "bind", "svc", "https://x")
	h.must(secrets[0], "vault", "set", "svc", "f")
	h.fails(1, "scheme must be", "", "vault", "bind", "svc", "http://x")
	h.fails(1, "no field", "", "vault", "unset", "svc", "nope")
	h.fails(2, "needs --out", "", "vault", "unseal")
	h.fails(2, "--tpm-pcrs", "", "vault", "rekey", "--seal", "identity", "--tpm-pcrs", "99")
	// A damaged vault file: one clear line, exit 78, file untouched.
	vp := h.vars["RV_AGENT_VAULT_PATH"]
	good, _ := os.ReadFile(vp)
	if bytes.Equal(good, before) {
		t.Fatal("set did not change the file")
	}
	damaged := bytes.Replace(good, []byte("\n"), []byte("\nAA"), 3)
	os.WriteFile(vp, damaged, 0o600)
	h.fails(78, "damaged", "", "vault", "list")
	os.WriteFile(vp, []byte("garbage"), 0o600)
	h.fails(78, "neither JSON nor an age file", "", "vault", "list")
	os.WriteFile(vp, nil, 0o600)
	h.fails(78, "is empty", "", "vault", "list")
	os.WriteFile(vp, good, 0o600)
	os.WriteFile(h.path("vault.json.seal"), []byte("{"), 0o600)
	h.fails(78, "seal file", "", "vault", "list")
	os.Remove(h.path("vault.json.seal"))
	h.fails(78, "no seal file", "", "vault", "list")
}

func TestVersion(t *testing.T) {
	h := newHarness(t)
	if v := strings.TrimSpace(h.must("", "version").stdout); v != "0.0.0-dev" {
		t.Fatalf("version = %q", v)
	}
}

func (h *harness) value(entry, field string) (string, bool) {
	h.t.Helper()
	out := h.path("check.json")
	os.Remove(out)
	h.must("", "vault", "unseal", "--out", out)
	defer os.Remove(out)
	data, _ := os.ReadFile(out)
	var m map[string]map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		h.t.Fatalf("unsealed vault is not JSON: %v", err)
	}
	v, ok := m[entry][field].(string)
	return v, ok
}
