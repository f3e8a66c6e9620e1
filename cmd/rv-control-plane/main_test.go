package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
)

// TestRunDevCA starts the command with a development CA, reads what it
// prints, registers an agent over mTLS through it, and stops it.
func TestRunDevCA(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-admin-listen", "127.0.0.1:0", "-dev-ca", dir, "-log-level", "warn"}, pw, io.Discard)
		pw.Close()
	}()

	vars := map[string]string{}
	sc := bufio.NewScanner(pr)
	for len(vars) < 9 && sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			t.Fatalf("output line %q", sc.Text())
		}
		vars[k] = v
	}
	go io.Copy(io.Discard, pr)
	for _, k := range []string{"RV_CONTROL_PLANE_URL", "RV_CONTROL_PLANE_CA", "RV_ADMIN_URL", "RV_ADMIN_TOKEN_FILE", "RV_DEV_CLIENT_CERT", "RV_DEV_CLIENT_KEY", "RV_DEV_CLIENT_FINGERPRINT"} {
		if vars[k] == "" {
			t.Fatalf("%s not printed: %v", k, vars)
		}
	}
	for _, f := range []string{"ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "admin-token", "agent-client-key.pem"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", f, fi.Mode().Perm())
		}
	}

	caPEM, _ := os.ReadFile(vars["RV_CONTROL_PLANE_CA"])
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tok, _ := os.ReadFile(vars["RV_ADMIN_TOKEN_FILE"])
	admin := &controlplane.AdminClient{
		BaseURL: strings.TrimSuffix(vars["RV_ADMIN_URL"], controlplane.AdminPrefix),
		Token:   strings.TrimSpace(string(tok)),
		HTTP:    &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
	}
	created, err := admin.CreateToken(ctx, controlplane.CreateTokenRequest{MTLSFingerprint: vars["RV_DEV_CLIENT_FINGERPRINT"]})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(vars["RV_DEV_CLIENT_CERT"], vars["RV_DEV_CLIENT_KEY"])
	if err != nil {
		t.Fatal(err)
	}
	agent := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	body := `{"hostname":"h","version":"1.0.0","os":"linux","arch":"amd64","methods":[],"vault":{"sealed":true,"seal":"identity","entries":0},"mtls_fingerprint":"` + vars["RV_DEV_CLIENT_FINGERPRINT"] + `"}`
	req, _ := http.NewRequest("POST", vars["RV_CONTROL_PLANE_URL"]+"/api/agent/v1/register", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+created.Token)
	resp, err := agent.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("register: %d", resp.StatusCode)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not stop")
	}

	// A second start reuses the CA and the admin token.
	ca1, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2() // stops at once after setting up
	if err := run(ctx2, []string{"-listen", "127.0.0.1:0", "-admin-listen", "127.0.0.1:0", "-dev-ca", dir}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	ca2, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	tok2, _ := os.ReadFile(filepath.Join(dir, "admin-token"))
	if string(ca1) != string(ca2) || string(tok) != string(tok2) {
		t.Error("restart replaced the CA or the admin token")
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"no certificate", []string{}},
		{"both certificate kinds", []string{"-dev-ca", "x", "-tls-cert", "c", "-tls-key", "k"}},
		{"no admin token", []string{"-tls-cert", "c", "-tls-key", "k"}},
		{"stray argument", []string{"-dev-ca", "x", "extra"}},
		{"unknown flag", []string{"-nope"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(context.Background(), tt.args, io.Discard, io.Discard)
			if _, ok := err.(usageError); !ok {
				t.Errorf("run(%q) = %v, want a usage error", tt.args, err)
			}
		})
	}
}
