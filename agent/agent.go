// Package agent is the tier-3 agent's runtime: it registers with the
// control plane, heartbeats, long-polls for task envelopes, runs them with
// credentials resolved from the vault, and reports results and audit
// events, with everything it sends redacted.
//
// It opens every connection itself; it listens on no port.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rapidvalue/tier3-agent/agent/audit"
	"github.com/rapidvalue/tier3-agent/agent/redact"
	"github.com/rapidvalue/tier3-agent/internal/config"
	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/internal/wire"
	"github.com/rapidvalue/tier3-agent/vault"
)

// VaultState is an opened vault as the runtime serves it.
type VaultState struct {
	Vault *vault.Vault
	// Sealed and Seal describe it for registration.
	Sealed bool
	Seal   string
}

// Options configure an Agent. Config, Version, BinarySHA256, Token and
// OpenVault are required.
type Options struct {
	Config       *config.Agent
	Version      string
	BinarySHA256 string
	// Token is the bearer token, sealed; the agent keeps it.
	Token *secmem.Sealed
	// OpenVault opens the vault; it is called at start and on Reload.
	OpenVault func() (*VaultState, error)
	// LogWriter receives the agent's JSON log lines, every one redacted
	// (nil: discarded).
	LogWriter io.Writer
	Clock     Clock
	Hostname  string
	// ShutdownGrace is how long running tasks may finish after a stop is
	// asked for (default 30 s).
	ShutdownGrace time.Duration
	// AuditLog is the local hash-chained audit log; every event goes to it
	// (the local-only ones too) before it is queued for the control plane.
	AuditLog *audit.Log
	// Updater, when set, handles self-update (§7): Run is started once the
	// agent is registered, and Heartbeat is told of every answered
	// heartbeat with its update_available hint. Package update implements it.
	Updater Updater
	// Ready, when set, is called once, when the agent has registered and
	// starts polling: a service manager's READY=1 (cmd/tier3-agent).
	Ready func(agentID string)
	// Alive, when set with a positive Watchdog, is called every Watchdog
	// while the agent's heartbeat loop keeps its schedule (each beat
	// answered or failed within its deadline): a service manager's
	// WATCHDOG=1. A wedged loop stops the calls, so that the manager
	// restarts the agent; a control plane that cannot be reached does
	// not (a restart would not help).
	Alive    func()
	Watchdog time.Duration
}

// Updater is the agent's self-update (PROTOCOL.md §7).
type Updater interface {
	// Run runs until ctx ends.
	Run(ctx context.Context)
	// Heartbeat must not block.
	Heartbeat(updateAvailable bool)
}

// Agent is one running agent.
type Agent struct {
	opts    Options
	cfg     *config.Agent
	log     *slog.Logger
	clock   Clock
	cl      *client
	started time.Time
	mtlsFP  string
	targets *targets
	tokens  tokenCache

	state     atomic.Pointer[runState]
	reloadMu  sync.Mutex
	inFlight  atomic.Int64
	completed atomic.Int64
	failed    atomic.Int64

	pollWait  atomic.Int64 // time.Duration
	heartbeat atomic.Int64 // time.Duration
	// beatDue is when the heartbeat loop must next come round (Unix ns):
	// the watchdog's measure of liveness.
	beatDue atomic.Int64

	events   *audit.Queue
	wentIdle chan struct{}
	// scratch keeps the locked scratch memory of finished tasks for the
	// next ones (getScratch).
	scratch chan *secmem.Scratch

	fatalOnce sync.Once
	fatal     chan error
}

// runState is what a vault generation serves: the vault, the redactor that
// knows its values, and the generation number.
type runState struct {
	vs         *VaultState
	redact     *redactor
	generation int64
}

// Methods lists the methods this build runs, for registration.
func Methods() []string {
	ms := make([]string, 0, len(methods))
	for _, m := range methodOrder {
		if _, ok := methods[m]; ok {
			ms = append(ms, m)
		}
	}
	return ms
}

// New validates the options and loads the vault; it sends nothing.
func New(opts Options) (*Agent, error) {
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	if opts.ShutdownGrace == 0 {
		opts.ShutdownGrace = 30 * time.Second
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
	}
	cfg := opts.Config
	tlsCfg, fp, err := newTLSConfig(cfg.ControlPlaneCA, cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	tg, err := newTargets(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	cl, err := newClient(cfg.ControlPlaneURL.String(), tlsCfg, opts.Token, opts.Version)
	if err != nil {
		return nil, fmt.Errorf("%w: RV_CONTROL_PLANE_URL: %w", config.ErrInvalid, err)
	}
	a := &Agent{
		opts: opts, cfg: cfg, clock: opts.Clock,
		cl:      cl,
		started: opts.Clock.Now(), mtlsFP: fp, targets: tg,
		fatal: make(chan error, 1), wentIdle: make(chan struct{}, 1),
		scratch: make(chan *secmem.Scratch, min(cfg.Concurrency, 16)),
	}
	w := opts.LogWriter
	if w == nil {
		w = io.Discard
	}
	a.log = slog.New(newLogHandler(w, slog.LevelInfo, func() *redactor { return a.state.Load().redact }))
	a.pollWait.Store(int64(cfg.PollWait))
	a.heartbeat.Store(int64(cfg.HeartbeatInterval))
	if err := a.loadVault(); err != nil {
		return nil, err
	}
	a.events, err = audit.NewQueue(audit.QueueConfig{
		Send:    a.sendEvents,
		Log:     opts.AuditLog,
		Clock:   opts.Clock,
		OnError: func(err error) { a.logWarn("audit event", "error", err) },
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// sendEvents posts one batch of audit events (§6).
func (a *Agent) sendEvents(ctx context.Context, batch []wire.Event) error {
	_, err := a.cl.do(ctx, "POST", "/events", wire.EventBatch{Events: batch}, nil)
	var se *StatusError
	switch {
	case err == nil:
		return nil
	case a.fatalError(err) != nil:
		a.setFatal(a.fatalError(err))
		return audit.Permanent(err)
	case errors.As(err, &se) && se.RetryAfter > 0:
		return audit.RetryAfter(err, se.RetryAfter)
	case errors.As(err, &se) && se.Code/100 == 4 && se.Code != 408 && se.Code != 429:
		return audit.Permanent(err)
	}
	return err
}

// Logger is the agent's redacting logger, for the caller's own lines.
func (a *Agent) Logger() *slog.Logger { return a.log }

// AgentID is the ID the control plane gave at registration, "" before.
func (a *Agent) AgentID() string { return a.cl.id() }

// Emit records an audit event: the local audit log, then the control plane.
func (a *Agent) Emit(ev wire.Event) { a.emit(ev) }

// Fetch streams GET rawURL from the control plane's origin (the self-update
// download; see client.stream). A fatal answer stops the agent as anywhere.
func (a *Agent) Fetch(ctx context.Context, rawURL string, limit int64) (int, io.ReadCloser, error) {
	code, body, err := a.cl.stream(ctx, rawURL, limit)
	if fatal := a.fatalError(err); fatal != nil {
		a.setFatal(fatal)
	}
	return code, body, err
}

func (a *Agent) loadVault() error {
	vs, err := a.opts.OpenVault()
	if err != nil {
		return err
	}
	gen := int64(1)
	var base *redact.Redactor
	if old := a.state.Load(); old != nil {
		gen, base = old.generation+1, old.redact.r
	}
	r, err := newRedactor(base, vs.Vault)
	if err != nil {
		return err
	}
	if err := r.addSealed(a.opts.Token); err != nil {
		return fmt.Errorf("%w: the agent token: %w", config.ErrInvalid, err)
	}
	a.state.Store(&runState{vs: vs, redact: r, generation: gen})
	return nil
}

// Reload re-opens the vault (SIGHUP). When it fails the old vault stays in
// service and the error is returned for the log.
func (a *Agent) Reload() error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	if err := a.loadVault(); err != nil {
		return err
	}
	gen := a.state.Load().generation
	a.emit(wire.Event{Type: wire.EventVaultReloaded, Generation: gen})
	a.logInfo("vault reloaded", "generation", gen)
	return nil
}

func (a *Agent) emit(ev wire.Event) {
	if ev.At.IsZero() {
		ev.At = a.clock.Now().UTC()
	}
	ev.At = ev.At.UTC()
	st := a.state.Load()
	ev.Reason = st.redact.String(ev.Reason)
	a.events.Emit(ev)
}

// logInfo and logWarn log through the redacting handler.
func (a *Agent) logInfo(msg string, args ...any) { a.log.Info(msg, args...) }
func (a *Agent) logWarn(msg string, args ...any) { a.log.Warn(msg, args...) }

func (a *Agent) setFatal(err error) {
	a.fatalOnce.Do(func() { a.fatal <- err })
}

// Run runs the agent until ctx is cancelled (a stop: running tasks get the
// grace period, then Run returns nil) or a fatal answer (401, 403, TLS that
// cannot work: Run returns the error).
func (a *Agent) Run(ctx context.Context) error {
	if err := a.register(ctx); err != nil {
		if errors.Is(err, ErrDisabled) {
			a.disable()
		}
		// Nothing was queued for the control plane yet but the local log
		// has every event already.
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	// Events flow until Run returns; a last flush gets a few seconds.
	evCtx, stopEvents := context.WithCancel(context.Background())
	evDone := make(chan struct{})
	go func() { defer close(evDone); a.events.Run(evCtx) }()
	defer func() {
		fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		a.events.Close(fctx)
		cancel()
		stopEvents()
		<-evDone
	}()
	pollCtx, stopPolling := context.WithCancel(ctx)
	defer stopPolling()
	// Tasks get their own context: a stop lets them finish (grace), a
	// fatal error cancels them.
	taskCtx, cancelTasks := context.WithCancel(context.Background())
	defer cancelTasks()

	var loops sync.WaitGroup
	loops.Add(3)
	a.scheduleBeat(time.Duration(a.heartbeat.Load()))
	go func() { defer loops.Done(); a.heartbeatLoop(pollCtx) }()
	go func() { defer loops.Done(); a.hygieneLoop(pollCtx) }()
	var tasks sync.WaitGroup
	go func() { defer loops.Done(); a.pollLoop(pollCtx, taskCtx, &tasks) }()
	if u := a.opts.Updater; u != nil {
		loops.Add(1)
		go func() { defer loops.Done(); u.Run(pollCtx) }()
	}
	if a.opts.Alive != nil && a.opts.Watchdog > 0 {
		loops.Add(1)
		go func() { defer loops.Done(); a.watchdogLoop(pollCtx) }()
	}
	if a.opts.Ready != nil {
		a.opts.Ready(a.cl.id())
	}

	var err error
	select {
	case <-ctx.Done():
		a.logInfo("stopping: no new tasks; waiting for running ones", "grace", a.opts.ShutdownGrace.String())
	case err = <-a.fatal:
		a.logWarn("stopping", "error", err)
	}
	stopPolling()
	loops.Wait()
	if err != nil {
		cancelTasks()
		tasks.Wait()
		if errors.Is(err, ErrDisabled) {
			a.disable()
		}
		return err
	}
	done := make(chan struct{})
	go func() { tasks.Wait(); close(done) }()
	select {
	case <-done:
	case <-a.clock.After(a.opts.ShutdownGrace):
		a.logWarn("grace period over: cancelling running tasks")
		cancelTasks()
		<-done
	}
	return nil
}

// disable records agent.disabled in the local audit log (never sent).
func (a *Agent) disable() {
	a.emit(wire.Event{Type: wire.EventDisabled, Reason: "the control plane answered 401: token unknown or revoked"})
}

func (a *Agent) register(ctx context.Context) error {
	st := a.state.Load()
	req := wire.RegisterRequest{
		Hostname: a.opts.Hostname, Version: a.opts.Version, BinarySHA256: a.opts.BinarySHA256,
		OS: runtime.GOOS, Arch: runtime.GOARCH, Methods: Methods(),
		Vault: wire.VaultSummary{Sealed: st.vs.Sealed, Seal: st.vs.Seal, Entries: st.vs.Vault.Len()},
	}
	if a.mtlsFP != "" {
		fp := a.mtlsFP
		req.MTLSFingerprint = &fp
	}
	b := newBackoff()
	for {
		var resp wire.RegisterResponse
		_, err := a.cl.do(ctx, "POST", "/register", req, &resp)
		if err == nil {
			if resp.AgentID == "" {
				err = fmt.Errorf("%w: registration answered no agent_id", ErrProtocol)
			} else {
				a.cl.setAgentID(resp.AgentID)
				if resp.HeartbeatIntervalS > 0 {
					a.heartbeat.Store(int64(time.Duration(resp.HeartbeatIntervalS) * time.Second))
				}
				if resp.PollWaitS > 0 {
					a.pollWait.Store(int64(time.Duration(min(resp.PollWaitS, 60)) * time.Second))
				}
				a.logInfo("registered", "agent_id", resp.AgentID, "version", a.opts.Version)
				a.emit(wire.Event{Type: wire.EventRegistered})
				if !st.vs.Sealed {
					a.logWarn("running on a plaintext vault (RV_AGENT_VAULT_MODE=migrate): seal it with tier3-agent vault seal")
					a.emit(wire.Event{Type: wire.EventVaultPlaintext})
				}
				return nil
			}
		}
		if fatal := a.fatalError(err); fatal != nil {
			return fatal
		}
		if err := a.wait(ctx, err, b); err != nil {
			return err
		}
	}
}

// fatalError says whether err ends the agent: 401, 403 and TLS failures do.
func (a *Agent) fatalError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrDisabled):
		return err
	case errors.Is(err, ErrForbidden):
		fp := a.mtlsFP
		if fp == "" {
			fp = "none (no RV_AGENT_TLS_CERT)"
		}
		return fmt.Errorf("%w: this agent presented client certificate fingerprint %s", err, fp)
	case errors.Is(err, ErrTLS):
		return err
	}
	return nil
}

// wait sleeps before a retry: Retry-After for 429/503, else backoff.
func (a *Agent) wait(ctx context.Context, err error, b *backoff) error {
	d := b.next()
	var se *StatusError
	if errors.As(err, &se) && se.RetryAfter > 0 {
		d = se.RetryAfter
	}
	a.logWarn("control plane call failed; retrying", "error", err, "in", d.String())
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-a.clock.After(d):
		return nil
	}
}

// heartbeatTimeout is one heartbeat's deadline.
const heartbeatTimeout = 30 * time.Second

// scheduleBeat records that the heartbeat loop waits d before its next
// beat: it must come round within d, the beat's deadline and a margin.
func (a *Agent) scheduleBeat(d time.Duration) {
	a.beatDue.Store(a.clock.Now().Add(d + heartbeatTimeout + 5*time.Second).UnixNano())
}

// live says whether the heartbeat loop keeps its schedule.
func (a *Agent) live() bool { return a.clock.Now().UnixNano() <= a.beatDue.Load() }

// watchdogLoop calls Alive every Watchdog while the agent is live.
func (a *Agent) watchdogLoop(ctx context.Context) {
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.clock.After(a.opts.Watchdog):
		}
		if a.live() {
			a.opts.Alive()
			warned = false
		} else if !warned {
			a.logWarn("the heartbeat loop is late: the service manager's watchdog is no longer fed")
			warned = true
		}
	}
}

func (a *Agent) heartbeatLoop(ctx context.Context) {
	wait := time.Duration(a.heartbeat.Load())
	for {
		a.scheduleBeat(wait)
		select {
		case <-ctx.Done():
			return
		case <-a.clock.After(wait):
		}
		wait = time.Duration(a.heartbeat.Load())
		st := a.state.Load()
		hb := wire.Heartbeat{
			AgentID: a.cl.id(), Version: a.opts.Version, BinarySHA256: a.opts.BinarySHA256,
			UptimeS:  int64(a.clock.Now().Sub(a.started) / time.Second),
			InFlight: int(a.inFlight.Load()), Completed: a.completed.Load(), Failed: a.failed.Load(),
			VaultGeneration: st.generation,
		}
		var resp wire.HeartbeatResponse
		// Each heartbeat has its own deadline, shorter than the interval
		// would allow drift for; it never waits on polls or tasks.
		hctx, cancel := context.WithTimeout(ctx, heartbeatTimeout)
		_, err := a.cl.do(hctx, "POST", "/heartbeat", hb, &resp)
		cancel()
		if fatal := a.fatalError(err); fatal != nil {
			a.setFatal(fatal)
			return
		}
		if u := a.opts.Updater; u != nil && err == nil {
			u.Heartbeat(resp.UpdateAvailable)
		}
		if err != nil && ctx.Err() == nil {
			a.logWarn("heartbeat failed", "error", err)
		}
		// A 429 or 503 with Retry-After longer than the interval holds
		// the next heartbeat back too (the status table is for every
		// endpoint).
		var se *StatusError
		if errors.As(err, &se) && se.RetryAfter > wait {
			wait = se.RetryAfter
		}
	}
}

func (a *Agent) pollLoop(ctx, taskCtx context.Context, tasks *sync.WaitGroup) {
	slots := make(chan struct{}, a.cfg.Concurrency)
	b := newBackoff()
	for {
		// While full, do not poll.
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wait := time.Duration(a.pollWait.Load())
		pctx, cancel := context.WithTimeout(ctx, wait+30*time.Second)
		raw, err := a.poll(pctx, wait)
		cancel()
		if err != nil {
			<-slots
			if ctx.Err() != nil {
				return
			}
			if fatal := a.fatalError(err); fatal != nil {
				a.setFatal(fatal)
				return
			}
			if a.wait(ctx, err, b) != nil {
				return
			}
			continue
		}
		b.reset()
		if raw == nil {
			<-slots
			continue
		}
		tasks.Add(1)
		a.inFlight.Add(1)
		go func() {
			defer func() {
				if a.inFlight.Add(-1) == 0 {
					a.noteIdle()
				}
				<-slots
				tasks.Done()
			}()
			a.runTask(taskCtx, raw)
		}()
	}
}

// poll asks for the next task; nil, nil means none (204).
func (a *Agent) poll(ctx context.Context, wait time.Duration) ([]byte, error) {
	var raw rawBody
	code, err := a.cl.do(ctx, "GET", "/tasks/next?wait="+strconv.Itoa(int(wait/time.Second)), nil, &raw)
	if err != nil {
		return nil, err
	}
	if code == 204 || len(raw) == 0 {
		return nil, nil
	}
	return raw, nil
}

// rawBody asks client.do for the body as it came (at most 1 MiB): the
// task runner decodes it strictly itself.
type rawBody []byte
