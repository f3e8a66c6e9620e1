package tpmstate

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// synthetic builds a record the way the seal does, with a software P-256 point
// standing in for the TPM's key and random bytes for its wrapped private part.
func synthetic(t testing.TB, pcrs []int, mutate func(*tpm2.TPMTPublic)) []byte {
	t.Helper()
	var digest, policy []byte
	if len(pcrs) > 0 {
		d := sha256.Sum256([]byte("pcr values"))
		digest = d[:]
		var err error
		if policy, err = PCRPolicy(pcrs, digest); err != nil {
			t.Fatal(err)
		}
	}
	k, err := ecdh.P256().NewPrivateKey(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	u := k.PublicKey().Bytes()
	pub := KeyTemplate(policy)
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: u[1:33]},
		Y: tpm2.TPM2BECCParameter{Buffer: u[33:]},
	})
	if mutate != nil {
		mutate(&pub)
	}
	r := record{
		Version: Version,
		Device:  "/dev/tpmrm0",
		SRKName: "000b" + strings.Repeat("ab", 32),
		Public:  tpm2.Marshal(tpm2.New2B(pub)),
		Private: tpm2.Marshal(tpm2.TPM2BPrivate{Buffer: bytes.Repeat([]byte{1}, 126)}),
		PCRs:    pcrs,
	}
	if digest != nil {
		r.PCRDigest = hex.EncodeToString(digest)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seeds(t testing.TB) map[string][]byte {
	m := map[string][]byte{
		"synthetic":     synthetic(t, nil, nil),
		"synthetic-pcr": synthetic(t, []int{0, 7, 16}, nil),
	}
	files, _ := filepath.Glob("testdata/*.json")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m[filepath.Base(f)] = b
	}
	return m
}

func TestParseValid(t *testing.T) {
	for name, data := range seeds(t) {
		t.Run(name, func(t *testing.T) {
			s, err := Parse(data)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if s.Key() == nil || len(s.KeyName().Buffer) != 34 {
				t.Fatal("no key or key name derived")
			}
			again, err := s.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			s2, err := Parse(again)
			if err != nil {
				t.Fatalf("Parse(Marshal()): %v", err)
			}
			if !bytes.Equal(s2.Key().Bytes(), s.Key().Bytes()) || !bytes.Equal(s2.SRKName, s.SRKName) {
				t.Fatal("round trip changed the record")
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	edit := func(data []byte, f func(map[string]any)) []byte {
		var m map[string]any
		json.Unmarshal(data, &m)
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	good := synthetic(t, nil, nil)
	goodPCR := synthetic(t, []int{7, 16}, nil)
	pubWith := func(f func(*tpm2.TPMTPublic)) []byte { return synthetic(t, nil, f) }
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"not json", []byte("tpm")},
		{"too large", bytes.Repeat([]byte(" "), MaxSize+1)},
		{"trailing", append(bytes.Clone(good), []byte(` {}`)...)},
		{"unknown field", edit(good, func(m map[string]any) { m["extra"] = 1 })},
		{"version 2", edit(good, func(m map[string]any) { m["version"] = 2 })},
		{"srk name not hex", edit(good, func(m map[string]any) { m["srk_name"] = "zz" })},
		{"srk name short", edit(good, func(m map[string]any) { m["srk_name"] = "000b00" })},
		{"srk name sha1", edit(good, func(m map[string]any) { m["srk_name"] = "0004" + strings.Repeat("00", 32) })},
		{"no private", edit(good, func(m map[string]any) { delete(m, "private") })},
		{"empty private", edit(good, func(m map[string]any) { m["private"] = "AAA=" })},
		{"private trailing bytes", edit(good, func(m map[string]any) { m["private"] = "AAEBAQ==" })},
		{"public truncated", edit(good, func(m map[string]any) { m["public"] = m["public"].(string)[:40] })},
		{"pcr out of range", edit(goodPCR, func(m map[string]any) { m["pcrs"] = []int{7, 24} })},
		{"pcrs unordered", edit(goodPCR, func(m map[string]any) { m["pcrs"] = []int{16, 7} })},
		{"pcrs changed", edit(goodPCR, func(m map[string]any) { m["pcrs"] = []int{7} })},
		{"pcr digest changed", edit(goodPCR, func(m map[string]any) { m["pcr_digest"] = strings.Repeat("00", 32) })},
		{"pcr digest dropped", edit(goodPCR, func(m map[string]any) { delete(m, "pcr_digest") })},
		{"pcrs dropped", edit(goodPCR, func(m map[string]any) { delete(m, "pcrs") })},
		{"signing key", pubWith(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SignEncrypt = true })},
		{"restricted", pubWith(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = true })},
		{"duplicable", pubWith(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false; p.ObjectAttributes.FixedParent = false })},
		{"imported", pubWith(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = false })},
		{"reserved bit", pubWith(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SetReservedBit(0, true) })},
		{"sha1 name", pubWith(func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 })},
		{"policy without pcrs", pubWith(func(p *tpm2.TPMTPublic) { p.AuthPolicy.Buffer = make([]byte, 32) })},
		{"p384", pubWith(func(p *tpm2.TPMTPublic) {
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
				CurveID:   tpm2.TPMECCNistP384,
				KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
			})
		})},
		{"point off the curve", pubWith(func(p *tpm2.TPMTPublic) {
			p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: bytes.Repeat([]byte{1}, 32)},
				Y: tpm2.TPM2BECCParameter{Buffer: bytes.Repeat([]byte{2}, 32)},
			})
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.data)
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want a *ParseError", err)
			}
		})
	}
}

func TestValidPCRs(t *testing.T) {
	for _, ok := range [][]int{nil, {0}, {0, 7, 23}} {
		if err := ValidPCRs(ok); err != nil {
			t.Errorf("%v: %v", ok, err)
		}
	}
	for _, bad := range [][]int{{-1}, {24}, {7, 7}, {8, 7}} {
		if ValidPCRs(bad) == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// FuzzTPM2State: Parse never panics, fails only with *ParseError, and what it
// accepts survives Marshal and Parse unchanged.
func FuzzTPM2State(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		out, err := s.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		s2, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal()) failed: %v", err)
		}
		out2, _ := s2.Marshal()
		if !bytes.Equal(out, out2) {
			t.Fatal("Marshal is not stable")
		}
	})
}
