// Package agefile reads and writes age files whose plaintext never touches
// the Go heap.
//
// age.Decrypt and age.Encrypt stream the plaintext through buffers of their
// own, which stay on the heap until collected. Here the header is handled by
// age's exported API (ExtractHeader, DecryptHeader, Encrypt for the header
// alone) and the payload, age's STREAM construction (ChaCha20-Poly1305 over
// 64 KiB chunks, HKDF-SHA256 stream key), is opened and sealed directly
// between the ciphertext and a memguard locked buffer.
//
// Decrypt agrees with age on every conformance vector (c2sp.org/CCTV/age);
// the tests hold that.
package agefile

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"filippo.io/age"
	"filippo.io/age/armor"
	"github.com/awnumar/memguard"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/hkdf"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
)

// Format is what the first bytes of a vault file say it is.
type Format int

const (
	Unknown   Format = iota
	Plaintext        // JSON: the first non-space byte is '{'
	Armored          // -----BEGIN AGE ENCRYPTED FILE-----
	Binary           // age-encryption.org/v1
)

func (f Format) String() string {
	switch f {
	case Plaintext:
		return "plaintext"
	case Armored:
		return "sealed (armored age)"
	case Binary:
		return "sealed (binary age)"
	}
	return "unknown"
}

const (
	binaryIntro = "age-encryption.org/"
	chunkSize   = 64 << 10
	encChunk    = chunkSize + chacha20poly1305.Overhead
	nonceSize   = 16
	fileKeySize = 16
	// MaxFileSize caps what Decrypt accepts: far above any vault.
	MaxFileSize = 64 << 20
)

// Detect tells a plaintext vault from a sealed one by its first bytes.
func Detect(data []byte) Format {
	switch {
	case bytes.HasPrefix(data, []byte(binaryIntro)):
		return Binary
	}
	t := bytes.TrimLeft(data, " \t\r\n")
	switch {
	case bytes.HasPrefix(t, []byte(armor.Header)):
		return Armored
	case bytes.HasPrefix(t, []byte("{")):
		return Plaintext
	}
	return Unknown
}

var (
	// ErrNoMatch means none of the identities opens the file.
	ErrNoMatch = errors.New("no identity matches this vault")
	// ErrMalformed means the file is not a well-formed age file, or it was
	// modified (a MAC or tag does not verify).
	ErrMalformed = errors.New("not a valid age file")
)

// Decrypt opens an armored or binary age file and returns its plaintext in a
// locked buffer, which the caller destroys. Errors wrap ErrNoMatch or
// ErrMalformed, or are the identity's own (a TPM that cannot be reached).
// An empty plaintext is returned as a one-byte buffer with n == 0.
func Decrypt(data []byte, identities ...age.Identity) (buf *memguard.LockedBuffer, n int, err error) {
	if len(data) > MaxFileSize {
		return nil, 0, fmt.Errorf("%w: larger than %d bytes", ErrMalformed, MaxFileSize)
	}
	bin := data
	switch Detect(data) {
	case Armored:
		bin, err = io.ReadAll(io.LimitReader(armor.NewReader(bytes.NewReader(data)), MaxFileSize))
		if err != nil {
			return nil, 0, fmt.Errorf("%w: bad armor", ErrMalformed)
		}
	case Binary:
	default:
		return nil, 0, fmt.Errorf("%w: no age header", ErrMalformed)
	}
	hdr, err := age.ExtractHeader(bytes.NewReader(bin))
	if err != nil || !bytes.HasPrefix(bin, hdr) {
		return nil, 0, fmt.Errorf("%w: bad header", ErrMalformed)
	}
	fileKey, err := age.DecryptHeader(hdr, passThrough(identities)...)
	if err != nil {
		var nm *age.NoIdentityMatchError
		var ie *identityError
		switch {
		case errors.As(err, &nm):
			return nil, 0, ErrNoMatch
		case errors.As(err, &ie):
			// A plug-in identity's own failure (a TPM that cannot be
			// reached, PCRs that changed): the caller needs it as is.
			return nil, 0, ie.err
		}
		// Everything else is age saying the header is malformed, its MAC
		// is wrong, or a native stanza does not parse. age's messages
		// never include file contents.
		return nil, 0, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	defer memguard.WipeBytes(fileKey)
	rest := bin[len(hdr):]
	if len(rest) < nonceSize {
		return nil, 0, fmt.Errorf("%w: truncated payload", ErrMalformed)
	}
	return openPayload(fileKey, rest[:nonceSize], rest[nonceSize:])
}

// identityError marks an error that a non-native identity returned, so that
// Decrypt can hand it back unchanged instead of calling the file malformed.
type identityError struct{ err error }

func (e *identityError) Error() string { return e.err.Error() }
func (e *identityError) Unwrap() error { return e.err }

type markErrors struct{ age.Identity }

func (m markErrors) Unwrap(stanzas []*age.Stanza) ([]byte, error) {
	k, err := m.Identity.Unwrap(stanzas)
	if err != nil && !errors.Is(err, age.ErrIncorrectIdentity) {
		return nil, &identityError{err}
	}
	return k, err
}

func passThrough(ids []age.Identity) []age.Identity {
	out := make([]age.Identity, len(ids))
	for i, id := range ids {
		switch id.(type) {
		case *age.X25519Identity, *age.HybridIdentity, *age.ScryptIdentity:
			out[i] = id
		default:
			out[i] = markErrors{id}
		}
	}
	return out
}

func streamKey(fileKey, nonce []byte) (*memguard.LockedBuffer, error) {
	k, err := secmem.New(chacha20poly1305.KeySize)
	if err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(hkdf.New(sha256.New, fileKey, nonce, []byte("payload")), k.Bytes()); err != nil {
		k.Destroy()
		return nil, err
	}
	return k, nil
}

func chunkNonce(i int, last bool) []byte {
	var n [chacha20poly1305.NonceSize]byte
	binary.BigEndian.PutUint64(n[3:11], uint64(i))
	if last {
		n[len(n)-1] = 1
	}
	return n[:]
}

func openPayload(fileKey, nonce, payload []byte) (*memguard.LockedBuffer, int, error) {
	chunks := (len(payload) + encChunk - 1) / encChunk
	ptSize := len(payload) - chunks*chacha20poly1305.Overhead
	want := (ptSize + chunkSize - 1) / chunkSize
	if ptSize == 0 {
		want = 1
	}
	if chunks == 0 || ptSize < 0 || want != chunks {
		return nil, 0, fmt.Errorf("%w: bad payload size", ErrMalformed)
	}
	key, err := streamKey(fileKey, nonce)
	if err != nil {
		return nil, 0, err
	}
	defer key.Destroy()
	aead, err := chacha20poly1305.New(key.Bytes())
	if err != nil {
		return nil, 0, err
	}
	out, err := secmem.New(ptSize)
	if err != nil {
		return nil, 0, err
	}
	pt := out.Bytes()
	off := 0
	for i := 0; i < chunks; i++ {
		end := min((i+1)*encChunk, len(payload))
		ct := payload[i*encChunk : end]
		last := i == chunks-1
		// Open writes into pt[off:] in place: no plaintext on the heap.
		if _, err := aead.Open(pt[off:off], chunkNonce(i, last), ct, nil); err != nil {
			out.Destroy()
			return nil, 0, fmt.Errorf("%w: payload does not authenticate (modified or truncated)", ErrMalformed)
		}
		off += len(ct) - chacha20poly1305.Overhead
	}
	return out, ptSize, nil
}

// captureRecipient passes a recipient through while keeping the file key
// age.Encrypt wraps, so the payload can be sealed here from locked memory.
type captureRecipient struct {
	r   age.Recipient
	key *[]byte
}

func (c captureRecipient) Wrap(fileKey []byte) ([]*age.Stanza, error) {
	s, _, err := c.WrapWithLabels(fileKey)
	return s, err
}

func (c captureRecipient) WrapWithLabels(fileKey []byte) ([]*age.Stanza, []string, error) {
	if *c.key == nil {
		*c.key = fileKey
	} else if subtle.ConstantTimeCompare(*c.key, fileKey) != 1 {
		return nil, nil, errors.New("internal error: recipients saw different file keys")
	}
	if rl, ok := c.r.(age.RecipientWithLabels); ok {
		return rl.WrapWithLabels(fileKey)
	}
	s, err := c.r.Wrap(fileKey)
	return s, nil, err
}

// Encrypt seals plaintext to every recipient and returns the ASCII-armored
// age file. The plaintext is read in place from the caller's (locked) slice.
func Encrypt(plaintext []byte, recipients ...age.Recipient) ([]byte, error) {
	if len(recipients) == 0 {
		return nil, errors.New("no recipients")
	}
	var fileKey []byte
	wrapped := make([]age.Recipient, len(recipients))
	for i, r := range recipients {
		wrapped[i] = captureRecipient{r: r, key: &fileKey}
	}
	var bin bytes.Buffer
	// age.Encrypt writes the header and the stream nonce, then returns a
	// writer we do not use: the payload is sealed below.
	if _, err := age.Encrypt(&bin, wrapped...); err != nil {
		return nil, err
	}
	if len(fileKey) != fileKeySize || bin.Len() < nonceSize {
		return nil, errors.New("internal error: age did not wrap a file key")
	}
	defer memguard.WipeBytes(fileKey)
	nonce := bytes.Clone(bin.Bytes()[bin.Len()-nonceSize:])
	key, err := streamKey(fileKey, nonce)
	if err != nil {
		return nil, err
	}
	defer key.Destroy()
	aead, err := chacha20poly1305.New(key.Bytes())
	if err != nil {
		return nil, err
	}
	chunks := max(1, (len(plaintext)+chunkSize-1)/chunkSize)
	bin.Grow(len(plaintext) + chunks*chacha20poly1305.Overhead)
	for i := 0; i < chunks; i++ {
		p := plaintext[i*chunkSize : min((i+1)*chunkSize, len(plaintext))]
		bin.Write(aead.Seal(nil, chunkNonce(i, i == chunks-1), p, nil))
	}
	var out bytes.Buffer
	w := armor.NewWriter(&out)
	if _, err := w.Write(bin.Bytes()); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
