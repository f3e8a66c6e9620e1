// Package wire holds the JSON types of the agent ⇄ control plane protocol
// (docs: /work/shared/PROTOCOL.md, version 1) and the strict decoder that
// both sides use for every body.
//
// The types carry only what the protocol names. Optional fields are
// omitted when zero: for every optional number in the protocol an absent
// field and a zero mean the same thing, so nothing is lost.
//
// Nothing here ever holds a secret value: an envelope carries vault
// references, never the values they name.
package wire

import (
	"encoding/json"
	"time"
)

// APIPrefix is the path of every agent endpoint, relative to the control
// plane URL (§ Transport).
const APIPrefix = "/api/agent/v1"

// InstallPath is the installer script's path (§8); it is outside APIPrefix.
const InstallPath = "/agent/install"

// Header names of the protocol.
const (
	HeaderAgentID = "X-RV-Agent-Id"
	// HeaderClientCertFingerprint is set by a trusted load balancer that
	// terminates mTLS in front of the control plane.
	HeaderClientCertFingerprint = "X-Client-Cert-Fingerprint"
)

// Methods the agent implements (§3 Methods).
const (
	MethodHTTPRequest = "http.request"
	MethodHTTPSync    = "http.sync"
	MethodLDAPSearch  = "ldap.search"
)

// Auth schemes (§3 Auth schemes).
const (
	SchemeNone                    = "none"
	SchemeBearer                  = "bearer"
	SchemeBasic                   = "basic"
	SchemeAPIKey                  = "api_key"
	SchemeOAuth2ClientCredentials = "oauth2_client_credentials"
	SchemeOAuth2RefreshToken      = "oauth2_refresh_token"
	SchemeLDAPSimple              = "ldap_simple"
)

// Result statuses (§5). The protocol shows only "completed"; a task that
// fails reports "failed" with an ErrorClass.
const (
	StatusCompleted = "completed"
	StatusFailed    = "failed"
)

// Error classes of a failed task (§5).
const (
	ErrInvalidEnvelope       = "invalid_envelope"
	ErrUnsupportedMethod     = "unsupported_method"
	ErrVaultReferenceMissing = "vault_reference_missing"
	ErrBindingViolation      = "binding_violation"
	ErrTargetUnreachable     = "target_unreachable"
	ErrTargetTLS             = "target_tls"
	ErrTargetAuthFailed      = "target_auth_failed"
	ErrTargetError           = "target_error"
	ErrResponseTooLarge      = "response_too_large"
	ErrResultTooLarge        = "result_too_large"
	ErrTimeout               = "timeout"
	ErrCancelled             = "cancelled"
	ErrInternal              = "internal"
)

// ErrorClasses lists every error class of §5, in the protocol's order.
var ErrorClasses = []string{
	ErrInvalidEnvelope, ErrUnsupportedMethod, ErrVaultReferenceMissing,
	ErrBindingViolation, ErrTargetUnreachable, ErrTargetTLS, ErrTargetAuthFailed,
	ErrTargetError, ErrResponseTooLarge, ErrResultTooLarge, ErrTimeout,
	ErrCancelled, ErrInternal,
}

// ValidErrorClass reports whether c is one of the error classes of §5.
func ValidErrorClass(c string) bool {
	for _, k := range ErrorClasses {
		if c == k {
			return true
		}
	}
	return false
}

// Audit event types (§6).
const (
	EventRegistered         = "agent.registered"
	EventTaskClaimed        = "agent.task_claimed"
	EventTaskCompleted      = "agent.task_completed"
	EventTaskFailed         = "agent.task_failed"
	EventSelfUpdateApplied  = "agent.self_update_applied"
	EventSelfUpdateReverted = "agent.self_update_reverted"
	EventSelfUpdateRejected = "agent.self_update_rejected"
	EventVaultReloaded      = "agent.vault_reloaded"
	EventVaultPlaintext     = "agent.vault_plaintext"
	EventDisabled           = "agent.disabled" // local audit log only, never sent
	EventEventsDropped      = "agent.events_dropped"
)

// Defaults and limits the protocol names.
const (
	DefaultHeartbeatInterval = 30 * time.Second
	DefaultPollWait          = 25 * time.Second
	MaxPollWait              = 60 * time.Second // the control plane caps wait here
	DefaultLease             = 300 * time.Second
	DefaultTimeout           = 300 * time.Second
	DefaultChunkSize         = 500
	MaxEventsPerBatch        = 100
	MaxBodyBytes             = 1 << 20   // every body but the update binary
	MaxUpdateBytes           = 256 << 20 // §7: an offer's size above this is refused
	MaxDepth                 = 32
)

// VaultSummary describes the agent's vault without any of its contents.
type VaultSummary struct {
	Sealed  bool   `json:"sealed"`
	Seal    string `json:"seal"`
	Entries int    `json:"entries"`
}

// RegisterRequest is the body of POST /register (§1).
type RegisterRequest struct {
	Hostname     string       `json:"hostname"`
	Version      string       `json:"version"`
	BinarySHA256 string       `json:"binary_sha256"`
	OS           string       `json:"os"`
	Arch         string       `json:"arch"`
	Methods      []string     `json:"methods"`
	Vault        VaultSummary `json:"vault"`
	// MTLSFingerprint is the SHA-256 of the client certificate the agent
	// presents, or nil (JSON null) without mTLS.
	MTLSFingerprint *string `json:"mtls_fingerprint"`
}

// RegisterResponse answers POST /register. The two intervals are optional
// overrides of the agent's own settings; zero means "keep yours".
type RegisterResponse struct {
	AgentID            string `json:"agent_id"`
	HeartbeatIntervalS int    `json:"heartbeat_interval_s,omitempty"`
	PollWaitS          int    `json:"poll_wait_s,omitempty"`
}

// Heartbeat is the body of POST /heartbeat (§2).
type Heartbeat struct {
	AgentID         string `json:"agent_id"`
	Version         string `json:"version"`
	BinarySHA256    string `json:"binary_sha256"`
	UptimeS         int64  `json:"uptime_s"`
	InFlight        int    `json:"in_flight"`
	Completed       int64  `json:"completed"`
	Failed          int64  `json:"failed"`
	VaultGeneration int64  `json:"vault_generation"`
}

// HeartbeatResponse answers POST /heartbeat: `{}` or
// `{"update_available": true}`.
type HeartbeatResponse struct {
	UpdateAvailable bool `json:"update_available,omitempty"`
}

// Connector names the target system of a task.
type Connector struct {
	// BusinessID is the vault's key for this connector's secrets.
	BusinessID string `json:"business_id"`
	Type       string `json:"type,omitempty"`
	BaseURL    string `json:"base_url,omitempty"`
}

// Auth says how the agent authenticates to the target. Credentials maps the
// scheme's fixed field names to vault references, never to values.
type Auth struct {
	Scheme      string            `json:"scheme"`
	TokenURL    string            `json:"token_url,omitempty"`
	Scope       string            `json:"scope,omitempty"`
	Header      string            `json:"header,omitempty"`
	Credentials map[string]string `json:"credentials,omitempty"`
}

// Envelope is a task as the control plane hands it out (§3). Request is
// left raw: each method parses its own shape (with Decode).
type Envelope struct {
	TaskID    string          `json:"task_id"`
	Method    string          `json:"method"`
	Connector Connector       `json:"connector"`
	Auth      Auth            `json:"auth"`
	Request   json.RawMessage `json:"request,omitempty"`
	LeaseS    int             `json:"lease_s,omitempty"`
	TimeoutS  int             `json:"timeout_s,omitempty"`
	ChunkSize int             `json:"chunk_size,omitempty"`
}

// Chunk is the body of POST /tasks/{task_id}/chunks (§4). Records are kept
// raw: neither side needs to look inside a record.
type Chunk struct {
	Seq     int64             `json:"seq"`
	Records []json.RawMessage `json:"records"`
	Final   bool              `json:"final"`
}

// Result is the body of POST /tasks/{task_id}/result (§5). ErrorClass and
// Error are empty for a completed task; Response is set by http.request.
// A JSON null for response decodes as json.RawMessage("null").
type Result struct {
	Status      string          `json:"status"`
	DurationMS  int64           `json:"duration_ms"`
	Records     int64           `json:"records"`
	Chunks      int64           `json:"chunks"`
	ResultBytes int64           `json:"result_bytes"`
	ErrorClass  string          `json:"error_class,omitempty"`
	Error       string          `json:"error,omitempty"`
	Response    json.RawMessage `json:"response,omitempty"`
}

// LeaseResponse answers POST /tasks/{task_id}/lease (§5).
type LeaseResponse struct {
	LeaseS int `json:"lease_s"`
}

// Event is one audit event (§6). Type and At are always set; the other
// fields belong to the types that the protocol lists beside them.
type Event struct {
	Type        string    `json:"type"`
	At          time.Time `json:"at"`
	TaskID      string    `json:"task_id,omitempty"`
	Method      string    `json:"method,omitempty"`
	Connector   string    `json:"connector,omitempty"`
	DurationMS  int64     `json:"duration_ms,omitempty"`
	ResultBytes int64     `json:"result_bytes,omitempty"`
	ErrorClass  string    `json:"error_class,omitempty"`
	From        string    `json:"from,omitempty"`
	To          string    `json:"to,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	Version     string    `json:"version,omitempty"`
	Generation  int64     `json:"generation,omitempty"`
	Count       int64     `json:"count,omitempty"`
}

// EventBatch is the body of POST /events (§6): at most MaxEventsPerBatch.
type EventBatch struct {
	Events []Event `json:"events"`
}

// UpdateOffer answers GET /update with 200 (§7). HMACSHA256 is over
// UpdateManifest(agent_id, Version, OS, Arch, Size, SHA256); Ed25519 is the
// base64 signature of the release key over the same bytes, when there is one.
type UpdateOffer struct {
	Version    string `json:"version"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	Size       int64  `json:"size"`
	SHA256     string `json:"sha256"`
	HMACSHA256 string `json:"hmac_sha256"`
	Ed25519    string `json:"ed25519,omitempty"`
	URL        string `json:"url"`
}

// Manifest answers GET /api/agent/v1/manifest, read by the installer (§8).
type Manifest struct {
	Version string `json:"version"`
	OS      string `json:"os"`
	Arch    string `json:"arch"`
	SHA256  string `json:"sha256"`
	URL     string `json:"url"`
}

// ErrorBody is what the reference control plane puts in the body of an
// error status. Agents must not depend on it.
type ErrorBody struct {
	Error string `json:"error"`
}
