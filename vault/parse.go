package vault

import (
	"fmt"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/awnumar/memguard"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
)

// Limits on what Parse accepts. A vault is a few kilobytes in practice; the
// caps stop a hostile or corrupt file from costing memory or time.
const (
	MaxSize     = 16 << 20 // bytes of JSON
	MaxValue    = 64 << 10 // bytes of one secret value
	MaxEntries  = 100_000
	MaxFields   = 1_000 // per entry
	MaxVersions = 1_000 // per field
	MaxDepth    = 32    // nesting of metadata values
)

// ParseError is the one error type Parse returns. It names where the problem
// is (line, column, entry, field) and never quotes a value.
type ParseError struct {
	Line, Column int
	Entry, Field string // empty when not known yet
	Reason       string
}

func (e *ParseError) Error() string {
	s := fmt.Sprintf("vault JSON, line %d column %d", e.Line, e.Column)
	if e.Entry != "" {
		s += fmt.Sprintf(", entry %q", e.Entry)
	}
	if e.Field != "" {
		s += fmt.Sprintf(", field %q", e.Field)
	}
	return s + ": " + e.Reason
}

type parser struct {
	data  []byte
	pos   int
	entry string
	field string
	// scratch is locked memory that secret values are unescaped into
	// before they are sealed (secmem.Sealed).
	scratch []byte
}

func (p *parser) fail(format string, args ...any) error {
	line, col := 1, 1
	for _, c := range p.data[:min(p.pos, len(p.data))] {
		if c == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	return &ParseError{Line: line, Column: col, Entry: p.entry, Field: p.field, Reason: fmt.Sprintf(format, args...)}
}

// Parse reads a vault in the documented JSON schema and its extensions. It
// is strict: duplicate keys, names outside the grammar, secrets that are not
// non-empty strings, a byte-order mark, trailing bytes, invalid UTF-8 or
// lone surrogates, over-deep or over-large input are each an error. Secret
// values are unescaped in locked memory and kept sealed; data itself is
// not retained (the caller wipes it).
func Parse(data []byte) (*Vault, error) {
	p := &parser{data: data}
	if len(data) > MaxSize {
		return nil, p.fail("larger than %d bytes", MaxSize)
	}
	if len(data) >= 3 && data[0] == 0xEF && data[1] == 0xBB && data[2] == 0xBF {
		return nil, p.fail("starts with a byte-order mark: save the file as UTF-8 without BOM")
	}
	scratch, err := secmem.New(min(len(data), MaxValue) + 1)
	if err != nil {
		return nil, err
	}
	defer scratch.Destroy()
	p.scratch = scratch.Bytes()

	v := &Vault{}
	p.ws()
	if !p.consume('{') {
		return nil, p.fail("expected a JSON object of entries")
	}
	seen := map[string]bool{}
	err = p.members(func(name string) error {
		if seen[name] {
			return p.fail("duplicate entry %q", name)
		}
		seen[name] = true
		if err := checkBusinessID(name); err != nil {
			return p.fail("%v", err)
		}
		if len(v.entries) >= MaxEntries {
			return p.fail("more than %d entries", MaxEntries)
		}
		p.entry = name
		e, err := p.entryValue(name)
		p.entry = ""
		if err != nil {
			return err
		}
		v.entries = append(v.entries, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.pos != len(p.data) {
		return nil, p.fail("trailing bytes after the JSON object")
	}
	return v, nil
}

func (p *parser) ws() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) consume(c byte) bool {
	p.ws()
	if p.pos < len(p.data) && p.data[p.pos] == c {
		p.pos++
		return true
	}
	return false
}

// members parses `"key": value, ...}` after an opening brace, calling f with
// each key with the position at its value.
func (p *parser) members(f func(key string) error) error {
	if p.consume('}') {
		return nil
	}
	for {
		p.ws()
		key, err := p.key()
		if err != nil {
			return err
		}
		// Until the ':' is seen this may be a value a key was forgotten
		// for: it is not quoted in errors before then.
		if !p.consume(':') {
			return p.fail("expected ':' after a key")
		}
		p.ws()
		if err := f(key); err != nil {
			return err
		}
		if p.consume(',') {
			continue
		}
		if p.consume('}') {
			return nil
		}
		return p.fail("expected ',' or '}'")
	}
}

// key reads an object key. Keys are names, never secrets, so they may be
// Go strings and may appear in errors once they parsed.
func (p *parser) key() (string, error) {
	if p.pos >= len(p.data) || p.data[p.pos] != '"' {
		return "", p.fail("expected a quoted key")
	}
	n, err := p.str(p.scratch)
	if err != nil {
		return "", err
	}
	k := string(p.scratch[:n])
	memguard.WipeBytes(p.scratch[:n])
	return k, nil
}

func (p *parser) entryValue(name string) (*Entry, error) {
	if !p.consume('{') {
		return nil, p.fail("an entry must be an object of fields")
	}
	e := &Entry{Name: name}
	seen := map[string]bool{}
	err := p.members(func(field string) error {
		if seen[field] {
			return p.fail("duplicate field %q", field)
		}
		seen[field] = true
		if err := checkFieldName(field); err != nil {
			return p.fail("%v", err)
		}
		if len(seen) > MaxFields {
			return p.fail("more than %d fields", MaxFields)
		}
		p.field = field
		defer func() { p.field = "" }()
		switch {
		case field == TargetsField:
			t, err := p.targets()
			if err != nil {
				return err
			}
			e.Targets = t
		case field[0] == '_':
			start := p.pos
			if err := p.skipValue(1); err != nil {
				return err
			}
			e.meta = append(e.meta, meta{name: field, raw: string(p.data[start:p.pos])})
		default:
			f, err := p.secretField(field)
			if err != nil {
				return err
			}
			e.fields = append(e.fields, f)
		}
		return nil
	})
	return e, err
}

func (p *parser) secretField(name string) (*Field, error) {
	if p.pos < len(p.data) && p.data[p.pos] == '{' {
		p.pos++
		f := &Field{Name: name}
		seen := map[int]bool{}
		err := p.members(func(key string) error {
			n, ok := parseVersionKey(key)
			if !ok {
				return p.fail("version key %q must be v1 to v999999", key)
			}
			if seen[n] {
				return p.fail("duplicate version %q", key)
			}
			seen[n] = true
			if len(seen) > MaxVersions {
				return p.fail("more than %d versions", MaxVersions)
			}
			enc, err := p.secretString()
			if err != nil {
				return err
			}
			f.setVersion(n, enc)
			return nil
		})
		if err != nil {
			return nil, err
		}
		if len(f.versions) == 0 {
			return nil, p.fail("a versioned secret needs at least one version")
		}
		return f, nil
	}
	enc, err := p.secretString()
	if err != nil {
		return nil, err
	}
	return &Field{Name: name, value: enc}, nil
}

// secretString reads a string value into locked memory and seals it.
func (p *parser) secretString() (*secmem.Sealed, error) {
	if p.pos >= len(p.data) || p.data[p.pos] != '"' {
		return nil, p.fail("a secret must be a string (got %s)", p.kindAt())
	}
	n, err := p.str(p.scratch)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, p.fail("empty value: remove the field or give it a value")
	}
	return secmem.SealValue(p.scratch[:n])
}

func (p *parser) kindAt() string {
	if p.pos >= len(p.data) {
		return "end of input"
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || (c >= '0' && c <= '9'):
		return "a number"
	}
	return "an invalid token"
}

func (p *parser) targets() ([]string, error) {
	if !p.consume('[') {
		return nil, p.fail("_targets must be an array of origins")
	}
	ts := []string{}
	if p.consume(']') {
		return ts, nil
	}
	for {
		p.ws()
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return nil, p.fail("_targets holds origins as strings")
		}
		n, err := p.str(p.scratch)
		if err != nil {
			return nil, err
		}
		t := string(p.scratch[:n])
		if _, err := ParseOrigin(t); err != nil {
			return nil, p.fail("target #%d: %v", len(ts)+1, err)
		}
		if len(ts) >= MaxFields {
			return nil, p.fail("more than %d targets", MaxFields)
		}
		ts = append(ts, t)
		if p.consume(',') {
			continue
		}
		if p.consume(']') {
			return ts, nil
		}
		return nil, p.fail("expected ',' or ']'")
	}
}

// skipValue validates any JSON value (for metadata kept as raw JSON).
func (p *parser) skipValue(depth int) error {
	if depth > MaxDepth {
		return p.fail("nested deeper than %d", MaxDepth)
	}
	p.ws()
	if p.pos >= len(p.data) {
		return p.fail("unexpected end of input")
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		p.pos++
		seen := map[string]bool{}
		return p.members(func(k string) error {
			if seen[k] {
				return p.fail("duplicate key %q", k)
			}
			seen[k] = true
			return p.skipValue(depth + 1)
		})
	case c == '[':
		p.pos++
		if p.consume(']') {
			return nil
		}
		for {
			if err := p.skipValue(depth + 1); err != nil {
				return err
			}
			if p.consume(',') {
				continue
			}
			if p.consume(']') {
				return nil
			}
			return p.fail("expected ',' or ']'")
		}
	case c == '"':
		// Metadata is not secret, but unescape into scratch all the same.
		n, err := p.str(p.scratch)
		memguard.WipeBytes(p.scratch[:max(n, 0)])
		return err
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	}
	return p.fail("invalid JSON value")
}

func (p *parser) literal(s string) error {
	if len(p.data)-p.pos >= len(s) && string(p.data[p.pos:p.pos+len(s)]) == s {
		p.pos += len(s)
		return nil
	}
	return p.fail("invalid JSON literal")
}

func (p *parser) number() error {
	d := p.data
	i := p.pos
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		return p.fail("invalid number")
	}
	if i < len(d) && d[i] == '.' {
		i++
		j := i
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
		if i == j {
			return p.fail("invalid number")
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		j := i
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
		if i == j {
			return p.fail("invalid number")
		}
	}
	p.pos = i
	return nil
}

// str unescapes the JSON string at p.pos into dst and returns its length.
// It refuses control characters, invalid UTF-8, lone surrogates and strings
// longer than dst.
func (p *parser) str(dst []byte) (int, error) {
	d := p.data
	p.pos++ // opening quote
	n := 0
	put := func(b ...byte) error {
		if n+len(b) > len(dst) || n+len(b) > MaxValue {
			return p.fail("string longer than %d bytes", MaxValue)
		}
		n += copy(dst[n:], b)
		return nil
	}
	for {
		if p.pos >= len(d) {
			memguard.WipeBytes(dst[:n])
			return 0, p.fail("unterminated string")
		}
		c := d[p.pos]
		switch {
		case c == '"':
			p.pos++
			return n, nil
		case c < 0x20:
			memguard.WipeBytes(dst[:n])
			return 0, p.fail("control character in a string: escape it")
		case c == '\\':
			r, err := p.escape()
			if err != nil {
				memguard.WipeBytes(dst[:n])
				return 0, err
			}
			var buf [4]byte
			if err := put(buf[:utf8.EncodeRune(buf[:], r)]...); err != nil {
				memguard.WipeBytes(dst[:n])
				return 0, err
			}
			memguard.WipeBytes(buf[:])
		case c < utf8.RuneSelf:
			if err := put(c); err != nil {
				memguard.WipeBytes(dst[:n])
				return 0, err
			}
			p.pos++
		default:
			r, size := utf8.DecodeRune(d[p.pos:])
			if r == utf8.RuneError && size <= 1 {
				memguard.WipeBytes(dst[:n])
				return 0, p.fail("invalid UTF-8 in a string")
			}
			if err := put(d[p.pos : p.pos+size]...); err != nil {
				memguard.WipeBytes(dst[:n])
				return 0, err
			}
			p.pos += size
		}
	}
}

func (p *parser) escape() (rune, error) {
	d := p.data
	if p.pos+1 >= len(d) {
		return 0, p.fail("unterminated escape")
	}
	c := d[p.pos+1]
	p.pos += 2
	switch c {
	case '"', '\\', '/':
		return rune(c), nil
	case 'b':
		return '\b', nil
	case 'f':
		return '\f', nil
	case 'n':
		return '\n', nil
	case 'r':
		return '\r', nil
	case 't':
		return '\t', nil
	case 'u':
		r1, ok := p.hex4()
		if !ok {
			return 0, p.fail("invalid \\u escape")
		}
		if !utf16.IsSurrogate(r1) {
			return r1, nil
		}
		if r1 >= 0xDC00 || p.pos+1 >= len(d) || d[p.pos] != '\\' || d[p.pos+1] != 'u' {
			return 0, p.fail("lone surrogate in a \\u escape")
		}
		p.pos += 2
		r2, ok := p.hex4()
		if !ok {
			return 0, p.fail("invalid \\u escape")
		}
		r := utf16.DecodeRune(r1, r2)
		if r == utf8.RuneError {
			return 0, p.fail("lone surrogate in a \\u escape")
		}
		return r, nil
	}
	return 0, p.fail("invalid escape")
}

func (p *parser) hex4() (rune, bool) {
	if p.pos+4 > len(p.data) {
		return 0, false
	}
	var r rune
	for _, c := range p.data[p.pos : p.pos+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	p.pos += 4
	return r, true
}
