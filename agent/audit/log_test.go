package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

func openTemp(t *testing.T) (*Log, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

func TestLogRoundTrip(t *testing.T) {
	l, path := openTemp(t)
	if seq, hash := l.Head(); seq != 0 || hash != "" {
		t.Fatalf("empty log head = %d %q", seq, hash)
	}
	var want []wire.Event
	for i := 1; i <= 20; i++ {
		ev := testEvent(i, "reason")
		if err := l.Append(ev); err != nil {
			t.Fatal(err)
		}
		want = append(want, ev)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	seq, hash := l.Head()
	if rep.Events != 20 || rep.HeadSeq != 20 || seq != 20 || rep.HeadHash != hash || rep.Bytes != int64(len(data)) {
		t.Fatalf("report %+v, head %d %s", rep, seq, hash)
	}
	if len(rep.Genesis) != 64 || rep.Genesis == strings.Repeat("0", 64) {
		t.Errorf("genesis %q", rep.Genesis)
	}
	if rep.First.IsZero() || rep.Last.Before(rep.First) {
		t.Errorf("times %v %v", rep.First, rep.Last)
	}
	got := readEvents(t, data)
	for i := range want {
		if !got[i].At.Equal(want[i].At) || got[i].At.Location() != time.UTC {
			t.Errorf("event %d at %v, want %v in UTC", i, got[i].At, want[i].At)
		}
		got[i].At = want[i].At
		if got[i] != want[i] {
			t.Errorf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if _, err := VerifyAgainst(bytes.NewReader(data), seq, hash); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" {
		fi, _ := os.Stat(path)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("mode %v, want 0600", fi.Mode().Perm())
		}
	}
}

// TestLogLineFormat pins the format and the hash of the package
// documentation, computed here independently of the package's code.
func TestLogLineFormat(t *testing.T) {
	l, path := openTemp(t)
	l.now = func() time.Time { return time.Date(2026, 11, 24, 8, 0, 1, 500_000_000, time.FixedZone("x", 3600)) }
	l.prev = testGenesis
	ev := wire.Event{Type: wire.EventRegistered, At: time.Date(2026, 11, 24, 9, 0, 0, 0, time.FixedZone("CET", 3600))}
	if err := l.Append(ev); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	prev := hex.EncodeToString(testGenesis[:])
	event := `{"type":"agent.registered","at":"2026-11-24T08:00:00Z"}`
	sum := sha256.Sum256([]byte("rv-agent-audit/v1\n1\n2026-11-24T07:00:01.5Z\n" + prev + "\n" + event))
	want := `{"seq":1,"at":"2026-11-24T07:00:01.5Z","prev":"` + prev + `","event":` + event +
		`,"hash":"` + hex.EncodeToString(sum[:]) + `"}` + "\n"
	if string(data) != want {
		t.Fatalf("line\n%s\nwant\n%s", data, want)
	}
}

func TestLogReopenContinues(t *testing.T) {
	l, path := openTemp(t)
	for i := 1; i <= 3; i++ {
		if err := l.Append(testEvent(i, "")); err != nil {
			t.Fatal(err)
		}
	}
	seq1, hash1 := l.Head()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(testEvent(9, "")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	before, _ := os.ReadFile(path)

	l2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if seq, hash := l2.Head(); seq != seq1 || hash != hash1 {
		t.Fatalf("reopened head %d %s, want %d %s", seq, hash, seq1, hash1)
	}
	for i := 4; i <= 5; i++ {
		if err := l2.Append(testEvent(i, "")); err != nil {
			t.Fatal(err)
		}
	}
	data, _ := os.ReadFile(path)
	if !bytes.HasPrefix(data, before) {
		t.Fatal("reopening changed the existing records")
	}
	rep, err := Verify(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Events != 5 {
		t.Fatalf("%d events", rep.Events)
	}
	// The old head is still an anchor the grown log reaches.
	if _, err := VerifyAgainst(bytes.NewReader(data), seq1, hash1); err != nil {
		t.Fatal(err)
	}
}

func TestLogConcurrentAppend(t *testing.T) {
	l, path := openTemp(t)
	const writers, each = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				errs <- l.Append(testEvent(w*each+i, fmt.Sprintf("writer %d", w)))
			}
		}()
	}
	go func() { wg.Wait(); close(errs) }()
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	data, _ := os.ReadFile(path)
	rep, err := Verify(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Events != writers*each {
		t.Fatalf("%d events, want %d", rep.Events, writers*each)
	}
	seen := map[string]bool{}
	for _, ev := range readEvents(t, data) {
		seen[ev.TaskID] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("%d distinct events, want %d", len(seen), writers*each)
	}
}

func TestLogOpenBrokenAndMoveAside(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	lines := buildLines(5, "the reason")
	lines[3] = bytes.Replace(lines[3], []byte("salesforce"), []byte("salesfarce"), 1)
	if err := os.WriteFile(path, join(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path)
	var verr *VerifyError
	if !errors.As(err, &verr) || !errors.Is(err, ErrBroken) || verr.Line != 4 {
		t.Fatalf("Open of a broken log: %v", err)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "line 4") {
		t.Errorf("error does not name the path and line: %v", err)
	}

	aside, err := MoveAside(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(aside), "audit.log.broken-") {
		t.Errorf("moved to %s", aside)
	}
	if kept, _ := os.ReadFile(aside); !bytes.Equal(kept, join(lines)) {
		t.Error("the broken log was not kept as it was")
	}
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(testEvent(1, "")); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := VerifyFile(path, new(bytes.Buffer)); err != nil {
		t.Fatal(err)
	}

	// A second broken log in the same second gets a new name.
	os.WriteFile(path, []byte("garbage\n"), 0o600)
	aside2, err := MoveAside(path)
	if err != nil || aside2 == aside {
		t.Fatalf("second MoveAside: %q, %v", aside2, err)
	}
	if _, err := os.Stat(aside); err != nil {
		t.Fatal("the first broken log is gone")
	}
}

func TestLogOpenLocked(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("no lock outside Unix")
	}
	_, path := openTemp(t)
	if _, err := Open(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
}

func TestLogOpenNotRegular(t *testing.T) {
	if _, err := Open(t.TempDir()); err == nil {
		t.Fatal("Open of a folder succeeded")
	}
}

func TestLogAppendNormalizes(t *testing.T) {
	l, path := openTemp(t)
	fixed := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	l.now = func() time.Time { return fixed }
	// Worst case for the line length: every string field at the cap and
	// made of bytes that JSON escapes six times longer.
	long := strings.Repeat("\x01", 4*MaxFieldBytes)
	ev := wire.Event{Type: wire.EventSelfUpdateReverted, TaskID: long, Method: long, Connector: long,
		ErrorClass: long, From: long, To: long, Reason: long + "é", Version: long}
	if err := l.Append(ev); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(wire.Event{Type: "agent.unknown"}); !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("unknown type: %v", err)
	}
	if err := l.Append(wire.Event{Type: wire.EventRegistered, At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}); !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("year 10000: %v", err)
	}
	data, _ := os.ReadFile(path)
	if len(data) > MaxLineBytes {
		t.Fatalf("line of %d bytes", len(data))
	}
	if _, err := Verify(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	got := readEvents(t, data)
	if len(got) != 1 || !got[0].At.Equal(fixed) || len(got[0].Reason) > MaxFieldBytes || !strings.HasSuffix(got[0].Reason, "…") {
		t.Fatalf("normalized event %+v", got)
	}
}

func TestCutUTF8(t *testing.T) {
	for _, s := range []string{strings.Repeat("é", 400), strings.Repeat("a", 511) + "€€", strings.Repeat("𝄞", 200)} {
		c := cut(s)
		if len(c) > MaxFieldBytes || !strings.HasSuffix(c, "…") || !utf8Valid(c) {
			t.Errorf("cut(%d bytes) = %d bytes, valid %v", len(s), len(c), utf8Valid(c))
		}
	}
	if cut("short") != "short" {
		t.Error("cut changed a short string")
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

func TestVerifyFile(t *testing.T) {
	l, path := openTemp(t)
	var out bytes.Buffer
	if err := VerifyFile(path, &out); err != nil {
		t.Fatal(err)
	}
	if want := "audit log " + path + ": 0 events, empty\n"; out.String() != want {
		t.Errorf("empty: %q", out.String())
	}
	for i := 1; i <= 3; i++ {
		l.Append(testEvent(i, "token=hunter2"))
	}
	seq, hash := l.Head()
	out.Reset()
	if err := VerifyFile(path, &out); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("audit log %s: 3 events, chain intact, head seq %d hash %s\n", path, seq, hash)
	if out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}

	data, _ := os.ReadFile(path)
	os.WriteFile(path, bytes.Replace(data, []byte("hunter2"), []byte("hunter3"), 1), 0o600)
	out.Reset()
	err := VerifyFile(path, &out)
	var verr *VerifyError
	if !errors.As(err, &verr) || verr.Line != 1 || out.Len() != 0 {
		t.Fatalf("tampered: %v, output %q", err, out.String())
	}
	if strings.Contains(err.Error(), "hunter") || !strings.Contains(err.Error(), path) {
		t.Errorf("error %q", err)
	}
	if err := VerifyFile(filepath.Join(t.TempDir(), "missing"), &out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestLogWriteFailureKeepsChain(t *testing.T) {
	l, path := openTemp(t)
	if err := l.Append(testEvent(1, "")); err != nil {
		t.Fatal(err)
	}
	// Swap the file for a read-only handle of it: the write fails, the
	// truncate fails too, and the Log must refuse from then on.
	ro, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	rw := l.f
	l.f = ro
	l.mu.Unlock()
	if err := l.Append(testEvent(2, "")); err == nil {
		t.Fatal("Append to a read-only file succeeded")
	}
	if err := l.Append(testEvent(3, "")); err == nil {
		t.Fatal("Append after an unknown state succeeded")
	}
	l.mu.Lock()
	l.f = rw
	l.mu.Unlock()
	ro.Close()
	if err := VerifyFile(path, new(bytes.Buffer)); err != nil {
		t.Fatal(err)
	}
}
