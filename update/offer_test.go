package update

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// The example of PROTOCOL.md §7, with real hex.
const exampleOffer = `{"version": "1.5.0", "os": "linux", "arch": "amd64", "size": 14680064,
 "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
 "hmac_sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
 "url": "/api/agent/v1/update/1.5.0/binary"}`

func TestParseOffer(t *testing.T) {
	o, err := ParseOffer([]byte(exampleOffer))
	if err != nil {
		t.Fatal(err)
	}
	if o.Version != "1.5.0" || o.OS != "linux" || o.Arch != "amd64" || o.Size != 14680064 || o.Signature != nil ||
		o.URL.String() != "/api/agent/v1/update/1.5.0/binary" || hex.EncodeToString(o.SHA256[:]) != "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" {
		t.Fatalf("%+v", o)
	}
	// Round trip through the wire form.
	b, _ := json.Marshal(o.Wire())
	o2, err := ParseOffer(b)
	if err != nil || o2.Wire() != o.Wire() {
		t.Fatalf("round trip: %v %+v", err, o2)
	}
}

func TestParseOfferRejects(t *testing.T) {
	base := map[string]any{}
	json.Unmarshal([]byte(exampleOffer), &base)
	for _, tc := range []struct {
		name, field string
		value       any // nil deletes the field
	}{
		{"no version", "version", nil},
		{"v prefix", "version", "v1.5.0"},
		{"version with spaces", "version", "1.5.0 "},
		{"empty os", "os", ""},
		{"upper-case os", "os", "Linux"},
		{"path in arch", "arch", "../amd64"},
		{"long arch", "arch", strings.Repeat("a", 33)},
		{"zero size", "size", 0},
		{"negative size", "size", -1},
		{"fractional size", "size", 1.5},
		{"size as a string", "size", "14680064"},
		{"short sha256", "sha256", "9f86d0"},
		{"non-hex sha256", "sha256", strings.Repeat("g", 64)},
		{"short hmac", "hmac_sha256", "00"},
		{"signature not base64", "ed25519", "!!!"},
		{"signature of 63 bytes", "ed25519", base64.StdEncoding.EncodeToString(make([]byte, 63))},
		{"no url", "url", nil},
		{"url with user", "url", "https://user:pw@cp.example.com/x"},
		{"url too long", "url", "/" + strings.Repeat("a", 2048)},
		{"url unparsable", "url", "http://[::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := map[string]any{}
			for k, v := range base {
				m[k] = v
			}
			if tc.value == nil {
				delete(m, tc.field)
			} else {
				m[tc.field] = tc.value
			}
			b, _ := json.Marshal(m)
			_, err := ParseOffer(b)
			var oe *OfferError
			if !errors.As(err, &oe) || !errors.Is(err, ErrOffer) {
				t.Fatalf("got %v, want an *OfferError", err)
			}
			if oe.Field != "" && oe.Field != tc.field && !(tc.value == nil && oe.Field != "") {
				t.Fatalf("field %q, want %q", oe.Field, tc.field)
			}
			checkNotQuoted(t, b, err)
		})
	}
	for _, body := range []string{``, `[]`, `{"version":"1.5.0","version":"1.6.0"}`, "\xef\xbb\xbf{}", `{"url":"` + strings.Repeat("x", 2<<20) + `"}`} {
		if _, err := ParseOffer([]byte(body)); !errors.Is(err, ErrOffer) {
			t.Errorf("%.40q: got %v", body, err)
		}
	}
}

// checkNotQuoted fails when err's text holds any 8-byte run of the input
// (STYLE: an error never quotes input that may be secret).
func checkNotQuoted(t testing.TB, input []byte, err error) {
	t.Helper()
	msg := err.Error()
	// The field names come from the program.
	for _, f := range []string{"version", "hmac_sha256", "sha256", "ed25519", "arch", "size", "url"} {
		msg = strings.ReplaceAll(msg, f, "")
	}
	for i := 0; i+8 <= len(input); i++ {
		run := string(input[i : i+8])
		if strings.Trim(run, " \n\t{}\":,") != run {
			continue // JSON punctuation is not content
		}
		if strings.Contains(msg, run) {
			t.Fatalf("the error %q quotes the input (%q)", msg, run)
		}
	}
}

// testPolicy is a policy and a matching offer, MACed with key.
func testOffer(t testing.TB, key []byte, priv ed25519.PrivateKey) (*Offer, Policy) {
	t.Helper()
	o, err := ParseOffer([]byte(exampleOffer))
	if err != nil {
		t.Fatal(err)
	}
	cp, _ := url.Parse("https://cp.example.com:8443")
	p := Policy{Enabled: true, AgentID: "agt_1", Running: "1.4.0", OS: "linux", Arch: "amd64", ControlPlane: cp}
	copy(o.HMAC[:], HMAC(key, o.Manifest(p.AgentID)))
	if priv != nil {
		o.Signature = ed25519.Sign(priv, o.Manifest(p.AgentID))
		p.ReleaseKey = priv.Public().(ed25519.PublicKey)
	}
	return o, p
}

func TestVerify(t *testing.T) {
	key := []byte(strings.Repeat("ab", 32))
	mac := func(m []byte) ([]byte, error) { return HMAC(key, m), nil }
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	for _, tc := range []struct {
		name   string
		signed bool
		change func(o *Offer, p *Policy)
		want   string // "" accepts
	}{
		{"accepted", false, func(o *Offer, p *Policy) {}, ""},
		{"accepted, signed", true, func(o *Offer, p *Policy) {}, ""},
		{"absolute url on the origin", false, func(o *Offer, p *Policy) {
			o.URL, _ = url.Parse("https://CP.example.com:8443/api/agent/v1/update/1.5.0/binary")
		}, ""},
		{"off", false, func(o *Offer, p *Policy) { p.Enabled = false }, "self-update is off"},
		{"another os", false, func(o *Offer, p *Policy) { p.OS = "darwin" }, "the offer is for linux/amd64; this agent is darwin/amd64"},
		{"another arch", false, func(o *Offer, p *Policy) { p.Arch = "arm64" }, "this agent is linux/arm64"},
		{"same version", false, func(o *Offer, p *Policy) { p.Running = "1.5.0" }, "not newer than the running 1.5.0"},
		{"older version", false, func(o *Offer, p *Policy) { p.Running = "2.0.0" }, "not newer than the running 2.0.0"},
		{"pre-release of the running", false, func(o *Offer, p *Policy) { p.Running = "1.5.0"; o.Version = "1.5.0-rc.1" }, "not newer"},
		{"at the floor", false, func(o *Offer, p *Policy) { p.Floor = "1.5.0" }, "highest version committed on this host"},
		{"below the floor", false, func(o *Offer, p *Policy) { p.Floor = "1.6.0" }, "highest version committed on this host"},
		{"reverted before", false, func(o *Offer, p *Policy) { p.Reverted = []string{"1.5.0"} }, "was reverted on this host"},
		{"too large", false, func(o *Offer, p *Policy) { o.Size = wire.MaxUpdateBytes + 1 }, "over the 256 MiB limit"},
		{"other host", false, func(o *Offer, p *Policy) { o.URL, _ = url.Parse("https://evil.example.com:8443/x") }, "not on the control plane's origin"},
		{"other port", false, func(o *Offer, p *Policy) { o.URL, _ = url.Parse("https://cp.example.com/x") }, "not on the control plane's origin"},
		{"plain http", false, func(o *Offer, p *Policy) { o.URL, _ = url.Parse("http://cp.example.com:8443/x") }, "not on the control plane's origin"},
		{"scheme-relative", false, func(o *Offer, p *Policy) { o.URL, _ = url.Parse("//evil.example.com/x") }, "not on the control plane's origin"},
		{"mac of another agent", false, func(o *Offer, p *Policy) { p.AgentID = "agt_2" }, "hmac_sha256 does not match"},
		{"altered size", false, func(o *Offer, p *Policy) { o.Size++ }, "hmac_sha256 does not match"},
		{"altered sha256", false, func(o *Offer, p *Policy) { o.SHA256[0] ^= 1 }, "hmac_sha256 does not match"},
		{"signature required, missing", false, func(o *Offer, p *Policy) { p.ReleaseKey = priv.Public().(ed25519.PublicKey) }, "no ed25519 release signature"},
		{"signature by another key", true, func(o *Offer, p *Policy) { o.Signature = ed25519.Sign(other, o.Manifest(p.AgentID)) }, "does not verify"},
		{"signature over another agent's manifest", true, func(o *Offer, p *Policy) { o.Signature = ed25519.Sign(priv, o.Manifest("agt_2")) }, "does not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var k ed25519.PrivateKey
			if tc.signed {
				k = priv
			}
			o, p := testOffer(t, key, k)
			tc.change(o, &p)
			abs, r := Verify(o, p, mac)
			switch {
			case tc.want == "" && r != nil:
				t.Fatalf("refused: %v", r)
			case tc.want == "" && (abs.Scheme != "https" || !strings.EqualFold(abs.Host, "cp.example.com:8443")):
				t.Fatalf("url %s", abs)
			case tc.want != "" && (r == nil || !strings.Contains(r.Reason, tc.want)):
				t.Fatalf("got %v, want a refusal saying %q", r, tc.want)
			}
			if r != nil && strings.Contains(r.Error(), string(key)) {
				t.Fatal("the refusal quotes the key")
			}
		})
	}
}

// The MAC key is the ASCII of the 64-hex update key, as the reference
// control plane computes it.
func TestHMACMatchesWire(t *testing.T) {
	key := []byte(strings.Repeat("0f", 32))
	m := wire.UpdateManifest("agt_1", "1.5.0", "linux", "amd64", 10, strings.Repeat("AB", 32))
	if hex.EncodeToString(HMAC(key, m)) != wire.UpdateHMAC(key, m) {
		t.Fatal("HMAC differs from wire.UpdateHMAC")
	}
}
