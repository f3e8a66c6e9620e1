package controlplane

import (
	"crypto/sha256"
	"encoding/json"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// token is an agent's bearer token. Only its SHA-256 is kept.
type token struct {
	id        string
	hash      [sha256.Size]byte
	tenant    string
	updateKey []byte // the bytes of RV_AGENT_UPDATE_KEY
	revoked   bool
	createdAt time.Time
	// pinned is a fingerprint set by the admin at creation; the agent must
	// present it from its first request on.
	pinned  string
	agentID string // set at the first registration
}

// agent is what an agent told us about itself.
type agent struct {
	id            string
	tok           *token
	reg           wire.RegisterRequest
	fingerprint   string // normalized; "" when the agent does not use mTLS
	registeredAt  time.Time
	lastHeartbeat time.Time
	lastSeen      time.Time
	hb            *wire.Heartbeat
}

// Task states, as the admin API reports them.
const (
	TaskQueued    = "queued"
	TaskLeased    = "leased"
	TaskCompleted = "completed"
	TaskFailed    = "failed"
	TaskCancelled = "cancelled"
)

type task struct {
	id         string
	tenant     string
	envelope   []byte // exactly what the agent receives
	method     string
	businessID string
	leaseS     int
	chunkSize  int // 0: the envelope does not set one, the agent's own applies

	state        string
	holder       string // agent ID of the current lease
	leaseExpires time.Time
	attempts     int
	claims       []Claim

	chunks     []wire.Chunk // of the current attempt
	chunkBytes int64
	nextSeq    int64
	final      bool
	records    int64

	result     *wire.Result
	createdAt  time.Time
	finishedAt time.Time
}

func (t *task) finished() bool {
	return t.state == TaskCompleted || t.state == TaskFailed || t.state == TaskCancelled
}

type releaseKey struct{ version, os, arch string }

type release struct {
	version     string
	ver         wire.Version
	os, arch    string
	binary      []byte
	sha256      string
	publishedAt time.Time
	signatures  map[string][]byte // Ed25519 over UpdateManifest, by agent ID
}

// StoredEvent is an audit event as the control plane keeps it.
type StoredEvent struct {
	Seq        int64      `json:"seq"`
	AgentID    string     `json:"agent_id"`
	ReceivedAt time.Time  `json:"received_at"`
	Event      wire.Event `json:"event"`
}

// Claim records one lease of a task.
type Claim struct {
	AgentID   string    `json:"agent_id"`
	ClaimedAt time.Time `json:"claimed_at"`
}

// rawEnvelope is how an envelope is kept for pass-through: every field the
// admin gave, known or not.
type rawEnvelope = map[string]json.RawMessage
