package agent

import (
	"context"
	"runtime"
	"runtime/debug"
	"time"
)

// idleScrubAfter is how long the agent must have had no task in flight
// before it scrubs.
const idleScrubAfter = 2 * time.Second

// hygieneLoop scrubs memory when the agent goes idle. net/http takes
// credentials as Go strings (header values, form bodies), so every request
// leaves heap copies that the garbage collector frees but does not clear,
// and idle connections keep the last request's headers in their buffers
// and HPACK tables. When no task has run for idleScrubAfter, the loop
// closes idle target connections, collects, and returns free memory to the
// OS (which zeroes it). threatmodel's TestMemoryHygiene measures what is
// left.
func (a *Agent) hygieneLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.wentIdle:
		}
		// Wait out the quiet period; a new task restarts it.
	quiet:
		for {
			select {
			case <-ctx.Done():
				return
			case <-a.wentIdle:
			case <-a.clock.After(idleScrubAfter):
				if a.inFlight.Load() == 0 {
					break quiet
				}
			}
		}
		a.scrub()
	}
}

func (a *Agent) scrub() {
	a.targets.transport.CloseIdleConnections()
	runtime.GC()
	debug.FreeOSMemory()
}

// noteIdle tells the hygiene loop that the last task in flight finished.
func (a *Agent) noteIdle() {
	select {
	case a.wentIdle <- struct{}{}:
	default:
	}
}
