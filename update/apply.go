package update

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// Hooks are for the tests of the update machinery only. The agent sets them
// only in binaries built with -ldflags "-X main.testHook=…"; release builds
// leave them empty.
type Hooks struct {
	// Step, when set, is called after each numbered step of an operation
	// ("download", "apply", "revert", "commit"), so that a test can kill
	// the process there.
	Step func(op string, n int)
}

func (h Hooks) step(op string, n int) {
	if h.Step != nil {
		h.Step(op, n)
	}
}

// MaxTrialStarts is how many times a new binary is started before it is
// reverted for not becoming stable. A start that ends before the binary is
// healthy reverts at once.
const MaxTrialStarts = 3

// Self describes the running supervisor: its version and the SHA-256 of
// its binary, read when it started.
type Self struct {
	Version string
	SHA256  string
}

// Plan is what the supervisor does next, as Prepare decided it.
type Plan struct {
	// Trial, when set, is the trial the next worker runs in (it was
	// counted in Trial.Starts): the supervisor gives it HealthTimeout to
	// become healthy.
	Trial *Trial
	// Reexec is set when a revert put back a binary that is not the
	// supervisor's own: the supervisor execs it rather than go on with the
	// code of the binary it just reverted.
	Reexec bool
	// Notes say what Prepare did, for the log.
	Notes []string
}

// PrepareOptions configure Prepare.
type PrepareOptions struct {
	// Enabled is RV_AGENT_SELF_UPDATE. Off, and with no state file,
	// Prepare touches nothing.
	Enabled bool
	Hooks   Hooks
}

// Prepare is the start path, run by the supervisor before it starts each
// worker (and so after any crash or kill, of the worker or of a previous
// supervisor). It finishes a revert that was cut short, abandons a trial
// whose install did not complete, counts the starts of a binary on trial
// and reverts it after MaxTrialStarts, removes leftovers (.unverified, a
// stale .bak), and raises the anti-rollback floor to the version of the
// binary it runs when that is the supervisor's own, outside a trial.
func Prepare(f Files, self Self, opts PrepareOptions) (Plan, error) {
	var plan Plan
	if !opts.Enabled && !exists(f.State) {
		return plan, nil
	}
	err := withLock(f, func() error {
		st, _, err := load(f)
		if err != nil {
			return err
		}
		if err := os.Remove(f.Unverified); err == nil {
			plan.Notes = append(plan.Notes, "removed an unfinished download")
		}
		sum, err := FileSHA256(f.Binary)
		if err != nil {
			return fmt.Errorf("cannot read the installed binary: %w", err)
		}
		if t := st.Trial; t != nil {
			switch {
			case t.Reverting != "":
				plan.Notes = append(plan.Notes, "finishing the revert of "+t.To+": "+t.Reverting)
				if err := finishRevert(f, st, opts.Hooks); err != nil {
					return err
				}
				plan.Reexec = true
				return nil
			case sum == t.ToSHA256 && t.Starts >= MaxTrialStarts:
				reason := fmt.Sprintf("exited %d times before it was stable", t.Starts)
				if t.LastExit != "" {
					reason += " (last: " + t.LastExit + ")"
				}
				plan.Notes = append(plan.Notes, "reverting "+t.To+": "+reason)
				if err := beginRevert(f, st, reason, opts.Hooks); err != nil {
					return err
				}
				plan.Reexec = true
				return nil
			case sum == t.ToSHA256:
				t.Starts++
				if err := save(f, st); err != nil {
					return err
				}
				c := *t
				plan.Trial = &c
				return nil
			case sum == t.FromSHA256:
				plan.Notes = append(plan.Notes, "the install of "+t.To+" did not complete; "+t.From+" stays")
			default:
				plan.Notes = append(plan.Notes, "the binary was replaced during the trial of "+t.To+"; the trial is dropped")
			}
			st.Trial = nil
			if err := save(f, st); err != nil {
				return err
			}
		}
		// Outside a trial a backup is a leftover: an install cut short
		// before its trial was recorded, or a commit cut short.
		if err := os.Remove(f.Backup); err == nil {
			plan.Notes = append(plan.Notes, "removed a stale backup")
		}
		if sum == self.SHA256 && st.raiseFloor(self.Version) {
			return save(f, st)
		}
		return nil
	})
	if plan.Reexec {
		// Exec only when the binary now installed is not this one.
		sum, serr := FileSHA256(f.Binary)
		plan.Reexec = serr == nil && sum != self.SHA256
	}
	return plan, err
}

// Revert puts the previous binary back after a failed trial: the supervisor
// calls it when the worker on trial crashed before it was healthy, or did
// not become healthy in time. The reason goes into the
// agent.self_update_reverted event that the restored agent sends. Without
// a trial it does nothing.
func Revert(f Files, reason string, hooks Hooks) error {
	return withLock(f, func() error {
		st, _, err := load(f)
		if err != nil || st.Trial == nil {
			return err
		}
		return beginRevert(f, st, reason, hooks)
	})
}

func beginRevert(f Files, st *State, reason string, hooks Hooks) error {
	if st.Trial.Reverting == "" {
		st.Trial.Reverting = reason
		if err := save(f, st); err != nil {
			return err
		}
	}
	hooks.step("revert", 1)
	return finishRevert(f, st, hooks)
}

// finishRevert moves the backup back and records the revert. Each step is
// atomic and the state says where it stands, so a crash at any point is
// finished by the next Prepare.
func finishRevert(f Files, st *State, hooks Hooks) error {
	t := st.Trial
	switch _, err := os.Lstat(f.Backup); {
	case err == nil:
		if err := os.Rename(f.Backup, f.Binary); err != nil {
			return fmt.Errorf("cannot put %s back: %w", f.Backup, err)
		}
		if err := syncDir(f.dir()); err != nil {
			return err
		}
	case errors.Is(err, fs.ErrNotExist):
		// Already moved back by a revert cut short after the rename,
		// unless the backup was removed by hand.
		if sum, err := FileSHA256(f.Binary); err != nil || sum != t.FromSHA256 {
			return fmt.Errorf("cannot revert to %s: the backup %s is missing", t.From, f.Backup)
		}
	default:
		return err
	}
	hooks.step("revert", 2)
	st.Trial = nil
	st.Reverted = append(st.Reverted, t.To)
	st.Pending = append(st.Pending, wire.Event{
		Type: wire.EventSelfUpdateReverted, At: time.Now().UTC(),
		From: t.To, To: t.From, Reason: t.Reverting,
	})
	if err := save(f, st); err != nil {
		return err
	}
	hooks.step("revert", 3)
	return nil
}

// RecordExit notes how a worker on trial ended, for the revert's reason.
func RecordExit(f Files, how string) error {
	return withLock(f, func() error {
		st, _, err := load(f)
		if err != nil || st.Trial == nil {
			return err
		}
		st.Trial.LastExit = how
		return save(f, st)
	})
}

// InTrial reports whether the state holds a trial (and so whether a
// supervisor must watch the next start, whatever RV_AGENT_SELF_UPDATE says).
func InTrial(f Files) bool {
	st, err := Load(f)
	return err == nil && st.Trial != nil
}

// commit ends the trial of version: it becomes the floor, the backup goes,
// and agent.self_update_applied is queued. It reports whether there was a
// trial of that version to commit.
func commit(f Files, version string, hooks Hooks) (bool, error) {
	done := false
	err := withLock(f, func() error {
		st, _, err := load(f)
		if err != nil || st.Trial == nil || st.Trial.To != version || st.Trial.Reverting != "" {
			return err
		}
		t := st.Trial
		st.Trial = nil
		st.raiseFloor(t.To)
		st.Pending = append(st.Pending, wire.Event{Type: wire.EventSelfUpdateApplied, At: time.Now().UTC(), From: t.From, To: t.To})
		if err := save(f, st); err != nil {
			return err
		}
		done = true
		hooks.step("commit", 1)
		if err := os.Remove(f.Backup); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return syncDir(f.dir())
	})
	return done, err
}

// pending returns the events waiting to be sent.
func pending(f Files) ([]wire.Event, error) {
	st, err := Load(f)
	if err != nil {
		return nil, err
	}
	return st.Pending, nil
}

// dropPending removes the first n pending events, once they are queued.
func dropPending(f Files, n int) error {
	return withLock(f, func() error {
		st, _, err := load(f)
		if err != nil {
			return err
		}
		st.Pending = st.Pending[min(n, len(st.Pending)):]
		return save(f, st)
	})
}

// install moves the verified download in: the current binary is linked as
// the backup, the trial is recorded, and only then does the new binary take
// the install path, by one rename. At every instant the install path holds
// a whole binary, and the state says how to get back.
func install(f Files, o *Offer, running string, hooks Hooks) error {
	return withLock(f, func() error {
		st, _, err := load(f)
		if err != nil {
			return err
		}
		if st.Trial != nil {
			return refuse(o.Version, "an update (to %s) is still on trial", st.Trial.To)
		}
		if st.Committed != "" {
			if c, err := wire.CompareVersions(o.Version, st.Committed); err != nil || c <= 0 {
				return refuse(o.Version, "version %s is not newer than %s, the highest version committed on this host (anti-rollback)", o.Version, st.Committed)
			}
		}
		info, err := os.Stat(f.Binary)
		if err != nil {
			return err
		}
		hooks.step("apply", 1)
		// Runnable only now that it is verified, with the installed
		// binary's permissions.
		if err := os.Chmod(f.Unverified, info.Mode().Perm()); err != nil {
			return err
		}
		hooks.step("apply", 2)
		if err := os.Remove(f.Backup); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := linkOrCopy(f.Binary, f.Backup); err != nil {
			return fmt.Errorf("cannot keep the current binary as %s: %w", f.Backup, err)
		}
		if err := syncDir(f.dir()); err != nil {
			return err
		}
		hooks.step("apply", 3)
		fromSum, err := FileSHA256(f.Backup)
		if err != nil {
			return err
		}
		st.Trial = &Trial{
			From: running, To: o.Version, FromSHA256: fromSum, ToSHA256: fmt.Sprintf("%x", o.SHA256),
			InstalledAt: time.Now().UTC(),
		}
		if err := save(f, st); err != nil {
			return err
		}
		hooks.step("apply", 4)
		if err := os.Rename(f.Unverified, f.Binary); err != nil {
			return err
		}
		if err := syncDir(f.dir()); err != nil {
			return err
		}
		hooks.step("apply", 5)
		return nil
	})
}

// linkOrCopy makes dst a hard link to src, or a synced copy where the file
// system has no hard links.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	os.Remove(tmp)
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}
