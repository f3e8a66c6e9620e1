package secmem

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
)

func TestSealed(t *testing.T) {
	src := []byte("a secret value")
	s, err := SealValue(src)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src, make([]byte, len(src))) {
		t.Fatal("SealValue did not wipe its input")
	}
	if s.Size() != len("a secret value") {
		t.Fatalf("Size = %d", s.Size())
	}
	b, err := s.Open()
	if err != nil || string(b.Bytes()) != "a secret value" {
		t.Fatalf("Open: %v", err)
	}
	b.Destroy()
	if bytes.Contains(s.ct, []byte("secret")) {
		t.Fatal("ciphertext holds the plaintext")
	}
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s", s, s, s, s)} {
		if bytes.Contains([]byte(out), []byte("secret value")) {
			t.Fatalf("printed: %s", out)
		}
	}
	if _, err := json.Marshal(struct{ S *Sealed }{s}); err == nil {
		t.Fatal("a Sealed marshalled to JSON")
	}
	s.ct[len(s.ct)-1] ^= 1
	if _, err := s.Open(); err == nil {
		t.Fatal("a modified Sealed opened")
	}
	if _, err := SealValue(nil); err == nil {
		t.Fatal("an empty value sealed")
	}
}
