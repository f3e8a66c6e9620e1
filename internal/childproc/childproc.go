// Package childproc stops the child processes that tests and the loopback
// bed start (slapd, swtpm, the agent): SIGTERM, a grace period, then SIGKILL.
package childproc

import (
	"os"
	"syscall"
	"time"
)

// Stop asks p to stop with SIGTERM and waits for done (closed when the
// process has been waited for) up to grace, then kills it and waits. It
// reports whether p stopped within the grace period. A process that has
// already exited is left alone.
func Stop(p *os.Process, done <-chan struct{}, grace time.Duration) bool {
	select {
	case <-done:
		return true
	default:
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return true
	case <-time.After(grace):
		p.Kill()
		<-done
		return false
	}
}
