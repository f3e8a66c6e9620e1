package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// Clock is the queue's time. The agent's own Clock has the same methods;
// tests pass a fake so that nothing sleeps.
type Clock interface {
	Now() time.Time
	// After is time.After.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Defaults of QueueConfig.
const (
	DefaultCapacity   = 1000
	DefaultFlushAfter = time.Second
	// MaxRetryAfter caps a wait that the control plane asks for
	// (PROTOCOL.md status table: Retry-After capped at 300 s).
	MaxRetryAfter = 300 * time.Second
)

// QueueConfig configures a Queue. Send is required; zero fields take their
// defaults.
type QueueConfig struct {
	// Send posts one batch (POST /events) and returns nil once the control
	// plane has accepted it. It must not keep or change batch, and it must
	// bound its own time (the agent's HTTP client does). Its error decides
	// what happens next:
	//   - one that has Permanent() == true in its chain (see Permanent)
	//     drops the batch: the control plane will never take it (a 4xx
	//     other than 408 and 429, say);
	//   - one that has RetryAfter() > 0 in its chain (see RetryAfter) is
	//     retried after that long, capped at MaxRetryAfter;
	//   - any other is retried after Backoff.
	Send func(ctx context.Context, batch []wire.Event) error
	// Log, when set, gets every event that Emit takes, synchronously,
	// before it is queued, local-only events and events_dropped included.
	Log *Log
	// Capacity bounds the events waiting to be sent (default 1000). When
	// it is full, Emit drops the oldest waiting event.
	Capacity int
	// BatchMax is the most events in one batch: default and at most
	// wire.MaxEventsPerBatch (100). A batch is also kept under
	// wire.MaxBodyBytes once encoded.
	BatchMax int
	// FlushAfter is the longest an event waits for a batch to fill
	// (default 1 s).
	FlushAfter time.Duration
	// Clock defaults to the real time.
	Clock Clock
	// Backoff returns the wait before retry attempt (1, 2, …) of a batch.
	// Default: exponential with full jitter, 1 s base, 60 s cap
	// (DefaultBackoff).
	Backoff func(attempt int) time.Duration
	// OnError, when set, is told of what the queue cannot report by a
	// return value: an event that Emit refused, a local log that failed,
	// a batch the control plane refused for good. It is called from
	// Emit's and Run's goroutines, so it must be safe for concurrent use,
	// and it must not call back into the Queue.
	OnError func(error)
}

// DefaultBackoff is exponential backoff with full jitter: a uniform wait
// in [0, min(60 s, 1 s × 2^(attempt-1))].
func DefaultBackoff(attempt int) time.Duration {
	ceil := time.Second << min(max(attempt-1, 0), 16)
	if ceil > 60*time.Second {
		ceil = 60 * time.Second
	}
	return rand.N(ceil + 1)
}

// Permanent marks err as one that retrying cannot fix: the queue drops the
// batch (and counts it) instead. The result wraps err.
func Permanent(err error) error { return &permanentError{err} }

type permanentError struct{ err error }

func (e *permanentError) Error() string   { return e.err.Error() }
func (e *permanentError) Unwrap() error   { return e.err }
func (e *permanentError) Permanent() bool { return true }

// RetryAfter marks err with how long the control plane asked to wait
// (429 and 503 with Retry-After). The result wraps err.
func RetryAfter(err error, d time.Duration) error { return &retryAfterError{err, d} }

type retryAfterError struct {
	err error
	d   time.Duration
}

func (e *retryAfterError) Error() string             { return e.err.Error() }
func (e *retryAfterError) Unwrap() error             { return e.err }
func (e *retryAfterError) RetryAfter() time.Duration { return e.d }

// isPermanent reports whether err's chain holds an error with
// Permanent() == true.
func isPermanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}

// retryAfter returns the wait that err's chain asks for, or 0.
func retryAfter(err error) time.Duration {
	var r interface{ RetryAfter() time.Duration }
	if errors.As(err, &r) {
		return min(r.RetryAfter(), MaxRetryAfter)
	}
	return 0
}

// QueueStats counts what a Queue did. Events dropped in any way are still
// in the local log.
type QueueStats struct {
	// Pending is the number of events waiting, the batch in flight
	// included.
	Pending int
	// Sent is the number of events the control plane accepted
	// (events_dropped notices not included).
	Sent uint64
	// DroppedFull were dropped because the queue was full.
	DroppedFull uint64
	// DroppedRefused were in batches that Send failed permanently.
	DroppedRefused uint64
	// DroppedClosed were emitted after Close began, or not sent before
	// Close's deadline.
	DroppedClosed uint64
	// Invalid were refused by Emit (unknown type, impossible time).
	Invalid uint64
	// LogErrors counts failed writes to the local log.
	LogErrors uint64
}

// Queue batches audit events to the control plane (PROTOCOL.md §6): up to
// BatchMax events or FlushAfter, retried with backoff, held in a bounded
// queue, every event also written to the local Log.
//
// When the queue is full, the oldest waiting event is dropped. The newest
// events say what the agent is doing now (which tasks run, which version
// it is), which is what the control plane acts on; the dropped ones are in
// the local log, and the next batch tells the control plane how many it
// missed with an agent.events_dropped event (count), placed first since
// they came before the rest of the batch.
//
// Delivery is at least once: a batch whose Send failed after the control
// plane took it is sent again (events carry no id to deduplicate them by).
type Queue struct {
	send       func(context.Context, []wire.Event) error
	log        *Log
	capacity   int
	batchMax   int
	flushAfter time.Duration
	clock      Clock
	backoff    func(int) time.Duration
	onError    func(error)

	emitMu sync.Mutex // keeps the local log and the queue in the same order
	wake   chan struct{}

	mu      sync.Mutex
	ring    []item // capacity slots; pending events from head, n of them
	head, n int
	bytes   int    // encoded size of the pending events
	dropped int64  // events lost since the last events_dropped notice
	cur     *batch // the batch in flight, until it is sent or dropped
	closed  bool
	stopRun context.CancelFunc // set while Run runs
	runDone chan struct{}
	stats   QueueStats
}

type item struct {
	ev     wire.Event
	size   int       // bytes of json.Marshal(ev)
	queued time.Time // when Emit queued it (Clock time)
}

type batch struct {
	events []wire.Event
	real   int   // events that are not the events_dropped notice
	notice int64 // count carried by the events_dropped notice, or 0
}

// batchOverhead is the encoding of {"events":[]} around a batch.
const batchOverhead = len(`{"events":[]}`)

// NewQueue returns a Queue; start its Run in a goroutine.
func NewQueue(cfg QueueConfig) (*Queue, error) {
	if cfg.Send == nil {
		return nil, errors.New("audit queue: Send is required")
	}
	if cfg.Capacity < 0 || cfg.BatchMax < 0 || cfg.FlushAfter < 0 {
		return nil, errors.New("audit queue: Capacity, BatchMax and FlushAfter must not be negative")
	}
	if cfg.BatchMax > wire.MaxEventsPerBatch {
		return nil, fmt.Errorf("audit queue: BatchMax is over the protocol's %d", wire.MaxEventsPerBatch)
	}
	q := &Queue{
		send: cfg.Send, log: cfg.Log, capacity: cfg.Capacity, batchMax: cfg.BatchMax,
		flushAfter: cfg.FlushAfter, clock: cfg.Clock, backoff: cfg.Backoff, onError: cfg.OnError,
		wake: make(chan struct{}, 1), runDone: make(chan struct{}),
	}
	if q.capacity == 0 {
		q.capacity = DefaultCapacity
	}
	if q.batchMax == 0 {
		q.batchMax = wire.MaxEventsPerBatch
	}
	if q.batchMax > q.capacity {
		q.batchMax = q.capacity
	}
	if q.batchMax < 2 {
		// One slot goes to the events_dropped notice when there is one.
		return nil, errors.New("audit queue: BatchMax and Capacity must be at least 2")
	}
	if q.flushAfter == 0 {
		q.flushAfter = DefaultFlushAfter
	}
	if q.clock == nil {
		q.clock = realClock{}
	}
	if q.backoff == nil {
		q.backoff = DefaultBackoff
	}
	q.ring = make([]item, q.capacity)
	return q, nil
}

// Emit records ev: in the local log first (synchronously, with its fsync),
// then in the queue, unless ev is agent.disabled, which PROTOCOL.md keeps
// to the local log. It never waits for the control plane or for room in
// the queue: when the queue is full the oldest waiting event is dropped.
// ev is normalized as Log.Append does. An event that cannot be normalized
// (unknown type, impossible time) is refused whole. Failures go to
// OnError and Stats; the event is still queued when only the local log
// failed. Emit has the shape of the agent's EventSink.
func (q *Queue) Emit(ev wire.Event) {
	ev, err := normalizeEvent(ev, q.clock.Now)
	if err != nil {
		q.mu.Lock()
		q.stats.Invalid++
		q.mu.Unlock()
		q.report(fmt.Errorf("audit event refused: %w", err))
		return
	}
	enc, err := json.Marshal(ev)
	if err != nil { // cannot happen after normalizeEvent
		q.report(fmt.Errorf("audit event refused: %w: %w", ErrInvalidEvent, err))
		return
	}

	q.emitMu.Lock()
	defer q.emitMu.Unlock()
	if q.log != nil {
		if err := q.log.Append(ev); err != nil {
			q.mu.Lock()
			q.stats.LogErrors++
			q.mu.Unlock()
			q.report(fmt.Errorf("cannot write audit event to the local log: %w", err))
		}
	}
	if ev.Type == wire.EventDisabled {
		return
	}

	q.mu.Lock()
	if q.closed {
		q.stats.DroppedClosed++
		q.mu.Unlock()
		return
	}
	if q.n == q.capacity {
		q.bytes -= q.ring[q.head].size
		q.ring[q.head] = item{}
		q.head = (q.head + 1) % q.capacity
		q.n--
		q.dropped++
		q.stats.DroppedFull++
	}
	q.ring[(q.head+q.n)%q.capacity] = item{ev: ev, size: len(enc), queued: q.clock.Now()}
	q.n++
	q.bytes += len(enc)
	q.mu.Unlock()

	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Stats returns the queue's counters.
func (q *Queue) Stats() QueueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := q.stats
	s.Pending = q.n
	if q.cur != nil {
		s.Pending += q.cur.real
	}
	return s
}

// Run sends batches until ctx is done or Close is called, and returns
// ctx's error (or ErrClosed). A batch whose Send fails is retried, the same
// batch, with backoff. The batch in flight when Run returns is kept for
// Close. Call Run once.
func (q *Queue) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	q.mu.Lock()
	switch {
	case q.closed:
		q.mu.Unlock()
		return ErrClosed
	case q.stopRun != nil:
		q.mu.Unlock()
		return errors.New("audit queue: Run called twice")
	}
	q.stopRun = cancel
	q.mu.Unlock()
	defer close(q.runDone)

	for {
		b, err := q.nextBatch(ctx)
		if err != nil {
			return q.runErr(ctx)
		}
		if err := q.deliver(ctx, b); err != nil {
			return q.runErr(ctx)
		}
	}
}

func (q *Queue) runErr(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	return context.Cause(ctx)
}

// Close stops Run (if it runs) and makes a last attempt, bounded by ctx
// (the agent's shutdown grace), to send what is waiting: the batch in
// flight first, then the rest, retried with backoff while ctx allows.
// Events emitted once Close has begun go to the local log only. It returns
// nil when everything was sent, else an error that says how many events
// were not (they are in the local log).
func (q *Queue) Close(ctx context.Context) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return ErrClosed
	}
	q.closed = true
	stop := q.stopRun
	q.mu.Unlock()

	if stop != nil {
		stop()
		select {
		case <-q.runDone:
		case <-ctx.Done():
			return q.abandon(ctx)
		}
	}
	for {
		q.mu.Lock()
		b := q.cur
		if b == nil && q.n > 0 {
			b = q.takeLocked()
		}
		q.mu.Unlock()
		if b == nil {
			return nil
		}
		q.logNotice(b)
		if err := q.deliver(ctx, b); err != nil {
			return q.abandon(ctx)
		}
	}
}

// abandon counts what Close could not send.
func (q *Queue) abandon(ctx context.Context) error {
	q.mu.Lock()
	n := q.n
	if q.cur != nil {
		n += q.cur.real
	}
	q.stats.DroppedClosed += uint64(n)
	q.mu.Unlock()
	if n == 0 {
		return nil
	}
	return fmt.Errorf("%d audit events not sent to the control plane before the shutdown deadline (they are in the local log): %w", n, context.Cause(ctx))
}

// nextBatch waits until a batch is due (BatchMax events, a full body, or
// the oldest event waiting FlushAfter) and takes it; or returns the batch
// still in flight.
func (q *Queue) nextBatch(ctx context.Context) (*batch, error) {
	var timer <-chan time.Time
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		q.mu.Lock()
		if b := q.cur; b != nil {
			q.mu.Unlock()
			return b, nil
		}
		var wait time.Duration
		if q.n > 0 {
			due := q.ring[q.head].queued.Add(q.flushAfter)
			wait = due.Sub(q.clock.Now())
			if q.n >= q.batchMax || q.bytes+q.n+batchOverhead > wire.MaxBodyBytes || wait <= 0 {
				b := q.takeLocked()
				q.mu.Unlock()
				q.logNotice(b)
				return b, nil
			}
		}
		n := q.n
		q.mu.Unlock()

		if n > 0 && timer == nil {
			// The oldest waiting event only changes by a batch being
			// taken (which returns) or by a drop when full (which is
			// due at once), so one timer serves this wait.
			timer = q.clock.After(wait)
		}
		select {
		case <-q.wake:
		case <-timer:
			timer = nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// takeLocked moves the next batch out of the queue into q.cur: the
// events_dropped notice first, when events were lost since the last one,
// then the oldest events, at most batchMax in all and under
// wire.MaxBodyBytes. q.n must be > 0.
func (q *Queue) takeLocked() *batch {
	b := &batch{}
	size := batchOverhead
	if q.dropped > 0 {
		notice := wire.Event{Type: wire.EventEventsDropped, At: q.clock.Now().UTC(), Count: q.dropped}
		enc, _ := json.Marshal(notice)
		b.events = append(b.events, notice)
		b.notice = q.dropped
		q.dropped = 0
		size += len(enc)
	}
	for q.n > 0 && len(b.events) < q.batchMax {
		it := &q.ring[q.head]
		if b.real > 0 && size+1+it.size > wire.MaxBodyBytes {
			break
		}
		size += 1 + it.size
		b.events = append(b.events, it.ev)
		b.real++
		q.bytes -= it.size
		*it = item{}
		q.head = (q.head + 1) % q.capacity
		q.n--
	}
	q.cur = b
	return b
}

// logNotice writes a batch's events_dropped notice to the local log, so
// that the log shows what the control plane was told. It is called once,
// when the batch is taken.
func (q *Queue) logNotice(b *batch) {
	if b.notice == 0 || q.log == nil {
		return
	}
	if err := q.log.Append(b.events[0]); err != nil {
		q.mu.Lock()
		q.stats.LogErrors++
		q.mu.Unlock()
		q.report(fmt.Errorf("cannot write audit event to the local log: %w", err))
	}
}

// deliver sends b until the control plane takes it, refuses it for good,
// or ctx is done (then b stays in q.cur and deliver returns ctx's error).
func (q *Queue) deliver(ctx context.Context, b *batch) error {
	for attempt := 1; ; attempt++ {
		err := q.send(ctx, b.events)
		if err == nil {
			q.mu.Lock()
			q.cur = nil
			q.stats.Sent += uint64(b.real)
			q.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if isPermanent(err) {
			q.mu.Lock()
			q.cur = nil
			q.dropped += int64(b.real) + b.notice
			q.stats.DroppedRefused += uint64(b.real)
			q.mu.Unlock()
			q.report(fmt.Errorf("control plane refused a batch of %d audit events for good: %w", b.real, err))
			return nil
		}
		d := retryAfter(err)
		if d <= 0 {
			d = q.backoff(attempt)
		}
		select {
		case <-q.clock.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (q *Queue) report(err error) {
	if q.onError != nil {
		q.onError(err)
	}
}

var _ Clock = realClock{}

// The agent's EventSink has this shape.
var _ interface{ Emit(wire.Event) } = (*Queue)(nil)
