package agent

import (
	"math/rand/v2"
	"time"
)

// Clock is the agent's time. Tests replace it so that nothing sleeps.
type Clock interface {
	Now() time.Time
	// After is time.After.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// backoff is exponential backoff with full jitter (PROTOCOL.md: 1 s base,
// 60 s cap, reset on success).
type backoff struct {
	base, cap time.Duration
	attempt   int
	rand      func(n int64) int64
}

func newBackoff() *backoff {
	return &backoff{base: time.Second, cap: 60 * time.Second, rand: rand.Int64N}
}

// next returns how long to wait before the next attempt.
func (b *backoff) next() time.Duration {
	ceil := b.base << min(b.attempt, 16)
	if ceil > b.cap || ceil <= 0 {
		ceil = b.cap
	}
	b.attempt++
	return time.Duration(b.rand(int64(ceil) + 1))
}

func (b *backoff) reset() { b.attempt = 0 }
