package wire

import (
	"errors"
	"strconv"
	"strings"
)

// ErrVersion is returned for a string that is not a semantic version.
var ErrVersion = errors.New("not a semantic version (MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD])")

// Version is a semantic version (semver.org 2.0.0). Build metadata is
// dropped: it does not take part in precedence.
type Version struct {
	Major, Minor, Patch uint64
	Pre                 []string
}

// maxVersionLen caps the length of a version string.
const maxVersionLen = 128

// ParseVersion parses a semantic version such as "1.4.0", "1.5.0-rc.1" or
// "0.0.0-dev". No leading "v".
func ParseVersion(s string) (Version, error) {
	if len(s) == 0 || len(s) > maxVersionLen {
		return Version{}, ErrVersion
	}
	if i := strings.IndexByte(s, '+'); i >= 0 {
		if !validIdents(s[i+1:], false) {
			return Version{}, ErrVersion
		}
		s = s[:i]
	}
	var pre string
	hasPre := false
	if i := strings.IndexByte(s, '-'); i >= 0 {
		s, pre, hasPre = s[:i], s[i+1:], true
		if !validIdents(pre, true) {
			return Version{}, ErrVersion
		}
	}
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return Version{}, ErrVersion
	}
	var nums [3]uint64
	for i, p := range parts {
		if !numeric(p) {
			return Version{}, ErrVersion
		}
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return Version{}, ErrVersion
		}
		nums[i] = n
	}
	v := Version{Major: nums[0], Minor: nums[1], Patch: nums[2]}
	if hasPre {
		v.Pre = strings.Split(pre, ".")
	}
	return v, nil
}

// numeric reports whether p is a numeric identifier: digits, no leading zero.
func numeric(p string) bool {
	if p == "" || (len(p) > 1 && p[0] == '0') {
		return false
	}
	for i := 0; i < len(p); i++ {
		if !isDigit(p[i]) {
			return false
		}
	}
	return true
}

func validIdents(s string, pre bool) bool {
	for _, id := range strings.Split(s, ".") {
		if id == "" {
			return false
		}
		allDigits := true
		for i := 0; i < len(id); i++ {
			c := id[i]
			if isDigit(c) {
				continue
			}
			allDigits = false
			if !isLower(c) && !('A' <= c && c <= 'Z') && c != '-' {
				return false
			}
		}
		if pre && allDigits && !numeric(id) {
			return false
		}
	}
	return true
}

// Compare returns -1, 0 or +1 as v is older than, as old as, or newer than w.
func (v Version) Compare(w Version) int {
	for _, d := range [3][2]uint64{{v.Major, w.Major}, {v.Minor, w.Minor}, {v.Patch, w.Patch}} {
		if d[0] != d[1] {
			if d[0] < d[1] {
				return -1
			}
			return 1
		}
	}
	switch {
	case len(v.Pre) == 0 && len(w.Pre) == 0:
		return 0
	case len(v.Pre) == 0:
		return 1 // a release is newer than its pre-releases
	case len(w.Pre) == 0:
		return -1
	}
	for i := 0; i < len(v.Pre) && i < len(w.Pre); i++ {
		if c := compareIdent(v.Pre[i], w.Pre[i]); c != 0 {
			return c
		}
	}
	switch {
	case len(v.Pre) < len(w.Pre):
		return -1
	case len(v.Pre) > len(w.Pre):
		return 1
	}
	return 0
}

func compareIdent(a, b string) int {
	an, bn := numeric(a), numeric(b)
	switch {
	case an && bn:
		if len(a) != len(b) {
			if len(a) < len(b) {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	case an:
		return -1 // numeric identifiers sort before alphanumeric ones
	case bn:
		return 1
	}
	return strings.Compare(a, b)
}

// CompareVersions parses a and b and compares them like Version.Compare.
func CompareVersions(a, b string) (int, error) {
	va, err := ParseVersion(a)
	if err != nil {
		return 0, err
	}
	vb, err := ParseVersion(b)
	if err != nil {
		return 0, err
	}
	return va.Compare(vb), nil
}
