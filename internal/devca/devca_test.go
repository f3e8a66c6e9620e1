package devca

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHandshake(t *testing.T) {
	ca, err := New()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server("cp.example.test", "10.1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Leaf.VerifyHostname("cp.example.test"); err != nil {
		t.Error(err)
	}
	for _, h := range []string{"127.0.0.1", "::1", "localhost", "10.1.2.3"} {
		if err := srv.Leaf.VerifyHostname(h); err != nil {
			t.Errorf("VerifyHostname(%s): %v", h, err)
		}
	}
	client, err := ca.Client("agent-1")
	if err != nil {
		t.Fatal(err)
	}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srv},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			got <- "handshake: " + err.Error()
			return
		}
		got <- Fingerprint(tc.ConnectionState().PeerCertificates[0].Raw)
		io.WriteString(c, "ok")
	}()

	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{client}, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if b, err := io.ReadAll(c); err != nil || string(b) != "ok" {
		t.Fatalf("read %q, %v", b, err)
	}
	sum := sha256.Sum256(client.Certificate[0])
	if fp := <-got; fp != hex.EncodeToString(sum[:]) {
		t.Errorf("server saw fingerprint %s, want %x", fp, sum)
	}
}

func TestWriteAndLoad(t *testing.T) {
	ca, err := New()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caCert, caKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := ca.WritePEM(caCert, caKey); err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	if err := WritePEM(cert, key, srv); err != nil {
		t.Fatal(err)
	}
	// Writing again replaces the files.
	if err := WritePEM(cert, key, srv); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{caCert, caKey, cert, key} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		t.Errorf("dir holds %d files, want 4 (temporary files left?)", len(entries))
	}
	if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
		t.Fatal(err)
	}
	ca2, err := LoadFiles(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	if string(ca2.CertPEM()) != string(ca.CertPEM()) {
		t.Error("loaded CA differs")
	}
	leaf, err := ca2.Server()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("leaf of the loaded CA does not verify under the original: %v", err)
	}
	if _, err := LoadFiles(cert, key); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("loading a leaf as a CA: %v", err)
	}
}

func TestNormalizeFingerprint(t *testing.T) {
	fp := Fingerprint([]byte("x"))
	upper := strings.ToUpper(fp)
	var colons []string
	for i := 0; i < len(upper); i += 2 {
		colons = append(colons, upper[i:i+2])
	}
	got, err := NormalizeFingerprint(strings.Join(colons, ":"))
	if err != nil || got != fp {
		t.Errorf("NormalizeFingerprint = %q, %v; want %q", got, err, fp)
	}
	if _, err := NormalizeFingerprint("secret-token-value"); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("error %v", err)
	}
}
