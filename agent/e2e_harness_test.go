package agent_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/devca"
	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

// Secrets the end-to-end tests put in the vault. Every test checks that
// none of them, in any encoding, reaches the control plane (results,
// chunks, events) or the agent's output.
var e2eSecrets = map[string]string{
	"bearer":        "Bearer-Token-Zq81-VaultValue-0001",
	"basic_pw":      "Basic-Password-Xk29!@#-0002",
	"api_key":       "Api-Key-Value-Mm47-0003",
	"client_secret": "Client-Secret-Pp66-0004",
	"refresh_token": "Refresh-Token-Rr55-0005",
	"access_token":  "Access-Token-Issued-By-Target-0006",
	"token":         "", // the agent token, filled per test
}

// env is one end-to-end test bed: the reference control plane over TLS, a
// vault, and the real binary.
type env struct {
	t      *testing.T
	cp     *controlplane.TestServer
	dir    string
	vars   map[string]string
	token  controlplane.CreateTokenResponse
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
	code   int
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newEnv(t *testing.T, cpCfg controlplane.Config) *env {
	t.Helper()
	cp, err := controlplane.Start(cpCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Close() })
	dir := t.TempDir()
	caFile := filepath.Join(dir, "cp-ca.pem")
	os.WriteFile(caFile, cp.CAPEM(), 0o600)
	e := &env{t: t, cp: cp, dir: dir, vars: map[string]string{
		"RV_CONTROL_PLANE_URL":         cp.URL,
		"RV_CONTROL_PLANE_CA":          caFile,
		"RV_AGENT_VAULT_PATH":          filepath.Join(dir, "agent-vault.json"),
		"RV_AGENT_VAULT_IDENTITY_FILE": filepath.Join(dir, "host.key"),
		"RV_POLL_WAIT":                 "2",
		"RV_HEARTBEAT_INTERVAL":        "1",
		"RV_AGENT_SELF_UPDATE":         "0",
	}}
	e.token, err = cp.Admin.CreateToken(context.Background(), controlplane.CreateTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	e.vars["RV_AGENT_TOKEN"] = e.token.Token
	e.vars["RV_AGENT_UPDATE_KEY"] = e.token.UpdateKey
	e.vault("init", "--seal", "identity")
	return e
}

// vault runs a vault command on the test's vault.
func (e *env) vault(args ...string) {
	e.t.Helper()
	e.vaultIn("", args...)
}

func (e *env) vaultIn(stdin string, args ...string) {
	e.t.Helper()
	cmd := exec.Command(testbin.Agent(e.t), append([]string{"vault"}, args...)...)
	cmd.Env = e.environ()
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("vault %v: %v\n%s", args, err, out)
	}
}

func (e *env) environ() []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + e.dir}
	for k, v := range e.vars {
		env = append(env, k+"="+v)
	}
	return env
}

// start runs `tier3-agent run` in the background.
func (e *env) start() {
	e.t.Helper()
	e.cmd = exec.Command(testbin.Agent(e.t), "run")
	e.cmd.Env = e.environ()
	e.out = &lockedBuffer{}
	e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
	if err := e.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.exited = make(chan struct{})
	go func() {
		err := e.cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			e.code = ee.ExitCode()
		}
		close(e.exited)
	}()
	e.t.Cleanup(func() {
		e.cmd.Process.Signal(syscall.SIGKILL)
		<-e.exited
		e.assertNoSecretLeaked()
	})
}

// stop sends SIGTERM and returns the exit code.
func (e *env) stop() int {
	e.t.Helper()
	e.cmd.Process.Signal(syscall.SIGTERM)
	return e.wait(60 * time.Second)
}

func (e *env) wait(limit time.Duration) int {
	e.t.Helper()
	select {
	case <-e.exited:
		return e.code
	case <-time.After(limit):
		e.t.Fatalf("the agent did not exit within %v; output:\n%s", limit, e.out)
	}
	return -1
}

// waitFor polls cond until it holds or the deadline passes: the agent is a
// separate process, so its progress is observed through the control plane.
func (e *env) waitFor(what string, limit time.Duration, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s; agent output:\n%s", what, e.out)
		}
		select {
		case <-e.exited:
			e.t.Fatalf("the agent exited (%d) while waiting for %s; output:\n%s", e.code, what, e.out)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// enqueue adds a task and returns its ID.
func (e *env) enqueue(envelope map[string]any) string {
	e.t.Helper()
	id, err := e.cp.Admin.Enqueue(context.Background(), envelope, controlplane.EnqueueOptions{Unchecked: true})
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

// result waits for the task's result.
func (e *env) result(id string) controlplane.TaskInfo {
	e.t.Helper()
	var ti controlplane.TaskInfo
	e.waitFor("the result of "+id, 60*time.Second, func() bool {
		var err error
		ti, err = e.cp.Admin.Task(context.Background(), id)
		return err == nil && ti.Result != nil
	})
	return ti
}

// assertNoSecretLeaked searches everything the control plane stored (task
// results, chunks, events) and everything the agent printed.
func (e *env) assertNoSecretLeaked() {
	ctx := context.Background()
	var all bytes.Buffer
	tasks, _ := e.cp.Admin.Tasks(ctx)
	for _, ti := range tasks {
		full, _ := e.cp.Admin.Task(ctx, ti.TaskID)
		full.Envelope = nil // the envelope is what the test wrote
		b, _ := json.Marshal(full)
		all.Write(b)
	}
	evs, _ := e.cp.Admin.Events(ctx, controlplane.EventQuery{})
	b, _ := json.Marshal(evs)
	all.Write(b)
	if e.out != nil {
		all.WriteString(e.out.String())
	}
	if data, err := os.ReadFile(filepath.Join(e.dir, "audit.log")); err == nil {
		all.Write(data)
	}
	hay := all.String()
	secrets := []string{e.token.Token}
	for _, s := range e2eSecrets {
		if s != "" {
			secrets = append(secrets, s)
		}
	}
	for _, s := range secrets {
		for _, form := range forms(s) {
			if strings.Contains(hay, form) {
				e.t.Errorf("a secret (%.6s…) reached the control plane or the agent's output", s)
			}
		}
	}
}

func forms(s string) []string {
	b := []byte(s)
	return []string{s, base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b), url.QueryEscape(s), url.PathEscape(s)}
}

// target is a TLS server on loopback with a certificate from its own CA,
// trusted by the agent through RV_AGENT_TARGET_CA.
type target struct {
	URL  string
	srv  *http.Server
	ln   net.Listener
	mu   sync.Mutex
	seen []*http.Request
	body [][]byte
}

func (e *env) newTarget(h http.HandlerFunc) *target {
	e.t.Helper()
	ca := e.targetCA()
	cert, err := ca.Server()
	if err != nil {
		e.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	tg := &target{URL: "https://" + ln.Addr().String(), ln: ln}
	tg.srv = &http.Server{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := ioReadAll(r)
			tg.mu.Lock()
			tg.seen = append(tg.seen, r.Clone(context.Background()))
			tg.body = append(tg.body, body)
			tg.mu.Unlock()
			r.Body = ioNopCloser(body)
			h(w, r)
		}),
	}
	go tg.srv.ServeTLS(ln, "", "")
	e.t.Cleanup(func() { tg.srv.Close() })
	return tg
}

func (tg *target) requests() []*http.Request {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return append([]*http.Request(nil), tg.seen...)
}

var targetCAs sync.Map

func (e *env) targetCA() *devca.CA {
	if ca, ok := targetCAs.Load(e.t.Name()); ok {
		return ca.(*devca.CA)
	}
	ca, err := devca.New()
	if err != nil {
		e.t.Fatal(err)
	}
	targetCAs.Store(e.t.Name(), ca)
	p := filepath.Join(e.dir, "target-ca.pem")
	os.WriteFile(p, ca.CertPEM(), 0o600)
	e.vars["RV_AGENT_TARGET_CA"] = p
	return ca
}

func envelope(method, businessID, baseURL string, auth map[string]any, request map[string]any) map[string]any {
	return map[string]any{
		"method":    method,
		"connector": map[string]any{"business_id": businessID, "type": "rest", "base_url": baseURL},
		"auth":      auth,
		"request":   request,
		"lease_s":   60,
		"timeout_s": 30,
	}
}

func ref(bid, field string) string { return fmt.Sprintf("vault://local/%s/%s", bid, field) }

func ioReadAll(r *http.Request) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	var b bytes.Buffer
	_, err := b.ReadFrom(r.Body)
	return b.Bytes(), err
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

func ioNopCloser(b []byte) nopCloser { return nopCloser{bytes.NewReader(b)} }
