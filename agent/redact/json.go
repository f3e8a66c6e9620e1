package redact

import (
	"bytes"
	"encoding/json"
	"strconv"
	"sync"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// JSON returns raw with every secret scrubbed from its strings, object keys
// and values alike. The result is valid JSON: raw itself when nothing
// matched, otherwise a copy in which only the strings that held a secret
// changed (key order, numbers, spacing and the other strings' escapes are
// kept byte for byte).
//
// Strings are matched on their decoded text, so an escape (a "\/" or
// "\u0041" inside a secret) hides nothing; the raw text is matched too,
// which catches a secret that runs across tokens: every token it touches
// is replaced. A string that held a secret becomes its redacted text,
// re-encoded; a number, true, false or null that held one becomes the
// string "[REDACTED]". When several keys of one object are redacted, the
// second and later get "#2", "#3"… appended so that keys stay distinct.
//
// Errors: ErrInvalidJSON, ErrUnredactable (a secret made of the document's
// punctuation, which no replacement of a token removes), ErrDestroyed.
// They never contain input.
func (r *Redactor) JSON(raw []byte) ([]byte, error) {
	if !json.Valid(raw) {
		return nil, ErrInvalidJSON
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.destroyed {
		return nil, ErrDestroyed
	}
	var w walker
	defer w.wipe()
	doc := raw
	for range maxPasses {
		out, matched, changed := r.jsonPass(&w, doc)
		if !matched {
			return doc, nil
		}
		if !changed {
			return nil, ErrUnredactable
		}
		doc = out
	}
	return nil, ErrUnredactable
}

// walker holds the buffers of one JSON call.
type walker struct {
	spans  []span // matches in the raw document
	dspans []span // matches in one decoded string
	dec    []byte // one decoded string; wiped after use
	objs   []int  // per open object: how many of its keys were redacted
}

func (w *walker) wipe() { clear(w.dec[:cap(w.dec)]) }

// jsonPass redacts doc once. matched: some secret was found; changed: out
// differs from doc.
func (r *Redactor) jsonPass(w *walker, doc []byte) (out []byte, matched, changed bool) {
	w.spans = r.find(r.keys, doc, w.spans[:0])
	spans := w.spans
	if len(spans) == 0 && bytes.IndexByte(doc, '\\') < 0 && utf8.Valid(doc) {
		// Every string is its own decoded text, and none holds a secret.
		return doc, false, false
	}
	matched = len(spans) > 0
	w.objs = w.objs[:0]
	p := 0    // first span that may touch the current token
	last := 0 // doc[last:] is not yet copied to out
	for i := 0; i < len(doc); {
		var (
			j    int
			repl []byte // nil: keep doc[i:j]
		)
		switch doc[i] {
		case ' ', '\t', '\n', '\r', ',', ':', '[', ']':
			i++
			continue
		case '{':
			w.objs = append(w.objs, 0)
			i++
			continue
		case '}':
			w.objs = w.objs[:len(w.objs)-1]
			i++
			continue
		case '"':
			j = stringEnd(doc, i)
			var found bool
			repl, found = r.jsonString(w, doc, i, j, &p)
			matched = matched || found
			if repl != nil && isKey(doc, j) && len(w.objs) > 0 {
				top := &w.objs[len(w.objs)-1]
				*top++
				if *top > 1 {
					repl = append(repl[:len(repl)-1], '#')
					repl = strconv.AppendInt(repl, int64(*top), 10)
					repl = append(repl, '"')
				}
			}
		default: // number, true, false, null
			j = i + 1
			for j < len(doc) && !isDelim(doc[j]) {
				j++
			}
			if touches(spans, &p, i, j) {
				repl = []byte(`"` + Marker + `"`)
			}
		}
		if repl != nil {
			if out == nil {
				out = make([]byte, 0, len(doc)+len(doc)/8)
			}
			out = append(out, doc[last:i]...)
			out = append(out, repl...)
			last = j
			changed = true
		}
		i = j
	}
	if !changed {
		return doc, matched, false
	}
	return append(out, doc[last:]...), matched, true
}

// jsonString returns the replacement of the string literal doc[i:j]
// (quotes included), or nil to keep it, and whether it held a secret.
func (r *Redactor) jsonString(w *walker, doc []byte, i, j int, p *int) ([]byte, bool) {
	content := doc[i+1 : j-1]
	touched := touches(w.spans, p, i, j)
	if bytes.IndexByte(content, '\\') < 0 && utf8.Valid(content) {
		// The literal is its decoded text: the raw matches are the
		// string's matches.
		if !touched {
			return nil, false
		}
		var inner []span
		for _, s := range w.spans[*p:] {
			if s.start >= j {
				break
			}
			if s.start <= i || s.end >= j {
				// Runs through a quote: the whole string goes.
				return []byte(`"` + Marker + `"`), true
			}
			inner = append(inner, span{s.start - i - 1, s.end - i - 1})
		}
		red, _ := replace(content, inner, nil)
		out := make([]byte, 0, len(red)+2)
		out = append(out, '"')
		out = append(out, red...)
		return append(out, '"'), true
	}

	// Escapes or invalid UTF-8: match the decoded text.
	if need := 3 * len(content); cap(w.dec) < need {
		clear(w.dec[:cap(w.dec)])
		w.dec = make([]byte, 0, need)
	}
	dec := Unquote(w.dec[:0], content)
	defer clear(dec)
	w.dspans = r.find(r.keys, dec, w.dspans[:0])
	if len(w.dspans) > 0 {
		red, _ := replace(dec, w.dspans, nil)
		out := make([]byte, 1, 2+6*len(red))
		out[0] = '"'
		out = out[:1+escapeJSON(out[1:cap(out)], red, jsonPlain)]
		return append(out, '"'), true
	}
	if touched {
		// The escaped text holds a form of a secret that the decoded
		// text does not (a secret that contains a backslash sequence).
		return []byte(`"` + Marker + `"`), true
	}
	return nil, false
}

// touches advances *p past the spans that end before i and reports whether
// a span overlaps [i, j).
func touches(spans []span, p *int, i, j int) bool {
	for *p < len(spans) && spans[*p].end <= i {
		*p++
	}
	return *p < len(spans) && spans[*p].start < j
}

// stringEnd returns the index just after the closing quote of the string
// literal that opens at doc[i] (doc is valid JSON).
func stringEnd(doc []byte, i int) int {
	k := i + 1
	for {
		q := bytes.IndexByte(doc[k:], '"')
		k += q
		// The quote is escaped when an odd number of backslashes precede it.
		n := 0
		for doc[k-1-n] == '\\' {
			n++
		}
		k++
		if n%2 == 0 {
			return k
		}
	}
}

// isKey reports whether the string literal that ends at doc[j-1] is an
// object key.
func isKey(doc []byte, j int) bool {
	for ; j < len(doc); j++ {
		switch doc[j] {
		case ' ', '\t', '\n', '\r':
			continue
		case ':':
			return true
		}
		return false
	}
	return false
}

func isDelim(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', ',', ':', ']', '}':
		return true
	}
	return false
}

// Unquote appends to dst the decoded contents of a JSON string literal
// (without its quotes; the literal is valid), exactly as encoding/json
// decodes it: invalid UTF-8 bytes and unpaired surrogates become U+FFFD.
// dst must have room for 3*len(s) bytes, so that no copy of the decoded
// text is left behind by a reallocation.
func Unquote(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\':
			i++
			switch e := s[i]; e {
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				rr := getu4(s[i+1:])
				i += 4
				if utf16.IsSurrogate(rr) {
					var rr1 rune = -1
					if i+2 < len(s) && s[i+1] == '\\' && s[i+2] == 'u' {
						rr1 = getu4(s[i+3:])
					}
					if d := utf16.DecodeRune(rr, rr1); d != unicode.ReplacementChar {
						dst = utf8.AppendRune(dst, d)
						i += 6
						break
					}
					rr = unicode.ReplacementChar
				}
				dst = utf8.AppendRune(dst, rr)
			default: // '"', '\\', '/'
				dst = append(dst, e)
			}
			i++
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			i++
		default:
			rr, size := utf8.DecodeRune(s[i:])
			if rr == utf8.RuneError && size == 1 {
				dst = utf8.AppendRune(dst, utf8.RuneError)
			} else {
				dst = append(dst, s[i:i+size]...)
			}
			i += size
		}
	}
	return dst
}

// getu4 decodes 4 hex digits at the start of s, or returns -1.
func getu4(s []byte) rune {
	if len(s) < 4 {
		return -1
	}
	var r rune
	for _, c := range s[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

// JSONClean reports whether JSON would return raw as it is because nothing
// in it holds a secret, at a fraction of JSON's cost: it only looks, and
// allocates nothing. raw must be what JSON accepts, and escaped must hold,
// in pairs and in order, the start and end offsets of every string literal
// in raw (quotes included) that has a backslash escape: the caller's
// scanner has just read raw and knows them. False means "not known to be
// clean": call JSON, which redacts or fails. A destroyed Redactor is never
// clean.
//
// It fails closed on a caller's mistake it can see cheaply: raw not valid
// UTF-8, a span that is not a quoted run, a backslash outside the spans.
// It cannot see a span that stops at an escaped quote inside a string: JSON
// validity of raw and the spans' exactness are the caller's to guarantee.
func (r *Redactor) JSONClean(raw []byte, escaped []int) bool {
	if len(escaped)%2 != 0 || !utf8.Valid(raw) {
		return false
	}
	prev := 0
	for k := 0; k < len(escaped); k += 2 {
		start, end := escaped[k], escaped[k+1]
		if start < prev || end-start < 2 || end > len(raw) || raw[start] != '"' || raw[end-1] != '"' ||
			bytes.IndexByte(raw[prev:start], '\\') >= 0 {
			return false
		}
		prev = end
	}
	if bytes.IndexByte(raw[prev:], '\\') >= 0 {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.destroyed {
		return false
	}
	// With every string valid UTF-8, JSON's first pass changes a string
	// only when the raw text or a decoded escaped string holds a secret;
	// it changes nothing else when the raw text holds none.
	if r.contains(r.keys, raw) {
		return false
	}
	if len(escaped) == 0 {
		return true
	}
	bp := decPool.Get().(*[]byte)
	defer func() {
		clear((*bp)[:cap(*bp)])
		if cap(*bp) <= 64<<10 {
			decPool.Put(bp)
		}
	}()
	for k := 0; k+1 < len(escaped); k += 2 {
		content := raw[escaped[k]+1 : escaped[k+1]-1]
		if need := 3 * len(content); cap(*bp) < need {
			clear((*bp)[:cap(*bp)])
			*bp = make([]byte, 0, need)
		}
		dec := Unquote((*bp)[:0], content)
		found := r.contains(r.keys, dec)
		clear(dec)
		if found {
			return false
		}
	}
	return true
}

// decPool holds the buffers JSONClean decodes escaped strings into; they
// are wiped before they go back.
var decPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}
