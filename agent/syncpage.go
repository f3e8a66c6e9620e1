package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/bits"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/rapidvalue/tier3-agent/agent/redact"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// The page decoder of http.sync: it streams the records of one page out of
// its JSON, so that a page of any size is read with the memory of its
// largest record, never of the page.
//
// It is a hand-written scanner with the semantics of encoding/json's
// Decoder token API (Token, More, Decode into a json.RawMessage), which is
// what it replaced: the same records, next link and verdicts on every
// input (FuzzSyncPageOracle holds it to that, against the old decoder kept
// in syncpage_oracle_test.go). What it adds is speed: each record is
// scanned once, and that one pass also compacts it (appendCompactJSON) and
// checks it against the control plane's rules (wire.Check), so that the
// chunk encoder (chunks.go) has nothing left to do for a record that holds
// no secret but to ask the redactor.
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
	// records themselves are capped at maxJSONDepth, encoding/json's
	// limit, and, later, by the chunk's depth limit).
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
	return readPageRecords(r, items, next, limits, func(pr *pageRecord) error { return emit(pr.raw) })
}

// pageRecord is one record as the scanner read it. Its slices live until
// the next record: emit must not keep them.
type pageRecord struct {
	// raw is the record's bytes as the page holds them (what
	// encoding/json's Decoder gives as a json.RawMessage).
	raw []byte
	// compact is appendCompactJSON(nil, raw).
	compact []byte
	// checked: raw passes every rule of wire.Check with the limits of a
	// record in a chunk (valid UTF-8, no unpaired surrogate escape, no
	// duplicate key, nesting at most maxRecordDepth), and no object key
	// has an escape. When false, nothing is known: the record must go
	// through the full path (redact.JSON, appendCompactJSON, wire.Check).
	checked bool
	// escaped holds, in pairs, the start and end offsets in raw of every
	// string literal (quotes included) that has a backslash escape.
	escaped []int
}

// readPageRecords is readPage, handing emit the record with what the
// scanner learnt of it.
func readPageRecords(r io.Reader, items, next jsonPointer, limits pageLimits, emit func(*pageRecord) error) (nextURL string, records int64, err error) {
	d := &pageDecoder{r: r, limits: limits}
	w := &pageWalker{dec: d, items: items, next: next, emit: emit}
	err = w.value(0)
	if err == nil {
		if _, terr := d.Token(); terr != io.EOF {
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

// errSyntax and io.ErrUnexpectedEOF are the decoder's own errors about its
// input (they carry none of it); errValueTooLarge and errPageTooLarge say
// that a limit stopped it. The reader's other errors come back unchanged.
var errSyntax = errors.New("invalid JSON")

// pageWalker walks one page's JSON down to the items array and the next
// link.
type pageWalker struct {
	dec   *pageDecoder
	items jsonPointer
	next  jsonPointer // nil: no json_url next link
	emit  func(*pageRecord) error

	records   int64
	itemsSeen bool
	nextSeen  bool
	nextURL   string
	path      []string
}

// syntax turns a decoder error into a pageError (or the reader's error).
func (w *pageWalker) syntax(err error, reason string) error {
	d := w.dec
	switch {
	case d.lim == errValueTooLarge:
		return &pageError{Offset: d.offset(), Reason: "a value of the page (a record, a key, a string) is over " + strconv.FormatInt(d.limits.maxValue, 10) + " bytes", TooLarge: true}
	case d.lim == errPageTooLarge:
		return &pageError{Offset: -1, Reason: "the page is over " + strconv.FormatInt(d.limits.maxPage, 10) + " bytes", TooLarge: true}
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		return &pageError{Offset: d.read, Reason: "the page ends in the middle of its JSON"}
	case err == errSyntax:
		return &pageError{Offset: d.errOff, Reason: "the page is not valid JSON"}
	case err != nil:
		// The body's reader failed (network): the caller classifies it.
		return err
	}
	return &pageError{Offset: d.offset(), Reason: reason}
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
	switch tok.kind {
	case tokObjectStart:
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
			if kt.kind != tokKey {
				return w.syntax(nil, "the page is not valid JSON")
			}
			key := kt.str
			if (len(w.items) > depth && w.items[depth] == key) || (len(w.next) > depth && w.next[depth] == key) {
				for _, k := range seen[:nseen] {
					if k == key {
						return &pageError{Offset: w.dec.offset(), Reason: "the page has a key on the items or next pointer twice"}
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
	case tokArrayStart:
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
		return &pageError{Offset: w.dec.offset(), Reason: "the page has the items pointer's value twice (a duplicate key)"}
	}
	w.itemsSeen = true
	tok, err := w.dec.Token()
	if err != nil {
		return w.syntax(err, "the page is not valid JSON")
	}
	switch tok.kind {
	case tokNull:
		return nil // "records": null, a page without records
	case tokArrayStart:
	case tokObjectStart:
		return &pageError{Offset: w.dec.offset(), Reason: "the items pointer names an object, not an array"}
	default:
		return &pageError{Offset: w.dec.offset(), Reason: "the items pointer names a scalar, not an array"}
	}
	for w.dec.More() {
		rec, err := w.dec.record()
		if err != nil {
			return w.syntax(err, "a record is not valid JSON")
		}
		w.records++
		if err := w.emit(rec); err != nil {
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
		return &pageError{Offset: w.dec.offset(), Reason: "the page has the next pointer's value twice (a duplicate key)"}
	}
	w.nextSeen = true
	tok, err := w.dec.Token()
	if err != nil {
		return w.syntax(err, "the page is not valid JSON")
	}
	switch tok.kind {
	case tokNull:
		return nil
	case tokString:
		w.nextURL = tok.str
		return nil
	case tokObjectStart, tokObjectEnd, tokArrayStart, tokArrayEnd:
		return &pageError{Offset: w.dec.offset(), Reason: "the next pointer names an object or array, not a URL"}
	}
	return &pageError{Offset: w.dec.offset(), Reason: "the next pointer names a number or boolean, not a URL"}
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
		switch tok.kind {
		case tokObjectStart, tokArrayStart:
			depth++
			if depth > w.dec.limits.maxSkipDepth {
				return &pageError{Offset: w.dec.offset(), Reason: "the page nests deeper than " + strconv.Itoa(w.dec.limits.maxSkipDepth) + " levels"}
			}
		case tokObjectEnd, tokArrayEnd:
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

// Token kinds.
const (
	tokObjectStart = iota + 1
	tokObjectEnd
	tokArrayStart
	tokArrayEnd
	tokKey
	tokString
	tokNumber
	tokBool
	tokNull
)

// token is one token of the page. str is set for keys and strings (their
// decoded text, as encoding/json decodes it), only where the walker needs
// it.
type token struct {
	kind int
	str  string
}

// The states of encoding/json's Decoder token API (stream.go), which
// pageDecoder follows exactly.
const (
	tokenTopValue = iota
	tokenArrayStart
	tokenArrayValue
	tokenArrayComma
	tokenObjectStart
	tokenObjectKey
	tokenObjectColon
	tokenObjectValue
	tokenObjectComma
)

// maxJSONDepth is encoding/json's nesting limit for one decoded value.
const maxJSONDepth = 10000

// readSize is how much the decoder asks its reader for at once.
const readSize = 64 << 10

// pageDecoder is a streaming JSON tokenizer with the behaviour of
// encoding/json's Decoder as the old page walker used it (Token, More,
// Decode of a record into a json.RawMessage): the same tokens, the same
// records, and an error where it would fail, of the same kind (syntax,
// unexpected end, the reader's error).
//
// It holds the page in buf from the start of the value being read: a
// value that needs more than limits.maxValue bytes stops it
// (errValueTooLarge), and so does a page over limits.maxPage.
type pageDecoder struct {
	r      io.Reader
	limits pageLimits
	buf    []byte // buf[scanp:] is not consumed yet
	scanp  int
	base   int64 // the page offset of buf[0]
	read   int64 // bytes read from r
	rerr   error // the reader's error (io.EOF at the end), once it gave one
	lim    error // errValueTooLarge or errPageTooLarge, once hit
	errOff int64 // where the last syntax error is

	tokenState int
	tokenStack []int

	rec recordScanner
	pr  pageRecord
}

func (d *pageDecoder) offset() int64 { return d.base + int64(d.scanp) }

// more reads more input, keeping buf[start:] (start ≥ the position of the
// value being read) and moving it to the front. It returns the shift
// (subtract it from offsets into buf), or an error: the reader's, or
// a limit's.
//
// A value that runs past the buffer is scanned again from its start once
// more has come, so more reads until the part of the value held has
// doubled (or the input ends): a value of n bytes is scanned O(n) times in
// all, however the reader splits it (a target that sends a byte at a time
// cannot make the agent scan a record a million times).
func (d *pageDecoder) more(start int) (int, error) {
	if d.lim != nil {
		return 0, d.lim
	}
	if d.rerr != nil {
		return 0, d.rerr
	}
	shift := start
	if shift > 0 {
		n := copy(d.buf, d.buf[start:])
		d.buf = d.buf[:n]
		d.scanp -= shift
		d.base += int64(shift)
	}
	held := len(d.buf)
	if int64(held) > d.limits.maxValue {
		d.lim = errValueTooLarge
		return shift, d.lim
	}
	want := held + 1
	if held >= 4<<10 {
		want = int(min(int64(2*held), d.limits.maxValue+1))
	}
	if need := want + readSize/2; cap(d.buf) < need {
		nb := make([]byte, held, max(2*cap(d.buf), need))
		copy(nb, d.buf)
		d.buf = nb
	}
	for zero := 0; len(d.buf) < want; {
		if d.read >= d.limits.maxPage {
			if len(d.buf) > held {
				return shift, nil // scan what came; the next call stops
			}
			d.lim = errPageTooLarge
			return shift, d.lim
		}
		free := d.buf[len(d.buf):cap(d.buf)]
		if rest := d.limits.maxPage - d.read; int64(len(free)) > rest {
			free = free[:rest]
		}
		n, err := d.r.Read(free)
		d.read += int64(n)
		d.buf = d.buf[:len(d.buf)+n]
		if err != nil {
			d.rerr = err
			if len(d.buf) > held {
				return shift, nil
			}
			return shift, err
		}
		if n == 0 {
			if zero++; zero == 100 {
				d.rerr = io.ErrNoProgress
				return shift, d.rerr
			}
		}
	}
	return shift, nil
}

// eofErr is what running into the end of the input in the middle of a
// value means: encoding/json's io.ErrUnexpectedEOF at the end, else the
// reader's error (or the limit that stopped the input).
func (d *pageDecoder) eofErr(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// stopErr is why no more input comes: a limit, else the reader's error.
func (d *pageDecoder) stopErr() error {
	if d.lim != nil {
		return d.lim
	}
	return d.rerr
}

func (d *pageDecoder) syntaxAt(i int) error {
	d.errOff = d.base + int64(i)
	return errSyntax
}

// peek skips whitespace and returns the next byte (encoding/json's peek:
// at the end, io.EOF or the reader's error).
func (d *pageDecoder) peek() (byte, error) {
	for {
		for i := d.scanp; i < len(d.buf); i++ {
			if c := d.buf[i]; !isSpace(c) {
				d.scanp = i
				return c, nil
			}
		}
		d.scanp = len(d.buf)
		if _, err := d.more(d.scanp); err != nil {
			return 0, err
		}
	}
}

func isSpace(c byte) bool {
	return c <= ' ' && (c == ' ' || c == '\t' || c == '\r' || c == '\n')
}

func (d *pageDecoder) tokenValueAllowed() bool {
	switch d.tokenState {
	case tokenTopValue, tokenArrayStart, tokenArrayValue, tokenObjectValue:
		return true
	}
	return false
}

func (d *pageDecoder) tokenValueEnd() {
	switch d.tokenState {
	case tokenArrayStart, tokenArrayValue:
		d.tokenState = tokenArrayComma
	case tokenObjectValue:
		d.tokenState = tokenObjectComma
	}
}

// tokenPrepareForDecode consumes the comma or colon before a value.
func (d *pageDecoder) tokenPrepareForDecode() error {
	sep, state := byte(','), tokenArrayValue
	switch d.tokenState {
	case tokenArrayComma:
	case tokenObjectColon:
		sep, state = ':', tokenObjectValue
	default:
		return nil
	}
	c, err := d.peek()
	if err != nil {
		return err
	}
	if c != sep {
		return d.syntaxAt(d.scanp)
	}
	d.scanp++
	d.tokenState = state
	return nil
}

// More reports whether there is another element in the current array or
// object.
func (d *pageDecoder) More() bool {
	c, err := d.peek()
	return err == nil && c != ']' && c != '}'
}

// Token returns the next token, as encoding/json's Decoder.Token does
// (commas and colons are elided). At the end of the input it returns
// io.EOF.
func (d *pageDecoder) Token() (token, error) {
	for {
		c, err := d.peek()
		if err != nil {
			return token{}, err
		}
		switch c {
		case '[', '{':
			if !d.tokenValueAllowed() {
				return token{}, d.syntaxAt(d.scanp)
			}
			d.scanp++
			d.tokenStack = append(d.tokenStack, d.tokenState)
			if c == '[' {
				d.tokenState = tokenArrayStart
				return token{kind: tokArrayStart}, nil
			}
			d.tokenState = tokenObjectStart
			return token{kind: tokObjectStart}, nil
		case ']', '}':
			start, comma, kind := tokenArrayStart, tokenArrayComma, tokArrayEnd
			if c == '}' {
				start, comma, kind = tokenObjectStart, tokenObjectComma, tokObjectEnd
			}
			if d.tokenState != start && d.tokenState != comma {
				return token{}, d.syntaxAt(d.scanp)
			}
			d.scanp++
			d.tokenState = d.tokenStack[len(d.tokenStack)-1]
			d.tokenStack = d.tokenStack[:len(d.tokenStack)-1]
			d.tokenValueEnd()
			return token{kind: kind}, nil
		case ':':
			if d.tokenState != tokenObjectColon {
				return token{}, d.syntaxAt(d.scanp)
			}
			d.scanp++
			d.tokenState = tokenObjectValue
			continue
		case ',':
			if d.tokenState == tokenArrayComma {
				d.scanp++
				d.tokenState = tokenArrayValue
				continue
			}
			if d.tokenState == tokenObjectComma {
				d.scanp++
				d.tokenState = tokenObjectKey
				continue
			}
			return token{}, d.syntaxAt(d.scanp)
		case '"':
			if d.tokenState == tokenObjectStart || d.tokenState == tokenObjectKey {
				s, err := d.scalar(true)
				if err != nil {
					return token{}, err
				}
				d.tokenState = tokenObjectColon
				return token{kind: tokKey, str: s.str}, nil
			}
		}
		if !d.tokenValueAllowed() {
			return token{}, d.syntaxAt(d.scanp)
		}
		tok, err := d.scalar(false)
		if err != nil {
			return token{}, err
		}
		d.tokenValueEnd()
		return tok, nil
	}
}

// scalar reads the string, number or literal at d.scanp as a whole value
// (encoding/json's readValue; a '{' or '[' here is a syntax error, since
// Token handles those). Strings are decoded only for keys and where the
// walker may need them (it needs every string: the next link).
func (d *pageDecoder) scalar(key bool) (token, error) {
	for {
		b := d.buf
		i := d.scanp
		atEOF := d.rerr != nil || d.lim != nil
		var (
			end int
			st  int
			tok token
		)
		switch c := b[i]; {
		case c == '"':
			end, st = scanString(b, i)
			tok.kind = tokString
			if key {
				tok.kind = tokKey
			}
		case c == '-' || '0' <= c && c <= '9':
			end, st = scanNumber(b, i, atEOF)
			tok.kind = tokNumber
		case c == 't':
			end, st = scanLiteral(b, i, "true")
			tok.kind = tokBool
		case c == 'f':
			end, st = scanLiteral(b, i, "false")
			tok.kind = tokBool
		case c == 'n':
			end, st = scanLiteral(b, i, "null")
			tok.kind = tokNull
		default:
			return token{}, d.syntaxAt(i)
		}
		switch st {
		case scanOK:
			if tok.kind == tokString || tok.kind == tokKey {
				tok.str = unquoteJSON(b[i+1 : end-1])
			}
			d.scanp = end
			return tok, nil
		case scanBad:
			return token{}, d.syntaxAt(end)
		}
		// Short: the value runs past what is buffered.
		if atEOF {
			return token{}, d.eofErr(d.stopErr())
		}
		d.more(d.scanp) // on an error, the next pass is atEOF
	}
}

// record reads the next element of the items array (encoding/json's
// Decode into a json.RawMessage), compacting and checking it on the way.
func (d *pageDecoder) record() (*pageRecord, error) {
	if err := d.tokenPrepareForDecode(); err != nil {
		return nil, err
	}
	if !d.tokenValueAllowed() {
		return nil, d.syntaxAt(d.scanp)
	}
	// The value starts after whitespace (which a RawMessage leaves out).
	if _, err := d.peek(); err != nil {
		return nil, d.eofErr(err)
	}
	for {
		atEOF := d.rerr != nil || d.lim != nil
		end, st := d.rec.scan(d.buf, d.scanp, atEOF)
		switch st {
		case scanOK:
			d.pr = pageRecord{raw: d.buf[d.scanp:end], compact: d.rec.out, checked: !d.rec.slow, escaped: d.rec.escaped}
			d.scanp = end
			d.tokenValueEnd()
			return &d.pr, nil
		case scanBad:
			return nil, d.syntaxAt(end)
		}
		if atEOF {
			return nil, d.eofErr(d.stopErr())
		}
		d.more(d.scanp) // on an error, the next pass is atEOF
	}
}

// Scan results.
const (
	scanOK    = iota
	scanShort // the value runs past the end of the buffer
	scanBad   // a syntax error, at the offset returned
)

// scanString scans the string literal whose quote is at b[i] with
// encoding/json's rules (no control characters, valid escapes; any other
// bytes, invalid UTF-8 included, pass) and returns the offset past it.
func scanString(b []byte, i int) (int, int) {
	for j := i + 1; j < len(b); {
		c := b[j]
		switch {
		case c == '"':
			return j + 1, scanOK
		case c == '\\':
			n, st := scanEscape(b, j)
			if st != scanOK {
				return n, st
			}
			j = n
		case c < 0x20:
			return j, scanBad
		default:
			j++
		}
	}
	return len(b), scanShort
}

// scanEscape checks the escape whose backslash is at b[i] and returns the
// offset past it.
func scanEscape(b []byte, i int) (int, int) {
	if i+1 >= len(b) {
		return len(b), scanShort
	}
	switch b[i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return i + 2, scanOK
	case 'u':
		for k := i + 2; k < i+6; k++ {
			if k >= len(b) {
				return len(b), scanShort
			}
			if !isHex(b[k]) {
				return k, scanBad
			}
		}
		return i + 6, scanOK
	}
	return i + 1, scanBad
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// scanNumber scans the number that starts at b[i] and returns the offset
// past it. A number ends at the first byte that cannot continue it; at the
// end of the buffer it is short, unless atEOF and it is complete.
func scanNumber(b []byte, i int, atEOF bool) (int, int) {
	j := i
	// At the end of the buffer: short, unless nothing follows and the
	// number is complete (short then makes the caller report the
	// unexpected end).
	end := func(complete bool) (int, int) {
		if atEOF && complete {
			return j, scanOK
		}
		return j, scanShort
	}
	if b[j] == '-' {
		j++
		if j == len(b) {
			return end(false)
		}
	}
	switch c := b[j]; {
	case c == '0':
		j++
	case '1' <= c && c <= '9':
		for j++; j < len(b) && '0' <= b[j] && b[j] <= '9'; j++ {
		}
	default:
		return j, scanBad
	}
	if j == len(b) {
		return end(true)
	}
	if b[j] == '.' {
		j++
		if j == len(b) {
			return end(false)
		}
		var ok bool
		if j, ok = digits(b, j); !ok {
			return j, scanBad
		}
		if j == len(b) {
			return end(true)
		}
	}
	if b[j] == 'e' || b[j] == 'E' {
		j++
		if j == len(b) {
			return end(false)
		}
		if b[j] == '+' || b[j] == '-' {
			j++
			if j == len(b) {
				return end(false)
			}
		}
		var ok bool
		if j, ok = digits(b, j); !ok {
			return j, scanBad
		}
		if j == len(b) {
			return end(true)
		}
	}
	return j, scanOK
}

// digits scans the run of digits that a number's fraction or exponent
// must have at b[j], and reports false (at j) when there is none.
func digits(b []byte, j int) (int, bool) {
	if b[j] < '0' || b[j] > '9' {
		return j, false
	}
	for j++; j < len(b) && '0' <= b[j] && b[j] <= '9'; j++ {
	}
	return j, true
}

// scanLiteral scans true, false or null at b[i].
func scanLiteral(b []byte, i int, lit string) (int, int) {
	for k := 1; k < len(lit); k++ {
		if i+k >= len(b) {
			return len(b), scanShort
		}
		if b[i+k] != lit[k] {
			return i + k, scanBad
		}
	}
	return i + len(lit), scanOK
}

// recordScanner scans one record in one pass: it finds its end with
// encoding/json's syntax rules, writes appendCompactJSON's output to out,
// and checks wire.Check's rules (slow when any of them fails, or when the
// record is one that it leaves to the full path).
type recordScanner struct {
	start   int // where the record starts in the input
	out     []byte
	escaped []int // relative to start
	slow    bool
	stack   []byte // '{' or '[' per open container
	// Keys of the open objects (offsets into the input, content without
	// quotes), and per open object where its keys start and a 64-bit
	// filter of their hashes.
	keys    []keySpan
	objects []openObject
}

type keySpan struct{ start, end int }

type openObject struct {
	keys   int
	filter uint64
}

// maxFastKeys is the most keys one object may have for the scanner to
// check duplicates itself (comparing each new key with the earlier ones
// that share a filter bit); an object with more goes to the full path,
// whose check is linear.
const maxFastKeys = 64

// jsonSafe marks the bytes a string's content copies as they are:
// printable ASCII other than the quote, the backslash, and the three that
// appendCompactJSON escapes.
var jsonSafe = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = true
	}
	for _, c := range `"\<>&` {
		t[c] = false
	}
	return t
}()

// special8 returns a mask with the top bit set in the bytes of w that are
// not jsonSafe, exact for the first one (wire.StringStops8).
func special8(w uint64) uint64 {
	return wire.StringStops8(w, wire.Byte8(w, '<')|wire.Byte8(w, '>')|wire.Byte8(w, '&'))
}

// Scanner states.
const (
	stValue = iota // a value is expected
	stAfter        // a value has ended
	stKey          // an object key is expected
)

// scan scans the record that starts at b[start] (not whitespace) and
// returns the offset past it, or scanShort, or scanBad with the error's
// offset. atEOF: nothing follows b.
func (s *recordScanner) scan(b []byte, start int, atEOF bool) (int, int) {
	s.out = s.out[:0]
	s.escaped = s.escaped[:0]
	s.slow = false
	s.stack = s.stack[:0]
	s.keys = s.keys[:0]
	s.objects = s.objects[:0]
	s.start = start
	i := start
	state := stValue
	for {
		// Whitespace (never inside a top-level scalar: the record starts
		// on its first byte, and ends right after a scalar).
		for i < len(b) && isSpace(b[i]) {
			i++
		}
		if i >= len(b) {
			return i, scanShort
		}
		c := b[i]
		switch state {
		case stAfter:
			top := s.stack[len(s.stack)-1] // a scalar at the top returned
			switch {
			case c == ',':
				s.out = append(s.out, ',')
				i++
				state = stValue
				if top == '{' {
					state = stKey
				}
				continue
			case c == '}' && top == '{', c == ']' && top == '[':
				s.out = append(s.out, c)
				i++
				s.pop()
				if len(s.stack) == 0 {
					return i, scanOK
				}
				continue
			}
			return i, scanBad
		case stKey:
			if c != '"' {
				return i, scanBad
			}
			end, st := s.str(b, i, true)
			if st != scanOK {
				return end, st
			}
			if !s.slow {
				s.addKey(b, i+1, end-1)
			}
			i = end
			for i < len(b) && isSpace(b[i]) {
				i++
			}
			if i >= len(b) {
				return i, scanShort
			}
			if b[i] != ':' {
				return i, scanBad
			}
			s.out = append(s.out, ':')
			i++
			state = stValue
			continue
		}
		// stValue
		switch {
		case c == '{' || c == '[':
			if len(s.stack) >= maxJSONDepth {
				return i, scanBad
			}
			s.stack = append(s.stack, c)
			if len(s.stack) > maxRecordDepth {
				s.slow = true
			}
			if c == '{' {
				s.objects = append(s.objects, openObject{keys: len(s.keys)})
			}
			s.out = append(s.out, c)
			i++
			for i < len(b) && isSpace(b[i]) {
				i++
			}
			if i >= len(b) {
				return i, scanShort
			}
			if b[i] == c+2 { // '}' is '{'+2, ']' is '['+2
				s.out = append(s.out, b[i])
				i++
				s.pop()
				if len(s.stack) == 0 {
					return i, scanOK
				}
				state = stAfter
				continue
			}
			state = stValue
			if c == '{' {
				state = stKey
			}
			continue
		case c == '"':
			end, st := s.str(b, i, false)
			if st != scanOK {
				return end, st
			}
			i = end
		case c == '-' || '0' <= c && c <= '9':
			end, st := scanNumber(b, i, atEOF)
			if st != scanOK {
				return end, st
			}
			if end == len(b) && len(s.stack) > 0 {
				return end, scanShort
			}
			s.out = append(s.out, b[i:end]...)
			i = end
		case c == 't' || c == 'f' || c == 'n':
			lit := "null"
			if c == 't' {
				lit = "true"
			} else if c == 'f' {
				lit = "false"
			}
			end, st := scanLiteral(b, i, lit)
			if st != scanOK {
				return end, st
			}
			s.out = append(s.out, lit...)
			i = end
		default:
			return i, scanBad
		}
		if len(s.stack) == 0 {
			return i, scanOK
		}
		state = stAfter
	}
}

func (s *recordScanner) pop() {
	if s.stack[len(s.stack)-1] == '{' {
		o := s.objects[len(s.objects)-1]
		s.keys = s.keys[:o.keys]
		s.objects = s.objects[:len(s.objects)-1]
	}
	s.stack = s.stack[:len(s.stack)-1]
}

// addKey checks the key b[start:end] (no escapes: str made the record
// slow otherwise) against the earlier keys of its object.
func (s *recordScanner) addKey(b []byte, start, end int) {
	o := &s.objects[len(s.objects)-1]
	n := len(s.keys) - o.keys
	if n >= maxFastKeys {
		s.slow = true
		return
	}
	k := b[start:end]
	h := uint64(len(k))
	if len(k) > 0 {
		h = h*31 + uint64(k[0])*7 + uint64(k[len(k)-1])
	}
	bit := uint64(1) << (h & 63)
	if o.filter&bit != 0 {
		for _, e := range s.keys[o.keys:] {
			if string(b[e.start:e.end]) == string(k) {
				s.slow = true // a duplicate: the full path reports it
				return
			}
		}
	}
	o.filter |= bit
	s.keys = append(s.keys, keySpan{start, end})
}

// str scans the string literal at b[i], copying it to out as
// appendCompactJSON does (with <, >, &, U+2028 and U+2029 escaped), and
// returns the offset past it. It marks the record slow for invalid UTF-8,
// an unpaired surrogate escape, or an escape in a key; it records the
// string in escaped when it has an escape.
func (s *recordScanner) str(b []byte, i int, key bool) (int, int) {
	const hex = "0123456789abcdef"
	s.out = append(s.out, '"')
	run := i + 1 // b[run:j] is not yet copied
	hasEscape := false
	for j := i + 1; ; {
		for j+8 <= len(b) {
			m := special8(binary.LittleEndian.Uint64(b[j:]))
			if m != 0 {
				j += bits.TrailingZeros64(m) >> 3
				break
			}
			j += 8
		}
		for j < len(b) && jsonSafe[b[j]] {
			j++
		}
		if j >= len(b) {
			return len(b), scanShort
		}
		c := b[j]
		switch {
		case c == '"':
			s.out = append(s.out, b[run:j+1]...)
			if hasEscape {
				if key {
					s.slow = true
				} else {
					s.escaped = append(s.escaped, i-s.start, j+1-s.start)
				}
			}
			return j + 1, scanOK
		case c == '\\':
			hasEscape = true
			n, st := scanEscape(b, j)
			if st != scanOK {
				return n, st
			}
			if b[j+1] == 'u' && !s.slow {
				switch n2, ok := s.surrogate(b, j); {
				case !ok:
					s.slow = true
				case n2 < 0:
					return len(b), scanShort
				default:
					n = n2 // past a surrogate pair
				}
			}
			j = n
		case c < 0x20:
			return j, scanBad
		case c < utf8.RuneSelf: // < > &
			s.out = append(s.out, b[run:j]...)
			s.out = append(s.out, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			j++
			run = j
		default:
			if !utf8.FullRune(b[j:]) {
				// Cut by the buffer's end (at the input's end, the
				// string is unterminated anyway).
				return len(b), scanShort
			}
			r, size := utf8.DecodeRune(b[j:])
			switch {
			case r == utf8.RuneError && size == 1:
				s.slow = true
			case r == '\u2028' || r == '\u2029':
				s.out = append(s.out, b[run:j]...)
				s.out = append(s.out, '\\', 'u', '2', '0', '2', hex[r&0xF])
				run = j + size
			}
			j += size
		}
	}
}

// surrogate checks the \u escape at b[i] as wire's scanner does: a
// surrogate must be a high one followed by an escaped low one. ok false:
// the rule fails; n < 0: the pair may run past the buffer.
func (s *recordScanner) surrogate(b []byte, i int) (n int, ok bool) {
	r1 := hexRune(b[i+2 : i+6])
	if !utf16.IsSurrogate(r1) {
		return i + 6, true
	}
	if r1 >= 0xDC00 {
		return 0, false
	}
	if i+12 > len(b) {
		// Cut by the buffer's end: short, unless what is there already
		// breaks the pair.
		for k := i + 6; k < len(b); k++ {
			switch {
			case k == i+6 && b[k] != '\\', k == i+7 && b[k] != 'u', k >= i+8 && !isHex(b[k]):
				return 0, false
			}
		}
		return -1, true
	}
	if b[i+6] != '\\' || b[i+7] != 'u' {
		return 0, false
	}
	for _, c := range b[i+8 : i+12] {
		if !isHex(c) {
			return 0, false
		}
	}
	if utf16.DecodeRune(r1, hexRune(b[i+8:i+12])) == utf8.RuneError {
		return 0, false
	}
	return i + 12, true
}

func hexRune(h []byte) rune {
	var r rune
	for _, c := range h {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// unquoteJSON returns the decoded text of a string literal's content
// (valid, without its quotes) as encoding/json decodes it: invalid UTF-8
// bytes and unpaired surrogate escapes become U+FFFD.
func unquoteJSON(s []byte) string {
	if bytes.IndexByte(s, '\\') < 0 && utf8.Valid(s) {
		return string(s)
	}
	return string(redact.Unquote(make([]byte, 0, 3*len(s)), s))
}
