package controlplane

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

var ctx = context.Background()

func TestRegisterAndHeartbeat(t *testing.T) {
	ts, clock := start(t, Config{})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	if !strings.HasPrefix(a.agentID, "agt_") {
		t.Errorf("agent_id %q", a.agentID)
	}
	// Idempotent for one token: the same agent ID (register checks).
	a.register(nil)

	info, err := ts.Admin.Agent(ctx, a.agentID)
	if err != nil {
		t.Fatal(err)
	}
	if info.Online || info.LastHeartbeat != nil || info.Hostname != "gw-01" || info.OS != "linux" ||
		info.Version != "1.4.0" || !info.Vault.Sealed || info.Vault.Seal != "tpm2" || len(info.Methods) != 2 || info.TokenID != a.tokenID {
		t.Errorf("after register: %+v", info)
	}

	r := a.heartbeat("1.4.0")
	wantStatus(t, "heartbeat", r, http.StatusOK)
	if strings.TrimSpace(string(r.body)) != "{}" {
		t.Errorf("heartbeat body %s, want {}", r.body)
	}
	agents, err := ts.Admin.Agents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(agents) != 1 || !agents[0].Online || agents[0].LastHeartbeat == nil || !agents[0].LastHeartbeat.Equal(clock.Now()) ||
		agents[0].Heartbeat == nil || agents[0].Heartbeat.UptimeS != 10 {
		t.Errorf("after heartbeat: %+v", agents)
	}
	// Online means a heartbeat within three intervals (30 s by default).
	clock.Advance(90 * time.Second)
	if info, _ := ts.Admin.Agent(ctx, a.agentID); !info.Online {
		t.Error("offline at 3 intervals")
	}
	clock.Advance(time.Second)
	if info, _ := ts.Admin.Agent(ctx, a.agentID); info.Online {
		t.Error("online after 3 intervals")
	}

	// A heartbeat for another agent ID in the body is refused.
	wantStatus(t, "heartbeat with wrong agent_id", a.do("POST", "/heartbeat", wire.Heartbeat{AgentID: "agt_other", Version: "1.4.0"}), http.StatusBadRequest)
}

func TestRegisterOverrides(t *testing.T) {
	ts, _ := start(t, Config{HeartbeatInterval: 5 * time.Second, PollWait: 7 * time.Second})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	r := a.do("POST", "/register", registerBody(nil))
	var rr wire.RegisterResponse
	if err := wire.Decode(r.body, &rr, wire.Limits{}); err != nil {
		t.Fatal(err)
	}
	if rr.HeartbeatIntervalS != 5 || rr.PollWaitS != 7 {
		t.Errorf("overrides %+v", rr)
	}
	// Without them configured, the response carries only agent_id.
	ts2, _ := start(t, Config{})
	b := newAgent(t, ts2, CreateTokenRequest{}, nil)
	r = b.do("POST", "/register", registerBody(nil))
	if bytes.Contains(r.body, []byte("interval")) || bytes.Contains(r.body, []byte("poll_wait")) {
		t.Errorf("register response %s carries overrides", r.body)
	}
}

func TestAuthentication(t *testing.T) {
	ts, _ := start(t, Config{})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	other := newAgent(t, ts, CreateTokenRequest{}, nil)
	other.register(nil)

	anon := a.withCert(nil)
	anon.token = ""
	wantStatus(t, "no token", anon.do("POST", "/register", registerBody(nil)), http.StatusUnauthorized)
	bad := a.withCert(nil)
	bad.token = "rvat_not-a-token"
	wantStatus(t, "unknown token", bad.do("POST", "/register", registerBody(nil)), http.StatusUnauthorized)
	basic := a.withCert(nil)
	basic.header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("x:"+a.token)))
	wantStatus(t, "basic auth", basic.do("POST", "/register", registerBody(nil)), http.StatusUnauthorized)

	// Before registration, endpoints that need the agent ID refuse.
	wantStatus(t, "heartbeat before register", a.do("POST", "/heartbeat", wire.Heartbeat{}), http.StatusBadRequest)

	a.register(nil)
	noID := a.withCert(nil)
	noID.agentID = ""
	wantStatus(t, "missing agent ID", noID.do("GET", "/tasks/next?wait=0", nil), http.StatusBadRequest)
	wrongID := a.withCert(nil)
	wrongID.agentID = other.agentID
	wantStatus(t, "another agent's ID", wrongID.do("GET", "/tasks/next?wait=0", nil), http.StatusUnauthorized)

	wantStatus(t, "heartbeat", a.heartbeat("1.4.0"), http.StatusOK)
	if err := ts.Admin.RevokeToken(ctx, a.tokenID); err != nil {
		t.Fatal(err)
	}
	for _, ep := range []struct{ method, path string }{
		{"POST", "/heartbeat"}, {"GET", "/tasks/next?wait=0"}, {"POST", "/events"},
		{"GET", "/update?current=1.0.0"}, {"POST", "/register"}, {"GET", "/manifest"},
		{"POST", "/tasks/tsk_x/chunks"}, {"POST", "/tasks/tsk_x/result"}, {"POST", "/tasks/tsk_x/lease"},
	} {
		r := a.do(ep.method, ep.path, registerBody(nil))
		wantStatus(t, "after revoke: "+ep.path, r, http.StatusUnauthorized)
		if r.header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without WWW-Authenticate", ep.path)
		}
	}
	if info, _ := ts.Admin.Agent(ctx, a.agentID); !info.Revoked || info.Online {
		t.Errorf("revoked agent: %+v", info)
	}
	// The other agent is untouched.
	wantStatus(t, "other heartbeat", other.heartbeat("1.4.0"), http.StatusOK)

	if err := ts.Admin.RevokeToken(ctx, "tok_nonexistent"); !isAdminStatus(err, http.StatusNotFound) {
		t.Errorf("revoke unknown token: %v", err)
	}
}

func isAdminStatus(err error, status int) bool {
	var ae *AdminError
	return errors.As(err, &ae) && ae.Status == status
}

func TestAdminAuth(t *testing.T) {
	ts, _ := start(t, Config{})
	for _, tok := range []string{"", "wrong", ts.AdminToken + "x"} {
		c := &AdminClient{BaseURL: ts.AdminURL, Token: tok, HTTP: ts.Client(nil)}
		if _, err := c.Agents(ctx); !isAdminStatus(err, http.StatusUnauthorized) {
			t.Errorf("admin token %q: %v", tok, err)
		}
	}
	// The admin API is not on the agent listener, nor the agent API on the admin one.
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.token = ts.AdminToken
	wantStatus(t, "admin path on agent listener", a.do("GET", "/admin/v1/agents", nil), http.StatusNotFound)
	wantStatus(t, "admin token on agent API", a.do("POST", "/register", registerBody(nil)), http.StatusUnauthorized)

	// A server without an admin token refuses every admin call.
	s := New(Config{})
	req, _ := http.NewRequest("GET", AdminPrefix+"/agents", nil)
	req.Header.Set("Authorization", "Bearer ")
	w := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(w, req)
	if w.Code != http.StatusUnauthorized {
		t.Errorf("no admin token configured: %d", w.Code)
	}
}

func TestLongPoll(t *testing.T) {
	ts, _ := start(t, Config{})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)

	if status, _ := a.poll(0); status != http.StatusNoContent {
		t.Fatalf("empty queue, wait=0: %d", status)
	}
	wantStatus(t, "wait=abc", a.do("GET", "/tasks/next?wait=abc", nil), http.StatusBadRequest)
	wantStatus(t, "wait=-1", a.do("GET", "/tasks/next?wait=-1", nil), http.StatusBadRequest)

	// A poll with nothing to claim holds for wait seconds, then 204.
	began := time.Now()
	if status, _ := a.poll(1); status != http.StatusNoContent {
		t.Fatalf("wait=1: %d", status)
	}
	if d := time.Since(began); d < 900*time.Millisecond {
		t.Errorf("wait=1 returned after %v", d)
	}

	// A waiting poll gets a task enqueued while it waits.
	out := a.pollAsync(30)
	eventually(t, 10*time.Second, "poll waiting", func() bool { return ts.pollWaiting(DefaultTenant) })
	id := enqueue(t, ts, sampleEnvelope(), EnqueueOptions{})
	got := waitFor(t, out, 10*time.Second, "poll")
	if got.status != http.StatusOK || got.env.TaskID != id {
		t.Fatalf("poll got %d %q, want 200 %q", got.status, got.env.TaskID, id)
	}
	if got.env.LeaseS != 300 || got.env.ChunkSize != 2 || got.env.Connector.BusinessID != "salesforce-prod" ||
		got.env.Auth.Credentials["client_secret"] != "vault://local/salesforce-prod/client_secret/v3" {
		t.Errorf("envelope %+v", got.env)
	}

	// Close ends waiting polls with 204.
	out = a.pollAsync(60)
	eventually(t, 10*time.Second, "poll waiting", func() bool { return ts.pollWaiting(DefaultTenant) })
	ts.Server.Close()
	if got := waitFor(t, out, 10*time.Second, "poll at close"); got.status != http.StatusNoContent {
		t.Errorf("poll at close: %d", got.status)
	}
}

func TestEnvelopePassThrough(t *testing.T) {
	ts, _ := start(t, Config{DefaultLease: 42 * time.Second})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	env := sampleEnvelope()
	delete(env, "lease_s")
	env["task_id"] = "tsk_given-1"
	id := enqueue(t, ts, env, EnqueueOptions{})
	if id != "tsk_given-1" {
		t.Errorf("task_id %q", id)
	}
	if _, err := ts.Admin.Enqueue(ctx, env, EnqueueOptions{}); !isAdminStatus(err, http.StatusConflict) {
		t.Errorf("same task_id again: %v", err)
	}
	r := a.do("GET", "/tasks/next?wait=0", nil)
	wantStatus(t, "poll", r, http.StatusOK)
	var m map[string]json.RawMessage
	if err := wire.Decode(r.body, &m, wire.Limits{}); err != nil {
		t.Fatal(err)
	}
	if string(m["lease_s"]) != "42" || string(m["task_id"]) != `"tsk_given-1"` || string(m["x_future"]) != `{"kept":true}` {
		t.Errorf("envelope %s", r.body)
	}
}

func TestEnqueueChecks(t *testing.T) {
	ts, _ := start(t, Config{})
	const secret = "literal-S3cret-value-xyz"
	tests := []struct {
		name   string
		mutate func(map[string]any)
		status int
	}{
		{"literal credential", func(e map[string]any) {
			e["auth"].(map[string]any)["credentials"] = map[string]string{"client_secret": secret}
		}, http.StatusBadRequest},
		{"bad task_id", func(e map[string]any) { e["task_id"] = "a/b" }, http.StatusBadRequest},
		{"bad business_id", func(e map[string]any) { e["connector"] = map[string]any{"business_id": "Bad ID"} }, http.StatusBadRequest},
		{"no method", func(e map[string]any) { delete(e, "method") }, http.StatusBadRequest},
		{"negative lease", func(e map[string]any) { e["lease_s"] = -1 }, http.StatusBadRequest},
		{"zero lease", func(e map[string]any) { e["lease_s"] = 0 }, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := sampleEnvelope()
			tt.mutate(env)
			_, err := ts.Admin.Enqueue(ctx, env, EnqueueOptions{})
			if !isAdminStatus(err, tt.status) {
				t.Fatalf("got %v, want %d", err, tt.status)
			}
			if strings.Contains(err.Error(), secret[:8]) {
				t.Errorf("error %q quotes the secret", err)
			}
			// Unchecked, the same envelope goes through for the agent to refuse.
			if _, err := ts.Admin.Enqueue(ctx, env, EnqueueOptions{Unchecked: true}); err != nil {
				t.Errorf("unchecked: %v", err)
			}
		})
	}
	// Case variants of a field are ambiguous for encoding/json: refused when
	// checked, passed on unchecked for the agent to refuse.
	caseVariant := `{"method":"http.sync","Method":"http.request","connector":{"business_id":"a"}}`
	if _, err := ts.Admin.Enqueue(ctx, caseVariant, EnqueueOptions{}); !isAdminStatus(err, http.StatusBadRequest) {
		t.Errorf("case variant: %v", err)
	}
	if _, err := ts.Admin.Enqueue(ctx, caseVariant, EnqueueOptions{Unchecked: true}); err != nil {
		t.Errorf("case variant unchecked: %v", err)
	}
	// What is not a JSON object without duplicate keys is refused even unchecked.
	for name, body := range map[string]string{
		"duplicate key":   `{"method":"http.sync","method":"http.request","connector":{"business_id":"a"}}`,
		"not an object":   `["method"]`,
		"trailing data":   `{"method":"http.sync","connector":{"business_id":"a"}} {}`,
		"byte order mark": "\xEF\xBB\xBF{}",
	} {
		if _, err := ts.Admin.Enqueue(ctx, body, EnqueueOptions{Unchecked: true}); !isAdminStatus(err, http.StatusBadRequest) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestLeaseExpiryReassignment(t *testing.T) {
	ts, clock := start(t, Config{})
	a := newAgent(t, ts, CreateTokenRequest{Tenant: "acme"}, nil)
	b := newAgent(t, ts, CreateTokenRequest{Tenant: "acme"}, nil)
	stranger := newAgent(t, ts, CreateTokenRequest{Tenant: "other"}, nil)
	for _, x := range []*testAgent{a, b, stranger} {
		x.register(nil)
	}
	env := sampleEnvelope()
	env["lease_s"] = 60
	id := enqueue(t, ts, env, EnqueueOptions{Tenant: "acme"})

	if status, _ := stranger.poll(0); status != http.StatusNoContent {
		t.Fatalf("another tenant's agent got %d", status)
	}
	status, got := a.poll(0)
	if status != http.StatusOK || got.TaskID != id {
		t.Fatalf("a: %d %q", status, got.TaskID)
	}
	if status, _ := b.poll(0); status != http.StatusNoContent {
		t.Fatalf("b while a holds the lease: %d", status)
	}
	wantStatus(t, "a chunk 0", a.do("POST", "/tasks/"+id+"/chunks", wire.Chunk{Seq: 0, Records: rec(`{"n":1}`)}), http.StatusOK)
	wantStatus(t, "stranger chunk", stranger.do("POST", "/tasks/"+id+"/chunks", wire.Chunk{Seq: 1}), http.StatusConflict)

	// b waits; the lease ends by the clock; Wake makes b's poll look again.
	out := b.pollAsync(30)
	eventually(t, 10*time.Second, "b waiting", func() bool { return ts.pollWaiting("acme") })
	clock.Advance(59 * time.Second)
	ts.Wake()
	clock.Advance(time.Second)
	ts.Wake()
	res := waitFor(t, out, 10*time.Second, "b's poll")
	if res.status != http.StatusOK || res.env.TaskID != id {
		t.Fatalf("b after lease expiry: %d %q", res.status, res.env.TaskID)
	}

	// a lost the lease: 409 everywhere; b starts again at seq 0.
	wantStatus(t, "a chunk 1", a.do("POST", "/tasks/"+id+"/chunks", wire.Chunk{Seq: 1}), http.StatusConflict)
	wantStatus(t, "a lease", a.do("POST", "/tasks/"+id+"/lease", nil), http.StatusConflict)
	wantStatus(t, "a result", a.do("POST", "/tasks/"+id+"/result", wire.Result{Status: wire.StatusCompleted}), http.StatusConflict)
	wantStatus(t, "b chunk 0", b.do("POST", "/tasks/"+id+"/chunks", wire.Chunk{Seq: 0, Records: rec(`{"n":1}`), Final: true}), http.StatusOK)
	wantStatus(t, "b result", b.do("POST", "/tasks/"+id+"/result", wire.Result{Status: wire.StatusCompleted, Records: 1, Chunks: 1}), http.StatusOK)

	ti, err := ts.Admin.Task(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ti.State != TaskCompleted || ti.AgentID != b.agentID || ti.Attempts != 2 || len(ti.Claims) != 2 ||
		ti.Claims[0].AgentID != a.agentID || len(ti.Chunks) != 1 || ti.Result == nil {
		t.Errorf("task %+v", ti)
	}
	// A finished task is never handed out again.
	clock.Advance(time.Hour)
	if status, _ := a.poll(0); status != http.StatusNoContent {
		t.Errorf("finished task polled again: %d", status)
	}
}

func TestLeaseExpiryRealClock(t *testing.T) {
	// With the real clock, a waiting poll wakes by itself when a lease ends.
	ts, err := Start(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	b := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	b.register(nil)
	env := sampleEnvelope()
	env["lease_s"] = 1
	id := enqueue(t, ts, env, EnqueueOptions{})
	if status, got := a.poll(0); status != http.StatusOK || got.TaskID != id {
		t.Fatalf("a: %d", status)
	}
	status, got := b.poll(10)
	if status != http.StatusOK || got.TaskID != id {
		t.Fatalf("b: %d %q", status, got.TaskID)
	}
}

func TestLeaseRenewal(t *testing.T) {
	ts, clock := start(t, Config{})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	b := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	b.register(nil)
	env := sampleEnvelope()
	env["lease_s"] = 90
	id := enqueue(t, ts, env, EnqueueOptions{})
	a.poll(0)
	for i := 0; i < 3; i++ {
		clock.Advance(60 * time.Second)
		r := a.do("POST", "/tasks/"+id+"/lease", nil)
		wantStatus(t, "renew", r, http.StatusOK)
		var lr wire.LeaseResponse
		if err := wire.Decode(r.body, &lr, wire.Limits{}); err != nil || lr.LeaseS != 90 {
			t.Fatalf("renew body %s", r.body)
		}
		if status, _ := b.poll(0); status != http.StatusNoContent {
			t.Fatalf("renewed lease taken: %d", status)
		}
	}
	wantStatus(t, "renew with {}", a.do("POST", "/tasks/"+id+"/lease", []byte(`{}`)), http.StatusOK)
	wantStatus(t, "renew with junk", a.do("POST", "/tasks/"+id+"/lease", []byte(`{"a":1,"a":2}`)), http.StatusBadRequest)
	wantStatus(t, "b renews a's lease", b.do("POST", "/tasks/"+id+"/lease", nil), http.StatusConflict)
	wantStatus(t, "unknown task", a.do("POST", "/tasks/tsk_nope/lease", nil), http.StatusConflict)
}

func rec(records ...string) []json.RawMessage {
	out := []json.RawMessage{}
	for _, r := range records {
		out = append(out, json.RawMessage(r))
	}
	return out
}

func TestChunksAndResult(t *testing.T) {
	ts, _ := start(t, Config{})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	id := enqueue(t, ts, sampleEnvelope(), EnqueueOptions{}) // chunk_size 2
	a.poll(0)
	path := "/tasks/" + id + "/chunks"

	wantStatus(t, "seq 0", a.do("POST", path, wire.Chunk{Seq: 0, Records: rec(`{"id":1}`, `{"id":2}`)}), http.StatusOK)
	wantStatus(t, "seq 0 again", a.do("POST", path, wire.Chunk{Seq: 0, Records: rec(`{"id":1}`, `{"id":2}`)}), http.StatusOK)
	wantStatus(t, "seq 2 (gap)", a.do("POST", path, wire.Chunk{Seq: 2, Records: rec(`{"id":5}`)}), http.StatusBadRequest)
	wantStatus(t, "negative seq", a.do("POST", path, []byte(`{"seq":-1,"records":[]}`)), http.StatusBadRequest)
	wantStatus(t, "over chunk_size", a.do("POST", path, wire.Chunk{Seq: 1, Records: rec(`1`, `2`, `3`)}), http.StatusBadRequest)
	wantStatus(t, "duplicate key", a.do("POST", path, []byte(`{"seq":1,"seq":1,"records":[]}`)), http.StatusBadRequest)
	wantStatus(t, "duplicate key in a record", a.do("POST", path, []byte(`{"seq":1,"records":[{"a":1,"a":2}]}`)), http.StatusBadRequest)
	wantStatus(t, "seq 1", a.do("POST", path, wire.Chunk{Seq: 1, Records: rec(`{"id":3}`, `{"Id":3,"ID":4}`)}), http.StatusOK)
	wantStatus(t, "seq 2 final, empty", a.do("POST", path, wire.Chunk{Seq: 2, Final: true}), http.StatusOK)
	wantStatus(t, "seq 3 after final", a.do("POST", path, wire.Chunk{Seq: 3, Records: rec(`{}`)}), http.StatusBadRequest)
	wantStatus(t, "seq 2 again after final", a.do("POST", path, wire.Chunk{Seq: 2, Final: true}), http.StatusOK)

	res := wire.Result{Status: wire.StatusCompleted, DurationMS: 12, Records: 4, Chunks: 3, ResultBytes: 40}
	wantStatus(t, "bad status", a.do("POST", "/tasks/"+id+"/result", wire.Result{Status: "done"}), http.StatusBadRequest)
	wantStatus(t, "failed without class", a.do("POST", "/tasks/"+id+"/result", wire.Result{Status: wire.StatusFailed}), http.StatusBadRequest)
	wantStatus(t, "unknown class", a.do("POST", "/tasks/"+id+"/result", wire.Result{Status: wire.StatusFailed, ErrorClass: "oops"}), http.StatusBadRequest)
	wantStatus(t, "result", a.do("POST", "/tasks/"+id+"/result", res), http.StatusOK)
	// A retry is acknowledged; the first result stays.
	wantStatus(t, "result again", a.do("POST", "/tasks/"+id+"/result", wire.Result{Status: wire.StatusFailed, ErrorClass: wire.ErrTimeout}), http.StatusOK)
	wantStatus(t, "lease after result", a.do("POST", "/tasks/"+id+"/lease", nil), http.StatusConflict)
	wantStatus(t, "new chunk after result", a.do("POST", path, wire.Chunk{Seq: 3}), http.StatusConflict)

	ti, err := ts.Admin.Task(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ti.State != TaskCompleted || ti.Records != 4 || ti.NextSeq != 3 || !ti.Final || len(ti.Chunks) != 3 ||
		ti.Result == nil || ti.Result.Status != wire.StatusCompleted || ti.Result.DurationMS != 12 || ti.FinishedAt == nil {
		t.Fatalf("task %+v", ti)
	}
	if string(ti.Chunks[1].Records[1]) != `{"Id":3,"ID":4}` || ti.Chunks[2].Records == nil {
		t.Errorf("chunks %+v", ti.Chunks)
	}
	var env wire.Envelope
	if err := wire.Decode(ti.Envelope, &env, wire.Limits{}); err != nil || env.TaskID != id {
		t.Errorf("admin envelope %s: %v", ti.Envelope, err)
	}
	tasks, err := ts.Admin.Tasks(ctx)
	if err != nil || len(tasks) != 1 || tasks[0].Envelope != nil || tasks[0].Chunks != nil {
		t.Errorf("task list %+v, %v", tasks, err)
	}
}

func TestFailedResult(t *testing.T) {
	ts, _ := start(t, Config{})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	id := enqueue(t, ts, sampleEnvelope(), EnqueueOptions{})
	a.poll(0)
	wantStatus(t, "result", a.do("POST", "/tasks/"+id+"/result", []byte(
		`{"status":"failed","duration_ms":3,"records":0,"chunks":0,"result_bytes":0,"error_class":"binding_violation","error":"next link leaves the origin","response":null}`)), http.StatusOK)
	ti, _ := ts.Admin.Task(ctx, id)
	if ti.State != TaskFailed || ti.Result.ErrorClass != wire.ErrBindingViolation {
		t.Errorf("task %+v", ti)
	}
	if _, err := ts.Admin.CancelTask(ctx, id); !isAdminStatus(err, http.StatusConflict) {
		t.Errorf("cancel finished task: %v", err)
	}
}

func TestCancel(t *testing.T) {
	ts, _ := start(t, Config{})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	id := enqueue(t, ts, sampleEnvelope(), EnqueueOptions{})
	a.poll(0)
	wantStatus(t, "chunk", a.do("POST", "/tasks/"+id+"/chunks", wire.Chunk{Seq: 0}), http.StatusOK)
	ti, err := ts.Admin.CancelTask(ctx, id)
	if err != nil || ti.State != TaskCancelled {
		t.Fatalf("cancel: %+v %v", ti, err)
	}
	wantStatus(t, "chunk after cancel", a.do("POST", "/tasks/"+id+"/chunks", wire.Chunk{Seq: 1}), http.StatusGone)
	wantStatus(t, "lease after cancel", a.do("POST", "/tasks/"+id+"/lease", nil), http.StatusGone)
	wantStatus(t, "result after cancel", a.do("POST", "/tasks/"+id+"/result", wire.Result{Status: wire.StatusFailed, ErrorClass: wire.ErrCancelled}), http.StatusGone)

	// A queued task that is cancelled is never handed out.
	id2 := enqueue(t, ts, sampleEnvelope(), EnqueueOptions{})
	if _, err := ts.Admin.CancelTask(ctx, id2); err != nil {
		t.Fatal(err)
	}
	if status, _ := a.poll(0); status != http.StatusNoContent {
		t.Errorf("cancelled task polled: %d", status)
	}
	if _, err := ts.Admin.CancelTask(ctx, "tsk_none"); !isAdminStatus(err, http.StatusNotFound) {
		t.Errorf("cancel unknown: %v", err)
	}
}

func TestEvents(t *testing.T) {
	ts, clock := start(t, Config{})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	at := clock.Now()
	batch := wire.EventBatch{Events: []wire.Event{
		{Type: wire.EventRegistered, At: at},
		{Type: wire.EventTaskClaimed, At: at, TaskID: "tsk_1", Method: wire.MethodHTTPSync, Connector: "salesforce-prod"},
		{Type: wire.EventTaskFailed, At: at, TaskID: "tsk_1", DurationMS: 5, ErrorClass: wire.ErrTimeout},
		{Type: wire.EventSelfUpdateReverted, At: at, From: "1.5.0", To: "1.4.0", Reason: "crashed"},
	}}
	r := a.do("POST", "/events", batch)
	wantStatus(t, "events", r, http.StatusOK)

	all, err := ts.Admin.Events(ctx, EventQuery{AgentID: a.agentID})
	if err != nil || len(all) != 4 {
		t.Fatalf("events %+v %v", all, err)
	}
	if all[1].Event.Connector != "salesforce-prod" || all[2].Event.ErrorClass != wire.ErrTimeout || all[3].Event.From != "1.5.0" ||
		!all[0].Event.At.Equal(at) || all[0].AgentID != a.agentID {
		t.Errorf("stored %+v", all)
	}
	some, _ := ts.Admin.Events(ctx, EventQuery{TaskID: "tsk_1", After: all[1].Seq})
	if len(some) != 1 || some[0].Event.Type != wire.EventTaskFailed {
		t.Errorf("filtered %+v", some)
	}
	byType, _ := ts.Admin.Events(ctx, EventQuery{Type: wire.EventRegistered})
	if len(byType) != 1 {
		t.Errorf("by type %+v", byType)
	}

	big := wire.EventBatch{}
	for i := 0; i < 101; i++ {
		big.Events = append(big.Events, wire.Event{Type: wire.EventTaskClaimed, At: at})
	}
	wantStatus(t, "101 events", a.do("POST", "/events", big), http.StatusBadRequest)
	wantStatus(t, "no type", a.do("POST", "/events", []byte(`{"events":[{"at":"2026-01-01T00:00:00Z"}]}`)), http.StatusBadRequest)
	wantStatus(t, "bad time", a.do("POST", "/events", []byte(`{"events":[{"type":"x","at":"soon"}]}`)), http.StatusBadRequest)
}

func TestEventsBounded(t *testing.T) {
	ts, clock := start(t, Config{MaxEvents: 10})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	for i := 0; i < 5; i++ {
		batch := wire.EventBatch{}
		for j := 0; j < 4; j++ {
			batch.Events = append(batch.Events, wire.Event{Type: wire.EventTaskClaimed, At: clock.Now()})
		}
		wantStatus(t, "events", a.do("POST", "/events", batch), http.StatusOK)
	}
	evs, _ := ts.Admin.Events(ctx, EventQuery{})
	if len(evs) < 10 || len(evs) > 11 || evs[len(evs)-1].Seq != 20 {
		t.Errorf("kept %d events, last seq %d", len(evs), evs[len(evs)-1].Seq)
	}
}

func TestUpdateOffer(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ts, _ := start(t, Config{ReleasePublicKey: pub})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)

	if r := a.do("GET", "/update?current=1.4.0", nil); r.status != http.StatusNoContent {
		t.Fatalf("no release: %d", r.status)
	}
	if r := a.heartbeat("1.4.0"); strings.Contains(string(r.body), "update_available") {
		t.Fatalf("heartbeat without release: %s", r.body)
	}
	binary := bytes.Repeat([]byte("new agent binary "), 1000)
	if _, err := ts.Admin.PublishRelease(ctx, "1.5.0", "linux", "amd64", binary); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Admin.PublishRelease(ctx, "1.9.0", "linux", "arm64", []byte("arm")); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Admin.PublishRelease(ctx, "1.5.0", "linux", "amd64", binary); !isAdminStatus(err, http.StatusConflict) {
		t.Errorf("publish twice: %v", err)
	}

	var hb wire.HeartbeatResponse
	if err := wire.Decode(a.heartbeat("1.4.0").body, &hb, wire.Limits{}); err != nil || !hb.UpdateAvailable {
		t.Fatalf("heartbeat: %+v %v", hb, err)
	}
	hb = wire.HeartbeatResponse{}
	if err := wire.Decode(a.heartbeat("1.5.0").body, &hb, wire.Limits{}); err != nil || hb.UpdateAvailable {
		t.Fatalf("heartbeat at 1.5.0: %+v %v", hb, err)
	}

	r := a.do("GET", "/update?current=1.4.0", nil)
	wantStatus(t, "offer", r, http.StatusOK)
	var offer wire.UpdateOffer
	if err := wire.Decode(r.body, &offer, wire.Limits{}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(binary)
	if offer.Version != "1.5.0" || offer.OS != "linux" || offer.Arch != "amd64" || offer.Size != int64(len(binary)) ||
		offer.SHA256 != hex.EncodeToString(sum[:]) || offer.URL != "/api/agent/v1/update/1.5.0/binary" || offer.Ed25519 != "" {
		t.Fatalf("offer %+v", offer)
	}
	manifest := wire.UpdateManifest(a.agentID, offer.Version, offer.OS, offer.Arch, offer.Size, offer.SHA256)
	if want := "rv-agent-update/v1\n" + a.agentID + "\n1.5.0\nlinux/amd64\n17000\n" + offer.SHA256 + "\n"; string(manifest) != want {
		t.Fatalf("manifest %q", manifest)
	}
	mac := hmac.New(sha256.New, []byte(a.updateKey))
	mac.Write(manifest)
	got, _ := hex.DecodeString(offer.HMACSHA256)
	if !hmac.Equal(got, mac.Sum(nil)) {
		t.Fatal("offer HMAC does not verify with the agent's update key")
	}
	if len(a.updateKey) < 32 {
		t.Errorf("update key of %d bytes", len(a.updateKey))
	}

	// The binary, from the offer's URL.
	bin := a.do("GET", offer.URL, nil)
	wantStatus(t, "binary", bin, http.StatusOK)
	if !bytes.Equal(bin.body, binary) {
		t.Fatal("binary differs")
	}
	wantStatus(t, "unknown version", a.do("GET", "/update/9.9.9/binary", nil), http.StatusNotFound)

	for _, current := range []string{"1.5.0", "1.6.0"} {
		if r := a.do("GET", "/update?current="+current, nil); r.status != http.StatusNoContent {
			t.Errorf("current=%s: %d", current, r.status)
		}
	}
	if r := a.do("GET", "/update?current=1.5.0-rc.1", nil); r.status != http.StatusOK {
		t.Errorf("pre-release current: %d", r.status)
	}
	wantStatus(t, "bad current", a.do("GET", "/update?current=latest", nil), http.StatusBadRequest)
	wantStatus(t, "no current", a.do("GET", "/update", nil), http.StatusBadRequest)

	// Each agent has its own MAC.
	b := newAgent(t, ts, CreateTokenRequest{}, nil)
	b.register(nil)
	var offerB wire.UpdateOffer
	wire.Decode(b.do("GET", "/update?current=1.0.0", nil).body, &offerB, wire.Limits{})
	if offerB.HMACSHA256 == offer.HMACSHA256 || offerB.HMACSHA256 == "" {
		t.Error("two agents got the same MAC")
	}

	// Signatures made offline over each agent's manifest.
	ms, err := ts.Admin.ReleaseManifests(ctx, "1.5.0", "linux", "amd64")
	if err != nil || len(ms) != 2 {
		t.Fatalf("manifests %+v %v", ms, err)
	}
	sigs := map[string][]byte{}
	for _, m := range ms {
		sigs[m.AgentID] = ed25519.Sign(priv, []byte(m.Manifest))
	}
	if _, err := ts.Admin.PutSignatures(ctx, "1.5.0", "linux", "amd64", map[string][]byte{a.agentID: sigs[b.agentID]}); !isAdminStatus(err, http.StatusBadRequest) {
		t.Errorf("a signature over another agent's manifest: %v", err)
	}
	ri, err := ts.Admin.PutSignatures(ctx, "1.5.0", "linux", "amd64", sigs)
	if err != nil || len(ri.SignedFor) != 2 {
		t.Fatalf("signatures: %+v %v", ri, err)
	}
	wire.Decode(a.do("GET", "/update?current=1.4.0", nil).body, &offer, wire.Limits{})
	sig, err := base64.StdEncoding.DecodeString(offer.Ed25519)
	if err != nil || !ed25519.Verify(pub, manifest, sig) {
		t.Errorf("offer signature does not verify: %q %v", offer.Ed25519, err)
	}

	if err := ts.Admin.DeleteRelease(ctx, "1.5.0", "linux", "amd64"); err != nil {
		t.Fatal(err)
	}
	if r := a.do("GET", "/update?current=1.4.0", nil); r.status != http.StatusNoContent {
		t.Errorf("after delete: %d", r.status)
	}
	rels, _ := ts.Admin.Releases(ctx)
	if len(rels) != 1 || rels[0].Arch != "arm64" {
		t.Errorf("releases %+v", rels)
	}
}

func TestInstallAndManifest(t *testing.T) {
	ts, _ := start(t, Config{InstallScript: "#!/bin/sh\nRV_CONTROL_PLANE_URL={{RV_CONTROL_PLANE_URL}}\n"})
	anon := &testAgent{t: t, ts: ts, client: ts.Client(nil), header: http.Header{}}
	r := anon.do("GET", "/agent/install", nil)
	wantStatus(t, "install", r, http.StatusOK)
	if string(r.body) != "#!/bin/sh\nRV_CONTROL_PLANE_URL="+ts.URL+"\n" {
		t.Errorf("script %q", r.body)
	}
	wantStatus(t, "manifest without token", anon.do("GET", "/api/agent/v1/manifest", nil), http.StatusUnauthorized)

	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	wantStatus(t, "manifest without release", a.do("GET", "/manifest", nil), http.StatusNotFound)
	binary := []byte("the agent")
	ts.Admin.PublishRelease(ctx, "1.4.0", "linux", "amd64", binary)
	ts.Admin.PublishRelease(ctx, "1.4.1", "linux", "amd64", []byte("the agent, fixed"))
	ts.Admin.PublishRelease(ctx, "1.4.0", "darwin", "arm64", []byte("mac"))

	r = a.do("GET", "/manifest", nil)
	wantStatus(t, "manifest", r, http.StatusOK)
	var m wire.Manifest
	if err := wire.Decode(r.body, &m, wire.Limits{}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("the agent, fixed"))
	if m.Version != "1.4.1" || m.OS != "linux" || m.Arch != "amd64" || m.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("manifest %+v", m)
	}
	// The installer is not registered: the binary URL names os and arch.
	bin := a.do("GET", m.URL, nil)
	wantStatus(t, "binary", bin, http.StatusOK)
	if s := sha256.Sum256(bin.body); hex.EncodeToString(s[:]) != m.SHA256 {
		t.Error("binary does not match the manifest")
	}
	wantStatus(t, "binary without os/arch", a.do("GET", "/update/1.4.1/binary", nil), http.StatusBadRequest)
	r = a.do("GET", "/manifest?os=darwin&arch=arm64", nil)
	if wire.Decode(r.body, &m, wire.Limits{}) != nil || m.OS != "darwin" || m.Version != "1.4.0" {
		t.Errorf("darwin manifest %s", r.body)
	}

	none, _ := start(t, Config{})
	x := &testAgent{t: t, ts: none, client: none.Client(nil), header: http.Header{}}
	r = x.do("GET", "/agent/install", nil)
	wantStatus(t, "placeholder installer", r, http.StatusOK)
	if !strings.HasPrefix(string(r.body), "#!/bin/sh\n") || !strings.Contains(string(r.body), "exit 1") || !strings.Contains(string(r.body), none.URL) {
		t.Errorf("placeholder %q", r.body)
	}
}

func TestMTLS(t *testing.T) {
	ts, _ := start(t, Config{})
	certA, err := ts.CA.Client("agent-a")
	if err != nil {
		t.Fatal(err)
	}
	certB, err := ts.CA.Client("agent-b")
	if err != nil {
		t.Fatal(err)
	}
	fpA := wire.CertFingerprint(certA.Certificate[0])

	t.Run("match", func(t *testing.T) {
		a := newAgent(t, ts, CreateTokenRequest{}, &certA)
		// Colons and case do not matter.
		upper := strings.ToUpper(fpA)
		var pairs []string
		for i := 0; i < len(upper); i += 2 {
			pairs = append(pairs, upper[i:i+2])
		}
		colons := strings.Join(pairs, ":")
		a.register(&colons)
		wantStatus(t, "heartbeat with cert", a.heartbeat("1.4.0"), http.StatusOK)
		info, _ := ts.Admin.Agent(ctx, a.agentID)
		if info.MTLSFingerprint != fpA {
			t.Errorf("registered fingerprint %q", info.MTLSFingerprint)
		}
		r := a.withCert(nil).heartbeat("1.4.0")
		wantStatus(t, "without cert", r, http.StatusForbidden)
		wantStatus(t, "other cert", a.withCert(&certB).heartbeat("1.4.0"), http.StatusForbidden)
		// Registering again without naming the certificate keeps the pin.
		wantStatus(t, "re-register without cert", a.withCert(nil).do("POST", "/register", registerBody(nil)), http.StatusForbidden)
		a.register(nil)
		wantStatus(t, "still pinned", a.withCert(nil).heartbeat("1.4.0"), http.StatusForbidden)
	})
	t.Run("mismatch at register", func(t *testing.T) {
		a := newAgent(t, ts, CreateTokenRequest{}, &certB)
		wantStatus(t, "names A, presents B", a.do("POST", "/register", registerBody(&fpA)), http.StatusForbidden)
		wantStatus(t, "names A, presents none", a.withCert(nil).do("POST", "/register", registerBody(&fpA)), http.StatusForbidden)
		bad := "zz"
		wantStatus(t, "malformed fingerprint", a.do("POST", "/register", registerBody(&bad)), http.StatusBadRequest)
	})
	t.Run("no mtls", func(t *testing.T) {
		// An agent that registers no fingerprint may present a certificate or not.
		a := newAgent(t, ts, CreateTokenRequest{}, &certB)
		a.register(nil)
		wantStatus(t, "with cert", a.heartbeat("1.4.0"), http.StatusOK)
		wantStatus(t, "without", a.withCert(nil).heartbeat("1.4.0"), http.StatusOK)
	})
	t.Run("pinned at token creation", func(t *testing.T) {
		a := newAgent(t, ts, CreateTokenRequest{MTLSFingerprint: fpA}, nil)
		wantStatus(t, "register without cert", a.do("POST", "/register", registerBody(nil)), http.StatusForbidden)
		wantStatus(t, "manifest without cert", a.do("GET", "/manifest", nil), http.StatusForbidden)
		a = a.withCert(&certA)
		a.register(nil)
		wantStatus(t, "heartbeat", a.heartbeat("1.4.0"), http.StatusOK)
	})
	t.Run("forwarded header not trusted", func(t *testing.T) {
		a := newAgent(t, ts, CreateTokenRequest{}, nil)
		a.header.Set(wire.HeaderClientCertFingerprint, fpA)
		wantStatus(t, "header only", a.do("POST", "/register", registerBody(&fpA)), http.StatusForbidden)
		// The header cannot stand in for a missing certificate after a
		// registration made with the real one either.
		b := newAgent(t, ts, CreateTokenRequest{}, &certA)
		b.register(&fpA)
		nb := b.withCert(nil)
		nb.header.Set(wire.HeaderClientCertFingerprint, fpA)
		wantStatus(t, "header instead of cert", nb.heartbeat("1.4.0"), http.StatusForbidden)
	})
	t.Run("forwarded header trusted", func(t *testing.T) {
		tsLB, _ := start(t, Config{TrustForwardedFingerprint: true})
		a := newAgent(t, tsLB, CreateTokenRequest{}, nil)
		a.header.Set(wire.HeaderClientCertFingerprint, strings.ToUpper(fpA))
		a.register(&fpA)
		wantStatus(t, "heartbeat via header", a.heartbeat("1.4.0"), http.StatusOK)
		other := a.withCert(nil)
		other.header.Set(wire.HeaderClientCertFingerprint, wire.CertFingerprint(certB.Certificate[0]))
		wantStatus(t, "other fingerprint in header", other.heartbeat("1.4.0"), http.StatusForbidden)
		garbage := a.withCert(nil)
		garbage.header.Set(wire.HeaderClientCertFingerprint, "not-hex")
		wantStatus(t, "garbage header", garbage.heartbeat("1.4.0"), http.StatusForbidden)
		none := a.withCert(nil)
		none.header.Del(wire.HeaderClientCertFingerprint)
		wantStatus(t, "no header, no cert", none.heartbeat("1.4.0"), http.StatusForbidden)
	})
}

func TestFaultInjection(t *testing.T) {
	ts, _ := start(t, Config{})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	b := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	b.register(nil)

	tests := []struct {
		name  string
		fault Fault
		do    func() response
	}{
		{"503 with Retry-After", Fault{Endpoint: EndpointHeartbeat, Status: 503, RetryAfter: "7", Count: 2}, func() response { return a.heartbeat("1.4.0") }},
		{"429", Fault{Endpoint: EndpointTasksNext, Status: 429, RetryAfter: "120"}, func() response { return a.do("GET", "/tasks/next?wait=0", nil) }},
		{"500", Fault{Endpoint: EndpointEvents, Status: 500}, func() response { return a.do("POST", "/events", wire.EventBatch{}) }},
		{"401", Fault{Endpoint: EndpointRegister, Status: 401}, func() response { return a.do("POST", "/register", registerBody(nil)) }},
		{"403", Fault{Endpoint: EndpointUpdate, Status: 403}, func() response { return a.do("GET", "/update?current=1.0.0", nil) }},
		{"409 on chunks", Fault{Endpoint: EndpointChunks, Status: 409}, func() response { return a.do("POST", "/tasks/t/chunks", wire.Chunk{}) }},
		{"410 on result", Fault{Endpoint: EndpointResult, Status: 410}, func() response { return a.do("POST", "/tasks/t/result", wire.Result{}) }},
		{"413 on chunks", Fault{Endpoint: EndpointChunks, Status: 413}, func() response { return a.do("POST", "/tasks/t/chunks", wire.Chunk{}) }},
		{"409 on lease", Fault{Endpoint: EndpointLease, Status: 409}, func() response { return a.do("POST", "/tasks/t/lease", nil) }},
		{"every endpoint", Fault{Endpoint: "*", Status: 502}, func() response { return a.do("GET", "/manifest", nil) }},
		{"only agent a", Fault{Endpoint: EndpointHeartbeat, Status: 503, AgentID: "agt_a"}, nil},
		{"oversized body", Fault{Endpoint: EndpointHeartbeat, Status: 200, BodyBytes: 2 << 20}, func() response { return a.heartbeat("1.4.0") }},
		{"custom body", Fault{Endpoint: EndpointTasksNext, Status: 200, Body: `{"task_id":"x","task_id":"y"}`}, func() response { return a.do("GET", "/tasks/next?wait=0", nil) }},
		{"204 on install", Fault{Endpoint: EndpointInstall, Status: 204}, func() response { return a.do("GET", "/agent/install", nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.do == nil {
				tt.fault.AgentID = a.agentID
				tt.do = func() response { return a.heartbeat("1.4.0") }
				if _, err := ts.Admin.AddFault(ctx, tt.fault); err != nil {
					t.Fatal(err)
				}
				wantStatus(t, "other agent", b.heartbeat("1.4.0"), http.StatusOK)
			} else if _, err := ts.Admin.AddFault(ctx, tt.fault); err != nil {
				t.Fatal(err)
			}
			n := max(tt.fault.Count, 1)
			for i := 0; i < n; i++ {
				r := tt.do()
				wantStatus(t, "faulted", r, tt.fault.Status)
				if r.header.Get("Retry-After") != tt.fault.RetryAfter {
					t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
				}
				if tt.fault.BodyBytes > 0 && len(r.body) != tt.fault.BodyBytes {
					t.Errorf("body of %d bytes", len(r.body))
				}
				if tt.fault.Body != "" && string(r.body) != tt.fault.Body {
					t.Errorf("body %q", r.body)
				}
			}
			if faults, _ := ts.Admin.Faults(ctx); len(faults) != 0 {
				t.Fatalf("faults left: %+v", faults)
			}
		})
	}
	// After the faults, the real answers.
	wantStatus(t, "heartbeat", a.heartbeat("1.4.0"), http.StatusOK)

	// ClearFaults drops the unused ones; a bad fault is refused.
	ts.Admin.AddFault(ctx, Fault{Endpoint: EndpointHeartbeat, Status: 503, Count: 5})
	if err := ts.Admin.ClearFaults(ctx); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "after clear", a.heartbeat("1.4.0"), http.StatusOK)
	for _, f := range []Fault{{Endpoint: "nope", Status: 500}, {Endpoint: EndpointHeartbeat, Status: 99}, {Endpoint: EndpointHeartbeat, Status: 503, RetryAfter: "1\r\nX: y"}} {
		if _, err := ts.Admin.AddFault(ctx, f); !isAdminStatus(err, http.StatusBadRequest) {
			t.Errorf("fault %+v: %v", f, err)
		}
	}
}

func TestBodyLimits(t *testing.T) {
	ts, _ := start(t, Config{})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	id := enqueue(t, ts, map[string]any{"method": "http.sync", "connector": map[string]any{"business_id": "a"}}, EnqueueOptions{})
	a.poll(0)

	huge := `{"seq":0,"records":["` + strings.Repeat("x", wire.MaxBodyBytes) + `"]}`
	wantStatus(t, "chunk over 1 MiB", a.do("POST", "/tasks/"+id+"/chunks", []byte(huge)), http.StatusRequestEntityTooLarge)
	// Without a Content-Length (chunked transfer), too.
	wantStatus(t, "chunked body over 1 MiB", a.do("POST", "/tasks/"+id+"/chunks", strings.NewReader(huge)), http.StatusRequestEntityTooLarge)
	wantStatus(t, "heartbeat over 1 MiB", a.do("POST", "/heartbeat", []byte(`{"agent_id":"`+strings.Repeat("a", wire.MaxBodyBytes)+`"}`)), http.StatusRequestEntityTooLarge)
	wantStatus(t, "result over 1 MiB", a.do("POST", "/tasks/"+id+"/result", []byte(`{"status":"completed","response":"`+strings.Repeat("r", wire.MaxBodyBytes)+`"}`)), http.StatusRequestEntityTooLarge)
	deep := `{"seq":0,"records":[` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `]}`
	wantStatus(t, "chunk nested too deep", a.do("POST", "/tasks/"+id+"/chunks", []byte(deep)), http.StatusBadRequest)
	// The task still takes a chunk after all that.
	wantStatus(t, "chunk", a.do("POST", "/tasks/"+id+"/chunks", wire.Chunk{Seq: 0, Final: true}), http.StatusOK)

	// MaxTaskBytes caps what one task stores: past it, 413.
	small, _ := start(t, Config{MaxTaskBytes: 100})
	b := newAgent(t, small, CreateTokenRequest{}, nil)
	b.register(nil)
	id = enqueue(t, small, map[string]any{"method": "http.sync", "connector": map[string]any{"business_id": "a"}}, EnqueueOptions{})
	b.poll(0)
	wantStatus(t, "chunk within", b.do("POST", "/tasks/"+id+"/chunks", wire.Chunk{Seq: 0, Records: rec(`"` + strings.Repeat("x", 60) + `"`)}), http.StatusOK)
	wantStatus(t, "chunk past MaxTaskBytes", b.do("POST", "/tasks/"+id+"/chunks", wire.Chunk{Seq: 1, Records: rec(`"` + strings.Repeat("x", 60) + `"`)}), http.StatusRequestEntityTooLarge)
}

func TestStrictBodiesAndErrorsNotSecret(t *testing.T) {
	ts, _ := start(t, Config{})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	const secret = "S3cret-in-the-body-9x"
	bodies := map[string]string{
		"duplicate key":  `{"hostname":"h","hostname":"` + secret + `"}`,
		"case variant":   `{"hostname":"h","HOSTNAME":"` + secret + `"}`,
		"bom":            "\xEF\xBB\xBF" + `{"hostname":"` + secret + `"}`,
		"trailing":       `{"hostname":"h"}` + secret,
		"invalid utf-8":  `{"hostname":"` + secret + "\xff" + `"}`,
		"wrong type":     `{"hostname":"h","vault":{"entries":"` + secret + `"}}`,
		"empty":          ``,
		"secret as host": `{"hostname":"` + secret + "\x01" + `","version":"1.0.0","os":"linux","arch":"amd64"}`,
	}
	for name, body := range bodies {
		r := a.do("POST", "/register", []byte(body))
		if r.status != http.StatusBadRequest {
			t.Errorf("%s: %d", name, r.status)
		}
		if bytes.Contains(r.body, []byte(secret[:8])) {
			t.Errorf("%s: error body %s quotes the input", name, r.body)
		}
	}
}

// TestLogsHoldNoSecrets runs a whole exchange with a debug logger and
// checks that no token, update key or credential reference value is logged.
func TestLogsHoldNoSecrets(t *testing.T) {
	var buf lockedBuffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ts, _ := start(t, Config{Logger: logger})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	a.heartbeat("1.4.0")
	id := enqueue(t, ts, sampleEnvelope(), EnqueueOptions{})
	a.poll(0)
	a.do("POST", "/tasks/"+id+"/chunks", wire.Chunk{Seq: 0, Records: rec(`{"email":"x@example.com"}`), Final: true})
	a.do("POST", "/tasks/"+id+"/result", wire.Result{Status: wire.StatusCompleted})
	ts.Admin.PublishRelease(ctx, "1.5.0", "linux", "amd64", []byte("bin"))
	a.do("GET", "/update?current=1.4.0", nil)
	bad := a.withCert(nil)
	bad.token += "x"
	bad.heartbeat("1.4.0")
	ts.Admin.RevokeToken(ctx, a.tokenID)
	a.heartbeat("1.4.0")

	logs := buf.String()
	if !strings.Contains(logs, a.agentID) || !strings.Contains(logs, "task claimed") {
		t.Fatalf("logs do not show the exchange:\n%s", logs)
	}
	for _, secret := range []string{a.token, a.token[5:21], a.updateKey, a.updateKey[:16], ts.AdminToken, "x@example.com", "vault://"} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain %q", secret)
		}
	}
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

func TestTokensHashed(t *testing.T) {
	ts, _ := start(t, Config{})
	tok, err := ts.Admin.CreateToken(ctx, CreateTokenRequest{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Tenant != "acme" || !strings.HasPrefix(tok.Token, "rvat_") || len(tok.UpdateKey) != 64 {
		t.Errorf("token %+v", tok)
	}
	ts.mu.Lock()
	for _, st := range ts.tokens {
		if st.hash != sha256.Sum256([]byte(tok.Token)) {
			t.Error("token not stored as its SHA-256")
		}
	}
	ts.mu.Unlock()
	list, err := ts.Admin.Tokens(ctx)
	if err != nil || len(list) != 1 || list[0].TokenID != tok.TokenID {
		t.Fatalf("tokens %+v %v", list, err)
	}
	b, _ := json.Marshal(list)
	if bytes.Contains(b, []byte(tok.Token)) || bytes.Contains(b, []byte(tok.UpdateKey)) {
		t.Error("token list shows secrets")
	}
	for _, req := range []CreateTokenRequest{{Tenant: "Bad Tenant"}, {MTLSFingerprint: "xyz"}} {
		if _, err := ts.Admin.CreateToken(ctx, req); !isAdminStatus(err, http.StatusBadRequest) {
			t.Errorf("%+v: %v", req, err)
		}
	}
}

// With Config.Records the records go to the callback, once per accepted
// chunk and in seq order, with the chunk's final flag, and the control
// plane keeps only the counts.
func TestRecordsCallback(t *testing.T) {
	var got []string
	ts, _ := start(t, Config{Records: func(taskID string, seq int64, records []json.RawMessage, final bool) {
		for _, r := range records {
			got = append(got, fmt.Sprintf("%s/%d/%s", taskID[:4], seq, r))
		}
		if final {
			got = append(got, "final")
		}
	}})
	a := newAgent(t, ts, CreateTokenRequest{}, nil)
	a.register(nil)
	id := enqueue(t, ts, sampleEnvelope(), EnqueueOptions{}) // chunk_size 2
	a.poll(0)
	path := "/tasks/" + id + "/chunks"
	wantStatus(t, "seq 0", a.do("POST", path, wire.Chunk{Seq: 0, Records: rec(`{"id":1}`, `{"id":2}`)}), http.StatusOK)
	wantStatus(t, "seq 0 again", a.do("POST", path, wire.Chunk{Seq: 0, Records: rec(`{"id":1}`, `{"id":2}`)}), http.StatusOK)
	wantStatus(t, "seq 2 (gap)", a.do("POST", path, wire.Chunk{Seq: 2, Records: rec(`{"id":5}`)}), http.StatusBadRequest)
	wantStatus(t, "seq 1 final", a.do("POST", path, wire.Chunk{Seq: 1, Records: rec(`{"id":3}`), Final: true}), http.StatusOK)

	want := []string{"tsk_/0/{\"id\":1}", "tsk_/0/{\"id\":2}", "tsk_/1/{\"id\":3}", "final"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("callback got %q, want %q", got, want)
	}
	ti, err := ts.Admin.Task(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ti.Records != 3 || ti.NextSeq != 2 || !ti.Final || ti.Chunks != nil {
		t.Fatalf("task %+v", ti)
	}
}
