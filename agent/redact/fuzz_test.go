package redact

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"unicode/utf8"
)

// fuzzCache keeps the last Redactor of a fuzzing worker: the fuzzer
// mutates the other arguments more often than the secret, and a new
// Redactor costs locked memory.
var fuzzCache struct {
	sync.Mutex
	secret string
	r      *Redactor
}

func fuzzRedactor(t *testing.T, secret []byte) *Redactor {
	if len(secret) < MinLen || len(secret) > 512 {
		t.Skip()
	}
	fuzzCache.Lock()
	defer fuzzCache.Unlock()
	if fuzzCache.r != nil && fuzzCache.secret == string(secret) {
		return fuzzCache.r
	}
	if fuzzCache.r != nil {
		fuzzCache.r.Destroy()
		fuzzCache.r = nil
	}
	r, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Add(secret); errors.Is(err, ErrLikeMarker) {
		r.Destroy()
		t.Skip()
	} else if err != nil {
		t.Fatal(err)
	}
	fuzzCache.secret, fuzzCache.r = string(secret), r
	return r
}

// FuzzRedactBytes: a form of the secret (chosen by how) put into text at
// a place, the whole possibly base64-encoded, never survives Bytes or
// String.
func FuzzRedactBytes(f *testing.F) {
	f.Add([]byte("correct horse battery staple"), []byte("user:"), uint16(5), uint8(0x80))
	f.Add([]byte("s3cr3t/p@ss+w0rd"), []byte("GET /x?p= HTTP/1.1"), uint16(9), uint8(11))
	f.Add([]byte(`a"b\c<d>e&f`), []byte(`{"k": ""}`), uint16(7), uint8(13))
	f.Add([]byte("é€😀é€😀"), []byte("log line"), uint16(3), uint8(0x91))
	f.Add([]byte("ACTED]tail-of-two"), []byte("[RED"), uint16(4), uint8(0))
	f.Add([]byte("aaaaaaaaaaaaaaaaaaaaa"), bytes.Repeat([]byte("a"), 40), uint16(0), uint8(0))
	f.Add([]byte{0, 0xff, 0xfe, 1, 2, 3, 4, 5, 6}, []byte{0xff, 0xff}, uint16(1), uint8(0xa2))
	f.Fuzz(func(t *testing.T, secret, text []byte, at uint16, how uint8) {
		r := fuzzRedactor(t, secret)
		forms := oracleForms(secret)
		in := insertAt(text, int(at)%(len(text)+1), forms[int(how&0x7f)%len(forms)].b)
		if how&0x80 != 0 {
			in = []byte(encodings()[int(how)%4].enc.EncodeToString(in))
		}
		out := r.Bytes(in)
		if f := leaked(out, secret); f != "" {
			t.Fatalf("output holds the %s form: %q", f, out)
		}
		if s := r.String(string(in)); s != string(out) {
			t.Fatalf("String and Bytes differ: %q, %q", s, out)
		}
		if !bytes.Equal(out, in) && !bytes.Contains(out, marker) {
			t.Fatalf("output changed without a marker: %q", out)
		}
	})
}

// FuzzRedactJSON: valid JSON in gives valid JSON out in which no text and
// no decoded string holds a form of the secret; invalid JSON gives
// ErrInvalidJSON.
func FuzzRedactJSON(f *testing.F) {
	f.Add([]byte("tok_9f8e7d6c5b4a39281706"), []byte(`{"a": "tok_9f8e7d6c5b4a39281706", "b": [1, 2.5e3, null]}`), uint8(0))
	f.Add([]byte("tok/9f8e7d6c5b4a"), []byte(`{"tok\/9f8e7d6c5b4a": "x"}`), uint8(1))
	f.Add([]byte("12345678901234"), []byte(`[12345678901234, "12345678901234"]`), uint8(0))
	f.Add([]byte(`key-part":"value-part`), []byte(`{"a-key-part":"value-part-b"}`), uint8(0))
	f.Add([]byte("p\u00e9ssword-123"), []byte(`["p\u00e9ssword-123", "p\u00E9ssword-123"]`), uint8(1))
	f.Add([]byte("secret-in-base64!"), []byte(`{"body_base64": "eHhzZWNyZXQtaW4tYmFzZTY0IXl5"}`), uint8(2))
	f.Add([]byte("\xed\xa0\x80-surrogate"), []byte(`"\ud800-surrogate \ud83d\ude00"`), uint8(0))
	f.Add([]byte("not-json-secret"), []byte(`{"k": "not-json-secret`), uint8(0))
	f.Fuzz(func(t *testing.T, secret, doc []byte, how uint8) {
		r := fuzzRedactor(t, secret)
		in := doc
		if json.Valid(doc) && how&1 != 0 {
			in = mustJSON(map[string]any{
				"doc":          json.RawMessage(doc),
				string(secret): "k",
				"v":            "x" + string(secret) + "y",
				"b64":          base64.StdEncoding.EncodeToString(append([]byte("ab"), secret...)),
			})
			if how&2 != 0 {
				in = bytes.ReplaceAll(in, []byte("/"), []byte(`\/`))
			}
		}
		out, err := r.JSON(in)
		if !json.Valid(in) {
			if !errors.Is(err, ErrInvalidJSON) {
				t.Fatalf("invalid input: err = %v", err)
			}
			return
		}
		if errors.Is(err, ErrUnredactable) {
			return
		}
		if err != nil {
			t.Fatalf("err = %v", err)
		}
		checkJSONClean(t, out, secret)
		if !bytes.Equal(out, in) && !bytes.Contains(out, marker) {
			t.Fatalf("output changed without a marker: %s", out)
		}
	})
}

// FuzzUnquote holds unquote to encoding/json's decoding of a string.
func FuzzUnquote(f *testing.F) {
	for _, s := range []string{`abc`, `\u00e9\/\"\\\b\f\n\r\t`, `\ud83d\ude00`, `\ud800`, `\ud800\u0041`, `\udc00\ud800`, "\xff\xfe", "\xed\xa0\x80", `\uD83D\uDE00x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, s []byte) {
		lit := append(append([]byte{'"'}, s...), '"')
		if !json.Valid(lit) {
			return
		}
		var want string
		if err := json.Unmarshal(lit, &want); err != nil {
			t.Fatal(err)
		}
		got := Unquote(make([]byte, 0, 3*len(s)), s)
		if string(got) != want {
			t.Fatalf("Unquote(%q) = %q, want %q", s, got, want)
		}
		if cap(got) != 3*len(s) {
			t.Fatalf("unquote reallocated")
		}
	})
}

// FuzzJSONClean: JSONClean says clean exactly when JSON would return the
// document unchanged (on what JSONClean accepts: valid JSON, valid UTF-8,
// the escaped strings named).
func FuzzJSONClean(f *testing.F) {
	f.Add([]byte("correct horse battery staple"), []byte(`{"a":"x","b":[1,2]}`), uint16(0), uint8(0))
	f.Add([]byte("correct horse battery staple"), []byte(`{"a":"correct horse battery staple"}`), uint16(0), uint8(0))
	f.Add([]byte("correct horse battery staple"), []byte(`{"a":"correct horse \u0062attery staple"}`), uint16(0), uint8(0))
	f.Add([]byte("s3cr3t/p@ss+w0rd"), []byte(`{"a":"s3cr3t\/p@ss+w0rd","k":"\n"}`), uint16(0), uint8(0))
	f.Add([]byte("12345678901"), []byte(`{"n":12345678901, "m" : [ 1 ]}`), uint16(0), uint8(0))
	f.Add([]byte(`x", "y-secret`), []byte(`["a", "b"]`), uint16(3), uint8(1))
	f.Fuzz(func(t *testing.T, secret, doc []byte, at uint16, how uint8) {
		r := fuzzRedactor(t, secret)
		if how&1 == 1 && len(doc) > 0 {
			// Put the secret, JSON-escaped or not, inside the document.
			form := secret
			if how&2 == 2 {
				form = jsonEscaped(secret, how&4 == 4)
			}
			doc = insertAt(doc, int(at)%(len(doc)+1), form)
		}
		if !json.Valid(doc) || !utf8.Valid(doc) {
			return
		}
		clean := r.JSONClean(doc, escapedStrings(doc))
		out, err := r.JSON(doc)
		same := err == nil && bytes.Equal(out, doc)
		if clean != same {
			t.Fatalf("JSONClean %t, JSON unchanged %t (%v)", clean, same, err)
		}
	})
}

// escapedStrings returns the offsets, in pairs, of every string literal of
// a valid JSON document that has a backslash.
func escapedStrings(doc []byte) []int {
	var out []int
	for i := 0; i < len(doc); i++ {
		if doc[i] != '"' {
			continue
		}
		start, esc := i, false
		for i++; doc[i] != '"'; i++ {
			if doc[i] == '\\' {
				esc = true
				i++
			}
		}
		if esc {
			out = append(out, start, i+1)
		}
	}
	return out
}
