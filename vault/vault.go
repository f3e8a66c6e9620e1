// Package vault holds the agent's credential vault: the documented JSON
// schema, parsed strictly, with every secret value kept sealed in memory
// (secmem.Sealed), and the sealed file that stores it.
//
// The vault knows nothing of seals or of the agent: it decrypts with the
// age identities it is given and encrypts to the recipients it is given.
package vault

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/awnumar/memguard"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
)

const (
	// AgentEntry is the reserved entry that holds the agent's own secrets.
	AgentEntry = "_agent"
	// TargetsField binds an entry's credentials to origins.
	TargetsField = "_targets"
)

// IdentifierFields are fields that name an identity rather than prove it:
// they may appear in results. Every other field is a secret.
var IdentifierFields = map[string]bool{"client_id": true, "username": true, "bind_dn": true}

var (
	businessIDRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	fieldRE      = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
)

func checkBusinessID(s string) error {
	if s == AgentEntry || businessIDRE.MatchString(s) {
		return nil
	}
	return errors.New("entry names are business IDs: [a-z0-9][a-z0-9._-]{0,63}, or _agent")
}

func checkFieldName(s string) error {
	if fieldRE.MatchString(s) {
		return nil
	}
	return errors.New("field names are [A-Za-z0-9_.-]{1,64}")
}

// ValidBusinessID reports whether s is a business ID a task may name.
func ValidBusinessID(s string) bool { return businessIDRE.MatchString(s) }

func parseVersionKey(k string) (int, bool) {
	if len(k) < 2 || len(k) > 7 || k[0] != 'v' || k[1] == '0' {
		return 0, false
	}
	n, err := strconv.Atoi(k[1:])
	if err != nil || n < 1 || n > 999999 || strconv.Itoa(n) != k[1:] {
		return 0, false
	}
	return n, true
}

// Vault is a parsed vault. Secret values live sealed (secmem.Sealed):
// encrypted in memory under a key memguard keeps in locked pages, and
// decrypted into locked memory only while used.
type Vault struct {
	entries []*Entry
}

// Entry is one connector's secrets.
type Entry struct {
	Name string
	// Targets are the origins the entry is bound to; nil when unbound.
	Targets []string
	fields  []*Field
	meta    []meta
}

type meta struct{ name, raw string }

// Field is one secret: a plain value, or versions.
type Field struct {
	Name     string
	value    *secmem.Sealed
	versions []version // ascending
}

type version struct {
	n     int
	value *secmem.Sealed
}

func (f *Field) setVersion(n int, e *secmem.Sealed) {
	i := sort.Search(len(f.versions), func(i int) bool { return f.versions[i].n >= n })
	if i < len(f.versions) && f.versions[i].n == n {
		f.versions[i].value = e
		return
	}
	f.versions = append(f.versions, version{})
	copy(f.versions[i+1:], f.versions[i:])
	f.versions[i] = version{n, e}
}

// Versions lists the field's versions, ascending; nil for a plain value.
func (f *Field) Versions() []int {
	var vs []int
	for _, v := range f.versions {
		vs = append(vs, v.n)
	}
	return vs
}

// sealed returns every value of the field.
func (f *Field) sealed() []*secmem.Sealed {
	if f.value != nil {
		return []*secmem.Sealed{f.value}
	}
	es := make([]*secmem.Sealed, len(f.versions))
	for i, v := range f.versions {
		es[i] = v.value
	}
	return es
}

// Entries returns the entries in file order. Callers must not modify them.
func (v *Vault) Entries() []*Entry { return v.entries }

// Fields returns the entry's secret fields in order.
func (e *Entry) Fields() []*Field { return e.fields }

// Entry returns the named entry, or nil.
func (v *Vault) Entry(name string) *Entry {
	for _, e := range v.entries {
		if e.Name == name {
			return e
		}
	}
	return nil
}

// Field returns the named secret field, or nil.
func (e *Entry) Field(name string) *Field {
	for _, f := range e.fields {
		if f.Name == name {
			return f
		}
	}
	return nil
}

// Len is the number of entries, _agent included.
func (v *Vault) Len() int { return len(v.entries) }

// Set stores value under entry/field, creating both as needed. version 0
// replaces the field with a plain value; version N adds or replaces vN of a
// versioned field. value is sealed and wiped.
func (v *Vault) Set(entry, field string, ver int, value []byte) error {
	defer memguard.WipeBytes(value)
	if err := checkBusinessID(entry); err != nil {
		return fmt.Errorf("entry name: %w", err)
	}
	if err := checkFieldName(field); err != nil || field[0] == '_' {
		return fmt.Errorf("field name: field names are [A-Za-z0-9_.-]{1,64} and do not start with _ (that is metadata)")
	}
	if ver < 0 || ver > 999999 {
		return errors.New("--version takes 1 to 999999")
	}
	if len(value) == 0 {
		return errors.New("empty value: give the secret on standard input")
	}
	if len(value) > MaxValue {
		return fmt.Errorf("value longer than %d bytes", MaxValue)
	}
	if !utf8.Valid(value) {
		return errors.New("the value is not UTF-8 text: store binary secrets base64-encoded")
	}
	e := v.Entry(entry)
	if e == nil {
		e = &Entry{Name: entry}
		v.entries = append(v.entries, e)
	}
	f := e.Field(field)
	if ver > 0 && f != nil && f.value != nil {
		return fmt.Errorf("%s/%s holds an unversioned value: unset it first, or set it without --version", entry, field)
	}
	enc, err := secmem.SealValue(value)
	if err != nil {
		return err
	}
	if f == nil {
		f = &Field{Name: field}
		e.fields = append(e.fields, f)
	}
	if ver == 0 {
		f.value, f.versions = enc, nil
	} else {
		f.setVersion(ver, enc)
	}
	return nil
}

// Unset removes a field, or the whole entry when field is empty.
func (v *Vault) Unset(entry, field string) error {
	for i, e := range v.entries {
		if e.Name != entry {
			continue
		}
		if field == "" {
			v.entries = append(v.entries[:i], v.entries[i+1:]...)
			return nil
		}
		for j, f := range e.fields {
			if f.Name == field {
				e.fields = append(e.fields[:j], e.fields[j+1:]...)
				return nil
			}
		}
		return fmt.Errorf("entry %q has no field %q: vault list shows what it holds", entry, field)
	}
	return fmt.Errorf("no entry %q: vault list shows the entries", entry)
}

// Bind sets the entry's targets: its credentials go to those origins only.
func (v *Vault) Bind(entry string, origins []string) error {
	e := v.Entry(entry)
	if e == nil {
		return fmt.Errorf("no entry %q: set a field first (vault set), then bind it", entry)
	}
	if len(origins) == 0 {
		return errors.New("name at least one origin, e.g. https://login.example.com")
	}
	ts := make([]string, 0, len(origins))
	for _, o := range origins {
		if _, err := ParseOrigin(o); err != nil {
			return fmt.Errorf("origin %q: %w", o, err)
		}
		ts = append(ts, o)
	}
	e.Targets = ts
	return nil
}

// Ref is a parsed vault reference.
type Ref struct {
	BusinessID string
	Field      string
	Version    int // 0: the highest
}

func (r Ref) String() string {
	s := "vault://local/" + r.BusinessID + "/" + r.Field
	if r.Version > 0 {
		s += "/v" + strconv.Itoa(r.Version)
	}
	return s
}

// RefError is the one error type ParseRef returns.
type RefError struct{ Reason string }

func (e *RefError) Error() string { return "invalid vault reference: " + e.Reason }

const refPrefix = "vault://local/"

// ParseRef parses vault://local/<business_id>/<field>[/v<N>] exactly:
// no percent-encoding, no dot segments, no other vault, no metadata field.
// Its errors never quote the input (a secret pasted where a reference
// belongs must not be echoed).
func ParseRef(s string) (Ref, error) {
	if !strings.HasPrefix(s, refPrefix) {
		return Ref{}, &RefError{"must start with vault://local/ (a literal secret is never accepted)"}
	}
	parts := strings.Split(s[len(refPrefix):], "/")
	if len(parts) < 2 || len(parts) > 3 {
		return Ref{}, &RefError{"want vault://local/BUSINESS_ID/FIELD or .../FIELD/vN"}
	}
	r := Ref{BusinessID: parts[0], Field: parts[1]}
	if !businessIDRE.MatchString(r.BusinessID) {
		return Ref{}, &RefError{"business ID must match [a-z0-9][a-z0-9._-]{0,63}"}
	}
	if !fieldRE.MatchString(r.Field) || r.Field[0] == '_' || r.Field == "." || r.Field == ".." {
		return Ref{}, &RefError{"field must match [A-Za-z0-9_.-]{1,64} and not start with _"}
	}
	if len(parts) == 3 {
		n, ok := parseVersionKey(parts[2])
		if !ok {
			return Ref{}, &RefError{"version must be v1 to v999999"}
		}
		r.Version = n
	}
	return r, nil
}

// ErrMissing is returned by Resolve when the reference names nothing.
var ErrMissing = errors.New("vault reference does not resolve")

// Resolve returns the referenced value in a locked buffer, which the caller
// destroys. A versioned reference takes exactly that version; without one,
// the highest; a plain value answers any version.
func (v *Vault) Resolve(r Ref) (*memguard.LockedBuffer, error) {
	return v.resolve(r)
}

// AgentSecret returns the highest version of _agent/field (the agent's own
// token or update key), or ErrMissing. References cannot name _agent:
// only the agent itself reads it.
func (v *Vault) AgentSecret(field string) (*memguard.LockedBuffer, error) {
	return v.resolve(Ref{BusinessID: AgentEntry, Field: field})
}

func (v *Vault) resolve(r Ref) (*memguard.LockedBuffer, error) {
	enc, err := v.Sealed(r)
	if err != nil {
		return nil, err
	}
	return enc.Open()
}

// Sealed returns the value r names still sealed, for a caller that opens
// it often (into a secmem.Scratch), or ErrMissing.
func (v *Vault) Sealed(r Ref) (*secmem.Sealed, error) {
	e := v.Entry(r.BusinessID)
	if e == nil {
		return nil, fmt.Errorf("%w: no entry %q", ErrMissing, r.BusinessID)
	}
	f := e.Field(r.Field)
	if f == nil {
		return nil, fmt.Errorf("%w: entry %q has no field %q", ErrMissing, r.BusinessID, r.Field)
	}
	enc := f.value
	if enc == nil {
		if r.Version == 0 {
			enc = f.versions[len(f.versions)-1].value
		} else {
			for _, ver := range f.versions {
				if ver.n == r.Version {
					enc = ver.value
				}
			}
		}
	}
	if enc == nil {
		return nil, fmt.Errorf("%w: %s/%s has no v%d", ErrMissing, r.BusinessID, r.Field, r.Version)
	}
	return enc, nil
}

// Each calls fn with every secret value of the vault (identifier fields
// and the _agent entry included), one at a time, in a locked buffer that is
// destroyed when fn returns. It is how a redactor learns what to scrub.
func (v *Vault) Each(fn func(entry, field string, value []byte) error) error {
	scratch, err := secmem.New(MaxValue)
	if err != nil {
		return err
	}
	defer scratch.Destroy()
	for _, e := range v.entries {
		for _, f := range e.fields {
			for _, enc := range f.sealed() {
				n, err := enc.OpenInto(scratch.Bytes())
				if err != nil {
					return err
				}
				err = fn(e.Name, f.Name, scratch.Bytes()[:n])
				memguard.WipeBytes(scratch.Bytes()[:n])
				if err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// ValueSizes returns the length of every value of a field, without
// decrypting it (for status warnings).
func (f *Field) ValueSizes() []int {
	var ns []int
	for _, e := range f.sealed() {
		ns = append(ns, e.Size())
	}
	return ns
}
