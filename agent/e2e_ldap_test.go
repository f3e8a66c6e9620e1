package agent_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/devca"
	"github.com/rapidvalue/tier3-agent/internal/slapdtest"
)

// The directory of the LDAP tests: ou=people holds `people` users
// uid=user000000…, each with cn, sn, mail, employeeNumber (its index),
// description and a userPassword; user 7 has a jpegPhoto (binary), user
// plantedAt has the bind password in its description. ou=small holds 50
// users; ou=elsewhere is a referral to referralTarget.
const (
	ldapSuffix  = "dc=example,dc=com"
	ldapBindDN  = "cn=agent," + ldapSuffix
	ldapPhotoAt = 7
)

// jpegBytes are not UTF-8: they must come back base64.
var jpegBytes = []byte{0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 'J', 'F', 'I', 'F', 0x00, 0x01, 0xfe, 0xff}

func ldapDirectory(people, plantedAt int, bindPassword, referralTarget string) func(io.Writer) error {
	return func(w io.Writer) error {
		fmt.Fprintf(w, "dn: %s\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n", ldapSuffix)
		fmt.Fprintf(w, "dn: %s\nobjectClass: inetOrgPerson\ncn: agent\nsn: agent\nuserPassword: %s\n\n", ldapBindDN, bindPassword)
		for _, ou := range []string{"people", "small"} {
			fmt.Fprintf(w, "dn: ou=%s,%s\nobjectClass: organizationalUnit\nou: %s\n\n", ou, ldapSuffix, ou)
		}
		fmt.Fprintf(w, "dn: ou=elsewhere,%s\nobjectClass: referral\nobjectClass: extensibleObject\nou: elsewhere\nref: %s/ou=elsewhere,dc=other\n\n", ldapSuffix, referralTarget)
		user := func(ou string, i int) error {
			desc := "User " + strconv.Itoa(i)
			if i == plantedAt && ou == "people" {
				desc = "password is " + bindPassword + " (do not share)"
			}
			_, err := fmt.Fprintf(w, "dn: uid=user%06d,ou=%s,%s\nobjectClass: inetOrgPerson\nuid: user%06d\ncn: User %d\nsn: Number%d\nmail: user%d@example.com\nemployeeNumber: %d\ndescription: %s\nuserPassword: user-pw-%06d\n",
				i, ou, ldapSuffix, i, i, i, i, i, desc, i)
			if err != nil {
				return err
			}
			if i == ldapPhotoAt && ou == "people" {
				fmt.Fprintf(w, "jpegPhoto:: %s\n", base64.StdEncoding.EncodeToString(jpegBytes))
			}
			_, err = io.WriteString(w, "\n")
			return err
		}
		for i := range people {
			if err := user("people", i); err != nil {
				return err
			}
		}
		for i := range 50 {
			if err := user("small", i); err != nil {
				return err
			}
		}
		return nil
	}
}

// listener counts the connections made to it: a host that must never be
// contacted.
type listener struct {
	net.Listener
	accepted atomic.Int64
}

func newListener(t *testing.T) *listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{Listener: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return l
}

func ldapEnvelope(businessID, baseURL string, request map[string]any) map[string]any {
	env := envelope("ldap.search", businessID, baseURL,
		map[string]any{"scheme": "ldap_simple", "credentials": map[string]any{
			"bind_dn": ref(businessID, "bind_dn"), "bind_password": ref(businessID, "bind_password")}},
		request)
	env["connector"].(map[string]any)["type"] = "ldap"
	return env
}

type ldapRecord struct {
	DN     string              `json:"dn"`
	Attrs  map[string][]string `json:"attributes"`
	Binary map[string][]string `json:"binary_attributes"`
}

// TestLDAPSearch runs ldap.search against a real slapd holding 100,000
// users, through the real agent binary.
func TestLDAPSearch(t *testing.T) {
	const people, plantedAt = 100_000, 4242
	bindPW := e2eSecrets["basic_pw"]
	e := newEnv(t, controlplane.Config{MaxTaskBytes: 1 << 30})
	ca := e.targetCA()
	elsewhere := newListener(t)
	refURL := "ldap://" + elsewhere.Addr().String()
	dir := slapdtest.Start(t, slapdtest.Options{Suffix: ldapSuffix, CA: ca, LDIF: ldapDirectory(people, plantedAt, bindPW, refURL)})
	plain := newListener(t) // an ldap:// "directory" that must never be dialled
	// A directory whose certificate comes from a CA the agent does not
	// trust.
	otherCA, err := devca.New()
	if err != nil {
		t.Fatal(err)
	}
	untrusted := slapdtest.Start(t, slapdtest.Options{Suffix: ldapSuffix, CA: otherCA})
	e.vaultIn(ldapBindDN, "set", "untrusted", "bind_dn")
	e.vaultIn(bindPW, "set", "untrusted", "bind_password")
	e.vault("bind", "untrusted", untrusted.LDAPSURL, untrusted.LDAPURL)

	for _, bid := range []string{"dir", "dirbad", "dironly"} {
		e.vaultIn(ldapBindDN, "set", bid, "bind_dn")
	}
	e.vaultIn(bindPW, "set", "dir", "bind_password")
	e.vaultIn(bindPW, "set", "dironly", "bind_password")
	e.vaultIn("Wrong-Password-0007", "set", "dirbad", "bind_password")
	e.vault("bind", "dir", dir.LDAPSURL, dir.LDAPURL, "ldap://"+plain.Addr().String())
	e.vault("bind", "dirbad", dir.LDAPSURL)
	e.vault("bind", "dironly", dir.LDAPSURL)
	e.start()

	t.Run("paged 100k over ldaps", func(t *testing.T) {
		env := ldapEnvelope("dir", dir.LDAPSURL, map[string]any{
			"base_dn": "ou=people," + ldapSuffix, "scope": "one", "filter": "(objectClass=inetOrgPerson)", "page_size": 500})
		env["timeout_s"] = 120 // slow CI machines, a control plane under -race
		id := e.enqueue(env)
		ti := e.syncResult(id)
		if ti.Result.Status != "completed" {
			t.Fatalf("status %s: %s %s", ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
		}
		recs := checkChunks(t, ti)
		if len(recs) != people {
			t.Fatalf("%d records, want %d", len(recs), people)
		}
		seen := make([]bool, people)
		for _, raw := range recs {
			if bytes.Contains(bytes.ToLower(raw), []byte("userpassword")) || bytes.Contains(raw, []byte("user-pw-")) {
				t.Fatalf("a password attribute was sent: %s", raw)
			}
			var r ldapRecord
			if err := json.Unmarshal(raw, &r); err != nil {
				t.Fatal(err)
			}
			i, err := strconv.Atoi(strings.Join(r.Attrs["employeeNumber"], ""))
			if err != nil || i < 0 || i >= people || r.DN != fmt.Sprintf("uid=user%06d,ou=people,%s", i, ldapSuffix) {
				t.Fatalf("unexpected record %s", raw)
			}
			if seen[i] {
				t.Fatalf("user %d sent twice", i)
			}
			seen[i] = true
			if want := fmt.Sprintf("user%d@example.com", i); strings.Join(r.Attrs["mail"], "") != want {
				t.Fatalf("record %s: mail, want %s", raw, want)
			}
			switch i {
			case plantedAt:
				if d := strings.Join(r.Attrs["description"], ""); d != "password is [REDACTED] (do not share)" {
					t.Fatalf("planted secret: description %q", d)
				}
			case ldapPhotoAt:
				if got := strings.Join(r.Binary["jpegPhoto"], ""); got != base64.StdEncoding.EncodeToString(jpegBytes) {
					t.Fatalf("jpegPhoto: %s", raw)
				}
			}
		}
		// 100,000 users in pages of 500, chunks of 500: 200 chunks, the
		// last one final (no empty final chunk after them).
		if n := len(ti.Chunks); n != 200 {
			t.Fatalf("%d chunks, want 200", n)
		}
	})

	t.Run("StartTLS", func(t *testing.T) {
		ti := e.result(e.enqueue(ldapEnvelope("dir", dir.LDAPURL, map[string]any{
			"base_dn": "ou=small," + ldapSuffix, "filter": "(uid=*)", "attributes": []string{"uid", "cn", "userPassword"},
			"page_size": 7, "start_tls": true})))
		if ti.Result.Status != "completed" {
			t.Fatalf("status %s: %s %s", ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
		}
		recs := checkChunks(t, ti)
		if len(recs) != 50 {
			t.Fatalf("%d records", len(recs))
		}
		for _, raw := range recs {
			var r ldapRecord
			json.Unmarshal(raw, &r)
			if len(r.Attrs) != 2 || len(r.Attrs["uid"]) != 1 || len(r.Binary) != 0 {
				t.Fatalf("record %s: want uid and cn only", raw)
			}
		}
	})

	t.Run("only password attributes asked for", func(t *testing.T) {
		ti := e.result(e.enqueue(ldapEnvelope("dir", dir.LDAPSURL, map[string]any{
			"base_dn": "ou=small," + ldapSuffix, "scope": "one", "attributes": []string{"userPassword"}})))
		recs := checkChunks(t, ti)
		if len(recs) != 50 {
			t.Fatalf("%d records", len(recs))
		}
		for _, raw := range recs {
			if !bytes.HasSuffix(raw, []byte(`,"attributes":{}}`)) {
				t.Fatalf("record %s", raw)
			}
		}
	})

	t.Run("referrals are not followed", func(t *testing.T) {
		// A subtree search meets ou=elsewhere: a continuation reference,
		// dropped. A search under it gets a referral result: a failure.
		ti := e.result(e.enqueue(ldapEnvelope("dir", dir.LDAPSURL, map[string]any{
			"base_dn": ldapSuffix, "filter": "(|(ou=*)(cn=agent))"})))
		if ti.Result.Status != "completed" {
			t.Fatalf("status %s: %s %s", ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
		}
		if recs := checkChunks(t, ti); len(recs) != 3 { // ou=people, ou=small, cn=agent
			t.Fatalf("%d records", len(recs))
		}
		ti = e.result(e.enqueue(ldapEnvelope("dir", dir.LDAPSURL, map[string]any{"base_dn": "ou=elsewhere," + ldapSuffix})))
		if ti.Result.Status != "failed" || ti.Result.ErrorClass != "target_error" || !strings.Contains(ti.Result.Error, "referral") {
			t.Fatalf("search under a referral: %s %s %s", ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
		}
		if n := elsewhere.accepted.Load(); n != 0 {
			t.Fatalf("the referral's host got %d connections", n)
		}
	})

	t.Run("refused", func(t *testing.T) {
		for name, tt := range map[string]struct {
			bid, url string
			req      map[string]any
			class    string
		}{
			"ldap:// without start_tls": {"dir", "ldap://" + plain.Addr().String(), map[string]any{"base_dn": ldapSuffix}, "invalid_envelope"},
			"start_tls on ldaps://":     {"dir", dir.LDAPSURL, map[string]any{"base_dn": ldapSuffix, "start_tls": true}, "invalid_envelope"},
			"filter on userPassword":    {"dir", dir.LDAPSURL, map[string]any{"base_dn": ldapSuffix, "filter": "(userPassword=user-pw-0*)"}, "invalid_envelope"},
			"bad filter":                {"dir", dir.LDAPSURL, map[string]any{"base_dn": ldapSuffix, "filter": "(cn=a"}, "invalid_envelope"},
			"bad scope":                 {"dir", dir.LDAPSURL, map[string]any{"base_dn": ldapSuffix, "scope": "subtree"}, "invalid_envelope"},
			"https base_url":            {"dir", "https://" + strings.TrimPrefix(dir.LDAPSURL, "ldaps://"), map[string]any{"base_dn": ldapSuffix}, "invalid_envelope"},
			"not bound to StartTLS URL": {"dironly", dir.LDAPURL, map[string]any{"base_dn": ldapSuffix, "start_tls": true}, "binding_violation"},
			"wrong password":            {"dirbad", dir.LDAPSURL, map[string]any{"base_dn": ldapSuffix}, "target_auth_failed"},
			"no such base":              {"dir", dir.LDAPSURL, map[string]any{"base_dn": "ou=nowhere," + ldapSuffix}, "target_error"},
		} {
			ti := e.result(e.enqueue(ldapEnvelope(tt.bid, tt.url, tt.req)))
			if ti.Result.Status != "failed" || ti.Result.ErrorClass != tt.class {
				t.Errorf("%s: %s %s %s, want %s", name, ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error, tt.class)
			}
			if len(ti.Chunks) != 0 {
				t.Errorf("%s: %d chunks", name, len(ti.Chunks))
			}
		}
		if n := plain.accepted.Load(); n != 0 {
			t.Fatalf("the ldap:// host without start_tls got %d connections", n)
		}
	})

	t.Run("lease lost mid-search", func(t *testing.T) {
		env := ldapEnvelope("dir", dir.LDAPSURL, map[string]any{"base_dn": "ou=people," + ldapSuffix, "scope": "one", "page_size": 500})
		env["timeout_s"] = 120
		id := e.enqueue(env)
		e.waitFor("three chunks", 60*time.Second, func() bool {
			return len(e.cpLog.requests(func(q cpRequest) bool { return q.TaskID == id && q.Endpoint == controlplane.EndpointChunks })) >= 3
		})
		if _, err := e.cp.Admin.AddFault(context.Background(), controlplane.Fault{Endpoint: controlplane.EndpointChunks, Status: 409}); err != nil {
			t.Fatal(err)
		}
		e.waitFor("the agent to abandon the task", 60*time.Second, func() bool {
			return strings.Contains(e.out.String(), "task abandoned: its lease was lost")
		})
		nothingAfter(t, e, id, -1, 409)
		ti, err := e.cp.Admin.Task(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ti.Final || ti.Result != nil || ti.Records >= people {
			t.Fatalf("after the 409: final %v, %d records, result %+v", ti.Final, ti.Records, ti.Result)
		}
	})

	t.Run("TLS verified", func(t *testing.T) {
		for _, tt := range []struct {
			url      string
			startTLS bool
		}{{untrusted.LDAPSURL, false}, {untrusted.LDAPURL, true}} {
			ti := e.result(e.enqueue(ldapEnvelope("untrusted", tt.url, map[string]any{"base_dn": ldapSuffix, "start_tls": tt.startTLS})))
			if ti.Result.Status != "failed" || ti.Result.ErrorClass != "target_tls" {
				t.Errorf("%s: %s %s %s", tt.url, ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
			}
		}
	})
}
