// Package ldapwire is the small LDAPv3 client that ldap.search needs
// (RFC 4511, with RFC 2696 paged results): StartTLS, a simple bind, and a
// search whose results are read one message at a time into a reused
// buffer, every entry parsed in place without an allocation.
//
// It speaks only what the agent sends and reads: the encoding is BER with
// definite lengths and one-byte tags, as RFC 4511 §5.1 requires of both
// ends. Everything else the directory sends is an error with a one-line
// reason, never a panic or an allocation of a length the peer claims: a
// message is at most MaxMessage bytes. Errors never contain input bytes
// except a directory's diagnostic message, which the agent redacts with
// the rest of the result.
package ldapwire

import (
	"errors"
	"strconv"
)

// BER identifiers (class, constructed bit, tag number) used by LDAP.
const (
	tagBoolean     = 0x01
	tagInteger     = 0x02
	tagOctetString = 0x04
	tagNull        = 0x05
	tagEnumerated  = 0x0a
	tagSequence    = 0x30
	tagSet         = 0x31

	appBindRequest      = 0x60
	appBindResponse     = 0x61
	appUnbindRequest    = 0x42
	appSearchRequest    = 0x63
	appSearchEntry      = 0x64
	appSearchDone       = 0x65
	appSearchReference  = 0x73
	appAbandonRequest   = 0x50
	appExtendedRequest  = 0x77
	appExtendedResponse = 0x78

	ctxSimpleAuth    = 0x80 // [0] OCTET STRING of a BindRequest
	ctxReferral      = 0xa3 // [3] Referral of an LDAPResult
	ctxControls      = 0xa0 // [0] Controls of an LDAPMessage
	ctxExtendedName  = 0x80 // [0] requestName of an ExtendedRequest
	ctxResponseName  = 0x8a // [10] responseName of an ExtendedResponse
	ctxResponseValue = 0x8b // [11] responseValue
	ctxSASLCreds     = 0x87 // [7] serverSaslCreds of a BindResponse
)

// errShort is returned when an element runs past the bytes that hold it.
var errShort = errors.New("an element is longer than what holds it")

// next splits b into its first element (identifier and contents) and the
// rest. Only the low-tag-number form and definite lengths are accepted;
// a length has at most 4 octets after its first.
func next(b []byte) (tag byte, body, rest []byte, err error) {
	if len(b) < 2 {
		return 0, nil, nil, errShort
	}
	tag = b[0]
	if tag&0x1f == 0x1f {
		return 0, nil, nil, errors.New("an element has a multi-byte tag, which LDAP does not use")
	}
	n, hdr, err := length(b[1:])
	if err != nil {
		return 0, nil, nil, err
	}
	b = b[1+hdr:]
	if n > len(b) {
		return 0, nil, nil, errShort
	}
	return tag, b[:n], b[n:], nil
}

// length decodes a definite length at the start of b and returns it with
// the octets it took.
func length(b []byte) (n, size int, err error) {
	if len(b) == 0 {
		return 0, 0, errShort
	}
	first := b[0]
	if first < 0x80 {
		return int(first), 1, nil
	}
	k := int(first & 0x7f)
	switch {
	case k == 0:
		return 0, 0, errors.New("an element has an indefinite length, which LDAP forbids")
	case k > 4:
		return 0, 0, errors.New("an element's length takes more than 4 octets")
	case len(b) < 1+k:
		return 0, 0, errShort
	}
	for _, c := range b[1 : 1+k] {
		n = n<<8 | int(c)
	}
	if n < 0 || n > 1<<31-1 {
		return 0, 0, errors.New("an element's length is out of range")
	}
	return n, 1 + k, nil
}

// expect is next for an element whose identifier must be tag.
func expect(b []byte, tag byte, what string) (body, rest []byte, err error) {
	t, body, rest, err := next(b)
	if err != nil {
		return nil, nil, err
	}
	if t != tag {
		return nil, nil, errors.New(what + " has the wrong type (identifier 0x" + strconv.FormatUint(uint64(t), 16) + ")")
	}
	return body, rest, nil
}

// integer decodes the contents of an INTEGER or ENUMERATED of at most 4
// octets, two's complement.
func integer(body []byte) (int64, error) {
	if len(body) == 0 || len(body) > 4 {
		return 0, errors.New("an integer has " + strconv.Itoa(len(body)) + " octets (want 1 to 4)")
	}
	v := int64(int8(body[0]))
	for _, c := range body[1:] {
		v = v<<8 | int64(c)
	}
	return v, nil
}

// Encoding. Requests are small and built once per operation; the bind's,
// which holds the password, is built by the caller into a buffer it wipes
// (appendBindRequest).

// appendLength appends the minimal definite length n.
func appendLength(dst []byte, n int) []byte {
	switch {
	case n < 0x80:
		return append(dst, byte(n))
	case n < 1<<8:
		return append(dst, 0x81, byte(n))
	case n < 1<<16:
		return append(dst, 0x82, byte(n>>8), byte(n))
	case n < 1<<24:
		return append(dst, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

// tlvSize is the encoded size of an element whose contents are n bytes.
func tlvSize(n int) int {
	switch {
	case n < 0x80:
		return 2 + n
	case n < 1<<8:
		return 3 + n
	case n < 1<<16:
		return 4 + n
	case n < 1<<24:
		return 5 + n
	}
	return 6 + n
}

// appendTLV appends one element with the given contents.
func appendTLV(dst []byte, tag byte, body []byte) []byte {
	dst = append(dst, tag)
	dst = appendLength(dst, len(body))
	return append(dst, body...)
}

// appendInt appends an INTEGER (or, with tagEnumerated, ENUMERATED) in
// minimal two's complement.
func appendInt(dst []byte, tag byte, v int64) []byte {
	var b [8]byte
	n := 8
	for i := range 8 {
		b[i] = byte(v >> (56 - 8*i))
	}
	i := 0
	for i < 7 && (b[i] == 0 && b[i+1]&0x80 == 0 || b[i] == 0xff && b[i+1]&0x80 != 0) {
		i++
	}
	return appendTLV(dst, tag, b[i:n])
}

// seq builds a constructed element from already encoded children.
func seq(tag byte, children ...[]byte) []byte {
	n := 0
	for _, c := range children {
		n += len(c)
	}
	out := make([]byte, 0, tlvSize(n))
	out = append(out, tag)
	out = appendLength(out, n)
	for _, c := range children {
		out = append(out, c...)
	}
	return out
}
