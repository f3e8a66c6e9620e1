package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// fakeClock is a Clock whose time moves only by Advance. Every After call
// is announced on armed (with its duration), so a test knows that the code
// under test is waiting, without sleeping.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
	armed  chan time.Duration
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{
		now:   time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC),
		armed: make(chan time.Duration, 10000),
	}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
	} else {
		c.timers = append(c.timers, fakeTimer{at: c.now.Add(d), ch: ch})
	}
	c.armed <- d
	return ch
}

// Advance moves the time on by d and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.ch <- c.now
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
}

// waitArmed returns the duration of the next After call. The timeout only
// turns a hang into a failure; it synchronizes nothing.
func (c *fakeClock) waitArmed(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.armed:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the queue to wait on the clock")
		return 0
	}
}

// recv is a receive from ch that fails the test rather than hang.
func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
		var zero T
		return zero
	}
}

// noRecv checks that nothing is ready on ch now.
func noRecv[T any](t *testing.T, ch <-chan T) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected value %v", v)
	default:
	}
}

// testGenesis is the genesis of the logs that buildLog makes.
var testGenesis = sha256.Sum256([]byte("test genesis"))

// testEvent is event i of the test logs. secret is put in Reason, so that
// tests can check that no error quotes it.
func testEvent(i int, secret string) wire.Event {
	return wire.Event{
		Type:       wire.EventTaskFailed,
		At:         time.Date(2026, 11, 24, 8, 0, i%60, i*1000, time.UTC),
		TaskID:     fmt.Sprintf("tsk_%06d", i),
		Method:     wire.MethodHTTPSync,
		Connector:  "salesforce-prod",
		DurationMS: int64(i),
		ErrorClass: wire.ErrTargetError,
		Reason:     secret,
	}
}

// buildLines makes the lines (with newlines) of a valid log of n records
// in memory, as Log.Append would write them.
func buildLines(n int, secret string) [][]byte {
	lines := make([][]byte, 0, n)
	prev := testGenesis
	var scratch []byte
	for i := 1; i <= n; i++ {
		ev, err := json.Marshal(testEvent(i, secret))
		if err != nil {
			panic(err)
		}
		at := formatTime(time.Date(2026, 11, 24, 9, 0, 0, i, time.UTC))
		var h [sha256.Size]byte
		h, scratch = recordHash(scratch, uint64(i), []byte(at), &prev, ev)
		lines = append(lines, appendRecord(nil, uint64(i), at, &prev, ev, &h))
		prev = h
	}
	return lines
}

// forgeLine makes a record with a correct hash over whatever it is given.
func forgeLine(seq uint64, prev [sha256.Size]byte, ev wire.Event) []byte {
	enc, err := json.Marshal(ev)
	if err != nil {
		panic(err)
	}
	at := formatTime(time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC))
	h, _ := recordHash(nil, seq, []byte(at), &prev, enc)
	return appendRecord(nil, seq, at, &prev, enc, &h)
}

func join(lines [][]byte) []byte { return bytes.Join(lines, nil) }

// hashOf parses a line and returns its hash.
func hashOf(line []byte) [sha256.Size]byte {
	rec, reason := parseRecord(bytes.TrimSuffix(line, []byte("\n")))
	if reason != "" {
		panic(reason)
	}
	return rec.hash
}

// readEvents decodes the events of a log's lines.
func readEvents(t *testing.T, data []byte) []wire.Event {
	t.Helper()
	var out []wire.Event
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		rec, reason := parseRecord(bytes.TrimSuffix(line, []byte("\n")))
		if reason != "" {
			t.Fatal(reason)
		}
		var ev wire.Event
		if err := json.Unmarshal(rec.event, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}
