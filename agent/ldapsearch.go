package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"

	"github.com/rapidvalue/tier3-agent/internal/ldapwire"
	"github.com/rapidvalue/tier3-agent/internal/wire"
	"github.com/rapidvalue/tier3-agent/vault"
)

func init() {
	methods[wire.MethodLDAPSearch] = ldapSearch{}
}

// ldapSearch is the method ldap.search: a search with RFC 2696 Simple
// Paged Results, each entry streamed back as a record (chunks.go) as it
// arrives: the agent holds one entry at a time, never a page or the
// result set.
//
// Transport: ldaps://, or ldap:// with "start_tls": true (StartTLS before
// the bind); ldap:// without it is refused before any connection, so a
// bind never travels in clear. TLS is verified against the system roots
// and RV_AGENT_TARGET_CA. Referrals (continuation references in the
// results, or a referral result) are never followed: a search touches
// only the connector's origin.
//
// Records: {"dn": "…", "attributes": {"cn": ["…"]}}; values that are not
// UTF-8, and every value of the attributes in binaryAttributes, go base64
// under "binary_attributes". Password attributes (passwordAttribute) are
// never requested and never sent.
type ldapSearch struct{}

type ldapSearchSpec struct {
	BaseDN     string   `json:"base_dn"`
	Scope      string   `json:"scope"`
	Filter     string   `json:"filter"`
	Attributes []string `json:"attributes"`
	PageSize   int      `json:"page_size"`
	StartTLS   bool     `json:"start_tls"`
}

type parsedLDAPSearch struct {
	spec   ldapSearchSpec
	origin vault.Origin
	scope  int
	filter string
	// filterBER is the filter encoded for the search request.
	filterBER []byte
	attrs     []string
	pageSize  uint32
}

const (
	defaultLDAPPageSize = 500
	maxLDAPPageSize     = 10_000
	maxLDAPFilter       = 64 << 10
	maxLDAPAttributes   = 1000
)

var ldapAttrRE = regexp.MustCompile(`^(\*|\+|1\.1|[A-Za-z][A-Za-z0-9-]{0,127}(;[A-Za-z0-9-]{1,64}){0,8}|[0-9]{1,10}(\.[0-9]{1,10}){1,32})$`)

func (ldapSearch) parse(t *taskRun) ([]vault.Origin, error) {
	var p parsedLDAPSearch
	if len(t.env.Request) == 0 {
		return nil, invalid("ldap.search needs a request object")
	}
	if err := wire.Decode(t.env.Request, &p.spec, wire.Limits{}); err != nil {
		return nil, invalid("request: %v", err)
	}
	s := &p.spec
	switch t.env.Auth.Scheme {
	case wire.SchemeLDAPSimple, wire.SchemeNone:
	default:
		return nil, invalid("ldap.search takes auth scheme ldap_simple (or none for an anonymous search)")
	}
	u, err := url.Parse(t.env.Connector.BaseURL)
	if err != nil {
		return nil, invalid("connector.base_url must be an ldaps:// or ldap:// URL")
	}
	if p.origin, err = vault.OriginOf(u, true); err != nil || (p.origin.Scheme != "ldaps" && p.origin.Scheme != "ldap") {
		return nil, invalid("connector.base_url must be ldaps://host[:port], or ldap://host[:port] with start_tls")
	}
	switch {
	case p.origin.Scheme == "ldap" && !s.StartTLS:
		return nil, invalid("connector.base_url is ldap:// without request.start_tls: a bind would travel in clear; use ldaps:// or \"start_tls\": true")
	case p.origin.Scheme == "ldaps" && s.StartTLS:
		return nil, invalid("request.start_tls applies to ldap:// only; ldaps:// is TLS already")
	}
	if s.BaseDN != "" {
		if _, err := ldap.ParseDN(s.BaseDN); err != nil {
			return nil, invalid("request.base_dn is not a distinguished name")
		}
	}
	switch s.Scope {
	case "base":
		p.scope = ldapwire.ScopeBase
	case "one":
		p.scope = ldapwire.ScopeOne
	case "sub", "":
		p.scope = ldapwire.ScopeSub
	default:
		return nil, invalid("request.scope must be base, one or sub")
	}
	p.filter = s.Filter
	if p.filter == "" {
		p.filter = "(objectClass=*)"
	}
	if len(p.filter) > maxLDAPFilter {
		return nil, invalid("request.filter is over %d bytes", maxLDAPFilter)
	}
	f, err := ldap.CompileFilter(p.filter)
	if err != nil {
		return nil, invalid("request.filter is not an LDAP filter (RFC 4515)")
	}
	if filterNamesPassword(f, 0) {
		// A filter on a password attribute is an oracle for its value
		// ((userPassword=guess*)): the value itself is never sent, so
		// neither is a test of it.
		return nil, invalid("request.filter tests a password attribute, whose values are never sent")
	}
	p.filterBER = f.Bytes()
	if len(s.Attributes) > maxLDAPAttributes {
		return nil, invalid("request.attributes lists more than %d attributes", maxLDAPAttributes)
	}
	for _, a := range s.Attributes {
		if !ldapAttrRE.MatchString(a) {
			return nil, invalid("request.attributes: %q is not an attribute description", truncate(a, 64))
		}
		// Password attributes are never even asked for.
		if !passwordAttribute(a) {
			p.attrs = append(p.attrs, a)
		}
	}
	if len(s.Attributes) > 0 && len(p.attrs) == 0 {
		// Only password attributes were asked for; an empty list would
		// mean "all attributes". "1.1" asks for none (RFC 4511 §4.5.1.8).
		p.attrs = []string{"1.1"}
	}
	switch {
	case s.PageSize == 0:
		p.pageSize = defaultLDAPPageSize
	case s.PageSize < 1 || s.PageSize > maxLDAPPageSize:
		return nil, invalid("request.page_size must be 1 to %d", maxLDAPPageSize)
	default:
		p.pageSize = uint32(s.PageSize)
	}
	if _, err := t.chunkSize(); err != nil {
		return nil, err
	}
	t.req = &p
	return []vault.Origin{p.origin}, nil
}

// filterNamesPassword reports whether a compiled filter tests a password
// attribute anywhere.
func filterNamesPassword(f *ber.Packet, depth int) bool {
	if f == nil || depth > 64 {
		return depth > 64
	}
	attr := func(p *ber.Packet) bool {
		return p != nil && p.Data != nil && passwordAttribute(p.Data.String())
	}
	switch f.Tag {
	case ldap.FilterAnd, ldap.FilterOr, ldap.FilterNot:
		for _, c := range f.Children {
			if filterNamesPassword(c, depth+1) {
				return true
			}
		}
	case ldap.FilterPresent:
		return attr(f)
	case ldap.FilterEqualityMatch, ldap.FilterSubstrings, ldap.FilterGreaterOrEqual, ldap.FilterLessOrEqual, ldap.FilterApproxMatch:
		return len(f.Children) > 0 && attr(f.Children[0])
	case ldap.FilterExtensibleMatch:
		for _, c := range f.Children {
			if c.Tag == 2 && attr(c) { // type
				return true
			}
		}
	}
	return false
}

func (ldapSearch) run(ctx context.Context, t *taskRun) (*outcome, error) {
	p := t.req.(*parsedLDAPSearch)
	rs, err := t.records(ctx)
	if err != nil {
		return nil, err
	}
	defer rs.abort()

	conn, err := p.connect(ctx, t)
	if err != nil {
		return nil, err
	}
	defer conn.Close()

	req := &ldapwire.SearchRequest{BaseDN: p.spec.BaseDN, Scope: p.scope, Filter: p.filterBER, Attributes: p.attrs, PageSize: p.pageSize}
	var enc ldapRecordEncoder
	var buf []byte
	var referrals int64
	for {
		s, err := conn.Search(req)
		if err != nil {
			return nil, ldapFailure(ctx, "the search", err)
		}
		for {
			e, err := s.Next()
			if err != nil {
				return nil, ldapFailure(ctx, "the search", err)
			}
			if e == nil {
				break
			}
			buf = enc.encode(buf[:0], e.DN, e.Attrs)
			if err := rs.add(buf); err != nil {
				return nil, err
			}
		}
		referrals += s.References
		if len(s.Cookie) == 0 {
			break
		}
		if err := rs.sendFull(); err != nil {
			return nil, err
		}
		req.Cookie = append(req.Cookie[:0], s.Cookie...)
	}
	if referrals > 0 {
		t.a.logInfo("ldap.search ignored continuation references (referrals are never followed)", "task_id", t.env.TaskID, "referrals", referrals)
	}
	return rs.close()
}

// connect dials the directory, secures the connection (ldaps, or
// StartTLS) and binds. The connection is closed when ctx ends, which ends
// whatever read or write is pending.
func (p *parsedLDAPSearch) connect(ctx context.Context, t *taskRun) (*ldapwire.Conn, error) {
	addr := net.JoinHostPort(p.origin.Host, strconv.Itoa(p.origin.Port))
	tlsCfg := t.a.targets.tls.Clone()
	tlsCfg.ServerName = p.origin.Host
	d := &net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, classifyTargetError(err)
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	ok := false
	defer func() {
		if !ok {
			stop()
			raw.Close()
		}
	}()
	c := raw
	if p.origin.Scheme == "ldaps" {
		tc := tls.Client(raw, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fail(wire.ErrTargetTLS, "TLS with the directory failed: %v", err)
		}
		c = tc
	}
	conn := ldapwire.NewConn(c)
	if p.origin.Scheme == "ldap" {
		// parse refused ldap:// without start_tls: nothing but StartTLS
		// is sent before TLS.
		if err := conn.StartTLS(tlsCfg); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fail(wire.ErrTargetTLS, "StartTLS with the directory failed: %v", ldapErrorText(err))
		}
	}
	if t.env.Auth.Scheme == wire.SchemeLDAPSimple {
		if err := p.bind(t, conn); err != nil {
			return nil, ldapFailure(ctx, "the bind", err)
		}
	}
	ok = true
	return conn, nil
}

// bind runs the simple bind. The DN and the password go from locked memory
// into the request, which ldapwire wipes once written: no Go string holds
// the password.
func (p *parsedLDAPSearch) bind(t *taskRun, conn *ldapwire.Conn) error {
	dn, err := t.secret("bind_dn")
	if err != nil {
		return err
	}
	defer dn.Destroy()
	pw, err := t.secret("bind_password")
	if err != nil {
		return err
	}
	defer pw.Destroy()
	return conn.Bind(dn.Bytes(), pw.Bytes())
}

// ldapFailure is the task's error for a failed bind or search: the
// task's own end (cancelled, timed out, lease lost) when ctx has ended,
// which is why the connection broke; else the error classified.
func ldapFailure(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var te *taskError
	if errors.As(err, &te) {
		return err // the agent's own (a vault reference), already classified
	}
	return classifyLDAPError(what, err)
}

// classifyLDAPError maps an ldapwire error to an error class. Its text
// (the directory's diagnostic message included) is redacted with the rest
// of the result.
func classifyLDAPError(what string, err error) error {
	var re *ldapwire.ResultError
	var pe *ldapwire.ProtocolError
	switch {
	case errors.As(err, &pe):
		return fail(wire.ErrTargetError, "%s failed: %v (is connector.base_url an LDAP directory?)", what, ldapErrorText(err))
	case !errors.As(err, &re):
		return fail(wire.ErrTargetUnreachable, "%s failed: the connection to the directory broke: %v", what, ldapErrorText(err))
	}
	switch re.Code {
	case ldapwire.InvalidCredentials, ldapwire.InappropriateAuthentication:
		return fail(wire.ErrTargetAuthFailed, "%s failed: the directory refused the credentials (%d)", what, re.Code)
	case ldapwire.InsufficientAccessRights, ldapwire.StrongerAuthRequired, ldapwire.ConfidentialityRequired:
		return fail(wire.ErrTargetAuthFailed, "%s failed: %v", what, ldapErrorText(err))
	case ldapwire.Referral:
		return fail(wire.ErrTargetError, "%s failed: the directory answered with a referral, and referrals are never followed", what)
	case ldapwire.SizeLimitExceeded, ldapwire.AdminLimitExceeded:
		return fail(wire.ErrTargetError, "%s stopped at the directory's size limit: the bind DN needs a higher limit (slapd: sizelimit, or a limits line)", what)
	}
	return fail(wire.ErrTargetError, "%s failed: %v", what, ldapErrorText(err))
}

func ldapErrorText(err error) string {
	return truncate(strings.TrimSuffix(strings.TrimSpace(err.Error()), ":"), 300)
}
