package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadAgentDefaults(t *testing.T) {
	a, err := LoadAgent(envOf(map[string]string{"RV_CONTROL_PLANE_URL": "https://tenant.example.com/"}))
	if err != nil {
		t.Fatal(err)
	}
	if a.PollWait != 25*time.Second || a.HeartbeatInterval != 30*time.Second || a.ChunkSize != 500 ||
		a.Concurrency != 4 || !a.SelfUpdate || a.RequireBinding || a.StableAfter != time.Minute ||
		a.MaxResponse != 16<<20 || a.Vault.Path != DefaultVaultPath || a.AuditLog != "/opt/rapidvalue/audit.log" {
		t.Fatalf("defaults: %+v", a)
	}
	if a.ControlPlaneURL.String() != "https://tenant.example.com" {
		t.Fatalf("url %s", a.ControlPlaneURL)
	}
}

func TestLoadAgentRejects(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, []byte("x"), 0o600)
	base := map[string]string{"RV_CONTROL_PLANE_URL": "https://cp.example.com"}
	for _, tc := range []struct {
		name, key, val, want string
	}{
		{"no url", "RV_CONTROL_PLANE_URL", "", "required"},
		{"http url", "RV_CONTROL_PLANE_URL", "http://cp.example.com", "https://"},
		{"url with user", "RV_CONTROL_PLANE_URL", "https://u:p@cp.example.com", "https://"},
		{"zero wait", "RV_POLL_WAIT", "0", "positive"},
		{"text wait", "RV_POLL_WAIT", "soon", "positive"},
		{"long wait", "RV_POLL_WAIT", "61", "at most 60"},
		{"negative interval", "RV_HEARTBEAT_INTERVAL", "-1", "positive"},
		{"bad bool", "RV_AGENT_SELF_UPDATE", "yes", "0 or 1"},
		{"bad mode", "RV_AGENT_VAULT_MODE", "open", "sealed or migrate"},
		{"bad pubkey", "RV_AGENT_RELEASE_PUBKEY", "AAAA", "32-byte Ed25519"},
		{"missing ca", "RV_CONTROL_PLANE_CA", filepath.Join(dir, "nope"), "RV_CONTROL_PLANE_CA"},
		{"cert without key", "RV_AGENT_TLS_CERT", f, "go together"},
		{"two token sources", "RV_AGENT_TOKEN_FILE", f, "one source"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			env[tc.key] = tc.val
			if tc.name == "two token sources" {
				env["RV_AGENT_TOKEN"] = "tok"
			}
			_, err := LoadAgent(envOf(env))
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrInvalid saying %q", err, tc.want)
			}
			if tc.val != "" && len(tc.val) > 8 && strings.Contains(err.Error(), "tok") && tc.key == "RV_AGENT_TOKEN_FILE" {
				t.Fatal("the error quotes a secret")
			}
		})
	}
}
