package agent_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/rapidvalue/tier3-agent/internal/syncbuf"
	"log/slog"
	"maps"
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
	t     *testing.T
	cp    *controlplane.TestServer
	cpLog *cpRecorder // every request the control plane saw
	dir   string
	vars  map[string]string
	token controlplane.CreateTokenResponse
	// cmd, out and exited are the agent process started last (start).
	cmd    *exec.Cmd
	out    *syncbuf.Buffer
	exited chan struct{}
	p      *proc
	// tca is the CA of the test's targets, trusted through
	// RV_AGENT_TARGET_CA.
	tca *devca.CA
	// seen is shared by the env and its copies for subtests (sub).
	seen *seen
}

// seen is what the leak check searches beyond the control plane: the
// output of every process the test ran, and the values the test added
// beyond e2eSecrets.
type seen struct {
	mu      sync.Mutex
	outs    []*syncbuf.Buffer
	secrets []string
}

// sub returns the env for a subtest: the same test bed, failing t. It
// must not start or stop the agent.
func (e *env) sub(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

// proc is one `tier3-agent run` process.
type proc struct {
	cmd    *exec.Cmd
	out    *syncbuf.Buffer
	exited chan struct{}
	code   int // valid once exited is closed
}

func newEnv(t *testing.T, cpCfg controlplane.Config) *env {
	t.Helper()
	rec := &cpRecorder{}
	if cpCfg.Logger == nil {
		cpCfg.Logger = slog.New(rec)
	}
	cp, err := controlplane.Start(cpCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Close() })
	dir := t.TempDir()
	caFile := filepath.Join(dir, "cp-ca.pem")
	os.WriteFile(caFile, cp.CAPEM(), 0o600)
	e := &env{t: t, cp: cp, cpLog: rec, dir: dir, seen: &seen{}, vars: map[string]string{
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
	// Registered after the control plane's Close and before every
	// process's kill, so it runs after the processes are gone and before
	// the control plane is.
	t.Cleanup(e.assertNoSecretLeaked)
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

// environ is the whole environment of a command: vars and, of the test
// process's own, only PATH.
func environ(vars map[string]string) []string {
	env := []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}

// environ is the test's variables, with HOME in the test's folder.
func (e *env) environ() []string {
	vars := maps.Clone(e.vars)
	vars["HOME"] = e.dir
	return environ(vars)
}

// addSecret adds a value that the leak check looks for, beyond e2eSecrets.
func (e *env) addSecret(s string) {
	e.seen.mu.Lock()
	e.seen.secrets = append(e.seen.secrets, s)
	e.seen.mu.Unlock()
}

func (e *env) newOutput() *syncbuf.Buffer {
	out := &syncbuf.Buffer{}
	e.seen.mu.Lock()
	e.seen.outs = append(e.seen.outs, out)
	e.seen.mu.Unlock()
	return out
}

// start runs `tier3-agent run` in the background. A test may start the
// agent again once the previous process has exited.
func (e *env) start() {
	e.t.Helper()
	if e.p != nil {
		select {
		case <-e.p.exited:
		default:
			e.t.Fatal("start: the previous agent process is still running")
		}
	}
	p := &proc{cmd: exec.Command(testbin.Agent(e.t), "run"), out: e.newOutput(), exited: make(chan struct{})}
	p.cmd.Env = e.environ()
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		err := p.cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		}
		close(p.exited)
	}()
	e.p, e.cmd, e.out, e.exited = p, p.cmd, p.out, p.exited
	e.t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
	})
}

// signal sends sig to the running agent.
func (e *env) signal(sig os.Signal) {
	e.t.Helper()
	if err := e.cmd.Process.Signal(sig); err != nil {
		e.t.Fatalf("signal %v: %v", sig, err)
	}
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
	case <-e.p.exited:
		return e.p.code
	case <-time.After(limit):
		e.t.Fatalf("the agent did not exit within %v; output:\n%s", limit, e.out)
	}
	return -1
}

// alive reports whether the agent started last is still running.
func (e *env) alive() bool {
	select {
	case <-e.p.exited:
		return false
	default:
		return true
	}
}

// runOnce runs `tier3-agent run` to its end with the test's variables
// changed by over (an empty value unsets the variable) and returns its exit
// status and output. For settings that must stop the agent before it does
// anything: a run that goes on is killed after a minute and fails the test.
func (e *env) runOnce(over map[string]string) (int, string) {
	e.t.Helper()
	vars := maps.Clone(e.vars)
	vars["HOME"] = e.dir
	for k, v := range over {
		if v == "" {
			delete(vars, k)
		} else {
			vars[k] = v
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testbin.Agent(e.t), "run")
	cmd.Env = environ(vars)
	out := e.newOutput()
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	if ctx.Err() != nil {
		e.t.Fatalf("tier3-agent run did not stop by itself; output:\n%s", out)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String()
	}
	e.t.Fatal(err)
	return -1, ""
}

// registered waits for the agent's registration and returns it.
func (e *env) registered() controlplane.AgentInfo {
	e.t.Helper()
	var a controlplane.AgentInfo
	e.waitFor("the agent's registration", 30*time.Second, func() bool {
		as, err := e.cp.Admin.Agents(context.Background())
		if err != nil || len(as) == 0 {
			return false
		}
		a = as[0]
		return true
	})
	return a
}

// events returns the stored events of one type.
func (e *env) events(typ string) []controlplane.StoredEvent {
	e.t.Helper()
	evs, err := e.cp.Admin.Events(context.Background(), controlplane.EventQuery{Type: typ})
	if err != nil {
		e.t.Fatal(err)
	}
	return evs
}

// fault queues a fault on the control plane.
func (e *env) fault(f controlplane.Fault) {
	e.t.Helper()
	if _, err := e.cp.Admin.AddFault(context.Background(), f); err != nil {
		e.t.Fatal(err)
	}
}

// auditLog returns the agent's local audit log.
func (e *env) auditLog() string {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.dir, "audit.log"))
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
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
			e.t.Fatalf("the agent exited (%d) while waiting for %s; output:\n%s", e.p.code, what, e.out)
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
	e.seen.mu.Lock()
	for _, out := range e.seen.outs {
		all.WriteString(out.String())
	}
	secrets := append([]string{e.token.Token}, e.seen.secrets...)
	e.seen.mu.Unlock()
	if data, err := os.ReadFile(filepath.Join(e.dir, "audit.log")); err == nil {
		all.Write(data)
	}
	hay := all.String()
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

// targetCA returns the test's target CA, made (and written for
// RV_AGENT_TARGET_CA) at the first call.
func (e *env) targetCA() *devca.CA {
	if e.tca != nil {
		return e.tca
	}
	ca, err := devca.New()
	if err != nil {
		e.t.Fatal(err)
	}
	e.tca = ca
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

// cpRequest is one request that the control plane answered, from its
// request log: the log line is written when the handler returns, with the
// handler's duration, so Start is End less that duration (to the
// millisecond, rounded down: Start is at most 1 ms late).
type cpRequest struct {
	Endpoint   string
	Status     int // 0: the agent went away before an answer
	TaskID     string
	AgentID    string
	Start, End time.Time
}

// cpRecorder is the control plane's slog handler in the end-to-end tests:
// it keeps the request log ("agent request") and the injected faults
// ("fault injected", logged as the request arrives).
type cpRecorder struct {
	mu     sync.Mutex
	reqs   []cpRequest
	faults []cpRequest
}

func (r *cpRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *cpRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }

func (r *cpRecorder) WithGroup(string) slog.Handler { return r }

func (r *cpRecorder) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message != "agent request" && rec.Message != "fault injected" {
		return nil
	}
	q := cpRequest{End: rec.Time, Start: rec.Time}
	rec.Attrs(func(a slog.Attr) bool {
		v := a.Value.Resolve()
		switch a.Key {
		case "endpoint":
			q.Endpoint = v.String()
		case "task_id":
			q.TaskID = v.String()
		case "agent_id":
			q.AgentID = v.String()
		case "status":
			if v.Kind() == slog.KindInt64 {
				q.Status = int(v.Int64())
			}
		case "ms":
			if v.Kind() == slog.KindInt64 {
				q.Start = rec.Time.Add(-time.Duration(v.Int64()) * time.Millisecond)
			}
		}
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	if rec.Message == "fault injected" {
		r.faults = append(r.faults, q)
	} else {
		r.reqs = append(r.reqs, q)
	}
	return nil
}

// requests returns the answered requests for which keep is true (nil:
// all), in the order their answers ended.
func (r *cpRecorder) requests(keep func(cpRequest) bool) []cpRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []cpRequest
	for _, q := range r.reqs {
		if keep == nil || keep(q) {
			out = append(out, q)
		}
	}
	return out
}

// faultHits returns the requests that an injected fault answered on
// endpoint, in arrival order.
func (r *cpRecorder) faultHits(endpoint string) []cpRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []cpRequest
	for _, q := range r.faults {
		if q.Endpoint == endpoint {
			out = append(out, q)
		}
	}
	return out
}

// forTask keeps the requests about one task (chunks, result, lease).
func forTask(id string) func(cpRequest) bool {
	return func(q cpRequest) bool { return q.TaskID == id }
}

// onEndpoint keeps the requests to one endpoint.
func onEndpoint(name string) func(cpRequest) bool {
	return func(q cpRequest) bool { return q.Endpoint == name }
}

// gate is a target handler that holds every request until the test opens
// it, or until the agent gives the request up; it reports both.
type gate struct {
	arrived   chan struct{} // one value per request that came in
	abandoned chan struct{} // one value per request the agent cancelled
	release   chan struct{}
	once      sync.Once
	then      http.HandlerFunc // answers the request once released
}

func newGate(then http.HandlerFunc) *gate {
	return &gate{arrived: make(chan struct{}, 64), abandoned: make(chan struct{}, 64), release: make(chan struct{}), then: then}
}

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.arrived <- struct{}{}
	select {
	case <-g.release:
		g.then(w, r)
	case <-r.Context().Done():
		g.abandoned <- struct{}{}
	}
}

// receive waits for a value on ch, failing the test after limit.
func (e *env) receive(what string, ch <-chan struct{}, limit time.Duration) {
	e.t.Helper()
	select {
	case <-ch:
	case <-time.After(limit):
		e.t.Fatalf("timed out waiting for %s; agent output:\n%s", what, e.out)
	}
}

// httpResponse is the response object of an http.request result.
type httpResponse struct {
	Status     int               `json:"status"`
	Headers    map[string]string `json:"headers"`
	Body       json.RawMessage   `json:"body"`
	BodyBase64 string            `json:"body_base64"`
}

// response decodes the result's response of a completed http.request.
func (e *env) response(ti controlplane.TaskInfo) httpResponse {
	e.t.Helper()
	if ti.Result == nil || ti.Result.Status != "completed" {
		r := ti.Result
		if r == nil {
			e.t.Fatalf("task %s has no result", ti.TaskID)
		}
		e.t.Fatalf("task %s: status %s: %s %s", ti.TaskID, r.Status, r.ErrorClass, r.Error)
	}
	var resp httpResponse
	if err := json.Unmarshal(ti.Result.Response, &resp); err != nil {
		e.t.Fatalf("task %s: response: %v", ti.TaskID, err)
	}
	return resp
}

// wantFailed checks that a task failed with class.
func (e *env) wantFailed(ti controlplane.TaskInfo, class string) {
	e.t.Helper()
	if ti.Result == nil || ti.Result.Status != "failed" || ti.Result.ErrorClass != class {
		b, _ := json.Marshal(ti.Result)
		e.t.Errorf("task %s: want failed with %s, got %s", ti.TaskID, class, b)
		return
	}
	e.t.Logf("%s: %s", class, ti.Result.Error)
}

// bearerTask is an http.request GET with the bearer scheme on connector bid.
func bearerTask(bid, baseURL, path string) map[string]any {
	return envelope("http.request", bid, baseURL,
		map[string]any{"scheme": "bearer", "credentials": map[string]any{"token": ref(bid, "token")}},
		map[string]any{"method": "GET", "path": path})
}
