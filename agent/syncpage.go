package agent

import (
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
)

// The page decoder of http.sync: it streams the records of one page out of
// its JSON with encoding/json's token API, so that a page of any size is
// read with the memory of its largest record, never of the page.
//
// It is a pure function of an io.Reader (readPage), fuzzed by
// FuzzSyncPage; its errors (*pageError) never contain input bytes.

// jsonPointer is a parsed RFC 6901 JSON pointer: its reference tokens,
// unescaped. The empty pointer (no tokens) is the whole document.
type jsonPointer []string

// maxPointerTokens caps a pointer's depth (the decoder recurses once per
// token while it walks down to the items and next values).
const maxPointerTokens = 32

func parseJSONPointer(s string) (jsonPointer, error) {
	if s == "" {
		return jsonPointer{}, nil
	}
	if s[0] != '/' {
		return nil, errors.New("a JSON pointer is empty or starts with /")
	}
	parts := strings.Split(s[1:], "/")
	if len(parts) > maxPointerTokens {
		return nil, errors.New("a JSON pointer has at most 32 reference tokens")
	}
	p := make(jsonPointer, len(parts))
	for i, part := range parts {
		// "~" must be followed by 0 or 1 (RFC 6901 §3); ~1 before ~0.
		for j := 0; j < len(part); j++ {
			if part[j] == '~' && (j+1 == len(part) || (part[j+1] != '0' && part[j+1] != '1')) {
				return nil, errors.New("a JSON pointer escapes ~ as ~0 and / as ~1, nothing else")
			}
		}
		p[i] = strings.ReplaceAll(strings.ReplaceAll(part, "~1", "/"), "~0", "~")
	}
	return p, nil
}

// hasPrefix reports whether q starts with p (p == q included).
func (p jsonPointer) hasPrefix(q jsonPointer) bool {
	if len(q) > len(p) {
		return false
	}
	for i := range q {
		if p[i] != q[i] {
			return false
		}
	}
	return true
}

// pageLimits caps what one page may cost.
type pageLimits struct {
	// maxValue caps the bytes the decoder may hold at once: one record,
	// one key, one skipped string, the next link.
	maxValue int64
	// maxPage caps the page's bytes (decompressed).
	maxPage int64
	// maxSkipDepth caps the nesting of the JSON outside the records (the
	// records themselves are capped by encoding/json and, later, by the
	// chunk's depth limit).
	maxSkipDepth int
}

// Defaults for http.sync. A page streams, so its size costs time, not
// memory: 4 GiB is generous (a 200 MB page is fine) and timeout_s bounds
// the time. A single record must fit in a chunk once encoded: 1 MiB.
var defaultPageLimits = pageLimits{maxValue: 1 << 20, maxPage: 4 << 30, maxSkipDepth: 512}

// pageError is the only error readPage makes itself (errors returned by
// emit come back unchanged). It never contains input.
type pageError struct {
	Offset int64 // in the page, -1 when not known
	Reason string
	// TooLarge: a value or the page is over its limit.
	TooLarge bool
}

func (e *pageError) Error() string {
	if e.Offset < 0 {
		return e.Reason
	}
	return e.Reason + " (at byte " + strconv.FormatInt(e.Offset, 10) + ")"
}

var (
	errValueTooLarge = errors.New("a single JSON value of the page is over the record limit")
	errPageTooLarge  = errors.New("the page is over the page size limit")
)

// pageInput is the decoder's reader. It stops the decoder when it holds
// more than maxValue bytes it has not consumed (one value too large: the
// decoder would buffer it whole) or when the page passes maxPage.
type pageInput struct {
	r      io.Reader
	dec    *json.Decoder
	read   int64
	limits pageLimits
	// err remembers why the input stopped, since json.Decoder may wrap or
	// replace a reader's error.
	err error
}

func (in *pageInput) Read(b []byte) (int, error) {
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

// pageWalker walks one page's JSON down to the items array and the next
// link.
type pageWalker struct {
	dec    *json.Decoder
	in     *pageInput
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

// readPage reads one page from r: every record of the array at items goes
// to emit, in order (emit must not keep the slice); the string at next
// (when next is not nil) is returned as the next link ("" when the page
// has none, or null there). The items array and the next link may come in
// either order. A page without an array at items is an error, a null
// there is a page without records.
//
// Errors are a *pageError, or emit's error unchanged, or the reader's
// error when it failed for another reason than a limit.
func readPage(r io.Reader, items, next jsonPointer, limits pageLimits, emit func([]byte) error) (nextURL string, records int64, err error) {
	in := &pageInput{r: r, limits: limits}
	dec := json.NewDecoder(in)
	// Numbers stay text: a skipped 1e999 is valid JSON, not an overflow.
	dec.UseNumber()
	in.dec = dec
	w := &pageWalker{dec: dec, in: in, items: items, next: next, emit: emit}
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
func (w *pageWalker) syntax(err error, reason string) error {
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
func (w *pageWalker) value(depth int) error {
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

func (w *pageWalker) push(depth int, token string) {
	w.path = append(w.path[:depth], token)
}

func (w *pageWalker) readItems() error {
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

func (w *pageWalker) readNext() error {
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
func (w *pageWalker) skip() error {
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
