// Package audit keeps the agent's audit trail: a local, append-only,
// hash-chained log of every audit event (Log), and the bounded queue that
// batches the same events to the control plane (Queue, PROTOCOL.md §6).
//
// # The log file
//
// One record per line, UTF-8, each line ending in "\n". A record is exactly
// this byte string, with no other spaces and the keys in this order:
//
//	{"seq":SEQ,"at":"AT","prev":"PREV","event":EVENT,"hash":"HASH"}
//
// where
//
//   - SEQ is the record's number in decimal, no leading zeros. The first
//     line is 1 and each line is one more than the line before.
//   - AT is when the record was written: exactly what Go's
//     time.Time.UTC().Format(time.RFC3339Nano) produces (RFC 3339, UTC,
//     ending in "Z", no trailing zeros in the fraction).
//   - PREV is 64 lowercase hex digits. On line 1 it is the log's genesis,
//     32 random bytes chosen when the log was created, so that no two logs
//     share a chain; on every later line it is the previous line's HASH.
//   - EVENT is the wire.Event as a JSON object. The agent writes
//     json.Marshal's compact form; a reader takes the bytes as they are.
//   - HASH is 64 lowercase hex digits: the SHA-256 given below.
//
// HASH is computed over the same ASCII strings as they appear in the line,
// and the exact bytes of EVENT (|| is concatenation):
//
//	SHA-256("rv-agent-audit/v1\n" || SEQ || "\n" || AT || "\n" || PREV || "\n" || EVENT)
//
// The first four parts never contain "\n" and EVENT comes last, so the
// encoding is unambiguous.
//
// A line is at most MaxLineBytes long, newline included.
//
// # What the chain proves, and what it cannot
//
// Verify finds any edited, removed, inserted or reordered line, as long as
// the lines after it were not rewritten too, and names the first bad line.
// It cannot see lines cut from the end: a log truncated after line n is a
// valid log of n lines. Nor can it see a log rewritten whole from some line
// on, with fresh hashes: the chain has no key, and whoever can write the
// file can compute SHA-256. Both leave a log whose head (last seq and hash)
// differs from every head it had before the change. So record Log.Head
// somewhere the host's root cannot rewrite (the agent's journal shipped off
// the host, a monitoring system, a ticket), and check the file against it
// with VerifyAgainst.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// MaxLineBytes caps one line of the log, its newline included. Verify and
// Open stop at a longer line, so a hostile file cannot make them hold more
// than this in memory; Append never writes one (see MaxFieldBytes).
const MaxLineBytes = 64 << 10

// MaxFieldBytes caps each string field of an event. Append and Queue.Emit
// cut a longer string at a UTF-8 boundary and end it with "…". With at most
// ten string fields, each at most 6×MaxFieldBytes once JSON-escaped, every
// record fits in MaxLineBytes.
const MaxFieldBytes = 512

// hashDomain starts every hashed record: a version for the format and a
// separation from every other SHA-256 the agent computes.
const hashDomain = "rv-agent-audit/v1\n"

// The fixed parts of a record.
const (
	partSeq   = `{"seq":`
	partAt    = `,"at":"`
	partPrev  = `","prev":"`
	partEvent = `","event":`
	partHash  = `,"hash":"`
	partEnd   = `"}`
	hexLen    = 2 * sha256.Size
	// tailLen is the length of `,"hash":"<64 hex>"}`, the end of a record.
	tailLen = len(partHash) + hexLen + len(partEnd)
	// maxAtLen bounds AT: "-0001-01-01T00:00:00.000000000Z" is 31 bytes.
	maxAtLen = 40
	// maxEventDepth bounds the nesting inside EVENT. Events are flat
	// today; a few levels leave room for a later version.
	maxEventDepth = 8
)

// record is one parsed line. at, event and the hex strings alias the line.
type record struct {
	seq   uint64
	at    []byte
	prev  [sha256.Size]byte
	event []byte
	hash  [sha256.Size]byte
}

// recordHash computes HASH (see the package documentation). buf is scratch
// space, returned for reuse.
func recordHash(buf []byte, seq uint64, at []byte, prev *[sha256.Size]byte, event []byte) ([sha256.Size]byte, []byte) {
	buf = append(buf[:0], hashDomain...)
	buf = strconv.AppendUint(buf, seq, 10)
	buf = append(buf, '\n')
	buf = append(buf, at...)
	buf = append(buf, '\n')
	buf = hex.AppendEncode(buf, prev[:])
	buf = append(buf, '\n')
	buf = append(buf, event...)
	return sha256.Sum256(buf), buf
}

// appendRecord appends the line of a record, newline included, to buf.
func appendRecord(buf []byte, seq uint64, at string, prev *[sha256.Size]byte, event []byte, hash *[sha256.Size]byte) []byte {
	buf = append(buf, partSeq...)
	buf = strconv.AppendUint(buf, seq, 10)
	buf = append(buf, partAt...)
	buf = append(buf, at...)
	buf = append(buf, partPrev...)
	buf = hex.AppendEncode(buf, prev[:])
	buf = append(buf, partEvent...)
	buf = append(buf, event...)
	buf = append(buf, partHash...)
	buf = hex.AppendEncode(buf, hash[:])
	buf = append(buf, partEnd...)
	return append(buf, '\n')
}

// The reasons of a VerifyError. None of them contains input bytes.
const (
	reasonTooLong     = "line is longer than the limit of 65536 bytes"
	reasonTorn        = "last line does not end in a newline (a torn write, or the file was cut)"
	reasonEmpty       = "line is empty"
	reasonShape       = "line is not an audit record in canonical form"
	reasonSeqSyntax   = "seq is not a canonical decimal number"
	reasonAtSyntax    = "at is not a canonical RFC 3339 UTC time"
	reasonPrevSyntax  = "prev is not 64 lowercase hex digits"
	reasonHashSyntax  = "hash is not 64 lowercase hex digits"
	reasonEventJSON   = "event is not a valid JSON audit event"
	reasonEventType   = "event has no type"
	reasonEventAt     = "event time is missing or not UTC"
	reasonHash        = "hash does not match the record (the line was edited)"
	reasonPrev        = "prev does not match the previous line's hash (a line was removed, inserted or moved)"
	reasonAnchorShort = "log ends before the anchor's seq (lines were cut from the end)"
	reasonAnchorHash  = "hash differs from the anchor's (the log was rewritten)"
	reasonRead        = "cannot read the log"
)

// ErrBroken is wrapped by every *VerifyError: the log is not an intact
// chain. Callers tell it from I/O errors with errors.Is.
var ErrBroken = errors.New("audit log chain is broken")

// VerifyError names the first bad line of a log and why it is bad. It never
// contains a byte of the line: Reason is a fixed phrase, with at most
// numbers the verifier formatted itself.
type VerifyError struct {
	// Line is the 1-based line number. For a log that ends before its
	// anchor, it is the line after the last one.
	Line   int
	Reason string
}

func (e *VerifyError) Error() string {
	return "line " + strconv.Itoa(e.Line) + ": " + e.Reason
}

// Unwrap returns ErrBroken.
func (e *VerifyError) Unwrap() error { return ErrBroken }

// parseRecord splits a line (without its newline) into its parts, checking
// that it is in canonical form. It does not check the chain.
func parseRecord(line []byte) (record, string) {
	var r record
	rest, ok := bytes.CutPrefix(line, []byte(partSeq))
	if !ok || len(rest) < tailLen {
		return r, reasonShape
	}
	// The tail has a fixed length: split it off first, so that whatever
	// EVENT holds cannot be mistaken for a delimiter.
	tail := rest[len(rest)-tailLen:]
	rest = rest[:len(rest)-tailLen]
	if !bytes.HasPrefix(tail, []byte(partHash)) || !bytes.HasSuffix(tail, []byte(partEnd)) {
		return r, reasonShape
	}
	if !decodeHex(&r.hash, tail[len(partHash):len(partHash)+hexLen]) {
		return r, reasonHashSyntax
	}

	i := bytes.IndexByte(rest, ',')
	if i < 0 {
		return r, reasonShape
	}
	seq, ok := parseSeq(rest[:i])
	if !ok {
		return r, reasonSeqSyntax
	}
	r.seq = seq
	rest, ok = bytes.CutPrefix(rest[i:], []byte(partAt))
	if !ok {
		return r, reasonShape
	}
	i = bytes.IndexByte(rest, '"')
	if i < 0 || i > maxAtLen {
		return r, reasonShape
	}
	r.at = rest[:i]
	if !canonicalTime(r.at) {
		return r, reasonAtSyntax
	}
	rest, ok = bytes.CutPrefix(rest[i:], []byte(partPrev))
	if !ok || len(rest) < hexLen {
		return r, reasonShape
	}
	if !decodeHex(&r.prev, rest[:hexLen]) {
		return r, reasonPrevSyntax
	}
	rest, ok = bytes.CutPrefix(rest[hexLen:], []byte(partEvent))
	if !ok || len(rest) < 2 || rest[0] != '{' || rest[len(rest)-1] != '}' {
		return r, reasonShape
	}
	r.event = rest
	return r, ""
}

// checkEvent checks that EVENT is an audit event: valid JSON without
// duplicate keys (wire.Decode), with a type and a UTC time.
func checkEvent(event []byte) string {
	var ev wire.Event
	if err := wire.Decode(event, &ev, wire.Limits{MaxBytes: MaxLineBytes, MaxDepth: maxEventDepth}); err != nil {
		return reasonEventJSON
	}
	if ev.Type == "" {
		return reasonEventType
	}
	if ev.At.IsZero() || ev.At.Location() != time.UTC {
		return reasonEventAt
	}
	return ""
}

// parseSeq parses a canonical positive decimal: no sign, no leading zero.
func parseSeq(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 || b[0] == '0' {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (^uint64(0)-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// decodeHex decodes exactly 64 lowercase hex digits into dst.
func decodeHex(dst *[sha256.Size]byte, src []byte) bool {
	if len(src) != hexLen {
		return false
	}
	for _, c := range src {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	_, err := hex.Decode(dst[:], src)
	return err == nil
}

// canonicalTime reports whether b is what time.Time.UTC().Format(
// time.RFC3339Nano) writes.
func canonicalTime(b []byte) bool {
	t, err := time.Parse(time.RFC3339Nano, string(b))
	if err != nil || t.Location() != time.UTC {
		return false
	}
	return t.Format(time.RFC3339Nano) == string(b)
}

// formatTime is the canonical AT of t.
func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// knownTypes are the event types of PROTOCOL.md §6.
var knownTypes = map[string]bool{
	wire.EventRegistered:         true,
	wire.EventTaskClaimed:        true,
	wire.EventTaskCompleted:      true,
	wire.EventTaskFailed:         true,
	wire.EventSelfUpdateApplied:  true,
	wire.EventSelfUpdateReverted: true,
	wire.EventSelfUpdateRejected: true,
	wire.EventVaultReloaded:      true,
	wire.EventVaultPlaintext:     true,
	wire.EventDisabled:           true,
	wire.EventEventsDropped:      true,
}

// ErrInvalidEvent is wrapped by the error for an event that Append or Emit
// refuses: an unknown type, or a time outside RFC 3339's years 0–9999.
var ErrInvalidEvent = errors.New("invalid audit event")

// normalizeEvent readies ev for the log and the wire: a zero At becomes
// now, every At becomes UTC, long strings are cut to MaxFieldBytes.
func normalizeEvent(ev wire.Event, now func() time.Time) (wire.Event, error) {
	if !knownTypes[ev.Type] {
		return ev, fmt.Errorf("%w: unknown type", ErrInvalidEvent)
	}
	if ev.At.IsZero() {
		ev.At = now()
	}
	ev.At = ev.At.UTC()
	if y := ev.At.Year(); y < 0 || y > 9999 {
		return ev, fmt.Errorf("%w: time outside years 0-9999", ErrInvalidEvent)
	}
	for _, s := range []*string{&ev.Type, &ev.TaskID, &ev.Method, &ev.Connector, &ev.ErrorClass,
		&ev.From, &ev.To, &ev.Reason, &ev.Version} {
		*s = cut(*s)
	}
	return ev, nil
}

// cut shortens s to at most MaxFieldBytes, at a UTF-8 boundary, ending in "…".
func cut(s string) string {
	if len(s) <= MaxFieldBytes {
		return s
	}
	const ellipsis = "…"
	n := MaxFieldBytes - len(ellipsis)
	for n > 0 && s[n]&0xC0 == 0x80 { // do not split a UTF-8 sequence
		n--
	}
	return s[:n] + ellipsis
}
