package agent_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rapidvalue/tier3-agent/controlplane"
)

// End-to-end tests of the auth schemes, of redirects and of the redaction
// of what targets echo: the real binary against real TLS targets.

const basicUser = "svc-rapidvalue"

// schemeCase is one auth scheme on its own connector.
type schemeCase struct {
	scheme string
	bid    string
	auth   map[string]any
	// check inspects the request the target received.
	check func(t *testing.T, r *http.Request)
}

// setupSchemes puts a connector per scheme in the vault, bound to base,
// and returns them: none, bearer, basic and api_key.
func setupSchemes(e *env, base string) []schemeCase {
	e.vaultIn(e2eSecrets["bearer"], "set", "crm-bearer", "token")
	e.vaultIn(basicUser, "set", "crm-basic", "username")
	e.vaultIn(e2eSecrets["basic_pw"], "set", "crm-basic", "password")
	e.vaultIn(e2eSecrets["api_key"], "set", "crm-apikey", "key")
	for _, bid := range []string{"crm-bearer", "crm-basic", "crm-apikey"} {
		e.vault("bind", bid, base)
	}
	return []schemeCase{
		{"none", "crm-none", map[string]any{"scheme": "none"}, func(t *testing.T, r *http.Request) {
			if r.Header.Get("Authorization") != "" || r.Header.Get("X-Api-Key") != "" {
				t.Errorf("scheme none sent credentials: %v", r.Header)
			}
		}},
		{"bearer", "crm-bearer", map[string]any{"scheme": "bearer", "credentials": map[string]any{"token": ref("crm-bearer", "token")}},
			func(t *testing.T, r *http.Request) {
				if r.Header.Get("Authorization") != "Bearer "+e2eSecrets["bearer"] {
					t.Errorf("bearer: the target did not get the token")
				}
			}},
		{"basic", "crm-basic", map[string]any{"scheme": "basic", "credentials": map[string]any{
			"username": ref("crm-basic", "username"), "password": ref("crm-basic", "password")}},
			func(t *testing.T, r *http.Request) {
				if u, p, ok := r.BasicAuth(); !ok || u != basicUser || p != e2eSecrets["basic_pw"] {
					t.Errorf("basic: the target did not get the user and password")
				}
			}},
		{"api_key", "crm-apikey", map[string]any{"scheme": "api_key", "header": "X-API-Key", "credentials": map[string]any{"key": ref("crm-apikey", "key")}},
			func(t *testing.T, r *http.Request) {
				if r.Header.Get("X-Api-Key") != e2eSecrets["api_key"] || r.Header.Get("Authorization") != "" {
					t.Errorf("api_key: the target did not get the key in X-API-Key alone")
				}
			}},
	}
}

// assertRedacted checks that a result carries no form of any secret, and
// that the echo was redacted (not dropped).
func assertRedacted(t *testing.T, what string, raw []byte, secrets ...string) {
	t.Helper()
	s := string(raw)
	for _, sec := range secrets {
		for _, f := range forms(sec) {
			if strings.Contains(s, f) {
				t.Errorf("%s: a form of a secret (%.6s…) came back", what, sec)
			}
		}
	}
	if !strings.Contains(s, "[REDACTED]") {
		t.Errorf("%s: nothing was redacted: %s", what, s)
	}
}

func TestAuthSchemes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, controlplane.Config{})
	tg := e.newTarget(echo)
	cases := setupSchemes(e, tg.URL)
	e.start()
	ids := map[string]string{}
	for _, c := range cases {
		ids[c.scheme] = e.enqueue(envelope("http.request", c.bid, tg.URL, c.auth,
			map[string]any{"method": "POST", "path": "/scheme/" + c.scheme, "body": map[string]any{"hello": c.scheme}}))
	}
	for _, c := range cases {
		t.Run(c.scheme, func(t *testing.T) {
			e := e.sub(t)
			ti := e.result(ids[c.scheme])
			resp := e.response(ti)
			var got *http.Request
			for _, r := range tg.requests() {
				if r.URL.Path == "/scheme/"+c.scheme {
					got = r
				}
			}
			if got == nil {
				t.Fatal("the target never got the request")
			}
			c.check(t, got)
			var echoed struct{ Body string }
			json.Unmarshal(resp.Body, &echoed)
			if resp.Status != 200 || echoed.Body != `{"hello":"`+c.scheme+`"}` {
				t.Errorf("response: %s", ti.Result.Response)
			}
			if c.scheme != "none" {
				assertRedacted(t, c.scheme, ti.Result.Response, e2eSecrets["bearer"], e2eSecrets["basic_pw"], e2eSecrets["api_key"])
			}
			if c.scheme == "basic" {
				// The Basic credentials whole, as the target echoed them.
				whole := base64.StdEncoding.EncodeToString([]byte(basicUser + ":" + e2eSecrets["basic_pw"]))
				if strings.Contains(string(ti.Result.Response), whole) {
					t.Errorf("basic: the echoed Authorization came back")
				}
			}
		})
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}

// tokenEndpoint is an OAuth2 token endpoint that issues one access token
// per grant and counts its calls.
type tokenEndpoint struct {
	calls atomic.Int64
	grant string
	want  map[string]string // form fields it requires
	token string
}

func (te *tokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	te.calls.Add(1)
	if err := r.ParseForm(); err != nil || r.Method != "POST" {
		http.Error(w, "bad request", 400)
		return
	}
	for k, v := range te.want {
		if r.PostForm.Get(k) != v {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			fmt.Fprintf(w, `{"error":"invalid_request","field":%q}`, k)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"access_token": te.token, "token_type": "Bearer", "expires_in": 3600})
}

func TestAuthOAuth2(t *testing.T) {
	t.Parallel()
	e := newEnv(t, controlplane.Config{})
	const refreshAccess = "Access-Token-From-Refresh-0008"
	e.addSecret(refreshAccess)
	cc := &tokenEndpoint{token: e2eSecrets["access_token"], want: map[string]string{
		"grant_type": "client_credentials", "client_id": "rv-client", "client_secret": e2eSecrets["client_secret"], "scope": "api.read"}}
	rt := &tokenEndpoint{token: refreshAccess, want: map[string]string{
		"grant_type": "refresh_token", "client_id": "rv-client", "client_secret": e2eSecrets["client_secret"], "refresh_token": e2eSecrets["refresh_token"]}}
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/cc", cc)
	mux.Handle("POST /oauth/rt", rt)
	mux.HandleFunc("/", echo)
	tg := e.newTarget(mux.ServeHTTP)
	for _, bid := range []string{"erp-cc", "erp-rt"} {
		e.vaultIn("rv-client", "set", bid, "client_id")
		e.vaultIn(e2eSecrets["client_secret"], "set", bid, "client_secret")
		e.vault("bind", bid, tg.URL)
	}
	e.vaultIn(e2eSecrets["refresh_token"], "set", "erp-rt", "refresh_token")
	e.start()

	grants := []struct {
		bid, scheme string
		ep          *tokenEndpoint
		auth        map[string]any
	}{
		{"erp-cc", "oauth2_client_credentials", cc, map[string]any{"scheme": "oauth2_client_credentials", "token_url": tg.URL + "/oauth/cc", "scope": "api.read",
			"credentials": map[string]any{"client_id": ref("erp-cc", "client_id"), "client_secret": ref("erp-cc", "client_secret")}}},
		{"erp-rt", "oauth2_refresh_token", rt, map[string]any{"scheme": "oauth2_refresh_token", "token_url": tg.URL + "/oauth/rt",
			"credentials": map[string]any{"client_id": ref("erp-rt", "client_id"), "client_secret": ref("erp-rt", "client_secret"), "refresh_token": ref("erp-rt", "refresh_token")}}},
	}
	for _, g := range grants {
		t.Run(g.scheme, func(t *testing.T) {
			e := e.sub(t)
			// Two tasks one after the other: the second uses the cached
			// token.
			for i := range 2 {
				path := "/api/" + g.bid + "/" + strconv.Itoa(i)
				ti := e.result(e.enqueue(envelope("http.request", g.bid, tg.URL, g.auth, map[string]any{"path": path})))
				resp := e.response(ti)
				if resp.Status != 200 {
					t.Fatalf("task %d: response %s", i, ti.Result.Response)
				}
				var got *http.Request
				for _, r := range tg.requests() {
					if r.URL.Path == path {
						got = r
					}
				}
				if got == nil || got.Header.Get("Authorization") != "Bearer "+g.ep.token {
					t.Fatalf("task %d: the target did not get the access token", i)
				}
				// The target echoed the access token: it comes back redacted.
				assertRedacted(t, g.scheme, ti.Result.Response, g.ep.token, e2eSecrets["client_secret"], e2eSecrets["refresh_token"])
			}
			if n := g.ep.calls.Load(); n != 1 {
				t.Errorf("the token endpoint was called %d times for two tasks, want 1 (the token is cached)", n)
			}
		})
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}

func TestRedirectToOtherOriginCarriesNoCredential(t *testing.T) {
	t.Parallel()
	e := newEnv(t, controlplane.Config{})
	b := e.newTarget(echo) // records everything it is sent
	a := e.newTarget(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/oauth/token" {
			// 307 keeps the method and the form, client_secret included.
			http.Redirect(w, r, b.URL+"/token", http.StatusTemporaryRedirect)
			return
		}
		http.Redirect(w, r, b.URL+"/collect?from="+url.QueryEscape(r.URL.Path), http.StatusFound)
	})
	cases := setupSchemes(e, a.URL)
	e.vaultIn("rv-client", "set", "crm-oauth", "client_id")
	e.vaultIn(e2eSecrets["client_secret"], "set", "crm-oauth", "client_secret")
	e.vault("bind", "crm-oauth", a.URL)
	e.start()
	ids := map[string]string{}
	for _, c := range cases {
		if c.scheme == "none" {
			continue
		}
		ids[c.scheme] = e.enqueue(envelope("http.request", c.bid, a.URL, c.auth, map[string]any{"path": "/start/" + c.scheme}))
	}
	oauth := e.enqueue(envelope("http.request", "crm-oauth", a.URL, map[string]any{
		"scheme": "oauth2_client_credentials", "token_url": a.URL + "/oauth/token",
		"credentials": map[string]any{"client_id": ref("crm-oauth", "client_id"), "client_secret": ref("crm-oauth", "client_secret")}},
		map[string]any{"path": "/start/oauth"}))
	t.Run("token endpoint", func(t *testing.T) {
		e := e.sub(t)
		e.wantFailed(e.result(oauth), "target_auth_failed")
	})
	for _, c := range cases {
		if c.scheme == "none" {
			continue
		}
		t.Run(c.scheme, func(t *testing.T) {
			e := e.sub(t)
			resp := e.response(e.result(ids[c.scheme]))
			if resp.Status != http.StatusFound || !strings.HasPrefix(resp.Headers["Location"], b.URL+"/collect") {
				t.Errorf("the result is not the redirect response: %d %v", resp.Status, resp.Headers)
			}
			for _, r := range a.requests() {
				if r.URL.Path == "/start/"+c.scheme {
					c.check(t, r) // A, the connector's origin, got the credential
				}
			}
		})
	}
	if n := len(b.requests()); n != 0 {
		t.Errorf("the other origin got %d requests, want none", n)
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}

func TestRedirectSameOriginFollowed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, controlplane.Config{})
	// /hop/N redirects to /hop/N-1; /hop/0 echoes.
	a := e.newTarget(func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/hop/"))
		if err != nil || n <= 0 {
			echo(w, r)
			return
		}
		http.Redirect(w, r, fmt.Sprintf("/hop/%d?chain=%s", n-1, r.URL.Query().Get("chain")), http.StatusFound)
	})
	e.vaultIn(e2eSecrets["bearer"], "set", "crm", "token")
	e.vault("bind", "crm", a.URL)
	e.start()
	hops := func(chain string) (n, withToken int) {
		for _, r := range a.requests() {
			if r.URL.Query().Get("chain") == chain {
				n++
				if r.Header.Get("Authorization") == "Bearer "+e2eSecrets["bearer"] {
					withToken++
				}
			}
		}
		return n, withToken
	}

	// Five redirects: followed, each with the credential.
	env := bearerTask("crm", a.URL, "/hop/5")
	env["request"].(map[string]any)["query"] = map[string]any{"chain": "five"}
	resp := e.response(e.result(e.enqueue(env)))
	if resp.Status != 200 || !strings.Contains(string(resp.Body), "/hop/0") {
		t.Errorf("five same-origin redirects were not followed to the end: %d %s", resp.Status, resp.Body)
	}
	if n, w := hops("five"); n != 6 || w != 6 {
		t.Errorf("the target got %d requests (%d with the credential), want 6 and 6", n, w)
	}

	// Six: the sixth redirect is not followed.
	env = bearerTask("crm", a.URL, "/hop/6")
	env["request"].(map[string]any)["query"] = map[string]any{"chain": "six"}
	ti := e.result(e.enqueue(env))
	if n, _ := hops("six"); n != 6 {
		t.Errorf("with six redirects the target got %d requests, want 6 (the first and five redirects)", n)
	}
	if ti.Result.Status == "completed" && e.response(ti).Status == 200 {
		t.Errorf("the sixth redirect was followed")
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}

// credentialOf returns the secret a request carries: the bearer token, the
// Basic password or the API key.
func credentialOf(r *http.Request) string {
	if _, pw, ok := r.BasicAuth(); ok {
		return pw
	}
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return tok
	}
	return r.Header.Get("X-Api-Key")
}

// secretEcho is a target that sends the credential back in every form:
// raw, base64 (both alphabets, padded or not) and URL-encoded, in headers
// and in the body (JSON, or text when the path ends in .txt).
func secretEcho(w http.ResponseWriter, r *http.Request) {
	sec := credentialOf(r)
	b := []byte(sec)
	fs := map[string]string{
		"raw": sec, "b64": base64.StdEncoding.EncodeToString(b), "b64raw": base64.RawStdEncoding.EncodeToString(b),
		"b64url": base64.URLEncoding.EncodeToString(b), "b64urlraw": base64.RawURLEncoding.EncodeToString(b),
		"query": url.QueryEscape(sec), "path": url.PathEscape(sec),
	}
	for k, v := range fs {
		w.Header().Set("X-Leak-"+k, v)
	}
	w.Header().Add("Set-Cookie", "session="+url.QueryEscape(sec))
	w.Header().Set("X-Leak-Embedded", "prefix-"+sec+"-suffix")
	if strings.HasSuffix(r.URL.Path, ".txt") {
		w.Header().Set("Content-Type", "text/plain")
		for k, v := range fs {
			fmt.Fprintf(w, "%s=%s\n", k, v)
		}
		return
	}
	fs["nested"] = "token is " + sec + " and again " + fs["b64"]
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"forms": fs, "list": []string{sec, fs["query"]}})
}

// allSecrets is a target that knows every vault value of the test and
// sends them all back: whatever task runs, none may leave the agent.
func allSecrets(w http.ResponseWriter, r *http.Request) {
	var vals []string
	for _, k := range []string{"bearer", "basic_pw", "api_key", "client_secret", "refresh_token"} {
		vals = append(vals, e2eSecrets[k], base64.StdEncoding.EncodeToString([]byte(e2eSecrets[k])), url.QueryEscape(e2eSecrets[k]))
	}
	w.Header().Set("X-Known", strings.Join(vals, " "))
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"known": vals})
}

func TestEchoedSecretsOfOtherConnectorsAreRedacted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, controlplane.Config{})
	tg := e.newTarget(allSecrets)
	setupSchemes(e, tg.URL)
	e.vaultIn(e2eSecrets["client_secret"], "set", "erp", "client_secret")
	e.vaultIn(e2eSecrets["refresh_token"], "set", "erp", "refresh_token")
	e.start()
	// A task without credentials, on a connector with no vault entry.
	ti := e.result(e.enqueue(envelope("http.request", "public", tg.URL, map[string]any{"scheme": "none"}, map[string]any{"path": "/"})))
	e.response(ti)
	var all []string
	for _, k := range []string{"bearer", "basic_pw", "api_key", "client_secret", "refresh_token"} {
		all = append(all, e2eSecrets[k])
	}
	assertRedacted(t, "none", ti.Result.Response, all...)
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}

func TestEchoedSecretsAreRedacted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, controlplane.Config{})
	tg := e.newTarget(secretEcho)
	cases := setupSchemes(e, tg.URL)
	e.start()
	type job struct{ name, id, secret string }
	var jobs []job
	for _, c := range cases {
		if c.scheme == "none" {
			continue
		}
		sec := map[string]string{"bearer": e2eSecrets["bearer"], "basic": e2eSecrets["basic_pw"], "api_key": e2eSecrets["api_key"]}[c.scheme]
		for _, path := range []string{"/echo.json", "/echo.txt"} {
			jobs = append(jobs, job{c.scheme + path, e.enqueue(envelope("http.request", c.bid, tg.URL, c.auth, map[string]any{"path": path})), sec})
		}
	}
	for _, j := range jobs {
		t.Run(j.name, func(t *testing.T) {
			e := e.sub(t)
			ti := e.result(j.id)
			resp := e.response(ti)
			assertRedacted(t, j.name, ti.Result.Response, j.secret)
			for k, v := range resp.Headers {
				if strings.HasPrefix(k, "X-Leak-") && !strings.Contains(v, "[REDACTED]") {
					t.Errorf("header %s: %q was not redacted", k, v)
				}
			}
			if resp.BodyBase64 != "" {
				body, err := base64.StdEncoding.DecodeString(resp.BodyBase64)
				if err != nil {
					t.Fatal(err)
				}
				assertRedacted(t, j.name+" body", body, j.secret)
				if n := strings.Count(string(body), "[REDACTED]"); n != 7 {
					t.Errorf("the text body has %d redactions, want 7:\n%s", n, body)
				}
			} else {
				assertRedacted(t, j.name+" body", resp.Body, j.secret)
			}
		})
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}
