package agent_test

import (
	"testing"

	"github.com/rapidvalue/tier3-agent/controlplane"
)

// End-to-end tests of the envelope checks of PROTOCOL.md §3: each task
// fails with its class, and no target is contacted.

func TestEnvelopeChecksContactNoTarget(t *testing.T) {
	t.Parallel()
	e := newEnv(t, controlplane.Config{})
	tg := e.newTarget(echo)
	sink := e.newTarget(echo) // another origin: a token endpoint nobody bound
	e.vaultIn(e2eSecrets["bearer"], "set", "crm", "token")
	e.vault("bind", "crm", tg.URL)
	e.vaultIn(e2eSecrets["api_key"], "set", "other", "token")
	e.vault("bind", "other", tg.URL)
	e.vaultIn(e2eSecrets["bearer"], "set", "elsewhere", "token")
	e.vault("bind", "elsewhere", sink.URL)
	e.vaultIn(e2eSecrets["api_key"], "set", "keyed", "key")
	e.vault("bind", "keyed", tg.URL)
	e.vaultIn("rv-client", "set", "oauth", "client_id")
	e.vaultIn(e2eSecrets["client_secret"], "set", "oauth", "client_secret")
	e.vault("bind", "oauth", tg.URL)
	e.start()

	bearer := func(token string) map[string]any {
		return map[string]any{"scheme": "bearer", "credentials": map[string]any{"token": token}}
	}
	get := map[string]any{"path": "/must-not-arrive"}
	withHeader := func(name, value string) map[string]any {
		return map[string]any{"path": "/must-not-arrive", "headers": map[string]any{name: value}}
	}
	apiKey := map[string]any{"scheme": "api_key", "header": "X-API-Key", "credentials": map[string]any{"key": ref("keyed", "key")}}
	cases := []struct {
		name  string
		env   map[string]any
		class string
	}{
		{"literal secret", envelope("http.request", "crm", tg.URL, bearer(e2eSecrets["bearer"]), get), "invalid_envelope"},
		{"another vault", envelope("http.request", "crm", tg.URL, bearer("vault://remote/crm/token"), get), "invalid_envelope"},
		{"percent-encoded reference", envelope("http.request", "crm", tg.URL, bearer("vault://local/crm/%74oken"), get), "invalid_envelope"},
		{"dot segments", envelope("http.request", "crm", tg.URL, bearer("vault://local/crm/../other/token"), get), "invalid_envelope"},
		{"metadata field", envelope("http.request", "crm", tg.URL, bearer("vault://local/crm/_targets"), get), "invalid_envelope"},
		{"another connector's entry", envelope("http.request", "crm", tg.URL, bearer(ref("other", "token")), get), "invalid_envelope"},
		{"missing field", envelope("http.request", "crm", tg.URL, bearer(ref("crm", "nope")), get), "vault_reference_missing"},
		{"missing entry", envelope("http.request", "ghost", tg.URL, bearer(ref("ghost", "token")), get), "vault_reference_missing"},
		{"entry bound to another origin", envelope("http.request", "elsewhere", tg.URL, bearer(ref("elsewhere", "token")), get), "binding_violation"},
		{"unknown method", envelope("http.teleport", "crm", tg.URL, bearer(ref("crm", "token")), get), "unsupported_method"},
		{"unknown scheme", envelope("http.request", "crm", tg.URL, map[string]any{"scheme": "digest", "credentials": map[string]any{"token": ref("crm", "token")}}, get), "invalid_envelope"},
		{"header Authorization", envelope("http.request", "crm", tg.URL, bearer(ref("crm", "token")), withHeader("Authorization", "Bearer x")), "invalid_envelope"},
		{"header Cookie", envelope("http.request", "crm", tg.URL, bearer(ref("crm", "token")), withHeader("Cookie", "a=b")), "invalid_envelope"},
		{"header Host", envelope("http.request", "crm", tg.URL, bearer(ref("crm", "token")), withHeader("Host", "evil.example")), "invalid_envelope"},
		{"header host (lowercase)", envelope("http.request", "crm", tg.URL, bearer(ref("crm", "token")), withHeader("host", "evil.example")), "invalid_envelope"},
		{"header Proxy-Authorization", envelope("http.request", "crm", tg.URL, bearer(ref("crm", "token")), withHeader("Proxy-Authorization", "Basic eA==")), "invalid_envelope"},
		{"the scheme's own header", envelope("http.request", "keyed", tg.URL, apiKey, withHeader("x-api-key", "mine")), "invalid_envelope"},
		{"header with CRLF", envelope("http.request", "crm", tg.URL, bearer(ref("crm", "token")), withHeader("X-Note", "a\r\nX-Injected: 1")), "invalid_envelope"},
		{"http base_url", envelope("http.request", "crm", "http"+tg.URL[len("https"):], bearer(ref("crm", "token")), get), "invalid_envelope"},
		{"path leaving the origin", envelope("http.request", "crm", tg.URL, bearer(ref("crm", "token")), map[string]any{"path": "//" + sink.URL[len("https://"):] + "/x"}), "invalid_envelope"},
		{"token_url on another origin", envelope("http.request", "oauth", tg.URL, map[string]any{
			"scheme": "oauth2_client_credentials", "token_url": sink.URL + "/token",
			"credentials": map[string]any{"client_id": ref("oauth", "client_id"), "client_secret": ref("oauth", "client_secret")}}, get), "binding_violation"},
		{"http token_url", envelope("http.request", "oauth", tg.URL, map[string]any{
			"scheme": "oauth2_client_credentials", "token_url": "http" + tg.URL[len("https"):] + "/token",
			"credentials": map[string]any{"client_id": ref("oauth", "client_id"), "client_secret": ref("oauth", "client_secret")}}, get), "invalid_envelope"},
	}
	ids := make([]string, len(cases))
	for i, c := range cases {
		ids[i] = e.enqueue(c.env)
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) { e := e.sub(t); e.wantFailed(e.result(ids[i]), c.class) })
	}
	if n, m := len(tg.requests()), len(sink.requests()); n != 0 || m != 0 {
		t.Fatalf("the targets got %d and %d requests, want none", n, m)
	}
	// The same connector, checked, reaches the target: the zero above is
	// not a target that nobody could reach.
	e.response(e.result(e.enqueue(bearerTask("crm", tg.URL, "/allowed"))))
	if n := len(tg.requests()); n != 1 {
		t.Errorf("the target got %d requests, want 1", n)
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}

func TestEnvelopeRequireBinding(t *testing.T) {
	t.Parallel()
	e := newEnv(t, controlplane.Config{})
	tg := e.newTarget(echo)
	e.vaultIn(e2eSecrets["bearer"], "set", "loose", "token")
	e.vaultIn(e2eSecrets["bearer"], "set", "bound", "token")
	e.vault("bind", "bound", tg.URL)
	e.vars["RV_AGENT_REQUIRE_BINDING"] = "1"
	e.start()
	e.wantFailed(e.result(e.enqueue(bearerTask("loose", tg.URL, "/loose"))), "binding_violation")
	if n := len(tg.requests()); n != 0 {
		t.Fatalf("the target got %d requests, want none", n)
	}
	e.response(e.result(e.enqueue(bearerTask("bound", tg.URL, "/bound"))))
	if n := len(tg.requests()); n != 1 {
		t.Errorf("the target got %d requests, want 1", n)
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}
