package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// The page decoder as it was before the single-pass scanner (syncpage.go):
// encoding/json's token API, one record at a time. It is the oracle of
// FuzzSyncPageOracle, which holds the scanner to the same records, next
// links and verdicts.

// oraclePageInput is the decoder's reader. It stops the decoder when it holds
// more than maxValue bytes it has not consumed (one value too large: the
// decoder would buffer it whole) or when the page passes maxPage.
type oraclePageInput struct {
	r      io.Reader
	dec    *json.Decoder
	read   int64
	limits pageLimits
	// err remembers why the input stopped, since json.Decoder may wrap or
	// replace a reader's error.
	err error
}

func (in *oraclePageInput) Read(b []byte) (int, error) {
	if in.err != nil {
		return 0, in.err
	}
	// InputOffset is where the value being decoded starts: everything read
	// past it is buffered in the decoder.
	if in.read-in.dec.InputOffset() > in.limits.maxValue {
		in.err = errValueTooLarge
		return 0, in.err
	}
	if in.read >= in.limits.maxPage {
		in.err = errPageTooLarge
		return 0, in.err
	}
	if rest := in.limits.maxPage - in.read; int64(len(b)) > rest {
		b = b[:rest]
	}
	n, err := in.r.Read(b)
	in.read += int64(n)
	return n, err
}

// oraclePageWalker walks one page's JSON down to the items array and the next
// link.
type oraclePageWalker struct {
	dec    *json.Decoder
	in     *oraclePageInput
	items  jsonPointer
	next   jsonPointer // nil: no json_url next link
	emit   func(record []byte) error
	record json.RawMessage // reused for every record

	records   int64
	itemsSeen bool
	nextSeen  bool
	nextURL   string
	path      []string
}

// readPageOracle reads one page from r: every record of the array at items goes
// to emit, in order (emit must not keep the slice); the string at next
// (when next is not nil) is returned as the next link ("" when the page
// has none, or null there). The items array and the next link may come in
// either order. A page without an array at items is an error, a null
// there is a page without records.
//
// Errors are a *pageError, or emit's error unchanged, or the reader's
// error when it failed for another reason than a limit.
func readPageOracle(r io.Reader, items, next jsonPointer, limits pageLimits, emit func([]byte) error) (nextURL string, records int64, err error) {
	in := &oraclePageInput{r: r, limits: limits}
	dec := json.NewDecoder(in)
	// Numbers stay text: a skipped 1e999 is valid JSON, not an overflow.
	dec.UseNumber()
	in.dec = dec
	w := &oraclePageWalker{dec: dec, in: in, items: items, next: next, emit: emit}
	err = w.value(0)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = w.syntax(terr, "trailing data after the page's JSON value")
		}
	}
	if err == nil && !w.itemsSeen {
		err = &pageError{Offset: -1, Reason: "the page has no array at the items pointer"}
	}
	if err != nil {
		return "", w.records, err
	}
	return w.nextURL, w.records, nil
}

// syntax turns a decoder error into a pageError (or the reader's error).
func (w *oraclePageWalker) syntax(err error, reason string) error {
	switch {
	case w.in.err == errValueTooLarge:
		return &pageError{Offset: w.dec.InputOffset(), Reason: "a value of the page (a record, a key, a string) is over " + strconv.FormatInt(w.in.limits.maxValue, 10) + " bytes", TooLarge: true}
	case w.in.err == errPageTooLarge:
		return &pageError{Offset: -1, Reason: "the page is over " + strconv.FormatInt(w.in.limits.maxPage, 10) + " bytes", TooLarge: true}
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		return &pageError{Offset: w.in.read, Reason: "the page ends in the middle of its JSON"}
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return &pageError{Offset: se.Offset, Reason: "the page is not valid JSON"}
	}
	if err != nil && !isDecodeError(err) {
		// The body's reader failed (network): the caller classifies it.
		return err
	}
	return &pageError{Offset: w.dec.InputOffset(), Reason: reason}
}

// isDecodeError reports errors that encoding/json makes about the input
// (their text may quote it).
func isDecodeError(err error) bool {
	var ue *json.UnmarshalTypeError
	var se *json.SyntaxError
	return errors.As(err, &ue) || errors.As(err, &se)
}

// value walks the value at the decoder's position, whose pointer is
// w.path[:depth].
func (w *oraclePageWalker) value(depth int) error {
	path := jsonPointer(w.path[:depth])
	onItems := len(path) == len(w.items) && path.hasPrefix(w.items)
	onNext := w.next != nil && len(path) == len(w.next) && path.hasPrefix(w.next)
	switch {
	case onItems:
		return w.readItems()
	case onNext:
		return w.readNext()
	case !w.items.hasPrefix(path) && (w.next == nil || !w.next.hasPrefix(path)):
		return w.skip()
	}
	// On the way to items or next: descend.
	tok, err := w.dec.Token()
	if err != nil {
		return w.syntax(err, "the page is not valid JSON")
	}
	switch tok {
	case json.Delim('{'):
		// A key on the way to a pointer appears once: with a duplicate,
		// which value the pointer names is ambiguous (encoding/json takes
		// the last, a streaming reader meets the first).
		var seen [2]string
		nseen := 0
		for w.dec.More() {
			kt, err := w.dec.Token()
			if err != nil {
				return w.syntax(err, "the page is not valid JSON")
			}
			key, ok := kt.(string)
			if !ok {
				return w.syntax(nil, "the page is not valid JSON")
			}
			if (len(w.items) > depth && w.items[depth] == key) || (len(w.next) > depth && w.next[depth] == key) {
				for _, k := range seen[:nseen] {
					if k == key {
						return &pageError{Offset: w.dec.InputOffset(), Reason: "the page has a key on the items or next pointer twice"}
					}
				}
				if nseen < len(seen) {
					seen[nseen] = key
					nseen++
				}
			}
			w.push(depth, key)
			if err := w.value(depth + 1); err != nil {
				return err
			}
		}
	case json.Delim('['):
		for i := 0; w.dec.More(); i++ {
			w.push(depth, strconv.Itoa(i))
			if err := w.value(depth + 1); err != nil {
				return err
			}
		}
	default:
		return nil // a scalar: neither pointer resolves through it
	}
	if _, err := w.dec.Token(); err != nil { // the closing delimiter
		return w.syntax(err, "the page is not valid JSON")
	}
	return nil
}

func (w *oraclePageWalker) push(depth int, token string) {
	w.path = append(w.path[:depth], token)
}

func (w *oraclePageWalker) readItems() error {
	if w.itemsSeen {
		return &pageError{Offset: w.dec.InputOffset(), Reason: "the page has the items pointer's value twice (a duplicate key)"}
	}
	w.itemsSeen = true
	tok, err := w.dec.Token()
	if err != nil {
		return w.syntax(err, "the page is not valid JSON")
	}
	switch tok {
	case nil:
		return nil // "records": null, a page without records
	case json.Delim('['):
	default:
		if d, ok := tok.(json.Delim); ok && d == '{' {
			return &pageError{Offset: w.dec.InputOffset(), Reason: "the items pointer names an object, not an array"}
		}
		return &pageError{Offset: w.dec.InputOffset(), Reason: "the items pointer names a scalar, not an array"}
	}
	for w.dec.More() {
		w.record = w.record[:0]
		if err := w.dec.Decode(&w.record); err != nil {
			return w.syntax(err, "a record is not valid JSON")
		}
		w.records++
		if err := w.emit(w.record); err != nil {
			return err
		}
	}
	if _, err := w.dec.Token(); err != nil {
		return w.syntax(err, "the page is not valid JSON")
	}
	return nil
}

func (w *oraclePageWalker) readNext() error {
	if w.nextSeen {
		return &pageError{Offset: w.dec.InputOffset(), Reason: "the page has the next pointer's value twice (a duplicate key)"}
	}
	w.nextSeen = true
	tok, err := w.dec.Token()
	if err != nil {
		return w.syntax(err, "the page is not valid JSON")
	}
	switch v := tok.(type) {
	case nil:
		return nil
	case string:
		w.nextURL = v
		return nil
	case json.Delim:
		return &pageError{Offset: w.dec.InputOffset(), Reason: "the next pointer names an object or array, not a URL"}
	}
	return &pageError{Offset: w.dec.InputOffset(), Reason: "the next pointer names a number or boolean, not a URL"}
}

// skip consumes one value token by token, so that nothing but one token
// (capped by maxValue) is held at once.
func (w *oraclePageWalker) skip() error {
	depth := 0
	for {
		tok, err := w.dec.Token()
		if err != nil {
			return w.syntax(err, "the page is not valid JSON")
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				depth++
				if depth > w.in.limits.maxSkipDepth {
					return &pageError{Offset: w.dec.InputOffset(), Reason: "the page nests deeper than " + strconv.Itoa(w.in.limits.maxSkipDepth) + " levels"}
				}
			default:
				depth--
			}
		}
		if depth == 0 {
			return nil
		}
	}
}

// oracleSecret is a vault value in FuzzSyncPageOracle's redactor; seeds
// plant it, escaped and not.
const oracleSecret = "Oracle-Vault-Secret-7Qx2"

// pageOutcome is what one page decoder made of a page: each record as the
// chunk encoder encodes it (or the error it fails with), the next link,
// and the verdict.
type pageOutcome struct {
	raw     []string
	encoded []string
	next    string
	err     string
}

// FuzzSyncPageOracle holds the single-pass page scanner (readPageRecords,
// with encodeRecord) to the encoding/json decoder it replaced
// (readPageOracle, with encode): on any page, the same records, the same
// bytes (or the same error) for each once encoded for a chunk, the same
// next link and the same verdict (the same reason; offsets may differ).
func FuzzSyncPageOracle(f *testing.F) {
	for _, s := range []string{
		`{"records":[{"a":1},{"b":[2,3]}],"next":"/p2"}`,
		`{"next":"/p2","skip":{"x":[1,{"y":"z"}]},"records":[1,"two",null, -0.5e+7 ,true,false]}`,
		`{"records":[{"a":"` + oracleSecret + `"}],"next":"/` + oracleSecret + `"}`,
		`{"records":[{"` + oracleSecret + `":1,"k":"x` + oracleSecret + `y"}]}`,
		`{"records":[{"e":"Oracle-Vault-\u0053ecret-7Qx2"},{"e":"Oracle\/Vault"}]}`,
		`{"records":[{"a":1},{"n":"\n","e":"Oracle-Vault-\u0053ecret-7Qx2"},{"e":"Oracle\/Vault-Secret-7Qx2"}]}`,
		`{"records":[{"k":"<a> & \u2028 ` + "\u2028\u2029" + `"}, {"u":"\ud83d\ude00 \ud800 \udc00 x"}]}`,
		`{"records":[{"dup":1,"dup":2},{"a":{"a":1,"b":{"a":2,"a":3}}}]}`,
		`{"records":[{"\u0061":1,"a":2},{"\u0061":1}]}`,
		`{"records":[` + strings.Repeat(`[`, 31) + strings.Repeat(`]`, 31) + `,` + strings.Repeat(`[`, 30) + strings.Repeat(`]`, 30) + `]}`,
		"{\"records\":[\"\xff\",\"ok\",{\"\xc3\xa9\":\"\xed\xa0\x80\"}]}",
		`{"records":[1,]}`,
		`{"records":[1 2]}`,
		`{"records":[01]}`,
		`{"records":[1x]}`,
		`{"records":[tru]}`,
		`{"records":[{"a":1},{"b"`,
		`{"records":[] } x`,
		`{"records":[]} {}`,
		`{"records":[]} 1`,
		`{"records":[]} "abc`,
		`[{"a":1},[],{}]`,
		`{"records":null,"next":7}`,
		`{"records":{}}`,
		`{"data":{"records":[1]},"records":[2]}`,
		`{"records":[1],"records":[2]}`,
		"{\"records\":[\t{ \"a\" :\r\n [ 1 , 2 ] } ] }",
	} {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(1))
	}
	a, st := fuzzRunState(f, `{"crm": {"token": "`+oracleSecret+`", "short": "Zq-12345"}}`)
	limits := pageLimits{maxValue: 64 << 10, maxPage: 1 << 20, maxSkipDepth: 64}
	f.Fuzz(func(t *testing.T, page []byte, which uint8) {
		items, next := fuzzPointers(t, which)
		result := func(rec []byte, err error) string {
			if err != nil {
				return "error: " + err.Error()
			}
			return string(rec)
		}
		var want, got pageOutcome
		ws := &recordStream{t: &taskRun{a: a, env: &wire.Envelope{TaskID: "t"}, st: st}}
		nextURL, n, err := readPageOracle(bytes.NewReader(page), items, next, limits, func(raw []byte) error {
			want.raw = append(want.raw, string(raw))
			want.encoded = append(want.encoded, result(ws.encode(raw)))
			ws.added++
			return nil
		})
		want.next, want.err = nextURL, verdict(err)
		if n != int64(len(want.raw)) {
			t.Fatalf("oracle counted %d records, emitted %d", n, len(want.raw))
		}
		// The page read whole (records at any offset of the scanner's
		// buffer), then a few bytes at a time (records and tokens cross
		// the buffer's end, and are scanned again once more has come).
		for _, r := range []io.Reader{bytes.NewReader(page), &trickleReader{b: page, n: 1 + int(which)/4}} {
			got = pageOutcome{}
			gs := &recordStream{t: &taskRun{a: a, env: &wire.Envelope{TaskID: "t"}, st: st}}
			nextURL, n, err = readPageRecords(r, items, next, limits, func(pr *pageRecord) error {
				got.raw = append(got.raw, string(pr.raw))
				got.encoded = append(got.encoded, result(gs.encodeRecord(pr)))
				gs.added++
				return nil
			})
			got.next, got.err = nextURL, verdict(err)
			if n != int64(len(got.raw)) {
				t.Fatalf("scanner counted %d records, emitted %d", n, len(got.raw))
			}
			compareOutcomes(t, got, want, err)
		}
	})
}

func compareOutcomes(t *testing.T, got, want pageOutcome, err error) {
	t.Helper()
	{
		if !slices.Equal(got.raw, want.raw) {
			t.Fatalf("records\n got  %q\n want %q", got.raw, want.raw)
		}
		for i := range want.encoded {
			if got.encoded[i] != want.encoded[i] {
				t.Fatalf("record %d (%q) encodes to\n got  %q\n want %q", i, want.raw[i], got.encoded[i], want.encoded[i])
			}
			if strings.Contains(got.encoded[i], oracleSecret) {
				t.Fatalf("record %d: a vault value reached a chunk", i)
			}
		}
		if got.err != want.err {
			t.Fatalf("verdict\n got  %s\n want %s", got.err, want.err)
		}
		if got.next != want.next {
			t.Fatalf("next %q, want %q", got.next, want.next)
		}
		if err != nil && strings.Contains(err.Error(), oracleSecret) {
			t.Fatalf("the error quotes the page: %v", err)
		}
	}
}

// verdict is an error without its offset.
func verdict(err error) string {
	var pe *pageError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &pe):
		return fmt.Sprintf("pageError{%s, too large %t}", pe.Reason, pe.TooLarge)
	}
	return fmt.Sprintf("%T: %v", err, err)
}

// trickleReader reads b at most n bytes at a time.
type trickleReader struct {
	b []byte
	n int
}

func (r *trickleReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[k:]
	return k, nil
}
