package config

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Agent is the configuration of `tier3-agent run`, built from the
// environment and validated before any network traffic.
type Agent struct {
	Vault Vault

	ControlPlaneURL *url.URL // RV_CONTROL_PLANE_URL, https only
	// Token and UpdateKey come from the environment, a _FILE, or the
	// vault's _agent entry (Secrets resolves which).
	TokenSource, UpdateKeySource SecretSource

	SelfUpdate        bool          // RV_AGENT_SELF_UPDATE
	PollWait          time.Duration // RV_POLL_WAIT
	HeartbeatInterval time.Duration // RV_HEARTBEAT_INTERVAL
	ChunkSize         int           // RV_AGENT_CHUNK_SIZE
	ControlPlaneCA    string        // RV_CONTROL_PLANE_CA (path), "" for system roots
	TLSCert, TLSKey   string        // RV_AGENT_TLS_CERT, RV_AGENT_TLS_KEY
	TargetCA          string        // RV_AGENT_TARGET_CA (path)
	Concurrency       int           // RV_AGENT_CONCURRENCY
	RequireBinding    bool          // RV_AGENT_REQUIRE_BINDING
	ReleasePubKey     ed25519.PublicKey
	StableAfter       time.Duration // RV_AGENT_STABLE_AFTER
	MaxResponse       int64         // RV_AGENT_MAX_RESPONSE
	AuditLog          string        // RV_AGENT_AUDIT_LOG
}

// SecretSource says where one of the agent's own secrets comes from.
type SecretSource struct {
	Name  string // the variable, e.g. RV_AGENT_TOKEN
	Env   string // its value when set in the environment (a Go string: the environment already is one)
	File  string // the path in NAME_FILE
	Field string // the field of the vault's _agent entry
}

// LoadAgent reads and validates every setting of `tier3-agent run`.
func LoadAgent(getenv func(string) string) (*Agent, error) {
	v, err := LoadVault(getenv)
	if err != nil {
		return nil, err
	}
	a := &Agent{Vault: v}
	raw := getenv("RV_CONTROL_PLANE_URL")
	if raw == "" {
		return nil, invalid("RV_CONTROL_PLANE_URL is required (the tenant URL, https://…)")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, invalid("RV_CONTROL_PLANE_URL must be an https:// URL with a host and no user, query or fragment")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	a.ControlPlaneURL = u

	a.TokenSource = SecretSource{Name: "RV_AGENT_TOKEN", Env: getenv("RV_AGENT_TOKEN"), File: getenv("RV_AGENT_TOKEN_FILE"), Field: "token"}
	a.UpdateKeySource = SecretSource{Name: "RV_AGENT_UPDATE_KEY", Env: getenv("RV_AGENT_UPDATE_KEY"), File: getenv("RV_AGENT_UPDATE_KEY_FILE"), Field: "update_key"}
	for _, s := range []SecretSource{a.TokenSource, a.UpdateKeySource} {
		if s.Env != "" && s.File != "" {
			return nil, invalid("%s and %s_FILE are both set: give the secret one source", s.Name, s.Name)
		}
	}

	if a.SelfUpdate, err = boolVar(getenv, "RV_AGENT_SELF_UPDATE", true); err != nil {
		return nil, err
	}
	if a.RequireBinding, err = boolVar(getenv, "RV_AGENT_REQUIRE_BINDING", false); err != nil {
		return nil, err
	}
	for _, n := range []struct {
		name string
		def  int64
		dst  func(int64)
	}{
		{"RV_POLL_WAIT", 25, func(x int64) { a.PollWait = time.Duration(x) * time.Second }},
		{"RV_HEARTBEAT_INTERVAL", 30, func(x int64) { a.HeartbeatInterval = time.Duration(x) * time.Second }},
		{"RV_AGENT_CHUNK_SIZE", 500, func(x int64) { a.ChunkSize = int(x) }},
		{"RV_AGENT_CONCURRENCY", 4, func(x int64) { a.Concurrency = int(x) }},
		{"RV_AGENT_STABLE_AFTER", 60, func(x int64) { a.StableAfter = time.Duration(x) * time.Second }},
		{"RV_AGENT_MAX_RESPONSE", 16 << 20, func(x int64) { a.MaxResponse = x }},
	} {
		x, err := positive(getenv, n.name, n.def)
		if err != nil {
			return nil, err
		}
		n.dst(x)
	}
	if a.PollWait > 60*time.Second {
		return nil, invalid("RV_POLL_WAIT is at most 60 seconds (the control plane holds a poll that long at most)")
	}
	if a.ChunkSize > 100_000 || a.Concurrency > 1024 {
		return nil, invalid("RV_AGENT_CHUNK_SIZE is at most 100000 and RV_AGENT_CONCURRENCY at most 1024")
	}
	for name, dst := range map[string]*string{
		"RV_CONTROL_PLANE_CA": &a.ControlPlaneCA, "RV_AGENT_TLS_CERT": &a.TLSCert,
		"RV_AGENT_TLS_KEY": &a.TLSKey, "RV_AGENT_TARGET_CA": &a.TargetCA,
	} {
		p := getenv(name)
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return nil, invalid("%s: cannot read %s: %v", name, p, err)
		}
		*dst = p
	}
	if (a.TLSCert == "") != (a.TLSKey == "") {
		return nil, invalid("RV_AGENT_TLS_CERT and RV_AGENT_TLS_KEY go together: set both for mTLS, or neither")
	}
	if k := getenv("RV_AGENT_RELEASE_PUBKEY"); k != "" {
		b, err := base64.StdEncoding.DecodeString(k)
		if err != nil || len(b) != ed25519.PublicKeySize {
			return nil, invalid("RV_AGENT_RELEASE_PUBKEY must be the base64 of a 32-byte Ed25519 public key")
		}
		a.ReleasePubKey = b
	}
	a.AuditLog = getenv("RV_AGENT_AUDIT_LOG")
	if a.AuditLog == "" {
		a.AuditLog = filepath.Join(filepath.Dir(a.Vault.Path), "audit.log")
	}
	return a, nil
}

func boolVar(getenv func(string) string, name string, def bool) (bool, error) {
	switch getenv(name) {
	case "":
		return def, nil
	case "1":
		return true, nil
	case "0":
		return false, nil
	}
	return false, invalid("%s must be 0 or 1", name)
}

func positive(getenv func(string) string, name string, def int64) (int64, error) {
	s := getenv(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 1 {
		return 0, invalid("%s must be a positive whole number", name)
	}
	if n > 1<<40 {
		return 0, invalid("%s is too large", name)
	}
	return n, nil
}

// Describe names the sources of a secret for an error message.
func (s SecretSource) Describe() string {
	return fmt.Sprintf("%s, %s_FILE or the vault's _agent/%s", s.Name, s.Name, s.Field)
}
