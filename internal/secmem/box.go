package secmem

import (
	"crypto/rand"
	"errors"
	"sync"

	"github.com/awnumar/memguard"
	"golang.org/x/crypto/nacl/secretbox"
)

// Sealed is a secret at rest in memory: encrypted (XSalsa20-Poly1305) under
// a per-process key that lives in one frozen memguard buffer. It is the same
// construction as a memguard Enclave, without the two costs that make
// enclaves unfit for a vault of thousands of values: every Enclave seal and
// open maps, locks and unmaps fresh pages for a view of the key, and
// Enclave.Open decrypts through a heap buffer. Here sealing costs no system
// call, and Open decrypts straight into locked memory.
//
// A Sealed value refuses to be printed.
type Sealed struct {
	ct []byte // nonce (24) || secretbox
}

const nonceLen = 24

var (
	keyOnce sync.Once
	key     *memguard.LockedBuffer
	keyArr  *[32]byte
	keyErr  error
)

func boxKey() (*[32]byte, error) {
	keyOnce.Do(func() {
		var k *memguard.LockedBuffer
		if keyErr = guard(func() { k = memguard.NewBufferRandom(32) }); keyErr != nil {
			return
		}
		k.Freeze() // read-only from here on
		key, keyArr = k, k.ByteArray32()
	})
	return keyArr, keyErr
}

// SealValue encrypts src into a Sealed and wipes src.
func SealValue(src []byte) (*Sealed, error) {
	defer memguard.WipeBytes(src)
	if len(src) == 0 {
		return nil, errors.New("cannot seal an empty value")
	}
	k, err := boxKey()
	if err != nil {
		return nil, err
	}
	var nonce [nonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	out := make([]byte, nonceLen, nonceLen+len(src)+secretbox.Overhead)
	copy(out, nonce[:])
	return &Sealed{ct: secretbox.Seal(out, src, &nonce, k)}, nil
}

// Size is the plaintext length, known without decrypting.
func (s *Sealed) Size() int { return len(s.ct) - nonceLen - secretbox.Overhead }

// OpenInto decrypts into dst, which must hold Size bytes, and returns the
// length written. dst is normally locked memory.
func (s *Sealed) OpenInto(dst []byte) (int, error) {
	k, err := boxKey()
	if err != nil {
		return 0, err
	}
	n := s.Size()
	if len(dst) < n {
		return 0, errors.New("internal error: buffer too small for a sealed value")
	}
	var nonce [nonceLen]byte
	copy(nonce[:], s.ct[:nonceLen])
	if _, ok := secretbox.Open(dst[:0:n], s.ct[nonceLen:], &nonce, k); !ok {
		return 0, errors.New("internal error: a sealed value does not authenticate")
	}
	return n, nil
}

// Open decrypts into a new locked buffer that the caller destroys.
func (s *Sealed) Open() (*memguard.LockedBuffer, error) {
	b, err := New(s.Size())
	if err != nil {
		return nil, err
	}
	if _, err := s.OpenInto(b.Bytes()); err != nil {
		b.Destroy()
		return nil, err
	}
	return b, nil
}

// String keeps a Sealed out of logs and errors.
func (s *Sealed) String() string { return "[secret]" }

// GoString does the same for %#v.
func (s *Sealed) GoString() string { return "[secret]" }

// MarshalJSON refuses: a secret never goes into JSON by accident.
func (s *Sealed) MarshalJSON() ([]byte, error) {
	return nil, errors.New("a sealed secret cannot be marshalled")
}
