package wire

import (
	"encoding/binary"
	"math/bits"
	"testing"
)

// TestStringStops8 checks the word-at-a-time test against the byte rule:
// every byte value at every position, among fillers that do not stop a run
// and fillers that do (so that a stop after the first must not hide it).
func TestStringStops8(t *testing.T) {
	stops := func(c byte) bool { return c == '"' || c == '\\' || c < 0x20 || c >= 0x80 || c == '<' }
	for c := 0; c < 256; c++ {
		for pos := 0; pos < 8; pos++ {
			for _, fill := range []byte{'a', ' ', '~', '0', 0x7f, 0x1f, 0x80, 0xff, '"', 0} {
				var w [8]byte
				for k := range w {
					w[k] = fill
				}
				w[pos] = byte(c)
				first := 8
				for k, x := range w {
					if stops(x) {
						first = k
						break
					}
				}
				x := binary.LittleEndian.Uint64(w[:])
				m := StringStops8(x, Byte8(x, '<'))
				if got := bits.TrailingZeros64(m) >> 3; got != first {
					t.Fatalf("StringStops8(%q) points at byte %d, want %d", w, got, first)
				}
			}
		}
	}
}
