package controlplane

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// AdminPrefix is the path of every admin endpoint.
const AdminPrefix = "/admin/v1"

// DefaultTenant is the tenant of tokens and tasks that name none.
const DefaultTenant = "default"

// CreateTokenRequest is the body of POST /admin/v1/tokens. Every field is
// optional.
type CreateTokenRequest struct {
	Tenant string `json:"tenant,omitempty"`
	// MTLSFingerprint pins the agent's client certificate from its first
	// request on (otherwise the fingerprint registered first is pinned).
	MTLSFingerprint string `json:"mtls_fingerprint,omitempty"`
}

// CreateTokenResponse answers POST /admin/v1/tokens. Token and UpdateKey
// are shown this once: the control plane keeps only the token's hash.
type CreateTokenResponse struct {
	TokenID string `json:"token_id"`
	Tenant  string `json:"tenant"`
	// Token is RV_AGENT_TOKEN.
	Token string `json:"token"`
	// UpdateKey is RV_AGENT_UPDATE_KEY: 64 hex characters, whose 64 ASCII
	// bytes (not the 32 bytes they encode) are the HMAC key.
	UpdateKey       string `json:"update_key"`
	MTLSFingerprint string `json:"mtls_fingerprint,omitempty"`
}

// TokenInfo describes a token without its secret.
type TokenInfo struct {
	TokenID         string    `json:"token_id"`
	Tenant          string    `json:"tenant"`
	AgentID         string    `json:"agent_id,omitempty"`
	Revoked         bool      `json:"revoked"`
	CreatedAt       time.Time `json:"created_at"`
	MTLSFingerprint string    `json:"mtls_fingerprint,omitempty"`
}

// AgentInfo describes a registered agent.
type AgentInfo struct {
	AgentID         string            `json:"agent_id"`
	TokenID         string            `json:"token_id"`
	Tenant          string            `json:"tenant"`
	Revoked         bool              `json:"revoked"`
	Online          bool              `json:"online"`
	Hostname        string            `json:"hostname"`
	Version         string            `json:"version"`
	BinarySHA256    string            `json:"binary_sha256"`
	OS              string            `json:"os"`
	Arch            string            `json:"arch"`
	Methods         []string          `json:"methods"`
	Vault           wire.VaultSummary `json:"vault"`
	MTLSFingerprint string            `json:"mtls_fingerprint,omitempty"`
	RegisteredAt    time.Time         `json:"registered_at"`
	LastHeartbeat   *time.Time        `json:"last_heartbeat"`
	LastSeen        time.Time         `json:"last_seen"`
	// Heartbeat is the last heartbeat body (counters, uptime), if any.
	Heartbeat *wire.Heartbeat `json:"heartbeat,omitempty"`
}

// EnqueueResponse answers POST /admin/v1/tasks.
type EnqueueResponse struct {
	TaskID string `json:"task_id"`
	Tenant string `json:"tenant"`
}

// TaskInfo describes a task. Envelope, Chunks and Result are filled only by
// GET /admin/v1/tasks/{task_id}.
type TaskInfo struct {
	TaskID         string          `json:"task_id"`
	Tenant         string          `json:"tenant"`
	State          string          `json:"state"`
	Method         string          `json:"method"`
	BusinessID     string          `json:"business_id"`
	AgentID        string          `json:"agent_id,omitempty"`
	LeaseS         int             `json:"lease_s"`
	LeaseExpiresAt *time.Time      `json:"lease_expires_at,omitempty"`
	Attempts       int             `json:"attempts"`
	Claims         []Claim         `json:"claims,omitempty"`
	NextSeq        int64           `json:"next_seq"`
	Final          bool            `json:"final"`
	Records        int64           `json:"records"`
	CreatedAt      time.Time       `json:"created_at"`
	FinishedAt     *time.Time      `json:"finished_at,omitempty"`
	Envelope       json.RawMessage `json:"envelope,omitempty"`
	Chunks         []wire.Chunk    `json:"chunks,omitempty"`
	Result         *wire.Result    `json:"result,omitempty"`
}

// ReleaseInfo describes a published release.
type ReleaseInfo struct {
	Version     string    `json:"version"`
	OS          string    `json:"os"`
	Arch        string    `json:"arch"`
	Size        int64     `json:"size"`
	SHA256      string    `json:"sha256"`
	PublishedAt time.Time `json:"published_at"`
	// SignedFor lists the agents that have an Ed25519 signature.
	SignedFor []string `json:"signed_for"`
}

// AgentManifest is the update manifest of one agent for one release: the
// bytes an offline release key signs.
type AgentManifest struct {
	AgentID  string `json:"agent_id"`
	Manifest string `json:"manifest"`
}

// SignaturesRequest is the body of PUT …/signatures: base64 Ed25519
// signatures over each agent's manifest, by agent ID.
type SignaturesRequest struct {
	Signatures map[string]string `json:"signatures"`
}

// routeAdminAPI sets up the admin API. Every call needs
// "Authorization: Bearer <Config.AdminToken>"; errors are
// {"error": "…"} with 400, 401, 404, 409 or 413.
//
//	GET    /admin/v1/health                                        {"status":"ok"}
//	POST   /admin/v1/tokens                  CreateTokenRequest → 201 CreateTokenResponse
//	GET    /admin/v1/tokens                                      → {"tokens":[TokenInfo]}
//	POST   /admin/v1/tokens/{token_id}/revoke                    → TokenInfo
//	GET    /admin/v1/agents[?tenant=]                            → {"agents":[AgentInfo]}
//	GET    /admin/v1/agents/{agent_id}                           → AgentInfo
//	POST   /admin/v1/tasks[?tenant=][&unchecked=1]   envelope    → 201 EnqueueResponse
//	GET    /admin/v1/tasks[?tenant=][&state=]                    → {"tasks":[TaskInfo]}
//	GET    /admin/v1/tasks/{task_id}                             → TaskInfo with envelope, chunks, result
//	POST   /admin/v1/tasks/{task_id}/cancel                      → TaskInfo
//	GET    /admin/v1/events[?agent_id=][&type=][&task_id=][&after=SEQ][&limit=N] → {"events":[StoredEvent]}
//	POST   /admin/v1/releases?version=&os=&arch=     raw binary  → 201 ReleaseInfo
//	GET    /admin/v1/releases                                    → {"releases":[ReleaseInfo]}
//	DELETE /admin/v1/releases/{version}/{os}/{arch}              → 204
//	GET    /admin/v1/releases/{version}/{os}/{arch}/manifests    → {"manifests":[AgentManifest]}
//	PUT    /admin/v1/releases/{version}/{os}/{arch}/signatures   SignaturesRequest → ReleaseInfo
//	POST   /admin/v1/faults                  Fault             → 201 FaultInfo
//	GET    /admin/v1/faults                                      → {"faults":[FaultInfo]}
//	DELETE /admin/v1/faults                                      → 204
func (s *Server) routeAdminAPI() {
	p := AdminPrefix
	s.admin("GET "+p+"/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.admin("POST "+p+"/tokens", s.adminCreateToken)
	s.admin("GET "+p+"/tokens", s.adminListTokens)
	s.admin("POST "+p+"/tokens/{token_id}/revoke", s.adminRevokeToken)
	s.admin("GET "+p+"/agents", s.adminListAgents)
	s.admin("GET "+p+"/agents/{agent_id}", s.adminGetAgent)
	s.admin("POST "+p+"/tasks", s.adminEnqueue)
	s.admin("GET "+p+"/tasks", s.adminListTasks)
	s.admin("GET "+p+"/tasks/{task_id}", s.adminGetTask)
	s.admin("POST "+p+"/tasks/{task_id}/cancel", s.adminCancelTask)
	s.admin("GET "+p+"/events", s.adminListEvents)
	s.admin("POST "+p+"/releases", s.adminPublishRelease)
	s.admin("GET "+p+"/releases", s.adminListReleases)
	s.admin("DELETE "+p+"/releases/{version}/{os}/{arch}", s.adminDeleteRelease)
	s.admin("GET "+p+"/releases/{version}/{os}/{arch}/manifests", s.adminReleaseManifests)
	s.admin("PUT "+p+"/releases/{version}/{os}/{arch}/signatures", s.adminPutSignatures)
	s.admin("POST "+p+"/faults", s.adminAddFault)
	s.admin("GET "+p+"/faults", s.adminListFaults)
	s.admin("DELETE "+p+"/faults", s.adminClearFaults)
	s.adminMux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint")
	})
}

func (s *Server) admin(pattern string, h http.HandlerFunc) {
	s.adminMux.HandleFunc(pattern, func(rw http.ResponseWriter, r *http.Request) {
		w := &statusWriter{ResponseWriter: rw}
		defer func() { s.log.Debug("admin request", "pattern", pattern, "status", w.status) }()
		tok, ok := bearer(r)
		sum := sha256.Sum256([]byte(tok))
		if !ok || !s.hasAdmin || subtle.ConstantTimeCompare(sum[:], s.adminKey[:]) != 1 {
			writeError(w, http.StatusUnauthorized, "admin token required")
			return
		}
		h(w, r)
	})
}

func (s *Server) adminCreateToken(w http.ResponseWriter, r *http.Request) {
	var req CreateTokenRequest
	if !s.decodeOptionalBody(w, r, &req) {
		return
	}
	if req.Tenant == "" {
		req.Tenant = DefaultTenant
	}
	if !wire.ValidBusinessID(req.Tenant) { // the same shape suits a tenant name
		writeError(w, http.StatusBadRequest, "tenant: want [a-z0-9][a-z0-9._-]{0,63}")
		return
	}
	if req.MTLSFingerprint != "" {
		fp, err := wire.NormalizeFingerprint(req.MTLSFingerprint)
		if err != nil {
			writeError(w, http.StatusBadRequest, "mtls_fingerprint: "+err.Error())
			return
		}
		req.MTLSFingerprint = fp
	}
	raw := make([]byte, 32)
	s.mustRead(raw)
	secret := "rvat_" + base64.RawURLEncoding.EncodeToString(raw)
	resp := CreateTokenResponse{
		TokenID:         "tok_" + s.randomHex(8),
		Tenant:          req.Tenant,
		Token:           secret,
		UpdateKey:       s.randomHex(32),
		MTLSFingerprint: req.MTLSFingerprint,
	}
	tok := &token{
		id:        resp.TokenID,
		hash:      sha256.Sum256([]byte(secret)),
		tenant:    req.Tenant,
		updateKey: []byte(resp.UpdateKey),
		createdAt: s.now(),
		pinned:    req.MTLSFingerprint,
	}
	s.mu.Lock()
	s.tokens[tok.hash] = tok
	s.tokensByID[tok.id] = tok
	s.tokenOrder = append(s.tokenOrder, tok)
	s.mu.Unlock()
	s.log.Info("token created", "token_id", tok.id, "tenant", tok.tenant)
	writeJSON(w, http.StatusCreated, resp)
}

func (s *Server) mustRead(b []byte) {
	if _, err := s.rand.Read(b); err != nil {
		panic("controlplane: random source failed: " + err.Error())
	}
}

func (s *Server) tokenInfoLocked(t *token) TokenInfo {
	ti := TokenInfo{TokenID: t.id, Tenant: t.tenant, AgentID: t.agentID, Revoked: t.revoked, CreatedAt: t.createdAt.UTC()}
	ti.MTLSFingerprint = s.requiredFingerprintLocked(t)
	return ti
}

func (s *Server) adminListTokens(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out := []TokenInfo{}
	for _, t := range s.tokenOrder {
		out = append(out, s.tokenInfoLocked(t))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"tokens": out})
}

func (s *Server) adminRevokeToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	t := s.tokensByID[r.PathValue("token_id")]
	if t == nil {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, "no such token")
		return
	}
	t.revoked = true
	info := s.tokenInfoLocked(t)
	s.mu.Unlock()
	s.log.Info("token revoked", "token_id", info.TokenID, "agent_id", info.AgentID)
	writeJSON(w, http.StatusOK, info)
}

// onlineWindow is how recent a heartbeat must be for an agent to be online:
// three heartbeat intervals.
func (s *Server) onlineWindow() time.Duration {
	if s.cfg.HeartbeatInterval > 0 {
		return 3 * s.cfg.HeartbeatInterval
	}
	return 3 * wire.DefaultHeartbeatInterval
}

func (s *Server) agentInfoLocked(a *agent) AgentInfo {
	ai := AgentInfo{
		AgentID:         a.id,
		TokenID:         a.tok.id,
		Tenant:          a.tok.tenant,
		Revoked:         a.tok.revoked,
		Hostname:        a.reg.Hostname,
		Version:         a.reg.Version,
		BinarySHA256:    a.reg.BinarySHA256,
		OS:              a.reg.OS,
		Arch:            a.reg.Arch,
		Methods:         slices.Clone(a.reg.Methods),
		Vault:           a.reg.Vault,
		MTLSFingerprint: a.fingerprint,
		RegisteredAt:    a.registeredAt.UTC(),
		LastSeen:        a.lastSeen.UTC(),
	}
	if ai.Methods == nil {
		ai.Methods = []string{}
	}
	if a.hb != nil {
		hb := *a.hb
		ai.Heartbeat = &hb
		if hb.Version != "" {
			ai.Version = hb.Version
		}
		if hb.BinarySHA256 != "" {
			ai.BinarySHA256 = hb.BinarySHA256
		}
	}
	if !a.lastHeartbeat.IsZero() {
		t := a.lastHeartbeat.UTC()
		ai.LastHeartbeat = &t
		ai.Online = !a.tok.revoked && s.now().Sub(a.lastHeartbeat) <= s.onlineWindow()
	}
	return ai
}

func (s *Server) adminListAgents(w http.ResponseWriter, r *http.Request) {
	tenant := r.URL.Query().Get("tenant")
	s.mu.Lock()
	out := []AgentInfo{}
	for _, a := range s.agentOrder {
		if tenant == "" || a.tok.tenant == tenant {
			out = append(out, s.agentInfoLocked(a))
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"agents": out})
}

func (s *Server) adminGetAgent(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	a := s.agents[r.PathValue("agent_id")]
	if a == nil {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, "no such agent")
		return
	}
	info := s.agentInfoLocked(a)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, info)
}

// adminEnqueue takes any JSON object as the envelope and hands it to the
// tenant's agents as it is, with task_id (generated unless given) and
// lease_s (Config.DefaultLease unless given) set. Unless ?unchecked=1, it
// checks what the control plane can check without a vault: a valid
// task_id, a method, a valid connector.business_id, and credentials that
// are all vault:// references — the control plane must never hold a
// secret. unchecked=1 exists for tests of the agent's own envelope checks.
func (s *Server) adminEnqueue(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	tenant := q.Get("tenant")
	if tenant == "" {
		tenant = DefaultTenant
	}
	unchecked := q.Get("unchecked") == "1"

	b, status, err := readBody(w, r, int64(s.cfg.MaxBodyBytes), nil)
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	limits := wire.Limits{MaxBytes: s.cfg.MaxBodyBytes}
	var fields rawEnvelope
	if err := wire.Decode(b, &fields, limits); err != nil {
		writeError(w, http.StatusBadRequest, "envelope: "+err.Error())
		return
	}
	if fields == nil {
		writeError(w, http.StatusBadRequest, "envelope: want a JSON object")
		return
	}
	var env wire.Envelope
	envErr := wire.Decode(b, &env, limits)
	if !unchecked {
		if envErr != nil {
			writeError(w, http.StatusBadRequest, "envelope: "+envErr.Error())
			return
		}
		if msg := checkEnvelope(&env, fields); msg != "" {
			writeError(w, http.StatusBadRequest, "envelope: "+msg)
			return
		}
	}
	leaseS := env.LeaseS
	if _, ok := fields["lease_s"]; !ok || leaseS <= 0 {
		leaseS = int(s.cfg.DefaultLease / time.Second)
		if _, ok := fields["lease_s"]; !ok {
			fields["lease_s"] = json.RawMessage(strconv.Itoa(leaseS))
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	id := env.TaskID
	if _, given := fields["task_id"]; !given || id == "" {
		id = "tsk_" + s.randomHex(12)
		for s.tasks[id] != nil {
			id = "tsk_" + s.randomHex(12)
		}
		fields["task_id"], _ = json.Marshal(id)
	} else if s.tasks[id] != nil {
		writeError(w, http.StatusConflict, "a task with this task_id exists")
		return
	}
	out, err := json.Marshal(fields)
	if err != nil {
		writeError(w, http.StatusBadRequest, "envelope: cannot be encoded")
		return
	}
	if len(out) > wire.MaxBodyBytes {
		writeError(w, http.StatusRequestEntityTooLarge, "envelope over 1 MiB")
		return
	}
	t := &task{
		id:         id,
		tenant:     tenant,
		envelope:   out,
		method:     env.Method,
		businessID: env.Connector.BusinessID,
		leaseS:     leaseS,
		chunkSize:  max(env.ChunkSize, 0),
		state:      TaskQueued,
		createdAt:  s.now(),
	}
	s.tasks[id] = t
	s.taskOrder = append(s.taskOrder, t)
	s.queues[tenant] = append(s.queues[tenant], t)
	s.broadcastLocked(tenant)
	s.log.Info("task enqueued", "task_id", id, "tenant", tenant, "method", t.method, "connector", t.businessID)
	writeJSON(w, http.StatusCreated, EnqueueResponse{TaskID: id, Tenant: tenant})
}

// checkEnvelope returns what is wrong with an envelope, or "".
func checkEnvelope(env *wire.Envelope, fields rawEnvelope) string {
	if _, given := fields["task_id"]; given && !wire.ValidTaskID(env.TaskID) {
		return "task_id: want [A-Za-z0-9_-]{1,64}"
	}
	switch {
	case env.Method == "":
		return "method is required"
	case !wire.ValidBusinessID(env.Connector.BusinessID):
		return "connector.business_id: want [a-z0-9][a-z0-9._-]{0,63}"
	case fields["lease_s"] != nil && (env.LeaseS < 1 || env.LeaseS > 86400):
		return "lease_s: want 1 to 86400"
	case env.TimeoutS < 0 || env.ChunkSize < 0:
		return "timeout_s and chunk_size: want 0 or more"
	}
	for _, ref := range env.Auth.Credentials {
		if !strings.HasPrefix(ref, "vault://") {
			// The value is not quoted: it may be the secret that does not
			// belong here.
			return "auth.credentials: every value must be a vault:// reference; the control plane never holds a secret"
		}
	}
	return ""
}

func (s *Server) taskInfoLocked(t *task, full bool) TaskInfo {
	ti := TaskInfo{
		TaskID:     t.id,
		Tenant:     t.tenant,
		State:      t.state,
		Method:     t.method,
		BusinessID: t.businessID,
		AgentID:    t.holder,
		LeaseS:     t.leaseS,
		Attempts:   t.attempts,
		Claims:     slices.Clone(t.claims),
		NextSeq:    t.nextSeq,
		Final:      t.final,
		Records:    t.records,
		CreatedAt:  t.createdAt.UTC(),
	}
	if t.state == TaskLeased {
		e := t.leaseExpires.UTC()
		ti.LeaseExpiresAt = &e
	}
	if !t.finishedAt.IsZero() {
		f := t.finishedAt.UTC()
		ti.FinishedAt = &f
	}
	if full {
		ti.Envelope = t.envelope
		ti.Chunks = slices.Clone(t.chunks)
		if t.result != nil {
			r := *t.result
			ti.Result = &r
		}
	}
	return ti
}

func (s *Server) adminListTasks(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	tenant, state := q.Get("tenant"), q.Get("state")
	s.mu.Lock()
	out := []TaskInfo{}
	for _, t := range s.taskOrder {
		if (tenant == "" || t.tenant == tenant) && (state == "" || t.state == state) {
			out = append(out, s.taskInfoLocked(t, false))
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"tasks": out})
}

func (s *Server) adminGetTask(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	t := s.tasks[r.PathValue("task_id")]
	if t == nil {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, "no such task")
		return
	}
	info := s.taskInfoLocked(t, true)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, info)
}

func (s *Server) adminCancelTask(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	t := s.tasks[r.PathValue("task_id")]
	switch {
	case t == nil:
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, "no such task")
		return
	case t.state == TaskCompleted || t.state == TaskFailed:
		s.mu.Unlock()
		writeError(w, http.StatusConflict, "task already has its result")
		return
	}
	if t.state != TaskCancelled {
		t.state = TaskCancelled
		t.finishedAt = s.now()
		s.dequeueLocked(t)
	}
	info := s.taskInfoLocked(t, false)
	s.mu.Unlock()
	s.log.Info("task cancelled", "task_id", info.TaskID)
	writeJSON(w, http.StatusOK, info)
}

// adminListEvents lists stored events, oldest first, filtered by agent_id,
// type and task_id, after the seq given as ?after= (for polling), at most
// ?limit= (default 1000).
func (s *Server) adminListEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, _ := strconv.ParseInt(q.Get("after"), 10, 64)
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit <= 0 {
		limit = 1000
	}
	agentID, typ, taskID := q.Get("agent_id"), q.Get("type"), q.Get("task_id")
	s.mu.Lock()
	out := []StoredEvent{}
	for _, e := range s.events {
		if e.Seq <= after || (agentID != "" && e.AgentID != agentID) ||
			(typ != "" && e.Event.Type != typ) || (taskID != "" && e.Event.TaskID != taskID) {
			continue
		}
		out = append(out, e)
		if len(out) == limit {
			break
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"events": out})
}

// adminPublishRelease takes the binary as the raw body and version, os and
// arch from the query. A release is never replaced: delete it first.
func (s *Server) adminPublishRelease(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	version, goos, goarch := q.Get("version"), q.Get("os"), q.Get("arch")
	ver, err := wire.ParseVersion(version)
	if err != nil {
		writeError(w, http.StatusBadRequest, "version: want a semantic version")
		return
	}
	if !validPlatform(goos) || !validPlatform(goarch) {
		writeError(w, http.StatusBadRequest, "os, arch: want GOOS and GOARCH names")
		return
	}
	bin, status, err := readBody(w, r, s.cfg.MaxReleaseBytes, nil)
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	if len(bin) == 0 {
		writeError(w, http.StatusBadRequest, "the body must be the binary")
		return
	}
	sum := sha256.Sum256(bin)
	rel := &release{
		version: version, ver: ver, os: goos, arch: goarch,
		binary: bin, sha256: hex.EncodeToString(sum[:]),
		signatures: map[string][]byte{},
	}
	key := releaseKey{version, goos, goarch}
	s.mu.Lock()
	if s.releases[key] != nil {
		s.mu.Unlock()
		writeError(w, http.StatusConflict, "this release exists; delete it first")
		return
	}
	rel.publishedAt = s.now()
	s.releases[key] = rel
	info := releaseInfo(rel)
	s.mu.Unlock()
	s.log.Info("release published", "version", version, "os", goos, "arch", goarch, "size", len(bin), "sha256", rel.sha256)
	writeJSON(w, http.StatusCreated, info)
}

func releaseInfo(rel *release) ReleaseInfo {
	ri := ReleaseInfo{
		Version: rel.version, OS: rel.os, Arch: rel.arch, Size: int64(len(rel.binary)),
		SHA256: rel.sha256, PublishedAt: rel.publishedAt.UTC(), SignedFor: []string{},
	}
	for id := range rel.signatures {
		ri.SignedFor = append(ri.SignedFor, id)
	}
	slices.Sort(ri.SignedFor)
	return ri
}

func (s *Server) adminListReleases(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out := []ReleaseInfo{}
	for _, rel := range s.releases {
		out = append(out, releaseInfo(rel))
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b ReleaseInfo) int {
		c, _ := wire.CompareVersions(a.Version, b.Version)
		if c != 0 {
			return c
		}
		return strings.Compare(a.OS+"/"+a.Arch, b.OS+"/"+b.Arch)
	})
	writeJSON(w, http.StatusOK, map[string]any{"releases": out})
}

func (s *Server) releaseFromPath(r *http.Request) releaseKey {
	return releaseKey{r.PathValue("version"), r.PathValue("os"), r.PathValue("arch")}
}

func (s *Server) adminDeleteRelease(w http.ResponseWriter, r *http.Request) {
	key := s.releaseFromPath(r)
	s.mu.Lock()
	_, ok := s.releases[key]
	delete(s.releases, key)
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "no such release")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// adminReleaseManifests returns the update manifest of every registered
// agent of the release's os/arch: what the offline release key must sign.
// §7's manifest names the agent, so there is one signature per agent.
func (s *Server) adminReleaseManifests(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rel := s.releases[s.releaseFromPath(r)]
	if rel == nil {
		writeError(w, http.StatusNotFound, "no such release")
		return
	}
	out := []AgentManifest{}
	for _, a := range s.agentOrder {
		if a.reg.OS == rel.os && a.reg.Arch == rel.arch {
			m := wire.UpdateManifest(a.id, rel.version, rel.os, rel.arch, int64(len(rel.binary)), rel.sha256)
			out = append(out, AgentManifest{AgentID: a.id, Manifest: string(m)})
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"manifests": out})
}

// adminPutSignatures adds or replaces the Ed25519 signatures of a release,
// one per agent. With Config.ReleasePublicKey set, each must verify.
func (s *Server) adminPutSignatures(w http.ResponseWriter, r *http.Request) {
	var req SignaturesRequest
	if !s.decodeBody(w, r, &req) {
		return
	}
	sigs := map[string][]byte{}
	for id, b64 := range req.Signatures {
		sig, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(sig) != ed25519.SignatureSize {
			writeError(w, http.StatusBadRequest, "signatures: want base64 of 64 bytes")
			return
		}
		sigs[id] = sig
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rel := s.releases[s.releaseFromPath(r)]
	if rel == nil {
		writeError(w, http.StatusNotFound, "no such release")
		return
	}
	for id, sig := range sigs {
		if s.cfg.ReleasePublicKey != nil {
			m := wire.UpdateManifest(id, rel.version, rel.os, rel.arch, int64(len(rel.binary)), rel.sha256)
			if !ed25519.Verify(s.cfg.ReleasePublicKey, m, sig) {
				writeError(w, http.StatusBadRequest, "signatures: a signature does not verify with the release key")
				return
			}
		}
	}
	for id, sig := range sigs {
		rel.signatures[id] = sig
	}
	writeJSON(w, http.StatusOK, releaseInfo(rel))
}

// newestReleaseLocked returns the newest release for os/arch, or nil.
func (s *Server) newestReleaseLocked(goos, goarch string) *release {
	var best *release
	for _, rel := range s.releases {
		if rel.os == goos && rel.arch == goarch && (best == nil || rel.ver.Compare(best.ver) > 0) {
			best = rel
		}
	}
	return best
}

// decodeOptionalBody decodes a JSON body into v, accepting an empty body.
func (s *Server) decodeOptionalBody(w http.ResponseWriter, r *http.Request, v any) bool {
	return s.decodeBodyWith(w, r, nil, func(b []byte) error {
		if len(b) == 0 {
			return nil
		}
		return wire.Decode(b, v, wire.Limits{MaxBytes: s.cfg.MaxBodyBytes})
	})
}
