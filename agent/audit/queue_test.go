package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// sendCall is one call of the fake Send; the test answers it on reply.
type sendCall struct {
	batch []wire.Event
	reply chan error
}

type queueTest struct {
	q      *Queue
	clock  *fakeClock
	calls  chan sendCall
	errs   chan error // from OnError
	runErr chan error
	cancel context.CancelFunc
}

// newQueueTest makes a Queue with a fake clock and a Send that hands each
// batch to the test. cfg's Send, Clock and OnError are set here.
func newQueueTest(t *testing.T, cfg QueueConfig) *queueTest {
	t.Helper()
	qt := &queueTest{
		clock: newFakeClock(),
		calls: make(chan sendCall),
		errs:  make(chan error, 100),
	}
	cfg.Clock = qt.clock
	cfg.Send = func(ctx context.Context, batch []wire.Event) error {
		c := sendCall{batch: slices.Clone(batch), reply: make(chan error, 1)}
		select {
		case qt.calls <- c:
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case err := <-c.reply:
			return err
		case <-ctx.Done():
			// An answer given before the cancel wins, as a response
			// already read would.
			select {
			case err := <-c.reply:
				return err
			default:
				return ctx.Err()
			}
		}
	}
	cfg.OnError = func(err error) { qt.errs <- err }
	q, err := NewQueue(cfg)
	if err != nil {
		t.Fatal(err)
	}
	qt.q = q
	return qt
}

func (qt *queueTest) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	qt.cancel = cancel
	qt.runErr = make(chan error, 1)
	go func() { qt.runErr <- qt.q.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		recv(t, qt.runErr)
	})
}

// close closes the queue, which waits for Run to return: after it, the
// stats are settled. Nothing may be pending (Close would send it).
func (qt *queueTest) close(t *testing.T) {
	t.Helper()
	if err := qt.q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, qt.runErr); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run returned %v", err)
	}
	qt.runErr <- nil // for the cleanup
}

// expect receives the next batch, checks its task ids (or types, for
// events without one) and answers it with err.
func (qt *queueTest) expect(t *testing.T, want []string, err error) []wire.Event {
	t.Helper()
	c := recv(t, qt.calls)
	var got []string
	for _, ev := range c.batch {
		if ev.TaskID != "" {
			got = append(got, ev.TaskID)
		} else {
			got = append(got, fmt.Sprintf("%s:%d", ev.Type, ev.Count))
		}
	}
	if want != nil && !slices.Equal(got, want) {
		t.Fatalf("batch %v, want %v", got, want)
	}
	c.reply <- err
	return c.batch
}

func ev(i int) wire.Event {
	return wire.Event{Type: wire.EventTaskClaimed, TaskID: fmt.Sprintf("t%d", i), Method: wire.MethodHTTPSync, Connector: "c"}
}

func ids(from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("t%d", i))
	}
	return out
}

func TestQueueBatchesAtBatchMax(t *testing.T) {
	qt := newQueueTest(t, QueueConfig{})
	qt.start(t)
	for i := 1; i <= 100; i++ {
		qt.q.Emit(ev(i))
	}
	// 100 events go at once, without the clock moving.
	qt.expect(t, ids(1, 100), nil)

	// A backlog goes in batches of 100, the rest after FlushAfter.
	for i := 101; i <= 350; i++ {
		qt.q.Emit(ev(i))
	}
	qt.expect(t, ids(101, 200), nil)
	qt.expect(t, ids(201, 300), nil)
	// Whether or not Run has set its timer yet, the rest is not due
	// before the clock moves, and is due after.
	noRecv(t, qt.calls)
	qt.clock.Advance(time.Second)
	qt.expect(t, ids(301, 350), nil)
	qt.close(t)
	if s := qt.q.Stats(); s.Sent != 350 || s.Pending != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestQueueFlushAfter(t *testing.T) {
	qt := newQueueTest(t, QueueConfig{})
	qt.start(t)
	qt.q.Emit(ev(1))
	if d := qt.clock.waitArmed(t); d != time.Second {
		t.Fatalf("waits %v, want 1s", d)
	}
	qt.clock.Advance(600 * time.Millisecond)
	qt.q.Emit(ev(2))
	qt.q.Emit(ev(3))
	qt.clock.Advance(399 * time.Millisecond)
	noRecv(t, qt.calls)
	// The oldest event has waited 1 s: the batch goes.
	qt.clock.Advance(time.Millisecond)
	qt.expect(t, ids(1, 3), nil)

	// The next event waits its own second.
	qt.q.Emit(ev(4))
	if d := qt.clock.waitArmed(t); d != time.Second {
		t.Fatalf("waits %v, want 1s", d)
	}
	noRecv(t, qt.calls)
	qt.clock.Advance(time.Second)
	qt.expect(t, ids(4, 4), nil)
}

func TestQueueRetriesWithBackoff(t *testing.T) {
	var attempts []int
	var mu sync.Mutex
	qt := newQueueTest(t, QueueConfig{Backoff: func(n int) time.Duration {
		mu.Lock()
		attempts = append(attempts, n)
		mu.Unlock()
		return time.Duration(n) * time.Second
	}})
	qt.start(t)
	qt.q.Emit(ev(1))
	qt.clock.waitArmed(t)
	qt.clock.Advance(time.Second)
	transient := errors.New("503")
	qt.expect(t, ids(1, 1), transient)
	// Events that arrive during the retries wait for the next batch.
	qt.q.Emit(ev(2))
	if d := qt.clock.waitArmed(t); d != time.Second {
		t.Fatalf("first retry after %v", d)
	}
	qt.clock.Advance(time.Second)
	qt.expect(t, ids(1, 1), transient)
	if d := qt.clock.waitArmed(t); d != 2*time.Second {
		t.Fatalf("second retry after %v", d)
	}
	qt.clock.Advance(2*time.Second - 1)
	noRecv(t, qt.calls)
	qt.clock.Advance(1)
	qt.expect(t, ids(1, 1), nil)
	// Retry-After wins over the backoff, capped at 300 s; a new batch
	// starts its attempts again.
	qt.expect(t, ids(2, 2), RetryAfter(fmt.Errorf("wrapped: %w", transient), 7*time.Second))
	if d := qt.clock.waitArmed(t); d != 7*time.Second {
		t.Fatalf("Retry-After wait %v", d)
	}
	qt.clock.Advance(7 * time.Second)
	qt.expect(t, ids(2, 2), RetryAfter(transient, time.Hour))
	if d := qt.clock.waitArmed(t); d != MaxRetryAfter {
		t.Fatalf("Retry-After wait %v, want the cap", d)
	}
	qt.clock.Advance(MaxRetryAfter)
	qt.expect(t, ids(2, 2), transient)
	qt.clock.waitArmed(t)
	mu.Lock()
	got := slices.Clone(attempts)
	mu.Unlock()
	if !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("backoff attempts %v", got)
	}
	if s := qt.q.Stats(); s.Sent != 1 || s.Pending != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestQueueDropsOldestAndReports(t *testing.T) {
	l, path := openTemp(t)
	qt := newQueueTest(t, QueueConfig{Capacity: 5, BatchMax: 5, Log: l})
	for i := 1; i <= 8; i++ {
		qt.q.Emit(ev(i)) // Emit never blocks, even with no Run
	}
	if s := qt.q.Stats(); s.DroppedFull != 3 || s.Pending != 5 {
		t.Fatalf("stats %+v", s)
	}
	qt.start(t)
	batch := qt.expect(t, append([]string{"agent.events_dropped:3"}, ids(4, 7)...), nil)
	if batch[0].At.Location() != time.UTC || !batch[0].At.Equal(qt.clock.Now()) {
		t.Errorf("notice at %v", batch[0].At)
	}
	qt.clock.waitArmed(t)
	qt.clock.Advance(time.Second)
	qt.expect(t, ids(8, 8), nil) // no notice: nothing lost since

	// The local log has every event, and the notice.
	data, _ := os.ReadFile(path)
	var got []string
	for _, e := range readEvents(t, data) {
		got = append(got, e.Type+e.TaskID)
	}
	want := []string{}
	for i := 1; i <= 8; i++ {
		want = append(want, wire.EventTaskClaimed+fmt.Sprintf("t%d", i))
	}
	want = append(want, wire.EventEventsDropped)
	if !slices.Equal(got, want) {
		t.Fatalf("local log %v", got)
	}
}

func TestQueuePermanentError(t *testing.T) {
	qt := newQueueTest(t, QueueConfig{Capacity: 10, BatchMax: 3})
	qt.start(t)
	for i := 1; i <= 3; i++ {
		qt.q.Emit(ev(i))
	}
	refused := errors.New("control plane answered 400")
	qt.expect(t, ids(1, 3), Permanent(refused))
	if err := recv(t, qt.errs); !errors.Is(err, refused) || !strings.Contains(err.Error(), "3 audit events") {
		t.Fatalf("OnError got %v", err)
	}
	// No retry: the next batch is new events, with the count of the lost.
	qt.q.Emit(ev(4))
	qt.clock.waitArmed(t)
	qt.clock.Advance(time.Second)
	qt.expect(t, []string{"agent.events_dropped:3", "t4"}, fmt.Errorf("wrapped: %w", Permanent(refused)))
	recv(t, qt.errs)
	qt.q.Emit(ev(5))
	qt.clock.waitArmed(t)
	qt.clock.Advance(time.Second)
	// The notice counts the events of the refused notice's batch too.
	qt.expect(t, []string{"agent.events_dropped:4", "t5"}, nil)
	qt.close(t)
	if s := qt.q.Stats(); s.DroppedRefused != 4 || s.Sent != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// notPermanent has Permanent() == false: it is retried.
type notPermanent struct{}

func (notPermanent) Error() string   { return "flaky" }
func (notPermanent) Permanent() bool { return false }

func TestQueueNotPermanentIsRetried(t *testing.T) {
	qt := newQueueTest(t, QueueConfig{Backoff: func(int) time.Duration { return 5 * time.Second }})
	qt.start(t)
	qt.q.Emit(ev(1))
	qt.clock.waitArmed(t)
	qt.clock.Advance(time.Second)
	qt.expect(t, ids(1, 1), notPermanent{})
	if d := qt.clock.waitArmed(t); d != 5*time.Second {
		t.Fatalf("wait %v", d)
	}
	qt.clock.Advance(5 * time.Second)
	qt.expect(t, ids(1, 1), nil)
}

func TestQueueCloseFlushes(t *testing.T) {
	qt := newQueueTest(t, QueueConfig{Backoff: func(int) time.Duration { return time.Second }})
	qt.start(t)
	qt.q.Emit(ev(1))
	qt.q.Emit(ev(2))
	qt.clock.waitArmed(t)
	qt.clock.Advance(time.Second)
	qt.expect(t, ids(1, 2), errors.New("503"))
	qt.clock.waitArmed(t) // Run waits to retry
	qt.q.Emit(ev(3))

	closed := make(chan error, 1)
	go func() { closed <- qt.q.Close(context.Background()) }()
	// Close stops Run, then sends the batch in flight and the rest.
	if err := recv(t, qt.runErr); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run returned %v", err)
	}
	qt.runErr <- nil // for the cleanup
	qt.expect(t, ids(1, 2), nil)
	qt.expect(t, ids(3, 3), nil)
	if err := recv(t, closed); err != nil {
		t.Fatal(err)
	}
	qt.q.Emit(ev(4)) // local log only
	if s := qt.q.Stats(); s.Sent != 3 || s.DroppedClosed != 1 || s.Pending != 0 {
		t.Fatalf("stats %+v", s)
	}
	if err := qt.q.Close(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if err := qt.q.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v", err)
	}
}

func TestQueueCloseDeadline(t *testing.T) {
	qt := newQueueTest(t, QueueConfig{Backoff: func(int) time.Duration { return time.Second }})
	qt.start(t)
	qt.q.Emit(ev(1))
	qt.clock.waitArmed(t)
	qt.clock.Advance(time.Second)
	qt.expect(t, ids(1, 1), errors.New("503"))
	qt.clock.waitArmed(t)

	ctx, cancel := context.WithCancel(context.Background())
	closed := make(chan error, 1)
	go func() { closed <- qt.q.Close(ctx) }()
	recv(t, qt.runErr)
	qt.runErr <- nil
	qt.expect(t, ids(1, 1), errors.New("503"))
	qt.clock.waitArmed(t) // Close waits to retry, within its deadline
	cancel()
	err := recv(t, closed)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "1 audit events not sent") {
		t.Fatalf("Close: %v", err)
	}
	if s := qt.q.Stats(); s.DroppedClosed != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestQueueCloseWithoutRun(t *testing.T) {
	qt := newQueueTest(t, QueueConfig{})
	qt.q.Emit(ev(1))
	closed := make(chan error, 1)
	go func() { closed <- qt.q.Close(context.Background()) }()
	qt.expect(t, ids(1, 1), nil)
	if err := recv(t, closed); err != nil {
		t.Fatal(err)
	}
}

func TestQueueDisabledIsLocalOnly(t *testing.T) {
	l, path := openTemp(t)
	qt := newQueueTest(t, QueueConfig{Log: l})
	qt.start(t)
	qt.q.Emit(wire.Event{Type: wire.EventDisabled, Reason: "401"})
	qt.q.Emit(ev(1))
	qt.clock.waitArmed(t)
	qt.clock.Advance(time.Second)
	qt.expect(t, ids(1, 1), nil)
	data, _ := os.ReadFile(path)
	got := readEvents(t, data)
	if len(got) != 2 || got[0].Type != wire.EventDisabled || got[1].TaskID != "t1" {
		t.Fatalf("local log %+v", got)
	}
	qt.close(t)
	if s := qt.q.Stats(); s.Sent != 1 || s.Pending != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestQueueNormalizesAndRefuses(t *testing.T) {
	l, path := openTemp(t)
	qt := newQueueTest(t, QueueConfig{Log: l})
	qt.start(t)
	qt.q.Emit(wire.Event{Type: "agent.bogus"})
	if err := recv(t, qt.errs); !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("OnError got %v", err)
	}
	cet := time.FixedZone("CET", 3600)
	qt.q.Emit(wire.Event{Type: wire.EventRegistered, At: time.Date(2026, 11, 24, 9, 0, 0, 0, cet)})
	qt.q.Emit(wire.Event{Type: wire.EventVaultPlaintext}) // no At: the clock's now
	qt.clock.waitArmed(t)
	qt.clock.Advance(time.Second)
	batch := qt.expect(t, nil, nil)
	if len(batch) != 2 || batch[0].At.Location() != time.UTC || !batch[0].At.Equal(time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)) ||
		!batch[1].At.Equal(newFakeClock().Now()) {
		t.Fatalf("batch %+v", batch)
	}
	body, _ := json.Marshal(wire.EventBatch{Events: batch})
	if !bytes.Contains(body, []byte(`"at":"2026-11-24T08:00:00Z"`)) {
		t.Errorf("body %s", body)
	}
	if s := qt.q.Stats(); s.Invalid != 1 {
		t.Fatalf("stats %+v", s)
	}
	data, _ := os.ReadFile(path)
	if n := len(readEvents(t, data)); n != 2 {
		t.Fatalf("local log has %d events, want 2", n)
	}
}

func TestQueueLogFailureStillQueues(t *testing.T) {
	l, _ := openTemp(t)
	l.Close()
	qt := newQueueTest(t, QueueConfig{Log: l})
	qt.start(t)
	qt.q.Emit(ev(1))
	if err := recv(t, qt.errs); !errors.Is(err, ErrClosed) {
		t.Fatalf("OnError got %v", err)
	}
	qt.clock.waitArmed(t)
	qt.clock.Advance(time.Second)
	qt.expect(t, ids(1, 1), nil)
	if s := qt.q.Stats(); s.LogErrors != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestQueueBatchBodyLimit(t *testing.T) {
	qt := newQueueTest(t, QueueConfig{Capacity: 200})
	// Events near the largest: every string field at MaxFieldBytes, of
	// bytes that JSON escapes six times longer.
	long := strings.Repeat("\x01", MaxFieldBytes)
	for i := 1; i <= 100; i++ {
		e := ev(i)
		e.Reason, e.From, e.To, e.Version, e.ErrorClass = long, long, long, long, long
		qt.q.Emit(e)
	}
	qt.clock.Advance(time.Second) // all due at once
	qt.start(t)
	total, batches := 0, 0
	for total < 100 {
		c := recv(t, qt.calls)
		body, _ := json.Marshal(wire.EventBatch{Events: c.batch})
		if len(body) > wire.MaxBodyBytes || len(c.batch) == 0 {
			t.Fatalf("batch of %d events, %d bytes", len(c.batch), len(body))
		}
		total += len(c.batch)
		batches++
		c.reply <- nil
	}
	if batches < 2 {
		t.Fatalf("%d batches: the body limit did not split them", batches)
	}
}

func TestQueueConcurrentEmit(t *testing.T) {
	l, path := openTemp(t)
	var mu sync.Mutex
	var sent []wire.Event
	q, err := NewQueue(QueueConfig{
		Log:   l,
		Clock: newFakeClock(),
		Send: func(_ context.Context, b []wire.Event) error {
			mu.Lock()
			sent = append(sent, b...)
			mu.Unlock()
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- q.Run(context.Background()) }()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 60; i++ {
				q.Emit(ev(g*1000 + i))
				q.Stats()
			}
		}()
	}
	wg.Wait()
	if err := q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	recv(t, runErr)
	mu.Lock()
	defer mu.Unlock()
	if len(sent) != 480 {
		t.Fatalf("sent %d events, want 480", len(sent))
	}
	data, _ := os.ReadFile(path)
	logged := readEvents(t, data)
	if len(logged) != 480 {
		t.Fatalf("logged %d", len(logged))
	}
	// The control plane gets the events in the local log's order.
	for i := range sent {
		if sent[i].TaskID != logged[i].TaskID {
			t.Fatalf("event %d: sent %s, logged %s", i, sent[i].TaskID, logged[i].TaskID)
		}
	}
	if _, err := Verify(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
}

func TestNewQueueValidates(t *testing.T) {
	send := func(context.Context, []wire.Event) error { return nil }
	for _, cfg := range []QueueConfig{
		{},
		{Send: send, BatchMax: wire.MaxEventsPerBatch + 1},
		{Send: send, Capacity: -1},
		{Send: send, FlushAfter: -time.Second},
		{Send: send, Capacity: 1},
	} {
		if _, err := NewQueue(cfg); err == nil {
			t.Errorf("NewQueue(%+v) succeeded", cfg)
		}
	}
	q, err := NewQueue(QueueConfig{Send: send, Capacity: 10})
	if err != nil || q.batchMax != 10 || q.flushAfter != time.Second {
		t.Fatalf("%v %+v", err, q)
	}
}

func TestQueueRunTwice(t *testing.T) {
	qt := newQueueTest(t, QueueConfig{})
	qt.start(t)
	// Wait until the first Run has registered, by giving it work.
	qt.q.Emit(ev(1))
	qt.clock.waitArmed(t)
	if err := qt.q.Run(context.Background()); err == nil || errors.Is(err, ErrClosed) {
		t.Fatalf("second Run: %v", err)
	}
}

func TestDefaultBackoff(t *testing.T) {
	for attempt := 0; attempt <= 100; attempt++ {
		ceil := 60 * time.Second
		if attempt < 7 {
			ceil = min(ceil, time.Second<<max(attempt-1, 0))
		}
		for i := 0; i < 50; i++ {
			if d := DefaultBackoff(attempt); d < 0 || d > ceil {
				t.Fatalf("attempt %d: %v over %v", attempt, d, ceil)
			}
		}
	}
}
