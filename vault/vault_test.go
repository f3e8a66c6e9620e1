package vault_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/rapidvalue/tier3-agent/vault"
)

const secret = "S3cr3t-Value-0123456789-abcdef" // appears only in value positions

const docVault = `{"salesforce-prod": {"client_id": "3MVG9-id", "client_secret": {"v2": "old-` + secret + `", "v3": "` + secret + `"}, "refresh_token": "5Aep-rt-` + secret + `",
 "_targets": ["https://acme.my.salesforce.com", "https://login.salesforce.com"]},
 "ldap-corp": {"bind_dn": "cn=svc-rapidvalue,ou=service,dc=corp,dc=local", "bind_password": "pw-` + secret + `"},
 "_agent": {"token": "tok-` + secret + `", "update_key": "uk-` + secret + `"}}`

func mustParse(t testing.TB, s string) *vault.Vault {
	t.Helper()
	v, err := vault.Parse([]byte(s))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return v
}

func resolve(t testing.TB, v *vault.Vault, ref string) (string, error) {
	t.Helper()
	r, err := vault.ParseRef(ref)
	if err != nil {
		t.Fatalf("ParseRef(%q): %v", ref, err)
	}
	b, err := v.Resolve(r)
	if err != nil {
		return "", err
	}
	defer b.Destroy()
	return string(b.Bytes()), nil
}

func TestParseDocumentedSchema(t *testing.T) {
	v := mustParse(t, docVault)
	if v.Len() != 3 {
		t.Fatalf("entries = %d", v.Len())
	}
	for ref, want := range map[string]string{
		"vault://local/salesforce-prod/client_secret/v3": secret,
		"vault://local/salesforce-prod/client_secret/v2": "old-" + secret,
		"vault://local/salesforce-prod/client_secret":    secret,
		"vault://local/salesforce-prod/client_id/v7":     "3MVG9-id", // plain answers any version
		"vault://local/ldap-corp/bind_password":          "pw-" + secret,
	} {
		got, err := resolve(t, v, ref)
		if err != nil || got != want {
			t.Errorf("%s: got %q, %v", ref, got, err)
		}
	}
	for _, ref := range []string{
		"vault://local/salesforce-prod/client_secret/v4",
		"vault://local/salesforce-prod/nope",
		"vault://local/nope/x",
	} {
		if _, err := resolve(t, v, ref); !errors.Is(err, vault.ErrMissing) {
			t.Errorf("%s: want ErrMissing, got %v", ref, err)
		}
	}
	e := v.Entry("salesforce-prod")
	if len(e.Targets) != 2 || e.Targets[0] != "https://acme.my.salesforce.com" {
		t.Fatalf("targets = %v", e.Targets)
	}
	o, _ := vault.ParseOrigin("https://LOGIN.salesforce.com:443")
	if !e.Allows(o) {
		t.Error("bound origin refused")
	}
	o, _ = vault.ParseOrigin("https://evil.example.com")
	if e.Allows(o) {
		t.Error("unbound origin allowed")
	}
}

// TestMarshalRoundTrip: Marshal gives JSON that encoding/json reads as the
// same document, and that Parse reads back to the same values.
func TestMarshalRoundTrip(t *testing.T) {
	tricky := `{"a": {"k": "quote\" back\\ nl\n tab\t ctl\u0001 uni\u00e9 emoji\ud83d\ude00 slash\/ del` + "\x7f" + `",
	  "_note": {"x": [1, 2.5e3, true, null, "s"]}}, "b": {}, "c": {"_targets": []}}`
	for _, in := range []string{docVault, tricky, `{}`, ` {} `} {
		v := mustParse(t, in)
		buf, n, err := v.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		out := bytes.Clone(buf.Bytes()[:n])
		buf.Destroy()
		var a, b any
		if err := json.Unmarshal([]byte(in), &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(out, &b); err != nil {
			t.Fatalf("Marshal output is not JSON: %v\n%s", err, out)
		}
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if !bytes.Equal(ja, jb) {
			t.Fatalf("round trip changed the document:\n%s\n%s", ja, jb)
		}
		v2 := mustParse(t, string(out))
		buf2, n2, _ := v2.Marshal()
		if !bytes.Equal(buf2.Bytes()[:n2], out) {
			t.Fatal("Marshal is not stable")
		}
		buf2.Destroy()
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct {
		name, in            string
		entry, field, words string
	}{
		{"bom", "\ufeff{}", "", "", "byte-order mark"},
		{"not object", `[]`, "", "", "object of entries"},
		{"trailing", `{} {}`, "", "", "trailing bytes"},
		{"trailing garbage", `{}x`, "", "", "trailing bytes"},
		{"duplicate entry", `{"a": {}, "a": {}}`, "", "", `duplicate entry "a"`},
		{"duplicate via escape", `{"a": {"f": "1", "\u0066": "2"}}`, "a", "", `duplicate field "f"`},
		{"bad entry name", `{"Upper": {}}`, "", "", "business IDs"},
		{"reserved other", `{"_other": {}}`, "", "", "business IDs"},
		{"bad field name", `{"a": {"bad field": "` + secret + `"}}`, "a", "", "field names"},
		{"number secret", `{"a": {"f": 12345}}`, "a", "f", "must be a string (got a number)"},
		{"null secret", `{"a": {"f": null}}`, "a", "f", "got null"},
		{"bool secret", `{"a": {"f": true}}`, "a", "f", "got a boolean"},
		{"array secret", `{"a": {"f": ["` + secret + `"]}}`, "a", "f", "got an array"},
		{"empty secret", `{"a": {"f": ""}}`, "a", "f", "empty value"},
		{"empty versions", `{"a": {"f": {}}}`, "a", "f", "at least one version"},
		{"bad version key", `{"a": {"f": {"v0": "` + secret + `"}}}`, "a", "f", "v1 to v999999"},
		{"version leading zero", `{"a": {"f": {"v01": "` + secret + `"}}}`, "a", "f", "v1 to v999999"},
		{"version too big", `{"a": {"f": {"v1000000": "` + secret + `"}}}`, "a", "f", "v1 to v999999"},
		{"duplicate version", `{"a": {"f": {"v1": "` + secret + `", "v1": "x"}}}`, "a", "f", "duplicate version"},
		{"entry not object", `{"a": "` + secret + `"}`, "a", "", "object of fields"},
		{"targets not array", `{"a": {"_targets": "https://x"}}`, "a", "_targets", "array of origins"},
		{"target bad scheme", `{"a": {"_targets": ["http://x"]}}`, "a", "_targets", "scheme must be"},
		{"target with path", `{"a": {"_targets": ["https://x/path"]}}`, "a", "_targets", "no path"},
		{"lone surrogate", `{"a": {"f": "\ud800` + secret + `"}}`, "a", "f", "lone surrogate"},
		{"invalid utf8", "{\"a\": {\"f\": \"\xff" + secret + "\"}}", "a", "f", "invalid UTF-8"},
		{"control char", "{\"a\": {\"f\": \"\x01" + secret + "\"}}", "a", "f", "control character"},
		{"bad escape", `{"a": {"f": "\x` + secret + `"}}`, "a", "f", "invalid escape"},
		{"unterminated", `{"a": {"f": "` + secret, "a", "f", "unterminated"},
		{"deep metadata", `{"a": {"_m": ` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}}`, "a", "_m", "deeper than"},
		{"duplicate meta key", `{"a": {"_m": {"k": 1, "k": 2}}}`, "a", "_m", "duplicate key"},
		{"missing colon", `{"a" {}}`, "", "", "expected ':'"},
		{"missing comma", `{"a": {"f": "` + secret + `" "g": "x"}}`, "a", "", "expected ','"},
		{"huge value", `{"a": {"f": "` + strings.Repeat("x", vault.MaxValue+1) + `"}}`, "a", "f", "longer than"},
		{"empty input", ``, "", "", "object of entries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := vault.Parse([]byte(tc.in))
			var pe *vault.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("want *ParseError, got %v", err)
			}
			if pe.Entry != tc.entry || pe.Field != tc.field {
				t.Errorf("names entry %q field %q, want %q %q (%v)", pe.Entry, pe.Field, tc.entry, tc.field, err)
			}
			if !strings.Contains(err.Error(), tc.words) {
				t.Errorf("error %q does not say %q", err, tc.words)
			}
			assertNoSecret(t, err.Error(), secret)
		})
	}
}

// assertNoSecret fails if any 8-byte run of secret appears in s.
func assertNoSecret(t testing.TB, s, secret string) {
	t.Helper()
	for i := 0; i+8 <= len(secret); i++ {
		if strings.Contains(s, secret[i:i+8]) {
			t.Fatalf("output contains part of a secret: %q", s)
		}
	}
}

func TestParseRef(t *testing.T) {
	good := map[string]vault.Ref{
		"vault://local/salesforce-prod/client_secret/v3": {"salesforce-prod", "client_secret", 3},
		"vault://local/a/b":                     {"a", "b", 0},
		"vault://local/a.b_c-d/F.x-y_z/v999999": {"a.b_c-d", "F.x-y_z", 999999},
	}
	for in, want := range good {
		got, err := vault.ParseRef(in)
		if err != nil || got != want || got.String() != in {
			t.Errorf("ParseRef(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{
		"", secret, "vault://local/", "vault://local/a", "vault://local/a/", "vault://remote/a/b",
		"vault://local/a/b/v0", "vault://local/a/b/v1000000", "vault://local/a/b/v01", "vault://local/a/b/3",
		"vault://local/a/b/v1/x", "vault://local/A/b", "vault://local/a/_targets", "vault://local/a/%62",
		"vault://local/a/..", "vault://local/../b", "vault://local/a/.", "VAULT://local/a/b",
		"vault://local/a/b?x", "vault://local/a/b#f", "vault://local//b", "vault://local/_agent/token",
		" vault://local/a/b", "vault://local/a/b ",
	} {
		_, err := vault.ParseRef(in)
		var re *vault.RefError
		if !errors.As(err, &re) {
			t.Errorf("ParseRef(%q) accepted or untyped: %v", in, err)
			continue
		}
		assertNoSecret(t, err.Error(), secret)
	}
}

func TestSetUnsetBind(t *testing.T) {
	v := mustParse(t, `{}`)
	if err := v.Set("svc", "password", 0, []byte(secret)); err != nil {
		t.Fatal(err)
	}
	if err := v.Set("svc", "key", 2, []byte("k2")); err != nil {
		t.Fatal(err)
	}
	if err := v.Set("svc", "key", 1, []byte("k1")); err != nil {
		t.Fatal(err)
	}
	if err := v.Set("svc", "password", 2, []byte("x")); err == nil {
		t.Error("--version on a plain field accepted")
	}
	for _, bad := range []struct{ e, f string }{{"Bad", "f"}, {"svc", "_targets"}, {"svc", "a b"}} {
		if err := v.Set(bad.e, bad.f, 0, []byte("x")); err == nil {
			t.Errorf("Set(%q, %q) accepted", bad.e, bad.f)
		}
	}
	if err := v.Set("svc", "f", 0, nil); err == nil {
		t.Error("empty value accepted")
	}
	if err := v.Set("svc", "f", 0, []byte{0xff, 0xfe}); err == nil {
		t.Error("non-UTF-8 value accepted")
	}
	if got, _ := resolve(t, v, "vault://local/svc/key"); got != "k2" {
		t.Errorf("highest version = %q", got)
	}
	if got := v.Entry("svc").Field("key").Versions(); fmt.Sprint(got) != "[1 2]" {
		t.Errorf("versions = %v", got)
	}
	if err := v.Bind("svc", []string{"https://a.example", "ldaps://dc1:636"}); err != nil {
		t.Fatal(err)
	}
	if err := v.Bind("svc", []string{"ftp://x"}); err == nil {
		t.Error("bad origin accepted")
	}
	if err := v.Bind("nope", []string{"https://a"}); err == nil {
		t.Error("bind of missing entry accepted")
	}
	if err := v.Unset("svc", "password"); err != nil {
		t.Fatal(err)
	}
	if _, err := resolve(t, v, "vault://local/svc/password"); !errors.Is(err, vault.ErrMissing) {
		t.Error("unset field still resolves")
	}
	if err := v.Unset("svc", "password"); err == nil {
		t.Error("unset of a missing field accepted")
	}
	if err := v.Unset("svc", ""); err != nil || v.Len() != 0 {
		t.Fatalf("unset entry: %v, len %d", err, v.Len())
	}
}

func TestSealedRoundTrip(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	v := mustParse(t, docVault)
	sealed, err := v.Seal(id.Recipient())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte(secret[:8])) {
		t.Fatal("sealed file contains plaintext")
	}
	v2, err := vault.Decrypt(sealed, id)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := resolve(t, v2, "vault://local/salesforce-prod/client_secret"); got != secret {
		t.Fatal("value lost in the round trip")
	}
	other, _ := age.GenerateX25519Identity()
	if _, err := vault.Decrypt(sealed, other); !errors.Is(err, vault.ErrNoMatch) {
		t.Fatalf("wrong identity: %v", err)
	}
}

func TestEach(t *testing.T) {
	v := mustParse(t, docVault)
	var n int
	var sawToken bool
	v.Each(func(entry, field string, value []byte) error {
		n++
		if entry == "_agent" && field == "token" && string(value) == "tok-"+secret {
			sawToken = true
		}
		return nil
	})
	if n != 8 || !sawToken {
		t.Fatalf("Each saw %d values, token %v", n, sawToken)
	}
}
