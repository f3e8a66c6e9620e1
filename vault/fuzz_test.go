package vault_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/vault"
)

var keyWithSecret = regexp.MustCompile(`"[^"]*` + secret[:8] + `[^"]*"\s*:`)

// FuzzParse: Parse never panics, fails only with *ParseError that quotes no
// value, and whatever it accepts is JSON that Marshal reproduces faithfully.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		docVault, `{}`, `{"a": {}}`, `{"a": {"f": {"v1": "x", "v2": "y"}}}`,
		`{"a": {"_targets": ["https://x:8443", "ldaps://dc1"]}}`, `{"a": {"_m": {"k": [1, null, true, "s"]}}}`,
		`{"a": {"f": "\u00e9\ud83d\ude00\n\"\\"}}`, `{"a": {"f": "x", "f": "y"}}`, "\ufeff{}", `{"a": {"f": 1}}`,
		`{"_agent": {"token": "t"}}`, `{"a": {"f": "\ud800"}}`, `{} x`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := vault.Parse(data)
		if err != nil {
			var pe *vault.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("untyped error %v", err)
			}
			// The reason text is fixed or names keys; values never.
			// Only keys (a string followed by ':') may be named.
			if strings.Contains(err.Error(), secret[:8]) && !keyWithSecret.Match(data) {
				t.Fatalf("error quotes input: %v", err)
			}
			return
		}
		if !json.Valid(data) {
			t.Fatal("Parse accepted invalid JSON")
		}
		buf, n, err := v.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		defer buf.Destroy()
		out := buf.Bytes()[:n]
		var a, b any
		if err := json.Unmarshal(data, &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(out, &b); err != nil {
			t.Fatalf("Marshal output is not JSON: %v", err)
		}
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if !bytes.Equal(ja, jb) {
			t.Fatalf("Marshal changed the document:\n%s\n%s", ja, jb)
		}
		if _, err := vault.Parse(out); err != nil {
			t.Fatalf("Parse refused Marshal's output: %v", err)
		}
	})
}

// FuzzParseRef: accepted references print back to themselves; errors are
// *RefError and never quote the input.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{
		"vault://local/salesforce-prod/client_secret/v3", "vault://local/a/b", "vault://local/a/b/v0",
		"vault://local/a/%2e%2e", "vault://local/../x", secret, "vault://local/a/_targets",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := vault.ParseRef(s)
		if err != nil {
			var re *vault.RefError
			if !errors.As(err, &re) {
				t.Fatalf("untyped error %v", err)
			}
			// Reasons are fixed texts; none contains these characters.
			if strings.Contains(err.Error(), s) && strings.ContainsAny(s, "!@$&*=+~|<>;'") {
				t.Fatalf("error quotes input: %v", err)
			}
			return
		}
		if r.String() != s {
			t.Fatalf("%q parsed to %+v which prints %q", s, r, r.String())
		}
	})
}
