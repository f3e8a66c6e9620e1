package redact

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"math/bits"
	"slices"
	"unsafe"
)

// The index. For every pattern (one form of one secret) it holds:
//
//   - keyed 64-bit hashes of some of the pattern's 8-byte windows (map
//     keys, and one bit each of a filter in front of the map);
//   - the pattern's length and flags;
//   - tag = HMAC-SHA256(key, pad(pattern)), where pad is SHA-256's own
//     padding (0x80, zeros, the length in bits), so that the MAC input is
//     whole 64-byte blocks.
//
// Scanning slides an 8-byte window over the input: hash, filter bit, map
// lookup; on a hit, the candidate is confirmed with the HMAC, compared in
// constant time.
//
// Stride. A pattern of length m ≥ stride+7 holds m-7 ≥ stride windows, so
// wherever it occurs, one of its last stride windows starts at a multiple
// of stride. Such patterns (the "long" table) index their last stride
// windows and the scan hashes every stride-th position only. Shorter
// patterns (secrets of 8 to 14 bytes and their forms) go to the "short"
// table, which indexes their last window and is scanned at every position;
// it is empty, and costs nothing, when every secret has 15 bytes or more.
//
// Last windows, not first: many secrets share a prefix (an "sk_live_"
// style scheme, a Salesforce org ID, a JWT header), and text that shares it
// would cost an HMAC per candidate. Suffixes are random.
//
// Why the padded MAC input: SHA-256 copies a message's last partial block
// into its state (and Sum copies that state onto the stack), where it
// would outlive the call on the Go heap and stack. With whole blocks,
// the hash reads the message in place and its buffer never holds a byte
// of it; the tail of a candidate is padded in a locked scratch buffer.

const (
	window    = 8
	stride    = 8
	longMin   = stride + window - 1
	macPadMax = 64 + 9 // most padding a message needs: 0x80, zeros, 8-byte length
	keySize   = 64 + 64 + 32
	noSlot    = 0
)

// pattern is one indexed form of a secret.
type pattern struct {
	tag    [sha256.Size]byte
	length uint32
	flags  uint8
}

// slot is one indexed window of a pattern.
type slot struct {
	hash uint64
	pat  uint32 // index into Redactor.patterns
	off  uint32 // where the window starts in the pattern
	next uint32 // index+1 of the next slot with the same hash; 0 ends the chain
}

// table maps window hashes to slots.
type table struct {
	step   int
	index  map[uint64]uint32 // hash → head of a slot chain (index+1)
	slots  []slot
	filter []uint64 // one bit per hash (its top bits)
	shift  uint     // 64 - log2(filter bits)
}

func newTable(step int) table {
	lg := filterBits(0)
	return table{step: step, index: make(map[uint64]uint32), filter: make([]uint64, 1<<lg/64), shift: 64 - lg}
}

// prepared is a pattern ready to insert: its tag, and the hashes of the
// windows to index (the last one first).
type prepared struct {
	pat    pattern
	long   bool
	hashes [stride]uint64
	n      int
}

// keys is the layout of the locked key buffer.
type keys struct{ b []byte }

func (k keys) ipad() []byte { return k.b[0:64] }
func (k keys) opad() []byte { return k.b[64:128] }

func (k keys) hashKeys() (k0, k1, k2, k3 uint64) {
	h := k.b[128:160]
	return binary.LittleEndian.Uint64(h[0:]), binary.LittleEndian.Uint64(h[8:]) | 1,
		binary.LittleEndian.Uint64(h[16:]), binary.LittleEndian.Uint64(h[24:]) | 1
}

// mix is the keyed hash of an 8-byte window: two folded 64×64→128-bit
// multiplications (the wyhash mixer) with random keys. Without the keys it
// does not give the 8 bytes back; it is not a PRF, which is why every hit is
// confirmed with the HMAC.
func mix(w, k0, k1, k2, k3 uint64) uint64 {
	hi, lo := bits.Mul64(w^k0, k1)
	hi, lo = bits.Mul64(hi^lo^k2, k3)
	return hi ^ lo
}

// padLen is the length of p's MAC input: p, 0x80, zeros, 8 bytes of length,
// a multiple of 64.
func padLen(n int) int { return (n + 9 + 63) &^ 63 }

// writePad writes the padding of a message of total bytes after the
// t = total%64 bytes of its tail in buf, and returns the tail's padded
// length (64 or 128).
func writePad(buf []byte, t, total int) int {
	end := padLen(t)
	buf[t] = 0x80
	clear(buf[t+1 : end-8])
	binary.BigEndian.PutUint64(buf[end-8:end], uint64(total)*8)
	return end
}

// macBlocks computes the tag of a message given as whole blocks: body
// (a multiple of 64 bytes, read in place) followed by tail (the padded
// remainder, 64 or 128 bytes).
func macBlocks(k keys, body, tail []byte, tag *[sha256.Size]byte) {
	h := sha256.New()
	h.Write(k.ipad())
	h.Write(body)
	h.Write(tail)
	var inner [sha256.Size]byte
	h.Sum(inner[:0])
	h.Reset()
	h.Write(k.opad())
	h.Write(inner[:])
	h.Sum(tag[:0])
}

// macInPlace computes the tag of p[:m], writing the padding into p[m:]
// (which has room for it).
func macInPlace(k keys, p []byte, m int, tag *[sha256.Size]byte) {
	body := m &^ 63
	end := body + writePad(p[body:], m-body, m)
	macBlocks(k, p[:body], p[body:end], tag)
}

// confirm reports whether cand is the pattern of e. The tail of cand is
// copied into the locked scratch buffer, padded, and wiped.
func (r *Redactor) confirm(k keys, cand []byte, want *[sha256.Size]byte) bool {
	body := len(cand) &^ 63
	r.scratchMu.Lock()
	s := r.scratch.Bytes()
	t := copy(s, cand[body:])
	end := writePad(s, t, len(cand))
	var tag [sha256.Size]byte
	macBlocks(k, cand[:body], s[:end], &tag)
	clear(s[:end])
	r.scratchMu.Unlock()
	return subtle.ConstantTimeCompare(tag[:], want[:]) == 1
}

// filterBits sizes the filter: about 32 bits per entry (a false positive
// rate near 1/32 before the map), a power of two between 2^12 and 2^24.
func filterBits(entries int) uint {
	lg := uint(12)
	for lg < 24 && 1<<lg < 32*entries {
		lg++
	}
	return lg
}

func (t *table) setFilterBit(h uint64) {
	b := h >> t.shift
	t.filter[b>>6] |= 1 << (b & 63)
}

func (t *table) add(sl slot) {
	sl.next = t.index[sl.hash]
	t.slots = append(t.slots, sl)
	t.index[sl.hash] = uint32(len(t.slots))
	if lg := filterBits(len(t.slots)); 64-t.shift != lg {
		t.filter = make([]uint64, 1<<lg/64)
		t.shift = 64 - lg
		for i := range t.slots {
			t.setFilterBit(t.slots[i].hash)
		}
	} else {
		t.setFilterBit(sl.hash)
	}
}

// prepare computes what the index keeps of the pattern p[:m] (p has room
// for the MAC padding after it).
func prepare(k keys, p []byte, m int, flags uint8) prepared {
	k0, k1, k2, k3 := k.hashKeys()
	pp := prepared{pat: pattern{length: uint32(m), flags: flags}, long: m >= longMin, n: 1}
	if pp.long {
		pp.n = stride
	}
	for q := range pp.n {
		off := m - window - q
		pp.hashes[q] = mix(binary.LittleEndian.Uint64(p[off:off+window]), k0, k1, k2, k3)
	}
	macInPlace(k, p, m, &pp.pat.tag)
	return pp
}

// insert adds pp unless the same pattern is already indexed, and reports
// whether it did. Callers hold r.mu for writing.
func (r *Redactor) insert(pp prepared) bool {
	t := &r.short
	if pp.long {
		t = &r.long
	}
	m := pp.pat.length
	for i := t.index[pp.hashes[0]]; i != noSlot; i = t.slots[i-1].next {
		sl := &t.slots[i-1]
		o := &r.patterns[sl.pat]
		if sl.off == m-window && o.length == m && subtle.ConstantTimeCompare(o.tag[:], pp.pat.tag[:]) == 1 {
			return false
		}
	}
	r.patterns = append(r.patterns, pp.pat)
	pat := uint32(len(r.patterns) - 1)
	for q := range pp.n {
		t.add(slot{hash: pp.hashes[q], pat: pat, off: m - window - uint32(q)})
	}
	r.maxLen = max(r.maxLen, int(m))
	return true
}

// span is a half-open byte range [start, end) of an input.
type span struct{ start, end int }

// find appends to out the spans of b that hold a pattern, widened over the
// partial base64 characters and padding around them, sorted and merged
// (overlapping or touching spans become one). Callers hold r.mu for
// reading and have checked that r is not destroyed.
func (r *Redactor) find(k keys, b []byte, out []span) []span {
	n0 := len(out)
	if len(b) < window {
		return out
	}
	if len(r.short.slots) > 0 {
		out = r.scan(&r.short, k, b, out)
	}
	if len(r.long.slots) > 0 {
		out = r.scan(&r.long, k, b, out)
	}
	return mergeSpans(out, n0)
}

// contains reports whether b holds a pattern: find without the spans.
// Callers hold r.mu for reading and have checked that r is not destroyed.
func (r *Redactor) contains(k keys, b []byte) bool {
	if len(b) < window {
		return false
	}
	return len(r.short.slots) > 0 && r.scanAny(&r.short, k, b) ||
		len(r.long.slots) > 0 && r.scanAny(&r.long, k, b)
}

// scanAny reports whether t confirms a match in b: scan stopping at the
// first.
func (r *Redactor) scanAny(t *table, k keys, b []byte) bool {
	found := false
	r.matches(t, k, b, func(int, int, *pattern) bool {
		found = true
		return false
	})
	return found
}

// scan appends the spans of t's confirmed matches in b, widened.
func (r *Redactor) scan(t *table, k keys, b []byte, out []span) []span {
	r.matches(t, k, b, func(start, end int, p *pattern) bool {
		out = append(out, widen(b, span{start, end}, p.flags))
		return true
	})
	return out
}

// matches calls hit with every match of t in b that confirm accepts, in
// the order the windows are hashed, until hit returns false.
func (r *Redactor) matches(t *table, k keys, b []byte, hit func(start, end int, p *pattern) bool) {
	k0, k1, k2, k3 := k.hashKeys()
	filter, shift, index, step := t.filter, t.shift, t.index, t.step
	for i := 0; i+window <= len(b); i += step {
		h := mix(binary.LittleEndian.Uint64(b[i:i+window]), k0, k1, k2, k3)
		bit := h >> shift
		if filter[bit>>6]&(1<<(bit&63)) == 0 {
			continue
		}
		head, ok := index[h]
		if !ok {
			continue
		}
		for j := head; j != noSlot; j = t.slots[j-1].next {
			sl := &t.slots[j-1]
			p := &r.patterns[sl.pat]
			start := i - int(sl.off)
			end := start + int(p.length)
			if start >= 0 && end <= len(b) && r.confirm(k, b[start:end], &p.tag) && !hit(start, end, p) {
				return
			}
		}
	}
}

// widen extends a base64 match over the characters that carry part of the
// secret's bits, and over the padding that follows.
func widen(b []byte, s span, flags uint8) span {
	if flags&flagBase64 == 0 {
		return s
	}
	if flags&flagPartialBefore != 0 && s.start > 0 && isBase64Char(b[s.start-1]) {
		s.start--
	}
	if flags&flagPartialAfter != 0 && s.end < len(b) && isBase64Char(b[s.end]) {
		s.end++
	}
	for pad := 0; pad < 2 && s.end < len(b) && b[s.end] == '='; pad++ {
		s.end++
	}
	return s
}

// mergeSpans sorts out[n0:] and merges overlapping or touching spans.
func mergeSpans(out []span, n0 int) []span {
	s := out[n0:]
	if len(s) < 2 {
		return out
	}
	slices.SortFunc(s, func(a, b span) int { return a.start - b.start })
	w := 0
	for _, x := range s[1:] {
		if x.start <= s[w].end {
			s[w].end = max(s[w].end, x.end)
			continue
		}
		w++
		s[w] = x
	}
	return out[:n0+w+1]
}

// replace returns b with every span replaced by the marker (spans are
// sorted and disjoint), and appends to at where each marker starts.
func replace(b []byte, spans []span, at []int) ([]byte, []int) {
	size := len(b)
	for _, s := range spans {
		size += len(marker) - (s.end - s.start)
	}
	out := make([]byte, 0, size)
	last := 0
	for _, s := range spans {
		out = append(out, b[last:s.start]...)
		at = append(at, len(out))
		out = append(out, marker...)
		last = s.end
	}
	return append(out, b[last:]...), at
}

// refind finds the matches in b that overlap a marker (starting at the
// offsets in at): the only ones a replacement can have made. It scans a
// region around each marker wide enough for the longest pattern and for
// widening.
func (r *Redactor) refind(k keys, b []byte, at []int, out []span) []span {
	reach := r.maxLen + 3
	for i := 0; i < len(at); {
		lo, hi := max(at[i]-reach, 0), min(at[i]+len(marker)+reach, len(b))
		// Merge the regions of the markers that follow.
		for i++; i < len(at) && at[i]-reach < hi; i++ {
			hi = min(at[i]+len(marker)+reach, len(b))
		}
		n := len(out)
		out = r.find(k, b[lo:hi], out)
		for j := n; j < len(out); j++ {
			out[j].start += lo
			out[j].end += lo
		}
	}
	return mergeSpans(out, 0)
}

// stringBytes views s as bytes, without a copy (a copy of a string that
// may hold a secret would be one more copy on the heap). The bytes are
// only read.
func stringBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
