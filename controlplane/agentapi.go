package controlplane

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// Endpoint names, as fault injection and the request log know them.
const (
	EndpointRegister     = "register"
	EndpointHeartbeat    = "heartbeat"
	EndpointTasksNext    = "tasks_next"
	EndpointChunks       = "chunks"
	EndpointResult       = "result"
	EndpointLease        = "lease"
	EndpointEvents       = "events"
	EndpointUpdate       = "update"
	EndpointUpdateBinary = "update_binary"
	EndpointManifest     = "manifest"
	EndpointInstall      = "install"
)

// Endpoints lists every endpoint name.
var Endpoints = []string{
	EndpointRegister, EndpointHeartbeat, EndpointTasksNext, EndpointChunks, EndpointResult,
	EndpointLease, EndpointEvents, EndpointUpdate, EndpointUpdateBinary, EndpointManifest, EndpointInstall,
}

// authLevel is what an endpoint asks of the caller.
type authLevel int

const (
	authNone     authLevel = iota // the installer script
	authToken                     // a valid token; X-RV-Agent-Id checked when sent
	authRegister                  // a valid token (registration makes the agent ID)
	authAgent                     // a valid token and the X-RV-Agent-Id registered for it
)

// caller is who sent a request, as authentication found it: a snapshot, so
// that handlers do not touch the state without the lock.
type caller struct {
	tok       *token // read its fields only under s.mu
	tenant    string
	agentID   string // "" before registration
	presented string // normalized fingerprint of the client certificate, "" if none
}

func (s *Server) routeAgentAPI() {
	p := wire.APIPrefix
	s.route("POST "+p+"/register", EndpointRegister, authRegister, s.handleRegister)
	s.route("POST "+p+"/heartbeat", EndpointHeartbeat, authAgent, s.handleHeartbeat)
	s.route("GET "+p+"/tasks/next", EndpointTasksNext, authAgent, s.handleNext)
	s.route("POST "+p+"/tasks/{task_id}/chunks", EndpointChunks, authAgent, s.handleChunk)
	s.route("POST "+p+"/tasks/{task_id}/result", EndpointResult, authAgent, s.handleResult)
	s.route("POST "+p+"/tasks/{task_id}/lease", EndpointLease, authAgent, s.handleLease)
	s.route("POST "+p+"/events", EndpointEvents, authAgent, s.handleEvents)
	s.route("GET "+p+"/update", EndpointUpdate, authAgent, s.handleUpdate)
	s.route("GET "+p+"/update/{version}/binary", EndpointUpdateBinary, authToken, s.handleBinary)
	s.route("GET "+p+"/manifest", EndpointManifest, authToken, s.handleManifest)
	s.route("GET "+wire.InstallPath, EndpointInstall, authNone, s.handleInstall)
	s.agentMux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint")
	})
}

func (s *Server) route(pattern, name string, level authLevel, h func(http.ResponseWriter, *http.Request, *caller)) {
	s.agentMux.HandleFunc(pattern, func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		w := &statusWriter{ResponseWriter: rw}
		var c *caller
		defer func() {
			attrs := []any{"endpoint", name, "status", w.status, "ms", time.Since(start).Milliseconds()}
			if c != nil && c.agentID != "" {
				attrs = append(attrs, "agent_id", c.agentID)
			}
			if id := r.PathValue("task_id"); id != "" && wire.ValidTaskID(id) {
				attrs = append(attrs, "task_id", id)
			}
			s.log.Debug("agent request", attrs...)
		}()
		if s.injectFault(w, r, name) {
			return
		}
		if level != authNone {
			var ok bool
			if c, ok = s.authenticate(w, r, level); !ok {
				return
			}
		}
		h(w, r, c)
	})
}

// authenticate checks the bearer token, the client certificate and the
// agent ID, in that order, and answers 401, 403 or 400 itself.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, level authLevel) (*caller, bool) {
	raw, ok := bearer(r)
	if !ok {
		writeError(w, http.StatusUnauthorized, "missing bearer token")
		return nil, false
	}
	sum := sha256.Sum256([]byte(raw))
	presented := s.presentedFingerprint(r)

	s.mu.Lock()
	defer s.mu.Unlock()
	tok := s.tokens[sum]
	// The map finds the token by its hash; the constant-time compare is the
	// check, so that no comparison of secret bytes depends on their values.
	if tok == nil || subtle.ConstantTimeCompare(tok.hash[:], sum[:]) != 1 || tok.revoked {
		writeError(w, http.StatusUnauthorized, "token unknown or revoked")
		return nil, false
	}
	c := &caller{tok: tok, tenant: tok.tenant, agentID: tok.agentID, presented: presented}

	if want := s.requiredFingerprintLocked(tok); want != "" {
		if presented == "" {
			writeError(w, http.StatusForbidden, "client certificate required: this agent registered an mTLS fingerprint")
			return nil, false
		}
		if !wire.FingerprintsEqual(presented, want) {
			writeError(w, http.StatusForbidden, "client certificate fingerprint does not match the one registered")
			return nil, false
		}
	}

	id := r.Header.Get(wire.HeaderAgentID)
	switch {
	case level == authAgent && id == "":
		writeError(w, http.StatusBadRequest, "missing "+wire.HeaderAgentID)
		return nil, false
	case level == authAgent && tok.agentID == "":
		writeError(w, http.StatusBadRequest, "agent not registered: POST /register first")
		return nil, false
	case id != "" && level != authRegister && subtle.ConstantTimeCompare([]byte(id), []byte(tok.agentID)) != 1:
		writeError(w, http.StatusUnauthorized, "token does not belong to this agent")
		return nil, false
	}
	if a := s.agents[tok.agentID]; a != nil {
		a.lastSeen = s.now()
	}
	return c, true
}

// requiredFingerprintLocked returns the fingerprint a token's requests must
// present: the one pinned at creation, else the one registered.
func (s *Server) requiredFingerprintLocked(tok *token) string {
	if tok.pinned != "" {
		return tok.pinned
	}
	if a := s.agents[tok.agentID]; a != nil {
		return a.fingerprint
	}
	return ""
}

// presentedFingerprint returns the normalized fingerprint of the client
// certificate: from the trusted header when so configured and present, else
// from this server's own TLS handshake; "" when there is none.
func (s *Server) presentedFingerprint(r *http.Request) string {
	if s.cfg.TrustForwardedFingerprint {
		if h := r.Header.Get(wire.HeaderClientCertFingerprint); h != "" {
			fp, err := wire.NormalizeFingerprint(h)
			if err != nil {
				return "invalid" // never equal to a registered fingerprint
			}
			return fp
		}
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		return wire.CertFingerprint(r.TLS.PeerCertificates[0].Raw)
	}
	return ""
}

// §1 Register.
func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request, c *caller) {
	var req wire.RegisterRequest
	if !s.decodeBody(w, r, &req) {
		return
	}
	if msg := validateRegister(&req); msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return
	}
	var claimed string
	if req.MTLSFingerprint != nil {
		fp, err := wire.NormalizeFingerprint(*req.MTLSFingerprint)
		if err != nil {
			writeError(w, http.StatusBadRequest, "mtls_fingerprint: "+err.Error())
			return
		}
		claimed = fp
		req.MTLSFingerprint = &fp
		// The agent names a certificate: it must be the one it presents.
		if c.presented == "" {
			writeError(w, http.StatusForbidden, "mtls_fingerprint is set but no client certificate was presented")
			return
		}
		if !wire.FingerprintsEqual(c.presented, fp) {
			writeError(w, http.StatusForbidden, "mtls_fingerprint does not match the client certificate presented")
			return
		}
	}

	s.mu.Lock()
	tok := c.tok
	if tok.revoked { // revoked since authenticate
		s.mu.Unlock()
		writeError(w, http.StatusUnauthorized, "token unknown or revoked")
		return
	}
	now := s.now()
	a := s.agents[tok.agentID]
	first := a == nil
	if first {
		a = &agent{id: "agt_" + s.randomHex(10), tok: tok, registeredAt: now}
		tok.agentID = a.id
		s.agents[a.id] = a
		s.agentOrder = append(s.agentOrder, a)
	}
	a.reg = req
	a.lastSeen = now
	// A fingerprint, once registered, stays: authenticate has already made
	// this request present it. Dropping it takes a new token.
	if a.fingerprint == "" {
		switch {
		case tok.pinned != "":
			a.fingerprint = tok.pinned
		case claimed != "":
			a.fingerprint = claimed
		}
	}
	resp := wire.RegisterResponse{
		AgentID:            a.id,
		HeartbeatIntervalS: int(s.cfg.HeartbeatInterval / time.Second),
		PollWaitS:          int(s.cfg.PollWait / time.Second),
	}
	s.mu.Unlock()

	s.log.Info("agent registered", "agent_id", resp.AgentID, "token_id", tok.id, "tenant", c.tenant,
		"first", first, "hostname", req.Hostname, "version", req.Version, "os", req.OS, "arch", req.Arch, "mtls", claimed != "")
	writeJSON(w, http.StatusOK, resp)
}

func validateRegister(r *wire.RegisterRequest) string {
	switch {
	case r.Hostname == "" || len(r.Hostname) > 255 || !printable(r.Hostname):
		return "hostname: want 1 to 255 printable characters"
	case !validVersion(r.Version):
		return "version: want a semantic version"
	case r.BinarySHA256 != "" && !isHex64(r.BinarySHA256):
		return "binary_sha256: want 64 hex digits"
	case !validPlatform(r.OS) || !validPlatform(r.Arch):
		return "os, arch: want GOOS and GOARCH names"
	case len(r.Methods) > 64:
		return "methods: too many"
	case r.Vault.Entries < 0 || len(r.Vault.Seal) > 64 || !printable(r.Vault.Seal):
		return "vault: invalid summary"
	}
	for _, m := range r.Methods {
		if m == "" || len(m) > 64 || !printable(m) {
			return "methods: want names of 1 to 64 printable characters"
		}
	}
	return ""
}

// §2 Heartbeat.
func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request, c *caller) {
	var hb wire.Heartbeat
	if !s.decodeBody(w, r, &hb) {
		return
	}
	if hb.AgentID != c.agentID {
		writeError(w, http.StatusBadRequest, "agent_id differs from "+wire.HeaderAgentID)
		return
	}
	if hb.Version != "" && !validVersion(hb.Version) {
		writeError(w, http.StatusBadRequest, "version: want a semantic version")
		return
	}
	if hb.BinarySHA256 != "" && !isHex64(hb.BinarySHA256) {
		writeError(w, http.StatusBadRequest, "binary_sha256: want 64 hex digits")
		return
	}
	s.mu.Lock()
	a := s.agents[c.agentID]
	a.lastHeartbeat = s.now()
	a.hb = &hb
	var resp wire.HeartbeatResponse
	if v, err := wire.ParseVersion(hb.Version); err == nil {
		if rel := s.newestReleaseLocked(a.reg.OS, a.reg.Arch); rel != nil && rel.ver.Compare(v) > 0 {
			resp.UpdateAvailable = true
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

// §6 Events.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request, c *caller) {
	var batch wire.EventBatch
	if !s.decodeBody(w, r, &batch) {
		return
	}
	if len(batch.Events) > wire.MaxEventsPerBatch {
		writeError(w, http.StatusBadRequest, "too many events in one batch (at most 100)")
		return
	}
	for _, e := range batch.Events {
		if e.Type == "" || len(e.Type) > 64 || !printable(e.Type) || e.At.IsZero() {
			writeError(w, http.StatusBadRequest, "event: want a type and an at")
			return
		}
		if e.TaskID != "" && !wire.ValidTaskID(e.TaskID) {
			writeError(w, http.StatusBadRequest, "event: invalid task_id")
			return
		}
	}
	s.mu.Lock()
	now := s.now()
	for _, e := range batch.Events {
		s.eventSeq++
		s.events = append(s.events, StoredEvent{Seq: s.eventSeq, AgentID: c.agentID, ReceivedAt: now, Event: e})
	}
	// Trim in bulk, a tenth at a time, so that a full store does not copy
	// itself at every batch.
	if len(s.events) > s.cfg.MaxEvents+s.cfg.MaxEvents/10 {
		s.events = append(s.events[:0:0], s.events[len(s.events)-s.cfg.MaxEvents:]...)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, struct{}{})
}

// §7 Update offer.
func (s *Server) handleUpdate(w http.ResponseWriter, r *http.Request, c *caller) {
	current, err := wire.ParseVersion(r.URL.Query().Get("current"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "current: want a semantic version")
		return
	}
	s.mu.Lock()
	a := s.agents[c.agentID]
	rel := s.newestReleaseLocked(a.reg.OS, a.reg.Arch)
	if rel == nil || rel.ver.Compare(current) <= 0 {
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	size := int64(len(rel.binary))
	manifest := wire.UpdateManifest(a.id, rel.version, rel.os, rel.arch, size, rel.sha256)
	offer := wire.UpdateOffer{
		Version:    rel.version,
		OS:         rel.os,
		Arch:       rel.arch,
		Size:       size,
		SHA256:     rel.sha256,
		HMACSHA256: wire.UpdateHMAC(c.tok.updateKey, manifest),
		URL:        wire.APIPrefix + "/update/" + rel.version + "/binary",
	}
	if sig, ok := rel.signatures[a.id]; ok {
		offer.Ed25519 = base64.StdEncoding.EncodeToString(sig)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, offer)
}

// §7 The binary. Its os and arch come from the query when both are given
// (the installer), else from the registration of the agent asking.
func (s *Server) handleBinary(w http.ResponseWriter, r *http.Request, c *caller) {
	version := r.PathValue("version")
	q := r.URL.Query()
	goos, goarch := q.Get("os"), q.Get("arch")
	s.mu.Lock()
	if goos == "" && goarch == "" && c.agentID != "" {
		if a := s.agents[c.agentID]; a != nil {
			goos, goarch = a.reg.OS, a.reg.Arch
		}
	}
	rel := s.releases[releaseKey{version, goos, goarch}]
	s.mu.Unlock()
	if goos == "" || goarch == "" {
		writeError(w, http.StatusBadRequest, "os and arch: give both, or register first")
		return
	}
	if rel == nil {
		writeError(w, http.StatusNotFound, "no such release")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(rel.binary)))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	w.Write(rel.binary) // a release is never changed in place, so no copy is needed
}

// §8 The installer's manifest: the newest release for ?os=&arch=, default
// linux/amd64.
func (s *Server) handleManifest(w http.ResponseWriter, r *http.Request, c *caller) {
	q := r.URL.Query()
	goos, goarch := q.Get("os"), q.Get("arch")
	if goos == "" {
		goos = "linux"
	}
	if goarch == "" {
		goarch = "amd64"
	}
	if !validPlatform(goos) || !validPlatform(goarch) {
		writeError(w, http.StatusBadRequest, "os, arch: want GOOS and GOARCH names")
		return
	}
	s.mu.Lock()
	rel := s.newestReleaseLocked(goos, goarch)
	s.mu.Unlock()
	if rel == nil {
		writeError(w, http.StatusNotFound, "no release for this os/arch")
		return
	}
	writeJSON(w, http.StatusOK, wire.Manifest{
		Version: rel.version,
		OS:      rel.os,
		Arch:    rel.arch,
		SHA256:  rel.sha256,
		URL:     wire.APIPrefix + "/update/" + rel.version + "/binary?os=" + rel.os + "&arch=" + rel.arch,
	})
}

// InstallURLPlaceholder is replaced in Config.InstallScript with the
// control plane's URL.
const InstallURLPlaceholder = "{{RV_CONTROL_PLANE_URL}}"

// PlaceholderInstallScript is served when Config.InstallScript is empty:
// it installs nothing and fails, so that `curl … | sh` leaves the host as
// it was.
const PlaceholderInstallScript = `#!/bin/sh
# tier3-agent installer placeholder, served by the reference control plane
# at ` + InstallURLPlaceholder + `
echo "tier3-agent install: error: this control plane serves no installer yet" >&2
echo "tier3-agent install: hint: start rv-control-plane with -install-script FILE" >&2
exit 1
`

// §8 The installer script.
func (s *Server) handleInstall(w http.ResponseWriter, r *http.Request, _ *caller) {
	base := s.cfg.PublicURL
	if base == "" {
		base = "https://" + r.Host
	}
	script := s.cfg.InstallScript
	if script == "" {
		script = PlaceholderInstallScript
	}
	script = strings.ReplaceAll(script, InstallURLPlaceholder, base)
	w.Header().Set("Content-Type", "text/x-shellscript; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write([]byte(script))
}

func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9') && !('a' <= c && c <= 'f') && !('A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

func validVersion(v string) bool {
	_, err := wire.ParseVersion(v)
	return err == nil
}

// validPlatform reports whether s looks like a GOOS or GOARCH: [a-z0-9_]{1,32}.
func validPlatform(s string) bool {
	if s == "" || len(s) > 32 {
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
