package vault

import (
	"errors"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Origin is a scheme, host and port: where a credential may be sent.
type Origin struct {
	Scheme string
	Host   string // lowercase; IPv6 without brackets
	Port   int
}

var defaultPorts = map[string]int{"https": 443, "ldaps": 636, "ldap": 389}

// ParseOrigin parses an origin such as https://login.example.com or
// ldaps://dc1.corp.local:636. It accepts https, ldaps and ldap, no user
// info, no path beyond "/", no query or fragment.
func ParseOrigin(s string) (Origin, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Origin{}, errors.New("not a URL: want scheme://host[:port]")
	}
	return OriginOf(u, true)
}

// OriginOf returns the origin of u. With strict, u must be a bare origin.
func OriginOf(u *url.URL, strict bool) (Origin, error) {
	scheme := strings.ToLower(u.Scheme)
	def, ok := defaultPorts[scheme]
	if !ok {
		return Origin{}, errors.New("scheme must be https, ldaps or ldap")
	}
	if u.User != nil {
		return Origin{}, errors.New("user info is not allowed in an origin")
	}
	if u.Opaque != "" || u.Hostname() == "" {
		return Origin{}, errors.New("want scheme://host[:port]")
	}
	if strict && ((u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery) {
		return Origin{}, errors.New("an origin has no path, query or fragment")
	}
	port := def
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != p {
			return Origin{}, errors.New("port must be 1 to 65535")
		}
		port = n
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	if host == "" || strings.ContainsAny(host, " %/\\@") {
		return Origin{}, errors.New("invalid host")
	}
	return Origin{Scheme: scheme, Host: host, Port: port}, nil
}

// String is the canonical form, always with the port.
func (o Origin) String() string {
	return o.Scheme + "://" + net.JoinHostPort(o.Host, strconv.Itoa(o.Port))
}

// Allows reports whether the entry's credentials may be sent to o. An entry
// without _targets allows every origin (the caller decides whether unbound
// entries may be used at all).
func (e *Entry) Allows(o Origin) bool {
	if e.Targets == nil {
		return true
	}
	for _, t := range e.Targets {
		if to, err := ParseOrigin(t); err == nil && to == o {
			return true
		}
	}
	return false
}
