package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// FuzzDecodeChunk holds Decode's fast path for chunks (decodeChunk) to the
// general one (decode: the check, then encoding/json) on any body: the same
// error, or the same Chunk.
func FuzzDecodeChunk(f *testing.F) {
	if b, err := os.ReadFile("testdata/protocol/chunk.json"); err == nil {
		f.Add(b)
	}
	for _, s := range []string{
		`{"seq":0,"records":[{"id":1,"email":"a@example.com"},[1,2],"s",3.5,null,true],"final":false}`,
		`{"seq":7,"records":[],"final":true}`,
		`{ "final" : true , "records" : [ { "a" : 1 } , 2 ] , "seq" : 12 }`,
		`{"seq":null,"records":null,"final":null}`,
		`{"seq":1.5,"records":[]}`,
		`{"seq":1e2,"records":[]}`,
		`{"seq":-0,"records":[]}`,
		`{"seq":99999999999999999999,"records":[]}`,
		`{"seq":"1","records":[]}`,
		`{"seq":1,"records":{}}`,
		`{"seq":1,"records":[],"final":"yes"}`,
		`{"SEQ":1,"Records":[1],"FINAL":true}`,
		`{"seq":1,"SEQ":2}`,
		`{"s\u0065q":3,"records":[1]}`,
		`{"ſeq":3,"records":[1]}`,
		`{"seq":1,"records":[{"a":1,"a":2}]}`,
		`{"seq":1,"records":[1],"other":{"records":[2]},"x":[[1]]}`,
		`[1,2]`,
		`"chunk"`,
		`{"seq":1,"records":[1]} x`,
		`{"seq":1,"records":["\ud800"]}`,
		`{"seq":1,"records":[` + strings.Repeat(`[`, 31) + strings.Repeat(`]`, 31) + `]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		limits := Limits{MaxBytes: 1 << 20}
		if len(data) == 0 || len(data) > limits.MaxBytes || bytes.HasPrefix(data, bom) {
			return // Decode refuses these before either path
		}
		var fast, slow, inPlace Chunk
		ferr := decodeChunk(data, &fast, limits, false)
		serr := decode(data, &slow, limits)
		ierr := DecodeChunkInPlace(slices.Clone(data), &inPlace, limits)
		if (ierr == nil) != (serr == nil) || ierr != nil && ierr.Error() != serr.Error() {
			t.Fatalf("DecodeChunkInPlace: %v, decode: %v", ierr, serr)
		}
		if ierr == nil && (!reflect.DeepEqual(inPlace, slow) || (inPlace.Records == nil) != (slow.Records == nil)) {
			a, _ := json.Marshal(inPlace)
			b, _ := json.Marshal(slow)
			t.Fatalf("DecodeChunkInPlace: %s\ndecode:             %s", a, b)
		}
		if (ferr == nil) != (serr == nil) || ferr != nil && ferr.Error() != serr.Error() {
			t.Fatalf("decodeChunk: %v, decode: %v", ferr, serr)
		}
		if ferr != nil {
			var de *DecodeError
			if !errors.As(ferr, &de) {
				t.Fatalf("error of type %T", ferr)
			}
			return
		}
		if !reflect.DeepEqual(fast, slow) || (fast.Records == nil) != (slow.Records == nil) {
			a, _ := json.Marshal(fast)
			b, _ := json.Marshal(slow)
			t.Fatalf("decodeChunk: %s\ndecode:      %s", a, b)
		}
		// The records are copies: changing data changes none of them.
		for i := range data {
			data[i] = 'x'
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatal("decodeChunk's records alias the body")
		}
	})
}

// TestDecodeChunkRecordsIndependent: appending to one record does not
// overwrite the next (they share one buffer).
func TestDecodeChunkRecordsIndependent(t *testing.T) {
	var c Chunk
	if err := Decode([]byte(`{"seq":0,"records":[1,2,3],"final":true}`), &c, Limits{}); err != nil {
		t.Fatal(err)
	}
	_ = append(c.Records[0], 'x')
	if string(c.Records[1]) != "2" || c.Seq != 0 || !c.Final || len(c.Records) != 3 {
		t.Fatalf("%+v", c)
	}
}

// DecodeChunkInPlace: the records are slices of the body (no copy), and
// appending to one does not overwrite the next.
func TestDecodeChunkInPlace(t *testing.T) {
	body := []byte(`{"seq":4,"records":[{"a":1},2,"x"],"final":false}`)
	var c Chunk
	if err := DecodeChunkInPlace(body, &c, Limits{}); err != nil {
		t.Fatal(err)
	}
	if c.Seq != 4 || c.Final || len(c.Records) != 3 || string(c.Records[0]) != `{"a":1}` {
		t.Fatalf("%+v", c)
	}
	_ = append(c.Records[0], 'x')
	if string(c.Records[1]) != "2" {
		t.Fatalf("an append to record 0 reached record 1: %q", c.Records[1])
	}
	body[bytes.Index(body, []byte(`"x"`))+1] = 'y'
	if string(c.Records[2]) != `"y"` {
		t.Fatalf("record 2 is %q: not a slice of the body", c.Records[2])
	}
	// The same refusals as Decode.
	for _, bad := range []string{``, "\ufeff{}", `{"seq":1,"seq":2}`, `{"seq":1,"records":[{"a":1,"a":2}]}`} {
		if err := DecodeChunkInPlace([]byte(bad), &c, Limits{}); err == nil {
			t.Errorf("DecodeChunkInPlace(%q) accepted it", bad)
		}
	}
}
