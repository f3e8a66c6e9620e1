package audit

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"regexp"
	"testing"
)

var (
	fixedReasons = map[string]bool{
		reasonTooLong: true, reasonTorn: true, reasonEmpty: true, reasonShape: true,
		reasonSeqSyntax: true, reasonAtSyntax: true, reasonPrevSyntax: true, reasonHashSyntax: true,
		reasonEventJSON: true, reasonEventType: true, reasonEventAt: true, reasonHash: true,
		reasonPrev: true,
	}
	seqReason = regexp.MustCompile(`^seq is [0-9]+, want [0-9]+ \(a line was removed, inserted or moved\)$`)
)

// FuzzVerify checks that Verify never panics, that its only error is a
// *VerifyError made of a fixed phrase (so it cannot quote the input), that
// the intact prefix it reports verifies, and, for every log it accepts,
// that reordering or removing lines is found, and that cutting the tail is
// found against the head.
func FuzzVerify(f *testing.F) {
	var zero [sha256.Size]byte
	for _, n := range []int{1, 2, 3, 8} {
		lines := buildLines(n, secret)
		f.Add(join(lines))
		if n >= 2 {
			f.Add(join(swap(lines, 0, 1)))
			f.Add(join(without(lines, n-2)))
			f.Add(join(edit(lines, n-1, "salesforce", "salesfarce")))
			f.Add(join(insert(lines, 1, forgeLine(2, zero, testEvent(99, "")))))
			f.Add(join(rehash(without(lines, 0), 0)))
		}
	}
	f.Add([]byte{})
	f.Add([]byte("\n"))
	f.Add(forgeRaw(1, zero, `{"type":"agent.registered","at":"2026-11-24T08:00:00Z","type":"x"}`))
	f.Add(forgeRaw(1, zero, `{"type":"agent.registered","at":"2026-11-24T08:00:00Z","x":{"y":[1,2,{"z":null}]}}`))

	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := verifyBytes(data)
		if err != nil {
			var verr *VerifyError
			if !errors.As(err, &verr) || !errors.Is(err, ErrBroken) {
				t.Fatalf("error of another type: %v", err)
			}
			if !fixedReasons[verr.Reason] && !seqReason.MatchString(verr.Reason) {
				t.Fatalf("reason %q is not a fixed phrase", verr.Reason)
			}
			if verr.Line != rep.Events+1 {
				t.Fatalf("bad line %d after %d intact", verr.Line, rep.Events)
			}
			// The intact prefix verifies, with the same head.
			prefix := bytes.SplitAfter(data, []byte("\n"))[:rep.Events]
			rep2, err := verifyBytes(join(prefix))
			if err != nil || rep2.HeadHash != rep.HeadHash || rep2.Events != rep.Events {
				t.Fatalf("intact prefix: %+v %v, want %+v", rep2, err, rep)
			}
			return
		}

		lines := bytes.SplitAfter(data, []byte("\n"))
		if len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
			lines = lines[:len(lines)-1]
		}
		if rep.Events != len(lines) {
			t.Fatalf("accepted %d lines, reports %d", len(lines), rep.Events)
		}
		if _, err := VerifyAgainst(bytes.NewReader(data), rep.HeadSeq, rep.HeadHash); err != nil {
			t.Fatalf("log does not reach its own head: %v", err)
		}
		n := len(lines)
		if n < 2 {
			return
		}
		pairs := [][2]int{{0, 1}, {n - 2, n - 1}, {0, n - 1}, {len(data) % n, (len(data)/n + 1) % n}}
		for _, p := range pairs {
			if p[0] == p[1] {
				continue
			}
			if _, err := verifyBytes(join(swap(lines, p[0], p[1]))); err == nil {
				t.Fatalf("lines %d and %d swapped: accepted", p[0]+1, p[1]+1)
			}
		}
		if _, err := verifyBytes(join(without(lines, len(data)%(n-1)))); err == nil {
			t.Fatal("a line removed: accepted")
		}
		cut := join(lines[:n-1])
		if _, err := verifyBytes(cut); err != nil {
			t.Fatalf("an intact log cut after a line is refused: %v", err)
		}
		if _, err := VerifyAgainst(bytes.NewReader(cut), rep.HeadSeq, rep.HeadHash); err == nil {
			t.Fatal("a cut log reaches the head it lost")
		}
	})
}
