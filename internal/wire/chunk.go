package wire

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
)

// The fast path of Decode for a chunk (§4), the one body whose size is the
// sync's: the same checks in the same one pass (scanner.scan), which also
// notes where the top-level values and the records are, and then, instead
// of encoding/json's Unmarshal (a second and third pass over every record,
// and one allocation per record), a fill of the Chunk from those offsets:
// one copy of the records' bytes, sliced.
//
// It fills only what it is sure encoding/json would make the same way: the
// exact keys "seq", "records" and "final", with a JSON integer, an array
// and a boolean (or null). Anything else (another key that binds to a
// field, a value of the wrong type, an integer out of range) goes to
// Unmarshal, whose result or error Decode returns as before.
// FuzzDecodeChunk holds the two to the same result.

var (
	chunkType    = reflect.TypeFor[Chunk]()
	recordsShape = shapeOf(reflect.TypeFor[[]json.RawMessage]())
)

// DecodeChunkInPlace is Decode for a chunk body whose records may stay
// in data: the Chunk's records are slices of data, not copies, so the
// caller must neither change nor reuse data while it uses the Chunk. The
// checks and the errors are Decode's. It is for a receiver of large syncs
// that hands the records on and recycles its body buffers (the reference
// control plane with Config.Records).
func DecodeChunkInPlace(data []byte, c *Chunk, limits Limits) error {
	if err := precheck(data, limits); err != nil {
		return err
	}
	*c = Chunk{}
	return decodeChunk(data, c, limits, true)
}

// decodeChunk is Decode for a *Chunk that holds nothing yet; with alias,
// the records are slices of data.
func decodeChunk(data []byte, c *Chunk, limits Limits, alias bool) error {
	s := scannerPool.Get().(*scanner)
	s.collect = true
	err := s.scan(data, shapeOf(chunkType), limits.maxDepth())
	ok := err == nil && fillChunk(data, s.top, s.elems, c, alias)
	s.release()
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	*c = Chunk{}
	if err := json.Unmarshal(data, c); err != nil {
		return fromJSONError(err)
	}
	return nil
}

// fillChunk fills c from a checked body, given per top-level key the
// offsets of the key literal and of its value (top), and the offsets of
// the elements of the records array (elems). It reports false, leaving c
// partly filled, when it is not sure to match encoding/json.
func fillChunk(data []byte, top, elems []int, c *Chunk, alias bool) bool {
	if len(data) == 0 || data[skipSpaceAt(data, 0)] != '{' {
		return false // not an object: Unmarshal's type error
	}
	for k := 0; k+3 < len(top); k += 4 {
		key := data[top[k]+1 : top[k+1]-1]
		val := data[top[k+2]:top[k+3]]
		switch string(key) {
		case "seq":
			switch {
			case val[0] == 'n':
			case !isInteger(val):
				return false
			default:
				n, err := strconv.ParseInt(string(val), 10, 64)
				if err != nil {
					return false
				}
				c.Seq = n
			}
		case "records":
			switch val[0] {
			case 'n':
				c.Records = nil
			case '[':
				if len(elems)%2 != 0 {
					return false
				}
				recs := make([]json.RawMessage, len(elems)/2)
				if alias {
					// Capped, so that an append cannot reach the next
					// record.
					for e := 0; e < len(elems); e += 2 {
						recs[e/2] = data[elems[e]:elems[e+1]:elems[e+1]]
					}
					c.Records = recs
					continue
				}
				total := 0
				for e := 0; e < len(elems); e += 2 {
					total += elems[e+1] - elems[e]
				}
				buf := make([]byte, 0, total)
				for e := 0; e < len(elems); e += 2 {
					start := len(buf)
					buf = append(buf, data[elems[e]:elems[e+1]]...)
					recs[e/2] = buf[start:len(buf):len(buf)]
				}
				c.Records = recs
			default:
				return false
			}
		case "final":
			switch val[0] {
			case 't':
				c.Final = true
			case 'f':
				c.Final = false
			case 'n':
			default:
				return false
			}
		default:
			// A key that may bind to a field case-insensitively (or
			// through an escape) is left to encoding/json; others are
			// unknown fields, ignored.
			for _, b := range key {
				if b >= 0x80 || b == '\\' {
					return false
				}
			}
			if bytes.EqualFold(key, []byte("seq")) || bytes.EqualFold(key, []byte("records")) || bytes.EqualFold(key, []byte("final")) {
				return false
			}
		}
	}
	return true
}

// isInteger reports whether a JSON number has neither fraction nor
// exponent.
func isInteger(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c != '-' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func skipSpaceAt(d []byte, i int) int {
	for i < len(d) && (d[i] == ' ' || d[i] == '\t' || d[i] == '\n' || d[i] == '\r') {
		i++
	}
	return min(i, len(d)-1)
}
