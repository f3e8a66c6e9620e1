package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func TestValidTaskID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		want bool
	}{
		{"example", "tsk_01J9Z", true},
		{"all classes", "Az09_-", true},
		{"one char", "a", true},
		{"64 chars", string(make64('a')), true},
		{"empty", "", false},
		{"65 chars", string(make64('a')) + "a", false},
		{"dot", "tsk.1", false},
		{"slash", "tsk/1", false},
		{"space", "tsk 1", false},
		{"percent", "tsk%2f", false},
		{"non-ascii", "tské", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidTaskID(tt.id); got != tt.want {
				t.Errorf("ValidTaskID(%q) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}

func make64(c byte) []byte {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return b
}

func TestValidBusinessID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		want bool
	}{
		{"example", "salesforce-prod", true},
		{"digits first", "0crm", true},
		{"dots and underscores", "a.b_c-d", true},
		{"64 chars", string(make64('z')), true},
		{"empty", "", false},
		{"65 chars", string(make64('z')) + "z", false},
		{"uppercase", "Salesforce", false},
		{"leading dash", "-a", false},
		{"leading dot", ".a", false},
		{"leading underscore (metadata)", "_agent", false},
		{"slash", "a/b", false},
		{"dot segment", "..", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidBusinessID(tt.id); got != tt.want {
				t.Errorf("ValidBusinessID(%q) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}

func TestUpdateManifest(t *testing.T) {
	got := UpdateManifest("agt_1", "1.5.0", "linux", "amd64", 14680064, "ABCDEF0123")
	want := "rv-agent-update/v1\nagt_1\n1.5.0\nlinux/amd64\n14680064\nabcdef0123\n"
	if string(got) != want {
		t.Errorf("manifest = %q, want %q", got, want)
	}
	key := []byte("0123456789abcdef0123456789abcdef")
	m := hmac.New(sha256.New, key)
	m.Write([]byte(want))
	if UpdateHMAC(key, got) != hex.EncodeToString(m.Sum(nil)) {
		t.Error("UpdateHMAC differs from HMAC-SHA256 over the manifest")
	}
}

func TestFingerprint(t *testing.T) {
	der := []byte("not really a certificate")
	sum := sha256.Sum256(der)
	fp := CertFingerprint(der)
	if fp != hex.EncodeToString(sum[:]) {
		t.Fatalf("CertFingerprint = %s", fp)
	}
	var colons []string
	for i := 0; i < len(fp); i += 2 {
		colons = append(colons, strings.ToUpper(fp[i:i+2]))
	}
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"lowercase", fp, true},
		{"uppercase with colons", strings.Join(colons, ":"), true},
		{"short", fp[:62], false},
		{"long", fp + "00", false},
		{"not hex", "zz" + fp[2:], false},
		{"empty", "", false},
		{"only colons", "::::", false},
		{"spaces", " " + fp, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NormalizeFingerprint(tt.in)
			if tt.ok != (err == nil) {
				t.Fatalf("NormalizeFingerprint(%q) error %v", tt.in, err)
			}
			if err != nil {
				if !errors.Is(err, ErrFingerprint) {
					t.Errorf("error %v is not ErrFingerprint", err)
				}
				return
			}
			if got != fp {
				t.Errorf("NormalizeFingerprint(%q) = %q, want %q", tt.in, got, fp)
			}
			if !FingerprintsEqual(tt.in, fp) {
				t.Error("FingerprintsEqual = false")
			}
		})
	}
	if FingerprintsEqual("", "") || FingerprintsEqual("x", "x") {
		t.Error("invalid fingerprints compare equal")
	}
}

func TestCompareVersions(t *testing.T) {
	// Each is older than the next (semver.org §11), then some equal pairs.
	order := []string{
		"0.0.0-dev", "0.0.1", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
		"1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.4.0", "1.4.10", "1.5.0", "2.0.0", "10.0.0",
	}
	for i := 0; i+1 < len(order); i++ {
		c, err := CompareVersions(order[i], order[i+1])
		if err != nil || c != -1 {
			t.Errorf("Compare(%s, %s) = %d, %v; want -1", order[i], order[i+1], c, err)
		}
		c, err = CompareVersions(order[i+1], order[i])
		if err != nil || c != 1 {
			t.Errorf("Compare(%s, %s) = %d, %v; want 1", order[i+1], order[i], c, err)
		}
	}
	if c, err := CompareVersions("1.4.0+build.7", "1.4.0"); err != nil || c != 0 {
		t.Errorf("build metadata: %d, %v", c, err)
	}
	for _, bad := range []string{"", "1", "1.4", "v1.4.0", "1.4.0.1", "01.4.0", "1.4.0-", "1.4.0-01", "1.4.0+", "1.4.0-a..b", "1.-4.0", "1.4.0-é", " 1.4.0"} {
		if _, err := ParseVersion(bad); !errors.Is(err, ErrVersion) {
			t.Errorf("ParseVersion(%q) = %v, want ErrVersion", bad, err)
		}
	}
}
