package wire

import (
	"encoding"
	"encoding/json"
	"reflect"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// A shape is what the scanner needs to know of the Go type a JSON value
// decodes into: for a struct, which keys bind to which field the way
// encoding/json binds them (exact name first, else case-insensitively);
// for maps and lists, the element type. Everything else is opaque: the
// scanner still checks syntax, depth and exact duplicates inside it.
type shape struct {
	kind    shapeKind
	elem    reflect.Type   // shapeMap: value type; shapeList: element type
	fields  []reflect.Type // shapeStruct: field types, by index
	byExact map[string]int
	byFold  map[string]int
}

type shapeKind uint8

const (
	shapeOpaque shapeKind = iota
	shapeStruct
	shapeMap
	shapeList
)

var (
	shapes      sync.Map // reflect.Type → *shape
	opaqueShape = &shape{kind: shapeOpaque}

	unmarshalerType     = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// shapeOf returns the shape of t, nil for a nil type. Shapes are built one
// level at a time and cached, so recursive types are fine.
func shapeOf(t reflect.Type) *shape {
	if t == nil {
		return nil
	}
	if v, ok := shapes.Load(t); ok {
		return v.(*shape)
	}
	v, _ := shapes.LoadOrStore(t, buildShape(t))
	return v.(*shape)
}

func decodesItself(t reflect.Type) bool {
	return t.Implements(unmarshalerType) || t.Implements(textUnmarshalerType) ||
		(t.Kind() != reflect.Pointer && (reflect.PointerTo(t).Implements(unmarshalerType) ||
			reflect.PointerTo(t).Implements(textUnmarshalerType)))
}

func buildShape(t reflect.Type) *shape {
	for t.Kind() == reflect.Pointer {
		if decodesItself(t) {
			return opaqueShape
		}
		t = t.Elem()
	}
	if decodesItself(t) {
		return opaqueShape
	}
	switch t.Kind() {
	case reflect.Struct:
		sh := &shape{kind: shapeStruct, byExact: map[string]int{}, byFold: map[string]int{}}
		addFields(sh, t, map[reflect.Type]bool{t: true})
		return sh
	case reflect.Map:
		return &shape{kind: shapeMap, elem: t.Elem()}
	case reflect.Slice, reflect.Array:
		return &shape{kind: shapeList, elem: t.Elem()}
	}
	return opaqueShape
}

// addFields indexes t's JSON field names like encoding/json, simplified: a
// struct's own fields come before the fields promoted from its embedded
// structs, and the first field to claim a name keeps it.
func addFields(sh *shape, t reflect.Type, seen map[reflect.Type]bool) {
	var embedded []reflect.Type
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if name == "" && ft.Kind() == reflect.Struct {
				embedded = append(embedded, ft)
				continue
			}
			if !f.IsExported() {
				continue
			}
		} else if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if _, ok := sh.byExact[name]; ok {
			continue
		}
		idx := len(sh.fields)
		sh.fields = append(sh.fields, f.Type)
		sh.byExact[name] = idx
		folded := string(appendFolded(nil, []byte(name)))
		if _, ok := sh.byFold[folded]; !ok {
			sh.byFold[folded] = idx
		}
	}
	for _, et := range embedded {
		if !seen[et] {
			seen[et] = true
			addFields(sh, et, seen)
		}
	}
}

// field returns the index of the field that encoding/json binds key to.
func (sh *shape) field(key []byte) (int, bool) {
	if i, ok := sh.byExact[string(key)]; ok {
		return i, true
	}
	var buf [64]byte
	i, ok := sh.byFold[string(appendFolded(buf[:0], key))]
	return i, ok
}

// appendFolded folds name exactly as encoding/json does (fold.go), so that
// two names fold alike if and only if bytes.EqualFold holds.
func appendFolded(out, in []byte) []byte {
	for i := 0; i < len(in); {
		if c := in[i]; c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			out = append(out, c)
			i++
			continue
		}
		r, n := utf8.DecodeRune(in[i:])
		out = utf8.AppendRune(out, foldRune(r))
		i += n
	}
	return out
}

func foldRune(r rune) rune {
	for {
		r2 := unicode.SimpleFold(r)
		if r2 <= r {
			return r2
		}
		r = r2
	}
}
