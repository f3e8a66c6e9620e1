package update

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

var (
	oldBin = []byte("#!old binary, version 1.0.0\n")
	newBin = []byte("#!new binary, version 2.0.0, a little longer\n")
)

func hexSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// installDir is an install folder with the old binary and a verified
// download of the new one.
func installDir(t *testing.T) (Files, *Offer, Self) {
	t.Helper()
	f := FilesFor(filepath.Join(t.TempDir(), "tier3-agent"))
	if err := os.WriteFile(f.Binary, oldBin, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Unverified, newBin, 0o600); err != nil {
		t.Fatal(err)
	}
	o := &Offer{Version: "2.0.0", Size: int64(len(newBin)), SHA256: sha256.Sum256(newBin)}
	return f, o, Self{Version: "1.0.0", SHA256: hexSHA(oldBin)}
}

// crash is what a hook panics with to stop an operation at a step, as a
// SIGKILL would: nothing after the step runs (the operations keep no
// deferred clean-up that a kill would skip).
type crash struct{}

func crashAt(op string, n int) Hooks {
	return Hooks{Step: func(o string, k int) {
		if o == op && k == n {
			panic(crash{})
		}
	}}
}

func crashed(fn func()) (c bool) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(crash); !ok {
				panic(r)
			}
			c = true
		}
	}()
	fn()
	return false
}

func content(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}

func files(t *testing.T, f Files) []string {
	t.Helper()
	ents, _ := os.ReadDir(f.dir())
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestInstallCrashAtEveryStep(t *testing.T) {
	for n := 1; n <= 5; n++ {
		t.Run("apply:"+string(rune('0'+n)), func(t *testing.T) {
			f, o, self := installDir(t)
			if !crashed(func() { install(f, o, "1.0.0", crashAt("apply", n)) }) {
				t.Fatal("no crash")
			}
			if b := content(t, f.Binary); !bytes.Equal(b, oldBin) && !bytes.Equal(b, newBin) {
				t.Fatal("the install path holds neither binary")
			}
			plan, err := Prepare(f, self, PrepareOptions{Enabled: true})
			if err != nil {
				t.Fatal(err)
			}
			st, _ := Load(f)
			if n < 5 {
				// The new binary never moved in: the old one stays, and
				// nothing of the install is left.
				if !bytes.Equal(content(t, f.Binary), oldBin) || plan.Trial != nil || st.Trial != nil || st.Committed != "1.0.0" {
					t.Fatalf("plan %+v, state %+v", plan, st)
				}
				if got := files(t, f); !slices.Equal(got, []string{"tier3-agent", "tier3-agent.update.json"}) {
					t.Fatalf("left: %v", got)
				}
				return
			}
			// It moved in: its trial starts, with the backup kept.
			if !bytes.Equal(content(t, f.Binary), newBin) || plan.Trial == nil || plan.Trial.Starts != 1 || plan.Trial.To != "2.0.0" {
				t.Fatalf("plan %+v", plan)
			}
			if !bytes.Equal(content(t, f.Backup), oldBin) {
				t.Fatal("no backup")
			}
			if info, _ := os.Stat(f.Binary); info.Mode().Perm() != 0o750 {
				t.Fatalf("the new binary has mode %o, want the old one's 0750", info.Mode().Perm())
			}
		})
	}
}

// installed sets up a completed install: the new binary on trial.
func installed(t *testing.T) (Files, Self) {
	t.Helper()
	f, o, self := installDir(t)
	// The supervisor's first start, then the worker's install.
	os.Rename(f.Unverified, f.Unverified+".keep")
	if _, err := Prepare(f, self, PrepareOptions{Enabled: true}); err != nil {
		t.Fatal(err)
	}
	os.Rename(f.Unverified+".keep", f.Unverified)
	if err := install(f, o, "1.0.0", Hooks{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Prepare(f, self, PrepareOptions{Enabled: true}); err != nil {
		t.Fatal(err)
	}
	return f, self
}

func TestRevertCrashAtEveryStep(t *testing.T) {
	for n := 1; n <= 3; n++ {
		t.Run("revert:"+string(rune('0'+n)), func(t *testing.T) {
			f, self := installed(t)
			if !crashed(func() { Revert(f, "crashed at start (exit status 2)", crashAt("revert", n)) }) {
				t.Fatal("no crash")
			}
			if b := content(t, f.Binary); !bytes.Equal(b, oldBin) && !bytes.Equal(b, newBin) {
				t.Fatal("the install path holds neither binary")
			}
			// The next start is the new binary's supervisor, or the old
			// one's: either finishes the revert.
			newSelf := Self{Version: "2.0.0", SHA256: hexSHA(newBin)}
			if n == 3 {
				newSelf = self
			}
			plan, err := Prepare(f, newSelf, PrepareOptions{Enabled: true})
			if err != nil {
				t.Fatal(err)
			}
			st, _ := Load(f)
			if !bytes.Equal(content(t, f.Binary), oldBin) || st.Trial != nil || plan.Trial != nil {
				t.Fatalf("plan %+v state %+v", plan, st)
			}
			if plan.Reexec != (n < 3) {
				t.Fatalf("reexec %v", plan.Reexec)
			}
			want := wire.Event{Type: wire.EventSelfUpdateReverted, From: "2.0.0", To: "1.0.0", Reason: "crashed at start (exit status 2)"}
			if len(st.Pending) != 1 || st.Pending[0].Type != want.Type || st.Pending[0].From != want.From || st.Pending[0].To != want.To || st.Pending[0].Reason != want.Reason {
				t.Fatalf("pending %+v", st.Pending)
			}
			if !slices.Equal(st.Reverted, []string{"2.0.0"}) || st.Committed != "1.0.0" {
				t.Fatalf("state %+v", st)
			}
		})
	}
}

func TestTooManyTrialStartsRevert(t *testing.T) {
	f, self := installed(t) // start 1
	for i := 2; i <= MaxTrialStarts; i++ {
		RecordExit(f, "exit status 3")
		plan, err := Prepare(f, self, PrepareOptions{Enabled: true})
		if err != nil || plan.Trial == nil || plan.Trial.Starts != i {
			t.Fatalf("start %d: %+v %v", i, plan, err)
		}
	}
	RecordExit(f, "exit status 3")
	plan, err := Prepare(f, self, PrepareOptions{Enabled: true})
	if err != nil || plan.Trial != nil || plan.Reexec {
		t.Fatalf("%+v %v", plan, err)
	}
	st, _ := Load(f)
	if len(st.Pending) != 1 || st.Pending[0].Reason != "exited 3 times before it was stable (last: exit status 3)" {
		t.Fatalf("%+v", st.Pending)
	}
}

func TestCommitCrash(t *testing.T) {
	f, self := installed(t)
	if !crashed(func() { commit(f, "2.0.0", crashAt("commit", 1)) }) {
		t.Fatal("no crash")
	}
	newSelf := Self{Version: "2.0.0", SHA256: hexSHA(newBin)}
	if _, err := Prepare(f, newSelf, PrepareOptions{Enabled: true}); err != nil {
		t.Fatal(err)
	}
	st, _ := Load(f)
	if st.Trial != nil || st.Committed != "2.0.0" || len(st.Pending) != 1 || st.Pending[0].Type != wire.EventSelfUpdateApplied {
		t.Fatalf("%+v", st)
	}
	if got := files(t, f); !slices.Equal(got, []string{"tier3-agent", "tier3-agent.update.json"}) {
		t.Fatalf("left: %v", got)
	}
	// The floor holds against the old supervisor's version too.
	if _, err := Prepare(f, self, PrepareOptions{Enabled: true}); err != nil {
		t.Fatal(err)
	}
	if st, _ := Load(f); st.Committed != "2.0.0" {
		t.Fatalf("floor %s", st.Committed)
	}
}

// With self-update off and no state, the start path writes nothing where
// the agent is installed (a read-only install works).
func TestPrepareOffTouchesNothing(t *testing.T) {
	f, _, self := installDir(t)
	os.Remove(f.Unverified)
	if _, err := Prepare(f, self, PrepareOptions{Enabled: false}); err != nil {
		t.Fatal(err)
	}
	if got := files(t, f); !slices.Equal(got, []string{"tier3-agent"}) {
		t.Fatalf("wrote %v", got)
	}
}

// A state file that cannot be read holds the anti-rollback floor: nothing
// is installed until it is repaired (fail closed).
func TestUnreadableStateFailsClosed(t *testing.T) {
	f, o, self := installDir(t)
	for _, bad := range []string{"{", `{"format":1,"committed":"not a version"}`, `{"format":2}`, `{"format":1,"committed":"1.0.0","committed":"0.1.0"}`} {
		os.WriteFile(f.State, []byte(bad), 0o600)
		if _, err := Load(f); !errors.Is(err, ErrState) {
			t.Fatalf("%q: %v", bad, err)
		}
		if err := install(f, o, "1.0.0", Hooks{}); !errors.Is(err, ErrState) {
			t.Fatalf("%q: install: %v", bad, err)
		}
		if _, err := Prepare(f, self, PrepareOptions{Enabled: true}); !errors.Is(err, ErrState) {
			t.Fatalf("%q: prepare: %v", bad, err)
		}
		if !bytes.Equal(content(t, f.Binary), oldBin) {
			t.Fatal("the binary changed")
		}
	}
}

// The install re-checks the floor under the lock: an update committed by
// another worker meanwhile wins.
func TestInstallRechecksFloor(t *testing.T) {
	f, o, _ := installDir(t)
	save(f, &State{Committed: "2.0.0"})
	err := install(f, o, "1.0.0", Hooks{})
	var r *Refusal
	if !errors.As(err, &r) || !bytes.Equal(content(t, f.Binary), oldBin) {
		t.Fatalf("%v", err)
	}
}
