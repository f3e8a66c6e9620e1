package update

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// Conn is the agent's connection to the control plane, as the checker uses
// it; *agent.Agent implements it.
type Conn interface {
	// AgentID is the agent's ID, "" before registration.
	AgentID() string
	// Fetch sends GET url (on the control plane's origin, with the agent's
	// credentials) and returns the status and the body, which yields at
	// most limit bytes. Non-2xx answers are errors.
	Fetch(ctx context.Context, url string, limit int64) (int, io.ReadCloser, error)
	// Emit records an audit event: the local log, then the control plane.
	Emit(ev wire.Event)
	// Logger is the agent's redacting logger.
	Logger() *slog.Logger
}

// Options configure a Checker.
type Options struct {
	Files   Files  // of the running binary
	Version string // the running binary's
	OS      string // runtime.GOOS
	Arch    string // runtime.GOARCH
	// ControlPlane is RV_CONTROL_PLANE_URL.
	ControlPlane *url.URL
	// UpdateKey is RV_AGENT_UPDATE_KEY, sealed; it is opened only to MAC.
	UpdateKey *secmem.Sealed
	// ReleaseKey is RV_AGENT_RELEASE_PUBKEY: when set, offers must carry
	// its signature.
	ReleaseKey ed25519.PublicKey
	// Enabled is RV_AGENT_SELF_UPDATE. Off, offers are still looked at
	// when the heartbeat says one exists, and refused with an event.
	Enabled bool
	// Supervised says a supervisor runs this worker: it will start the
	// installed binary and watch its trial. Without one nothing is
	// installed.
	Supervised bool
	// StableAfter is RV_AGENT_STABLE_AFTER: healthy running before a
	// binary on trial is committed.
	StableAfter time.Duration
	// Interval is the period of checks (default 1 h, ±10 % jitter);
	// HintGap the least time between two checks that the heartbeat's
	// update_available asks for (default 1 min), doubled after each
	// refusal up to Interval.
	Interval, HintGap time.Duration
	// Download limits: the whole download may take DownloadGrace plus
	// size/MinRate (defaults 60 s and 128 KiB/s), and no byte may be
	// missing for Stall (default 60 s).
	DownloadGrace time.Duration
	MinRate       int64
	Stall         time.Duration
	// Healthy, when set, is called once, when the agent is registered and
	// a heartbeat was answered (the supervisor's health signal).
	Healthy func()
	Hooks   Hooks
}

// Checker checks for self-update offers (§7) at start, on the heartbeat's
// hint and periodically; verifies, downloads and installs them; and, in a
// binary on trial, commits it once it has run healthy for StableAfter. It
// implements agent.Updater.
type Checker struct {
	opts Options
	hb   chan bool

	mu        sync.Mutex
	conn      Conn
	installed func()
}

// NewChecker returns a checker; Attach gives it the agent before Run.
func NewChecker(opts Options) *Checker {
	if opts.Interval <= 0 {
		opts.Interval = time.Hour
	}
	if opts.HintGap <= 0 {
		opts.HintGap = time.Minute
	}
	if opts.DownloadGrace <= 0 {
		opts.DownloadGrace = time.Minute
	}
	if opts.MinRate <= 0 {
		opts.MinRate = 128 << 10
	}
	if opts.Stall <= 0 {
		opts.Stall = time.Minute
	}
	return &Checker{opts: opts, hb: make(chan bool, 1)}
}

// Attach gives the checker its connection, and what to do once a new
// binary has moved in: stop the agent gracefully, so that the supervisor
// starts the new binary.
func (c *Checker) Attach(conn Conn, installed func()) {
	c.mu.Lock()
	c.conn, c.installed = conn, installed
	c.mu.Unlock()
}

// Heartbeat is told of every answered heartbeat and its update_available
// hint. It never blocks.
func (c *Checker) Heartbeat(updateAvailable bool) {
	select {
	case c.hb <- updateAvailable:
	default:
		if updateAvailable {
			// Keep the hint: replace a queued false by true.
			select {
			case <-c.hb:
			default:
			}
			select {
			case c.hb <- true:
			default:
			}
		}
	}
}

type outcome int

const (
	nothing outcome = iota
	refused
	failed
	done // installed
)

// Run checks until ctx ends or an update is installed. The agent starts it
// once registered.
func (c *Checker) Run(ctx context.Context) {
	c.mu.Lock()
	conn, installed := c.conn, c.installed
	c.mu.Unlock()
	if conn == nil {
		return
	}
	log := conn.Logger()
	c.sendPending(conn)
	st, err := Load(c.opts.Files)
	if err != nil {
		log.Warn("self-update state unreadable: no update is installed until it is repaired or moved aside", "error", err)
	}
	trial := err == nil && st.Trial != nil && st.Trial.To == c.opts.Version && st.Trial.Reverting == ""
	if trial {
		log.Info("this version is on trial; committed after healthy running", "version", c.opts.Version, "stable_after", c.opts.StableAfter.String())
	}
	var healthyAt time.Time
	hintWait := c.opts.HintGap
	var lastCheck time.Time
	check := func(why string) bool {
		lastCheck = time.Now()
		switch c.check(ctx, conn, why) {
		case done:
			if installed != nil {
				installed()
			}
			return true
		case refused, failed:
			hintWait = min(2*hintWait, c.opts.Interval)
		default:
			hintWait = c.opts.HintGap
		}
		return false
	}
	if !trial && c.opts.Enabled && check("start") {
		return
	}
	period := time.NewTimer(jitter(c.opts.Interval))
	defer period.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-period.C:
			period.Reset(jitter(c.opts.Interval))
			if !trial && c.opts.Enabled && check("periodic") {
				return
			}
		case hint := <-c.hb:
			now := time.Now()
			if healthyAt.IsZero() {
				healthyAt = now
				if c.opts.Healthy != nil {
					c.opts.Healthy()
				}
			}
			if trial && now.Sub(healthyAt) >= c.opts.StableAfter {
				ok, err := commit(c.opts.Files, c.opts.Version, c.opts.Hooks)
				if err != nil {
					log.Error("cannot commit the update", "version", c.opts.Version, "error", err)
					continue
				}
				trial = false
				if ok {
					log.Info("update committed", "version", c.opts.Version)
					c.sendPending(conn)
				}
				if c.opts.Enabled && check("commit") {
					return
				}
				continue
			}
			if hint && !trial && now.Sub(lastCheck) >= hintWait && check("hint") {
				return
			}
		}
	}
}

func jitter(d time.Duration) time.Duration {
	return d - d/10 + rand.N(d/5+1)
}

// sendPending emits the events that the state holds (a revert done by the
// supervisor, a commit), then drops them.
func (c *Checker) sendPending(conn Conn) {
	evs, err := pending(c.opts.Files)
	if err != nil || len(evs) == 0 {
		return
	}
	for _, ev := range evs {
		conn.Emit(ev)
	}
	if err := dropPending(c.opts.Files, len(evs)); err != nil {
		conn.Logger().Warn("cannot update the self-update state", "error", err)
	}
}

func (c *Checker) check(ctx context.Context, conn Conn, why string) outcome {
	log := conn.Logger()
	id := conn.AgentID()
	if id == "" {
		return failed
	}
	u := c.opts.ControlPlane.String() + wire.APIPrefix + "/update?current=" + url.QueryEscape(c.opts.Version)
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	status, body, err := conn.Fetch(cctx, u, wire.MaxBodyBytes)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("update check failed", "why", why, "error", err)
		}
		return failed
	}
	data, err := io.ReadAll(body)
	body.Close()
	if err != nil {
		log.Warn("update check failed", "why", why, "error", err)
		return failed
	}
	if status == 204 {
		return nothing
	}
	if status != 200 {
		log.Warn("update check: unexpected status", "status", status)
		return failed
	}
	o, err := ParseOffer(data)
	if err != nil {
		return c.reject(conn, &Refusal{Reason: err.Error()})
	}
	st, err := Load(c.opts.Files)
	if err != nil {
		return c.reject(conn, refuse(o.Version, "the self-update state is unreadable (%v): move it aside to allow updates", err))
	}
	abs, ref := Verify(o, Policy{
		Enabled: c.opts.Enabled, AgentID: id, Running: c.opts.Version, OS: c.opts.OS, Arch: c.opts.Arch,
		Floor: st.Committed, Reverted: st.Reverted, ControlPlane: c.opts.ControlPlane, ReleaseKey: c.opts.ReleaseKey,
	}, c.mac)
	if ref != nil {
		return c.reject(conn, ref)
	}
	if !installSupported || !c.opts.Supervised {
		return c.reject(conn, refuse(o.Version, "this agent cannot install updates: it runs without the tier3-agent supervisor (tier3-agent run on linux or macOS)"))
	}
	if st.Trial != nil {
		return c.reject(conn, refuse(o.Version, "an update (to %s) is still on trial", st.Trial.To))
	}
	log.Info("downloading an update", "version", o.Version, "size", o.Size, "why", why)
	if err := c.download(ctx, conn, o, abs); err != nil {
		var r *Refusal
		if !errors.As(err, &r) {
			r = refuse(o.Version, "download failed: %v", err)
		}
		return c.reject(conn, r)
	}
	if err := install(c.opts.Files, o, c.opts.Version, c.opts.Hooks); err != nil {
		os.Remove(c.opts.Files.Unverified)
		var r *Refusal
		if !errors.As(err, &r) {
			r = refuse(o.Version, "install failed: %v", err)
		}
		return c.reject(conn, r)
	}
	log.Info("update installed; restarting into it", "from", c.opts.Version, "to", o.Version)
	return done
}

func (c *Checker) reject(conn Conn, r *Refusal) outcome {
	conn.Logger().Warn("update refused", "version", r.Version, "reason", r.Reason)
	conn.Emit(wire.Event{Type: wire.EventSelfUpdateRejected, Version: r.Version, Reason: r.Reason})
	return refused
}

// mac computes the offer's HMAC with the update key, opened in locked
// memory for the computation only.
func (c *Checker) mac(manifest []byte) ([]byte, error) {
	if c.opts.UpdateKey == nil {
		return nil, errors.New("no update key")
	}
	k, err := c.opts.UpdateKey.Open()
	if err != nil {
		return nil, err
	}
	defer k.Destroy()
	return HMAC(k.Bytes(), manifest), nil
}

// download streams the binary into Files.Unverified (created with O_EXCL,
// mode 0600), hashing as it goes, under a deadline that grows with the
// size, a stall watchdog and the offered size as a hard cap. Anything but
// a whole binary with the offered SHA-256 is removed again.
func (c *Checker) download(ctx context.Context, conn Conn, o *Offer, u *url.URL) (err error) {
	f := c.opts.Files
	if err := os.Remove(f.Unverified); err != nil && !errors.Is(err, os.ErrNotExist) {
		return refuse(o.Version, "cannot remove a stale %s: %v", f.Unverified, err)
	}
	out, err := os.OpenFile(f.Unverified, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return refuse(o.Version, "cannot write beside the binary: %v", err)
	}
	defer func() {
		if err != nil {
			out.Close()
			os.Remove(f.Unverified)
		}
	}()
	limit := c.opts.DownloadGrace + time.Duration(float64(o.Size)/float64(c.opts.MinRate)*float64(time.Second))
	dctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var stalled atomic.Bool
	watchdog := time.AfterFunc(c.opts.Stall, func() { stalled.Store(true); cancel() })
	defer watchdog.Stop()
	slow := func(err error) error {
		switch {
		case stalled.Load():
			return refuse(o.Version, "download too slow: no data for %s", c.opts.Stall)
		case errors.Is(dctx.Err(), context.DeadlineExceeded):
			return refuse(o.Version, "download too slow: not done within %s", limit.Round(time.Second))
		case ctx.Err() != nil:
			return ctx.Err()
		}
		return refuse(o.Version, "download failed: %v", err)
	}
	status, body, err := conn.Fetch(dctx, u.String(), o.Size+1)
	if err != nil {
		return slow(err)
	}
	defer body.Close()
	if status != 200 {
		return refuse(o.Version, "download failed: the control plane answered %d", status)
	}
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var n int64
	for {
		k, rerr := body.Read(buf)
		if k > 0 {
			watchdog.Reset(c.opts.Stall)
			if n+int64(k) > o.Size {
				return refuse(o.Version, "the download is longer than the offered size (%d bytes)", o.Size)
			}
			if _, err := out.Write(buf[:k]); err != nil {
				return refuse(o.Version, "cannot write beside the binary: %v", err)
			}
			h.Write(buf[:k])
			if n == 0 {
				c.opts.Hooks.step("download", 1)
			}
			n += int64(k)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return slow(rerr)
		}
	}
	if n < o.Size {
		return refuse(o.Version, "the download ended after %d of %d bytes", n, o.Size)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	if sum != o.SHA256 {
		return refuse(o.Version, "the download's sha256 differs from the offer's")
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("cannot sync %s: %w", f.Unverified, err)
	}
	return out.Close()
}

// HealthTimeout is how long a binary on trial has to become healthy
// (registered, and a heartbeat answered) before the supervisor reverts it:
// ten heartbeat intervals, at least 10 s, at most 10 min.
func HealthTimeout(heartbeat time.Duration) time.Duration {
	return min(max(10*heartbeat, 10*time.Second), 10*time.Minute)
}
