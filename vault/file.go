package vault

import (
	"errors"
	"fmt"
	"os"

	"filippo.io/age"
	"github.com/awnumar/memguard"

	"github.com/rapidvalue/tier3-agent/internal/agefile"
	"github.com/rapidvalue/tier3-agent/internal/atomicfile"
	"github.com/rapidvalue/tier3-agent/internal/secmem"
)

// Format tells a plaintext vault from a sealed one.
type Format = agefile.Format

const (
	FormatPlaintext = agefile.Plaintext
	FormatArmored   = agefile.Armored
	FormatBinary    = agefile.Binary
)

var (
	// ErrNoMatch means the vault does not open with the identities given.
	ErrNoMatch = agefile.ErrNoMatch
	// ErrCorrupt means the sealed file is malformed or was modified.
	ErrCorrupt = agefile.ErrMalformed
	// ErrPlaintext is returned by Open when the file is a plaintext vault
	// and plaintext was not allowed.
	ErrPlaintext = errors.New("the vault is plaintext")
)

// ReadFile reads the vault file at path into locked memory (a plaintext
// vault's bytes are secrets too) and says what it is. The caller destroys
// the buffer.
func ReadFile(path string) (*memguard.LockedBuffer, int, Format, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, agefile.Unknown, err
	}
	defer f.Close()
	buf, n, err := secmem.ReadAll(f, agefile.MaxFileSize)
	if err != nil {
		if errors.Is(err, secmem.ErrTooLarge) {
			return nil, 0, agefile.Unknown, fmt.Errorf("vault %s is larger than %d bytes", path, agefile.MaxFileSize)
		}
		return nil, 0, agefile.Unknown, fmt.Errorf("cannot read vault %s: %w", path, err)
	}
	if n == 0 {
		return nil, 0, agefile.Unknown, fmt.Errorf("vault %s is empty: restore it from a backup, or remove it and run vault init", path)
	}
	format := agefile.Detect(buf.Bytes()[:n])
	if format == agefile.Unknown {
		buf.Destroy()
		return nil, 0, format, fmt.Errorf("vault %s is neither JSON nor an age file", path)
	}
	return buf, n, format, nil
}

// Open reads and parses the vault at path. A sealed vault is decrypted with
// identities; a plaintext one is accepted only when allowPlaintext is set.
func Open(path string, allowPlaintext bool, identities ...age.Identity) (*Vault, Format, error) {
	buf, n, format, err := ReadFile(path)
	if err != nil {
		return nil, format, err
	}
	defer buf.Destroy()
	data := buf.Bytes()[:n]
	if format == agefile.Plaintext {
		if !allowPlaintext {
			return nil, format, ErrPlaintext
		}
		v, err := Parse(data)
		return v, format, err
	}
	v, err := Decrypt(data, identities...)
	return v, format, err
}

// Decrypt opens a sealed vault file's bytes.
func Decrypt(data []byte, identities ...age.Identity) (*Vault, error) {
	if len(identities) == 0 {
		return nil, errors.New("no identity to open the vault with")
	}
	pt, n, err := agefile.Decrypt(data, identities...)
	if err != nil {
		return nil, err
	}
	defer pt.Destroy()
	return Parse(pt.Bytes()[:n])
}

// Seal returns the vault as an armored age file encrypted to recipients.
func (v *Vault) Seal(recipients ...age.Recipient) ([]byte, error) {
	pt, n, err := v.Marshal()
	if err != nil {
		return nil, err
	}
	defer pt.Destroy()
	return agefile.Encrypt(pt.Bytes()[:n], recipients...)
}

// WriteSealed replaces the vault at path with v sealed to recipients,
// atomically and durably (see atomicfile.Write). Callers hold Lock(path).
func (v *Vault) WriteSealed(path string, recipients ...age.Recipient) error {
	data, err := v.Seal(recipients...)
	if err != nil {
		return fmt.Errorf("cannot seal the vault: %w", err)
	}
	return atomicfile.Write(path, data, 0o600)
}

// WritePlaintextNew writes v as plaintext JSON to a new file at path (0600);
// it never overwrites. Writing plaintext to disk is what `vault unseal`
// asks for, and nothing else calls this.
func (v *Vault) WritePlaintextNew(path string) error {
	pt, n, err := v.Marshal()
	if err != nil {
		return err
	}
	defer pt.Destroy()
	return atomicfile.WriteNew(path, pt.Bytes()[:n], 0o600)
}

// Lock serializes writers of the vault at path.
func Lock(path string) (unlock func(), err error) { return atomicfile.Lock(path) }
