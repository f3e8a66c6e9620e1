package agent

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

func mustPointer(t testing.TB, s string) jsonPointer {
	t.Helper()
	p, err := parseJSONPointer(s)
	if err != nil {
		t.Fatalf("parseJSONPointer(%q): %v", s, err)
	}
	return p
}

func TestParseJSONPointer(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []string
		bad  bool
	}{
		{in: "", want: []string{}},
		{in: "/", want: []string{""}},
		{in: "/records", want: []string{"records"}},
		{in: "/a/0/b", want: []string{"a", "0", "b"}},
		{in: "/a~1b/c~0d/~01", want: []string{"a/b", "c~d", "~1"}},
		{in: "records", bad: true},
		{in: "/a~2", bad: true},
		{in: "/a~", bad: true},
		{in: strings.Repeat("/x", 33), bad: true},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseJSONPointer(tt.in)
			if tt.bad {
				if err == nil {
					t.Fatalf("accepted %q", tt.in)
				}
				return
			}
			if err != nil || strings.Join(got, "\x00") != strings.Join(tt.want, "\x00") || len(got) != len(tt.want) {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func collect(t testing.TB, page, items, next string) (records []string, nextURL string, err error) {
	t.Helper()
	var np jsonPointer
	if next != "-" {
		np = mustPointer(t, next)
	}
	nextURL, n, err := readPage(strings.NewReader(page), mustPointer(t, items), np, defaultPageLimits, func(r []byte) error {
		records = append(records, string(r))
		return nil
	})
	if n != int64(len(records)) {
		t.Fatalf("readPage counted %d records, emitted %d", n, len(records))
	}
	return records, nextURL, err
}

func TestReadPage(t *testing.T) {
	for _, tt := range []struct {
		name, page, items, next string
		want                    []string
		wantNext                string
		wantErr                 string
	}{
		{name: "next after items", page: `{"records":[{"a":1},{"b":[2,3]}],"next":"/p2"}`, items: "/records", next: "/next",
			want: []string{`{"a":1}`, `{"b":[2,3]}`}, wantNext: "/p2"},
		{name: "next before items", page: `{"next":"/p2","skip":{"x":[1,{"y":"z"}]},"records":[1,"two",null]}`, items: "/records", next: "/next",
			want: []string{`1`, `"two"`, `null`}, wantNext: "/p2"},
		{name: "nested pointers", page: `{"data":{"page":{"items":[{"id":1}]},"links":[{"self":"a"},{"next":"https://h/x?p=2"}]}}`,
			items: "/data/page/items", next: "/data/links/1/next", want: []string{`{"id":1}`}, wantNext: "https://h/x?p=2"},
		{name: "null next", page: `{"records":[],"next":null}`, items: "/records", next: "/next", want: nil},
		{name: "missing next", page: `{"records":[{}]}`, items: "/records", next: "/next", want: []string{`{}`}},
		{name: "root array", page: ` [ {"a": 1} , {"b" : 2} ] `, items: "", next: "-", want: []string{`{"a": 1}`, `{"b" : 2}`}},
		{name: "escaped key", page: `{"a/b":{"c~d":[true]}}`, items: "/a~1b/c~0d", next: "-", want: []string{`true`}},
		{name: "null items", page: `{"records":null}`, items: "/records", next: "-"},
		{name: "no items", page: `{"other":[]}`, items: "/records", next: "-", wantErr: "no array at the items pointer"},
		{name: "items object", page: `{"records":{}}`, items: "/records", next: "-", wantErr: "names an object"},
		{name: "items scalar", page: `{"records":3}`, items: "/records", next: "-", wantErr: "names a scalar"},
		{name: "duplicate items", page: `{"records":[1],"records":[2]}`, items: "/records", next: "-", want: []string{"1"}, wantErr: "twice"},
		{name: "next not a string", page: `{"records":[],"next":{}}`, items: "/records", next: "/next", wantErr: "not a URL"},
		{name: "truncated", page: `{"records":[{"a":1},{"b"`, items: "/records", next: "-", want: []string{`{"a":1}`}, wantErr: "ends in the middle"},
		{name: "invalid", page: `{"records":[1,]}`, items: "/records", next: "-", want: []string{`1`}, wantErr: "not valid JSON"},
		{name: "trailing", page: `{"records":[]} {}`, items: "/records", next: "-", wantErr: "trailing data"},
		{name: "pointer through scalar", page: `{"a":1}`, items: "/a/b", next: "-", wantErr: "no array"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, next, err := collect(t, tt.page, tt.items, tt.next)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Fatalf("records %q, want %q", got, tt.want)
			}
			if err == nil && next != tt.wantNext {
				t.Fatalf("next %q, want %q", next, tt.wantNext)
			}
		})
	}
}

// TestReadPageLimits: a value over maxValue stops the page before the
// decoder holds it, and so does a page over maxPage.
func TestReadPageLimits(t *testing.T) {
	limits := pageLimits{maxValue: 4 << 10, maxPage: 1 << 20, maxSkipDepth: 8}
	run := func(page string) error {
		_, _, err := readPage(strings.NewReader(page), jsonPointer{"r"}, nil, limits, func([]byte) error { return nil })
		return err
	}
	big := strings.Repeat("x", 64<<10)
	for name, page := range map[string]string{
		"record":         `{"r":["` + big + `"]}`,
		"skipped string": `{"s":"` + big + `","r":[]}`,
		"key":            `{"` + big + `":1,"r":[]}`,
	} {
		if err := run(page); err == nil || !strings.Contains(err.Error(), "over 4096 bytes") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	many := `{"r":[` + strings.Repeat(`"abcdefgh",`, 200<<10) + `1]}`
	if err := run(many); err == nil || !strings.Contains(err.Error(), "page is over") {
		t.Errorf("page: err = %v", err)
	}
	if err := run(`{"s":` + strings.Repeat("[", 9) + strings.Repeat("]", 9) + `,"r":[]}`); err == nil || !strings.Contains(err.Error(), "nests deeper") {
		t.Errorf("depth: err = %v", err)
	}
	if err := run(`{"s":` + strings.Repeat("[", 8) + strings.Repeat("]", 8) + `,"r":[]}`); err != nil {
		t.Errorf("depth 8: %v", err)
	}
}

// TestReadPageStreams reads a 17 MB page with a value limit of 1 KiB: the
// decoder never held more than a record's worth of it.
func TestReadPageStreams(t *testing.T) {
	const n = 100_000
	r := &recordsReader{n: n}
	var seen int
	_, got, err := readPage(r, jsonPointer{"records"}, jsonPointer{"next"}, pageLimits{maxValue: 1 << 10, maxPage: 1 << 30, maxSkipDepth: 8}, func(rec []byte) error {
		want := fmt.Sprintf(`{"id":%d,"pad":"%s"}`, seen, pad)
		if string(rec) != want {
			return fmt.Errorf("record %d = %s", seen, rec)
		}
		seen++
		return nil
	})
	if err != nil || got != n || seen != n {
		t.Fatalf("records %d/%d: %v", got, seen, err)
	}
}

const pad = "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890"

// recordsReader generates {"records":[…]} on the fly.
type recordsReader struct {
	n, i int
	buf  []byte
	done bool
}

func (r *recordsReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		switch {
		case r.done:
			return 0, io.EOF
		case r.i == 0:
			r.buf = append(r.buf, `{"records":[`...)
		case r.i > r.n:
			r.buf = append(r.buf, `],"next":null}`...)
			r.done = true
			continue
		}
		if r.i < r.n {
			if r.i > 0 {
				r.buf = append(r.buf, ',')
			}
			r.buf = append(r.buf, `{"id":`...)
			r.buf = strconv.AppendInt(r.buf, int64(r.i), 10)
			r.buf = append(r.buf, `,"pad":"`+pad+`"}`...)
		}
		r.i++
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func TestReadPageEmitError(t *testing.T) {
	stop := errors.New("stop")
	n := 0
	_, _, err := readPage(strings.NewReader(`{"r":[1,2,3]}`), jsonPointer{"r"}, nil, defaultPageLimits, func([]byte) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if err != stop || n != 2 {
		t.Fatalf("err %v after %d records", err, n)
	}
}

func TestLinkNext(t *testing.T) {
	for _, tt := range []struct {
		in   []string
		want string
	}{
		{[]string{`<https://h/p?page=2>; rel="next"`}, "https://h/p?page=2"},
		{[]string{`<https://h/p?page=1>; rel="prev", <https://h/p?page=3>; rel="next", <https://h/p?page=9>; rel="last"`}, "https://h/p?page=3"},
		{[]string{`<https://h/first>; rel=first`, `</p3>;rel=next`}, "/p3"},
		{[]string{`<https://h/a,b>; title="x, y; z"; rel="last next"`}, "https://h/a,b"},
		{[]string{`<https://h/a>; rel="nextpage"`}, ""},
		{[]string{`garbage`}, ""},
		{nil, ""},
	} {
		if got := linkNext(tt.in); got != tt.want {
			t.Errorf("linkNext(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestAppendCompactJSON(t *testing.T) {
	for _, in := range []string{
		`{"a" : [1, 2 ,{"b":"<x> & y"}], "c":"\u2028 \u2029 \" \\ "}`,
		" \t\n[ \"a b\" , \"\\\"<\" ]\r\n",
		`"` + "\u2028\u2029" + `"`,
	} {
		got := appendCompactJSON(nil, []byte(in))
		want, err := json.Marshal(json.RawMessage(in))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("appendCompactJSON(%q) = %q, want %q", in, got, want)
		}
	}
}

// fuzzSecret is planted in seeds: no error may quote it.
const fuzzSecret = "S3cr3t-page-value-9b1c"

// FuzzSyncPage: streaming extraction of the items on arbitrary JSON never
// panics, never yields more records than the array holds, yields only
// valid JSON, and on a page it accepts yields exactly the array's
// elements (as encoding/json reads them) and its next link.
func FuzzSyncPage(f *testing.F) {
	for _, s := range []string{
		`{"records":[{"a":"` + fuzzSecret + `"}],"next":"/` + fuzzSecret + `"}`,
		`{"records":[{"` + fuzzSecret + `":1},` + fuzzSecret + `]}`,
		`{"` + fuzzSecret + `":[` + fuzzSecret + `]}`,
		`{"records":[{"a":1},{"b":[2,3]}],"next":"/p2"}`,
		`{"next":"/p2","records":[1,"two",null]}`,
		`[{"a":1},[],{}]`,
		`{"data":{"records":[1]},"records":[2]}`,
		`{"records":[1],"records":[2]}`,
		`{"records":[{"x":"\ud800"}], "next":null}`,
		`{"records":[1,]}`,
		`{"records":[[[[[[[[[[[[1]]]]]]]]]]]]}`,
		`{"records":[] } x`,
	} {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(1))
	}
	f.Fuzz(func(t *testing.T, page []byte, which uint8) {
		items, next := fuzzPointers(t, which)
		var got [][]byte
		nextURL, n, err := readPage(bytes.NewReader(page), items, next, pageLimits{maxValue: 64 << 10, maxPage: 1 << 20, maxSkipDepth: 64}, func(r []byte) error {
			if !json.Valid(r) {
				t.Fatalf("record %d is not valid JSON: %q", len(got), r)
			}
			got = append(got, bytes.Clone(r))
			return nil
		})
		if n != int64(len(got)) {
			t.Fatalf("counted %d, emitted %d", n, len(got))
		}
		if err != nil {
			var pe *pageError
			if !errors.As(err, &pe) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			if bytes.Contains(page, []byte(fuzzSecret)) && strings.Contains(err.Error(), fuzzSecret) {
				t.Fatalf("the error quotes the page: %v", err)
			}
		}
		// The reference: the whole page decoded by encoding/json.
		doc, ok := refDecode(page)
		if !ok {
			if err == nil {
				t.Fatalf("accepted a page that encoding/json refuses")
			}
			return
		}
		arr, found := resolve(doc, items)
		if err != nil {
			// With duplicate keys, which array the pointer names is
			// ambiguous (records may come from one that encoding/json
			// overwrites): the count is checked on pages without.
			var de *wire.DecodeError
			if e := wire.Check(page, wire.Limits{MaxBytes: 1 << 30, MaxDepth: 1 << 20}); errors.As(e, &de) && strings.Contains(de.Reason, "duplicate") {
				return
			}
			if len(got) > len(arr) {
				t.Fatalf("%d records from an array of %d", len(got), len(arr))
			}
			return
		}
		if !found {
			t.Fatalf("accepted a page without items (%q)", page)
		}
		if len(got) != len(arr) {
			t.Fatalf("%d records, the array has %d", len(got), len(arr))
		}
		for i := range got {
			v, ok := refDecode(got[i])
			if !ok {
				t.Fatalf("record %d does not decode", i)
			}
			a, _ := json.Marshal(v)
			b, _ := json.Marshal(arr[i])
			if !bytes.Equal(a, b) {
				t.Fatalf("record %d = %s, want %s", i, a, b)
			}
		}
		if next != nil {
			want, _ := resolveValue(doc, next)
			if s, ok := want.(string); ok && s != nextURL || !ok && nextURL != "" {
				t.Fatalf("next %q, want %v", nextURL, want)
			}
		}
	})
}

// refDecode decodes one JSON value the way the page decoder reads it:
// numbers as text, nothing after the value.
func refDecode(b []byte) (any, bool) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if d.Decode(&v) != nil {
		return nil, false
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, false
	}
	return v, true
}

// resolve returns the array at p in doc (nil, true for a null there).
func resolve(doc any, p jsonPointer) ([]any, bool) {
	v, ok := resolveValue(doc, p)
	if !ok {
		return nil, false
	}
	if v == nil {
		return nil, true
	}
	arr, ok := v.([]any)
	return arr, ok
}

func resolveValue(doc any, p jsonPointer) (any, bool) {
	v := doc
	for _, tok := range p {
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[tok]; !ok {
				return nil, false
			}
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(x) || strconv.Itoa(i) != tok {
				return nil, false
			}
			v = x[i]
		default:
			return nil, false
		}
	}
	return v, true
}

// TestReadPageTrickle: a target that sends a byte at a time cannot make
// the scanner rescan a record once per byte (a 768 KiB record would then
// cost some 10^11 byte scans); the buffer grows geometrically.
func TestReadPageTrickle(t *testing.T) {
	rec := `{"s":"` + strings.Repeat("x", 768<<10) + `"}`
	page := `{"records":[` + rec + `,1]}`
	var got []string
	start := time.Now()
	_, n, err := readPage(&oneByteReader{s: page}, jsonPointer{"records"}, nil, defaultPageLimits, func(r []byte) error {
		got = append(got, string(r))
		return nil
	})
	if err != nil || n != 2 || got[0] != rec || got[1] != "1" {
		t.Fatalf("%d records: %v", n, err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("took %v", d)
	}
}

type oneByteReader struct{ s string }

func (r *oneByteReader) Read(p []byte) (int, error) {
	if len(r.s) == 0 {
		return 0, io.EOF
	}
	p[0] = r.s[0]
	r.s = r.s[1:]
	return 1, nil
}

// TestSpecial8 checks the word-at-a-time test against the byte table.
func TestSpecial8(t *testing.T) {
	for c := 0; c < 256; c++ {
		for pos := 0; pos < 8; pos++ {
			for _, fill := range []byte{'a', ' ', '~', '0', 0x7f} {
				var w [8]byte
				for k := range w {
					w[k] = fill
				}
				w[pos] = byte(c)
				first := 8 // the first byte that is not jsonSafe
				for k, x := range w {
					if !jsonSafe[x] {
						first = k
						break
					}
				}
				m := special8(binary.LittleEndian.Uint64(w[:]))
				if got := bits.TrailingZeros64(m) >> 3; got != first {
					t.Fatalf("special8(%q) points at byte %d, want %d", w, got, first)
				}
			}
		}
	}
}

// fuzzPointers picks the items and next pointers of a fuzzed page.
func fuzzPointers(t *testing.T, which uint8) (items, next jsonPointer) {
	pointers := []struct{ items, next string }{
		{"/records", "/next"}, {"", ""}, {"/data/records", "/next"}, {"/records", "/links/0"},
	}
	ps := pointers[int(which)%len(pointers)]
	items = mustPointer(t, ps.items)
	if ps.next != "" {
		next = mustPointer(t, ps.next)
	}
	return items, next
}
