package agent

import (
	"encoding/base64"
	"strings"
	"unicode/utf8"

	"github.com/go-ldap/ldap/v3"
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
	name, _, _ := strings.Cut(desc, ";")
	name = strings.ToLower(strings.TrimSpace(name))
	return passwordAttributes[name] || strings.Contains(name, "password")
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
	name, opts, _ := strings.Cut(desc, ";")
	if strings.Contains(";"+strings.ToLower(opts)+";", ";binary;") {
		return true
	}
	return binaryAttributes[strings.ToLower(name)]
}

// encodeLDAPRecord appends the record of one entry to dst:
//
//	{"dn": "…", "attributes": {"cn": ["…"]}, "binary_attributes": {"jpegPhoto": ["<base64>"]}}
//
// Attributes keep the directory's order and the first spelling of their
// name; names that differ only in case (or that are not UTF-8 and read the
// same once made valid) are one attribute, so the record has no duplicate
// key. "binary_attributes" is there only when some value is binary. A DN
// that is not UTF-8 is sent with its invalid bytes replaced, and as
// "dn_base64" too. Password attributes are left out.
func encodeLDAPRecord(dst []byte, dn string, attrs []*ldap.EntryAttribute) []byte {
	var groups []attrGroup
	index := map[string]int{}
	for _, a := range attrs {
		if a == nil || passwordAttribute(a.Name) {
			continue
		}
		name := strings.ToValidUTF8(a.Name, "\uFFFD")
		key := strings.ToLower(name)
		i, ok := index[key]
		if !ok {
			i = len(groups)
			index[key] = i
			groups = append(groups, attrGroup{name: name})
		}
		g := &groups[i]
		bin := binaryAttribute(a.Name)
		for _, v := range a.ByteValues {
			if bin || !utf8.Valid(v) {
				g.binary = append(g.binary, v)
			} else {
				g.text = append(g.text, v)
			}
		}
	}

	dst = append(dst, `{"dn":`...)
	dst = appendJSONString(dst, dn)
	if !utf8.ValidString(dn) {
		dst = append(dst, `,"dn_base64":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, []byte(dn))
		dst = append(dst, '"')
	}
	dst = append(dst, `,"attributes":{`...)
	anyBinary := false
	for _, g := range groups {
		anyBinary = anyBinary || len(g.binary) > 0
	}
	// An attribute with no value at all is listed with an empty array; one
	// whose values are all binary appears only under binary_attributes.
	dst = appendGroups(dst, groups, func(g attrGroup) ([][]byte, bool) {
		return g.text, len(g.text) > 0 || len(g.binary) == 0
	}, func(dst, v []byte) []byte {
		return appendJSONString(dst, string(v))
	})
	dst = append(dst, '}')
	if anyBinary {
		dst = append(dst, `,"binary_attributes":{`...)
		dst = appendGroups(dst, groups, func(g attrGroup) ([][]byte, bool) {
			return g.binary, len(g.binary) > 0
		}, func(dst, v []byte) []byte {
			dst = append(dst, '"')
			dst = base64.StdEncoding.AppendEncode(dst, v)
			return append(dst, '"')
		})
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

// attrGroup is one attribute's values, split by kind.
type attrGroup struct {
	name         string
	text, binary [][]byte
}

// appendGroups appends `"name":[v,…]` for each group that values includes,
// comma-separated, each value written by enc.
func appendGroups(dst []byte, groups []attrGroup, values func(attrGroup) ([][]byte, bool), enc func(dst, v []byte) []byte) []byte {
	first := true
	for _, g := range groups {
		vs, include := values(g)
		if !include {
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
			dst = enc(dst, v)
		}
		dst = append(dst, ']')
	}
	return dst
}

// appendJSONString appends s as a JSON string the way encoding/json
// marshals it: invalid UTF-8 becomes U+FFFD; <, >, &, U+2028 and U+2029
// are escaped.
func appendJSONString(dst []byte, s string) []byte {
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
		r, size := utf8.DecodeRuneInString(s[i:])
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
