package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/internal/swtpmtest"
	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

func recoveryKey(t *testing.T, h *harness) (keyPath, recipient string) {
	t.Helper()
	keygen := testbin.Tool(t, "age-keygen")
	keyPath = h.path("recovery.key")
	if out, err := exec.Command(keygen, "-o", keyPath).CombinedOutput(); err != nil {
		t.Fatalf("age-keygen: %v %s", err, out)
	}
	r, err := exec.Command(keygen, "-y", keyPath).Output()
	if err != nil {
		t.Fatal(err)
	}
	return keyPath, strings.TrimSpace(string(r))
}

// TestTPM2SealEndToEnd runs the real binary against swtpm: a vault sealed
// to TPM A opens on A only; on B (another host, or the files copied there)
// it fails with exit 78 and the recovery path; the recovery key opens it
// and re-seals it for B.
func TestTPM2SealEndToEnd(t *testing.T) {
	a, b := swtpmtest.Start(t), swtpmtest.Start(t)
	h := newHarness(t)
	delete(h.vars, "RV_AGENT_VAULT_IDENTITY_FILE")
	rk, rr := recoveryKey(t, h)
	h.vars["RV_AGENT_TPM_DEVICE"] = a.Device
	h.must("", "vault", "init", "--seal", "tpm2", "--recipient", rr)
	h.populate()
	st := h.must("", "vault", "status").stdout
	for _, want := range []string{"seal:", "tpm2", "age1tag1", "1 extra"} {
		if !strings.Contains(st, want) {
			t.Errorf("status lacks %q:\n%s", want, st)
		}
	}
	h.assertNoPlaintextOnDisk(rk)

	// The vault and its seal file copied to another host with TPM B.
	h.vars["RV_AGENT_TPM_DEVICE"] = b.Device
	r := h.fails(78, "rekey --identity", "", "vault", "list")
	if !strings.Contains(r.stderr, "tpm2") {
		t.Errorf("the error does not name the seal: %s", r.stderr)
	}
	h.must("", "vault", "list", "--identity", rk)
	h.must("", "vault", "rekey", "--identity", rk, "--seal", "tpm2")
	if v, ok := h.value("ldap-corp", "bind_password"); !ok || v != secrets[2] {
		t.Fatal("value lost in the rekey onto TPM B")
	}
	// Now A is the stranger.
	h.vars["RV_AGENT_TPM_DEVICE"] = a.Device
	h.fails(78, "rekey --identity", "", "vault", "list")
	// No TPM at all: a clear error naming the other seals.
	h.vars["RV_AGENT_TPM_DEVICE"] = filepath.Join(h.dir, "no-such-tpm")
	h.fails(78, "identity", "", "vault", "list")
}

// TestTPM2PCRChangeIsReported: a vault bound to PCR 16 stops opening when
// PCR 16 changes, with an error that says so and names the recovery path.
func TestTPM2PCRChangeIsReported(t *testing.T) {
	tpm := swtpmtest.Start(t)
	h := newHarness(t)
	delete(h.vars, "RV_AGENT_VAULT_IDENTITY_FILE")
	rk, rr := recoveryKey(t, h)
	h.vars["RV_AGENT_TPM_DEVICE"] = tpm.Device
	h.must("", "vault", "init", "--seal", "tpm2", "--tpm-pcrs", "16", "--recipient", rr)
	h.must(secrets[2], "vault", "set", "ldap-corp", "bind_password")
	if st := h.must("", "vault", "status").stdout; !strings.Contains(st, "16") {
		t.Errorf("status does not show the PCRs:\n%s", st)
	}
	tpm.ExtendPCR(t, 16)
	r := h.fails(78, "PCR", "", "vault", "list")
	if !strings.Contains(r.stderr, "rekey") {
		t.Errorf("the PCR error does not name the recovery path: %s", r.stderr)
	}
	h.must("", "vault", "rekey", "--identity", rk, "--seal", "tpm2", "--tpm-pcrs", "16")
	if v, ok := h.value("ldap-corp", "bind_password"); !ok || v != secrets[2] {
		t.Fatal("value lost")
	}
}

// TestKeyringSealEndToEnd needs the real gnome-keyring the test command
// starts (RV_TEST_KEYRING=1 inside dbus-run-session).
func TestKeyringSealEndToEnd(t *testing.T) {
	if os.Getenv("RV_TEST_KEYRING") != "1" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but no keyring session: scripts/test.sh runs the tests under dbus-run-session with gnome-keyring")
		}
		t.Skip("needs a gnome-keyring session (scripts/test.sh starts one)")
	}
	h := newHarness(t)
	delete(h.vars, "RV_AGENT_VAULT_IDENTITY_FILE")
	h.vars["DBUS_SESSION_BUS_ADDRESS"] = os.Getenv("DBUS_SESSION_BUS_ADDRESS")
	_, rr := recoveryKey(t, h)
	h.must("", "vault", "init", "--seal", "keyring", "--recipient", rr)
	h.populate()
	if v, ok := h.value("salesforce-prod", "refresh_token"); !ok || v != secrets[1] {
		t.Fatal("keyring round trip lost a value")
	}
	h.assertNoPlaintextOnDisk(h.path("recovery.key"))
	// The keyring goes away: exit 78 naming the seals that need none.
	h.vars["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=" + h.path("no-bus")
	r := h.fails(78, "tpm2", "", "vault", "list")
	if !strings.Contains(r.stderr, "identity") {
		t.Errorf("the error does not name the identity seal: %s", r.stderr)
	}
}
