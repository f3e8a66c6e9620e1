package redact

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// The benchmarks load 1,000 secrets: 40-character keys in the alphabet of
// AWS secret access keys (letters, digits, "+" and "/"), whose distinct
// forms are raw, three base64 alignments (the URL alphabet gives the same
// characters for ASCII text), and percent- and JSON-escaped variants: about
// 8 patterns a secret (the count is logged with -v).

var bench struct {
	once    sync.Once
	r       *Redactor
	secrets [][]byte
}

func benchRedactor(b *testing.B) (*Redactor, [][]byte) {
	bench.once.Do(func() {
		r, err := New()
		if err != nil {
			b.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(11, 12))
		for range 1000 {
			const abc = alnum + "+/"
			s := make([]byte, 40)
			for i := range s {
				s[i] = abc[rng.IntN(len(abc))]
			}
			if err := r.Add(s); err != nil {
				b.Fatal(err)
			}
			bench.secrets = append(bench.secrets, s)
		}
		bench.r = r
		b.Logf("loaded: %v", r)
	})
	return bench.r, bench.secrets
}

// records returns n Salesforce-style user records; with leak, one in 50
// carries a secret in a field.
func records(n int, leak [][]byte, slashes bool) []any {
	rng := rand.New(rand.NewPCG(13, 14))
	recs := make([]any, n)
	for i := range recs {
		id := fmt.Sprintf("005%015d", rng.Int64N(1e15))
		rec := map[string]any{
			"attributes":    map[string]any{"type": "User", "url": "/services/data/v60.0/sobjects/User/" + id},
			"Id":            id,
			"Username":      fmt.Sprintf("user%d@acme.example.com", i),
			"Email":         fmt.Sprintf("first.last%d@acme.example.com", i),
			"Name":          fmt.Sprintf("Firstname Lastname %d", i),
			"Title":         "Senior Account Executive, EMEA",
			"IsActive":      rng.IntN(2) == 0,
			"LastLoginDate": "2026-11-24T08:00:00.000+0000",
			"ProfileId":     fmt.Sprintf("00e%015d", rng.Int64N(1e15)),
			"Score":         json.Number(fmt.Sprintf("%d.%d", rng.IntN(1000), rng.IntN(100))),
			"Description":   "Owns the enterprise accounts of the northern region; reports to the VP of sales.",
		}
		if leak != nil && i%50 == 0 {
			rec["Description"] = "echo: Bearer " + string(leak[i%len(leak)])
		}
		recs[i] = rec
	}
	return recs
}

func marshalDoc(v any, slashes bool) []byte {
	b := mustJSON(v)
	if slashes {
		b = bytes.ReplaceAll(b, []byte("/"), []byte(`\/`))
	}
	return b
}

// body1MiB is a query response of about 1 MiB.
func body1MiB(leak [][]byte, slashes bool) []byte {
	n := 1
	for {
		doc := marshalDoc(map[string]any{"totalSize": n, "done": true, "records": records(n, leak, slashes)}, slashes)
		if len(doc) >= 1<<20 {
			return doc
		}
		n = n * (1 << 20) / len(doc)
		n++
	}
}

func chunk500(leak [][]byte) []byte {
	return marshalDoc(map[string]any{"seq": 0, "records": records(500, leak, false), "final": false}, false)
}

func benchInputs(b *testing.B) []struct {
	name string
	doc  []byte
} {
	_, secrets := benchRedactor(b)
	return []struct {
		name string
		doc  []byte
	}{
		{"body=1MiB/clean", body1MiB(nil, false)},
		{"body=1MiB/leaks", body1MiB(secrets, false)},
		{"body=1MiB/escaped-slashes", body1MiB(nil, true)},
		{"chunk=500/clean", chunk500(nil)},
		{"chunk=500/leaks", chunk500(secrets)},
	}
}

func BenchmarkBytes(b *testing.B) {
	r, _ := benchRedactor(b)
	for _, in := range benchInputs(b) {
		b.Run(in.name, func(b *testing.B) {
			b.SetBytes(int64(len(in.doc)))
			for b.Loop() {
				r.Bytes(in.doc)
			}
		})
	}
}

func BenchmarkBytesBaselineClone(b *testing.B) {
	for _, in := range benchInputs(b) {
		b.Run(in.name, func(b *testing.B) {
			b.SetBytes(int64(len(in.doc)))
			for b.Loop() {
				_ = bytes.Clone(in.doc)
			}
		})
	}
}

func BenchmarkJSON(b *testing.B) {
	r, _ := benchRedactor(b)
	for _, in := range benchInputs(b) {
		b.Run(in.name, func(b *testing.B) {
			b.SetBytes(int64(len(in.doc)))
			for b.Loop() {
				if _, err := r.JSON(in.doc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkJSONBaselineUnmarshalMarshal(b *testing.B) {
	for _, in := range benchInputs(b) {
		b.Run(in.name, func(b *testing.B) {
			b.SetBytes(int64(len(in.doc)))
			for b.Loop() {
				var v any
				if err := json.Unmarshal(in.doc, &v); err != nil {
					b.Fatal(err)
				}
				if _, err := json.Marshal(v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkJSONBaselineValid(b *testing.B) {
	for _, in := range benchInputs(b) {
		b.Run(in.name, func(b *testing.B) {
			b.SetBytes(int64(len(in.doc)))
			for b.Loop() {
				json.Valid(in.doc)
			}
		})
	}
}

func BenchmarkAdd(b *testing.B) {
	r, err := New()
	if err != nil {
		b.Fatal(err)
	}
	defer r.Destroy()
	s := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCD")
	for i := 0; b.Loop(); i++ {
		s[i%len(s)]++
		if err := r.Add(s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBytesShortSecret: one secret under 15 bytes among the 1,000
// puts a second, every-position scan in front of the strided one.
func BenchmarkBytesShortSecret(b *testing.B) {
	_, secrets := benchRedactor(b)
	r, err := New()
	if err != nil {
		b.Fatal(err)
	}
	defer r.Destroy()
	for _, s := range secrets {
		if err := r.Add(s); err != nil {
			b.Fatal(err)
		}
	}
	if err := r.Add([]byte("short-12-pw!")); err != nil {
		b.Fatal(err)
	}
	doc := body1MiB(nil, false)
	b.SetBytes(int64(len(doc)))
	for b.Loop() {
		r.Bytes(doc)
	}
}
