package agent_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/controlplane"
)

// echo answers with what it received: the headers (credentials included)
// and the body, in a JSON body and in response headers: a target that
// echoes the secret back.
func echo(w http.ResponseWriter, r *http.Request) {
	hdr := map[string]string{}
	for k, v := range r.Header {
		hdr[k] = strings.Join(v, ",")
		w.Header().Set("X-Echo-"+k, strings.Join(v, ","))
	}
	body, _ := ioReadAll(r)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"headers": hdr, "body": string(body), "path": r.URL.Path, "query": r.URL.RawQuery})
}

func TestHTTPRequestBearerEchoIsRedacted(t *testing.T) {
	e := newEnv(t, controlplane.Config{})
	tg := e.newTarget(echo)
	e.vaultIn(e2eSecrets["bearer"], "set", "crm", "token")
	e.vault("bind", "crm", tg.URL)
	e.start()
	id := e.enqueue(envelope("http.request", "crm", tg.URL,
		map[string]any{"scheme": "bearer", "credentials": map[string]any{"token": ref("crm", "token")}},
		map[string]any{"method": "GET", "path": "/api/users/7", "query": map[string]any{"x": "1"}}))
	ti := e.result(id)
	if ti.Result.Status != "completed" {
		t.Fatalf("status %s: %s %s", ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
	}
	reqs := tg.requests()
	if len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer "+e2eSecrets["bearer"] {
		t.Fatalf("the target did not get the bearer token")
	}
	var resp struct {
		Status  int               `json:"status"`
		Headers map[string]string `json:"headers"`
		Body    json.RawMessage   `json:"body"`
	}
	if err := json.Unmarshal(ti.Result.Response, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Status != 200 || !strings.Contains(string(resp.Body), "[REDACTED]") || !strings.Contains(string(resp.Body), "/api/users/7") {
		t.Fatalf("response: %s", ti.Result.Response)
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}
