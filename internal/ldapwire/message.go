package ldapwire

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// MaxMessage caps one message from the directory: an entry must fit in a
// chunk once encoded (1 MiB) anyway, and 8 MiB leaves room for what the
// agent drops (password attributes) or what is over-long but valid.
const MaxMessage = 8 << 20

// maxDiagnostic caps the diagnostic message kept from a result.
const maxDiagnostic = 300

// ProtocolError is a message the client cannot take: malformed, over
// MaxMessage, or not the answer to what was asked. Reason quotes no input.
type ProtocolError struct {
	Reason string
}

func (e *ProtocolError) Error() string {
	return "the directory sent a message this client cannot take: " + e.Reason
}

func protocolError(format string, a ...any) error {
	return &ProtocolError{Reason: fmt.Sprintf(format, a...)}
}

// ResultError is an operation's non-success result (RFC 4511 §4.1.9).
type ResultError struct {
	Op         string // "bind", "search", "StartTLS"
	Code       int
	Matched    string
	Diagnostic string // the directory's text, at most a few hundred bytes
}

func (e *ResultError) Error() string {
	s := "the directory answered the " + e.Op + " with result " + strconv.Itoa(e.Code)
	if name := resultNames[e.Code]; name != "" {
		s += " (" + name + ")"
	}
	if e.Diagnostic != "" {
		s += ": " + e.Diagnostic
	}
	return s
}

// Result codes the agent tells apart (RFC 4511 appendix A).
const (
	Success                     = 0
	SizeLimitExceeded           = 4
	StrongerAuthRequired        = 8
	Referral                    = 10
	AdminLimitExceeded          = 11
	ConfidentialityRequired     = 13
	InappropriateAuthentication = 48
	InvalidCredentials          = 49
	InsufficientAccessRights    = 50
)

var resultNames = map[int]string{
	1: "operationsError", 2: "protocolError", 3: "timeLimitExceeded", 4: "sizeLimitExceeded",
	7: "authMethodNotSupported", 8: "strongerAuthRequired", 10: "referral", 11: "adminLimitExceeded",
	12: "unavailableCriticalExtension", 13: "confidentialityRequired", 32: "noSuchObject",
	34: "invalidDNSyntax", 48: "inappropriateAuthentication", 49: "invalidCredentials",
	50: "insufficientAccessRights", 51: "busy", 52: "unavailable", 53: "unwillingToPerform",
	80: "other",
}

// message is one LDAPMessage: its ID, its protocol operation (identifier
// and contents) and the contents of its controls (nil when it has none).
// The slices point into the buffer the message was read into.
type message struct {
	id       int64
	op       byte
	body     []byte
	controls []byte
}

// parseMessage parses the contents of an LDAPMessage SEQUENCE.
func parseMessage(b []byte) (message, error) {
	var m message
	idb, rest, err := expect(b, tagInteger, "the message ID")
	if err != nil {
		return m, protocolError("%v", err)
	}
	if m.id, err = integer(idb); err != nil || m.id < 0 {
		return m, protocolError("the message ID is not an integer from 0 to 2^31-1")
	}
	m.op, m.body, rest, err = next(rest)
	if err != nil {
		return m, protocolError("the protocol operation: %v", err)
	}
	if len(rest) > 0 {
		var tag byte
		tag, m.controls, rest, err = next(rest)
		switch {
		case err != nil:
			return m, protocolError("the controls: %v", err)
		case tag != ctxControls:
			return m, protocolError("an element follows the protocol operation that is not its controls")
		case len(rest) > 0:
			return m, protocolError("bytes follow the controls")
		}
		if err := eachControl(m.controls, func(_, _ []byte) error { return nil }); err != nil {
			return m, err
		}
	}
	return m, nil
}

// result is an LDAPResult, its strings still in the message's buffer.
type result struct {
	code        int
	matched     []byte
	diagnostic  []byte
	hasReferral bool
}

// parseResult parses the LDAPResult at the start of an operation's
// contents and returns what follows it.
func parseResult(b []byte) (result, []byte, error) {
	var r result
	cb, rest, err := expect(b, tagEnumerated, "the result code")
	if err != nil {
		return r, nil, protocolError("%v", err)
	}
	code, err := integer(cb)
	if err != nil || code < 0 {
		return r, nil, protocolError("the result code is not a non-negative integer")
	}
	r.code = int(code)
	if r.matched, rest, err = expect(rest, tagOctetString, "the matched DN"); err != nil {
		return r, nil, protocolError("%v", err)
	}
	if r.diagnostic, rest, err = expect(rest, tagOctetString, "the diagnostic message"); err != nil {
		return r, nil, protocolError("%v", err)
	}
	if len(rest) > 0 && rest[0] == ctxReferral {
		var uris []byte
		if _, uris, rest, err = next(rest); err != nil {
			return r, nil, protocolError("the referral: %v", err)
		}
		if err := octetStrings(uris, "a referral URI"); err != nil {
			return r, nil, err
		}
		r.hasReferral = true
	}
	return r, rest, nil
}

// parseResponse parses a response that is an LDAPResult and, for a bind
// or extended response, the optional elements its operation adds.
func parseResponse(op byte, body []byte) (result, error) {
	r, rest, err := parseResult(body)
	if err != nil {
		return r, err
	}
	var allowed []byte
	switch op {
	case appBindResponse:
		allowed = []byte{ctxSASLCreds}
	case appExtendedResponse:
		allowed = []byte{ctxResponseName, ctxResponseValue}
	}
	for len(rest) > 0 {
		if len(allowed) == 0 || rest[0] != allowed[0] {
			return r, protocolError("bytes follow the result of a response of type 0x%x", op)
		}
		if _, _, rest, err = next(rest); err != nil {
			return r, protocolError("%v", err)
		}
		allowed = allowed[1:]
	}
	return r, nil
}

// octetStrings checks that b is one or more OCTET STRINGs (a referral's
// or a continuation reference's URIs).
func octetStrings(b []byte, what string) error {
	if len(b) == 0 {
		return protocolError("no %s", what)
	}
	for len(b) > 0 {
		var err error
		if _, b, err = expect(b, tagOctetString, what); err != nil {
			return protocolError("%v", err)
		}
	}
	return nil
}

// err returns the result as an error, nil for success.
func (r result) err(op string) error {
	if r.code == Success {
		return nil
	}
	return &ResultError{Op: op, Code: r.code, Matched: printable(r.matched, 256), Diagnostic: printable(r.diagnostic, maxDiagnostic)}
}

// printable makes a directory's string safe for one line of a log: valid
// UTF-8, no control characters, at most max bytes.
func printable(b []byte, max int) string {
	out := make([]byte, 0, min(len(b), max))
	for len(b) > 0 && len(out) < max {
		r, size := utf8.DecodeRune(b)
		b = b[size:]
		switch {
		case r == utf8.RuneError && size == 1, r < 0x20, r == 0x7f:
			out = append(out, '?')
		default:
			out = utf8.AppendRune(out, r)
		}
	}
	return string(out)
}

// Entry is one SearchResultEntry. Its slices point into the client's
// message buffer: they are valid until the next read.
type Entry struct {
	DN    []byte
	Attrs []Attribute
	vals  [][]byte // backing store of every Attrs[i].Values
	ends  []int    // where each attribute's values end in vals
}

// Attribute is one attribute of an entry: its description and values.
type Attribute struct {
	Name   []byte
	Values [][]byte
}

// parse fills e from a SearchResultEntry's contents, reusing e's slices.
func (e *Entry) parse(b []byte) error {
	dn, rest, err := expect(b, tagOctetString, "the entry's DN")
	if err != nil {
		return protocolError("%v", err)
	}
	attrs, rest, err := expect(rest, tagSequence, "the entry's attribute list")
	if err != nil {
		return protocolError("%v", err)
	}
	if len(rest) > 0 {
		return protocolError("bytes follow the entry's attribute list")
	}
	e.DN = dn
	e.Attrs = e.Attrs[:0]
	e.vals = e.vals[:0]
	e.ends = e.ends[:0]
	// Values go into e.vals as they come; each attribute's Values is set
	// once e.vals can no longer move.
	for len(attrs) > 0 {
		var pa, name, set []byte
		if pa, attrs, err = expect(attrs, tagSequence, "an attribute"); err != nil {
			return protocolError("%v", err)
		}
		if name, pa, err = expect(pa, tagOctetString, "an attribute's description"); err != nil {
			return protocolError("%v", err)
		}
		if set, pa, err = expect(pa, tagSet, "an attribute's values"); err != nil {
			return protocolError("%v", err)
		}
		if len(pa) > 0 {
			return protocolError("bytes follow an attribute's values")
		}
		for len(set) > 0 {
			var v []byte
			if v, set, err = expect(set, tagOctetString, "an attribute value"); err != nil {
				return protocolError("%v", err)
			}
			e.vals = append(e.vals, v)
		}
		e.Attrs = append(e.Attrs, Attribute{Name: name})
		e.ends = append(e.ends, len(e.vals))
	}
	start := 0
	for i, end := range e.ends {
		e.Attrs[i].Values = e.vals[start:end:end]
		start = end
	}
	return nil
}

// pagingOID is the RFC 2696 Simple Paged Results control.
const pagingOID = "1.2.840.113556.1.4.319"

// eachControl calls f with the type and value of every control (RFC 4511
// §4.1.11) in the contents of a message's controls, checking each.
func eachControl(controls []byte, f func(oid, value []byte) error) error {
	for len(controls) > 0 {
		var c, oid, value []byte
		var err error
		if c, controls, err = expect(controls, tagSequence, "a control"); err != nil {
			return protocolError("%v", err)
		}
		if oid, c, err = expect(c, tagOctetString, "a control's type"); err != nil {
			return protocolError("%v", err)
		}
		if len(c) > 0 && c[0] == tagBoolean {
			if _, c, err = expect(c, tagBoolean, "a control's criticality"); err != nil {
				return protocolError("%v", err)
			}
		}
		if len(c) > 0 {
			if value, c, err = expect(c, tagOctetString, "a control's value"); err != nil {
				return protocolError("%v", err)
			}
		}
		if len(c) > 0 {
			return protocolError("bytes follow a control's value")
		}
		if err := f(oid, value); err != nil {
			return err
		}
	}
	return nil
}

// pagingCookie returns the cookie of the paged-results control among a
// response's controls, and whether the control was there.
func pagingCookie(controls []byte) (cookie []byte, found bool, err error) {
	err = eachControl(controls, func(oid, value []byte) error {
		if string(oid) != pagingOID || found {
			return nil
		}
		v, rest, err := expect(value, tagSequence, "the paged-results control's value")
		if err != nil || len(rest) > 0 {
			return protocolError("the paged-results control's value is not one SEQUENCE")
		}
		size, v, err := expect(v, tagInteger, "the paged-results size")
		if err != nil {
			return protocolError("%v", err)
		}
		if _, err := integer(size); err != nil {
			return protocolError("the paged-results size: %v", err)
		}
		c, v, err := expect(v, tagOctetString, "the paged-results cookie")
		if err != nil || len(v) > 0 {
			return protocolError("the paged-results cookie is not one OCTET STRING")
		}
		cookie, found = c, true
		return nil
	})
	return cookie, found, err
}

var errMessageTooLarge = errors.New("a message is over " + strconv.Itoa(MaxMessage>>20) + " MiB")
