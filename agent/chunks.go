package agent

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/rapidvalue/tier3-agent/agent/redact"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// Chunks (PROTOCOL.md §4): how a sync method streams its records back.
//
// A method opens a recordStream with t.records, hands it each record as
// it reads it (add), and ends with close, which sends the final chunk and
// returns the outcome. Memory stays flat whatever the size of the sync:
// the stream holds the chunk being filled and, at most, the one chunk in
// flight, each at most maxChunkBody bytes.
//
// # Redaction
//
// Every record is redacted whole (redact.JSON: its strings matched on
// their decoded text, and its raw text across tokens) before it is
// buffered, and a record is never split across chunks. So a secret inside
// one record is found wherever it sits in that record, whatever chunk or
// page boundary falls before or after the record. What this does not
// cover: a secret split by the target itself across two records (half in
// one, half in the next), or across two values that the control plane
// later joins; each record is scrubbed alone. The page around the records
// (the JSON outside the items array) is never sent, so it is not scrubbed.
//
// # What the control plane accepts
//
// A chunk is decoded strictly (wire.Decode): no duplicate keys, valid
// UTF-8, no unpaired surrogate escapes, nesting at most wire.MaxDepth, at
// most 1 MiB. Each record is checked against those rules (wire.Check)
// before it is buffered: a record from a target that breaks one fails the
// task with target_error (one over the chunk's size once encoded:
// result_too_large), rather than a chunk being refused half-way through.
//
// # The single pass
//
// encode does the above in four passes over a record (redact.JSON checks
// the JSON and scans it, appendCompactJSON, wire.Check). http.sync's page
// scanner (syncpage.go) does the last two while it reads the record, and
// notes its escaped strings; encodeRecord then only asks the redactor
// whether the record holds a secret (redact.JSONClean: the raw text, and
// the decoded text of the escaped strings). A record that does, or that
// the scanner could not vouch for, goes through encode: the bytes sent and
// the errors are encode's, always (FuzzSyncPageOracle).
const (
	// maxChunkSize caps records per chunk (envelope chunk_size and
	// RV_AGENT_CHUNK_SIZE alike).
	maxChunkSize = 100_000
	// maxChunkBody caps the encoded body of one chunk: the control plane's
	// limit on every body (1 MiB).
	maxChunkBody = wire.MaxBodyBytes
	// chunkEnvelope is the most that a body adds around its records:
	// {"seq":<19 digits>,"records":[],"final":false}
	chunkEnvelope = len(`{"seq":,"records":[],"final":false}`) + 20
	// maxRecordBytes caps one record once redacted and encoded: it must
	// fit in a chunk alone.
	maxRecordBytes = maxChunkBody - chunkEnvelope
	// maxRecordDepth caps a record's nesting: a chunk adds two levels (its
	// object and the records array) and the control plane accepts
	// wire.MaxDepth.
	maxRecordDepth = wire.MaxDepth - 2
)

// chunkSize returns the task's records per chunk: the envelope's
// chunk_size, else RV_AGENT_CHUNK_SIZE. Methods call it from parse, so
// that a bad value fails the task before any target is contacted.
func (t *taskRun) chunkSize() (int, error) {
	n := t.env.ChunkSize
	if n == 0 {
		n = t.a.cfg.ChunkSize
	}
	if n == 0 {
		n = wire.DefaultChunkSize
	}
	if n < 1 || n > maxChunkSize {
		return 0, invalid("chunk_size must be 1 to %d", maxChunkSize)
	}
	return n, nil
}

// recordStream sends one task's records as chunks: seq from 0 rising by
// one, one chunk in flight (chunk n+1 is posted only after n is
// acknowledged), the last one with "final": true.
//
// The method's goroutine calls add, close and abort; a sender goroutine
// posts the chunks, so that the method reads and encodes chunk n+1 while
// chunk n is in flight.
type recordStream struct {
	t    *taskRun
	ctx  context.Context
	size int // records per chunk, at most

	// The chunk being filled: body holds `{"seq":N,"records":[` and the
	// records so far, comma-separated.
	body    []byte
	n       int   // records in body
	nbytes  int64 // their bytes
	seq     int64
	added   int64  // records added so far: the index of the next one
	scratch []byte // one record being encoded
	closed  bool

	queue chan pendingChunk // to the sender; unbuffered
	free  chan []byte       // bodies the sender is done with
	done  chan struct{}     // closed when the sender has returned
	// Written by the sender before done is closed; read after.
	err error
	out outcome
}

type pendingChunk struct {
	seq   int64
	body  []byte
	n     int
	bytes int64
}

// records opens the task's record stream. ctx is the task's: when it ends,
// so does the stream. Call close at the end of a sync, and abort (defer
// it) on every path: after close it does nothing.
func (t *taskRun) records(ctx context.Context) (*recordStream, error) {
	size, err := t.chunkSize()
	if err != nil {
		return nil, err
	}
	s := &recordStream{
		t: t, ctx: ctx, size: size,
		queue: make(chan pendingChunk),
		free:  make(chan []byte, 2),
		done:  make(chan struct{}),
	}
	s.body = s.start(make([]byte, 0, 64<<10))
	go s.sender()
	return s, nil
}

func (s *recordStream) start(b []byte) []byte {
	b = append(b[:0], `{"seq":`...)
	b = strconv.AppendInt(b, s.seq, 10)
	return append(b, `,"records":[`...)
}

// add redacts raw (one record, valid JSON), encodes it and buffers it,
// posting the chunk before it if that one is full (put). raw is not kept:
// the caller may reuse it. An error ends the stream: the task must stop
// (errLeaseLost and errCancelled have already cancelled it).
func (s *recordStream) add(raw []byte) error {
	if err := s.open(); err != nil {
		return err
	}
	rec, err := s.encode(raw)
	if err != nil {
		return err
	}
	return s.put(rec)
}

// addRecord is add for a record that the page scanner has read (and
// compacted and checked on the way): see encodeRecord.
func (s *recordStream) addRecord(pr *pageRecord) error {
	if err := s.open(); err != nil {
		return err
	}
	rec, err := s.encodeRecord(pr)
	if err != nil {
		return err
	}
	return s.put(rec)
}

// open reports why the stream takes no more records: closed, or its
// sender has stopped.
func (s *recordStream) open() error {
	if s.closed {
		return errors.New("record stream used after close")
	}
	select {
	case <-s.done:
		return s.senderErr()
	default:
		return nil
	}
}

// put buffers rec (encoded, checked), posting the chunk before it when
// that one is full.
//
// A full chunk is posted when the next record comes, not as soon as it
// fills: if no record comes, close sends it as the final chunk, rather
// than it and then an empty final chunk, one round trip more. A method
// calls sendFull before it waits on the target for more records.
func (s *recordStream) put(rec []byte) error {
	// A chunk holds chunk_size records and what fits in a body; records
	// are never split.
	if s.n == s.size || s.n > 0 && len(s.body)+1+len(rec)+len(`],"final":false}`) > maxChunkBody {
		if err := s.flush(false); err != nil {
			return err
		}
	}
	if s.n > 0 {
		s.body = append(s.body, ',')
	}
	s.body = append(s.body, rec...)
	s.n++
	s.added++
	s.nbytes += int64(len(rec))
	return nil
}

// sendFull posts the chunk being filled if it is full. A method calls it
// before it asks the target for more records (the next page), so that a
// full chunk is not held back while they come.
func (s *recordStream) sendFull() error {
	if err := s.open(); err != nil {
		return err
	}
	if s.n < s.size {
		return nil
	}
	return s.flush(false)
}

// encode returns raw redacted, compact (HTML-escaped as encoding/json
// escapes what it marshals), and checked the way the control plane decodes
// a chunk. The chunk body is sent as built (encodedJSON), so its length
// here is its length on the wire. The result lives in s.scratch until the
// next call.
func (s *recordStream) encode(raw []byte) ([]byte, error) {
	red, err := s.t.st.redact.json(raw)
	switch {
	case errors.Is(err, redact.ErrUnredactable):
		return nil, fail(wire.ErrInternal, "record %d holds a secret that cannot be redacted without breaking its JSON: the record was not sent", s.added)
	case errors.Is(err, redact.ErrInvalidJSON):
		return nil, fail(wire.ErrTargetError, "record %d is not valid JSON", s.added)
	case err != nil:
		return nil, fail(wire.ErrInternal, "redacting record %d failed: %v", s.added, err)
	}
	s.scratch = appendCompactJSON(s.scratch[:0], red)
	if len(s.scratch) > maxRecordBytes {
		return nil, fail(wire.ErrResultTooLarge, "record %d is %d bytes once encoded, over the %d bytes a chunk can hold", s.added, len(s.scratch), maxRecordBytes)
	}
	if err := wire.Check(s.scratch, wire.Limits{MaxBytes: maxRecordBytes, MaxDepth: maxRecordDepth}); err != nil {
		// The reason is one of wire's fixed phrases: no input in it.
		return nil, fail(wire.ErrTargetError, "record %d would be refused by the control plane: %v", s.added, err)
	}
	return s.scratch, nil
}

// encodeRecord returns exactly what encode(pr.raw) returns (the same
// bytes, the same error), taking the scanner's work where it can: a record
// that passed the scanner's checks and that the redactor finds clean is
// its compact form, with no second pass over it. Anything else (a secret,
// a record the scanner left unchecked) goes through encode. The result
// lives until the next call.
func (s *recordStream) encodeRecord(pr *pageRecord) ([]byte, error) {
	if !pr.checked || !s.t.st.redact.r.JSONClean(pr.raw, pr.escaped) {
		return s.encode(pr.raw)
	}
	// redact.JSON would return raw; appendCompactJSON(raw) is
	// pr.compact; wire.Check would pass (the scanner checked its rules,
	// and compaction changes neither depth, keys, UTF-8 nor escapes).
	if len(pr.compact) > maxRecordBytes {
		return nil, fail(wire.ErrResultTooLarge, "record %d is %d bytes once encoded, over the %d bytes a chunk can hold", s.added, len(pr.compact), maxRecordBytes)
	}
	return pr.compact, nil
}

// flush hands the chunk being filled to the sender (waiting while the
// previous chunk is in flight) and starts the next one.
func (s *recordStream) flush(final bool) error {
	if final {
		s.body = append(s.body, `],"final":true}`...)
	} else {
		s.body = append(s.body, `],"final":false}`...)
	}
	c := pendingChunk{seq: s.seq, body: s.body, n: s.n, bytes: s.nbytes}
	select {
	case s.queue <- c:
	case <-s.done:
		return s.senderErr()
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
	s.seq++
	s.n, s.nbytes = 0, 0
	var next []byte
	select {
	case next = <-s.free:
	default:
		next = make([]byte, 0, 64<<10)
	}
	s.body = s.start(next)
	return nil
}

// close sends what is buffered as the final chunk (empty when nothing
// is), waits for it to be acknowledged, and returns what was sent.
func (s *recordStream) close() (*outcome, error) {
	if s.closed {
		return nil, errors.New("record stream closed twice")
	}
	err := s.flush(true)
	s.closed = true
	close(s.queue)
	<-s.done
	if err != nil {
		return nil, err
	}
	if s.err != nil {
		return nil, s.err
	}
	out := s.out
	return &out, nil
}

// abort stops the stream without a final chunk, after the chunk in
// flight (if any) is answered. It does nothing after close.
func (s *recordStream) abort() {
	if s.closed {
		return
	}
	s.closed = true
	close(s.queue)
	<-s.done
}

func (s *recordStream) senderErr() error {
	if s.err != nil {
		return s.err
	}
	return errors.New("the chunk sender stopped")
}

// sender posts the chunks in order, one at a time.
func (s *recordStream) sender() {
	defer close(s.done)
	for c := range s.queue {
		if err := s.post(c); err != nil {
			s.err = err
			return
		}
		s.out.records += int64(c.n)
		s.out.chunks++
		s.out.bytes += c.bytes
		select {
		case s.free <- c.body:
		default:
		}
	}
}

// post sends one chunk until it is acknowledged: the same seq again on
// transient errors (backoff, Retry-After); 409 and 410 cancel the task
// with errLeaseLost and errCancelled, which makes runTask abandon it or
// report it cancelled, and nothing more is sent for it.
func (s *recordStream) post(c pendingChunk) error {
	t := s.t
	b := newBackoff()
	path := "/tasks/" + t.env.TaskID + "/chunks"
	for {
		rctx, cancel := context.WithTimeout(s.ctx, 60*time.Second)
		_, err := t.a.cl.do(rctx, "POST", path, encodedJSON(c.body), nil)
		cancel()
		var se *StatusError
		switch {
		case err == nil:
			return nil
		case s.ctx.Err() != nil:
			return s.ctx.Err()
		case errors.As(err, &se) && se.Code == 409:
			t.stop(errLeaseLost)
			return errLeaseLost
		case errors.As(err, &se) && se.Code == 410:
			t.stop(errCancelled)
			return errCancelled
		case errors.As(err, &se) && se.Code == 413:
			return fail(wire.ErrResultTooLarge, "the control plane refused chunk %d as too large (413)", c.seq)
		}
		if fatal := t.a.fatalError(err); fatal != nil {
			t.a.setFatal(fatal)
			return err
		}
		if errors.As(err, &se) && se.Code/100 == 4 && se.Code != 408 && se.Code != 429 {
			return fail(wire.ErrInternal, "the control plane refused chunk %d (%d)", c.seq, se.Code)
		}
		d := b.next()
		if errors.As(err, &se) && se.RetryAfter > 0 {
			d = se.RetryAfter
		}
		t.a.logWarn("sending a chunk failed; retrying", "task_id", t.env.TaskID, "seq", c.seq, "error", err, "in", d.String())
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-t.a.clock.After(d):
		}
	}
}

// stop cancels the task with cause (errLeaseLost, errCancelled).
func (t *taskRun) stop(cause error) {
	if t.cancel != nil {
		t.cancel(cause)
	}
}

// appendCompactJSON appends src, valid JSON, without insignificant
// whitespace and with <, >, &, U+2028 and U+2029 escaped inside strings:
// what encoding/json's Marshal makes of a json.Marshaler's output, so that
// marshalling the result again leaves it byte for byte.
func appendCompactJSON(dst, src []byte) []byte {
	const hex = "0123456789abcdef"
	inString, escaped := false, false
	start := 0
	for i := 0; i < len(src); i++ {
		c := src[i]
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			case c == '<' || c == '>' || c == '&':
				dst = append(dst, src[start:i]...)
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
				start = i + 1
			case c == 0xE2 && i+2 < len(src) && src[i+1] == 0x80 && src[i+2]&^1 == 0xA8:
				// U+2028, U+2029
				dst = append(dst, src[start:i]...)
				dst = append(dst, '\\', 'u', '2', '0', '2', hex[src[i+2]&0xF])
				start = i + 3
				i += 2
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case ' ', '\t', '\n', '\r':
			dst = append(dst, src[start:i]...)
			start = i + 1
		}
	}
	return append(dst, src[start:]...)
}
