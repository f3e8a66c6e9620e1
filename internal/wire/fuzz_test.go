package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// fuzzSecret is planted in seeds so that the fuzzer mutates bodies that
// carry a secret; checkErrorNotSecret checks every 8-byte run of the input.
const fuzzSecret = "S3cr3t-do-not-leak-7f9a"

// FuzzDecode checks, for any input: Decode does not panic; every error is a
// *DecodeError that quotes no input; a body accepted into `any` is valid
// JSON for encoding/json's own checker and an encoding/json token walk, and
// round-trips through json.Marshal; a body accepted into *Envelope
// round-trips too; a body that the reference checker rejects is rejected.
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "protocol", "*.json"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{"task_id":"t","auth":{"credentials":{"token":"` + fuzzSecret + `"}}}`,
		`{"` + fuzzSecret + `":1,"` + fuzzSecret + `":2}`,
		`{"task_id":"a","TASK_ID":"` + fuzzSecret + `"}`,
		`{"a":1,"\u0061":2}`,
		nested(33),
		nestedArrays(40),
		"\xEF\xBB\xBF{}",
		`{"a":"` + fuzzSecret + "\"}\x00garbage",
		`{"a":1} {"b":2}`,
		"{\"a\":\"" + fuzzSecret + "\xff\"}",
		`"\ud800` + fuzzSecret + `"`,
		`{"lease_s":"` + fuzzSecret + `"}`,
		`{"lease_s":1e999}`,
		`[1e999,-0,0.5e-7]`,
		`{"events":[{"type":"agent.registered","at":"` + fuzzSecret + `"}]}`,
		`{"request":{"x":{"y":[1,{"z":"\u00e9"}]}}}`,
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		const maxDepth = 8 // small, so that the fuzzer reaches it
		limits := Limits{MaxBytes: 4096, MaxDepth: maxDepth}

		var v any
		err := Decode(data, &v, limits)
		if err != nil {
			checkErrorNotSecret(t, data, err)
		}
		refErr := referenceCheck(data, limits)
		switch {
		case err == nil && refErr != nil:
			t.Fatalf("Decode accepted a body the reference rejects: %v", refErr)
		case err != nil && refErr == nil:
			// Only two rules are beyond the reference: unpaired surrogate
			// escapes (encoding/json replaces them) and numbers that
			// overflow float64 (valid JSON, not a float64).
			var de *DecodeError
			errors.As(err, &de)
			if de.Reason != reasonSurrogate && !strings.HasPrefix(de.Reason, reasonWrongType) {
				t.Fatalf("Decode rejected a body the reference accepts: %v", err)
			}
		}
		if err == nil {
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("re-encoding an accepted body: %v", err)
			}
			var v2 any
			if err := Decode(b, &v2, Limits{MaxBytes: 1 << 20, MaxDepth: maxDepth}); err != nil {
				t.Fatalf("re-decoding %q: %v", b, err)
			}
			if !reflect.DeepEqual(v, v2) {
				t.Fatalf("round trip changed the value: %#v != %#v", v, v2)
			}
		}

		var env Envelope
		if err := Decode(data, &env, limits); err != nil {
			checkErrorNotSecret(t, data, err)
			return
		}
		b, err := json.Marshal(&env)
		if err != nil {
			t.Fatalf("re-encoding an accepted envelope: %v", err)
		}
		var env2 Envelope
		if err := Decode(b, &env2, Limits{MaxBytes: 1 << 20, MaxDepth: maxDepth}); err != nil {
			t.Fatalf("re-decoding envelope %q: %v", b, err)
		}
		b2, err := json.Marshal(&env2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, b2) {
			t.Fatalf("envelope round trip: %q != %q", b, b2)
		}
	})
}

// referenceCheck applies the rules of Decode with encoding/json's own
// machinery: json.Valid for syntax, utf8.Valid, and a Decoder.Token walk for
// depth and duplicate keys. It is slow and allocates per token; it exists to
// cross-check the scanner.
func referenceCheck(data []byte, limits Limits) error {
	switch {
	case len(data) > limits.maxBytes():
		return errors.New("too large")
	case len(data) == 0:
		return errors.New("empty")
	case bytes.HasPrefix(data, bom):
		return errors.New("bom")
	case !utf8.Valid(data):
		return errors.New("invalid utf-8")
	case !json.Valid(data):
		return errors.New("invalid json")
	}
	type frame struct {
		object    bool
		expectKey bool
		keys      map[string]bool
	}
	var stack []*frame
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].object {
				stack[len(stack)-1].expectKey = true
			}
			continue
		}
		if top != nil && top.object && top.expectKey {
			k := tok.(string)
			if top.keys[k] {
				return errors.New("duplicate key")
			}
			top.keys[k] = true
			top.expectKey = false
			continue
		}
		if d, ok := tok.(json.Delim); ok {
			stack = append(stack, &frame{object: d == '{', expectKey: d == '{', keys: map[string]bool{}})
			if len(stack) > limits.maxDepth() {
				return errors.New("too deep")
			}
			continue
		}
		if top != nil && top.object {
			top.expectKey = true
		}
	}
}

// BenchmarkReferenceCheckChunk is the Decoder.Token approach, for
// comparison with BenchmarkScanChunk.
func BenchmarkReferenceCheckChunk(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"seq":1,"final":false,"records":[`)
	for i := 0; i < 500; i++ {
		if i > 0 {
			sb.WriteString(",")
		}
		sb.WriteString(`{"Id":"005xx000001","Email":"user@example.com","Name":"User \u00e9","Active":true}`)
	}
	sb.WriteString(`]}`)
	data := []byte(sb.String())
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if err := referenceCheck(data, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}
