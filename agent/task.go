package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// taskError fails a task with an error class of PROTOCOL.md §5.
type taskError struct {
	class string
	msg   string
}

func (e *taskError) Error() string { return e.class + ": " + e.msg }

func fail(class, format string, a ...any) error {
	return &taskError{class: class, msg: fmt.Sprintf(format, a...)}
}

// outcome is what a method produced.
type outcome struct {
	response json.RawMessage
	records  int64
	chunks   int64
	bytes    int64
}

var (
	errLeaseLost = errors.New("lease lost (409)")
	errCancelled = errors.New("task cancelled (410)")
)

// taskRun is one task being run.
type taskRun struct {
	a     *Agent
	env   *wire.Envelope
	st    *runState
	start time.Time
	lease time.Duration
	// leaseEnd is when the lease runs out unless renewed (guarded by the
	// renewal goroutine; read by the result sender after it stops).
	leaseEnd time.Time
	req      any // the method's parsed request
	// cancel stops the task with a cause: errLeaseLost or errCancelled
	// when a chunk is answered 409 or 410 (chunks.go). Nil until runTask
	// sets it.
	cancel context.CancelCauseFunc
	// mem is where withSecret opens the task's credentials: locked
	// memory kept from task to task (Agent.scratch), wiped after each use.
	mem *secmem.Scratch
}

// getScratch returns locked scratch memory for a task: one that an earlier
// task gave back, or a new one. Mapping and locking pages for each task,
// and unmapping them after, cost ~0.1 ms each way on the task's path.
func (a *Agent) getScratch() *secmem.Scratch {
	select {
	case s := <-a.scratch:
		return s
	default:
		return new(secmem.Scratch)
	}
}

// putScratch keeps s for the next task (With wiped it after each use), or
// releases it when enough are kept.
func (a *Agent) putScratch(s *secmem.Scratch) {
	select {
	case a.scratch <- s:
	default:
		s.Destroy()
	}
}

func lenientTaskID(raw []byte) string {
	var probe struct {
		TaskID string `json:"task_id"`
	}
	if json.Unmarshal(raw, &probe) != nil || !wire.ValidTaskID(probe.TaskID) {
		return ""
	}
	return probe.TaskID
}

func (a *Agent) runTask(ctx context.Context, raw []byte) {
	var env wire.Envelope
	st := a.state.Load()
	t := &taskRun{a: a, env: &env, st: st, start: a.clock.Now(), mem: a.getScratch()}
	defer a.putScratch(t.mem)
	if err := wire.Decode(raw, &env, wire.Limits{}); err != nil {
		env.TaskID = lenientTaskID(raw)
		if env.TaskID == "" {
			a.logWarn("dropped a task envelope that names no valid task_id", "error", err)
			return
		}
		t.lease = wire.DefaultLease
		t.leaseEnd = t.start.Add(t.lease)
		t.finish(ctx, nil, fail(wire.ErrInvalidEnvelope, "the envelope is not valid JSON of the protocol: %v", err))
		return
	}
	t.lease = time.Duration(env.LeaseS) * time.Second
	if t.lease <= 0 {
		t.lease = wire.DefaultLease
	}
	t.leaseEnd = t.start.Add(t.lease)
	a.emit(wire.Event{Type: wire.EventTaskClaimed, TaskID: env.TaskID, Method: env.Method, Connector: env.Connector.BusinessID})
	if !wire.ValidTaskID(env.TaskID) {
		a.logWarn("dropped a task envelope with an invalid task_id")
		return
	}

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	t.cancel = cancel
	timeout := time.Duration(env.TimeoutS) * time.Second
	if timeout <= 0 {
		timeout = wire.DefaultTimeout
	}
	tctx, tcancel := context.WithTimeout(runCtx, timeout)
	defer tcancel()

	renewDone := make(chan struct{})
	stopRenew := make(chan struct{})
	go func() { defer close(renewDone); t.renewLease(runCtx, stopRenew, cancel) }()

	out, err := t.run(tctx)
	close(stopRenew)
	<-renewDone
	switch cause := context.Cause(runCtx); {
	case errors.Is(cause, errLeaseLost):
		a.logWarn("task abandoned: its lease was lost", "task_id", env.TaskID)
		return
	case errors.Is(cause, errCancelled):
		a.failed.Add(1)
		a.logInfo("task cancelled by the control plane", "task_id", env.TaskID)
		a.emit(wire.Event{Type: wire.EventTaskFailed, TaskID: env.TaskID, Method: env.Method, Connector: env.Connector.BusinessID,
			DurationMS: t.elapsedMS(), ErrorClass: wire.ErrCancelled})
		return
	}
	if err != nil && tctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		err = fail(wire.ErrTimeout, "the task ran past its timeout of %v", timeout)
	}
	if err != nil && ctx.Err() != nil {
		err = fail(wire.ErrCancelled, "the agent is shutting down")
	}
	t.finish(ctx, out, err)
}

func (t *taskRun) elapsedMS() int64 {
	return int64(t.a.clock.Now().Sub(t.start) / time.Millisecond)
}

// run checks the envelope (before any byte reaches a target), then runs
// the method.
func (t *taskRun) run(ctx context.Context) (*outcome, error) {
	m, err := t.check()
	if err != nil {
		return nil, err
	}
	return m.run(ctx, t)
}

// renewLease renews the lease every third of it until stop; a 409 or 410
// cancels the task with that cause.
func (t *taskRun) renewLease(ctx context.Context, stop <-chan struct{}, cancel context.CancelCauseFunc) {
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-t.a.clock.After(t.lease / 3):
		}
		var resp wire.LeaseResponse
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := t.a.cl.do(rctx, "POST", "/tasks/"+t.env.TaskID+"/lease", struct{}{}, &resp)
		rcancel()
		var se *StatusError
		switch {
		case err == nil:
			if resp.LeaseS > 0 {
				t.lease = time.Duration(resp.LeaseS) * time.Second
			}
			t.leaseEnd = t.a.clock.Now().Add(t.lease)
		case errors.As(err, &se) && se.Code == 409:
			cancel(errLeaseLost)
			return
		case errors.As(err, &se) && se.Code == 410:
			cancel(errCancelled)
			return
		default:
			if fatal := t.a.fatalError(err); fatal != nil {
				t.a.setFatal(fatal)
			}
		}
	}
}

// finish sends the result once, retried until 2xx, 409, 410 or the end of
// the lease, and reports the audit event.
func (t *taskRun) finish(ctx context.Context, out *outcome, err error) {
	a := t.a
	res := wire.Result{Status: wire.StatusCompleted, DurationMS: t.elapsedMS()}
	if out != nil {
		res.Records, res.Chunks, res.ResultBytes, res.Response = out.records, out.chunks, out.bytes, out.response
	}
	if err != nil {
		res = t.failure(res, err)
	}
	code, sendErr := t.sendResult(ctx, &res)
	if code == 413 {
		res = t.failure(wire.Result{DurationMS: res.DurationMS}, fail(wire.ErrResultTooLarge, "the control plane refused the result as too large"))
		code, sendErr = t.sendResult(ctx, &res)
	}
	ev := wire.Event{TaskID: t.env.TaskID, Method: t.env.Method, Connector: t.env.Connector.BusinessID, DurationMS: res.DurationMS}
	if res.Status == wire.StatusCompleted {
		a.completed.Add(1)
		ev.Type, ev.ResultBytes = wire.EventTaskCompleted, res.ResultBytes
	} else {
		a.failed.Add(1)
		ev.Type, ev.ErrorClass = wire.EventTaskFailed, res.ErrorClass
	}
	a.emit(ev)
	if sendErr != nil {
		a.logWarn("could not deliver a task result", "task_id", t.env.TaskID, "error", sendErr)
		return
	}
	a.logInfo("task finished", "task_id", t.env.TaskID, "method", t.env.Method, "status", res.Status, "error_class", res.ErrorClass, "http", code)
}

func (t *taskRun) failure(res wire.Result, err error) wire.Result {
	var te *taskError
	if !errors.As(err, &te) {
		te = &taskError{class: wire.ErrInternal, msg: err.Error()}
	}
	res.Status, res.ErrorClass = wire.StatusFailed, te.class
	res.Error = t.st.redact.String(truncate(te.msg, 512))
	res.Response = nil
	return res
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

func (t *taskRun) sendResult(ctx context.Context, res *wire.Result) (int, error) {
	b := newBackoff()
	for {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
		code, err := t.a.cl.do(rctx, "POST", "/tasks/"+t.env.TaskID+"/result", res, nil)
		cancel()
		var se *StatusError
		switch {
		case err == nil:
			return code, nil
		case errors.As(err, &se) && (se.Code == 409 || se.Code == 410 || se.Code == 413):
			return se.Code, nil
		}
		if fatal := t.a.fatalError(err); fatal != nil {
			t.a.setFatal(fatal)
			return code, err
		}
		d := b.next()
		if errors.As(err, &se) && se.RetryAfter > 0 {
			d = se.RetryAfter
		}
		if t.a.clock.Now().Add(d).After(t.leaseEnd) {
			return code, fmt.Errorf("the lease ended before the result could be delivered: %w", err)
		}
		<-t.a.clock.After(d)
	}
}
