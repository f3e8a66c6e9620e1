package wire

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
)

// ErrFingerprint is returned for a string that is not a SHA-256 fingerprint.
var ErrFingerprint = errors.New("not a SHA-256 fingerprint: want 64 hex digits, colons allowed")

// CertFingerprint returns the SHA-256 fingerprint of a DER certificate in
// lowercase hex, the form the protocol sends.
func CertFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// NormalizeFingerprint returns fp as 64 lowercase hex digits. As the
// protocol says, fingerprints compare as hex, case-insensitive, colons
// ignored: "AB:CD:…" and "abcd…" are the same. The error does not quote fp.
func NormalizeFingerprint(fp string) (string, error) {
	out := make([]byte, 0, sha256.Size*2)
	for i := 0; i < len(fp); i++ {
		c := fp[i]
		switch {
		case c == ':':
			continue
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		case 'A' <= c && c <= 'F':
			c += 'a' - 'A'
		default:
			return "", ErrFingerprint
		}
		if len(out) == sha256.Size*2 {
			return "", ErrFingerprint
		}
		out = append(out, c)
	}
	if len(out) != sha256.Size*2 {
		return "", ErrFingerprint
	}
	return string(out), nil
}

// FingerprintsEqual reports whether a and b are the same valid fingerprint,
// comparing in constant time. An invalid fingerprint equals nothing.
func FingerprintsEqual(a, b string) bool {
	na, err := NormalizeFingerprint(a)
	if err != nil {
		return false
	}
	nb, err := NormalizeFingerprint(b)
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(na), []byte(nb)) == 1
}
