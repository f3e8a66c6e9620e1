package ldapwire

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// view is what a client makes of one message, for comparing two parsers.
type view struct {
	id        int64
	op        byte
	dn        string
	attrs     []string // name=value|value
	code      int64
	cookie    string
	hasCookie bool
}

func (v view) String() string {
	return fmt.Sprintf("id %d op 0x%x dn %q attrs %q code %d cookie %q/%t", v.id, v.op, v.dn, v.attrs, v.code, v.cookie, v.hasCookie)
}

// decodeMessage is the client's reading of one whole message (read, then
// what Search.Next does with it), on bytes instead of a connection.
func decodeMessage(data []byte) (view, error) {
	tag, body, rest, err := next(data)
	switch {
	case err != nil:
		return view{}, protocolError("%v", err)
	case tag != tagSequence:
		return view{}, protocolError("a message does not start with a SEQUENCE")
	case len(rest) > 0:
		return view{}, protocolError("bytes after the message")
	case len(body) > MaxMessage:
		return view{}, protocolError("%v", errMessageTooLarge)
	}
	m, err := parseMessage(body)
	if err != nil {
		return view{}, err
	}
	v := view{id: m.id, op: m.op}
	switch m.op {
	case appBindResponse, appExtendedResponse:
		r, err := parseResponse(m.op, m.body)
		if err != nil {
			return v, err
		}
		v.code = int64(r.code)
		return v, nil
	}
	s := &Search{}
	_, r, cookie, err := s.parse(m)
	if err != nil {
		return v, err
	}
	v.dn = string(s.Entry.DN)
	for _, a := range s.Entry.Attrs {
		vals := make([]string, len(a.Values))
		for i, x := range a.Values {
			vals[i] = string(x)
		}
		v.attrs = append(v.attrs, string(a.Name)+"="+strings.Join(vals, "|"))
	}
	if m.op == appSearchDone {
		v.code = int64(r.code)
		v.cookie, v.hasCookie = string(cookie), cookie != nil
	}
	return v, nil
}

// oracleMessage reads the same message with go-asn1-ber, the decoder
// go-ldap uses.
func oracleMessage(data []byte) (view, error) {
	p, err := ber.DecodePacketErr(data)
	if err != nil {
		return view{}, err
	}
	if len(p.Children) < 2 {
		return view{}, errors.New("fewer than two children")
	}
	id, ok := p.Children[0].Value.(int64)
	if !ok {
		return view{}, errors.New("no message ID")
	}
	op := p.Children[1]
	v := view{id: id, op: byte(op.ClassType) | byte(op.TagType) | byte(op.Tag)}
	switch v.op {
	case appSearchEntry:
		if len(op.Children) != 2 {
			return v, errors.New("entry children")
		}
		v.dn = string(op.Children[0].ByteValue)
		for _, a := range op.Children[1].Children {
			if len(a.Children) != 2 {
				return v, errors.New("attribute children")
			}
			var vals []string
			for _, x := range a.Children[1].Children {
				vals = append(vals, string(x.ByteValue))
			}
			v.attrs = append(v.attrs, string(a.Children[0].ByteValue)+"="+strings.Join(vals, "|"))
		}
	case appSearchDone, appBindResponse, appExtendedResponse:
		if len(op.Children) < 3 {
			return v, errors.New("result children")
		}
		code, ok := op.Children[0].Value.(int64)
		if !ok {
			return v, errors.New("result code")
		}
		v.code = code
		if v.op == appSearchDone && len(p.Children) > 2 {
			for _, c := range p.Children[2].Children {
				if len(c.Children) < 2 || string(c.Children[0].ByteValue) != pagingOID {
					continue
				}
				value := c.Children[len(c.Children)-1]
				inner, err := ber.DecodePacketErr(value.ByteValue)
				if err != nil || len(inner.Children) != 2 {
					return v, errors.New("paging value")
				}
				v.cookie, v.hasCookie = string(inner.Children[1].ByteValue), true
				break
			}
		}
	}
	return v, nil
}

// message builds a whole LDAPMessage for the seeds and the tests.
func testMessage(id int64, op []byte, controls ...[]byte) []byte {
	parts := [][]byte{appendInt(nil, tagInteger, id), op}
	if len(controls) > 0 {
		parts = append(parts, seq(ctxControls, controls...))
	}
	return seq(tagSequence, parts...)
}

func testEntry(dn string, attrs ...[]string) []byte {
	var list [][]byte
	for _, a := range attrs {
		var vals [][]byte
		for _, v := range a[1:] {
			vals = append(vals, appendTLV(nil, tagOctetString, []byte(v)))
		}
		list = append(list, seq(tagSequence, appendTLV(nil, tagOctetString, []byte(a[0])), seq(tagSet, vals...)))
	}
	return seq(appSearchEntry, appendTLV(nil, tagOctetString, []byte(dn)), seq(tagSequence, list...))
}

func testDone(code int64, diag string) []byte {
	return seq(appSearchDone, appendInt(nil, tagEnumerated, code), appendTLV(nil, tagOctetString, nil), appendTLV(nil, tagOctetString, []byte(diag)))
}

func testPaging(cookie string) []byte {
	return seq(tagSequence, appendTLV(nil, tagOctetString, []byte(pagingOID)),
		appendTLV(nil, tagOctetString, seq(tagSequence, appendInt(nil, tagInteger, 0), appendTLV(nil, tagOctetString, []byte(cookie)))))
}

func seeds() [][]byte {
	return [][]byte{
		testMessage(2, testEntry("uid=a,dc=example,dc=com", []string{"cn", "A"}, []string{"mail", "a@x", "b@x"}, []string{"jpegPhoto", "\xff\xd8"})),
		testMessage(2, testEntry("", []string{"objectClass"})),
		testMessage(2, testDone(0, ""), testPaging("\x01\x02cookie")),
		testMessage(2, testDone(0, ""), testPaging("")),
		testMessage(2, testDone(10, "referral"), seq(tagSequence, appendTLV(nil, tagOctetString, []byte("1.2.3")), []byte{tagBoolean, 1, 0xff})),
		testMessage(1, seq(appBindResponse, appendInt(nil, tagEnumerated, 49), appendTLV(nil, tagOctetString, nil), appendTLV(nil, tagOctetString, []byte("invalid credentials")))),
		testMessage(2, seq(appSearchReference, appendTLV(nil, tagOctetString, []byte("ldap://other/")))),
		testMessage(0, seq(appExtendedResponse, appendInt(nil, tagEnumerated, 52), appendTLV(nil, tagOctetString, nil), appendTLV(nil, tagOctetString, []byte("shutting down")))),
		{0x30, 0x80, 0x02, 0x01, 0x01, 0x00, 0x00},       // indefinite length
		{0x30, 0x84, 0xff, 0xff, 0xff, 0xff},             // a length over everything
		{0x30, 0x05, 0x02, 0x01, 0x01, 0x64, 0x05},       // an entry longer than the message
		{0x30, 0x06, 0x02, 0x01, 0x01, 0x7f, 0x81, 0x00}, // a multi-byte tag
	}
}

// FuzzParseMessage: the client never panics on a message, and every
// message it takes, go-asn1-ber takes too and reads the same way.
func FuzzParseMessage(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeMessage(data)
		if err != nil {
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			if bytes.Contains([]byte(err.Error()), []byte("\x00")) {
				t.Fatalf("error quotes input: %q", err)
			}
			return
		}
		want, err := oracleMessage(data)
		if err != nil {
			t.Fatalf("the client took a message go-asn1-ber refuses (%v): %v", err, got)
		}
		if got.String() != want.String() {
			t.Fatalf("client: %v\noracle: %v", got, want)
		}
	})
}

// TestMalformedMessages: each malformed message is one ProtocolError,
// never a panic.
func TestMalformedMessages(t *testing.T) {
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"indefinite length", []byte{0x30, 0x80, 0x02, 0x01, 0x01, 0x00, 0x00}},
		{"length of 5 octets", []byte{0x30, 0x85, 0, 0, 0, 0, 1, 0}},
		{"longer than the bytes", []byte{0x30, 0x05, 0x02, 0x01}},
		{"multi-byte tag", []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x7f, 0x81, 0x00}},
		{"not a SEQUENCE", []byte{0x31, 0x03, 0x02, 0x01, 0x01}},
		{"no protocol operation", []byte{0x30, 0x03, 0x02, 0x01, 0x01}},
		{"message ID of 5 octets", []byte{0x30, 0x09, 0x02, 0x05, 1, 0, 0, 0, 0, 0x42, 0x00}},
		{"negative message ID", []byte{0x30, 0x05, 0x02, 0x01, 0xff, 0x42, 0x00}},
		{"trailing bytes inside", testMessageWith(2, testDone(0, ""), []byte{0x04, 0x00})},
		{"entry with an integer DN", testMessage(2, seq(appSearchEntry, appendInt(nil, tagInteger, 1), seq(tagSequence)))},
		{"attribute without values", testMessage(2, seq(appSearchEntry, appendTLV(nil, tagOctetString, nil), seq(tagSequence, seq(tagSequence, appendTLV(nil, tagOctetString, []byte("cn"))))))},
		{"value that is not an OCTET STRING", testMessage(2, seq(appSearchEntry, appendTLV(nil, tagOctetString, nil), seq(tagSequence, seq(tagSequence, appendTLV(nil, tagOctetString, []byte("cn")), seq(tagSet, appendInt(nil, tagInteger, 7))))))},
		{"result without diagnostic", testMessage(2, seq(appSearchDone, appendInt(nil, tagEnumerated, 0), appendTLV(nil, tagOctetString, nil)))},
		{"paging value not a SEQUENCE", testMessage(2, testDone(0, ""), seq(tagSequence, appendTLV(nil, tagOctetString, []byte(pagingOID)), appendTLV(nil, tagOctetString, []byte("x"))))},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := decodeMessage(c.data)
			var pe *ProtocolError
			if !errors.As(err, &pe) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("got %v, want a one-line ProtocolError", err)
			}
		})
	}
}

// testMessageWith is testMessage with an extra element after the operation
// that is not the controls.
func testMessageWith(id int64, op, extra []byte) []byte {
	return seq(tagSequence, appendInt(nil, tagInteger, id), op, extra)
}

// BenchmarkReadEntries compares reading a page of entries with this
// client and with go-asn1-ber (go-ldap's decoder), from the same bytes.
func BenchmarkReadEntries(b *testing.B) {
	var page []byte
	for i := range 500 {
		page = append(page, testMessage(2, testEntry(fmt.Sprintf("uid=u%05d,ou=people,dc=example,dc=com", i),
			[]string{"uid", fmt.Sprintf("u%05d", i)}, []string{"cn", fmt.Sprintf("User %d", i)},
			[]string{"sn", fmt.Sprintf("S%d", i)}, []string{"mail", fmt.Sprintf("u%d@example.com", i)},
			[]string{"objectClass", "inetOrgPerson", "organizationalPerson", "person", "top"}))...)
	}
	page = append(page, testMessage(2, testDone(0, ""), testPaging(""))...)
	b.Run("ldapwire", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(page)))
		for b.Loop() {
			c := &Conn{br: bufioReader(page)}
			s := &Search{c: c, id: 2}
			n := 0
			for {
				e, err := s.Next()
				if err != nil {
					b.Fatal(err)
				}
				if e == nil {
					break
				}
				n++
			}
			if n != 500 {
				b.Fatal(n)
			}
		}
	})
	b.Run("go-asn1-ber", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(page)))
		for b.Loop() {
			r := bytes.NewReader(page)
			for n := 0; n < 501; n++ {
				if _, err := ber.ReadPacket(r); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

func bufioReader(b []byte) *bufio.Reader {
	return bufio.NewReaderSize(bytes.NewReader(b), 64<<10)
}

// TestMessageOverCap: a message that says it is over MaxMessage is refused
// from its header, before anything of that size is allocated or read.
func TestMessageOverCap(t *testing.T) {
	hdr := []byte{tagSequence, 0x84, 0x7f, 0xff, 0xff, 0xff} // 2 GiB
	c := &Conn{br: bufioReader(hdr)}
	s := &Search{c: c, id: 2}
	allocs := testing.AllocsPerRun(10, func() {
		c.br = bufioReader(hdr)
		_, err := s.Next()
		var pe *ProtocolError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), "over 8 MiB") {
			t.Fatalf("got %v", err)
		}
	})
	if allocs > 20 || cap(c.buf) > 0 {
		t.Fatalf("%.0f allocations, buffer of %d bytes for a refused message", allocs, cap(c.buf))
	}
}

// wipeConn keeps the very slices written to it (not copies) and answers
// with canned bytes.
type wipeConn struct {
	net.Conn
	written [][]byte
	answer  *bytes.Reader
}

func (c *wipeConn) Write(b []byte) (int, error) { c.written = append(c.written, b); return len(b), nil }
func (c *wipeConn) Read(b []byte) (int, error)  { return c.answer.Read(b) }
func (c *wipeConn) Close() error                { return nil }

// TestBindWipesRequest: the buffer the bind request (with the password)
// was written from is zero once Bind returns, whatever the answer.
func TestBindWipesRequest(t *testing.T) {
	password := []byte("Bind-Pw-That-Must-Not-Linger")
	for _, code := range []int64{0, 49} {
		wc := &wipeConn{answer: bytes.NewReader(testMessage(1, seq(appBindResponse, appendInt(nil, tagEnumerated, code), appendTLV(nil, tagOctetString, nil), appendTLV(nil, tagOctetString, nil))))}
		c := NewConn(wc)
		err := c.Bind([]byte("cn=agent,dc=example,dc=com"), password)
		if (err == nil) != (code == 0) {
			t.Fatalf("result %d: %v", code, err)
		}
		if len(wc.written) != 1 || len(wc.written[0]) < len(password) {
			t.Fatalf("%d writes", len(wc.written))
		}
		if i := bytes.IndexFunc(wc.written[0], func(r rune) bool { return r != 0 }); i >= 0 {
			t.Fatalf("result %d: the request buffer still holds byte %d after Bind", code, i)
		}
		if err != nil && strings.Contains(err.Error(), string(password)) {
			t.Fatal("the error holds the password")
		}
	}
}
