package sdnotify_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/sdnotify"
	"github.com/rapidvalue/tier3-agent/internal/sdnotify/sdnotifytest"
)

func TestNotify(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		l := sdnotifytest.Listen(t, abstract)
		n, err := sdnotify.New(func(k string) string {
			if k == sdnotify.EnvSocket {
				return l.Addr
			}
			return ""
		})
		if err != nil || n == nil {
			t.Fatalf("New(%q) = %v, %v", l.Addr, n, err)
		}
		if err := n.Notify(sdnotify.Ready, sdnotify.Status("registered")); err != nil {
			t.Fatal(err)
		}
		m := l.Next(t)
		if m.States != "READY=1\nSTATUS=registered" || m.PID != os.Getpid() {
			t.Errorf("abstract=%v: got %+v, want READY and STATUS from pid %d", abstract, m, os.Getpid())
		}
	}
}

func TestNotifyNone(t *testing.T) {
	n, err := sdnotify.New(func(string) string { return "" })
	if n != nil || err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v, %v", n, err)
	}
	if err := n.Notify(sdnotify.Ready); err != nil { // a nil Notifier does nothing
		t.Fatal(err)
	}
	if _, err := sdnotify.New(func(string) string { return "relative" }); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Fatalf("a relative NOTIFY_SOCKET: %v", err)
	}
	// A socket nobody listens on: an error, not a hang or a panic.
	n, _ = sdnotify.New(func(string) string { return filepath.Join(t.TempDir(), "gone") })
	if err := n.Notify(sdnotify.Ready); err == nil {
		t.Fatal("Notify to a missing socket succeeded")
	}
}

// TestMonotonic: MONOTONIC_USEC= is CLOCK_MONOTONIC in microseconds, the
// clock Go's own monotonic readings come from: it rises with them.
func TestMonotonic(t *testing.T) {
	read := func() int64 {
		t.Helper()
		v, ok := strings.CutPrefix(sdnotify.Monotonic(), "MONOTONIC_USEC=")
		us, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil || us <= 0 {
			t.Fatalf("Monotonic() = %q", sdnotify.Monotonic())
		}
		return us
	}
	start := time.Now()
	a := read()
	for time.Since(start) < 2*time.Millisecond {
	}
	b := read()
	elapsed := time.Since(start) // spans both readings
	if d := b - a; d <= 0 || d > elapsed.Microseconds()+1 {
		t.Errorf("MONOTONIC_USEC rose by %d µs while %v passed", d, elapsed)
	}
	// Time since boot, not since 1970 (the wall clock is the usual
	// mistake): under half the wall clock's reading, or ~28 years up.
	if wall := time.Now().UnixMicro(); b > wall/2 {
		t.Errorf("MONOTONIC_USEC=%d reads like the wall clock (%d)", b, wall)
	}
}
