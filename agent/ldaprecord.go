package agent

import (
	"bytes"
	"encoding/base64"
	"unicode"
	"unicode/utf8"

	"github.com/rapidvalue/tier3-agent/internal/ldapwire"
)

// The encoding of one LDAP entry as a record of ldap.search: a pure
// function of the entry, fuzzed by FuzzLDAPRecord.

// passwordAttributes are attributes whose values are credentials: never
// requested, never sent. Names are lowercase, without options. Any
// attribute whose name contains "password" is one too (passwordAttribute).
var passwordAttributes = map[string]bool{
	"userpassword":            true, // RFC 4519
	"2.5.4.35":                true, // userPassword's OID
	"authpassword":            true, // RFC 3112
	"1.3.6.1.4.1.4203.1.3.4":  true, // authPassword's OID
	"unicodepwd":              true, // Active Directory
	"1.2.840.113556.1.4.90":   true, // unicodePwd's OID
	"dbcspwd":                 true, // Active Directory (LM hash)
	"ntpwdhistory":            true,
	"lmpwdhistory":            true,
	"supplementalcredentials": true,
	"ms-mcs-admpwd":           true, // legacy LAPS: a local admin password in clear
	"sambantpassword":         true,
	"sambalmpassword":         true,
	"krbprincipalkey":         true, // MIT Kerberos / FreeIPA keys
	"userpkcs12":              true, // a private key
}

// passwordAttribute reports whether the attribute description names a
// password attribute (options such as ";binary" are ignored, names
// compare case-insensitively).
func passwordAttribute(desc string) bool {
	return passwordKey(appendFold(nil, []byte(desc)))
}

// passwordKey is passwordAttribute for a description already folded
// (appendFold).
func passwordKey(key []byte) bool {
	name, _, _ := bytes.Cut(key, []byte(";"))
	name = bytes.TrimSpace(name)
	return passwordAttributes[string(name)] || bytes.Contains(name, []byte("password"))
}

// binaryAttributes always go base64 under "binary_attributes", whatever
// their bytes: a GUID or a photo is sometimes valid UTF-8 by chance, and a
// reader should find an attribute in one place, entry after entry.
var binaryAttributes = map[string]bool{
	"objectguid": true, "objectsid": true, "sidhistory": true, "tokengroups": true,
	"jpegphoto": true, "thumbnailphoto": true, "photo": true, "audio": true,
	"usercertificate": true, "cacertificate": true, "usersmimecertificate": true,
	"certificaterevocationlist": true, "authorityrevocationlist": true, "crosscertificatepair": true,
	"ms-ds-consistencyguid": true, "msexchmailboxguid": true,
}

func binaryAttribute(desc string) bool {
	return binaryKey(appendFold(nil, []byte(desc)))
}

// binaryKey is binaryAttribute for a folded description.
func binaryKey(key []byte) bool {
	name, opts, _ := bytes.Cut(key, []byte(";"))
	for len(opts) > 0 {
		var opt []byte
		opt, opts, _ = bytes.Cut(opts, []byte(";"))
		if string(opt) == "binary" {
			return true
		}
	}
	return binaryAttributes[string(name)]
}

// appendFold appends the folded form of an attribute description: its
// invalid UTF-8 runs made U+FFFD, then lowercased, as
// strings.ToLower(strings.ToValidUTF8(desc, "\uFFFD")) makes it.
func appendFold(dst, desc []byte) []byte {
	invalid := false
	for i := 0; i < len(desc); {
		c := desc[i]
		if c < utf8.RuneSelf {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			dst = append(dst, c)
			i++
			invalid = false
			continue
		}
		r, size := utf8.DecodeRune(desc[i:])
		i += size
		if r == utf8.RuneError && size == 1 {
			if !invalid {
				dst = utf8.AppendRune(dst, utf8.RuneError)
			}
			invalid = true
			continue
		}
		invalid = false
		dst = utf8.AppendRune(dst, unicode.ToLower(r))
	}
	return dst
}

// ldapRecordEncoder encodes entries as records (encode), reusing its
// buffers from one entry to the next: once they have grown, an entry
// costs no allocation unless an attribute name is not UTF-8 or an entry
// has more than linearGroups attributes.
type ldapRecordEncoder struct {
	groups []attrGroup // groups[:n] are the entry's
	n      int
	keys   []byte         // the groups' folded names, back to back
	index  map[string]int // folded name → group, past linearGroups
}

// linearGroups is how many attributes are looked up by a scan; past it a
// map keeps a hostile entry of 100,000 attributes linear.
const linearGroups = 32

// encode appends the record of one entry to dst:
//
//	{"dn": "…", "attributes": {"cn": ["…"]}, "binary_attributes": {"jpegPhoto": ["<base64>"]}}
//
// Attributes keep the directory's order and the first spelling of their
// name; names that differ only in case (or that are not UTF-8 and read the
// same once made valid) are one attribute, so the record has no duplicate
// key. "binary_attributes" is there only when some value is binary. A DN
// that is not UTF-8 is sent with its invalid bytes replaced, and as
// "dn_base64" too. Password attributes are left out.
func (enc *ldapRecordEncoder) encode(dst, dn []byte, attrs []ldapwire.Attribute) []byte {
	enc.n = 0
	enc.keys = enc.keys[:0]
	if len(enc.index) > 0 {
		clear(enc.index)
	}
	for _, a := range attrs {
		start := len(enc.keys)
		enc.keys = appendFold(enc.keys, a.Name)
		key := enc.keys[start:len(enc.keys):len(enc.keys)]
		if passwordKey(key) {
			enc.keys = enc.keys[:start]
			continue
		}
		g, found := enc.group(key)
		if found {
			enc.keys = enc.keys[:start]
		} else {
			g.name = a.Name
			if !utf8.Valid(g.name) {
				g.name = bytes.ToValidUTF8(a.Name, []byte("\uFFFD"))
			}
		}
		bin := binaryKey(key)
		for _, v := range a.Values {
			if bin || !utf8.Valid(v) {
				g.binary = append(g.binary, v)
			} else {
				g.text = append(g.text, v)
			}
		}
	}
	groups := enc.groups[:enc.n]

	dst = append(dst, `{"dn":`...)
	dst = appendJSONString(dst, dn)
	if !utf8.Valid(dn) {
		dst = append(dst, `,"dn_base64":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, dn)
		dst = append(dst, '"')
	}
	dst = append(dst, `,"attributes":{`...)
	anyBinary := false
	for _, g := range groups {
		anyBinary = anyBinary || len(g.binary) > 0
	}
	// An attribute with no value at all is listed with an empty array; one
	// whose values are all binary appears only under binary_attributes.
	dst = appendGroups(dst, groups, false)
	dst = append(dst, '}')
	if anyBinary {
		dst = append(dst, `,"binary_attributes":{`...)
		dst = appendGroups(dst, groups, true)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

// group returns the entry's group of the folded name key, adding it
// (empty, its name to set) when there is none yet.
func (enc *ldapRecordEncoder) group(key []byte) (*attrGroup, bool) {
	if enc.n <= linearGroups {
		for i := range enc.groups[:enc.n] {
			if bytes.Equal(enc.groups[i].key, key) {
				return &enc.groups[i], true
			}
		}
	} else if i, ok := enc.index[string(key)]; ok {
		return &enc.groups[i], true
	}
	if enc.n == len(enc.groups) {
		enc.groups = append(enc.groups, attrGroup{})
	}
	g := &enc.groups[enc.n]
	g.key, g.name, g.text, g.binary = key, nil, g.text[:0], g.binary[:0]
	enc.n++
	if enc.n > linearGroups {
		if enc.index == nil {
			enc.index = map[string]int{}
		}
		if enc.n == linearGroups+1 {
			for i := range enc.groups[:enc.n-1] {
				enc.index[string(enc.groups[i].key)] = i
			}
		}
		enc.index[string(key)] = enc.n - 1
	}
	return g, false
}

// attrGroup is one attribute's values, split by kind.
type attrGroup struct {
	key, name    []byte
	text, binary [][]byte
}

// appendGroups appends `"name":[v,…]` for each group, comma-separated:
// the text values (for every group that has some, or has no value at
// all), or the binary ones in base64 (for the groups that have some).
func appendGroups(dst []byte, groups []attrGroup, binary bool) []byte {
	first := true
	for _, g := range groups {
		vs := g.text
		if binary {
			vs = g.binary
		}
		if len(vs) == 0 && (binary || len(g.binary) > 0) {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendJSONString(dst, g.name)
		dst = append(dst, ":["...)
		for j, v := range vs {
			if j > 0 {
				dst = append(dst, ',')
			}
			if binary {
				dst = append(dst, '"')
				dst = base64.StdEncoding.AppendEncode(dst, v)
				dst = append(dst, '"')
			} else {
				dst = appendJSONString(dst, v)
			}
		}
		dst = append(dst, ']')
	}
	return dst
}

// appendJSONString appends s as a JSON string the way encoding/json
// marshals it: invalid UTF-8 becomes U+FFFD; <, >, &, U+2028 and U+2029
// are escaped.
func appendJSONString(dst, s []byte) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
