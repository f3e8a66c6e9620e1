package main_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"filippo.io/age"
	"filippo.io/age/armor"

	"github.com/rapidvalue/tier3-agent/internal/hostvault"
	"github.com/rapidvalue/tier3-agent/internal/testbin"
	"github.com/rapidvalue/tier3-agent/seal"
	"github.com/rapidvalue/tier3-agent/vault"
)

// benchVault writes a sealed vault of 1,000 entries × 3 fields with the
// identity seal, and returns its folder.
func benchVault(b *testing.B) (dir, vaultPath, keyPath string) {
	b.Helper()
	dir = b.TempDir()
	vaultPath, keyPath = filepath.Join(dir, "vault.json"), filepath.Join(dir, "host.key")
	var doc bytes.Buffer
	doc.WriteString("{")
	for i := 0; i < 1000; i++ {
		if i > 0 {
			doc.WriteString(",")
		}
		fmt.Fprintf(&doc, `"connector-%04d": {"client_id": "client-%04d", "client_secret": "secret-%04d-0123456789abcdef0123456789", "refresh_token": "refresh-%04d-0123456789abcdef0123456789abcdef"}`, i, i, i, i)
	}
	doc.WriteString("}")
	os.WriteFile(vaultPath, doc.Bytes(), 0o600)
	opts := hostvault.Options{Path: vaultPath, Env: seal.Env{VaultPath: vaultPath, IdentityFile: keyPath}}
	if _, _, err := hostvault.SealPlaintext(opts, seal.KindIdentity, nil); err != nil {
		b.Fatal(err)
	}
	return dir, vaultPath, keyPath
}

// BenchmarkOpenVault1000x3 opens and parses the vault in process (ours:
// decrypt into locked memory, strict parse into enclaves) next to upstream
// age.Decrypt + encoding/json on the same file, and then the two command
// lines: `tier3-agent vault list` and `age -d`, as whole processes.
func BenchmarkOpenVault1000x3(b *testing.B) {
	_, vp, kp := benchVault(b)
	id, err := seal.ReadIdentityFile(kp)
	if err != nil {
		b.Fatal(err)
	}
	data, _ := os.ReadFile(vp)
	b.Run("tier3-agent/in-process", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			v, _, err := vault.Open(vp, false, id)
			if err != nil || v.Len() != 1000 {
				b.Fatal(err)
			}
		}
	})
	b.Run("upstream-age+encoding-json/in-process", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r, err := age.Decrypt(armor.NewReader(bytes.NewReader(data)), id)
			if err != nil {
				b.Fatal(err)
			}
			pt, _ := io.ReadAll(r)
			var m map[string]map[string]string
			if err := jsonUnmarshal(pt, &m); err != nil || len(m) != 1000 {
				b.Fatal(err)
			}
		}
	})
	bin := testbin.Agent(b)
	ageBin := testbin.Tool(b, "age")
	b.Run("tier3-agent-vault-list/process", func(b *testing.B) {
		for b.Loop() {
			cmd := exec.Command(bin, "vault", "list", "--json", "--vault", vp, "--identity", kp)
			if err := cmd.Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("age-d/process", func(b *testing.B) {
		for b.Loop() {
			cmd := exec.Command(ageBin, "-d", "-i", kp, vp)
			if err := cmd.Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
