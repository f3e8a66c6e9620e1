package update

import (
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"
)

// FuzzUpdateOffer checks, for any body of a 200 answer to GET /update:
// ParseOffer does not panic; every error is an *OfferError that quotes no
// input; an accepted offer has every field in its shape and round-trips
// through its wire form; and Verify, on it, does not panic and accepts it
// only with a MAC that matches and a URL on the control plane's origin.
func FuzzUpdateOffer(f *testing.F) {
	key := []byte(strings.Repeat("5a", 32))
	o, p := testOffer(f, key, nil)
	genuine, _ := json.Marshal(o.Wire())
	f.Add(genuine)
	f.Add([]byte(exampleOffer))
	for _, s := range []string{
		`{"version":"1.5.0-rc.1+build.7","os":"linux","arch":"arm64","size":1,"sha256":"` + strings.Repeat("A", 64) + `","hmac_sha256":"` + strings.Repeat("0", 64) + `","ed25519":"` + strings.Repeat("A", 86) + `==","url":"https://cp.example.com:8443/x"}`,
		`{"version":"1.5.0","version":"9.9.9"}`,
		`{"version":"1.5.0","os":"linux","arch":"amd64","size":1e3,"sha256":"","hmac_sha256":"","url":"//evil/"}`,
		`{"size":-9223372036854775808}`,
		`{"size":9223372036854775808}`,
		`{"url":"https://user:S3cr3t-pw@cp.example.com/"}`,
		`{"ed25519":"S3cr3t-not-base64!"}`,
		`{"unknown":{"nested":[1,2,{"x":null}]},"version":"1.5.0"}`,
		`null`, `[]`, `"x"`, `{}`,
	} {
		f.Add([]byte(s))
	}
	mac := func(m []byte) ([]byte, error) { return HMAC(key, m), nil }
	f.Fuzz(func(t *testing.T, body []byte) {
		o, err := ParseOffer(body)
		if err != nil {
			var oe *OfferError
			if !errors.As(err, &oe) || !errors.Is(err, ErrOffer) {
				t.Fatalf("error %T is not an *OfferError", err)
			}
			checkNotQuoted(t, body, err)
			return
		}
		if o.Size <= 0 || !validPlatform(o.OS) || !validPlatform(o.Arch) || o.URL == nil || (o.Signature != nil && len(o.Signature) != 64) {
			t.Fatalf("accepted an offer out of shape: %+v", o)
		}
		w := o.Wire()
		b, err := json.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		o2, err := ParseOffer(b)
		if err != nil {
			t.Fatalf("the wire form of an accepted offer does not parse: %v", err)
		}
		if o2.Wire() != w {
			t.Fatalf("round trip: %+v != %+v", o2.Wire(), w)
		}
		pol := p
		pol.Running = "0.0.1"
		abs, r := Verify(o, pol, mac)
		if r == nil {
			if string(HMAC(key, o.Manifest(pol.AgentID))) != string(o.HMAC[:]) {
				t.Fatal("accepted with a MAC that does not match")
			}
			if abs == nil || abs.Scheme != "https" || !strings.EqualFold(abs.Hostname(), "cp.example.com") || abs.Port() != "8443" {
				t.Fatalf("accepted a URL off the origin: %v", abs)
			}
			if _, err := url.Parse(abs.String()); err != nil {
				t.Fatal(err)
			}
		}
	})
}
