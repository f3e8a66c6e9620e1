package seal

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/rapidvalue/tier3-agent/internal/swtpmtest"
)

// Unseal cost per seal: Identity() and the unwrap of one small vault, as the
// agent does at start and on SIGHUP. Run with
//
//	go test -run '^$' -bench Unseal ./seal/
//
// (the keyring one inside dbus-run-session with RV_TEST_KEYRING=1, see
// keyring_test.go).

func benchUnseal(b *testing.B, p Provider, env Env) {
	b.Helper()
	s, _, err := p.Create(env)
	if err != nil {
		b.Fatalf("Create: %v", err)
	}
	file := encryptTo(b, secretPayload, recipientOf(b, s))
	for b.Loop() {
		id, err := s.Identity()
		if err != nil {
			b.Fatal(err)
		}
		got, err := decrypt(file, id)
		if err != nil || !bytes.Equal(got, secretPayload) {
			b.Fatalf("decrypt: %v", err)
		}
	}
}

func BenchmarkUnsealTPM2Swtpm(b *testing.B) {
	sw := swtpmtest.Start(b)
	benchUnseal(b, &tpm2Provider{}, Env{TPMDevice: sw.Device})
}

func BenchmarkUnsealTPM2SwtpmPCR(b *testing.B) {
	sw := swtpmtest.Start(b)
	benchUnseal(b, &tpm2Provider{}, Env{TPMDevice: sw.Device, TPMPCRs: []int{0, 7, 16}})
}

func BenchmarkUnsealKeyring(b *testing.B) {
	requireKeyring(b)
	env := Env{VaultPath: filepath.Join(b.TempDir(), "vault.json")}
	b.Cleanup(func() { deleteKeyringItem(b, env.VaultPath) })
	benchUnseal(b, &keyringProvider{}, env)
}

func BenchmarkUnsealIdentity(b *testing.B) {
	benchUnseal(b, identityProvider{}, Env{IdentityFile: filepath.Join(b.TempDir(), "identity.txt")})
}
