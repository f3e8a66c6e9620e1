package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
)

// UpdateManifest returns the exact bytes that an update offer's HMAC and
// Ed25519 signature cover (§7):
//
//	"rv-agent-update/v1\n" + agent_id + "\n" + version + "\n" + os + "/" + arch + "\n" + size + "\n" + sha256 + "\n"
//
// size in decimal, sha256 in lowercase hex (sha256hex is lowercased here, so
// both sides build the same bytes from an offer whatever its case).
func UpdateManifest(agentID, version, os, arch string, size int64, sha256hex string) []byte {
	var b strings.Builder
	b.Grow(len("rv-agent-update/v1\n") + len(agentID) + len(version) + len(os) + len(arch) + len(sha256hex) + 26)
	b.WriteString("rv-agent-update/v1\n")
	b.WriteString(agentID)
	b.WriteByte('\n')
	b.WriteString(version)
	b.WriteByte('\n')
	b.WriteString(os)
	b.WriteByte('/')
	b.WriteString(arch)
	b.WriteByte('\n')
	b.WriteString(strconv.FormatInt(size, 10))
	b.WriteByte('\n')
	b.WriteString(strings.ToLower(sha256hex))
	b.WriteByte('\n')
	return []byte(b.String())
}

// UpdateHMAC returns hex(HMAC-SHA256(key, manifest)), an offer's hmac_sha256.
// The key is the bytes of RV_AGENT_UPDATE_KEY as given, not decoded. A
// verifier compares MACs with hmac.Equal, never ==.
func UpdateHMAC(key, manifest []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write(manifest)
	return hex.EncodeToString(m.Sum(nil))
}
