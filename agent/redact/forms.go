package redact

import (
	"encoding/base64"
	"unicode/utf8"
)

// The forms of a secret that the redactor looks for. Every builder writes
// into a buffer the caller provides (locked memory) and never allocates:
// a form of a secret is as secret as the secret.

// Entry flags.
const (
	// flagBase64 marks the stable part of a base64 encoding: a match is
	// widened over the padding that may follow it.
	flagBase64 uint8 = 1 << iota
	// flagPartialBefore: the base64 character just before the stable part
	// carries bits of the secret (alignment 1 or 2).
	flagPartialBefore
	// flagPartialAfter: so does the character just after it.
	flagPartialAfter
)

// formSpace is how many bytes the forms of an n-byte secret may need: the
// largest form is a JSON escape of control characters (6 bytes each), and
// every form needs room for the MAC's padding after it.
func formSpace(n int) int { return 6*n + macPadMax }

// srcSpace is the scratch the base64 alignments need: the secret with up to
// two bytes before and after it.
func srcSpace(n int) int { return n + 4 }

// eachForm calls emit with every form of secret. Each form is dst[:m];
// dst has room after it for the MAC padding. src (srcSpace) and dst
// (formSpace) are scratch in locked memory; both are wiped by the caller.
// Forms may repeat (a secret of letters and digits has the same raw, URL
// and JSON forms); the index drops duplicates.
func eachForm(secret, src, dst []byte, emit func(p []byte, m int, flags uint8) error) error {
	// Raw.
	m := copy(dst, secret)
	if err := emit(dst, m, 0); err != nil {
		return err
	}

	// base64, standard and URL alphabets. Padded and unpadded encodings
	// share their stable part, so one pattern serves both.
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		for align := 0; align < 3; align++ {
			first, last, flags := base64Stable(len(secret), align)
			total := align + len(secret)
			total += (3 - total%3) % 3
			clear(src[:total])
			copy(src[align:], secret)
			enc.Encode(dst, src[:total])
			if err := emit(dst[first:], last-first, flags); err != nil {
				return err
			}
		}
	}

	// Percent-encodings: Go's QueryEscape (also Python's quote_plus) and
	// PathEscape, an encoder that keeps only the unreserved characters
	// (Python's quote(s, safe="")), and JavaScript's encodeURIComponent;
	// with upper- and lowercase hex digits.
	for _, mode := range []urlMode{urlQuery, urlPath, urlStrict, urlJS} {
		for _, lower := range []bool{false, true} {
			m := escapeURL(dst, secret, mode, lower)
			if err := emit(dst, m, 0); err != nil {
				return err
			}
		}
	}

	// JSON string escapes: Go's encoding/json (HTML-safe), the same
	// without HTML escaping (JavaScript's JSON.stringify), ASCII only
	// (Python's json.dumps), and ASCII only with "\/" (PHP's json_encode).
	for _, mode := range []jsonMode{jsonGo, jsonPlain, jsonASCII, jsonASCII | jsonSlash} {
		m := escapeJSON(dst, secret, mode)
		if err := emit(dst, m, 0); err != nil {
			return err
		}
	}
	return nil
}

// base64Stable says which characters of the base64 encoding of
// (align zero bytes || secret || zero bytes) depend on the secret alone:
// [first, last). A character covers bits [6i, 6i+6) of the stream; the
// secret covers [8*align, 8*(align+n)). Characters that straddle the
// boundary also depend on the neighbouring bytes, so they are not part of
// the pattern; the flags say whether such a character exists on each side,
// so that a match can be widened over it.
func base64Stable(n, align int) (first, last int, flags uint8) {
	lo, hi := 8*align, 8*(align+n)
	first = (lo + 5) / 6
	last = hi / 6
	flags = flagBase64
	if lo%6 != 0 {
		flags |= flagPartialBefore
	}
	if hi%6 != 0 {
		flags |= flagPartialAfter
	}
	return first, last, flags
}

// isBase64Char reports whether c belongs to the standard or the URL
// alphabet.
func isBase64Char(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
		c == '+' || c == '/' || c == '-' || c == '_'
}

type urlMode int

const (
	urlQuery  urlMode = iota // url.QueryEscape: space as '+'
	urlPath                  // url.PathEscape
	urlStrict                // only A-Z a-z 0-9 - _ . ~ kept
	urlJS                    // encodeURIComponent: also ! ' ( ) * kept
)

func keepURL(c byte, mode urlMode) bool {
	if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' {
		return true
	}
	switch c {
	case '-', '_', '.', '~':
		return true
	case '$', '&', '+', ':', '=', '@':
		return mode == urlPath
	case '!', '\'', '(', ')', '*':
		return mode == urlJS
	}
	return false
}

const upperHex, lowerHex = "0123456789ABCDEF", "0123456789abcdef"

// escapeURL writes the percent-encoding of s into dst (at least 3*len(s)
// bytes) and returns its length.
func escapeURL(dst, s []byte, mode urlMode, lower bool) int {
	hex := upperHex
	if lower {
		hex = lowerHex
	}
	j := 0
	for _, c := range s {
		switch {
		case keepURL(c, mode):
			dst[j] = c
			j++
		case c == ' ' && mode == urlQuery:
			dst[j] = '+'
			j++
		default:
			dst[j], dst[j+1], dst[j+2] = '%', hex[c>>4], hex[c&15]
			j += 3
		}
	}
	return j
}

type jsonMode int

const (
	jsonGo    jsonMode = 0         // encoding/json: <, >, & as \u003c…
	jsonPlain jsonMode = 1 << iota // no HTML escaping
	jsonASCII                      // every non-ASCII rune as \uXXXX
	jsonSlash                      // '/' as "\/"
)

// escapeJSON writes the contents of the JSON string literal for s (without
// the quotes) into dst (at least 6*len(s) bytes) and returns its length.
// jsonGo and jsonPlain follow encoding/json exactly, including U+FFFD for
// invalid UTF-8 and the escapes of U+2028 and U+2029.
func escapeJSON(dst, s []byte, mode jsonMode) int {
	j := 0
	put := func(b ...byte) {
		j += copy(dst[j:], b)
	}
	u4 := func(r rune, hex string) {
		put('\\', 'u', hex[r>>12&15], hex[r>>8&15], hex[r>>4&15], hex[r&15])
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			switch {
			case c == '"' || c == '\\':
				put('\\', c)
			case c == '\b':
				put('\\', 'b')
			case c == '\f':
				put('\\', 'f')
			case c == '\n':
				put('\\', 'n')
			case c == '\r':
				put('\\', 'r')
			case c == '\t':
				put('\\', 't')
			case c < 0x20:
				u4(rune(c), lowerHex)
			case c == 0x7f && mode&jsonASCII != 0:
				u4(rune(c), lowerHex)
			case (c == '<' || c == '>' || c == '&') && mode == jsonGo:
				u4(rune(c), lowerHex)
			case c == '/' && mode&jsonSlash != 0:
				put('\\', '/')
			default:
				put(c)
			}
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			u4(utf8.RuneError, lowerHex)
		case mode&jsonASCII != 0 && r > 0xffff:
			r -= 0x10000
			u4(0xd800+(r>>10)&0x3ff, lowerHex)
			u4(0xdc00+r&0x3ff, lowerHex)
		case mode&jsonASCII != 0, r == '\u2028', r == '\u2029':
			u4(r, lowerHex)
		default:
			put(s[i : i+size]...)
		}
		i += size
	}
	return j
}
