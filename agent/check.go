package agent

import (
	"context"
	"errors"
	"net/url"
	"sort"
	"strings"

	"github.com/rapidvalue/tier3-agent/internal/wire"
	"github.com/rapidvalue/tier3-agent/vault"
)

// method is one task method. Methods live one per file (http.request,
// http.sync, ldap.search) and register in methods.
type method interface {
	// parse checks the envelope's request for this method and returns the
	// origins the task's credentials would be sent to. Nothing is
	// contacted.
	parse(t *taskRun) (origins []vault.Origin, err error)
	// run runs the checked task.
	run(ctx context.Context, t *taskRun) (*outcome, error)
}

var (
	methods     = map[string]method{}
	methodOrder = []string{wire.MethodHTTPRequest, wire.MethodHTTPSync, wire.MethodLDAPSearch}
)

// schemeFields are the fixed credential fields of each auth scheme.
var schemeFields = map[string][]string{
	wire.SchemeNone:                    nil,
	wire.SchemeBearer:                  {"token"},
	wire.SchemeBasic:                   {"username", "password"},
	wire.SchemeAPIKey:                  {"key"},
	wire.SchemeOAuth2ClientCredentials: {"client_id", "client_secret"},
	wire.SchemeOAuth2RefreshToken:      {"client_id", "client_secret", "refresh_token"},
	wire.SchemeLDAPSimple:              {"bind_dn", "bind_password"},
}

func invalid(format string, a ...any) error { return fail(wire.ErrInvalidEnvelope, format, a...) }

// check runs every envelope check of PROTOCOL.md §3 before any byte goes
// to a target, and returns the method to run.
func (t *taskRun) check() (method, error) {
	env := t.env
	m, ok := methods[env.Method]
	if !ok {
		return nil, fail(wire.ErrUnsupportedMethod, "this agent does not run method %q", truncate(env.Method, 64))
	}
	if !vault.ValidBusinessID(env.Connector.BusinessID) {
		return nil, invalid("connector.business_id must match [a-z0-9][a-z0-9._-]{0,63}")
	}
	want, ok := schemeFields[env.Auth.Scheme]
	if !ok {
		return nil, invalid("unknown auth scheme %q", truncate(env.Auth.Scheme, 64))
	}
	got := make([]string, 0, len(env.Auth.Credentials))
	for k := range env.Auth.Credentials {
		got = append(got, k)
	}
	sort.Strings(got)
	wantSorted := append([]string(nil), want...)
	sort.Strings(wantSorted)
	if strings.Join(got, ",") != strings.Join(wantSorted, ",") {
		return nil, invalid("auth scheme %s takes exactly the credentials [%s]", env.Auth.Scheme, strings.Join(want, " "))
	}
	for _, field := range want {
		ref, err := vault.ParseRef(env.Auth.Credentials[field])
		if err != nil {
			// The value may be a literal secret: never quote it.
			return nil, invalid("auth.credentials.%s: %v", field, err)
		}
		if ref.BusinessID != env.Connector.BusinessID {
			return nil, invalid("auth.credentials.%s names another connector's secret: a task reads only its own connector's entry", field)
		}
	}
	switch env.Auth.Scheme {
	case wire.SchemeAPIKey:
		if !validHeaderName(env.Auth.Header) || forbiddenHeader(env.Auth.Header, "") {
			return nil, invalid("auth.header must name the API key's header (e.g. X-API-Key), not a reserved one")
		}
	case wire.SchemeOAuth2ClientCredentials, wire.SchemeOAuth2RefreshToken:
		if _, err := httpsOrigin(env.Auth.TokenURL, false); err != nil {
			return nil, invalid("auth.token_url: %v", err)
		}
	}
	origins, err := m.parse(t)
	if err != nil {
		return nil, err
	}
	if env.Auth.Scheme == wire.SchemeNone {
		return m, nil
	}
	entry := t.st.vs.Vault.Entry(env.Connector.BusinessID)
	if entry == nil {
		return nil, fail(wire.ErrVaultReferenceMissing, "the vault has no entry %q", env.Connector.BusinessID)
	}
	for _, field := range want {
		ref, _ := vault.ParseRef(env.Auth.Credentials[field])
		// Found, still sealed: it is opened only where it is used.
		if _, err := t.st.vs.Vault.Sealed(ref); err != nil {
			if errors.Is(err, vault.ErrMissing) {
				return nil, fail(wire.ErrVaultReferenceMissing, "%v", err)
			}
			return nil, fail(wire.ErrInternal, "cannot read the vault: %v", err)
		}
		if t.st.redact.unredactable[entry.Name+"/"+ref.Field] {
			return nil, fail(wire.ErrVaultReferenceMissing, "%s/%s is shorter than 8 bytes, too short to be kept out of results: store a longer credential", entry.Name, ref.Field)
		}
	}
	if entry.Targets == nil && t.a.cfg.RequireBinding {
		return nil, fail(wire.ErrBindingViolation, "entry %q is not bound to any target and RV_AGENT_REQUIRE_BINDING=1", entry.Name)
	}
	for _, o := range origins {
		if !entry.Allows(o) {
			return nil, fail(wire.ErrBindingViolation, "entry %q is not bound to %s", entry.Name, o)
		}
	}
	return m, nil
}

// httpsOrigin parses an absolute https URL and returns its origin. With
// bare, the URL must have no path, query or fragment beyond "/".
func httpsOrigin(raw string, bare bool) (vault.Origin, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" {
		return vault.Origin{}, errors.New("must be an https:// URL")
	}
	return vault.OriginOf(u, bare)
}

// tokenOrigins adds the token endpoint's origin for the OAuth2 schemes.
func tokenOrigins(t *taskRun, origins []vault.Origin) []vault.Origin {
	switch t.env.Auth.Scheme {
	case wire.SchemeOAuth2ClientCredentials, wire.SchemeOAuth2RefreshToken:
		o, _ := httpsOrigin(t.env.Auth.TokenURL, false)
		origins = append(origins, o)
	}
	return origins
}

func validHeaderName(h string) bool {
	if h == "" || len(h) > 128 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c == '-' || c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
			return false
		}
	}
	return true
}

// forbiddenHeader: request headers a task may not set (PROTOCOL.md §3).
func forbiddenHeader(name, schemeHeader string) bool {
	switch strings.ToLower(name) {
	case "authorization", "proxy-authorization", "cookie", "host", "content-length", "transfer-encoding", "connection":
		return true
	}
	return schemeHeader != "" && strings.EqualFold(name, schemeHeader)
}
