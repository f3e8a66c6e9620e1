package controlplane

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// fakeClock is the injectable clock of the tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// start starts a TestServer on a fake clock.
func start(t *testing.T, cfg Config) (*TestServer, *fakeClock) {
	t.Helper()
	clock := newFakeClock()
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	ts, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ts.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return ts, clock
}

// testAgent speaks the protocol by hand, as an agent would.
type testAgent struct {
	t         *testing.T
	ts        *TestServer
	client    *http.Client
	token     string
	tokenID   string
	updateKey string
	agentID   string
	header    http.Header // extra headers on every request
}

func newAgent(t *testing.T, ts *TestServer, req CreateTokenRequest, cert *tls.Certificate) *testAgent {
	t.Helper()
	tok, err := ts.Admin.CreateToken(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return &testAgent{t: t, ts: ts, client: ts.Client(cert), token: tok.Token, tokenID: tok.TokenID, updateKey: tok.UpdateKey, header: http.Header{}}
}

// withCert returns a copy of a that presents cert (nil: none).
func (a *testAgent) withCert(cert *tls.Certificate) *testAgent {
	b := *a
	b.client = a.ts.Client(cert)
	b.header = a.header.Clone()
	return &b
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request to path (relative to the agent API prefix unless it
// starts with "/agent/" or is absolute). body is sent as it is when []byte,
// else JSON-encoded.
func (a *testAgent) do(method, path string, body any) response {
	a.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case io.Reader:
		rd = b
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			a.t.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	u := path
	if !strings.HasPrefix(path, "/agent/") && !strings.HasPrefix(path, wire.APIPrefix) {
		u = wire.APIPrefix + path
	}
	req, err := http.NewRequest(method, a.ts.URL+u, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	req.Header.Set("User-Agent", "tier3-agent/1.4.0")
	if a.agentID != "" {
		req.Header.Set(wire.HeaderAgentID, a.agentID)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range a.header {
		req.Header[k] = v
	}
	resp, err := a.client.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func registerBody(fp *string) wire.RegisterRequest {
	return wire.RegisterRequest{
		Hostname:        "gw-01",
		Version:         "1.4.0",
		BinarySHA256:    strings.Repeat("ab", 32),
		OS:              "linux",
		Arch:            "amd64",
		Methods:         []string{wire.MethodHTTPRequest, wire.MethodHTTPSync},
		Vault:           wire.VaultSummary{Sealed: true, Seal: "tpm2", Entries: 2},
		MTLSFingerprint: fp,
	}
}

// register registers a and keeps its agent ID; it fails the test unless
// the answer is 200.
func (a *testAgent) register(fp *string) {
	a.t.Helper()
	r := a.do("POST", "/register", registerBody(fp))
	if r.status != http.StatusOK {
		a.t.Fatalf("register: %d %s", r.status, r.body)
	}
	var rr wire.RegisterResponse
	if err := wire.Decode(r.body, &rr, wire.Limits{}); err != nil {
		a.t.Fatal(err)
	}
	if a.agentID != "" && a.agentID != rr.AgentID {
		a.t.Fatalf("register again gave agent %s, was %s", rr.AgentID, a.agentID)
	}
	a.agentID = rr.AgentID
}

func (a *testAgent) heartbeat(version string) response {
	a.t.Helper()
	return a.do("POST", "/heartbeat", wire.Heartbeat{AgentID: a.agentID, Version: version, UptimeS: 10})
}

// poll long-polls with wait seconds and returns the status and envelope.
func (a *testAgent) poll(wait int) (int, wire.Envelope) {
	a.t.Helper()
	r := a.do("GET", "/tasks/next?wait="+itoa(wait), nil)
	var env wire.Envelope
	if r.status == http.StatusOK {
		if err := wire.Decode(r.body, &env, wire.Limits{}); err != nil {
			a.t.Fatalf("envelope: %v", err)
		}
	}
	return r.status, env
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func sampleEnvelope() map[string]any {
	return map[string]any{
		"method":    wire.MethodHTTPSync,
		"connector": map[string]any{"business_id": "salesforce-prod", "type": "rest", "base_url": "https://acme.my.salesforce.com"},
		"auth": map[string]any{"scheme": wire.SchemeOAuth2RefreshToken, "token_url": "https://login.salesforce.com/services/oauth2/token",
			"credentials": map[string]string{
				"client_id":     "vault://local/salesforce-prod/client_id",
				"client_secret": "vault://local/salesforce-prod/client_secret/v3",
				"refresh_token": "vault://local/salesforce-prod/refresh_token",
			}},
		"request":    map[string]any{"path": "/services/data/v60.0/query", "items": "/records", "next": map[string]string{"kind": "none"}},
		"lease_s":    300,
		"chunk_size": 2,
		"x_future":   map[string]any{"kept": true},
	}
}

func enqueue(t *testing.T, ts *TestServer, env any, opts EnqueueOptions) string {
	t.Helper()
	id, err := ts.Admin.Enqueue(context.Background(), env, opts)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func wantStatus(t *testing.T, what string, r response, want int) {
	t.Helper()
	if r.status != want {
		t.Fatalf("%s: status %d, want %d (body %s)", what, r.status, want, r.body)
	}
}

// pollResult runs a poll in a goroutine and returns the channel of its
// outcome, so that a test can start a long poll and act while it waits.
type pollOutcome struct {
	status int
	env    wire.Envelope
}

func (a *testAgent) pollAsync(wait int) <-chan pollOutcome {
	ch := make(chan pollOutcome, 1)
	go func() {
		// t.Fatal must not run off the test goroutine: do the request here
		// without the helpers that call it.
		req, _ := http.NewRequest("GET", a.ts.URL+wire.APIPrefix+"/tasks/next?wait="+itoa(wait), nil)
		req.Header.Set("Authorization", "Bearer "+a.token)
		req.Header.Set(wire.HeaderAgentID, a.agentID)
		resp, err := a.client.Do(req)
		if err != nil {
			ch <- pollOutcome{status: -1}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		out := pollOutcome{status: resp.StatusCode}
		if resp.StatusCode == http.StatusOK {
			if wire.Decode(b, &out.env, wire.Limits{}) != nil {
				out.status = -2
			}
		}
		ch <- out
	}()
	return ch
}

// waitFor fails the test if ch does not deliver within d.
func waitFor[T any](t *testing.T, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s: nothing within %v", what, d)
		panic("unreachable")
	}
}

// pollWaiting reports whether a long poll of tenant has found no task and
// waits for a wake-up (its signal channel exists and is not yet closed).
// A test polls it with a deadline before acting on a waiting poll.
func (ts *TestServer) pollWaiting(tenant string) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	_, ok := ts.signals[tenant]
	return ok
}

// eventually polls cond every few milliseconds until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(2 * time.Millisecond) // polling with a deadline, not synchronization
	}
}
