package controlplane

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// §3 Poll. The request waits, on real time, up to wait seconds (capped at
// 60) for a task of the agent's tenant to become claimable: a new task, or
// one whose lease ended (by the injectable clock).
func (s *Server) handleNext(w http.ResponseWriter, r *http.Request, c *caller) {
	wait := wire.DefaultPollWait
	if v := r.URL.Query().Get("wait"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "wait: want a whole number of seconds")
			return
		}
		wait = min(time.Duration(n)*time.Second, wire.MaxPollWait)
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	var leaseTimer *time.Timer
	defer func() {
		if leaseTimer != nil {
			leaseTimer.Stop()
		}
	}()

	for {
		s.mu.Lock()
		t, reassignedFrom := s.claimLocked(c.agentID, c.tenant)
		var env []byte
		if t != nil {
			env = t.envelope
		}
		signal := s.signalLocked(c.tenant)
		next := s.nextLeaseEndLocked(c.tenant)
		now := s.now()
		s.mu.Unlock()

		if t != nil {
			attrs := []any{"task_id", t.id, "agent_id", c.agentID, "tenant", c.tenant}
			if reassignedFrom != "" {
				attrs = append(attrs, "reassigned_from", reassignedFrom)
			}
			s.log.Info("task claimed", attrs...)
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusOK)
			w.Write(env)
			return
		}

		var leaseEnd <-chan time.Time
		if !next.IsZero() {
			d := next.Sub(now)
			if leaseTimer == nil {
				leaseTimer = time.NewTimer(d)
			} else {
				leaseTimer.Reset(d)
			}
			leaseEnd = leaseTimer.C
		}
		select {
		case <-signal:
		case <-leaseEnd:
		case <-deadline.C:
			w.WriteHeader(http.StatusNoContent)
			return
		case <-s.closing:
			w.WriteHeader(http.StatusNoContent)
			return
		case <-r.Context().Done():
			return
		}
	}
}

// claimLocked leases the first claimable task of tenant to agentID: a
// queued task, or a leased one whose lease has ended (it is then taken from
// its holder, which will get 409). It returns the task and the agent it was
// taken from, if any.
func (s *Server) claimLocked(agentID, tenant string) (*task, string) {
	now := s.now()
	for _, t := range s.queues[tenant] {
		if t.state == TaskLeased && now.Before(t.leaseExpires) {
			continue
		}
		if t.state != TaskQueued && t.state != TaskLeased {
			continue
		}
		var from string
		if t.state == TaskLeased {
			from = t.holder
		}
		t.state = TaskLeased
		t.holder = agentID
		t.leaseExpires = now.Add(time.Duration(t.leaseS) * time.Second)
		t.attempts++
		t.claims = append(t.claims, Claim{AgentID: agentID, ClaimedAt: now})
		// A new attempt starts its chunks from seq 0.
		t.chunks, t.chunkBytes, t.nextSeq, t.final, t.records = nil, 0, 0, false, 0
		return t, from
	}
	return nil, ""
}

// nextLeaseEndLocked returns the earliest end of a running lease in tenant,
// or the zero time.
func (s *Server) nextLeaseEndLocked(tenant string) time.Time {
	now := s.now()
	var next time.Time
	for _, t := range s.queues[tenant] {
		if t.state == TaskLeased && t.leaseExpires.After(now) && (next.IsZero() || t.leaseExpires.Before(next)) {
			next = t.leaseExpires
		}
	}
	return next
}

func (s *Server) signalLocked(tenant string) <-chan struct{} {
	ch, ok := s.signals[tenant]
	if !ok {
		ch = make(chan struct{})
		s.signals[tenant] = ch
	}
	return ch
}

func (s *Server) broadcastLocked(tenant string) {
	if ch, ok := s.signals[tenant]; ok {
		close(ch)
		delete(s.signals, tenant)
	}
}

// dequeueLocked removes a finished task from its tenant's queue.
func (s *Server) dequeueLocked(t *task) {
	q := s.queues[t.tenant]
	for i, u := range q {
		if u == t {
			s.queues[t.tenant] = append(q[:i:i], q[i+1:]...)
			return
		}
	}
}

// leasedTaskLocked finds the task that an agent's request names and checks
// that the agent holds its lease. It returns the status to answer when not:
// 410 for a cancelled task, 409 for a task leased to another agent, never
// leased, or unknown to the caller's tenant (an agent only names tasks it
// claimed, so "abandon it" is the right answer to all of them).
func (s *Server) leasedTaskLocked(c *caller, id string) (*task, int, string) {
	t := s.tasks[id]
	switch {
	case t == nil || t.tenant != c.tenant:
		return nil, http.StatusConflict, "task not leased to this agent"
	case t.state == TaskCancelled:
		return nil, http.StatusGone, "task cancelled"
	case t.holder != c.agentID:
		return nil, http.StatusConflict, "task lease lost: reassigned to another agent"
	}
	return t, 0, ""
}

// §4 Chunks.
func (s *Server) handleChunk(w http.ResponseWriter, r *http.Request, c *caller) {
	// The records stay in the body they came in (no copy). With
	// Config.Records nothing keeps them past the callback, so the body's
	// buffer goes back to a pool for the next chunk.
	var bp *[]byte
	if s.cfg.Records != nil {
		bp = s.chunkBodies.Get().(*[]byte)
		defer s.chunkBodies.Put(bp)
	}
	var ch wire.Chunk
	if !s.decodeBodyWith(w, r, bodyBuffer(bp), func(b []byte) error {
		if bp != nil {
			*bp = b[:0] // a larger body's new buffer is the one to keep
		}
		return wire.DecodeChunkInPlace(b, &ch, wire.Limits{MaxBytes: s.cfg.MaxBodyBytes})
	}) {
		return
	}
	if ch.Seq < 0 {
		writeError(w, http.StatusBadRequest, "seq: want 0 or more")
		return
	}
	id := r.PathValue("task_id")
	size := int64(0)
	for _, rec := range ch.Records {
		size += int64(len(rec))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	t, status, msg := s.leasedTaskLocked(c, id)
	switch {
	case t == nil:
		writeError(w, status, msg)
	case ch.Seq < t.nextSeq:
		// A retry of a chunk already stored: acknowledged, not stored twice.
		writeJSON(w, http.StatusOK, struct{}{})
	case t.finished():
		writeError(w, http.StatusConflict, "task already has its result")
	case t.final:
		writeError(w, http.StatusBadRequest, "chunk after the final chunk")
	case ch.Seq > t.nextSeq:
		writeError(w, http.StatusBadRequest, "seq out of order: want "+strconv.FormatInt(t.nextSeq, 10))
	case t.chunkSize > 0 && len(ch.Records) > t.chunkSize:
		writeError(w, http.StatusBadRequest, "more records than the task's chunk_size")
	case t.chunkBytes+size > s.cfg.MaxTaskBytes:
		writeError(w, http.StatusRequestEntityTooLarge, "task result too large for this control plane")
	default:
		if ch.Records == nil {
			ch.Records = []json.RawMessage{}
		}
		if s.cfg.Records != nil {
			s.cfg.Records(id, ch.Seq, ch.Records, ch.Final)
		} else {
			t.chunks = append(t.chunks, ch)
		}
		t.chunkBytes += size
		t.nextSeq++
		t.records += int64(len(ch.Records))
		t.final = ch.Final
		writeJSON(w, http.StatusOK, struct{}{})
	}
}

func bodyBuffer(bp *[]byte) []byte {
	if bp == nil {
		return nil
	}
	return *bp
}

// §5 Result. Stored once: a retry after success is acknowledged and the
// first result kept.
func (s *Server) handleResult(w http.ResponseWriter, r *http.Request, c *caller) {
	var res wire.Result
	if !s.decodeBody(w, r, &res) {
		return
	}
	switch {
	case res.Status != wire.StatusCompleted && res.Status != wire.StatusFailed:
		writeError(w, http.StatusBadRequest, `status: want "completed" or "failed"`)
		return
	case res.Status == wire.StatusFailed && !wire.ValidErrorClass(res.ErrorClass):
		writeError(w, http.StatusBadRequest, "error_class: want one of the classes of PROTOCOL.md §5")
		return
	case res.Status == wire.StatusCompleted && res.ErrorClass != "":
		writeError(w, http.StatusBadRequest, "error_class: must be null for a completed task")
		return
	}
	id := r.PathValue("task_id")

	s.mu.Lock()
	t, status, msg := s.leasedTaskLocked(c, id)
	if t == nil {
		s.mu.Unlock()
		writeError(w, status, msg)
		return
	}
	if t.result != nil {
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, struct{}{})
		return
	}
	t.result = &res
	t.state = TaskCompleted
	if res.Status == wire.StatusFailed {
		t.state = TaskFailed
	}
	t.finishedAt = s.now()
	s.dequeueLocked(t)
	s.mu.Unlock()

	s.log.Info("task result", "task_id", id, "agent_id", c.agentID, "status", res.Status, "error_class", res.ErrorClass)
	writeJSON(w, http.StatusOK, struct{}{})
}

// §5 Lease renewal: the lease runs lease_s from now.
func (s *Server) handleLease(w http.ResponseWriter, r *http.Request, c *caller) {
	b, status, err := readBody(w, r, int64(s.cfg.MaxBodyBytes), nil)
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	if len(b) > 0 { // the protocol names no body; an empty one or {} is fine
		var v struct{}
		if err := wire.Decode(b, &v, wire.Limits{MaxBytes: s.cfg.MaxBodyBytes}); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	id := r.PathValue("task_id")

	s.mu.Lock()
	defer s.mu.Unlock()
	t, status, msg := s.leasedTaskLocked(c, id)
	switch {
	case t == nil:
		writeError(w, status, msg)
	case t.finished():
		writeError(w, http.StatusConflict, "task already has its result")
	default:
		t.leaseExpires = s.now().Add(time.Duration(t.leaseS) * time.Second)
		writeJSON(w, http.StatusOK, wire.LeaseResponse{LeaseS: t.leaseS})
	}
}
