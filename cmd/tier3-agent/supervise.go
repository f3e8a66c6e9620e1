package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/rapidvalue/tier3-agent/agent"
	"github.com/rapidvalue/tier3-agent/internal/config"
	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/update"
)

// How `tier3-agent run` runs (see update's package documentation):
//
//   - With self-update on (or an update still on trial), on unix, it is a
//     small supervisor (supervise_unix.go) that holds no secret. It runs
//     the agent as a child, `tier3-agent run --worker`, from the install
//     path, with a socket on fd 3 on which the worker says "healthy" (it
//     registered and a heartbeat was answered) and "restart" (it installed
//     an update). The supervisor forwards SIGTERM, SIGINT and SIGHUP, runs
//     the start path (update.Prepare) before each worker, watches a binary
//     on trial and reverts it.
//   - With self-update off and no trial, or off unix, the agent runs in
//     this process, as it always did; it installs nothing.

// testHook is empty in release builds, and then nothing below reads it or
// any RV_TEST_* variable. The self-update tests build binaries with
// -ldflags "-X main.testHook=…" (comma-separated):
//
//	crash          the worker panics as it starts
//	hang           the worker hangs as it starts, before it registers
//	exit-after=D   the worker exits with status 3 after D (a Go duration)
//	killpoints     RV_TEST_KILL_AT=OP:N kills the process group with
//	               SIGKILL after step N of OP (update.Hooks)
var testHook string

func hasTestHook(name string) (string, bool) {
	for _, h := range strings.Split(testHook, ",") {
		k, v, _ := strings.Cut(h, "=")
		if k == name {
			return v, true
		}
	}
	return "", false
}

// workerTestHooks makes a test binary's worker misbehave as it starts.
func (c *cli) workerTestHooks() {
	if testHook == "" {
		return
	}
	if _, ok := hasTestHook("crash"); ok {
		panic("test hook: crash at start")
	}
	if _, ok := hasTestHook("hang"); ok {
		fmt.Fprintln(c.stderr, "tier3-agent: test hook: hanging before registration")
		for {
			time.Sleep(time.Hour)
		}
	}
	if v, ok := hasTestHook("exit-after"); ok {
		d, err := time.ParseDuration(v)
		if err == nil {
			go func() {
				time.Sleep(d)
				fmt.Fprintln(c.stderr, "tier3-agent: test hook: exiting with status 3")
				os.Exit(3)
			}()
		}
	}
}

// updateHooks returns the kill points of a test binary (none in a release).
func (c *cli) updateHooks() update.Hooks {
	if _, ok := hasTestHook("killpoints"); !ok {
		return update.Hooks{}
	}
	at := c.getenv("RV_TEST_KILL_AT")
	return update.Hooks{Step: func(op string, n int) {
		if at == fmt.Sprintf("%s:%d", op, n) {
			fmt.Fprintf(c.stderr, "tier3-agent: test hook: killed at %s:%d\n", op, n)
			killProcessGroup()
		}
	}}
}

// installPath is the binary this process was started from, symlinks
// resolved: what an update replaces.
func installPath() (string, error) {
	p, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("cannot find the agent's own binary: %w", err)
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	return p, nil
}

// selfUpdate is the worker's side of self-update: the checker the agent
// drives, and the line to the supervisor.
type selfUpdate struct {
	checker *update.Checker
	link    *supervisorLink // nil without a supervisor
}

func (c *cli) newSelfUpdate(cfg *config.Agent, key *secmem.Sealed, worker bool) (*selfUpdate, error) {
	bin, err := installPath()
	if err != nil {
		return nil, err
	}
	var link *supervisorLink
	if worker {
		link = openSupervisorLink()
	}
	su := &selfUpdate{link: link}
	su.checker = update.NewChecker(update.Options{
		Files: update.FilesFor(bin), Version: version, OS: runtime.GOOS, Arch: runtime.GOARCH,
		ControlPlane: cfg.ControlPlaneURL, UpdateKey: key, ReleaseKey: cfg.ReleasePubKey,
		Enabled: cfg.SelfUpdate, Supervised: link != nil, StableAfter: cfg.StableAfter,
		Healthy: func() { link.send("healthy") },
		Hooks:   c.updateHooks(),
	})
	return su, nil
}

// attach connects the checker to the agent. stop stops the agent: after an
// install (the supervisor then starts the new binary), or when the
// supervisor is gone.
func (s *selfUpdate) attach(a *agent.Agent, stop func()) {
	s.checker.Attach(a, func() {
		s.link.send("restart")
		stop()
	})
	s.link.watch(stop)
}

func (s *selfUpdate) close() { s.link.close() }

// exitStatus is the supervisor's exit status, passed on from the worker,
// which has said what went wrong itself: main prints nothing more.
type exitStatus struct{ code int }

func (e *exitStatus) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func exitWith(code int) error {
	if code == 0 {
		return nil
	}
	return &exitStatus{code}
}

// supervisorLink is the worker's end of the socket to its supervisor.
type supervisorLink struct {
	mu sync.Mutex
	f  *os.File
}

func (l *supervisorLink) send(line string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.f.Write([]byte(line + "\n"))
}

// watch calls stop when the supervisor goes away (its end closes).
func (l *supervisorLink) watch(stop func()) {
	if l == nil {
		return
	}
	go func() {
		r := bufio.NewReader(l.f)
		for {
			if _, err := r.ReadByte(); err != nil {
				stop()
				return
			}
		}
	}()
}

func (l *supervisorLink) close() {
	if l != nil {
		l.f.Close()
	}
}
