package ldapwire

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Conn is an LDAP session over one connection, used by one goroutine at a
// time. To stop an operation (a cancelled task), close the net.Conn: the
// pending read or write fails.
type Conn struct {
	nc  net.Conn
	br  *bufio.Reader
	id  int64  // the last message ID sent
	buf []byte // the message being read; reused
	hdr [5]byte
}

// NewConn starts a session on nc (TLS already, or plain for StartTLS).
func NewConn(nc net.Conn) *Conn {
	return &Conn{nc: nc, br: bufio.NewReaderSize(nc, 64<<10)}
}

// Close sends an UnbindRequest (best effort: the connection may be broken
// already, and a directory that does not read gets a second) and closes
// the connection.
func (c *Conn) Close() error {
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	c.send([]byte{appUnbindRequest, 0})
	return c.nc.Close()
}

// send writes one LDAPMessage with a new ID: the protocol operation (its
// identifier and contents, already encoded as op) and, when not nil, the
// encoded controls (each a Control SEQUENCE).
func (c *Conn) send(op []byte, controls ...[]byte) (int64, error) {
	c.id++
	if c.id > 1<<31-1 {
		return 0, errors.New("the session has used every message ID")
	}
	parts := [][]byte{appendInt(nil, tagInteger, c.id), op}
	if len(controls) > 0 {
		parts = append(parts, seq(ctxControls, controls...))
	}
	if _, err := c.nc.Write(seq(tagSequence, parts...)); err != nil {
		return 0, fmt.Errorf("writing to the directory: %w", err)
	}
	return c.id, nil
}

// read reads the next LDAPMessage into c.buf and parses its envelope. A
// message for another ID is an error, and so is an unsolicited
// notification (ID 0: the directory is ending the session).
func (c *Conn) read(want int64) (message, error) {
	tag, err := c.br.ReadByte()
	if err != nil {
		return message{}, readErr(err)
	}
	if tag != tagSequence {
		return message{}, protocolError("a message does not start with a SEQUENCE")
	}
	hdr := c.hdr[:]
	clear(hdr)
	if hdr[0], err = c.br.ReadByte(); err != nil {
		return message{}, readErr(err)
	}
	if k := int(hdr[0] & 0x7f); hdr[0] >= 0x80 && k >= 1 && k <= 4 {
		if _, err := io.ReadFull(c.br, hdr[1:1+k]); err != nil {
			return message{}, readErr(err)
		}
	}
	n, _, err := length(hdr)
	if err != nil {
		return message{}, protocolError("%v", err)
	}
	if n > MaxMessage {
		return message{}, protocolError("%v", errMessageTooLarge)
	}
	if cap(c.buf) < n {
		c.buf = make([]byte, n, max(n, 2*cap(c.buf)))
	}
	c.buf = c.buf[:n]
	if _, err := io.ReadFull(c.br, c.buf); err != nil {
		return message{}, readErr(err)
	}
	m, err := parseMessage(c.buf)
	if err != nil {
		return m, err
	}
	switch {
	case m.id == 0:
		return m, notice(m)
	case m.id != want:
		return m, protocolError("a response to message %d, which this client did not send or no longer waits for", m.id)
	}
	return m, nil
}

// readErr describes a failed read: the connection broke or was closed.
func readErr(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("reading from the directory: %w", err)
}

// notice turns an unsolicited notification into the error it ends the
// session with.
func notice(m message) error {
	if m.op != appExtendedResponse {
		return protocolError("an unsolicited message that is not an extended response")
	}
	r, err := parseResponse(m.op, m.body)
	if err != nil {
		return err
	}
	e := r.err("session")
	if e == nil {
		return protocolError("an unsolicited notification with result success")
	}
	e.(*ResultError).Op = "session (notice of disconnection)"
	return e
}

// startTLSOID is the StartTLS extended operation (RFC 4511 §4.14).
const startTLSOID = "1.3.6.1.4.1.1466.20037"

// StartTLS asks for TLS on a plain connection and, when the directory
// agrees, runs the handshake with cfg. Nothing else is sent before TLS.
func (c *Conn) StartTLS(cfg *tls.Config) error {
	id, err := c.send(appendTLV(nil, appExtendedRequest, appendTLV(nil, ctxExtendedName, []byte(startTLSOID))))
	if err != nil {
		return err
	}
	if err := c.response(id, appExtendedResponse, "StartTLS"); err != nil {
		return err
	}
	// Whatever the directory sent after its answer would be read as if
	// it had come through TLS: refuse it.
	if c.br.Buffered() > 0 {
		return protocolError("data follows the answer to StartTLS before the TLS handshake")
	}
	tc := tls.Client(c.nc, cfg)
	if err := tc.Handshake(); err != nil {
		return &TLSError{Err: err}
	}
	c.nc = tc
	c.br.Reset(tc)
	return nil
}

// TLSError is a failed TLS handshake after StartTLS.
type TLSError struct{ Err error }

func (e *TLSError) Error() string { return "TLS handshake: " + e.Err.Error() }
func (e *TLSError) Unwrap() error { return e.Err }

// Bind runs a simple bind (RFC 4511 §4.2) with version 3. The request is
// built in a buffer that is wiped once written, and the password is never
// made into a Go string. An empty password is refused (it would be an
// unauthenticated bind, RFC 4513 §5.1.2).
func (c *Conn) Bind(dn, password []byte) error {
	if len(password) == 0 {
		return errors.New("a simple bind needs a password (an empty one is an unauthenticated bind)")
	}
	c.id++
	id := c.id
	idElem := appendInt(nil, tagInteger, id)
	version := []byte{tagInteger, 1, 3}
	bindLen := len(version) + tlvSize(len(dn)) + tlvSize(len(password))
	msgLen := len(idElem) + tlvSize(bindLen)
	b := make([]byte, 0, tlvSize(msgLen))
	b = append(b, tagSequence)
	b = appendLength(b, msgLen)
	b = append(b, idElem...)
	b = append(b, appBindRequest)
	b = appendLength(b, bindLen)
	b = append(b, version...)
	b = appendTLV(b, tagOctetString, dn)
	b = appendTLV(b, ctxSimpleAuth, password)
	_, err := c.nc.Write(b)
	clear(b)
	if err != nil {
		return fmt.Errorf("writing to the directory: %w", err)
	}
	return c.response(id, appBindResponse, "bind")
}

// response reads the answer to request id, which must be a response of
// type op, and returns its result as an error (nil for success).
func (c *Conn) response(id int64, op byte, what string) error {
	m, err := c.read(id)
	if err != nil {
		return err
	}
	if m.op != op {
		return protocolError("the answer to the %s is a message of type 0x%x", what, m.op)
	}
	r, err := parseResponse(m.op, m.body)
	if err != nil {
		return err
	}
	return r.err(what)
}

// Search scopes (RFC 4511 §4.5.1.2).
const (
	ScopeBase = 0
	ScopeOne  = 1
	ScopeSub  = 2
)

// SearchRequest is one page of a paged search.
type SearchRequest struct {
	BaseDN     string
	Scope      int
	Filter     []byte // encoded (go-ldap's CompileFilter, .Bytes())
	Attributes []string
	PageSize   uint32
	Cookie     []byte // from the previous page; nil for the first
}

// Search sends one page's request and returns its results to read with
// Next. Aliases are never dereferenced; the directory's own size and time
// limits apply.
func (c *Conn) Search(req *SearchRequest) (*Search, error) {
	attrs := make([][]byte, len(req.Attributes))
	for i, a := range req.Attributes {
		attrs[i] = appendTLV(nil, tagOctetString, []byte(a))
	}
	op := seq(appSearchRequest,
		appendTLV(nil, tagOctetString, []byte(req.BaseDN)),
		appendInt(nil, tagEnumerated, int64(req.Scope)),
		appendInt(nil, tagEnumerated, 0), // neverDerefAliases
		appendInt(nil, tagInteger, 0),    // sizeLimit: the directory's
		appendInt(nil, tagInteger, 0),    // timeLimit: the directory's
		[]byte{tagBoolean, 1, 0},         // typesOnly false
		req.Filter,
		seq(tagSequence, attrs...),
	)
	paging := seq(tagSequence,
		appendTLV(nil, tagOctetString, []byte(pagingOID)),
		[]byte{tagBoolean, 1, 0xff}, // critical: a directory that cannot page must say so
		appendTLV(nil, tagOctetString, seq(tagSequence,
			appendInt(nil, tagInteger, int64(req.PageSize)),
			appendTLV(nil, tagOctetString, req.Cookie))),
	)
	id, err := c.send(op, paging)
	if err != nil {
		return nil, err
	}
	return &Search{c: c, id: id}, nil
}

// Search reads the results of one page.
type Search struct {
	c  *Conn
	id int64
	// Entry is the entry Next returned last; reused.
	Entry Entry
	// References counts the continuation references (never followed).
	References int64
	// Cookie is the paged-results cookie of the page's end (a copy):
	// empty when the search is complete.
	Cookie []byte
	done   bool
}

// Next returns the page's next entry, valid until the next call, or nil
// at the end of the page; a non-success result is a *ResultError.
func (s *Search) Next() (*Entry, error) {
	for !s.done {
		m, err := s.c.read(s.id)
		if err != nil {
			return nil, err
		}
		kind, r, cookie, err := s.parse(m)
		switch {
		case err != nil:
			return nil, err
		case kind == appSearchEntry:
			return &s.Entry, nil
		case kind == appSearchReference:
			s.References++
		default:
			s.done = true
			if err := r.err("search"); err != nil {
				return nil, err
			}
			s.Cookie = append(s.Cookie[:0], cookie...)
		}
	}
	return nil, nil
}

// parse reads one message of a search's results: an entry (into
// s.Entry), a continuation reference, or the result that ends the page
// with its paged-results cookie.
func (s *Search) parse(m message) (kind byte, r result, cookie []byte, err error) {
	switch m.op {
	case appSearchEntry:
		return m.op, r, nil, s.Entry.parse(m.body)
	case appSearchReference:
		return m.op, r, nil, octetStrings(m.body, "a continuation reference URI")
	case appSearchDone:
		if r, err = parseResponse(m.op, m.body); err != nil {
			return m.op, r, nil, err
		}
		cookie, _, err = pagingCookie(m.controls)
		return m.op, r, cookie, err
	}
	return m.op, r, nil, protocolError("a message of type 0x%x in a search's results", m.op)
}
