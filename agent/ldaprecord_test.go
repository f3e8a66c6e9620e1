package agent

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/go-ldap/ldap/v3"

	"github.com/rapidvalue/tier3-agent/internal/ldapwire"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

func attr(name string, values ...string) ldapwire.Attribute {
	a := ldapwire.Attribute{Name: []byte(name)}
	for _, v := range values {
		a.Values = append(a.Values, []byte(v))
	}
	return a
}

// encodeLDAPRecord encodes one entry with a fresh encoder.
func encodeLDAPRecord(dst []byte, dn string, attrs []ldapwire.Attribute) []byte {
	var enc ldapRecordEncoder
	return enc.encode(dst, []byte(dn), attrs)
}

func TestEncodeLDAPRecord(t *testing.T) {
	got := encodeLDAPRecord(nil, "uid=a,dc=example,dc=com", []ldapwire.Attribute{
		attr("cn", "Alice <A&B>"),
		attr("userPassword", "{SSHA}secret"),
		attr("UserPassword;binary", "x"),
		attr("sambaNTPassword", "0123"),
		attr("unicodePwd", "\"pw\""),
		attr("customPasswordHint", "hint"),
		attr("mail", "a@example.com", "alice@example.com"),
		attr("CN", "second spelling"),
		attr("jpegPhoto", "\xff\xd8\xff"),
		attr("description", "ok", "\xfe\xff"),
		attr("objectGUID", "valid-utf8-by-chance"),
		attr("empty"),
	})
	want := `{"dn":"uid=a,dc=example,dc=com","attributes":{"cn":["Alice \u003cA\u0026B\u003e","second spelling"],` +
		`"mail":["a@example.com","alice@example.com"],"description":["ok"],"empty":[]},` +
		`"binary_attributes":{"jpegPhoto":["/9j/"],"description":["/v8="],"objectGUID":["dmFsaWQtdXRmOC1ieS1jaGFuY2U="]}}`
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if err := wire.Check(got, wire.Limits{MaxDepth: maxRecordDepth}); err != nil {
		t.Fatal(err)
	}
}

func TestEncodeLDAPRecordInvalidDN(t *testing.T) {
	got := encodeLDAPRecord(nil, "cn=\xff", nil)
	want := `{"dn":"cn=\ufffd","dn_base64":"Y249/w==","attributes":{}}`
	if string(got) != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestPasswordAttribute(t *testing.T) {
	for _, a := range []string{"userPassword", "USERPASSWORD", "userPassword;binary", "2.5.4.35", "unicodePwd",
		"sambaNTPassword", "sambaLMPassword", "authPassword", "msDS-ManagedPassword", "msLAPS-Password", "ms-Mcs-AdmPwd", "x-password-y"} {
		if !passwordAttribute(a) {
			t.Errorf("%s is not taken for a password attribute", a)
		}
	}
	for _, a := range []string{"cn", "pwdLastSet", "mail", "passwordless"[:7] + "x"} {
		if passwordAttribute(a) {
			t.Errorf("%s is taken for a password attribute", a)
		}
	}
}

func TestFilterNamesPassword(t *testing.T) {
	for _, tt := range []struct {
		filter string
		want   bool
	}{
		{"(objectClass=*)", false},
		{"(&(uid=a)(cn=b*))", false},
		{"(userPassword=*)", true},
		{"(userPassword=x*)", true},
		{"(|(cn=a)(!(unicodePwd>=a)))", true},
		{"(authPassword~=x)", true},
		{"(userPassword:caseExactMatch:=x)", true},
		{"(cn:dn:=userPassword)", false},
	} {
		f, err := ldap.CompileFilter(tt.filter)
		if err != nil {
			t.Fatal(err)
		}
		if got := filterNamesPassword(f, 0); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.filter, got, tt.want)
		}
	}
}

// FuzzLDAPRecord: any entry encodes to a record that the control plane
// accepts (valid JSON, valid UTF-8, no duplicate key), that holds no
// password attribute, and from which every other value is read back.
func FuzzLDAPRecord(f *testing.F) {
	f.Add("uid=a,dc=example,dc=com", []byte("cn\x00Alice\x00userPassword\x00secret\x00jpegPhoto\x00\xff\xd8"))
	f.Add("cn=\xff", []byte("CN\x00a\x00cn\x00b\x00\xff\x00c\x00\xfe\x00d"))
	f.Add("", []byte("a;binary\x00text\x00description\x00\u2028<&>\"\\\x01"))
	f.Fuzz(func(t *testing.T, dn string, blob []byte) {
		parts := bytes.Split(blob, []byte{0})
		var attrs []ldapwire.Attribute
		for i := 0; i+1 < len(parts); i += 2 {
			attrs = append(attrs, ldapwire.Attribute{Name: parts[i], Values: [][]byte{parts[i+1]}})
		}
		rec := encodeLDAPRecord(nil, dn, attrs)
		if err := wire.Check(rec, wire.Limits{MaxBytes: 1 << 30, MaxDepth: maxRecordDepth}); err != nil {
			t.Fatalf("the control plane would refuse %q: %v", rec, err)
		}
		if again := appendCompactJSON(nil, rec); !bytes.Equal(again, rec) {
			t.Fatalf("not in its final encoding: %q", rec)
		}
		var r struct {
			DN       string              `json:"dn"`
			DNBase64 []byte              `json:"dn_base64"`
			Attrs    map[string][]string `json:"attributes"`
			Binary   map[string][]string `json:"binary_attributes"`
		}
		if err := json.Unmarshal(rec, &r); err != nil {
			t.Fatal(err)
		}
		if utf8.ValidString(dn) && r.DN != dn || !utf8.ValidString(dn) && string(r.DNBase64) != dn {
			t.Fatalf("dn %q lost", dn)
		}
		// Values by folded name, as the encoder groups them: a multiset.
		type value struct {
			key, v string
			bin    bool
		}
		sent := map[value]int{}
		for k, vs := range r.Attrs {
			if passwordAttribute(k) {
				t.Fatalf("password attribute %q sent", k)
			}
			for _, v := range vs {
				sent[value{strings.ToLower(k), v, false}]++
			}
		}
		for k, vs := range r.Binary {
			if passwordAttribute(k) {
				t.Fatalf("password attribute %q sent", k)
			}
			for _, v := range vs {
				b, err := base64.StdEncoding.DecodeString(v)
				if err != nil {
					t.Fatal(err)
				}
				sent[value{strings.ToLower(k), string(b), true}]++
			}
		}
		for _, a := range attrs {
			name := string(a.Name)
			if passwordAttribute(name) {
				continue
			}
			v := string(a.Values[0])
			k := value{strings.ToLower(strings.ToValidUTF8(name, "\uFFFD")), v, binaryAttribute(name) || !utf8.ValidString(v)}
			if sent[k] == 0 {
				t.Fatalf("value %q of %q lost in %s", v, a.Name, rec)
			}
			sent[k]--
		}
		for k, n := range sent {
			if n != 0 {
				t.Fatalf("value %q of %q sent %d more times than given", k.v, k.key, n)
			}
		}
	})
}
