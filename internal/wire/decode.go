package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/bits"
	"reflect"
	"strconv"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// Limits caps what Decode accepts. A zero field takes its default.
type Limits struct {
	// MaxBytes caps the body's length; default MaxBodyBytes (1 MiB).
	MaxBytes int
	// MaxDepth caps the nesting of arrays and objects; a top-level object
	// is depth 1. Default MaxDepth (32).
	MaxDepth int
}

func (l Limits) maxBytes() int {
	if l.MaxBytes > 0 {
		return l.MaxBytes
	}
	return MaxBodyBytes
}

func (l Limits) maxDepth() int {
	if l.MaxDepth > 0 {
		return l.MaxDepth
	}
	return MaxDepth
}

// ErrTooLarge is wrapped by the *DecodeError of a body over Limits.MaxBytes,
// so that an HTTP handler can answer 413 rather than 400.
var ErrTooLarge = errors.New("body too large")

// DecodeError is the only error Decode returns. It never contains any byte
// of the input, whose values may be secrets: Reason is one of a fixed set of
// phrases (see reasons below) and Offset is a byte offset, or -1 when the
// offset is not known.
type DecodeError struct {
	Offset int64
	Reason string

	tooLarge bool
}

func (e *DecodeError) Error() string {
	if e.Offset < 0 {
		return "invalid JSON body: " + e.Reason
	}
	return "invalid JSON body at offset " + strconv.FormatInt(e.Offset, 10) + ": " + e.Reason
}

// Unwrap returns ErrTooLarge for a body over the size limit, else nil.
func (e *DecodeError) Unwrap() error {
	if e.tooLarge {
		return ErrTooLarge
	}
	return nil
}

// The reasons of a DecodeError. reasonWrongType is followed by a Go type
// name, which comes from the program, never from the input.
const (
	reasonTooLarge     = "body exceeds the size limit"
	reasonEmpty        = "body is empty"
	reasonBOM          = "byte order mark is not allowed"
	reasonTarget       = "decode target is not a non-nil pointer"
	reasonEOF          = "unexpected end of input"
	reasonChar         = "invalid character"
	reasonNumber       = "invalid number"
	reasonEscape       = "invalid escape in string"
	reasonSurrogate    = "unpaired surrogate in unicode escape"
	reasonControl      = "control character in string"
	reasonUTF8         = "invalid UTF-8"
	reasonDepth        = "nesting too deep"
	reasonDuplicate    = "duplicate key in object"
	reasonDuplicateCI  = "keys in object differ only in case and name the same field"
	reasonTrailing     = "trailing data after the value"
	reasonWrongType    = "value has the wrong type, want "
	reasonInvalidValue = "invalid value"
	reasonSyntax       = "invalid JSON"
)

var bom = []byte{0xEF, 0xBB, 0xBF}

// Decode parses the JSON body data into v, a non-nil pointer, after checking
// it in one pass: at most limits.MaxBytes bytes, nesting at most
// limits.MaxDepth, valid UTF-8 (no byte order mark, no unpaired surrogate
// escapes), no duplicate key in any object at any depth, nothing but
// whitespace after the value. Unknown fields are ignored.
//
// encoding/json binds object keys to struct fields case-insensitively, so
// where an object decodes into a struct, two keys that bind to the same
// field ("task_id" and "Task_ID") are duplicates too. Keys of maps and of
// objects that stay raw (json.RawMessage, any) are compared exactly.
//
// Every error is a *DecodeError and never contains input bytes.
func Decode(data []byte, v any, limits Limits) error {
	if err := precheck(data, limits); err != nil {
		return err
	}
	if c, ok := v.(*Chunk); ok && c != nil && c.Seq == 0 && c.Records == nil && !c.Final {
		return decodeChunk(data, c, limits, false)
	}
	return decode(data, v, limits)
}

// precheck refuses what no decoding path takes: too large, empty, a BOM.
func precheck(data []byte, limits Limits) error {
	if max := limits.maxBytes(); len(data) > max {
		return &DecodeError{Offset: int64(max), Reason: reasonTooLarge, tooLarge: true}
	}
	if len(data) == 0 {
		return &DecodeError{Offset: 0, Reason: reasonEmpty}
	}
	if bytes.HasPrefix(data, bom) {
		return &DecodeError{Offset: 0, Reason: reasonBOM}
	}
	return nil
}

// decode is Decode after the size checks, for any v: the check, then
// encoding/json.
func decode(data []byte, v any, limits Limits) error {
	rv := reflect.ValueOf(v)
	if v == nil || rv.Kind() != reflect.Pointer || rv.IsNil() {
		return &DecodeError{Offset: -1, Reason: reasonTarget}
	}

	s := scannerPool.Get().(*scanner)
	err := s.scan(data, shapeOf(rv.Type().Elem()), limits.maxDepth())
	s.release()
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fromJSONError(err)
	}
	return nil
}

// fromJSONError turns an encoding/json error into a DecodeError, dropping
// everything in it that may come from the input: an UnmarshalTypeError's
// Value ("number 1e999") and Field (which names map keys), the messages of
// UnmarshalJSON methods (time.Time quotes the input).
func fromJSONError(err error) *DecodeError {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		want := "a value of another type"
		if te.Type != nil {
			want = te.Type.String()
		}
		return &DecodeError{Offset: te.Offset, Reason: reasonWrongType + want}
	case errors.As(err, &se):
		return &DecodeError{Offset: se.Offset, Reason: reasonSyntax}
	default:
		return &DecodeError{Offset: -1, Reason: reasonInvalidValue}
	}
}

// linearKeys is the number of keys in one object up to which duplicates are
// found by comparing with each earlier key; past it, a map is used, so an
// object with many keys costs O(n), not O(n²).
const linearKeys = 16

// scanner checks a JSON text in one pass. It is recursive descent, bounded
// by maxDepth. Keys of the open objects live in keys (slices of the input,
// or of arena when they had escapes); an object truncates both when it
// closes, so memory stays proportional to the open objects' keys.
type scanner struct {
	data     []byte
	maxDepth int
	keys     [][]byte
	arena    []byte
	bound    []int

	// collect: note in top, per key of the top-level object, the offsets
	// of the key literal (quotes included) and of its value, and in elems
	// the offsets of the elements of arrays of recordsShape at depth 2
	// (decodeChunk).
	collect bool
	top     []int
	elems   []int
}

var scannerPool = sync.Pool{New: func() any { return new(scanner) }}

func (s *scanner) release() {
	s.data = nil
	s.collect = false
	s.top = s.top[:0]
	s.elems = s.elems[:0]
	clear(s.keys[:cap(s.keys)])
	s.keys = s.keys[:0]
	s.arena = s.arena[:0]
	s.bound = s.bound[:0]
	if cap(s.arena) > 64<<10 || cap(s.keys) > 4096 || cap(s.elems) > 1<<16 {
		return // do not keep a large buffer alive in the pool
	}
	scannerPool.Put(s)
}

func (s *scanner) scan(data []byte, root *shape, maxDepth int) error {
	s.data, s.maxDepth = data, maxDepth
	i, err := s.value(0, root, 0)
	if err != nil {
		return err
	}
	if i = s.skipSpace(i); i != len(data) {
		return fail(i, reasonTrailing)
	}
	return nil
}

func fail(off int, reason string) *DecodeError {
	return &DecodeError{Offset: int64(off), Reason: reason}
}

func (s *scanner) skipSpace(i int) int {
	for i < len(s.data) {
		switch s.data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// value scans one value starting at or after i (after whitespace) and
// returns the offset just past it. sh is the shape of the Go value it
// decodes into, nil when unknown.
func (s *scanner) value(i int, sh *shape, depth int) (int, error) {
	i = s.skipSpace(i)
	if i >= len(s.data) {
		return i, fail(i, reasonEOF)
	}
	switch c := s.data[i]; {
	case c == '{':
		return s.object(i, sh, depth+1)
	case c == '[':
		return s.array(i, sh, depth+1)
	case c == '"':
		_, end, err := s.str(i, false)
		return end, err
	case c == '-' || ('0' <= c && c <= '9'):
		return s.number(i)
	case c == 't':
		return s.literal(i, "true")
	case c == 'f':
		return s.literal(i, "false")
	case c == 'n':
		return s.literal(i, "null")
	case c >= utf8.RuneSelf:
		if r, _ := utf8.DecodeRune(s.data[i:]); r == utf8.RuneError {
			return i, fail(i, reasonUTF8)
		}
		return i, fail(i, reasonChar)
	default:
		return i, fail(i, reasonChar)
	}
}

func (s *scanner) literal(i int, lit string) (int, error) {
	for k := 0; k < len(lit); k++ {
		if i+k >= len(s.data) {
			return i + k, fail(i+k, reasonEOF)
		}
		if s.data[i+k] != lit[k] {
			return i + k, fail(i+k, reasonChar)
		}
	}
	return i + len(lit), nil
}

func (s *scanner) number(i int) (int, error) {
	d := s.data
	j := i
	if d[j] == '-' {
		j++
	}
	digits := func() bool {
		k := j
		for j < len(d) && '0' <= d[j] && d[j] <= '9' {
			j++
		}
		return j > k
	}
	switch {
	case j < len(d) && d[j] == '0':
		j++
	case j < len(d) && '1' <= d[j] && d[j] <= '9':
		digits()
	default:
		return j, fail(j, reasonNumber)
	}
	if j < len(d) && d[j] == '.' {
		j++
		if !digits() {
			return j, fail(j, reasonNumber)
		}
	}
	if j < len(d) && (d[j] == 'e' || d[j] == 'E') {
		j++
		if j < len(d) && (d[j] == '+' || d[j] == '-') {
			j++
		}
		if !digits() {
			return j, fail(j, reasonNumber)
		}
	}
	return j, nil
}

// str scans the string whose opening quote is at i and returns the offset
// past its closing quote. With decode, it also returns the string's value:
// a slice of the input when it has no escapes, else of s.arena.
func (s *scanner) str(i int, decode bool) ([]byte, int, error) {
	d := s.data
	start := i + 1
	lit := start // start of the run not yet copied to the arena
	arenaStart := len(s.arena)
	escaped := false
	for j := start; j < len(d); {
		if j+8 <= len(d) {
			m := StringStops8(binary.LittleEndian.Uint64(d[j:]), 0)
			if m == 0 {
				j += 8
				continue
			}
			j += bits.TrailingZeros64(m) >> 3
		}
		c := d[j]
		switch {
		case c == '"':
			if !escaped {
				return d[start:j], j + 1, nil
			}
			if !decode {
				return nil, j + 1, nil
			}
			s.arena = append(s.arena, d[lit:j]...)
			return s.arena[arenaStart:len(s.arena):len(s.arena)], j + 1, nil
		case c == '\\':
			if decode {
				s.arena = append(s.arena, d[lit:j]...)
			}
			r, next, err := s.escape(j)
			if err != nil {
				return nil, next, err
			}
			if decode {
				s.arena = utf8.AppendRune(s.arena, r)
			}
			escaped = true
			j, lit = next, next
		case c < 0x20:
			return nil, j, fail(j, reasonControl)
		case c < utf8.RuneSelf:
			j++
		default:
			r, size := utf8.DecodeRune(d[j:])
			if r == utf8.RuneError && size == 1 {
				return nil, j, fail(j, reasonUTF8)
			}
			j += size
		}
	}
	return nil, len(d), fail(len(d), reasonEOF)
}

// escape decodes the escape sequence whose backslash is at i.
func (s *scanner) escape(i int) (rune, int, error) {
	d := s.data
	if i+1 >= len(d) {
		return 0, len(d), fail(len(d), reasonEOF)
	}
	switch d[i+1] {
	case '"', '\\', '/':
		return rune(d[i+1]), i + 2, nil
	case 'b':
		return '\b', i + 2, nil
	case 'f':
		return '\f', i + 2, nil
	case 'n':
		return '\n', i + 2, nil
	case 'r':
		return '\r', i + 2, nil
	case 't':
		return '\t', i + 2, nil
	case 'u':
		r1, ok := hex4(d, i+2)
		if !ok {
			return 0, i, fail(i, reasonEscape)
		}
		if !utf16.IsSurrogate(r1) {
			return r1, i + 6, nil
		}
		if r1 >= 0xDC00 { // a low surrogate cannot come first
			return 0, i, fail(i, reasonSurrogate)
		}
		if i+7 >= len(d) || d[i+6] != '\\' || d[i+7] != 'u' {
			return 0, i, fail(i, reasonSurrogate)
		}
		r2, ok := hex4(d, i+8)
		if !ok {
			return 0, i + 6, fail(i+6, reasonEscape)
		}
		r := utf16.DecodeRune(r1, r2)
		if r == utf8.RuneError {
			return 0, i, fail(i, reasonSurrogate)
		}
		return r, i + 12, nil
	default:
		return 0, i, fail(i, reasonEscape)
	}
}

func hex4(d []byte, i int) (rune, bool) {
	if i+4 > len(d) {
		return 0, false
	}
	var r rune
	for _, c := range d[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

func (s *scanner) array(i int, sh *shape, depth int) (int, error) {
	if depth > s.maxDepth {
		return i, fail(i, reasonDepth)
	}
	var elem *shape
	if sh != nil && sh.kind == shapeList {
		elem = shapeOf(sh.elem)
	}
	i = s.skipSpace(i + 1)
	if i < len(s.data) && s.data[i] == ']' {
		return i + 1, nil
	}
	collect := s.collect && depth == 2 && sh == recordsShape
	for {
		var err error
		start := s.skipSpace(i)
		if i, err = s.value(i, elem, depth); err != nil {
			return i, err
		}
		if collect {
			s.elems = append(s.elems, start, i)
		}
		i = s.skipSpace(i)
		if i >= len(s.data) {
			return i, fail(i, reasonEOF)
		}
		switch s.data[i] {
		case ',':
			i++
		case ']':
			return i + 1, nil
		default:
			return i, fail(i, reasonChar)
		}
	}
}

func (s *scanner) object(i int, sh *shape, depth int) (end int, err error) {
	if depth > s.maxDepth {
		return i, fail(i, reasonDepth)
	}
	keyStart, arenaStart, boundStart := len(s.keys), len(s.arena), len(s.bound)
	defer func() {
		s.keys = s.keys[:keyStart]
		s.arena = s.arena[:arenaStart]
		s.bound = s.bound[:boundStart]
	}()
	var set map[string]struct{} // past linearKeys
	i = s.skipSpace(i + 1)
	if i < len(s.data) && s.data[i] == '}' {
		return i + 1, nil
	}
	for {
		i = s.skipSpace(i)
		if i >= len(s.data) {
			return i, fail(i, reasonEOF)
		}
		if s.data[i] != '"' {
			return i, fail(i, reasonChar)
		}
		keyOff := i
		key, next, err := s.str(i, true)
		if err != nil {
			return next, err
		}
		if set != nil {
			if _, dup := set[string(key)]; dup {
				return keyOff, fail(keyOff, reasonDuplicate)
			}
			set[string(key)] = struct{}{}
		} else {
			for _, k := range s.keys[keyStart:] {
				if bytes.Equal(k, key) {
					return keyOff, fail(keyOff, reasonDuplicate)
				}
			}
			s.keys = append(s.keys, key)
			if n := len(s.keys) - keyStart; n > linearKeys {
				set = make(map[string]struct{}, 2*n)
				for _, k := range s.keys[keyStart:] {
					set[string(k)] = struct{}{}
				}
			}
		}

		var child *shape
		if sh != nil {
			switch sh.kind {
			case shapeStruct:
				if f, ok := sh.field(key); ok {
					for _, b := range s.bound[boundStart:] {
						if b == f {
							return keyOff, fail(keyOff, reasonDuplicateCI)
						}
					}
					s.bound = append(s.bound, f)
					child = shapeOf(sh.fields[f])
				}
			case shapeMap:
				child = shapeOf(sh.elem)
			}
		}

		i = s.skipSpace(next)
		if i >= len(s.data) {
			return i, fail(i, reasonEOF)
		}
		if s.data[i] != ':' {
			return i, fail(i, reasonChar)
		}
		valStart := s.skipSpace(i + 1)
		if i, err = s.value(i+1, child, depth); err != nil {
			return i, err
		}
		if s.collect && depth == 1 {
			s.top = append(s.top, keyOff, next, valStart, i)
		}
		i = s.skipSpace(i)
		if i >= len(s.data) {
			return i, fail(i, reasonEOF)
		}
		switch s.data[i] {
		case ',':
			i++
		case '}':
			return i + 1, nil
		default:
			return i, fail(i, reasonChar)
		}
	}
}
