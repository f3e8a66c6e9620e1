package agent_test

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/devca"
)

// End-to-end tests of the control plane connection (TLS, a control plane
// that is down) and of the settings that stop `tier3-agent run` before any
// traffic.

func TestTLSControlPlaneOnlyTLS11(t *testing.T) {
	t.Parallel()
	e := newEnv(t, controlplane.Config{})
	ca, err := devca.New()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var registers atomic.Int64
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/api/agent/v1/register" {
				registers.Add(1)
			}
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"agent_id":"agt_old_tls"}`)
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11},
		ErrorLog:  log.New(io.Discard, "", 0),
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	url := "https://" + ln.Addr().String()

	// The server does speak TLS 1.1 to a client that allows it.
	old := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}}}
	resp, err := old.Post(url+"/api/agent/v1/register", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatalf("a TLS 1.1 client cannot reach the test server: %v", err)
	}
	resp.Body.Close()
	if resp.TLS.Version != tls.VersionTLS11 || registers.Load() != 1 {
		t.Fatalf("the test server negotiated %x", resp.TLS.Version)
	}

	caFile := filepath.Join(e.dir, "old-ca.pem")
	os.WriteFile(caFile, ca.CertPEM(), 0o600)
	e.vars["RV_CONTROL_PLANE_URL"], e.vars["RV_CONTROL_PLANE_CA"] = url, caFile
	e.start()
	if code := e.wait(30 * time.Second); code != 78 {
		t.Fatalf("exit %d against a TLS 1.1 control plane, want 78; output:\n%s", code, e.out)
	}
	if n := registers.Load(); n != 1 {
		t.Errorf("the agent registered over TLS 1.1")
	}
	if !strings.Contains(e.out.String(), "TLS") {
		t.Errorf("the message does not name TLS:\n%s", e.out)
	}
}

func TestTLSControlPlaneUnknownCA(t *testing.T) {
	t.Parallel()
	e := newEnv(t, controlplane.Config{})
	other, err := devca.New()
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(e.dir, "other-ca.pem")
	os.WriteFile(caFile, other.CertPEM(), 0o600)
	e.vars["RV_CONTROL_PLANE_CA"] = caFile
	e.start()
	if code := e.wait(30 * time.Second); code != 78 {
		t.Fatalf("exit %d with a control plane certificate from an unknown CA, want 78; output:\n%s", code, e.out)
	}
	if as, _ := e.cp.Admin.Agents(context.Background()); len(as) != 0 {
		t.Errorf("the agent registered: %+v", as)
	}
	if reqs := e.cpLog.requests(nil); len(reqs) != 0 {
		t.Errorf("the control plane answered %d requests: %+v", len(reqs), reqs)
	}
	if !strings.Contains(e.out.String(), "certificate") {
		t.Errorf("the message does not say what was wrong with the certificate:\n%s", e.out)
	}
}

// forwarder accepts TCP connections on ln and pipes each to addr: the
// control plane "coming up" on a port where nothing listened.
func forwarder(t *testing.T, ln net.Listener, addr string) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", addr)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(out, in); out.Close() }()
			go func() { defer wg.Done(); io.Copy(in, out); in.Close() }()
		}
	}()
}

func TestControlPlaneDownKeepsRetrying(t *testing.T) {
	t.Parallel()
	e, tg := bearerEnv(t, echo)
	// A port where nothing listens.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	e.vars["RV_CONTROL_PLANE_URL"] = "https://" + addr
	e.start()
	// Three refused connections, each logged as a retry; the agent is
	// still running.
	e.waitFor("three connection attempts", 60*time.Second, func() bool {
		return strings.Count(e.out.String(), "control plane call failed; retrying") >= 3
	})
	if !e.alive() {
		t.Fatalf("the agent exited while the control plane was down:\n%s", e.out)
	}
	if strings.Contains(e.out.String(), "tier3-agent: error") {
		t.Fatalf("the agent gave up:\n%s", e.out)
	}
	// The control plane comes up on that port: the agent registers and
	// works, by itself.
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("the port was taken in the meantime: %v", err)
	}
	forwarder(t, ln, strings.TrimPrefix(e.cp.URL, "https://"))
	e.registered()
	e.response(e.result(e.enqueue(bearerTask("crm", tg.URL, "/after-outage"))))
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}

func TestInvalidSettingsExitBeforeAnyTraffic(t *testing.T) {
	t.Parallel()
	e := newEnv(t, controlplane.Config{})
	// Anything that connects to this port is traffic.
	var dialed atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dialed.Add(1)
			c.Close()
		}
	}()

	tokenFile := filepath.Join(e.dir, "token")
	os.WriteFile(tokenFile, []byte(e.token.Token+"\n"), 0o600)
	certFile := filepath.Join(e.dir, "client.pem")
	os.WriteFile(certFile, e.cp.CAPEM(), 0o600)
	// A second vault whose _agent entry holds the token too.
	twoSources := filepath.Join(e.dir, "two", "agent-vault.json")
	os.MkdirAll(filepath.Dir(twoSources), 0o700)
	e.vault("init", "--seal", "identity", "--vault", twoSources)
	e.vaultIn(e.token.Token, "set", "_agent", "token", "--vault", twoSources)

	cases := []struct {
		name string
		over map[string]string
		msg  string
	}{
		{"http control plane", map[string]string{"RV_CONTROL_PLANE_URL": "http://" + ln.Addr().String()}, "https://"},
		{"no control plane", map[string]string{"RV_CONTROL_PLANE_URL": ""}, "RV_CONTROL_PLANE_URL"},
		{"token and token file", map[string]string{"RV_AGENT_TOKEN_FILE": tokenFile}, "RV_AGENT_TOKEN"},
		{"token in the environment and the vault", map[string]string{"RV_AGENT_VAULT_PATH": twoSources}, "sources"},
		{"no token", map[string]string{"RV_AGENT_TOKEN": ""}, "RV_AGENT_TOKEN is required"},
		{"short update key", map[string]string{"RV_AGENT_UPDATE_KEY": "only-31-bytes-long-update-key!!"}, "at least 32 bytes"},
		{"non-numeric poll wait", map[string]string{"RV_POLL_WAIT": "soon"}, "RV_POLL_WAIT"},
		{"zero poll wait", map[string]string{"RV_POLL_WAIT": "0"}, "RV_POLL_WAIT"},
		{"non-numeric heartbeat", map[string]string{"RV_HEARTBEAT_INTERVAL": "1s"}, "RV_HEARTBEAT_INTERVAL"},
		{"TLS cert without key", map[string]string{"RV_AGENT_TLS_CERT": certFile}, "RV_AGENT_TLS_KEY"},
		{"TLS key without cert", map[string]string{"RV_AGENT_TLS_KEY": certFile}, "RV_AGENT_TLS_CERT"},
		{"bad boolean", map[string]string{"RV_AGENT_REQUIRE_BINDING": "yes"}, "RV_AGENT_REQUIRE_BINDING"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := e.sub(t)
			code, out := e.runOnce(c.over)
			if code != 78 {
				t.Fatalf("exit %d, want 78; output:\n%s", code, out)
			}
			if !strings.Contains(out, c.msg) || !strings.Contains(out, "tier3-agent: error:") {
				t.Errorf("the message does not name %q:\n%s", c.msg, out)
			}
		})
	}
	if n := dialed.Load(); n != 0 {
		t.Errorf("%d connections to the http:// control plane", n)
	}
	if reqs := e.cpLog.requests(nil); len(reqs) != 0 {
		t.Errorf("the control plane answered %d requests: %+v", len(reqs), reqs)
	}
	if as, _ := e.cp.Admin.Agents(context.Background()); len(as) != 0 {
		t.Errorf("an agent registered: %+v", as)
	}
}
