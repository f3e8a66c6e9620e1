// Package redact scrubs the agent's secrets from everything it sends back:
// results, chunks, errors, events and log lines.
//
// A Redactor is given every secret value (the vault's, at load; the access
// tokens the agent obtains, as it obtains them) and replaces each
// occurrence, in any of the forms below, with "[REDACTED]":
//
//   - raw;
//   - base64, standard and URL alphabets, padded or not, also when the
//     secret sits at any offset inside a larger encoded blob (HTTP Basic
//     credentials, a base64 body): see "Base64" below;
//   - percent-encoded: Go's url.QueryEscape and url.PathEscape, an encoder
//     that keeps only unreserved characters, JavaScript's
//     encodeURIComponent; upper- or lowercase hex;
//   - JSON-escaped: encoding/json's escapes (with and without HTML
//     escaping), ASCII-only escapes (Python), ASCII-only with "\/" (PHP).
//     JSON documents given to [Redactor.JSON] are matched on their decoded
//     strings, whatever escapes they use.
//
// # What is not caught
//
// Secrets shorter than [MinLen] bytes are refused by Add (the caller must
// not use a credential it cannot redact). Other encodings: hex, decimal
// byte lists, base32, double encodings (base64 of base64, base64 then
// percent-encoded), base64 wrapped over several lines, compressed or
// encrypted data, case changes. A secret split across two pieces that are
// redacted separately (two chunks, two log lines, two fields given to two
// calls): redact whole documents.
//
// # Memory
//
// The Redactor keeps no secret, nor any form of one, in clear. It holds a
// random key in locked memory (memguard) and, per pattern, a keyed 64-bit
// hash of the pattern's last 8 bytes, its length and its HMAC-SHA256. Add
// builds the forms in locked memory and wipes them; matching copies at most
// a candidate's last 63 bytes into locked memory, and wipes them.
//
// # Speed
//
// Scanning hashes one 8-byte window every 8 bytes (see index.go), with a
// filter in front of the map; HMACs run only on real matches. When a
// secret of 8 to 14 bytes is loaded, a second scan hashes every position,
// about 7 times slower.
//
// # Base64
//
// base64(password) is not a substring of base64("user:" + password): the
// characters of an encoding depend on the byte's offset modulo 3. Add
// indexes the three alignments, each reduced to the characters that depend
// on the secret alone; a match is widened over the one character on each
// side that carries some of the secret's bits, and over "=" padding.
package redact

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"github.com/awnumar/memguard"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
)

// Marker replaces every secret.
const Marker = "[REDACTED]"

var marker = []byte(Marker)

const (
	// MinLen is the shortest secret Add accepts. The index works on 8-byte
	// windows, and a shorter value would be found by chance in ordinary
	// text and base64 (a 3-byte secret's base64 is 4 characters): the
	// output would be shredded. The vault already warns under 16 bytes.
	MinLen = window
	// MaxLen is the longest secret Add accepts, the vault's limit on a
	// value.
	MaxLen = 64 << 10
	// maxPasses bounds re-scans: replacing a secret with the marker can
	// complete another secret (one that overlaps the marker text); each
	// pass redacts what the last one made.
	maxPasses = 8
)

var (
	// ErrTooShort is returned by Add for a secret under MinLen bytes.
	ErrTooShort = errors.New("secret is shorter than 8 bytes, too short to redact: use a longer credential")
	// ErrTooLong is returned by Add for a secret over MaxLen bytes.
	ErrTooLong = errors.New("secret is longer than 64 KiB, too long to redact")
	// ErrLikeMarker is returned by Add for a secret one of whose forms is
	// part of the text "[REDACTED]".
	ErrLikeMarker = errors.New("secret is part of the redaction marker " + Marker)
	// ErrDestroyed is returned after Destroy.
	ErrDestroyed = errors.New("redactor was destroyed")
	// ErrInvalidJSON is returned by JSON for input that is not valid JSON.
	ErrInvalidJSON = errors.New("cannot redact: input is not valid JSON")
	// ErrUnredactable is returned by JSON when a secret runs through the
	// document's syntax (quotes, commas, braces) so that no replacement of
	// values removes it. The caller must not send the document.
	ErrUnredactable = errors.New("cannot redact: a secret spans the JSON syntax of the document")
)

// Redactor finds secrets and replaces them with the marker. Its methods
// are safe for concurrent use; Add may run while others redact.
//
// A Redactor refuses to be printed or marshalled with its contents: fmt
// shows only counts.
type Redactor struct {
	keys keys // view of keyBuf: ipad, opad, hash keys

	mu        sync.RWMutex
	keyBuf    *memguard.LockedBuffer // frozen
	patterns  []pattern
	short     table // patterns under longMin bytes, scanned at every position
	long      table // the others, scanned at every stride-th position
	maxLen    int   // of a pattern
	secrets   int
	destroyed bool

	scratchMu sync.Mutex
	scratch   *memguard.LockedBuffer // 128 bytes: a candidate's padded tail
}

// New returns an empty Redactor with a fresh random key. It fails only when
// locked memory cannot be allocated (secmem.ErrMemlock).
func New() (*Redactor, error) {
	kb, err := secmem.New(keySize)
	if err != nil {
		return nil, fmt.Errorf("cannot create redactor: %w", err)
	}
	sc, err := secmem.New(2 * 64)
	if err != nil {
		kb.Destroy()
		return nil, fmt.Errorf("cannot create redactor: %w", err)
	}
	b := kb.Bytes()
	// HMAC key K (32 bytes) in b[0:32]; opad and ipad derived in place.
	if _, err := rand.Read(b[0:32]); err != nil {
		kb.Destroy()
		sc.Destroy()
		return nil, fmt.Errorf("cannot create redactor: %w", err)
	}
	for i := range 64 {
		var k byte
		if i < 32 {
			k = b[i]
		}
		b[64+i] = k ^ 0x5c
	}
	for i := range 64 {
		if i < 32 {
			b[i] ^= 0x36
		} else {
			b[i] = 0x36
		}
	}
	if _, err := rand.Read(b[128:160]); err != nil {
		kb.Destroy()
		sc.Destroy()
		return nil, fmt.Errorf("cannot create redactor: %w", err)
	}
	kb.Freeze()
	return &Redactor{
		keys:    keys{kb.Bytes()},
		keyBuf:  kb,
		short:   newTable(1),
		long:    newTable(stride),
		scratch: sc,
	}, nil
}

// Add makes the Redactor scrub secret from now on. secret is only read:
// Add copies it into locked memory, builds its forms there, and wipes them
// before it returns; the caller keeps and wipes its own copy. Adding a
// value twice is harmless. Errors never contain the secret.
func (r *Redactor) Add(secret []byte) error {
	n := len(secret)
	if n < MinLen {
		return ErrTooShort
	}
	if n > MaxLen {
		return ErrTooLong
	}
	buf, err := secmem.New(srcSpace(n) + formSpace(n))
	if err != nil {
		return fmt.Errorf("cannot add a secret to the redactor: %w", err)
	}
	defer buf.Destroy() // wipes
	src, dst := buf.Bytes()[:srcSpace(n)], buf.Bytes()[srcSpace(n):]

	r.mu.RLock()
	if r.destroyed {
		r.mu.RUnlock()
		return ErrDestroyed
	}
	var add []prepared
	err = eachForm(secret, src, dst, func(p []byte, m int, flags uint8) error {
		if bytes.Contains(marker, p[:m]) {
			return ErrLikeMarker
		}
		add = append(add, prepare(r.keys, p, m, flags))
		return nil
	})
	r.mu.RUnlock()
	if err != nil {
		return err
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.destroyed {
		return ErrDestroyed
	}
	added := false
	for _, pp := range add {
		added = r.insert(pp) || added
	}
	if added {
		r.secrets++
	}
	return nil
}

// Len is the number of distinct secrets added.
func (r *Redactor) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.secrets
}

// Destroy wipes the key and forgets every pattern. From then on the
// Redactor fails closed: Bytes and String return the marker for any
// non-empty input, JSON returns ErrDestroyed, Add returns ErrDestroyed.
//
// To follow a vault reload, keep the Redactor and Add the new values
// (values that left the vault stay redacted, which is what a rotated
// secret deserves); or build a new one, Add the vault's values and the
// live access tokens, swap it in, and Destroy the old one.
func (r *Redactor) Destroy() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.destroyed {
		return
	}
	r.destroyed = true
	r.keyBuf.Destroy()
	r.scratchMu.Lock()
	r.scratch.Destroy()
	r.scratchMu.Unlock()
	r.keys = keys{}
	r.patterns, r.short, r.long = nil, table{}, table{}
}

// Bytes returns b with every secret replaced by the marker: b itself when
// nothing matched (callers must not assume a copy), a new slice otherwise.
func (r *Redactor) Bytes(b []byte) []byte {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out, _ := r.redact(b)
	return out
}

// String is Bytes for a string.
func (r *Redactor) String(s string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out, changed := r.redact(stringBytes(s))
	if !changed {
		return s
	}
	return string(out)
}

// redact replaces every match in b, and again in the result until no
// match is left (the marker next to text can complete a secret). Callers
// hold r.mu for reading.
func (r *Redactor) redact(b []byte) ([]byte, bool) {
	if r.destroyed {
		if len(b) == 0 {
			return b, false
		}
		return []byte(Marker), true
	}
	spans := r.find(r.keys, b, nil)
	if len(spans) == 0 {
		return b, false
	}
	out := b
	var at []int
	for pass := 0; len(spans) > 0; pass++ {
		if pass == maxPasses {
			return []byte(Marker), true
		}
		out, at = replace(out, spans, at[:0])
		spans = r.refind(r.keys, out, at, spans[:0])
	}
	return out, true
}

// authHeaders are removed by Header whatever their value.
var authHeaders = []string{
	"Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie",
	"X-Api-Key", "X-Auth-Token",
}

// Header returns a copy of h without the authentication headers
// (Authorization, Proxy-Authorization, Cookie, Set-Cookie, X-API-Key,
// X-Auth-Token, and the names in drop, such as an api_key scheme's
// header), with every secret scrubbed from the other names and values.
func (r *Redactor) Header(h http.Header, drop ...string) http.Header {
	skip := make(map[string]bool, len(authHeaders)+len(drop))
	for _, n := range authHeaders {
		skip[n] = true
	}
	for _, n := range drop {
		skip[http.CanonicalHeaderKey(n)] = true
	}
	out := make(http.Header, len(h))
	for name, vals := range h {
		if skip[http.CanonicalHeaderKey(name)] {
			continue
		}
		name = r.String(name)
		for _, v := range vals {
			out[name] = append(out[name], r.String(v))
		}
	}
	return out
}

// ReplaceAttr redacts a log attribute; set it as slog.HandlerOptions'
// ReplaceAttr so that the handler cannot print a secret. It sees the
// message too (key "msg"). Strings are redacted; errors become their
// redacted text; fmt.Stringers their redacted String(); byte slices are
// redacted as bytes; other values are rendered as JSON (or with %+v when
// they do not marshal) and redacted; numbers, times and the like are kept
// unless their text holds a secret.
func (r *Redactor) ReplaceAttr(_ []string, a slog.Attr) slog.Attr {
	a.Key = r.String(a.Key)
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		a.Value = slog.StringValue(r.String(v.String()))
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			a.Value = slog.StringValue(r.String(x.Error()))
		case fmt.Stringer:
			a.Value = slog.StringValue(r.String(x.String()))
		case []byte:
			a.Value = slog.AnyValue(r.Bytes(x))
		default:
			if j, err := json.Marshal(x); err == nil {
				if red, err := r.JSON(j); err == nil {
					a.Value = slog.AnyValue(json.RawMessage(red))
					break
				}
			}
			a.Value = slog.StringValue(r.String(fmt.Sprintf("%+v", x)))
		}
	case slog.KindGroup:
	default:
		s := v.String()
		if red := r.String(s); red != s {
			a.Value = slog.StringValue(red)
		}
	}
	return a
}

// Format prints counts only, for every verb.
func (r *Redactor) Format(f fmt.State, _ rune) {
	r.mu.RLock()
	n, p := r.secrets, len(r.patterns)
	r.mu.RUnlock()
	fmt.Fprintf(f, "redact.Redactor{%d secrets, %d patterns}", n, p)
}

// MarshalJSON refuses: a Redactor is not data.
func (r *Redactor) MarshalJSON() ([]byte, error) {
	return nil, errors.New("a redactor cannot be marshalled")
}
