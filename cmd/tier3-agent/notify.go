package main

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/sdnotify"
)

// workerWatchdogEnv tells a worker how often its supervisor wants to hear
// that it is alive (microseconds, like WATCHDOG_USEC): the worker never
// sees systemd's own variables.
const workerWatchdogEnv = "TIER3_AGENT_WORKER_WATCHDOG_USEC"

// notice is what `run` tells a service manager (sd_notify): directly when
// it is the service's main process, or through its supervisor when it is
// a worker. Every method is safe when there is no one to tell.
type notice struct {
	sd    *sdnotify.Notifier
	link  *supervisorLink
	every time.Duration // how often to say alive; 0: never
	warn  func(error)
	// readied: READY=1 has been sent. A reload before it says nothing:
	// its READY=1 would announce an agent that has not registered yet.
	readied atomic.Bool
}

func (c *cli) serviceNotifier(worker bool, link *supervisorLink) *notice {
	var once sync.Once
	n := &notice{link: link, warn: func(err error) {
		once.Do(func() {
			fmt.Fprintf(c.stderr, "tier3-agent: warning: %v: the service manager is not told the agent's state\n", err)
		})
	}}
	if worker {
		if link == nil {
			return n
		}
		if us, err := strconv.ParseInt(c.getenv(workerWatchdogEnv), 10, 64); err == nil && us > 0 {
			n.every = time.Duration(us) * time.Microsecond / 2
		}
		return n
	}
	sd, err := sdnotify.New(c.getenv)
	if err != nil {
		n.warn(err)
		return n
	}
	n.sd = sd
	if sd != nil {
		wd, err := sdnotify.WatchdogInterval(c.getenv, os.Getpid())
		if err != nil {
			n.warn(err)
		}
		n.every = wd / 2
	}
	return n
}

func (n *notice) send(states ...string) {
	if err := n.sd.Notify(states...); err != nil {
		n.warn(err)
	}
}

// ready: registered, polling.
func (n *notice) ready(agentID string) {
	if n.link != nil {
		n.link.send("ready")
		return
	}
	n.send(sdnotify.Ready, sdnotify.Status("registered as "+agentID+"; polling the control plane"))
	n.readied.Store(true)
}

// Status lines of a reload (SIGHUP, or systemctl reload). The failure's
// reason goes to the log, through its redaction, not to systemd.
const (
	statusReloaded     = "vault reloaded; polling the control plane"
	statusReloadFailed = "vault reload failed: the old vault stays in service (the log says why)"
)

// reloading: a reload of the vault begins.
func (n *notice) reloading() {
	if n.link != nil {
		n.link.send("reloading")
		return
	}
	if n.readied.Load() {
		n.send(sdnotify.Reloading, sdnotify.Monotonic())
	}
}

// reloaded: the reload is over; failed says the old vault stays.
func (n *notice) reloaded(failed bool) {
	if n.link != nil {
		if failed {
			n.link.send("reload-failed")
		} else {
			n.link.send("reloaded")
		}
		return
	}
	if n.readied.Load() {
		n.send(sdnotify.Ready, sdnotify.Status(reloadStatus(failed)))
	}
}

func reloadStatus(failed bool) string {
	if failed {
		return statusReloadFailed
	}
	return statusReloaded
}

// alive: the agent's loops keep their schedule.
func (n *notice) alive() {
	if n.link != nil {
		n.link.send("alive")
		return
	}
	n.send(sdnotify.Watchdog)
}

// stopping: a stop signal arrived (a worker's supervisor says it itself).
func (n *notice) stopping() {
	if n.link == nil {
		n.send(sdnotify.Stopping, sdnotify.Status("stopping: running tasks get their grace period"))
	}
}

// managerNotice is the supervisor's line to systemd.
type managerNotice struct {
	sd   *sdnotify.Notifier
	wd   time.Duration
	once sync.Once
}

func (c *cli) managerNotifier(log *slog.Logger) *managerNotice {
	m := &managerNotice{}
	sd, err := sdnotify.New(c.getenv)
	if err != nil {
		log.Warn("the service manager is not told the agent's state", "error", err.Error())
		return m
	}
	m.sd = sd
	if sd != nil {
		if m.wd, err = sdnotify.WatchdogInterval(c.getenv, os.Getpid()); err != nil {
			log.Warn("no watchdog", "error", err.Error())
		}
	}
	return m
}

func (m *managerNotice) notify(log *slog.Logger, states ...string) {
	if err := m.sd.Notify(states...); err != nil {
		m.once.Do(func() { log.Warn("cannot notify the service manager", "error", err.Error()) })
	}
}

// workerEnv is the supervisor's environment without systemd's
// notification variables (the worker is not the main process: with
// NotifyAccess=main systemd would refuse it), with the watchdog interval
// the worker reports against.
func (m *managerNotice) workerEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case sdnotify.EnvSocket, sdnotify.EnvWatchdogUS, sdnotify.EnvWatchdogPID, workerWatchdogEnv:
			continue
		}
		env = append(env, kv)
	}
	if m.wd > 0 {
		env = append(env, workerWatchdogEnv+"="+strconv.FormatInt(m.wd.Microseconds(), 10))
	}
	return env
}
