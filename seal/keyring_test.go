package seal

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/zalando/go-keyring"
)

// The keyring seal against a real Secret Service (gnome-keyring) runs when
// RV_TEST_KEYRING=1, which the test script sets inside
//
//	dbus-run-session -- sh -c 'printf pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null; RV_TEST_KEYRING=1 go test ./seal/ -run Keyring -v'
//
// With CI=true and no RV_TEST_KEYRING those tests fail instead of skipping.
// Unit tests use a fake backend held by the provider, never
// keyring.MockInit (a process-wide swap).

func requireKeyring(t testing.TB) {
	t.Helper()
	if os.Getenv("RV_TEST_KEYRING") == "1" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true but RV_TEST_KEYRING is not 1: run the keyring tests inside dbus-run-session with gnome-keyring-daemon (see keyring_test.go)")
	}
	t.Skip("set RV_TEST_KEYRING=1 inside dbus-run-session with gnome-keyring-daemon --unlock --components=secrets to run against a real keyring")
}

func deleteKeyringItem(t testing.TB, vaultPath string) {
	user, err := KeyringUser(vaultPath)
	if err != nil {
		t.Error(err)
		return
	}
	if err := keyring.Delete(KeyringService, user); err != nil && !errors.Is(err, keyring.ErrNotFound) {
		t.Errorf("cleanup: %v", err)
	}
}

func TestKeyringRealRoundTrip(t *testing.T) {
	requireKeyring(t)
	env := Env{VaultPath: filepath.Join(t.TempDir(), "agent-vault.json")}
	t.Cleanup(func() { deleteKeyringItem(t, env.VaultPath) })

	s, st, err := (&keyringProvider{}).Create(env)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if st.Kind != KindKeyring || !strings.HasPrefix(st.Recipient, "age1") {
		t.Fatalf("state %+v", st)
	}
	file := encryptTo(t, secretPayload, recipientOf(t, s))
	loaded, err := Load(Env{}, st)
	if err != nil {
		t.Fatal(err)
	}
	got, err := openVia(loaded, file)
	if err != nil || !bytes.Equal(got, secretPayload) {
		t.Fatalf("decrypt: %q, %v", got, err)
	}

	// Create again for the same vault reuses the item, never overwrites it.
	_, st2, err := (&keyringProvider{}).Create(env)
	if err != nil || st2.Recipient != st.Recipient {
		t.Fatalf("second Create: %v, recipient %s, want %s", err, st2.Recipient, st.Recipient)
	}

	// The item is where the documentation says: secret-tool finds it.
	user, _ := KeyringUser(env.VaultPath)
	if out, err := exec.Command("secret-tool", "lookup", "service", KeyringService, "username", user).Output(); err == nil {
		if !strings.HasPrefix(string(out), "AGE-SECRET-KEY-1") {
			t.Errorf("secret-tool lookup: not an age identity")
		}
	} else {
		t.Logf("secret-tool not usable (%v); skipped that check", err)
	}

	// A deleted item: a clear error that names the recovery.
	deleteKeyringItem(t, env.VaultPath)
	_, err = loaded.Identity()
	if err == nil || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "vault rekey --identity RECOVERY_KEY") {
		t.Fatalf("missing item: err = %v", err)
	}
}

// TestKeyringUnavailableNoBus points DBUS_SESSION_BUS_ADDRESS at a socket that
// does not exist. godbus caches the session bus connection process-wide, so
// the check runs in a child process with that environment.
func TestKeyringUnavailableNoBus(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the Secret Service backend is Linux's")
	}
	if os.Getenv("RV_KEYRING_NOBUS_CHILD") == "1" {
		_, _, err := (&keyringProvider{}).Create(Env{VaultPath: filepath.Join(t.TempDir(), "v.json")})
		checkKeyringUnavailable(t, err)
		t.Logf("error: %v", err)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestKeyringUnavailableNoBus$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(),
		"RV_KEYRING_NOBUS_CHILD=1",
		"DBUS_SESSION_BUS_ADDRESS=unix:path="+filepath.Join(t.TempDir(), "no-such-bus"))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestKeyringUnavailableNoBus") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
}

func checkKeyringUnavailable(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	for _, want := range []string{"no OS keyring reachable", "--seal tpm2", "--seal identity"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// fakeKeyring is an in-memory backend for unit tests.
type fakeKeyring struct {
	mu    sync.Mutex
	items map[string]string
	err   error         // returned by every call when set
	delay time.Duration // before answering
}

func (f *fakeKeyring) Get(service, user string) (string, error) {
	time.Sleep(f.delay)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return "", f.err
	}
	s, ok := f.items[service+"/"+user]
	if !ok {
		return "", keyring.ErrNotFound
	}
	return s, nil
}

func (f *fakeKeyring) Set(service, user, secret string) error {
	time.Sleep(f.delay)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	if f.items == nil {
		f.items = map[string]string{}
	}
	f.items[service+"/"+user] = secret
	return nil
}

func TestKeyringFake(t *testing.T) {
	t.Parallel()
	kr := &fakeKeyring{}
	p := &keyringProvider{kr: kr}
	env := Env{VaultPath: filepath.Join(t.TempDir(), "agent-vault.json")}
	s, st, err := p.Create(env)
	if err != nil {
		t.Fatal(err)
	}
	user, _ := KeyringUser(env.VaultPath)
	secret := kr.items[KeyringService+"/"+user]
	if !strings.HasPrefix(secret, "AGE-SECRET-KEY-1") {
		t.Fatalf("item under %s: not an identity", user)
	}
	file := encryptTo(t, secretPayload, recipientOf(t, s))
	loaded, err := p.Load(Env{}, st)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := openVia(loaded, file); err != nil || !bytes.Equal(got, secretPayload) {
		t.Fatalf("decrypt: %v", err)
	}
	if d := strings.Join(p.Describe(st), "\n"); !strings.Contains(d, user) || !strings.Contains(d, KeyringService) {
		t.Errorf("Describe: %s", d)
	}

	// Same path, same item; another path, another item.
	if _, st2, _ := p.Create(env); st2.Recipient != st.Recipient {
		t.Error("Create replaced an existing item")
	}
	if _, st3, _ := p.Create(Env{VaultPath: env.VaultPath + ".other"}); st3.Recipient == st.Recipient {
		t.Error("two vaults share an item")
	}

	var errs []error
	// An item replaced by another key.
	other, _ := age.GenerateX25519Identity()
	kr.items[KeyringService+"/"+user] = other.String()
	_, err = loaded.Identity()
	if err == nil || !strings.Contains(err.Error(), "not the key this vault was sealed to") {
		t.Errorf("replaced item: %v", err)
	}
	errs = append(errs, err)
	// Garbage in the item: no echo of it in the error.
	kr.items[KeyringService+"/"+user] = "AGE-SECRET-KEY-1GARBAGEGARBAGE"
	_, err = loaded.Identity()
	if err == nil {
		t.Error("garbage item accepted")
	}
	errs = append(errs, err)
	_, _, err = p.Create(env)
	if err == nil || !strings.Contains(err.Error(), "secret-tool clear") {
		t.Errorf("Create over a garbage item: %v", err)
	}
	errs = append(errs, err)
	// Missing.
	delete(kr.items, KeyringService+"/"+user)
	_, err = loaded.Identity()
	if err == nil || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "--seal keyring") {
		t.Errorf("missing item: %v", err)
	}
	errs = append(errs, err)
	for _, e := range errs {
		if e == nil {
			continue
		}
		for _, s := range []string{secret, other.String(), "GARBAGEGARBAGE"} {
			for i := 0; i+17 <= len(s); i++ {
				if strings.Contains(e.Error(), s[i:i+17]) {
					t.Fatalf("error %q quotes the keyring item", e)
				}
			}
		}
	}
}

func TestKeyringFakeUnavailable(t *testing.T) {
	t.Parallel()
	env := Env{VaultPath: filepath.Join(t.TempDir(), "v.json")}
	_, _, err := (&keyringProvider{kr: &fakeKeyring{err: errors.New("The name org.freedesktop.secrets was not provided by any .service files")}}).Create(env)
	checkKeyringUnavailable(t, err)

	_, _, err = (&keyringProvider{kr: &fakeKeyring{delay: time.Second}, timeout: 20 * time.Millisecond}).Create(env)
	checkKeyringUnavailable(t, err)

	if _, _, err := (&keyringProvider{kr: &fakeKeyring{}}).Create(Env{}); err == nil {
		t.Error("Create without a vault path")
	}
	if _, err := (&keyringProvider{}).Load(Env{}, State{Kind: KindKeyring, Data: []byte(`{"service":"x","user":"vault:1"}`)}); err == nil {
		t.Error("Load accepted another service's item")
	}
}
