//go:build unix

package main

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rapidvalue/tier3-agent/internal/config"
	"github.com/rapidvalue/tier3-agent/internal/sdnotify"
	"github.com/rapidvalue/tier3-agent/update"
)

// supervise decides how `tier3-agent run` runs. In the worker it applies a
// test binary's hooks and lets run go on (false). Otherwise, with
// self-update on or an update on trial, it becomes the supervisor and
// returns true with the exit it wants; else run goes on in this process.
func (c *cli) supervise(cfg *config.Agent, worker bool, sigs chan os.Signal) (bool, error) {
	if worker {
		c.workerTestHooks()
		return false, nil
	}
	bin, err := installPath()
	if err != nil {
		return true, err
	}
	files := update.FilesFor(bin)
	if !cfg.SelfUpdate && !update.InTrial(files) {
		return false, nil
	}
	return true, c.runSupervisor(cfg, files, sigs)
}

// underServiceManager: systemd sets INVOCATION_ID for every service it
// starts, and NOTIFY_SOCKET for Type=notify ones.
func (c *cli) underServiceManager() bool {
	return c.getenv("INVOCATION_ID") != "" || c.getenv("NOTIFY_SOCKET") != ""
}

// runSupervisor runs workers until a stop, and (without a service manager)
// restarts them, except after exit 78. Under systemd an exit outside the
// update machinery is passed on, for systemd's Restart= to decide; the
// restarts that belong to an update (into the new binary, back to the old
// one) happen here in both cases, in the process systemd knows as the
// service's main one.
//
// sigs is run's: it has been receiving SIGTERM, SIGINT and SIGHUP since
// the process started. Under systemd (Type=notify) the supervisor is the
// service's main process and the only one that notifies it: READY=1 when
// the first worker has registered, WATCHDOG=1 whenever its worker is
// alive (and when it starts one), STOPPING=1 on a stop. Workers get
// neither NOTIFY_SOCKET nor WATCHDOG_*; they tell the supervisor over
// their link.
func (c *cli) runSupervisor(cfg *config.Agent, files update.Files, sigs chan os.Signal) error {
	log := slog.New(slog.NewJSONHandler(c.stderr, nil)).With("component", "supervisor")
	self, err := selfIdentity(files.Binary)
	if err != nil {
		return err
	}
	hooks := c.updateHooks()
	managed := c.underServiceManager()
	healthTimeout := update.HealthTimeout(cfg.HeartbeatInterval)
	sd := c.managerNotifier(log)
	ready := false
	onLine := func(line string) {
		switch line {
		case "ready":
			if !ready {
				ready = true
				sd.notify(log, sdnotify.Ready, sdnotify.Status("registered; polling the control plane"))
			}
		case "alive":
			sd.notify(log, sdnotify.Watchdog)
		case "reloading":
			// Only around a reload of a worker that systemd knows ready.
			if ready {
				sd.notify(log, sdnotify.Reloading, sdnotify.Monotonic())
			}
		case "reloaded", "reload-failed":
			if ready {
				sd.notify(log, sdnotify.Ready, sdnotify.Status(reloadStatus(line == "reload-failed")))
			}
		}
	}

	restart := newRestartBackoff()
	reverted := false
	for {
		plan, err := update.Prepare(files, self, update.PrepareOptions{Enabled: cfg.SelfUpdate, Hooks: hooks})
		for _, n := range plan.Notes {
			log.Info(n)
		}
		if err != nil {
			log.Error("self-update start path failed; starting the installed binary", "error", err)
		}
		if reverted && !plan.Reexec {
			sum, err := update.FileSHA256(files.Binary)
			plan.Reexec = err == nil && sum != self.SHA256
		}
		reverted = false
		if plan.Reexec {
			log.Info("the reverted binary is not this supervisor's: running it")
			signal.Stop(sigs)
			err := syscall.Exec(files.Binary, os.Args, os.Environ())
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
			log.Error("cannot exec the reverted binary; supervising it from here", "error", err)
		}
		var deadline time.Duration
		if plan.Trial != nil {
			deadline = healthTimeout
			log.Info("starting the new version on trial", "from", plan.Trial.From, "to", plan.Trial.To,
				"start", plan.Trial.Starts, "health_timeout", healthTimeout.String())
		}
		started := time.Now()
		if ready {
			sd.notify(log, sdnotify.Watchdog) // the supervisor is alive, starting the next worker
		}
		w, err := startWorker(files.Binary, c.stdout, c.stderr, sd.workerEnv())
		if err != nil {
			if plan.Trial != nil {
				reverted = c.revert(log, files, "the new binary cannot be started: "+err.Error(), hooks)
				continue
			}
			return fmt.Errorf("cannot start the agent: %w", err)
		}
		res := w.watch(sigs, deadline, log, onLine, func() { sd.notify(log, sdnotify.Stopping) })
		log.Info("the agent exited", "status", res.how, "healthy", res.healthy)
		if res.stopping {
			return exitWith(res.code)
		}
		if plan.Trial != nil && onTrial(files, plan.Trial.To) {
			switch {
			case res.timedOut:
				reverted = c.revert(log, files, fmt.Sprintf("not healthy within %s (registered and a heartbeat answered)", healthTimeout), hooks)
				continue
			case !res.healthy:
				reverted = c.revert(log, files, "crashed at start ("+res.how+")", hooks)
				continue
			}
			// Healthy, then gone before it was stable: Prepare counts
			// the starts and reverts after update.MaxTrialStarts.
			if err := update.RecordExit(files, res.how); err != nil {
				log.Error("cannot record the exit", "error", err)
			}
			if c.pause(sigs, time.Second) {
				return nil
			}
			continue
		}
		if st, err := update.Load(files); err == nil && st.Trial != nil && st.Trial.Starts == 0 {
			continue // an update was installed: start it now
		}
		if managed || res.code == 78 {
			return exitWith(res.code)
		}
		if res.healthy || time.Since(started) > time.Minute {
			restart.reset()
		}
		d := restart.next()
		log.Warn("restarting the agent", "in", d.String())
		if c.pause(sigs, d) {
			return nil
		}
	}
}

// revert reverts the update on trial; it reports whether it did.
func (c *cli) revert(log *slog.Logger, files update.Files, reason string, hooks update.Hooks) bool {
	log.Warn("reverting the update", "reason", reason)
	if err := update.Revert(files, reason, hooks); err != nil {
		log.Error("the revert failed", "error", err)
		return false
	}
	return true
}

// pause waits d, or until a stop signal (true).
func (c *cli) pause(sigs <-chan os.Signal, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return false
		case s := <-sigs:
			if s != syscall.SIGHUP {
				return true
			}
		}
	}
}

// onTrial reports whether version is still on trial (not committed, not
// being reverted).
func onTrial(files update.Files, version string) bool {
	st, err := update.Load(files)
	return err == nil && st.Trial != nil && st.Trial.To == version && st.Trial.Reverting == ""
}

// selfIdentity is this supervisor's version and the SHA-256 of the binary
// it runs from (on Linux the running file itself, even if replaced since).
func selfIdentity(bin string) (update.Self, error) {
	sum, err := update.FileSHA256("/proc/self/exe")
	if err != nil {
		sum, err = update.FileSHA256(bin)
	}
	if err != nil {
		return update.Self{}, fmt.Errorf("cannot read the agent's own binary: %w", err)
	}
	return update.Self{Version: version, SHA256: sum}, nil
}

// worker is one `tier3-agent run --worker`.
type worker struct {
	proc  *os.Process
	lines chan string   // from the worker; closed at EOF
	done  chan struct{} // closed once it has exited
	state *os.ProcessState
}

// startWorker starts the binary at the install path as a worker, with the
// supervisor's standard streams and environment, and one end of a socket
// pair as fd 3. The thread that starts it stays locked until it exits, for
// Linux's parent-death signal (supervise_linux.go).
func startWorker(bin string, stdout, stderr io.Writer, env []string) (*worker, error) {
	syscall.ForkLock.RLock()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.CloseOnExec(fds[0])
		unix.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "worker"), os.NewFile(uintptr(fds[1]), "supervisor")
	cmd := exec.Command(bin, "run", "--worker")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.Env = env
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.SysProcAttr = workerSysProcAttr()
	w := &worker{lines: make(chan string, 4), done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		w.state = cmd.ProcessState
		close(w.done)
	}()
	err = <-started
	theirs.Close()
	if err != nil {
		mine.Close()
		return nil, err
	}
	w.proc = cmd.Process
	go func() {
		defer close(w.lines)
		defer mine.Close()
		s := bufio.NewScanner(io.LimitReader(mine, 1<<20))
		for s.Scan() {
			w.lines <- s.Text()
		}
	}()
	return w, nil
}

type result struct {
	code     int    // the exit status, 128+N for signal N
	how      string // "exit status 2", "signal: killed"
	healthy  bool
	stopping bool // a stop signal was passed on
	timedOut bool // killed for not becoming healthy
}

// watch passes signals on and waits for the worker's exit; with a
// deadline, it kills a worker that is not healthy by then.
//
// The worker's "ready" and "alive" lines go to onLine; stopping is
// called when a stop signal is passed on.
func (w *worker) watch(sigs <-chan os.Signal, deadline time.Duration, log *slog.Logger, onLine func(string), stopping func()) result {
	var res result
	var health, force <-chan time.Time
	if deadline > 0 {
		t := time.NewTimer(deadline)
		defer t.Stop()
		health = t.C
	}
	lines := w.lines
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				lines = nil
				continue
			}
			switch line {
			case "healthy":
				res.healthy, health = true, nil
			case "restart":
				log.Info("the agent installed an update; starting it")
			case "ready", "alive", "reloading", "reloaded", "reload-failed":
				onLine(line)
			}
		case s := <-sigs:
			w.proc.Signal(s)
			if s != syscall.SIGHUP && !res.stopping {
				res.stopping = true
				stopping()
				// The worker's own grace for tasks, its event flush, and a margin.
				force = time.After(30*time.Second + time.Minute)
			}
		case <-health:
			res.timedOut = true
			log.Warn("the new version is not healthy in time: killing it")
			w.proc.Kill()
		case <-force:
			log.Warn("the agent did not stop in time: killing it")
			w.proc.Kill()
		case <-w.done:
			// What the worker said just before it exited is still in the
			// socket: read it (its end is closed, so this ends).
			if lines != nil {
				for line := range lines {
					if line == "healthy" {
						res.healthy = true
					}
				}
			}
			res.how = w.state.String()
			res.code = w.state.ExitCode()
			if ws, ok := w.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				res.code = 128 + int(ws.Signal())
			}
			return res
		}
	}
}

// openSupervisorLink returns the worker's end of the socket to its
// supervisor, fd 3, when it is one.
func openSupervisorLink() *supervisorLink {
	var st unix.Stat_t
	if err := unix.Fstat(3, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil
	}
	unix.CloseOnExec(3)
	return &supervisorLink{f: os.NewFile(3, "supervisor")}
}

func killProcessGroup() {
	syscall.Kill(0, syscall.SIGKILL)
	select {}
}

// restartBackoff spaces restarts after crashes without a service manager:
// 1 s doubling to 60 s, each between half and all of it, reset by a healthy
// run.
type restartBackoff struct{ attempt int }

func newRestartBackoff() *restartBackoff { return &restartBackoff{} }

func (b *restartBackoff) reset() { b.attempt = 0 }

func (b *restartBackoff) next() time.Duration {
	ceil := min(time.Second<<min(b.attempt, 6), time.Minute)
	b.attempt++
	return ceil/2 + rand.N(ceil/2+1)
}
