package seal

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"testing"

	"filippo.io/age"
	"github.com/google/go-tpm/tpm2/transport"
)

// FuzzTPM2Stanza feeds p256tag stanzas, which come from the untrusted vault
// header, to the tpm2 identity. It must not panic; a stanza whose tag does
// not match is skipped without reaching the TPM; one that matches reaches
// the TPM (here: an unavailable one) and nothing else.
func FuzzTPM2Stanza(f *testing.F) {
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	r, err := tagRecipient(k.PublicKey())
	if err != nil {
		f.Fatal(err)
	}
	// A real stanza for r, and one for another key.
	ss, err := r.Wrap(bytes.Repeat([]byte{1}, 16))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ss[0].Type, ss[0].Args[0], ss[0].Args[1], ss[0].Body)
	k2, _ := ecdh.P256().GenerateKey(rand.Reader)
	r2, _ := tagRecipient(k2.PublicKey())
	ss2, _ := r2.Wrap(bytes.Repeat([]byte{2}, 16))
	f.Add(ss2[0].Type, ss2[0].Args[0], ss2[0].Args[1], ss2[0].Body)
	f.Add("p256tag", "", "", []byte{})
	f.Add("X25519", "abc", "def", []byte("x"))

	noTPM := errors.New("no TPM in this test")
	id := &tpm2Identity{s: &tpm2Seal{
		p:         &tpm2Provider{open: func(string) (transport.TPMCloser, error) { return nil, noTPM }},
		recipient: r,
	}}
	f.Fuzz(func(t *testing.T, typ, a0, a1 string, body []byte) {
		_, err := id.Unwrap([]*age.Stanza{{Type: typ, Args: []string{a0, a1}, Body: body}})
		switch {
		case err == nil:
			t.Fatal("unwrapped without a TPM")
		case typ != p256TagType && !errors.Is(err, age.ErrIncorrectIdentity):
			t.Fatalf("stanza of type %q: %v", typ, err)
		}
	})
}
