package update

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/atomicfile"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// Files are the files of self-update, all in the binary's folder so that
// every rename among them is atomic.
type Files struct {
	// Binary is the install path: the binary that runs.
	Binary string
	// Backup is the previous binary while a new one is on trial, a hard
	// link to it made before the new one moves in.
	Backup string
	// Unverified is a download in progress or not yet verified (mode 0600:
	// nothing runs it before it is verified).
	Unverified string
	// State is the update state (State, JSON), written atomically.
	State string
}

// FilesFor returns the files of the binary at path.
func FilesFor(binary string) Files {
	return Files{
		Binary:     binary,
		Backup:     binary + ".bak",
		Unverified: binary + ".unverified",
		State:      binary + ".update.json",
	}
}

func (f Files) dir() string { return filepath.Dir(f.Binary) }

// stateFormat is the version of the state file's format.
const stateFormat = 1

// maxStateBytes caps the state file; it holds a few versions and events.
const maxStateBytes = 64 << 10

// maxReverted caps the reverted list (the oldest go first).
const maxReverted = 16

// maxPending caps the events kept for the agent to send.
const maxPending = 32

// State is the update state of one install path. It is the only record of
// the trial, and of the anti-rollback floor, across restarts.
type State struct {
	Format int `json:"format"`
	// Committed is the highest version ever committed on this host: the
	// anti-rollback floor. A version becomes committed when it has run
	// healthy for RV_AGENT_STABLE_AFTER after an update, or when a
	// supervisor starts on it outside a trial (an install by the operator).
	Committed string `json:"committed,omitempty"`
	// Trial is set from just before a new binary moves in until it is
	// committed or reverted: the "trial in progress" marker.
	Trial *Trial `json:"trial,omitempty"`
	// Reverted lists versions that were reverted here; they are refused.
	Reverted []string `json:"reverted,omitempty"`
	// Pending are audit events (applied, reverted) for the agent to send
	// once registered; they are removed once queued (at least once).
	Pending []wire.Event `json:"pending,omitempty"`
}

// Trial is an update on trial.
type Trial struct {
	From        string    `json:"from"`
	To          string    `json:"to"`
	FromSHA256  string    `json:"from_sha256"`
	ToSHA256    string    `json:"to_sha256"`
	InstalledAt time.Time `json:"installed_at"`
	// Starts counts the workers started on the new binary.
	Starts int `json:"starts"`
	// LastExit says how the last of them ended.
	LastExit string `json:"last_exit,omitempty"`
	// Reverting is the reason of a revert that has begun: a start that
	// finds it finishes the revert.
	Reverting string `json:"reverting,omitempty"`
}

// ErrState is wrapped by the errors of an unreadable state file. The
// anti-rollback floor is in it, so the agent then installs nothing (it
// fails closed) until the file is repaired or moved aside.
var ErrState = errors.New("unreadable self-update state file")

// Load reads the state; a missing file is an empty state.
func Load(f Files) (*State, error) {
	st, _, err := load(f)
	return st, err
}

func load(f Files) (*State, bool, error) {
	file, err := os.Open(f.State)
	if errors.Is(err, fs.ErrNotExist) {
		return &State{Format: stateFormat}, false, nil
	}
	if err != nil {
		return nil, true, fmt.Errorf("%w %s: %w", ErrState, f.State, err)
	}
	defer file.Close()
	b, err := io.ReadAll(io.LimitReader(file, maxStateBytes+1))
	if err != nil {
		return nil, true, fmt.Errorf("%w %s: %w", ErrState, f.State, err)
	}
	st := &State{}
	if err := wire.Decode(b, st, wire.Limits{MaxBytes: maxStateBytes}); err != nil {
		return nil, true, fmt.Errorf("%w %s: %w", ErrState, f.State, err)
	}
	if err := st.check(); err != nil {
		return nil, true, fmt.Errorf("%w %s: %w", ErrState, f.State, err)
	}
	return st, true, nil
}

func (st *State) check() error {
	if st.Format != stateFormat {
		return fmt.Errorf("format %d, want %d", st.Format, stateFormat)
	}
	versions := append([]string{}, st.Reverted...)
	if st.Committed != "" {
		versions = append(versions, st.Committed)
	}
	if t := st.Trial; t != nil {
		versions = append(versions, t.From, t.To)
		var x [32]byte
		if !decodeHex32(&x, t.FromSHA256) || !decodeHex32(&x, t.ToSHA256) {
			return errors.New("trial: want sha256 in hex")
		}
	}
	for _, v := range versions {
		if _, err := wire.ParseVersion(v); err != nil {
			return errors.New("a version is not a semantic version")
		}
	}
	return nil
}

func save(f Files, st *State) error {
	st.Format = stateFormat
	if n := len(st.Reverted); n > maxReverted {
		st.Reverted = st.Reverted[n-maxReverted:]
	}
	if n := len(st.Pending); n > maxPending {
		st.Pending = st.Pending[n-maxPending:]
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(f.State, append(b, '\n'), 0o600)
}

// raiseFloor makes v the committed floor when it is higher.
func (st *State) raiseFloor(v string) bool {
	if v == "" {
		return false
	}
	if st.Committed != "" {
		if c, err := wire.CompareVersions(v, st.Committed); err != nil || c <= 0 {
			return false
		}
	}
	st.Committed = v
	return true
}

// FileSHA256 returns the hex SHA-256 of a file.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// withLock runs fn holding the folder's lock, which serializes the
// supervisor and its workers (and two agents started on one install path
// by mistake).
func withLock(f Files, fn func() error) error {
	unlock, err := lockDir(f.dir())
	if err != nil {
		return fmt.Errorf("cannot lock %s: %w", f.dir(), err)
	}
	defer unlock()
	return fn()
}
