package update

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// Refusal is an offer the agent will not install, with the reason that
// goes into agent.self_update_rejected. Its text never holds a secret: the
// fields it may quote (versions, platforms, sizes) are public.
type Refusal struct {
	Version string // the version offered, "" when the offer did not parse
	Reason  string
}

func (r *Refusal) Error() string {
	if r.Version == "" {
		return "update refused: " + r.Reason
	}
	return "update to " + r.Version + " refused: " + r.Reason
}

func refuse(version, format string, a ...any) *Refusal {
	return &Refusal{Version: version, Reason: fmt.Sprintf(format, a...)}
}

// Policy is what an offer is checked against: this agent, this host's
// update history, and its keys.
type Policy struct {
	Enabled bool   // RV_AGENT_SELF_UPDATE
	AgentID string // the manifest names the agent
	Running string // this binary's version
	OS      string // runtime.GOOS
	Arch    string // runtime.GOARCH
	// Floor is the highest version ever committed on this host (the state
	// file's); "" for none. Nothing at or below it is installed.
	Floor string
	// Reverted are versions that were reverted on this host; they are
	// never installed again.
	Reverted []string
	// ControlPlane is RV_CONTROL_PLANE_URL: the binary's URL must be on its
	// origin.
	ControlPlane *url.URL
	// ReleaseKey, when set (RV_AGENT_RELEASE_PUBKEY), makes the Ed25519
	// signature required.
	ReleaseKey ed25519.PublicKey
}

// Verify decides whether an offer may be downloaded. It checks, in this
// order, and refuses at the first failure: self-update on; the platform;
// the version against the running one, the committed floor and the
// reverted list; the size limit; the URL's origin; the MAC (in constant
// time); the release signature when one is required. mac computes
// HMAC-SHA256 under the update key (the key stays with the caller, in
// locked memory). On success it returns the absolute URL of the binary.
func Verify(o *Offer, p Policy, mac func(manifest []byte) ([]byte, error)) (*url.URL, *Refusal) {
	v := o.Version
	if !p.Enabled {
		return nil, refuse(v, "self-update is off (RV_AGENT_SELF_UPDATE=0)")
	}
	if o.OS != p.OS || o.Arch != p.Arch {
		return nil, refuse(v, "the offer is for %s/%s; this agent is %s/%s", o.OS, o.Arch, p.OS, p.Arch)
	}
	if c, err := wire.CompareVersions(v, p.Running); err != nil || c <= 0 {
		return nil, refuse(v, "version %s is not newer than the running %s", v, p.Running)
	}
	if p.Floor != "" {
		if c, err := wire.CompareVersions(v, p.Floor); err != nil || c <= 0 {
			return nil, refuse(v, "version %s is not newer than %s, the highest version committed on this host (anti-rollback)", v, p.Floor)
		}
	}
	if slices.Contains(p.Reverted, v) {
		return nil, refuse(v, "version %s was reverted on this host and is not installed again", v)
	}
	if o.Size > wire.MaxUpdateBytes {
		return nil, refuse(v, "size %d is over the %d MiB limit", o.Size, wire.MaxUpdateBytes>>20)
	}
	abs, ok := onOrigin(o.URL, p.ControlPlane)
	if !ok {
		return nil, refuse(v, "the binary's url is not on the control plane's origin")
	}
	manifest := o.Manifest(p.AgentID)
	sum, err := mac(manifest)
	if err != nil {
		return nil, refuse(v, "cannot compute the MAC: %v", err)
	}
	if !hmac.Equal(sum, o.HMAC[:]) {
		return nil, refuse(v, "hmac_sha256 does not match the manifest (another agent's offer, a wrong update key, or altered in transit)")
	}
	if p.ReleaseKey != nil {
		if o.Signature == nil {
			return nil, refuse(v, "no ed25519 release signature, and RV_AGENT_RELEASE_PUBKEY requires one")
		}
		if !ed25519.Verify(p.ReleaseKey, manifest, o.Signature) {
			return nil, refuse(v, "the ed25519 release signature does not verify with RV_AGENT_RELEASE_PUBKEY")
		}
	}
	return abs, nil
}

// HMAC returns HMAC-SHA256(key, manifest) (the key as given: the bytes of
// RV_AGENT_UPDATE_KEY, not decoded).
func HMAC(key, manifest []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(manifest)
	return m.Sum(nil)
}

// onOrigin resolves ref against the control plane's URL and reports whether
// the result has the same origin: https, the same host (case-insensitive)
// and the same port (443 when absent).
func onOrigin(ref, cp *url.URL) (*url.URL, bool) {
	if ref == nil || cp == nil {
		return nil, false
	}
	// A reference is resolved against the origin, not the base's path: the
	// control plane sends paths from its root (§7: "/api/agent/v1/…").
	base := &url.URL{Scheme: cp.Scheme, Host: cp.Host, Path: "/"}
	abs := base.ResolveReference(ref)
	abs.Fragment, abs.RawFragment = "", ""
	if abs.User != nil || !strings.EqualFold(abs.Scheme, "https") || !strings.EqualFold(cp.Scheme, "https") {
		return nil, false
	}
	h1, p1 := hostPort(abs)
	h2, p2 := hostPort(cp)
	if h1 == "" || !strings.EqualFold(h1, h2) || p1 != p2 {
		return nil, false
	}
	// The same origin, spelled as the agent's own client spells it.
	abs.Scheme, abs.Host = cp.Scheme, cp.Host
	return abs, true
}

func hostPort(u *url.URL) (string, string) {
	h, p := u.Hostname(), u.Port()
	if p == "" {
		p = "443"
	}
	return h, p
}
