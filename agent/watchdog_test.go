package agent

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// stepClock is a clock the test moves, whose After fires when the test
// sends a tick.
type stepClock struct {
	mu    sync.Mutex
	now   time.Time
	ticks chan time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *stepClock) After(time.Duration) <-chan time.Time { return c.ticks }

func (c *stepClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestWatchdogFollowsTheHeartbeatLoop: Alive is called on each watchdog
// tick while the heartbeat loop is on schedule (its wait, the beat's
// deadline and a margin), and not once it is late.
func TestWatchdogFollowsTheHeartbeatLoop(t *testing.T) {
	clock := &stepClock{now: time.Unix(1_700_000_000, 0), ticks: make(chan time.Time)}
	alive := make(chan struct{}, 8)
	a := &Agent{clock: clock, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		opts: Options{Watchdog: time.Second, Alive: func() { alive <- struct{}{} }}}
	a.scheduleBeat(30 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.watchdogLoop(ctx) }()

	tick := func() { clock.ticks <- clock.Now() }
	// The loop takes tick n+1 only once it has handled tick n.
	tick()
	<-alive
	tick()
	<-alive
	clock.advance(30*time.Second + heartbeatTimeout + 5*time.Second) // exactly due: still live
	tick()
	<-alive
	clock.advance(time.Nanosecond) // late
	tick()
	tick()
	tick() // taken: the first two late ticks were handled
	if n := len(alive); n != 0 {
		t.Fatalf("%d Alive calls while the heartbeat loop was late, want none", n)
	}
	a.scheduleBeat(30 * time.Second) // the loop comes round again
	tick()
	<-alive // fed again
	cancel()
	<-done
}
