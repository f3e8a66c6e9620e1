package vault

import (
	"strconv"
	"unicode/utf8"

	"github.com/awnumar/memguard"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
)

// Marshal writes the vault as JSON into a locked buffer and returns it with
// the length used. Secrets are decrypted one at a time, escaped straight
// into the buffer, and their temporary buffers destroyed.
func (v *Vault) Marshal() (*memguard.LockedBuffer, int, error) {
	size, largest := 16, 1
	for _, e := range v.entries {
		size += 6*len(e.Name) + 16
		for _, f := range e.fields {
			size += 6*len(f.Name) + 16
			for _, n := range f.ValueSizes() {
				size += 6*n + 32
				largest = max(largest, n)
			}
		}
		for _, t := range e.Targets {
			size += 6*len(t) + 8
		}
		for _, m := range e.meta {
			size += 6*len(m.name) + len(m.raw) + 16
		}
	}
	scratch, err := secmem.New(largest)
	if err != nil {
		return nil, 0, err
	}
	defer scratch.Destroy()
	out, err := secmem.New(size)
	if err != nil {
		return nil, 0, err
	}
	w := &jw{b: out.Bytes(), scratch: scratch.Bytes()}
	if err := v.write(w); err != nil {
		out.Destroy()
		return nil, 0, err
	}
	return out, w.n, nil
}

func (v *Vault) write(w *jw) error {
	if len(v.entries) == 0 {
		w.raw("{}\n")
		return nil
	}
	w.raw("{")
	for i, e := range v.entries {
		if i > 0 {
			w.raw(",")
		}
		w.raw("\n  ")
		w.str([]byte(e.Name))
		w.raw(": {")
		first := true
		sep := func() {
			if !first {
				w.raw(",")
			}
			first = false
			w.raw("\n    ")
		}
		for _, f := range e.fields {
			sep()
			w.str([]byte(f.Name))
			w.raw(": ")
			if f.value != nil {
				if err := w.secret(f.value); err != nil {
					return err
				}
				continue
			}
			w.raw("{")
			for j, ver := range f.versions {
				if j > 0 {
					w.raw(",")
				}
				w.raw("\n      ")
				w.str([]byte("v" + strconv.Itoa(ver.n)))
				w.raw(": ")
				if err := w.secret(ver.value); err != nil {
					return err
				}
			}
			w.raw("\n    }")
		}
		if e.Targets != nil {
			sep()
			w.str([]byte(TargetsField))
			w.raw(": [")
			for j, t := range e.Targets {
				if j > 0 {
					w.raw(", ")
				}
				w.str([]byte(t))
			}
			w.raw("]")
		}
		for _, m := range e.meta {
			sep()
			w.str([]byte(m.name))
			w.raw(": ")
			w.raw(m.raw)
		}
		if first {
			w.raw("}")
		} else {
			w.raw("\n  }")
		}
	}
	w.raw("\n}\n")
	return nil
}

// jw writes JSON into a fixed buffer sized by Marshal.
type jw struct {
	b       []byte
	n       int
	scratch []byte // locked; one secret at a time is decrypted here
}

func (w *jw) raw(s string) { w.n += copy(w.b[w.n:], s) }

const hexDigits = "0123456789abcdef"

func (w *jw) str(s []byte) {
	w.b[w.n] = '"'
	w.n++
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			// Values are valid UTF-8 (Parse and Set check); copy the rune.
			_, size := utf8.DecodeRune(s[i:])
			w.n += copy(w.b[w.n:], s[i:i+size])
			i += size
			continue
		}
		switch {
		case c == '"' || c == '\\':
			w.b[w.n], w.b[w.n+1] = '\\', c
			w.n += 2
		case c == '\n':
			w.raw(`\n`)
		case c == '\t':
			w.raw(`\t`)
		case c == '\r':
			w.raw(`\r`)
		case c < 0x20 || c == 0x7f:
			w.b[w.n], w.b[w.n+1], w.b[w.n+2], w.b[w.n+3] = '\\', 'u', '0', '0'
			w.b[w.n+4], w.b[w.n+5] = hexDigits[c>>4], hexDigits[c&0xf]
			w.n += 6
		default:
			w.b[w.n] = c
			w.n++
		}
		i++
	}
	w.b[w.n] = '"'
	w.n++
}

func (w *jw) secret(e *secmem.Sealed) error {
	n, err := e.OpenInto(w.scratch)
	if err != nil {
		return err
	}
	w.str(w.scratch[:n])
	memguard.WipeBytes(w.scratch[:n])
	return nil
}
