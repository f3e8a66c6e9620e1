package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Report describes an intact log.
type Report struct {
	// Events is the number of records (lines).
	Events int
	// Genesis is line 1's prev, in hex; empty for an empty log.
	Genesis string
	// HeadSeq and HeadHash are the last record's seq and hash (hex); 0 and
	// empty for an empty log. Together they are the log's anchor.
	HeadSeq  uint64
	HeadHash string
	// First and Last are the AT of the first and the last record.
	First, Last time.Time
	// Bytes is the length of the log.
	Bytes int64
}

// Verify reads a whole log from r and checks every line: its length, its
// canonical form (see the package documentation), its event (valid JSON,
// no duplicate keys, a type, a UTC time), that its seq is one more than
// the line before (1 on the first line), that its prev is the previous
// line's hash, and that its hash recomputes.
//
// It returns a *VerifyError (wrapping ErrBroken) for the first bad line, or
// an error wrapping the reader's error. It holds at most MaxLineBytes of the
// input at a time. It cannot tell a log cut after its last intact line from
// a shorter log: see VerifyAgainst.
func Verify(r io.Reader) (Report, error) {
	var c chain
	err := c.run(r)
	return c.report(), err
}

// VerifyAgainst is Verify, and also checks that the log reaches an anchor
// taken earlier from Log.Head (or Report): the line with seq headSeq exists
// and has hash headHash. The log may have grown since. headSeq 0 (with an
// empty headHash) is the anchor of an empty log, which every log reaches.
func VerifyAgainst(r io.Reader, headSeq uint64, headHash string) (Report, error) {
	var c chain
	if headSeq > 0 {
		if !decodeHex(&c.anchorHash, []byte(headHash)) {
			return Report{}, errors.New("invalid anchor: the hash is not 64 lowercase hex digits")
		}
	} else if headHash != "" {
		return Report{}, errors.New("invalid anchor: seq 0 has no hash")
	}
	c.anchorSeq = headSeq
	err := c.run(r)
	if err == nil && headSeq > c.seq {
		err = &VerifyError{Line: c.lines + 1, Reason: reasonAnchorShort}
	}
	return c.report(), err
}

// VerifyFile verifies the log at path (what `tier3-agent audit verify
// [FILE]` does). On success it prints one line to w:
//
//	audit log PATH: N events, chain intact, head seq S hash H
//
// Otherwise it returns an error that names the path and the first bad line
// (wrapping a *VerifyError) or the I/O failure. Neither quotes the log.
func VerifyFile(path string, w io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("cannot open audit log: %w", err)
	}
	defer f.Close()
	rep, err := Verify(f)
	if err != nil {
		return fmt.Errorf("audit log %s: %w", path, err)
	}
	if rep.Events == 0 {
		_, err = fmt.Fprintf(w, "audit log %s: 0 events, empty\n", path)
	} else {
		_, err = fmt.Fprintf(w, "audit log %s: %d events, chain intact, head seq %d hash %s\n",
			path, rep.Events, rep.HeadSeq, rep.HeadHash)
	}
	return err
}

// chain is the state of a verification, fed one line at a time.
type chain struct {
	lines   int
	seq     uint64
	prev    [sha256.Size]byte // the last line's hash
	genesis [sha256.Size]byte
	first   []byte // AT of line 1 (a copy)
	last    []byte // AT of the last line (a copy)
	bytes   int64
	scratch []byte

	anchorSeq  uint64
	anchorHash [sha256.Size]byte
}

// readers holds line buffers of MaxLineBytes for reuse.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, MaxLineBytes) }}

func (c *chain) run(r io.Reader) error {
	br := readers.Get().(*bufio.Reader)
	br.Reset(r)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			if verr := c.next(line[:len(line)-1]); verr != nil {
				return verr
			}
			c.bytes += int64(len(line))
		case errors.Is(err, bufio.ErrBufferFull):
			return &VerifyError{Line: c.lines + 1, Reason: reasonTooLong}
		case err == io.EOF:
			if len(line) > 0 {
				return &VerifyError{Line: c.lines + 1, Reason: reasonTorn}
			}
			return nil
		default:
			return fmt.Errorf("%s after line %d: %w", reasonRead, c.lines, err)
		}
	}
}

// next checks one line, without its newline.
func (c *chain) next(line []byte) *VerifyError {
	n := c.lines + 1
	fail := func(reason string) *VerifyError { return &VerifyError{Line: n, Reason: reason} }
	if len(line) == 0 {
		return fail(reasonEmpty)
	}
	rec, reason := parseRecord(line)
	if reason != "" {
		return fail(reason)
	}
	// The hash first: a line whose own hash fails was edited, whatever
	// else is wrong with it; a line that is intact but out of place is
	// found by seq and prev.
	var sum [sha256.Size]byte
	sum, c.scratch = recordHash(c.scratch, rec.seq, rec.at, &rec.prev, rec.event)
	if sum != rec.hash {
		return fail(reasonHash)
	}
	if want := c.seq + 1; rec.seq != want {
		return fail(fmt.Sprintf("seq is %d, want %d (a line was removed, inserted or moved)", rec.seq, want))
	}
	if c.lines > 0 && rec.prev != c.prev {
		return fail(reasonPrev)
	}
	if reason := checkEvent(rec.event); reason != "" {
		return fail(reason)
	}
	if c.lines == 0 {
		c.genesis = rec.prev
		c.first = append(c.first[:0], rec.at...)
	}
	if c.anchorSeq == rec.seq && rec.hash != c.anchorHash {
		return fail(reasonAnchorHash)
	}
	c.lines, c.seq, c.prev = n, rec.seq, rec.hash
	c.last = append(c.last[:0], rec.at...)
	return nil
}

func (c *chain) report() Report {
	rep := Report{Events: c.lines, HeadSeq: c.seq, Bytes: c.bytes}
	if c.lines > 0 {
		rep.Genesis = hex.EncodeToString(c.genesis[:])
		rep.HeadHash = hex.EncodeToString(c.prev[:])
		rep.First, _ = time.Parse(time.RFC3339Nano, string(c.first))
		rep.Last, _ = time.Parse(time.RFC3339Nano, string(c.last))
	}
	return rep
}

// verifyBytes is Verify on a byte slice (tests and the fuzz target).
func verifyBytes(b []byte) (Report, error) { return Verify(bytes.NewReader(b)) }
