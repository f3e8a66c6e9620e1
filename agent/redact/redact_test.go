package redact

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
)

func TestForms(t *testing.T) {
	secret := []byte(`s3cr3t/p@ss+w0rd "quoted" <tag> & é€ 😀`)
	r := newRedactor(t, secret)
	b64 := func(e *base64.Encoding) string { return e.EncodeToString(secret) }
	tests := []struct {
		name, form string
	}{
		{"raw", string(secret)},
		{"base64", b64(base64.StdEncoding)},
		{"base64 unpadded", b64(base64.RawStdEncoding)},
		{"base64url", b64(base64.URLEncoding)},
		{"base64url unpadded", b64(base64.RawURLEncoding)},
		{"query escape", url.QueryEscape(string(secret))},
		{"query escape lowercase", strings.ToLower(url.QueryEscape(string(secret)))},
		{"path escape", url.PathEscape(string(secret))},
		{"encodeURIComponent", `s3cr3t%2Fp%40ss%2Bw0rd%20%22quoted%22%20%3Ctag%3E%20%26%20%C3%A9%E2%82%AC%20%F0%9F%98%80`},
		{"json", string(jsonEscaped(secret, true))},
		{"json without html escapes", string(jsonEscaped(secret, false))},
		{"json ascii (python)", `s3cr3t/p@ss+w0rd \"quoted\" <tag> & \u00e9\u20ac \ud83d\ude00`},
		{"json ascii with slashes (php)", `s3cr3t\/p@ss+w0rd \"quoted\" <tag> & \u00e9\u20ac \ud83d\ude00`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := "before " + tt.form + " after"
			if got := r.String(in); got != "before [REDACTED] after" {
				t.Errorf("got %q", got)
			}
			if got := string(r.Bytes([]byte(tt.form))); got != Marker {
				t.Errorf("alone: got %q", got)
			}
		})
	}
}

// TestFormsMatchStdlib holds the form builders to the encoders they copy.
func TestFormsMatchStdlib(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		s := randSecret(rng, 1+rng.IntN(40))
		dst := make([]byte, formSpace(len(s)))
		check := func(name string, m int, want string) {
			t.Helper()
			if got := string(dst[:m]); got != want {
				t.Fatalf("%s of %q: got %q, want %q", name, s, got, want)
			}
		}
		check("query", escapeURL(dst, s, urlQuery, false), url.QueryEscape(string(s)))
		check("path", escapeURL(dst, s, urlPath, false), url.PathEscape(string(s)))
		check("json", escapeJSON(dst, s, jsonGo), string(jsonEscaped(s, true)))
		check("json plain", escapeJSON(dst, s, jsonPlain), string(jsonEscaped(s, false)))
		for _, mode := range []jsonMode{jsonASCII, jsonASCII | jsonSlash} {
			m := escapeJSON(dst, s, mode)
			var back string
			if err := json.Unmarshal([]byte(`"`+string(dst[:m])+`"`), &back); err != nil {
				t.Fatalf("ascii escape of %q does not decode: %v", s, err)
			}
			if want := strings.ToValidUTF8(string(s), "\uFFFD"); back != want && !strings.Contains(back, "\uFFFD") {
				t.Fatalf("ascii escape of %q decodes to %q", s, back)
			}
			for _, c := range dst[:m] {
				if c >= 0x7f || c < 0x20 {
					t.Fatalf("ascii escape of %q holds byte %#x", s, c)
				}
			}
		}
		if len(s) >= MinLen {
			for align := range 3 {
				first, last, _ := base64Stable(len(s), align)
				src := make([]byte, srcSpace(len(s)))
				total := align + len(s)
				total += (3 - total%3) % 3
				copy(src[align:], s)
				base64.StdEncoding.Encode(dst, src[:total])
				check(fmt.Sprintf("base64 inner@%d", align), last-first+first, string(dst[:first])+string(stableInner(base64.StdEncoding, s, align)))
			}
		}
	}
}

func TestBasicAuth(t *testing.T) {
	pw := []byte("correct horse battery staple")
	r := newRedactor(t, pw)
	for _, user := range []string{"", "a", "ab", "abc", "abcd", "svc-rapidvalue", "admin"} {
		cred := base64.StdEncoding.EncodeToString([]byte(user + ":" + string(pw)))
		t.Run(fmt.Sprintf("user=%q", user), func(t *testing.T) {
			line := "request failed: Authorization: Basic " + cred + " (401)"
			got := r.String(line)
			if !strings.HasPrefix(got, "request failed: Authorization: Basic ") || !strings.HasSuffix(got, " (401)") {
				t.Fatalf("text around the credential changed: %q", got)
			}
			if f := leaked([]byte(got), pw); f != "" || !strings.Contains(got, Marker) {
				t.Fatalf("%q: leaked %s", got, f)
			}
			h := http.Header{"Authorization": {"Basic " + cred}, "X-Echo": {"Basic " + cred}}
			out := r.Header(h)
			if _, ok := out["Authorization"]; ok {
				t.Fatal("Authorization kept")
			}
			if f := leaked([]byte(out.Get("X-Echo")), pw); f != "" {
				t.Fatalf("X-Echo leaked %s: %q", f, out.Get("X-Echo"))
			}
		})
	}
}

func TestBase64Body(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	secret := []byte("sk_live_51HcQ2wE7xY9zA1bC3dE5fG7h")
	r := newRedactor(t, secret)
	for i := range 200 {
		body := make([]byte, 10+rng.IntN(300))
		for j := range body {
			body[j] = byte(rng.IntN(256))
		}
		body = insertAt(body, rng.IntN(len(body)), secret)
		for _, e := range encodings() {
			enc := []byte(e.enc.EncodeToString(body))
			doc := mustJSON(map[string]any{"body_base64": string(enc)})
			for _, in := range [][]byte{enc, doc} {
				out := r.Bytes(in)
				if f := leaked(out, secret); f != "" {
					t.Fatalf("%d %s: leaked %s", i, e.name, f)
				}
				if bytes.Equal(out, in) {
					t.Fatalf("%d %s: nothing redacted", i, e.name)
				}
			}
			out, err := r.JSON(doc)
			if err != nil {
				t.Fatal(err)
			}
			checkJSONClean(t, out, secret)
		}
	}
}

func TestOverlappingAndNested(t *testing.T) {
	a := []byte("alpha-bravo-charlie-1234")
	b := []byte("charlie-1234-delta-echo")
	c := []byte("0123456789abcdef")
	d := []byte("456789ab") // inside c
	r := newRedactor(t, a, b, c, d)
	tests := []struct{ in, want string }{
		{"x alpha-bravo-charlie-1234-delta-echo y", "x [REDACTED] y"},
		{"x charlie-1234-delta-echo y", "x [REDACTED] y"},
		{"x 0123456789abcdef y", "x [REDACTED] y"},
		{"x 456789ab y", "x [REDACTED] y"},
		{"x 0123456789ab y", "x 0123[REDACTED] y"},
		{"456789ab456789ab", "[REDACTED]"},
		{"alpha-bravo-charlie-1234alpha-bravo-charlie-1234", "[REDACTED]"},
	}
	for _, tt := range tests {
		if got := r.String(tt.in); got != tt.want {
			t.Errorf("%q: got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMarkerInteraction(t *testing.T) {
	// Redacting one secret next to "ACTED]…" text completes another.
	s1 := []byte("first-secret-value")
	s2 := []byte("ACTED]tail-of-two")
	r := newRedactor(t, s1, s2)
	got := r.String("x first-secret-valuetail-of-two y")
	if strings.Contains(got, string(s2)) || strings.Contains(got, string(s1)) {
		t.Fatalf("got %q", got)
	}
	for _, s := range []string{"[REDACTED]", "[REDACTED", "REDACTED]", "REDACTED"} {
		if err := r.Add([]byte(s)); !errors.Is(err, ErrLikeMarker) {
			t.Errorf("Add(%q): %v", s, err)
		}
	}
}

func TestJSON(t *testing.T) {
	s := "tok_9f8e7d6c5b4a39281706"
	r := newRedactor(t, []byte(s), []byte("12345678901234"), []byte(`a\nb"c/d<e>f`))
	tests := []struct {
		name, in, want string
		err            error
	}{
		{"no secret", `{"b": 1, "a": [true, null, 1.5e3, "x"]}`, `{"b": 1, "a": [true, null, 1.5e3, "x"]}`, nil},
		{"value", `{"k":"` + s + `"}`, `{"k":"[REDACTED]"}`, nil},
		{"inside a value", `{"k":"Bearer ` + s + ` ok"}`, `{"k":"Bearer [REDACTED] ok"}`, nil},
		{"key order kept", `{"z":1,"` + s + `":2,"a":3}`, `{"z":1,"[REDACTED]":2,"a":3}`, nil},
		{"redacted keys stay distinct (a literal [REDACTED] key is not renamed)", `{"` + s + `":1,"x` + s + `":2,"[REDACTED]":3, "o":{"` + s + `":4}}`,
			`{"[REDACTED]":1,"x[REDACTED]#2":2,"[REDACTED]":3, "o":{"[REDACTED]":4}}`, nil},
		{"escaped secret", `["tok_9f8e7d6c5b4a39281706", "tok\u005f9f8e7d6c5b4a39281706", "a\\nb\"c\/d\u003ce>f"]`,
			`["[REDACTED]", "[REDACTED]", "[REDACTED]"]`, nil},
		{"escaped text kept", `["\u00e9\/x", "a\tb"]`, `["\u00e9\/x", "a\tb"]`, nil},
		{"base64 in a string", `{"b":"` + base64.StdEncoding.EncodeToString([]byte("xx"+s)) + `"}`, `{"b":"eH[REDACTED]"}`, nil},
		{"number", `{"n": 12345678901234, "m": 1123456789012345}`, `{"n": "[REDACTED]", "m": "[REDACTED]"}`, nil},
		{"across tokens", `["12345678901234", 12345678901234]`, `["[REDACTED]", "[REDACTED]"]`, nil},
		{"top-level string", `"` + s + `"`, `"[REDACTED]"`, nil},
		{"raw escape form", `{"k": "a\\nb\"c/d<e>f"}`, `{"k": "[REDACTED]"}`, nil},
		{"invalid", `{"k": "` + s, "", ErrInvalidJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.JSON([]byte(tt.in))
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err != nil {
				if strings.Contains(err.Error(), s) {
					t.Fatal("error holds the input")
				}
				return
			}
			if string(got) != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
			if !json.Valid(got) {
				t.Error("output is not valid JSON")
			}
		})
	}
}

func TestJSONSpanningSyntax(t *testing.T) {
	// A secret that runs from a key through ":" into a value.
	s := []byte(`key-part":"value-part`)
	r := newRedactor(t, s)
	out, err := r.JSON([]byte(`{"a-key-part":"value-part-b"}`))
	if err != nil {
		t.Fatal(err)
	}
	checkJSONClean(t, out, s)
	if string(out) != `{"[REDACTED]":"[REDACTED]"}` {
		t.Errorf("got %s", out)
	}
	// A secret made of punctuation alone cannot be removed by replacing
	// tokens.
	p := []byte(`]]]]]]]]`)
	r = newRedactor(t, p)
	if _, err := r.JSON([]byte(`[[[[[[[[[]]]]]]]]]`)); !errors.Is(err, ErrUnredactable) {
		t.Fatalf("err = %v", err)
	}
}

func TestProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	r := newRedactor(t)
	for range 50 { // others, to fill the index
		if err := r.Add(randSecret(rng, 16+rng.IntN(48))); err != nil && !errors.Is(err, ErrLikeMarker) {
			t.Fatal(err)
		}
	}
	for i := range 400 {
		secret := randSecret(rng, MinLen+rng.IntN(56))
		if err := r.Add(secret); err != nil {
			t.Fatal(err)
		}
		forms := oracleForms(secret)
		pick := func() []byte { return forms[rng.IntN(len(forms))].b }

		// Text with forms at random places.
		text := randText(rng, 50+rng.IntN(500))
		for range 1 + rng.IntN(4) {
			text = insertAt(text, rng.IntN(len(text)+1), pick())
		}
		if f := leaked(r.Bytes(text), secret); f != "" {
			t.Fatalf("%d: text leaked %s", i, f)
		}

		// A base64 blob with the secret at a random offset.
		blob := randText(rng, rng.IntN(100))
		blob = insertAt(blob, rng.IntN(len(blob)+1), secret)
		e := encodings()[rng.IntN(4)]
		enc := []byte(e.enc.EncodeToString(blob))
		if f := leaked(r.Bytes(enc), secret); f != "" {
			t.Fatalf("%d: %s blob leaked %s", i, e.name, f)
		}

		// JSON with the secret in keys, values, inside strings, in blobs.
		str := func() string {
			switch rng.IntN(6) {
			case 0:
				return string(secret)
			case 1:
				return "pre " + string(secret) + " post"
			case 2:
				return string(enc)
			case 3:
				return string(pick())
			default:
				return string(randText(rng, rng.IntN(20)))
			}
		}
		var doc []byte
		for {
			doc = mustJSON(randJSON(rng, 0, str))
			if bytes.Contains(doc, secret) || rng.IntN(4) == 0 {
				break
			}
		}
		if rng.IntN(3) == 0 { // another encoder's escapes
			doc = bytes.ReplaceAll(doc, []byte("/"), []byte(`\/`))
		}
		out, err := r.JSON(doc)
		if errors.Is(err, ErrUnredactable) {
			continue
		}
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		checkJSONClean(t, out, secret)
	}
}

func TestNoFalsePositives(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	r := newRedactor(t)
	for range 1000 {
		if err := r.Add(randSecret(rng, 16+rng.IntN(48))); err != nil && !errors.Is(err, ErrLikeMarker) {
			t.Fatal(err)
		}
	}
	var corpus [][]byte
	for range 20 {
		corpus = append(corpus, randText(rng, 64<<10))
		raw := make([]byte, 48<<10)
		for i := range raw {
			raw[i] = byte(rng.IntN(256))
		}
		corpus = append(corpus, raw)
		for _, e := range encodings() {
			corpus = append(corpus, []byte(e.enc.EncodeToString(raw)))
		}
		corpus = append(corpus, []byte(url.QueryEscape(string(raw))))
	}
	total := 0
	for _, c := range corpus {
		total += len(c)
		if out := r.Bytes(c); !bytes.Equal(out, c) {
			t.Fatalf("redacted text that holds no secret")
		}
	}
	for range 200 {
		doc := mustJSON(randJSON(rng, 0, func() string { return string(randText(rng, rng.IntN(40))) }))
		total += len(doc)
		out, err := r.JSON(doc)
		if err != nil || !bytes.Equal(out, doc) {
			t.Fatalf("changed JSON that holds no secret: %v", err)
		}
	}
	t.Logf("%d bytes, %d patterns", total, len(r.patterns))
}

func TestShortAndLong(t *testing.T) {
	r := newRedactor(t)
	for _, s := range []string{"", "a", "1234567"} {
		err := r.Add([]byte(s))
		if !errors.Is(err, ErrTooShort) {
			t.Errorf("Add(%q): %v", s, err)
		}
		if len(s) > 3 && strings.Contains(err.Error(), s) {
			t.Errorf("error holds the secret: %v", err)
		}
	}
	if err := r.Add(make([]byte, MaxLen+1)); !errors.Is(err, ErrTooLong) {
		t.Errorf("long: %v", err)
	}
	long := bytes.Repeat([]byte("0123456789abcdef"), MaxLen/16)
	long[100] = '!'
	if err := r.Add(long); err != nil {
		t.Fatal(err)
	}
	in := append([]byte("x"), long...)
	if got := r.Bytes(in); string(got) != "x"+Marker {
		t.Errorf("longest secret: got %d bytes", len(got))
	}
	if got := string(r.Bytes([]byte("12345678"))); got != "12345678" {
		t.Errorf("MinLen secret matched alone: %q", got)
	}
	if err := r.Add([]byte("12345678")); err != nil {
		t.Fatal(err)
	}
	if got := string(r.Bytes([]byte("a12345678b"))); got != "a[REDACTED]b" {
		t.Errorf("MinLen secret: %q", got)
	}
}

func TestNotPrinted(t *testing.T) {
	secret := "print-me-not-0123456789"
	r := newRedactor(t, []byte(secret))
	forms := []string{secret, base64.StdEncoding.EncodeToString([]byte(secret))[:16], "print-me"}
	out := fmt.Sprintf("%v %+v %#v %s %d %q %x", r, r, r, r, r, r, r) + fmt.Sprint(r) + fmt.Sprintln(r)
	if containsAny(out, forms...) || !strings.Contains(out, "1 secrets") {
		t.Fatalf("printed: %s", out)
	}
	if _, err := json.Marshal(struct{ R *Redactor }{r}); err == nil {
		t.Fatal("a Redactor marshalled")
	}
}

func TestAddDoesNotModify(t *testing.T) {
	s := []byte("caller-keeps-this-value")
	c := bytes.Clone(s)
	newRedactor(t, s)
	if !bytes.Equal(s, c) {
		t.Fatal("Add modified its input")
	}
}

func TestDuplicateAdd(t *testing.T) {
	r := newRedactor(t, []byte("same-secret-twice"), []byte("same-secret-twice"))
	if r.Len() != 1 {
		t.Fatalf("Len = %d", r.Len())
	}
}

func TestDestroyFailsClosed(t *testing.T) {
	r := newRedactor(t, []byte("some-secret-value"))
	r.Destroy()
	r.Destroy()
	if got := r.String("anything"); got != Marker {
		t.Errorf("String after Destroy: %q", got)
	}
	if got := r.String(""); got != "" {
		t.Errorf("String(\"\") after Destroy: %q", got)
	}
	if _, err := r.JSON([]byte(`{}`)); !errors.Is(err, ErrDestroyed) {
		t.Errorf("JSON: %v", err)
	}
	if err := r.Add([]byte("another-secret")); !errors.Is(err, ErrDestroyed) {
		t.Errorf("Add: %v", err)
	}
}

func TestHeader(t *testing.T) {
	tok := "ya29.a0AfH6SMBx-token-value_0123456789"
	r := newRedactor(t, []byte(tok))
	h := http.Header{
		"Authorization":       {"Bearer " + tok},
		"Proxy-Authorization": {"Basic eDp5"},
		"Cookie":              {"sid=1"},
		"Set-Cookie":          {"sid=2"},
		"X-Api-Key":           {"k"},
		"X-Custom-Key":        {"k2"},
		"Location":            {"https://x.test/cb?access_token=" + url.QueryEscape(tok)},
		"X-Echo":              {"a", "got " + tok},
		"Content-Type":        {"application/json"},
	}
	out := r.Header(h, "x-custom-key")
	want := http.Header{
		"Location":     {"https://x.test/cb?access_token=[REDACTED]"},
		"X-Echo":       {"a", "got [REDACTED]"},
		"Content-Type": {"application/json"},
	}
	if fmt.Sprint(out) != fmt.Sprint(want) {
		t.Fatalf("got %v", out)
	}
	if h.Get("Authorization") == "" {
		t.Fatal("Header modified its input")
	}
}

func TestReplaceAttr(t *testing.T) {
	tok := "xoxb-1234567890-abcdefghijkl"
	r := newRedactor(t, []byte(tok), []byte("4111111111111111"))
	for _, mk := range []func(*bytes.Buffer, *slog.HandlerOptions) slog.Handler{
		func(b *bytes.Buffer, o *slog.HandlerOptions) slog.Handler { return slog.NewTextHandler(b, o) },
		func(b *bytes.Buffer, o *slog.HandlerOptions) slog.Handler { return slog.NewJSONHandler(b, o) },
	} {
		var buf bytes.Buffer
		l := slog.New(mk(&buf, &slog.HandlerOptions{ReplaceAttr: r.ReplaceAttr}))
		l.Info("token "+tok+" refused",
			"tok", tok,
			tok, "as a key",
			"err", fmt.Errorf("cannot call: %s", tok),
			"body", []byte(tok),
			"rec", map[string]any{"t": tok, "n": 1},
			"card", int64(4111111111111111),
			slog.Group("g", "inner", "x"+tok),
		)
		out := buf.String()
		if f := leaked(buf.Bytes(), []byte(tok)); f != "" || strings.Contains(out, "4111111111111111") {
			t.Fatalf("log leaked %s: %s", f, out)
		}
		if !strings.Contains(out, Marker) && !strings.Contains(out, base64.StdEncoding.EncodeToString(marker)) {
			t.Fatalf("nothing redacted: %s", out)
		}
	}
}

func TestConcurrentAdd(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	r := newRedactor(t)
	secrets := make([][]byte, 200)
	for i := range secrets {
		secrets[i] = randSecret(rng, 24)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, s := range secrets {
			if err := r.Add(s); err != nil && !errors.Is(err, ErrLikeMarker) {
				t.Error(err)
			}
		}
	}()
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				s := secrets[i%len(secrets)]
				r.Bytes(append([]byte("x "), s...))
				if _, err := r.JSON(mustJSON(map[string]string{"k": string(s)})); err != nil && !errors.Is(err, ErrUnredactable) {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	for _, s := range secrets {
		if f := leaked(r.Bytes(append([]byte("x "), s...)), s); f != "" {
			t.Fatalf("after concurrent adds: leaked %s", f)
		}
	}
}

func TestErrorsHoldNoInput(t *testing.T) {
	secret := []byte("error-text-must-not-hold-this")
	r := newRedactor(t, secret)
	var errs []error
	for _, in := range [][]byte{
		append([]byte(`{"k": "`), secret...),
		append(secret, '}'),
		append([]byte(`[1, `), secret...),
	} {
		_, err := r.JSON(in)
		errs = append(errs, err)
	}
	_, err := New()
	errs = append(errs, err, r.Add(secret[:5]))
	for _, err := range errs {
		if err == nil {
			continue
		}
		for i := 0; i+6 <= len(secret); i++ {
			if strings.Contains(err.Error(), string(secret[i:i+6])) {
				t.Fatalf("error %q holds input", err)
			}
		}
	}
}

// TestEveryOffset puts secrets of every length around the stride boundary
// at every offset of a buffer, raw and base64.
func TestEveryOffset(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	for n := MinLen; n <= 3*stride+window; n++ {
		s := randSecret(rng, n)
		r := newRedactor(t, s)
		for off := range 2*stride + 1 {
			pre := randText(rng, off)
			post := randText(rng, rng.IntN(3))
			in := append(append(bytes.Clone(pre), s...), post...)
			if f := leaked(r.Bytes(in), s); f != "" {
				t.Fatalf("n=%d off=%d: leaked %s", n, off, f)
			}
			enc := []byte(base64.StdEncoding.EncodeToString(in))
			if f := leaked(r.Bytes(enc), s); f != "" {
				t.Fatalf("n=%d off=%d base64: leaked %s", n, off, f)
			}
		}
	}
}

// TestJSONCleanFailsClosed: spans that miss an escaped string, or raw that
// is not UTF-8, make JSONClean answer "not clean", whatever the secret.
func TestJSONCleanFailsClosed(t *testing.T) {
	secret := []byte("correct horse battery staple")
	r := newRedactor(t, secret)
	doc := []byte(`{"a":"x\n","b":"correct horse \u0062attery staple"}`)
	a := bytes.Index(doc, []byte(`"x`))
	b := bytes.Index(doc, []byte(`"correct`))
	aEnd, bEnd := a+len(`"x\n"`), b+len(`"correct horse \u0062attery staple"`)
	if doc[aEnd-1] != '"' || doc[bEnd-1] != '"' {
		t.Fatal("bad offsets in the test")
	}
	if r.JSONClean(doc, []int{a, aEnd, b, bEnd}) {
		t.Fatal("clean with the secret in an escaped string")
	}
	if !r.JSONClean([]byte(`{"a":"x\n","b":"correct horse"}`), []int{a, aEnd}) {
		t.Fatal("a clean document with exact spans is not clean")
	}
	for name, spans := range map[string][]int{
		"none":      nil,
		"one":       {a, aEnd},
		"shifted":   {a + 1, aEnd + 1, b, bEnd},
		"odd":       {a},
		"past end":  {a, aEnd, b, len(doc) + 1},
		"reversed":  {b, bEnd, a, aEnd},
		"not quote": {a - 1, aEnd, b, bEnd},
	} {
		if r.JSONClean(doc, spans) {
			t.Errorf("%s: clean", name)
		}
	}
	if r.JSONClean([]byte("\"\xff\""), nil) {
		t.Error("clean with invalid UTF-8")
	}
}
