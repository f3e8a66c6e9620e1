package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// secret stands for whatever error text an event may carry. No error may
// quote any part of it.
const secret = "pw=Zq8vN3xKp2Lr7Wt5Ys9Hb4Jd6Fg1Mc0"

// forgeRaw makes a record with a correct hash over raw event bytes.
func forgeRaw(seq uint64, prev [sha256.Size]byte, event string) []byte {
	at := formatTime(time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC))
	h, _ := recordHash(nil, seq, []byte(at), &prev, []byte(event))
	return appendRecord(nil, seq, at, &prev, []byte(event), &h)
}

// rehash rewrites lines[from:] with fresh seqs, prevs and hashes: what an
// attacker who can write the file does to hide an edit.
func rehash(lines [][]byte, from int) [][]byte {
	out := append([][]byte(nil), lines[:from]...)
	prev := testGenesis
	if from > 0 {
		prev = hashOf(lines[from-1])
	}
	for i, line := range lines[from:] {
		rec, reason := parseRecord(bytes.TrimSuffix(line, []byte("\n")))
		if reason != "" {
			panic(reason)
		}
		seq := uint64(from + i + 1)
		h, _ := recordHash(nil, seq, rec.at, &prev, rec.event)
		out = append(out, appendRecord(nil, seq, string(rec.at), &prev, rec.event, &h))
		prev = h
	}
	return out
}

func edit(lines [][]byte, i int, old, new string) [][]byte {
	out := append([][]byte(nil), lines...)
	if !bytes.Contains(out[i], []byte(old)) {
		panic("edit: " + old + " not found")
	}
	out[i] = bytes.Replace(out[i], []byte(old), []byte(new), 1)
	return out
}

func without(lines [][]byte, i int) [][]byte {
	out := append([][]byte(nil), lines[:i]...)
	return append(out, lines[i+1:]...)
}

func insert(lines [][]byte, i int, line []byte) [][]byte {
	out := append([][]byte(nil), lines[:i]...)
	out = append(out, line)
	return append(out, lines[i:]...)
}

func swap(lines [][]byte, i, j int) [][]byte {
	out := append([][]byte(nil), lines...)
	out[i], out[j] = out[j], out[i]
	return out
}

func TestVerifyTampering(t *testing.T) {
	lines := buildLines(6, secret)
	head := hashOf(lines[5])
	headHex := hex.EncodeToString(head[:])
	h := func(i int) []byte { hh := hashOf(lines[i]); return hh[:] }
	h1 := hashOf(lines[1])
	okEvent := `{"type":"agent.registered","at":"2026-11-24T08:00:00Z"}`
	var zero [sha256.Size]byte

	tests := []struct {
		name string
		data []byte
		// line and reason (a substring) that Verify must report; line 0
		// means that Verify accepts the log.
		line   int
		reason string
		// when anchorLine > 0, VerifyAgainst with the head of the intact
		// log must fail at that line with anchorReason.
		anchorLine   int
		anchorReason string
	}{
		{name: "intact", data: join(lines)},
		{name: "empty log", data: nil},
		{name: "edit a byte in an event", data: join(edit(lines, 2, "salesforce", "salesfarce")), line: 3, reason: reasonHash},
		{name: "edit the reason", data: join(edit(lines, 3, "pw=Z", "pw=Y")), line: 4, reason: reasonHash},
		{name: "change seq", data: join(edit(lines, 2, `{"seq":3,`, `{"seq":4,`)), line: 3, reason: reasonHash},
		{name: "change at", data: join(edit(lines, 1, `T09:00:00.000000002Z`, `T09:00:01.000000002Z`)), line: 2, reason: reasonHash},
		{name: "change prev", data: join(edit(lines, 1, `"prev":"`+hex.EncodeToString(h(0)), `"prev":"`+hex.EncodeToString(zero[:]))), line: 2, reason: reasonHash},
		{name: "change the genesis", data: join(edit(lines, 0, `"prev":"`+hex.EncodeToString(testGenesis[:]), `"prev":"`+hex.EncodeToString(zero[:]))), line: 1, reason: reasonHash},
		{name: "delete a middle line", data: join(without(lines, 2)), line: 3, reason: "seq is 4, want 3"},
		{name: "delete the first line", data: join(without(lines, 0)), line: 1, reason: "seq is 2, want 1"},
		{name: "swap two lines", data: join(swap(lines, 1, 4)), line: 2, reason: "seq is 5, want 2"},
		{name: "swap adjacent lines", data: join(swap(lines, 2, 3)), line: 3, reason: "seq is 4, want 3"},
		{name: "duplicate a line", data: join(insert(lines, 3, lines[2])), line: 4, reason: "seq is 3, want 4"},
		{name: "insert a forged line with a wrong prev", data: join(insert(lines, 2, forgeLine(3, zero, testEvent(99, "")))), line: 3, reason: reasonPrev},
		{name: "insert a forged line with the right prev", data: join(insert(lines, 2, forgeLine(3, h1, testEvent(99, "")))), line: 4, reason: "seq is 3, want 4"},
		{name: "replace a line with a forged one", data: join(append(append(append([][]byte(nil), lines[:2]...), forgeLine(3, h1, testEvent(99, ""))), lines[3:]...)), line: 4, reason: reasonPrev},
		{name: "forged first line", data: join(insert(lines, 0, forgeLine(1, zero, testEvent(99, "")))), line: 2, reason: "seq is 1, want 2"},
		{name: "truncate the tail", data: join(lines[:4]), anchorLine: 5, anchorReason: reasonAnchorShort},
		{name: "truncate to nothing", data: nil, anchorLine: 1, anchorReason: reasonAnchorShort},
		{name: "edit and rewrite the rest of the chain", data: join(rehash(edit(lines, 3, "salesforce", "salesfarce"), 3)), anchorLine: 6, anchorReason: reasonAnchorHash},
		{name: "delete and rewrite the rest of the chain", data: join(rehash(without(lines, 1), 1)), anchorLine: 5 + 1, anchorReason: reasonAnchorShort},
		{name: "cut inside the last line", data: join(lines)[:len(join(lines))-30], line: 6, reason: reasonTorn},
		{name: "no newline at the end", data: bytes.TrimSuffix(join(lines), []byte("\n")), line: 6, reason: reasonTorn},
		{name: "empty line", data: join(insert(lines, 2, []byte("\n"))), line: 3, reason: reasonEmpty},
		{name: "CRLF", data: join(edit(lines, 0, "}\n", "}\r\n")), line: 1, reason: reasonShape},
		{name: "space after a colon", data: join(edit(lines, 0, `"seq":1`, `"seq": 1`)), line: 1, reason: reasonSeqSyntax},
		{name: "leading zero in seq", data: join(edit(lines, 0, `"seq":1`, `"seq":01`)), line: 1, reason: reasonSeqSyntax},
		{name: "extra field", data: join(edit(lines, 0, "\"}\n", "\",\"x\":1}\n")), line: 1, reason: reasonShape},
		{name: "keys reordered", data: join(insert(lines[1:], 0, bytes.Replace(lines[0], []byte(`{"seq":1,"at"`), []byte(`{"at"`), 1))), line: 1, reason: reasonShape},
		{name: "uppercase hex", data: join(edit(lines, 0, `"hash":"`+hex.EncodeToString(h(0)), `"hash":"`+strings.ToUpper(hex.EncodeToString(h(0))))), line: 1, reason: reasonHashSyntax},
		{name: "non-canonical time", data: join(edit(lines, 0, `.000000001Z`, `.0000000010Z`)), line: 1, reason: reasonAtSyntax},
		{name: "time with an offset", data: join(edit(lines, 0, `T09:00:00.000000001Z`, `T10:00:00.000000001+01:00`)), line: 1, reason: reasonAtSyntax},
		{name: "line too long", data: append(join(lines[:2]), append(bytes.Repeat([]byte("x"), MaxLineBytes+10), '\n')...), line: 3, reason: reasonTooLong},
		{name: "not JSON", data: []byte("hello\n"), line: 1, reason: reasonShape},
		{name: "binary", data: []byte{0, 0xff, 0xfe, '\n'}, line: 1, reason: reasonShape},
		{name: "duplicate key in the event", data: forgeRaw(1, zero, `{"type":"agent.registered","at":"2026-11-24T08:00:00Z","type":"agent.disabled"}`), line: 1, reason: reasonEventJSON},
		{name: "event is not JSON", data: forgeRaw(1, zero, `{"type":}`), line: 1, reason: reasonEventJSON},
		{name: "event time with an offset", data: forgeRaw(1, zero, `{"type":"agent.registered","at":"2026-11-24T08:00:00+01:00"}`), line: 1, reason: reasonEventAt},
		{name: "event without a type", data: forgeRaw(1, zero, `{"at":"2026-11-24T08:00:00Z"}`), line: 1, reason: reasonEventType},
		{name: "event without a time", data: forgeRaw(1, zero, `{"type":"agent.registered"}`), line: 1, reason: reasonEventAt},
		{name: "forged event with a valid hash", data: forgeRaw(1, zero, okEvent)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := verifyBytes(tt.data)
			checkNotSecret(t, err)
			if tt.line == 0 {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				_, err := VerifyAgainst(bytes.NewReader(tt.data), 6, headHex)
				checkNotSecret(t, err)
				var verr *VerifyError
				switch {
				case tt.anchorLine == 0:
				case !errors.As(err, &verr):
					t.Fatalf("VerifyAgainst: %v, want line %d: %s", err, tt.anchorLine, tt.anchorReason)
				case verr.Line != tt.anchorLine || verr.Reason != tt.anchorReason:
					t.Fatalf("VerifyAgainst: %v, want line %d: %s", err, tt.anchorLine, tt.anchorReason)
				}
				return
			}
			var verr *VerifyError
			if !errors.As(err, &verr) || !errors.Is(err, ErrBroken) {
				t.Fatalf("Verify accepted it (%+v), err %v", rep, err)
			}
			if verr.Line != tt.line || !strings.Contains(verr.Reason, tt.reason) {
				t.Fatalf("Verify: %v, want line %d: %s", err, tt.line, tt.reason)
			}
			if rep.Events != tt.line-1 {
				t.Errorf("report has %d intact lines, want %d", rep.Events, tt.line-1)
			}

			// Open refuses the same file, naming the same line.
			path := filepath.Join(t.TempDir(), "audit.log")
			os.WriteFile(path, tt.data, 0o600)
			_, err = Open(path)
			checkNotSecret(t, err)
			if !errors.As(err, &verr) || verr.Line != tt.line {
				t.Fatalf("Open: %v, want line %d", err, tt.line)
			}
		})
	}
}

// checkNotSecret fails if err quotes any 6-byte piece of secret (the
// approach of age's TestParseIntroErrorIsNotSecret).
func checkNotSecret(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	for i := 0; i+6 <= len(secret); i++ {
		if strings.Contains(msg, secret[i:i+6]) {
			t.Fatalf("error %q quotes the event", msg)
		}
	}
}

func TestVerifyAgainstAnchors(t *testing.T) {
	lines := buildLines(4, "")
	data := join(lines)
	for i := range lines {
		hh := hashOf(lines[i])
		if _, err := VerifyAgainst(bytes.NewReader(data), uint64(i+1), hex.EncodeToString(hh[:])); err != nil {
			t.Errorf("anchor at seq %d: %v", i+1, err)
		}
	}
	if _, err := VerifyAgainst(bytes.NewReader(data), 0, ""); err != nil {
		t.Errorf("empty anchor: %v", err)
	}
	other := hashOf(lines[1])
	if _, err := VerifyAgainst(bytes.NewReader(data), 3, hex.EncodeToString(other[:])); err == nil {
		t.Error("a wrong hash for seq 3 was accepted")
	}
	for _, bad := range []struct {
		seq  uint64
		hash string
	}{{3, "xyz"}, {3, strings.ToUpper(hex.EncodeToString(other[:]))}, {0, hex.EncodeToString(other[:])}} {
		if _, err := VerifyAgainst(bytes.NewReader(data), bad.seq, bad.hash); err == nil || errors.Is(err, ErrBroken) {
			t.Errorf("invalid anchor %d %q: %v", bad.seq, bad.hash, err)
		}
	}
}

// TestVerifyReadError checks that a failing reader is an I/O error, not a
// broken chain.
func TestVerifyReadError(t *testing.T) {
	boom := errors.New("boom")
	_, err := Verify(&failingReader{data: join(buildLines(2, "")), err: boom})
	if !errors.Is(err, boom) || errors.Is(err, ErrBroken) {
		t.Fatalf("%v", err)
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// TestVerifyAcceptsWhatAppendWrites round-trips every event type.
func TestVerifyAcceptsWhatAppendWrites(t *testing.T) {
	l, path := openTemp(t)
	for typ := range knownTypes {
		if err := l.Append(wire.Event{Type: typ, Reason: "<&>\"\\\n\u2028 é", Count: 3}); err != nil {
			t.Fatal(err)
		}
	}
	if err := VerifyFile(path, new(bytes.Buffer)); err != nil {
		t.Fatal(err)
	}
}
