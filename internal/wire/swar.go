package wire

// SWAR ("SIMD within a register"): eight bytes of a JSON string checked at
// once, so that a scanner skips the plain ASCII runs that make up most of
// a string's content without looking at each byte.

const (
	lsb8 = 0x0101010101010101
	msb8 = 0x8080808080808080
)

// zero8 sets the top bit of each byte of the result above a zero byte of x
// (exact for the lowest zero byte; a false positive can only follow a true
// one, which is enough to stop a scan).
func zero8(x uint64) uint64 { return (x - lsb8) &^ x }

// Byte8 returns a mask whose top bit is set in each byte of w that equals c
// (as zero8: exact up to the first match).
func Byte8(w uint64, c byte) uint64 { return zero8(w ^ (lsb8 * uint64(c))) }

// StringStops8 returns a mask whose top bit is set in the bytes of w
// (little-endian) that end a plain run of a JSON string's content: a
// quote, a backslash, a control character (under 0x20), a byte of a
// multi-byte UTF-8 sequence (0x80 and over), and the bytes of extra (a
// mask from Byte8). It is 0 when there is none, and exact for the first
// one: bits.TrailingZeros64(m)/8 is its index.
func StringStops8(w, extra uint64) uint64 {
	return (Byte8(w, '"') | Byte8(w, '\\') | (w-lsb8*0x20)&^w | w | extra) & msb8
}
