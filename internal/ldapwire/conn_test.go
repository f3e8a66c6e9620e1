package ldapwire

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"

	"github.com/rapidvalue/tier3-agent/internal/slapdtest"
)

const (
	suffix = "dc=example,dc=com"
	people = 1200 // three pages of 500 and a short one
)

// directory: ou=people with `people` users in order, each with a
// userPassword and a binary jpegPhoto, and ou=elsewhere, a referral.
func directory(w io.Writer) error {
	fmt.Fprintf(w, "dn: %s\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n", suffix)
	fmt.Fprintf(w, "dn: ou=people,%s\nobjectClass: organizationalUnit\nou: people\n\n", suffix)
	fmt.Fprintf(w, "dn: ou=elsewhere,%s\nobjectClass: referral\nobjectClass: extensibleObject\nou: elsewhere\nref: ldap://127.0.0.1:9/ou=elsewhere,dc=other\n\n", suffix)
	for i := range people {
		if _, err := fmt.Fprintf(w, "dn: uid=u%05d,ou=people,%s\nobjectClass: inetOrgPerson\nuid: u%05d\ncn: User %d\nsn: S%d\nmail: u%d@example.com\nmail: alt%d@example.com\njpegPhoto:: /9j/4AAQ\n\n", i, suffix, i, i, i, i, i); err != nil {
			return err
		}
	}
	return nil
}

type testDir struct {
	srv *slapdtest.Server
	cfg *tls.Config
}

func startDirectory(t *testing.T) *testDir {
	t.Helper()
	srv := slapdtest.Start(t, slapdtest.Options{Suffix: suffix, LDIF: directory})
	pem, err := os.ReadFile(srv.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &testDir{srv: srv, cfg: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}}
}

func hostOf(t *testing.T, raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// dialLDAPS opens a session over ldaps.
func (d *testDir) dialLDAPS(t *testing.T) *Conn {
	t.Helper()
	nc, err := tls.Dial("tcp", hostOf(t, d.srv.LDAPSURL), d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := NewConn(nc)
	t.Cleanup(func() { c.Close() })
	return c
}

// bound opens a session over ldaps and binds as the directory's root.
func (d *testDir) bound(t *testing.T) *Conn {
	t.Helper()
	c := d.dialLDAPS(t)
	if err := c.Bind([]byte(d.srv.RootDN), []byte(d.srv.RootPW)); err != nil {
		t.Fatal(err)
	}
	return c
}

func filter(t testing.TB, f string) []byte {
	p, err := ldap.CompileFilter(f)
	if err != nil {
		t.Fatal(err)
	}
	return p.Bytes()
}

// searchAll runs a paged search to its end and returns the uid of every
// entry, in order, and the references seen.
func searchAll(t *testing.T, c *Conn, base string, scope int, f string, pageSize uint32) ([]string, int64) {
	t.Helper()
	req := &SearchRequest{BaseDN: base, Scope: scope, Filter: filter(t, f), Attributes: []string{"uid", "mail", "jpegPhoto"}, PageSize: pageSize}
	var uids []string
	var refs int64
	for pages := 0; ; pages++ {
		s, err := c.Search(req)
		if err != nil {
			t.Fatal(err)
		}
		for {
			e, err := s.Next()
			if err != nil {
				t.Fatalf("page %d: %v", pages, err)
			}
			if e == nil {
				break
			}
			for _, a := range e.Attrs {
				if string(a.Name) == "uid" {
					uids = append(uids, string(a.Values[0]))
				}
			}
		}
		refs += s.References
		if len(s.Cookie) == 0 {
			return uids, refs
		}
		req.Cookie = append(req.Cookie[:0], s.Cookie...)
	}
}

func TestAgainstSlapd(t *testing.T) {
	d := startDirectory(t)

	t.Run("ldaps bind and paged search", func(t *testing.T) {
		c := d.bound(t)
		uids, refs := searchAll(t, c, "ou=people,"+suffix, ScopeOne, "(objectClass=inetOrgPerson)", 500)
		if len(uids) != people || refs != 0 {
			t.Fatalf("%d entries, %d references; want %d, 0", len(uids), refs, people)
		}
		seen := map[string]bool{}
		for _, u := range uids {
			if seen[u] {
				t.Fatalf("%s twice", u)
			}
			seen[u] = true
		}
	})

	t.Run("values and attributes of an entry", func(t *testing.T) {
		c := d.bound(t)
		s, err := c.Search(&SearchRequest{BaseDN: "uid=u00042,ou=people," + suffix, Scope: ScopeBase, Filter: filter(t, "(objectClass=*)"), PageSize: 10})
		if err != nil {
			t.Fatal(err)
		}
		e, err := s.Next()
		if err != nil || e == nil {
			t.Fatalf("%v %v", e, err)
		}
		got := map[string][]string{}
		for _, a := range e.Attrs {
			for _, v := range a.Values {
				got[string(a.Name)] = append(got[string(a.Name)], string(v))
			}
		}
		if string(e.DN) != "uid=u00042,ou=people,"+suffix || strings.Join(got["mail"], " ") != "u42@example.com alt42@example.com" ||
			got["jpegPhoto"][0] != "\xff\xd8\xff\xe0\x00\x10" || got["cn"][0] != "User 42" {
			t.Fatalf("entry %s: %q", e.DN, got)
		}
		if e, err := s.Next(); e != nil || err != nil || len(s.Cookie) != 0 {
			t.Fatalf("after the only entry: %v %v cookie %q", e, err, s.Cookie)
		}
	})

	t.Run("StartTLS", func(t *testing.T) {
		nc, err := net.Dial("tcp", hostOf(t, d.srv.LDAPURL))
		if err != nil {
			t.Fatal(err)
		}
		c := NewConn(nc)
		defer c.Close()
		if err := c.StartTLS(d.cfg); err != nil {
			t.Fatal(err)
		}
		if err := c.Bind([]byte(d.srv.RootDN), []byte(d.srv.RootPW)); err != nil {
			t.Fatal(err)
		}
		if uids, _ := searchAll(t, c, "ou=people,"+suffix, ScopeOne, "(uid=u0000*)", 3); len(uids) != 10 {
			t.Fatalf("%d entries, want 10", len(uids))
		}
	})

	t.Run("StartTLS with a certificate for another name", func(t *testing.T) {
		nc, err := net.Dial("tcp", hostOf(t, d.srv.LDAPURL))
		if err != nil {
			t.Fatal(err)
		}
		c := NewConn(nc)
		defer c.Close()
		cfg := d.cfg.Clone()
		cfg.ServerName = "directory.example.net"
		var te *TLSError
		if err := c.StartTLS(cfg); !errors.As(err, &te) {
			t.Fatalf("StartTLS: %v, want a TLSError", err)
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		c := d.dialLDAPS(t)
		err := c.Bind([]byte(d.srv.RootDN), []byte("not-"+d.srv.RootPW))
		var re *ResultError
		if !errors.As(err, &re) || re.Code != InvalidCredentials || re.Op != "bind" {
			t.Fatalf("bind: %v, want result 49", err)
		}
		if strings.Contains(err.Error(), d.srv.RootPW) {
			t.Fatal("the error holds the password")
		}
		if err := c.Bind([]byte(d.srv.RootDN), nil); err == nil {
			t.Fatal("a bind with an empty password (unauthenticated) was sent")
		}
	})

	t.Run("referrals", func(t *testing.T) {
		c := d.bound(t)
		// The whole tree: the referral object is a continuation reference.
		uids, refs := searchAll(t, c, suffix, ScopeSub, "(objectClass=*)", 500)
		if len(uids) != people || refs != 1 {
			t.Fatalf("%d entries and %d references, want %d and 1", len(uids), refs, people)
		}
		// Under the referral object: a referral result.
		s, err := c.Search(&SearchRequest{BaseDN: "ou=elsewhere," + suffix, Scope: ScopeSub, Filter: filter(t, "(objectClass=*)"), PageSize: 10})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Next()
		var re *ResultError
		if !errors.As(err, &re) || re.Code != Referral {
			t.Fatalf("search under a referral: %v", err)
		}
	})

	t.Run("closed mid-search", func(t *testing.T) {
		c := d.bound(t)
		s, err := c.Search(&SearchRequest{BaseDN: "ou=people," + suffix, Scope: ScopeOne, Filter: filter(t, "(uid=*)"), PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if e, err := s.Next(); e == nil || err != nil {
			t.Fatal(e, err)
		}
		c.nc.Close()
		for {
			e, err := s.Next()
			if err != nil {
				break
			}
			if e == nil {
				t.Fatal("the page ended normally after the connection was closed")
			}
		}
	})

	t.Run("no allocation per entry", func(t *testing.T) {
		c := d.bound(t)
		s, err := c.Search(&SearchRequest{BaseDN: "ou=people," + suffix, Scope: ScopeOne, Filter: filter(t, "(uid=*)"), PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		s.Next() // grows the buffers
		allocs := testing.AllocsPerRun(500, func() {
			if e, err := s.Next(); e == nil || err != nil {
				t.Fatal(e, err)
			}
		})
		if allocs > 0 {
			t.Fatalf("%.1f allocations per entry", allocs)
		}
	})
}
