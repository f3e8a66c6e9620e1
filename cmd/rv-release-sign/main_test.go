package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

type result struct {
	code           int
	stdout, stderr string
}

func runCmd(env map[string]string, args ...string) result {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb, func(k string) string { return env[k] })
	return result{code, out.String(), errb.String()}
}

func newKey(t *testing.T) (key string, pub ed25519.PublicKey) {
	t.Helper()
	key = filepath.Join(t.TempDir(), "release.key")
	r := runCmd(nil, "keygen", "-key", key)
	if r.code != 0 {
		t.Fatalf("keygen: %d %s", r.code, r.stderr)
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(r.stdout))
	if err != nil || len(b) != ed25519.PublicKeySize {
		t.Fatalf("keygen printed %q", r.stdout)
	}
	return key, b
}

// privateKeyRuns returns every 12-character run of the key file's base64
// body: none may appear in any output.
func privateKeyRuns(t *testing.T, key string) []string {
	data, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	var body string
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(l, "-----") {
			body += l
		}
	}
	var runs []string
	for i := 0; i+12 <= len(body); i++ {
		runs = append(runs, body[i:i+12])
	}
	return runs
}

func TestKeygen(t *testing.T) {
	key, pub := newKey(t)
	info, err := os.Stat(key)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v %v", info.Mode().Perm(), err)
	}
	p, _ := os.ReadFile(key + ".pub")
	if strings.TrimSpace(string(p)) != base64.StdEncoding.EncodeToString(pub) {
		t.Fatal(".pub differs")
	}
	if r := runCmd(nil, "pubkey", "-key", key); r.code != 0 || strings.TrimSpace(r.stdout) != base64.StdEncoding.EncodeToString(pub) {
		t.Fatalf("pubkey: %+v", r)
	}
	before, _ := os.ReadFile(key)
	r := runCmd(nil, "keygen", "-key", key)
	if r.code != 1 || !strings.Contains(r.stderr, "never overwrites") {
		t.Fatalf("second keygen: %+v", r)
	}
	if after, _ := os.ReadFile(key); !bytes.Equal(before, after) {
		t.Fatal("the key was overwritten")
	}
	os.Chmod(key, 0o644)
	if r := runCmd(nil, "pubkey", "-key", key); !strings.Contains(r.stderr, "readable by others") {
		t.Fatalf("no warning: %+v", r)
	}
	for _, run := range privateKeyRuns(t, key) {
		if strings.Contains(r.stdout+r.stderr, run) {
			t.Fatal("the private key was printed")
		}
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{}, {"nope"}, {"keygen"}, {"sign", "-key", "k"},
		{"sign", "-key", "k", "-binary", "b", "-version", "1.0.0"},
		{"sign", "-key", "k", "-binary", "b", "-version", "1.0.0", "-admin", "https://x", "-manifests", "m"},
		{"sign", "-key", "k", "-binary", "b", "-version", "1.0.0", "-manifests", "m"},
		{"sign", "-key", "k", "-binary", "b", "-version", "one", "-manifests", "m", "-out", "o"},
	} {
		if r := runCmd(nil, args...); r.code != 2 || !strings.HasPrefix(r.stderr, "rv-release-sign: error: ") {
			t.Errorf("%v: %+v", args, r)
		}
	}
}

// release writes a "binary" and returns its path, size and sha256.
func release(t *testing.T, content string) (string, int64, string) {
	p := filepath.Join(t.TempDir(), "tier3-agent")
	os.WriteFile(p, []byte(content), 0o755)
	s := sha256.Sum256([]byte(content))
	return p, int64(len(content)), hex.EncodeToString(s[:])
}

func TestSignOffline(t *testing.T) {
	key, pub := newKey(t)
	bin, size, sum := release(t, "the vetted release binary")
	dir := t.TempDir()
	in, out := filepath.Join(dir, "manifests.json"), filepath.Join(dir, "sigs.json")
	ms := manifestsFile{}
	for _, id := range []string{"agt_a", "agt_b"} {
		ms.Manifests = append(ms.Manifests, controlplane.AgentManifest{AgentID: id, Manifest: string(wire.UpdateManifest(id, "2.0.0", "linux", "amd64", size, sum))})
	}
	data, _ := json.Marshal(ms)
	os.WriteFile(in, data, 0o644)
	r := runCmd(nil, "sign", "-key", key, "-binary", bin, "-version", "2.0.0", "-os", "linux", "-arch", "amd64", "-manifests", in, "-out", out)
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	var sigs controlplane.SignaturesRequest
	b, _ := os.ReadFile(out)
	if err := json.Unmarshal(b, &sigs); err != nil || len(sigs.Signatures) != 2 {
		t.Fatalf("%s %v", b, err)
	}
	for _, m := range ms.Manifests {
		sig, _ := base64.StdEncoding.DecodeString(sigs.Signatures[m.AgentID])
		if !ed25519.Verify(pub, []byte(m.Manifest), sig) {
			t.Fatalf("the signature for %s does not verify", m.AgentID)
		}
	}
	if r := runCmd(nil, "sign", "-key", key, "-binary", bin, "-version", "2.0.0", "-os", "linux", "-arch", "amd64", "-manifests", in, "-out", out); r.code != 1 {
		t.Fatalf("wrote over %s: %+v", out, r)
	}
}

// The signer signs only the binary it was given, whatever the control
// plane lists: a manifest of another binary, version or platform is
// refused, and nothing is signed.
func TestSignRefusesOtherManifests(t *testing.T) {
	key, _ := newKey(t)
	bin, size, sum := release(t, "the vetted release binary")
	_, otherSize, otherSum := release(t, "a binary the control plane made")
	for _, tc := range []struct {
		name, manifest string
	}{
		{"another binary", string(wire.UpdateManifest("agt_a", "2.0.0", "linux", "amd64", otherSize, otherSum))},
		{"another version", string(wire.UpdateManifest("agt_a", "2.0.1", "linux", "amd64", size, sum))},
		{"another arch", string(wire.UpdateManifest("agt_a", "2.0.0", "linux", "arm64", size, sum))},
		{"another agent", string(wire.UpdateManifest("agt_b", "2.0.0", "linux", "amd64", size, sum))},
		{"trailing bytes", string(wire.UpdateManifest("agt_a", "2.0.0", "linux", "amd64", size, sum)) + "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			in, out := filepath.Join(dir, "m.json"), filepath.Join(dir, "s.json")
			data, _ := json.Marshal(manifestsFile{Manifests: []controlplane.AgentManifest{{AgentID: "agt_a", Manifest: tc.manifest}}})
			os.WriteFile(in, data, 0o644)
			r := runCmd(nil, "sign", "-key", key, "-binary", bin, "-version", "2.0.0", "-os", "linux", "-arch", "amd64", "-manifests", in, "-out", out)
			if r.code != 1 || !strings.Contains(r.stderr, "refusing to sign") {
				t.Fatalf("%+v", r)
			}
			if _, err := os.Stat(out); err == nil {
				t.Fatal("signatures were written")
			}
			for _, run := range privateKeyRuns(t, key) {
				if strings.Contains(r.stdout+r.stderr, run) {
					t.Fatal("the private key was printed")
				}
			}
		})
	}
}

// Against the reference control plane, which checks every signature with
// the release public key it is configured with.
func TestSignThroughAdminAPI(t *testing.T) {
	key, pub := newKey(t)
	cp, err := controlplane.Start(controlplane.Config{ReleasePublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	ctx := context.Background()
	tok, err := cp.Admin.CreateToken(ctx, controlplane.CreateTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// An agent registers (the manifests name each agent).
	body := `{"hostname":"h","version":"1.0.0","os":"linux","arch":"amd64","methods":[],"vault":{"sealed":true,"seal":"identity","entries":0}}`
	req, _ := http.NewRequest("POST", cp.URL+wire.APIPrefix+"/register", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := cp.Client(nil).Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("register: %v %v", resp, err)
	}
	resp.Body.Close()
	bin, _, _ := release(t, "the vetted release binary")
	data, _ := os.ReadFile(bin)
	if _, err := cp.Admin.PublishRelease(ctx, "2.0.0", "linux", "amd64", data); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, cp.CAPEM(), 0o600)
	args := []string{"sign", "-key", key, "-binary", bin, "-version", "2.0.0", "-os", "linux", "-arch", "amd64", "-admin", cp.AdminURL, "-admin-ca", ca}
	if r := runCmd(nil, args...); r.code != 2 || !strings.Contains(r.stderr, "RV_ADMIN_TOKEN") {
		t.Fatalf("without a token: %+v", r)
	}
	r := runCmd(map[string]string{"RV_ADMIN_TOKEN": cp.AdminToken}, args...)
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	rels, err := cp.Admin.Releases(ctx)
	if err != nil || len(rels) != 1 || len(rels[0].SignedFor) != 1 {
		t.Fatalf("%+v %v", rels, err)
	}
	if strings.Contains(r.stdout+r.stderr, cp.AdminToken) {
		t.Fatal("the admin token was printed")
	}
}
