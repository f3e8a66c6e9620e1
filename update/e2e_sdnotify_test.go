//go:build linux

package update_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/sdnotify/sdnotifytest"
)

// TestServiceNotifications: `tier3-agent run` under a Type=notify unit,
// with a NOTIFY_SOCKET the test owns (it sees each sender's PID, as
// systemd does for NotifyAccess=main). In process and as supervisor plus
// worker alike: READY=1 only once the control plane has the agent
// registered, WATCHDOG=1 at half of WATCHDOG_USEC, RELOADING=1 then
// READY=1 with the outcome around each SIGHUP, STOPPING=1 on SIGTERM
// then exit 0, every message from the main process (the one systemd
// started), never from a worker.
func TestServiceNotifications(t *testing.T) {
	t.Parallel()
	for _, mode := range []struct{ name, selfUpdate string }{{"in process", "0"}, {"supervised", "1"}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			l := sdnotifytest.Listen(t, mode.selfUpdate == "1") // one of each address kind
			b := newBed(t, agentBinary(t, v1, hookNone))
			p := b.start("NOTIFY_SOCKET="+l.Addr, "WATCHDOG_USEC=400000", "RV_AGENT_SELF_UPDATE="+mode.selfUpdate)
			main := p.cmd.Process.Pid
			m := l.Next(t)
			if !strings.HasPrefix(m.States, "READY=1\nSTATUS=registered") || m.PID != main {
				t.Fatalf("first message %+v, want READY=1 and a status from pid %d\n%s", m, main, p.out)
			}
			if _, ok := b.agent(); !ok {
				t.Fatal("READY=1 before the control plane had the agent registered")
			}
			for i := 0; i < 3; i++ {
				if m := l.Next(t); m.States != "WATCHDOG=1" || m.PID != main {
					t.Fatalf("message %+v, want WATCHDOG=1 from pid %d", m, main)
				}
			}
			// SIGHUP (systemctl reload): RELOADING=1 with the monotonic
			// clock, then READY=1 with the outcome, from the main process.
			// A vault that cannot be read leaves the old one in service,
			// and the status says so.
			vaultPath := filepath.Join(b.data, "agent-vault.json")
			good, err := os.ReadFile(vaultPath)
			if err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				vault  []byte
				status string
			}{
				{good, "STATUS=vault reloaded; polling the control plane"},
				{[]byte("{not a vault"), "STATUS=vault reload failed: the old vault stays in service (the log says why)"},
				{good, "STATUS=vault reloaded; polling the control plane"},
			} {
				if err := os.WriteFile(vaultPath, tc.vault, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
				m := nextBut(t, l, "WATCHDOG=1")
				states := strings.Split(m.States, "\n")
				if len(states) != 2 || states[0] != "RELOADING=1" || !strings.HasPrefix(states[1], "MONOTONIC_USEC=") || m.PID != main {
					t.Fatalf("message %+v after SIGHUP, want RELOADING=1 and MONOTONIC_USEC from pid %d\n%s", m, main, p.out)
				}
				if us, err := strconv.ParseInt(strings.TrimPrefix(states[1], "MONOTONIC_USEC="), 10, 64); err != nil || us <= 0 {
					t.Fatalf("%s: not a clock reading", states[1])
				}
				if m := nextBut(t, l, "WATCHDOG=1"); m.States != "READY=1\n"+tc.status || m.PID != main {
					t.Fatalf("message %+v after the reload, want READY=1 and %q from pid %d\n%s", m, tc.status, main, p.out)
				}
			}
			if n := strings.Count(p.out.String(), "vault reload failed; the old vault stays in service"); n != 1 {
				t.Errorf("%d log lines for the failed reload, want 1:\n%s", n, p.out)
			}
			code := make(chan int, 1)
			go func() { code <- p.stop(t) }()
			for {
				m := l.Next(t)
				if m.PID != main {
					t.Fatalf("a message from pid %d, not the main process %d: %+v", m.PID, main, m)
				}
				if strings.HasPrefix(m.States, "STOPPING=1") {
					break
				}
				if m.States != "WATCHDOG=1" {
					t.Fatalf("message %+v while stopping", m)
				}
			}
			if c := <-code; c != 0 {
				t.Fatalf("exit %d after SIGTERM, want 0\n%s", c, p.out)
			}
			if strings.Contains(p.out.String(), "NOTIFY_SOCKET") {
				t.Errorf("a warning about NOTIFY_SOCKET:\n%s", p.out)
			}
		})
	}
	// A malformed NOTIFY_SOCKET: one warning line, and the agent runs.
	t.Run("malformed", func(t *testing.T) {
		t.Parallel()
		b := newBed(t, agentBinary(t, v1, hookNone))
		p := b.start("NOTIFY_SOCKET=relative/path", "RV_AGENT_SELF_UPDATE=0")
		b.waitOnline(v1, time.Time{}, 30*time.Second)
		if n := strings.Count(p.out.String(), "NOTIFY_SOCKET is neither"); n != 1 {
			t.Errorf("%d warnings about NOTIFY_SOCKET, want 1:\n%s", n, p.out)
		}
		if c := p.stop(t); c != 0 {
			t.Fatalf("exit %d", c)
		}
	})
}

// nextBut returns the next message that is not skip, failing the test
// when none comes within 20 s.
func nextBut(t *testing.T, l *sdnotifytest.Listener, skip string) sdnotifytest.Message {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if m := l.Next(t); m.States != skip {
			return m
		}
	}
	t.Fatalf("only %s for 20 s", skip)
	return sdnotifytest.Message{}
}
