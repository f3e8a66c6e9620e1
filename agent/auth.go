package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/awnumar/memguard"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/internal/wire"
	"github.com/rapidvalue/tier3-agent/vault"
)

// secret resolves one credential of the task's scheme into locked memory.
func (t *taskRun) secret(field string) (*memguard.LockedBuffer, error) {
	enc, err := t.sealedSecret(field)
	if err != nil {
		return nil, err
	}
	return enc.Open()
}

// sealedSecret finds one credential of the task's scheme, still sealed.
// The envelope was checked, so the reference parses and names this entry.
func (t *taskRun) sealedSecret(field string) (*secmem.Sealed, error) {
	ref, err := vault.ParseRef(t.env.Auth.Credentials[field])
	if err != nil {
		return nil, invalid("auth.credentials.%s: %v", field, err)
	}
	enc, err := t.st.vs.Vault.Sealed(ref)
	if err != nil {
		return nil, fail(wire.ErrVaultReferenceMissing, "%v", err)
	}
	return enc, nil
}

// authorize adds the scheme's credentials to req. net/http takes header
// values as Go strings, so each request makes a short-lived heap copy of
// the header value (SECURITY.md lists it).
func (t *taskRun) authorize(ctx context.Context, req *http.Request) error {
	switch t.env.Auth.Scheme {
	case wire.SchemeNone:
		return nil
	case wire.SchemeBearer:
		return t.withSecret("token", func(tok []byte) { req.Header.Set("Authorization", "Bearer "+string(tok)) })
	case wire.SchemeAPIKey:
		return t.withSecret("key", func(k []byte) { req.Header.Set(t.env.Auth.Header, string(k)) })
	case wire.SchemeBasic:
		user, err := t.secret("username")
		if err != nil {
			return err
		}
		defer user.Destroy()
		return t.withSecret("password", func(pw []byte) { req.SetBasicAuth(string(user.Bytes()), string(pw)) })
	case wire.SchemeOAuth2ClientCredentials, wire.SchemeOAuth2RefreshToken:
		tok, err := t.a.tokens.get(ctx, t)
		if err != nil {
			return err
		}
		defer tok.Destroy()
		eraseAfter(func() { req.Header.Set("Authorization", "Bearer "+string(tok.Bytes())) })
		return nil
	}
	return invalid("auth scheme %s does not apply to HTTP", t.env.Auth.Scheme)
}

// withSecret calls f with one credential of the task's scheme in clear,
// and wipes it when f returns; f must not keep the slice. The value is
// opened into the task's scratch memory (t.mem), not into fresh locked
// pages: a sync sets the header on every page, and mapping,
// locking and unmapping pages each time was a large share of the agent's
// CPU (docs/BENCHMARKS.md). f must not call withSecret: calls take turns.
func (t *taskRun) withSecret(field string, f func([]byte)) error {
	enc, err := t.sealedSecret(field)
	if err != nil {
		return err
	}
	return t.mem.With(enc, func(b []byte) { eraseAfter(func() { f(b) }) })
}

// tokenCache keeps OAuth2 access tokens sealed until 60 s before they
// expire, per connector, token endpoint, scheme and scope.
type tokenCache struct {
	mu     sync.Mutex
	tokens map[string]cachedToken
}

type cachedToken struct {
	tok     *secmem.Sealed
	expires time.Time
	gen     int64 // vault generation it was obtained with
}

const (
	tokenEarly       = 60 * time.Second
	maxTokenResponse = 64 << 10
)

func (c *tokenCache) key(t *taskRun) string {
	a := t.env.Auth
	return strings.Join([]string{t.env.Connector.BusinessID, a.Scheme, a.TokenURL, a.Scope,
		a.Credentials["client_id"], a.Credentials["client_secret"], a.Credentials["refresh_token"]}, "\x00")
}

// get returns a valid access token in locked memory, from the cache or the
// token endpoint.
func (c *tokenCache) get(ctx context.Context, t *taskRun) (*memguard.LockedBuffer, error) {
	k := c.key(t)
	now := t.a.clock.Now()
	c.mu.Lock()
	ct, ok := c.tokens[k]
	c.mu.Unlock()
	if ok && ct.gen == t.st.generation && now.Before(ct.expires.Add(-tokenEarly)) {
		return ct.tok.Open()
	}
	tok, ttl, err := t.fetchToken(ctx)
	if err != nil {
		return nil, err
	}
	// Tokens the agent obtains are secrets too: redact them everywhere,
	// and refuse one that cannot be redacted.
	if err := t.st.redact.add(tok.Bytes()); err != nil {
		tok.Destroy()
		return nil, fail(wire.ErrTargetAuthFailed, "%v", err)
	}
	sealed, err := secmem.SealValue(append([]byte(nil), tok.Bytes()...))
	if err != nil {
		tok.Destroy()
		return nil, err
	}
	c.mu.Lock()
	if c.tokens == nil {
		c.tokens = map[string]cachedToken{}
	}
	c.tokens[k] = cachedToken{tok: sealed, expires: now.Add(ttl), gen: t.st.generation}
	c.mu.Unlock()
	return tok, nil
}

// fetchToken runs the grant against the token endpoint (no redirects).
// The form body is built from Go strings: net/http and url.Values need
// them (SECURITY.md lists the copy).
func (t *taskRun) fetchToken(ctx context.Context) (*memguard.LockedBuffer, time.Duration, error) {
	form := url.Values{}
	for _, f := range schemeFields[t.env.Auth.Scheme] {
		b, err := t.secret(f)
		if err != nil {
			return nil, 0, err
		}
		eraseAfter(func() { form.Set(f, string(b.Bytes())) })
		b.Destroy()
	}
	if t.env.Auth.Scheme == wire.SchemeOAuth2ClientCredentials {
		form.Set("grant_type", "client_credentials")
	} else {
		form.Set("grant_type", "refresh_token")
	}
	if t.env.Auth.Scope != "" {
		form.Set("scope", t.env.Auth.Scope)
	}
	origin, _ := httpsOrigin(t.env.Auth.TokenURL, false)
	var body string
	eraseAfter(func() { body = form.Encode() })
	req, err := http.NewRequestWithContext(ctx, "POST", t.env.Auth.TokenURL, strings.NewReader(body))
	if err != nil {
		return nil, 0, invalid("auth.token_url: %v", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	hc := t.a.targets.client(origin)
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return errOtherOrigin }
	resp, err := hc.Do(req)
	if err != nil {
		return nil, 0, classifyTargetError(err)
	}
	defer resp.Body.Close()
	buf, n, err := secmem.ReadAll(io.LimitReader(resp.Body, maxTokenResponse+1), maxTokenResponse)
	if err != nil {
		return nil, 0, fail(wire.ErrTargetAuthFailed, "the token endpoint answered more than %d bytes", maxTokenResponse)
	}
	if buf == nil {
		return nil, 0, fail(wire.ErrTargetAuthFailed, "the token endpoint answered %d with an empty body", resp.StatusCode)
	}
	defer buf.Destroy()
	if resp.StatusCode != 200 {
		return nil, 0, fail(wire.ErrTargetAuthFailed, "the token endpoint answered %d", resp.StatusCode)
	}
	return parseTokenResponse(buf.Bytes()[:n])
}

// parseTokenResponse reads access_token and expires_in. The JSON decoder
// makes a heap string of the token (SECURITY.md lists it); it is copied
// into locked memory at once.
func parseTokenResponse(body []byte) (*memguard.LockedBuffer, time.Duration, error) {
	var tr struct {
		AccessToken string      `json:"access_token"`
		ExpiresIn   json.Number `json:"expires_in"`
		TokenType   string      `json:"token_type"`
	}
	if err := wire.Decode(body, &tr, wire.Limits{MaxBytes: maxTokenResponse}); err != nil || tr.AccessToken == "" {
		return nil, 0, fail(wire.ErrTargetAuthFailed, "the token endpoint's answer has no access_token")
	}
	if tr.TokenType != "" && !strings.EqualFold(tr.TokenType, "bearer") {
		return nil, 0, fail(wire.ErrTargetAuthFailed, "the token endpoint issued a %q token; only bearer tokens are supported", truncate(tr.TokenType, 32))
	}
	ttl := time.Hour
	if s := tr.ExpiresIn.String(); s != "" {
		var secs int64
		if _, err := fmt.Sscan(s, &secs); err == nil && secs > 0 {
			ttl = time.Duration(secs) * time.Second
		}
	}
	tok, err := secmem.New(len(tr.AccessToken))
	if err != nil {
		return nil, 0, err
	}
	tok.Copy([]byte(tr.AccessToken))
	return tok, ttl, nil
}
