package controlplane

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// Fault makes the next Count requests to an agent endpoint answer Status,
// before authentication, so that agent tests can reach every row of the
// protocol's status table: 401, 403, 409, 410, 413, 429 and 503 with
// Retry-After, 500, or a body too large for the agent.
type Fault struct {
	// Endpoint is one of Endpoints, or "*" for every agent endpoint.
	Endpoint string `json:"endpoint"`
	Status   int    `json:"status"`
	// Count is how many requests the fault answers; default 1.
	Count int `json:"count,omitempty"`
	// RetryAfter, when set, is sent as the Retry-After header as it is
	// (so that tests can send malformed values too).
	RetryAfter string `json:"retry_after,omitempty"`
	// Body replaces the default JSON error body.
	Body string `json:"body,omitempty"`
	// BodyBytes, when set, pads the body to this many bytes (at most
	// 64 MiB), to test the agent's response size limits.
	BodyBytes int `json:"body_bytes,omitempty"`
	// AgentID, when set, limits the fault to requests whose X-RV-Agent-Id
	// is this agent's.
	AgentID string `json:"agent_id,omitempty"`
}

// FaultInfo is a queued fault with what remains of it.
type FaultInfo struct {
	ID        int64 `json:"id"`
	Remaining int   `json:"remaining"`
	Fault
}

type fault struct {
	id        int64
	remaining int
	f         Fault
}

const maxFaultBody = 64 << 20

func (s *Server) injectFault(w http.ResponseWriter, r *http.Request, endpoint string) bool {
	agentID := r.Header.Get(wire.HeaderAgentID)
	s.mu.Lock()
	var hit *Fault
	for i, f := range s.faults {
		if (f.f.Endpoint == endpoint || f.f.Endpoint == "*") && (f.f.AgentID == "" || f.f.AgentID == agentID) {
			copied := f.f
			hit = &copied
			f.remaining--
			if f.remaining <= 0 {
				s.faults = slices.Delete(s.faults, i, i+1)
			}
			break
		}
	}
	s.mu.Unlock()
	if hit == nil {
		return false
	}
	s.log.Info("fault injected", "endpoint", endpoint, "status", hit.Status)
	body := hit.Body
	if body == "" {
		body = `{"error":"injected fault"}`
	}
	if pad := hit.BodyBytes - len(body); pad > 0 {
		body += strings.Repeat(" ", pad) // trailing whitespace keeps a JSON body valid
	}
	withBody := hit.Status != http.StatusNoContent && hit.Status != http.StatusNotModified
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if withBody {
		h.Set("Content-Length", strconv.Itoa(len(body)))
	}
	if hit.RetryAfter != "" {
		h.Set("Retry-After", hit.RetryAfter)
	}
	if hit.Status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", `Bearer realm="tier3-agent"`)
	}
	w.WriteHeader(hit.Status)
	if withBody {
		w.Write([]byte(body))
	}
	return true
}

func (s *Server) adminAddFault(w http.ResponseWriter, r *http.Request) {
	var f Fault
	if !s.decodeBody(w, r, &f) {
		return
	}
	if f.Count == 0 {
		f.Count = 1
	}
	switch {
	case f.Endpoint != "*" && !slices.Contains(Endpoints, f.Endpoint):
		writeError(w, http.StatusBadRequest, "endpoint: want one of "+strings.Join(Endpoints, ", ")+" or *")
		return
	case f.Status < 200 || f.Status > 599:
		writeError(w, http.StatusBadRequest, "status: want 200 to 599")
		return
	case f.Count < 0 || f.BodyBytes < 0 || f.BodyBytes > maxFaultBody:
		writeError(w, http.StatusBadRequest, "count and body_bytes: out of range")
		return
	case strings.ContainsAny(f.RetryAfter, "\r\n"):
		writeError(w, http.StatusBadRequest, "retry_after: no line breaks")
		return
	}
	s.mu.Lock()
	s.faultSeq++
	ft := &fault{id: s.faultSeq, remaining: f.Count, f: f}
	s.faults = append(s.faults, ft)
	info := FaultInfo{ID: ft.id, Remaining: ft.remaining, Fault: f}
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, info)
}

func (s *Server) adminListFaults(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out := []FaultInfo{}
	for _, f := range s.faults {
		out = append(out, FaultInfo{ID: f.id, Remaining: f.remaining, Fault: f.f})
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"faults": out})
}

func (s *Server) adminClearFaults(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}
