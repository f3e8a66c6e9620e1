package update

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/url"
	"strings"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// Offer is an update offer (PROTOCOL.md §7) that parsed: every field has
// its shape. Whether it is acceptable is Verify's question.
type Offer struct {
	Version string       // as offered; the manifest covers these bytes
	Ver     wire.Version // Version, parsed
	OS      string
	Arch    string
	Size    int64
	SHA256  [32]byte
	HMAC    [32]byte
	// Signature is the Ed25519 signature, nil when the offer has none.
	Signature []byte
	// URL is the binary's URL as offered (absolute, or a reference to
	// resolve against the control plane's URL).
	URL *url.URL
}

// OfferError is the only error ParseOffer returns. It names the field and
// what is wrong with it, never a byte of the input.
type OfferError struct {
	Field  string // "" for the body as a whole
	Reason string
}

func (e *OfferError) Error() string {
	if e.Field == "" {
		return "malformed update offer: " + e.Reason
	}
	return "malformed update offer: " + e.Field + ": " + e.Reason
}

// ErrOffer is matched by every *OfferError (errors.Is).
var ErrOffer = errors.New("malformed update offer")

// Is makes errors.Is(err, ErrOffer) hold for every *OfferError.
func (e *OfferError) Is(target error) bool { return target == ErrOffer }

// Caps on the offer's strings: far above anything real, low enough that a
// hostile offer cannot make the agent hold or log much.
const (
	maxPlatformLen = 32
	maxURLLen      = 2048
)

// ParseOffer parses the body of a 200 answer to GET /update. It is a pure
// function of its input: the body's JSON must be strict (wire.Decode: no
// duplicate keys, at most 1 MiB), unknown fields are ignored, and each
// known field must have its protocol shape. Policy (version order, size
// limit, origin, MAC, signature) is left to Verify, so that each refusal
// has its own reason.
func ParseOffer(body []byte) (*Offer, error) {
	var w wire.UpdateOffer
	if err := wire.Decode(body, &w, wire.Limits{}); err != nil {
		var de *wire.DecodeError
		if errors.As(err, &de) {
			return nil, &OfferError{Reason: de.Reason}
		}
		return nil, &OfferError{Reason: "not a JSON object"}
	}
	return offerFromWire(&w)
}

func offerFromWire(w *wire.UpdateOffer) (*Offer, error) {
	o := &Offer{Version: w.Version, OS: w.OS, Arch: w.Arch, Size: w.Size}
	var err error
	if o.Ver, err = wire.ParseVersion(w.Version); err != nil {
		return nil, &OfferError{"version", "not a semantic version"}
	}
	if !validPlatform(w.OS) {
		return nil, &OfferError{"os", "want a GOOS name ([a-z0-9_], 1 to 32 characters)"}
	}
	if !validPlatform(w.Arch) {
		return nil, &OfferError{"arch", "want a GOARCH name ([a-z0-9_], 1 to 32 characters)"}
	}
	if w.Size <= 0 {
		return nil, &OfferError{"size", "want a positive number of bytes"}
	}
	if !decodeHex32(&o.SHA256, w.SHA256) {
		return nil, &OfferError{"sha256", "want 64 hex digits"}
	}
	if !decodeHex32(&o.HMAC, w.HMACSHA256) {
		return nil, &OfferError{"hmac_sha256", "want 64 hex digits"}
	}
	if w.Ed25519 != "" {
		sig, err := base64.StdEncoding.Strict().DecodeString(w.Ed25519)
		if err != nil || len(sig) != 64 {
			return nil, &OfferError{"ed25519", "want the standard base64 of 64 bytes"}
		}
		o.Signature = sig
	}
	if w.URL == "" || len(w.URL) > maxURLLen {
		return nil, &OfferError{"url", "want a URL of 1 to 2048 bytes"}
	}
	if o.URL, err = url.Parse(w.URL); err != nil {
		return nil, &OfferError{"url", "not a URL"}
	}
	if o.URL.User != nil {
		return nil, &OfferError{"url", "must not carry user information"}
	}
	return o, nil
}

// Wire returns the offer as the protocol writes it (for tests and tools).
func (o *Offer) Wire() wire.UpdateOffer {
	w := wire.UpdateOffer{
		Version: o.Version, OS: o.OS, Arch: o.Arch, Size: o.Size,
		SHA256:     hex.EncodeToString(o.SHA256[:]),
		HMACSHA256: hex.EncodeToString(o.HMAC[:]),
		URL:        o.URL.String(),
	}
	if o.Signature != nil {
		w.Ed25519 = base64.StdEncoding.EncodeToString(o.Signature)
	}
	return w
}

// Manifest returns the bytes the offer's MAC and signature cover, for the
// agent agentID.
func (o *Offer) Manifest(agentID string) []byte {
	return wire.UpdateManifest(agentID, o.Version, o.OS, o.Arch, o.Size, hex.EncodeToString(o.SHA256[:]))
}

func validPlatform(s string) bool {
	if len(s) < 1 || len(s) > maxPlatformLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z') && !('0' <= c && c <= '9') && c != '_' {
			return false
		}
	}
	return true
}

// decodeHex32 decodes 64 hex digits, either case.
func decodeHex32(dst *[32]byte, s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.Decode(dst[:], []byte(strings.ToLower(s)))
	return err == nil
}
