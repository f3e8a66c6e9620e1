package redact

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
)

// The oracle: the forms of a secret, computed with the standard library
// (and, for the base64 alignments, by comparing encodings with different
// neighbours) rather than with the code under test.

type form struct {
	name string
	b    []byte
}

func encodings() []struct {
	name string
	enc  *base64.Encoding
} {
	return []struct {
		name string
		enc  *base64.Encoding
	}{
		{"base64", base64.StdEncoding},
		{"base64 unpadded", base64.RawStdEncoding},
		{"base64url", base64.URLEncoding},
		{"base64url unpadded", base64.RawURLEncoding},
	}
}

func jsonEscaped(s []byte, html bool) []byte {
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(html)
	if err := e.Encode(string(s)); err != nil {
		panic(err)
	}
	out := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
	return out[1 : len(out)-1]
}

// stableInner returns, for each alignment of secret inside a base64 stream,
// the longest run of characters that do not change when the neighbouring
// bytes do.
func stableInner(enc *base64.Encoding, secret []byte, align int) []byte {
	build := func(fill byte) string {
		b := bytes.Repeat([]byte{fill}, align)
		b = append(b, secret...)
		b = append(b, fill, fill, fill)
		return enc.EncodeToString(b)
	}
	a, z := build(0x00), build(0xff)
	best, cur := "", 0
	for i := 0; i <= len(a); i++ {
		if i < len(a) && a[i] == z[i] {
			cur++
			continue
		}
		if cur > len(best) {
			best = a[i-cur : i]
		}
		cur = 0
	}
	return []byte(best)
}

func oracleForms(secret []byte) []form {
	fs := []form{{"raw", secret}}
	for _, e := range encodings() {
		fs = append(fs, form{e.name, []byte(e.enc.EncodeToString(secret))})
	}
	for _, e := range encodings()[:3:3] {
		if e.name == "base64 unpadded" {
			continue
		}
		for align := range 3 {
			fs = append(fs, form{fmt.Sprintf("%s inner@%d", e.name, align), stableInner(e.enc, secret, align)})
		}
	}
	fs = append(fs,
		form{"query", []byte(url.QueryEscape(string(secret)))},
		form{"path", []byte(url.PathEscape(string(secret)))},
		form{"json", jsonEscaped(secret, true)},
		form{"json no html", jsonEscaped(secret, false)},
	)
	return fs
}

// leaked returns the name of a form of secret that out holds, or "".
func leaked(out, secret []byte) string {
	for _, f := range oracleForms(secret) {
		if len(f.b) > 0 && bytes.Contains(out, f.b) {
			return f.name
		}
	}
	return ""
}

// jsonStrings calls fn with every decoded string (keys too) of doc.
func jsonStrings(t testing.TB, doc []byte, fn func(string)) {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(doc))
	d.UseNumber()
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("output does not decode: %v", err)
		}
		if s, ok := tok.(string); ok {
			fn(s)
		}
	}
}

// checkJSONClean fails unless out is valid JSON in which neither the text
// nor any decoded string holds a form of secret.
func checkJSONClean(t testing.TB, out, secret []byte) {
	t.Helper()
	if !json.Valid(out) {
		t.Fatalf("output is not valid JSON: %q", out)
	}
	if f := leaked(out, secret); f != "" {
		t.Fatalf("output holds the %s form: %q", f, out)
	}
	jsonStrings(t, out, func(s string) {
		if f := leaked([]byte(s), secret); f != "" {
			t.Fatalf("a decoded string holds the %s form: %q", f, s)
		}
	})
}

func newRedactor(t testing.TB, secrets ...[]byte) *Redactor {
	t.Helper()
	r, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Destroy)
	for _, s := range secrets {
		if err := r.Add(s); err != nil {
			t.Fatalf("Add: %v", err)
		}
	}
	return r
}

const (
	alnum     = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	printable = alnum + " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
)

// randSecret returns a random secret of n bytes in one of several styles.
func randSecret(rng *rand.Rand, n int) []byte {
	var b []byte
	switch rng.IntN(5) {
	case 0, 1:
		for range n {
			b = append(b, alnum[rng.IntN(len(alnum))])
		}
	case 2:
		for range n {
			b = append(b, printable[rng.IntN(len(printable))])
		}
	case 3:
		runes := []rune("aé€😀/\"\\<>&\n\t\u2028 %+=")
		for len(b) < n {
			if rng.IntN(2) == 0 {
				b = append(b, alnum[rng.IntN(len(alnum))])
			} else {
				b = append(b, string(runes[rng.IntN(len(runes))])...)
			}
		}
	default:
		b = make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
	}
	return b
}

func randText(rng *rand.Rand, n int) []byte {
	const words = "the quick brown fox jumps over a lazy dog ID=42 user@example.com https://x.test/a?b=c {\"k\": [1, 2]} \n\t"
	b := make([]byte, n)
	for i := range b {
		b[i] = words[rng.IntN(len(words))]
	}
	return b
}

func insertAt(b []byte, at int, x []byte) []byte {
	out := make([]byte, 0, len(b)+len(x))
	out = append(out, b[:at]...)
	out = append(out, x...)
	return append(out, b[at:]...)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// randJSON returns a random JSON value; leaf strings come from str.
func randJSON(rng *rand.Rand, depth int, str func() string) any {
	switch k := rng.IntN(6); {
	case depth > 3 || k == 0:
		return str()
	case k == 1:
		return json.Number(fmt.Sprint(rng.Int64N(1e12)))
	case k == 2:
		var a []any
		for range rng.IntN(4) {
			a = append(a, randJSON(rng, depth+1, str))
		}
		return a
	case k == 3:
		return rng.IntN(2) == 0
	default:
		m := map[string]any{}
		for range rng.IntN(4) {
			m[str()] = randJSON(rng, depth+1, str)
		}
		return m
	}
}

func containsAny(s string, subs ...string) bool {
	for _, x := range subs {
		if strings.Contains(s, x) {
			return true
		}
	}
	return false
}
